"""The approximate nullspace on images δ never saw, for both embedded models: fit, validation, test.

    python bench/bench_frontier.py [--models digits cluttered] [--seeds 0 1 2] [--record] [--out bench/out/frontier]

For each embedded model δ (encoder level) is synthesized from its own training split: minibatches drawn from
the fit pool, stopped and selected on validation images it is never fit on (cluttered: scenes on training
photographs the pool leaves out), and judged on the held-out split (cluttered: held-out digits on photographs
training never used). Rows: the research code's rule (λ 0, lim 3: stop once inside ε), the defaults before
this change (128 fit images, δ selected on those same images), and the model's defaults now. Then the
frontier over λ (seed 0): the largest δ inside ε *on the validation images* is the model's default λ;
``--record`` writes it into the model's ``config.json`` (what ``default_synthesis_config`` reads).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from nullviz import figures
from nullviz.data import synthesis_sets, synthesis_sources
from nullviz.models import embedded_model, load_model
from nullviz.noise.approximate import RESEARCH_CODE, SynthesisConfig, default_synthesis_config, frontier, synthesize

LAMS = (0.1, 0.3, 0.5, 0.8, 1.2)


def sets_for(lm, own: str):
    sets = synthesis_sets(synthesis_sources(own)[0], None, own=own)
    return lm.preprocess(sets.fit), lm.preprocess(sets.validation), lm.preprocess(sets.test), sets.used


def row(name: str, runs: list[dict]) -> str:
    mean = lambda k: statistics.mean(x[k] for x in runs)  # noqa: E731
    each = lambda k, f: ", ".join(format(x[k], f) for x in runs)  # noqa: E731
    return (f"| {name} | {mean('l2'):.0f} ({each('l2', '.0f')}) | {mean('rel'):.2f} | {each('val', '.4f')} | "
            f"{each('test', '.4f')} | {mean('agree'):.1%} | {mean('permuted'):.2f} / {mean('random_start'):.2f} | "
            f"{sum(x['inside'] for x in runs)}/{len(runs)} | {mean('steps'):.0f} | {mean('seconds'):.1f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["digits", "cluttered"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lams", type=float, nargs="+", default=list(LAMS))
    ap.add_argument("--record", action="store_true", help="write the chosen λ into each model's config.json")
    ap.add_argument("--settings", nargs="+", default=["research", "before", "now"],
                    choices=["research", "before", "now"], help="which rows to measure")
    ap.add_argument("--no-frontier", action="store_true", help="only the rows, no λ sweep")
    ap.add_argument("--out", type=Path, default=Path("bench/out/frontier"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text, out = [], {}
    for short in args.models:
        spec = embedded_model(short)
        lm = load_model(spec.name, device="cpu")
        fit, val, test, used = sets_for(lm, spec.data)
        now = default_synthesis_config(spec.name)
        settings = {
            "research code's (lim 3, λ 0, stop inside ε)": (replace(now, **RESEARCH_CODE, selection_margin=1.0), True),
            "before: λ 0.5, 200 steps, 128 fit images, selected on them": (SynthesisConfig(), False),
            f"now: λ {now.lam:g}, {now.steps} steps, batch {now.batch_size}, kept inside "
            f"{now.selection_margin:g}·ε on validation": (now, True)}
        rows, out[short] = [], {"images_used": used, "defaults": asdict(now), "settings": {}}
        keys = dict(zip(settings, ("research", "before", "now")))
        for name, (cfg, with_validation) in settings.items():
            if keys[name] not in args.settings:
                continue
            runs = []
            for seed in args.seeds:
                c = replace(cfg, seed=seed)
                t = time.perf_counter()
                if with_validation:
                    r = synthesize(lm, fit, c, validation_images=val, check_images=test, images_used=used)
                else:  # the old path: the first 128 training images, δ selected on those same images
                    part = fit[seed * 128:(seed + 1) * 128]
                    r = synthesize(lm, part, c, validation_images=part[:0], check_images=test)
                runs.append({"l2": r.noise_l2, "rel": r.noise_rel,
                             "val": r.validation.mse_probs if r.validation else float("nan"),
                             "test": r.check.mse_probs, "agree": r.check.agreement, "inside": r.reached_tolerance,
                             "permuted": r.check.permuted_mse_probs, "random_start": r.check.random_start_mse_probs,
                             "steps": r.steps_run, "seconds": time.perf_counter() - t, "shrunk_to": r.shrunk_to})
            out[short]["settings"][name] = runs
            rows.append(row(name, runs))
            print(rows[-1], flush=True)
        if args.no_frontier:
            text.append("\n".join([f"### {short}: {len(fit):,} fit · {len(val)} validation · {len(test)} test", *rows]))
            continue
        base = replace(now, seed=args.seeds[0])
        front = frontier(lm, fit, base, lams=tuple(args.lams), validation_images=val, check_images=test,
                         images_used=used)
        best = front.allowed()
        out[short]["frontier"] = front.to_dict()
        sweep = ["| λ | ‖δ‖ | ‖δ‖ / token norm | validation Σ Δp² | test Σ Δp² | permuted | Gaussian | random start |",
                 "|---" * 8 + "|"]
        for p in front.points:
            sweep.append(f"| {p.lam:g} | {p.noise_l2:.0f} | {p.noise_l2 / (fit_norm(lm, fit)):.2f} | "
                         f"{p.validation_mse_probs:.4f} | {p.check_mse_probs:.4f} | {p.permuted_mse_probs:.3f} | "
                         f"{p.gaussian_mse_probs:.3f} | {p.random_start_mse_probs:.3f} |")
        header = (f"### {short} ({spec.name}): {len(fit):,} fit · {len(val)} validation · {len(test)} test images\n\n"
                  "| settings | ‖δ‖ (per seed) | ‖δ‖ / token norm | validation Σ Δp² (per seed) | test Σ Δp² (per seed) | "
                  "test agreement | controls Σ Δp² on test: permuted / random start | inside ε on test | steps | "
                  "seconds |\n" + "|---" * 10 + "|")
        chosen = (f"largest δ inside ε = {front.tol:g} on the validation images: "
                  + (f"λ {best.lam:g}, ‖δ‖ {best.noise_l2:.0f}, test Σ Δp² {best.check_mse_probs:.4f}"
                     if best else "none"))
        text.append("\n".join([header, *rows, "", *sweep, "", chosen]))
        print(text[-1], flush=True)
        if args.record and best is not None:
            path = spec.directory / "config.json"
            config = json.loads(path.read_text())
            config["synthesis"] = {"config": {**config.get("synthesis", {}).get("config", {}), "lam": best.lam},
                                   "chosen_by": "bench/bench_frontier.py --record: the largest δ inside ε on the "
                                                "validation images over λ " + ", ".join(f"{v:g}" for v in args.lams),
                                   "validation_mse_probs": round(best.validation_mse_probs, 5),
                                   "test_mse_probs": round(best.check_mse_probs, 5),
                                   "noise_l2": round(best.noise_l2, 1)}
            path.write_text(json.dumps(config, indent=2) + "\n")
        figures.frontier_plot(front).write_html(f"{args.out}-{short}.html", include_plotlyjs="cdn")
    Path(f"{args.out}.md").write_text("\n\n".join(text) + "\n")
    Path(f"{args.out}.json").write_text(json.dumps(out, indent=1, default=str))
    return 0


def fit_norm(lm, fit: torch.Tensor) -> float:
    from nullviz.models import patch_tokens

    with torch.no_grad():
        return float(torch.cat([patch_tokens(lm.model, xb).flatten(1).norm(dim=1) for xb in fit.split(256)]).mean())


if __name__ == "__main__":
    raise SystemExit(main())
