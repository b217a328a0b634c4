"""The fair test of nullspace finetuning, on the embedded cluttered-digits model.

    python scripts/paper_table.py [--seeds 0 1 2] [--epochs 3] [--steps-per-epoch 30] [--test 256] [--device cpu]

Every method finetunes the same start with the same recipe — AdamW, lr 1e-4 (the paper's), cosine, batch 64,
the same seeds and data order — on a pool of freshly rendered training scenes (the renderer is the augmentation:
new crops and flips of the training photographs, new digit sizes, places and colours), and every method keeps
the epoch with the best clean accuracy on a **validation** split of other rendered training scenes (the last
epoch is reported too, on clean accuracy, FGSM and the shifts). Nothing is chosen on the test scenes: the first
``--test`` held-out scenes (held-out digits on held-out photographs), which only judge.

Methods (``METHODS``): plain finetuning; nullspace at ε = 0.01 and at ε = 0.03 (the paper's ablation value);
nullspace with δ resynthesized every ``--resynth-every`` steps (each δ shorter, so that it spends the same δ steps
per epoch as the once-per-epoch variant); Gaussian noise at the norms of the same seed's
nullspace (ε = 0.01) run; Gaussian noise at matched *visibility* (the norm whose Σ Δp² on the validation
scenes is ε = 0.01); δ's unoptimised random start at the nullspace run's norms; FGSM adversarial training.

One yardstick for every model: clean accuracy; FGSM and PGD-10 at 8/255 and 2/255; PatchFool; the corruption
error over 15 corruptions × 5 severities pooled (Σ err / Σ the untouched model's err, ×100) and the mean
corruption accuracy; the renderer's distribution shifts (inverted, outline, small, large, colour, texture: mean
accuracy); under fresh δs synthesized from the model at fixed settings, and its nullspace size (their norm in
starting-model token norms); under the untouched model's δ; under Gaussian noise of one token norm.

Statistics: FGSM and the pooled corruption error are the **primary** measures, declared here before any run
(the paper claims robustness to adversarial and to natural perturbations); every other measure is secondary and
Holm-adjusted over every control × secondary measure of a variant. Beside the t-interval over seeds, a paired
bootstrap over the test images (the images' own uncertainty) for every per-image measure. n is shown in every
cell; fewer than 2 seeds give no interval and no mark.

Writes ``OUT.md`` (the tables), ``OUT.json`` (every run, per-image outcomes, the comparisons) and
``OUT_bars.html`` / ``OUT_paired.html``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import time
from pathlib import Path

import numpy as np
import torch

from nullviz import figures
from nullviz.data.scenes import SHIFTS, STREAM_SEED, VALIDATION_STREAM_SEED, cluttered_dataset, rendered_dataset
from nullviz.models import load_model
from nullviz.noise.approximate import default_synthesis_config, matched_visibility_norm
from nullviz.robustness import evaluation as R
from nullviz.robustness.corruptions import CORRUPTIONS
from nullviz.train.comparison import compare_methods, paired_bootstrap
from nullviz.train.deltas import RunDeltas
from nullviz.train.evaluator import Evaluator
from nullviz.train.finetune import FinetuneConfig, FinetuneRun, best_epoch
from nullviz.train.loader import collate

MODEL = "cluttered"
#: table name → (FinetuneConfig method, its own settings). Norms "from nullspace" come from the same seed's
#: NORMS_FROM run; "matched visibility" from the validation scenes (see the module doc).
METHODS = {
    "plain": ("baseline", {}),
    "nullspace ε=0.01": ("nullspace", {"synth_tol": 0.01}),
    "nullspace ε=0.03": ("nullspace", {"synth_tol": 0.03}),
    "nullspace, resynthesized": ("nullspace", {"synth_tol": 0.01}),  # + noise_every (--resynth-every)
    "Gaussian, δ's norms": ("gaussian", {}),
    "Gaussian, δ's visibility": ("gaussian", {}),
    "random start, δ's norms": ("random_start", {}),
    "FGSM training": ("adversarial", {}),
}
NORMS_FROM = "nullspace ε=0.01"
#: The controls trained at the norms of their seed's NORMS_FROM run: they start once it has finished.
AT_DELTA_NORMS = ("Gaussian, δ's norms", "random start, δ's norms")
VARIANTS = ("nullspace ε=0.01", "nullspace ε=0.03", "nullspace, resynthesized")
CONTROLS = tuple(m for m in METHODS if m not in VARIANTS)
#: Declared before any run (see the module doc): FGSM accuracy at 8/255 and the pooled corruption error.
PRIMARY = ("FGSM", "pooled CE")
METRICS = ("clean", "FGSM", "pooled CE", "PGD-10", "FGSM 2/255", "PGD-10 2/255", "PatchFool", "corruption acc",
           "shifts", "under δ", "nullspace size", "under the start's δ", "Gaussian")
PERCENT = ("clean", "FGSM", "PGD-10", "FGSM 2/255", "PGD-10 2/255", "PatchFool", "corruption acc", "shifts",
           "under δ", "under the start's δ", "Gaussian")
LOWER_IS_BETTER = ("pooled CE",)
#: The last epoch's model, measured on clean accuracy, FGSM (a primary measure) and the shifts. Not the pooled
#: corruption error: its 19,200 forward passes per model were a sixth of the table's time.
LAST = ("clean", "FGSM", "shifts")
#: Measures with a per-image outcome (the bootstrap resamples images; see ``measure``).
PER_IMAGE = ("clean", "FGSM", "PGD-10", "PatchFool", "FGSM 2/255", "PGD-10 2/255", "shifts", "pooled CE")


def evaluation_configs(args) -> tuple[R.EvalConfig, R.EvalConfig]:
    main = R.EvalConfig(attacks=("fgsm", "pgd", "patchfool"), patch_steps=args.patch_steps, corruptions=CORRUPTIONS,
                        severities=tuple(args.severities), shifts=tuple(SHIFTS), limit=args.test)
    small = R.EvalConfig(attacks=("fgsm", "pgd"), eps=2 / 255, pgd_alpha=0.5 / 255, limit=args.test)
    return main, small


def measure(state: dict[str, torch.Tensor], test_full, evaluator: Evaluator, configs, corrupted, reference, args,
            full: bool = True) -> tuple[dict[str, float], dict[str, list], R.RobustnessReport]:
    """The model with weights ``state`` on the test scenes: (metrics, per-image outcomes, the robustness report).
    ``full=False``: clean, FGSM and the shifts only (the last epoch's model, ``LAST``). A freshly loaded model
    takes the weights: a loaded model's derived caches (trace views, packed weights) belong to its own weights."""
    tuned = load_model(MODEL, device=args.device)
    tuned.model.load_state_dict(state)
    main, small = configs
    if not full:
        main = R.EvalConfig(attacks=("fgsm",), corruptions=(), shifts=main.shifts, limit=main.limit)
    rep = R.evaluate(tuned, test_full, main, corrupted=corrupted)
    ref = reference or rep
    row = {"clean": rep.clean_acc, "FGSM": rep.attacks["fgsm"]["robust_acc"],
           "shifts": float(np.mean(list(rep.shifts.values()))), **{f"shift: {k}": v for k, v in rep.shifts.items()}}
    shifts_right = torch.stack([rep.per_image[k] for k in rep.shifts]).float().mean(0)
    per_image = {"clean": rep.per_image["clean"], "FGSM": rep.per_image["fgsm"], "shifts": shifts_right}
    if full:
        row["pooled CE"] = rep.pooled_corruption_error(ref)
        per_image["pooled CE"] = rep.per_image["corruption_errors"]
        low = R.evaluate(tuned, test_full, small)
        ev = evaluator.evaluate(tuned.model, None, fresh_deltas=args.fresh)
        row.update({"PGD-10": rep.attacks["pgd"]["robust_acc"], "PatchFool": rep.attacks["patchfool"]["robust_acc"],
                    "FGSM 2/255": low.attacks["fgsm"]["robust_acc"], "PGD-10 2/255": low.attacks["pgd"]["robust_acc"],
                    "corruption acc": rep.mean_corruption_acc, "under δ": ev.get("delta_acc"),
                    "nullspace size": ev.get("nullspace_size"), "under the start's δ": ev["start_delta_acc"],
                    "Gaussian": ev["gaussian_acc"], "fresh δ norm": ev.get("fresh_delta_l2"),
                    "start δ norm": ev["start_delta_l2"],
                    "fresh δ validation Σ Δp²": ev.get("nullspace_size_validation_mse")})
        per_image.update({"PGD-10": rep.per_image["pgd"], "PatchFool": rep.per_image["patchfool"],
                          "FGSM 2/255": low.per_image["fgsm"], "PGD-10 2/255": low.per_image["pgd"]})
    return row, {k: v.int().tolist() if v.dtype == torch.bool else v.tolist() for k, v in per_image.items()}, rep


#: What every run needs, set by ``main`` before the runs (a forked worker process inherits it).
_CONTEXT: dict = {}


def run_method(task: tuple[str, int, tuple[float, ...] | None]) -> tuple[str, int, dict, dict, dict]:
    """One method and seed: finetune, keep the best epoch on validation, measure it (and the last epoch) on the
    test scenes. ``task``: (table name, seed, the δ norms of the seed's nullspace run where the method needs
    them). Returns (name, seed, the row, the last epoch's row, per-image outcomes)."""
    name, seed, norms = task
    c = _CONTEXT
    args, lm, train, val = c["args"], c["lm"], c["train"], c["val"]
    method, extra = METHODS[name]
    settings = {**c["common"], **extra}
    if name == "nullspace, resynthesized":  # the same δ steps per epoch as once per epoch, spread out
        settings["noise_every"] = args.resynth_every
        settings["synth_steps"] = resynth_steps(args)
    if norms is not None:
        settings["noise_norms"] = norms
    if name == "Gaussian, δ's visibility":
        settings["noise_norms"] = (c["visible"],)
    cfg = FinetuneConfig(method=method, seed=seed, **settings)
    t = time.perf_counter()
    kept: dict[str, object] = {}

    def on_epoch(record):
        if best_epoch(run.history) == record["epoch"]:  # the record is already in the history
            kept["state"] = {k: v.detach().clone() for k, v in run.model.state_dict().items()}

    run = FinetuneRun(lm, train, val, cfg, on_epoch=on_epoch)
    result = run.run()
    test_eval = Evaluator(lm.model, RunDeltas(train, cfg, lm.device), train, c["test"], cfg, run.mean, run.std,
                          lm.device, references=c["references"])
    best = best_epoch(result.history)  # the same rule for every method: validation clean accuracy
    shared = (c["test_full"], test_eval, c["configs"], c["corrupted"], c["reference"], args)
    row, images, _ = measure(kept["state"], *shared)
    row.update({"best epoch": best, "validation clean (best)": max(r["clean_acc"] for r in result.history),
                "history": result.history, "train δ norms": [r.get("delta_l2") for r in result.history]})
    if best == result.epochs_run:
        last_row = {m: row[m] for m in LAST}
    else:
        last_row, _, _ = measure(run.model.state_dict(), *shared, full=False)
    row["seconds"] = time.perf_counter() - t
    return name, seed, row, {m: last_row[m] for m in LAST}, images


def resynth_steps(args) -> int:
    """Steps of each δ of the resynthesized variant: as many δ steps per epoch as the once-per-epoch variant
    spends, spread over its more frequent δs (it is compared at the same synthesis cost)."""
    per_epoch = -(-args.steps_per_epoch // args.resynth_every)  # δs per epoch
    return max(1, round(args.synth_steps / per_epoch))


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}" if metric in PERCENT else f"{value:.1f}" if metric == "pooled CE" else f"{value:.2f}"


def summary_cell(cmp, method: str, metric: str) -> str:
    """A method's mean ± std (n), or — when no seed has the measure."""
    if not any(r.get(metric) is not None for r in cmp.runs[method].values()):
        return "—"
    return cell(cmp.summary(method, metric), metric)


def cell(summary, metric: str, signed: bool = False) -> str:
    k = 100 if metric in PERCENT else 1
    p = 2 if metric == "nullspace size" else 1
    sign = "+" if signed else ""
    if not summary.has_interval:
        return f"{summary.mean * k:{sign}.{p}f} (n {summary.n})"
    if signed:
        return f"{summary.mean * k:+.{p}f} [{summary.ci_low * k:+.{p}f}, {summary.ci_high * k:+.{p}f}]"
    return f"{summary.mean * k:.{p}f} ± {summary.std * k:.{p}f} (n {summary.n})"


def mark(summary, metric: str, p_adjusted: float | None, primary: bool) -> str:
    if not summary.has_interval:
        return ""
    better = summary.ci_low > 0 if metric not in LOWER_IS_BETTER else summary.ci_high < 0
    worse = summary.ci_high < 0 if metric not in LOWER_IS_BETTER else summary.ci_low > 0
    if not primary:
        significant = p_adjusted is not None and p_adjusted < 0.05
        better, worse = better and significant, worse and significant
    return " ✓" if better else " ✗" if worse else ""


def bootstrap_table(per_image, reference_errors, variant: str, controls, seeds) -> tuple[list[str], dict]:
    """variant − control over the test images (paired bootstrap, the mean over seeds both have)."""
    metrics = [m for m in METRICS if m in PER_IMAGE]  # in the table's order
    lines = ["| control | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    out: dict = {}
    for control in controls:
        cells = []
        for m in metrics:
            pick = lambda name: {s: per_image[name][s][m] for s in seeds  # noqa: E731
                                 if s in per_image.get(name, {}) and m in per_image[name][s]}
            a, b = pick(variant), pick(control)
            if not (set(a) & set(b)):
                cells.append("—")
                continue
            if m == "pooled CE":
                d = paired_bootstrap(a, b, denominator=reference_errors, scale=100)
            else:
                d = paired_bootstrap(a, b, scale=1)
            out.setdefault(control, {})[m] = d.to_dict()
            k = 100 if m in PERCENT else 1
            if d.has_interval:
                cells.append(f"{d.mean * k:+.1f} [{d.ci_low * k:+.1f}, {d.ci_high * k:+.1f}]"
                             f"{mark(d, m, d.p_value, True)}")
            else:
                cells.append(f"{d.mean * k:+.1f}")
        lines.append(f"| {control} | " + " | ".join(cells) + " |")
    return lines, out


def tables(runs, last, per_image, reference_errors, default_row, args, notes) -> tuple[str, dict, object, list]:
    """The markdown, the JSON's comparisons, and the comparisons the figures draw (every method; each variant)."""
    head = "| model | " + " | ".join(METRICS) + " |"
    lines = [f"Test: the first {args.test} held-out scenes (held-out digits on held-out photographs); best epoch "
             f"chosen on {args.validation} validation scenes (other rendered training scenes); {args.epochs} epochs × "
             f"{args.steps_per_epoch} steps of 64, AdamW lr {args.lr:g}, cosine; seeds "
             f"{', '.join(map(str, args.seeds))}; mean ± std over seeds (n). Accuracies in %; pooled CE: 100 = the "
             f"untouched model, lower is better; nullspace size in starting-model token norms.", "",
             head, "|---" * (len(METRICS) + 1) + "|",
             "| untouched model | " + " | ".join(fmt(m, default_row.get(m)) for m in METRICS) + " |"]
    everything = compare_methods(runs, METRICS, next(iter(runs)), primary=PRIMARY)
    for method in runs:
        lines.append(f"| {method} | " + " | ".join(summary_cell(everything, method, m) for m in METRICS) + " |")
    lines += ["", "The **last** epoch's model (best epoch per seed in brackets): mean ± std over seeds.", "",
              "| model | best epoch (per seed) | " + " | ".join(f"{m} (last)" for m in LAST) + " |",
              "|---" * (len(LAST) + 2) + "|"]
    last_cmp = compare_methods(last, list(LAST), next(iter(last)))
    for method in last:
        epochs = ", ".join(str(runs[method][s]["best epoch"]) for s in sorted(runs[method]))
        lines.append(f"| {method} | {epochs} | " + " | ".join(summary_cell(last_cmp, method, m) for m in LAST)
                     + " |")
    comparisons, data = [], {}
    for variant in VARIANTS:
        if variant not in runs:
            continue
        controls = [c for c in CONTROLS if c in runs]
        cmp = compare_methods({k: runs[k] for k in (variant, *controls)}, METRICS, variant, primary=PRIMARY)
        comparisons.append(cmp)
        adjusted = cmp.adjusted_p()
        lines += ["", f"**{variant} minus each control**, paired by seed: mean difference [95 % t-interval over "
                  f"seeds]. Positive is better except for pooled CE.", "", head.replace("model", "control"),
                  "|---" * (len(METRICS) + 1) + "|"]
        for control in cmp.controls:
            row = []
            for m in METRICS:
                d = cmp.difference(control, m)
                extra = "" if m in PRIMARY or adjusted[(control, m)] is None else f" p {adjusted[(control, m)]:.2f}"
                row.append(cell(d, m, signed=True) + mark(d, m, adjusted[(control, m)], m in PRIMARY) + extra)
            lines.append(f"| {control} | " + " | ".join(row) + " |")
        boot_lines, boot = bootstrap_table(per_image, reference_errors, variant, controls, args.seeds)
        lines += ["", f"The same differences with the **test images' uncertainty**: paired bootstrap over the "
                  f"{args.test} test scenes (2,000 resamples, the mean over seeds), 95 % percentile interval; ✓ / ✗ "
                  f"where it excludes 0 (not corrected).", ""] + boot_lines
        data[variant] = {**cmp.to_dict(), "bootstrap": boot}
    lines += ["", f"Primary measures (declared before the runs): {', '.join(PRIMARY)}; ✓ / ✗ when their 95 % "
              f"interval over seeds excludes 0 in the variant's favour / against it. Secondary measures: ✓ / ✗ only "
              f"when the Holm-adjusted p-value over every control × secondary measure of the variant is below 0.05 "
              f"(p shown). No mark: no evidence either way; one seed gives no interval and no mark."]
    lines += ["", *notes]
    return ("\n".join(lines), {"comparisons": data, "everything": everything.to_dict(),
                               "last_epoch_comparison": last_cmp.to_dict()}, everything, comparisons)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps-per-epoch", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--test", type=int, default=256, help="test scenes (the first N held-out ones)")
    ap.add_argument("--validation", type=int, default=256, help="validation scenes for the best epoch")
    ap.add_argument("--resynth-every", type=int, default=15, help="steps between δs of the resynthesized variant")
    ap.add_argument("--synth-steps", type=int, default=200, help="steps of each training δ")
    ap.add_argument("--synth-batch", type=int, default=16, help="images per step of the training δs")
    ap.add_argument("--synth-lam", type=float, default=None, help="training δs' λ (default: the model's recorded one)")
    ap.add_argument("--eval-synth-steps", type=int, default=200,
                    help="steps of each evaluation δ (one yardstick; 16 images a step, EVAL_SYNTHESIS)")
    ap.add_argument("--fresh", type=int, default=1, help="fresh δs per finished model (under δ, nullspace size)")
    ap.add_argument("--patch-steps", type=int, default=10, help="PatchFool's steps")
    ap.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=None,
                    help="runs at once, each in a worker process of one thread (default: 2 on a CPU of 2+ cores — "
                         "small models use two single-threaded processes better than one of two threads — else 1)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/paper_table"))
    args = ap.parse_args(argv)
    if any(m in args.methods for m in AT_DELTA_NORMS) and NORMS_FROM not in args.methods:
        ap.error(f"the controls at δ's norms need the {NORMS_FROM!r} run of the same seed")
    if args.jobs is None:
        args.jobs = 2 if args.device == "cpu" and (os.cpu_count() or 1) >= 2 else 1
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    if args.fresh < 1:
        ap.error("--fresh must be at least 1: the nullspace size and 'under δ' come from fresh δs")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    lm = load_model(MODEL, device=args.device)
    lam = args.synth_lam if args.synth_lam is not None else default_synthesis_config(lm.name).lam
    tf = lm.transform
    train = rendered_dataset("train", args.epochs * args.steps_per_epoch * 64, STREAM_SEED, tf)
    val = rendered_dataset("train", args.validation, VALIDATION_STREAM_SEED, tf)
    test_full = cluttered_dataset("heldout", tf)
    test = torch.utils.data.Subset(test_full, range(args.test))
    val_x = collate(val, range(len(val)))[0].to(lm.device)
    visible = matched_visibility_norm(lm.model, val_x, "gaussian", tol=0.01, seed=0)
    print(f"data: {len(train)} training scenes, {len(val)} validation, {args.test} test; Gaussian of Σ Δp² 0.01 on "
          f"validation: norm {visible:.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    configs = evaluation_configs(args)
    corrupted = R.CorruptedImages()
    # each epoch measures clean validation accuracy alone (the best-epoch rule's): every kept model is measured
    # on the test scenes below
    common = dict(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, lr=args.lr, fresh_deltas=0,
                  synth_steps=args.synth_steps, synth_batch_size=args.synth_batch, synth_lam=lam,
                  eval_synth_steps=args.eval_synth_steps, epoch_measures="clean")
    # the starting model's δ and Gaussian grid per seed (Evaluator.reference), made once and shared by every
    # evaluator of that seed: the untouched model's and each run's test measure
    references: dict[tuple, dict] = {}

    def start_evaluator(seed: int) -> Evaluator:
        cfg = FinetuneConfig(method="baseline", seed=seed, **common)
        return Evaluator(lm.model, RunDeltas(train, cfg, lm.device), train, test, cfg, lm.mean.to(lm.device),
                         lm.std.to(lm.device), lm.device, references=references)

    untouched_eval = start_evaluator(args.seeds[0])
    default_row, default_images, reference = measure(lm.model.state_dict(), test_full, untouched_eval, configs,
                                                     corrupted, None, args)
    reference_errors = default_images["pooled CE"]
    print("untouched: " + ", ".join(f"{k} {v:.3f}" for k, v in default_row.items() if isinstance(v, float)), flush=True)

    for seed in args.seeds[1:]:  # every other seed's start δ and Gaussian grid, before the runs share them
        start_evaluator(seed).reference()

    runs: dict[str, dict[int, dict]] = {}
    last: dict[str, dict[int, dict]] = {}
    per_image: dict[str, dict[int, dict]] = {}
    _CONTEXT.update(lm=lm, train=train, val=val, test=test, test_full=test_full, configs=configs, corrupted=corrupted,
                    reference=reference, references=references, common=common, visible=visible, args=args)

    def record(name: str, seed: int, row: dict, last_row: dict, images: dict) -> None:
        runs.setdefault(name, {})[seed] = row
        last.setdefault(name, {})[seed] = last_row
        per_image.setdefault(name, {})[seed] = images
        print(f"{name} seed {seed} ({row['seconds']:.0f} s, best epoch {row['best epoch']}): "
              + ", ".join(f"{m} {fmt(m, row.get(m))}" for m in METRICS), flush=True)

    def nullspace_norms(seed: int) -> tuple[float, ...]:
        return tuple(r["delta_l2"] for r in runs[NORMS_FROM][seed]["history"])

    # the runs at δ's norms wait for their seed's nullspace run, which goes first; every other run can start at once
    needs_norms = [m for m in args.methods if m in AT_DELTA_NORMS]
    first = [(name, seed) for name in sorted((m for m in args.methods if m not in needs_norms),
                                             key=lambda m: m != NORMS_FROM) for seed in args.seeds]
    if args.jobs == 1:
        for name, seed in first + [(name, seed) for seed in args.seeds for name in needs_norms]:
            record(*run_method((name, seed, nullspace_norms(seed) if name in needs_norms else None)))
    else:  # worker processes forked from this one share its data, corrupted images and start δs (copy-on-write)
        finished: queue.SimpleQueue = queue.SimpleQueue()  # each run's result, or its exception, as it ends
        with multiprocessing.get_context("fork").Pool(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            def submit(task: tuple) -> None:
                pool.apply_async(run_method, (task,), callback=finished.put, error_callback=finished.put)

            for name, seed in first:
                submit((name, seed, None))
            outstanding = len(first)
            while outstanding:
                result = finished.get()
                outstanding -= 1
                if isinstance(result, BaseException):
                    raise result
                name, seed, *rest = result
                record(name, seed, *rest)
                if name == NORMS_FROM:
                    for control in needs_norms:
                        submit((control, seed, nullspace_norms(seed)))
                    outstanding += len(needs_norms)

    order = [m for m in args.methods if m in runs]  # the rows in the order asked (METHODS by default), seeds ascending
    runs, last, per_image = ({m: dict(sorted(d[m].items())) for m in order} for d in (runs, last, per_image))
    total = time.perf_counter() - t0
    notes = [f"Gaussian at matched visibility: norm {visible:.1f} (Σ Δp² = 0.01 on the validation scenes; the "
             f"nullspace runs' δ norms: {', '.join(f'{v:.0f}' for s in runs.get(NORMS_FROM, {}).values() for v in s['train δ norms'])}).",
             f"Total {total / 60:.1f} min on this machine ({len(runs)} methods × {len(args.seeds)} seeds, "
             f"device {args.device}; corrupted test images made once: {len(corrupted)} batches)."]
    text, data, everything, comparisons = tables(runs, last, per_image, reference_errors, default_row, args, notes)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text(text)
    Path(f"{args.out}.json").write_text(json.dumps(
        {"default": default_row, "runs": runs, "last": last, "per_image": per_image, "reference_errors": reference_errors,
         "primary": list(PRIMARY), "metrics": list(METRICS), "variants": [v for v in VARIANTS if v in runs],
         "matched_visibility_norm": visible, **data, "seconds": total, "args": vars(args)},
        default=str, indent=1))
    labels = {m: m for m in METRICS}
    scale = {m: 100 for m in PERCENT}
    figures.method_bars(everything, [m for m in METRICS if m not in ("nullspace size",)], labels, scale).write_html(
        f"{args.out}_bars.html", include_plotlyjs="cdn")
    if comparisons:
        figures.paired_difference_bars(comparisons, METRICS, labels, scale, lower_is_better=LOWER_IS_BETTER
                                       ).write_html(f"{args.out}_paired.html", include_plotlyjs="cdn")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
