"""``python -m nullviz``: the command line over the same library the app uses.

Every sub-command prints human-readable lines, or one JSON object with ``--json``. Bad input prints one
line on stderr (``nullviz: error: …``) and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from nullviz.core.errors import InvalidParameterError, NullvizError
from nullviz.core.presets import FINETUNE_PRESETS


OWN = "'default' (the model's own: digits, or the cluttered model's scenes), 'digits', 'cluttered'"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage + error
        usage = self.prog.replace("nullviz", "python -m nullviz", 1)
        sys.stderr.write(f"nullviz: error: {message} (see '{usage} --help')\n")
        raise SystemExit(2)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (embedded digits ViT) or a timm ViT name, e.g. vit_tiny_patch16_224")
    p.add_argument("--checkpoint", default=None, help="local .safetensors/.pth checkpoint for --model's architecture")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="nullviz", description="Nullspace workbench for Vision Transformers.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("info", help="architecture facts of a model (and held-out accuracy for the default)")
    _model_args(p)

    p = sub.add_parser("nullspace", help="exact patch-embedding nullspace, noise from it, and its verification")
    _model_args(p)
    p.add_argument("--rtol", type=float, default=None, help="relative rank tolerance (default max(d,K)·eps32)")
    p.add_argument("--image", default="sample", help="'sample', a sample name (chelsea, digit-3…) or a path")
    p.add_argument("--magnitude", type=float, default=1.0, help="noise size in normalised units")
    p.add_argument("--norm", default="l2_patch", choices=["l2_patch", "linf"])
    p.add_argument("--shared", action="store_true", help="one noise pattern for every patch")
    p.add_argument("--feasible", action="store_true", help="keep x + v inside the valid pixel range")
    p.add_argument("--layernorm", action="store_true",
                   help="the LayerNorm directions instead: c_i·W⁺1 per patch (RMS per-patch L2 = --magnitude), exact "
                        "for a pre-norm ViT even when W has full rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="save the noise tensor (3×H×W, normalised space)")

    p = sub.add_parser("synthesize", help="optimise approximate-nullspace noise δ (encoder or input level)")
    _model_args(p)
    p.add_argument("--level", default="encoder", choices=["encoder", "input"])
    p.add_argument("--data", default="default", help=f"{OWN} (train split) or an ImageFolder path")
    p.add_argument("--images", type=int, default=None,
                   help="at most this many training images to draw δ's minibatches from (default: all of them)")
    p.add_argument("--validation-images", type=int, default=256,
                   help="training images δ is not fit on, which choose when to stop and which δ to keep")
    p.add_argument("--check-images", type=int, default=256,
                   help="test images δ and every choice never see, which the verdict is about (the held-out split)")
    p.add_argument("--steps", type=int, default=None, help="default: SynthesisConfig's")
    p.add_argument("--lr", type=float, default=None, help="default: SynthesisConfig's")
    p.add_argument("--lim", type=float, default=None, help="default: SynthesisConfig's")
    p.add_argument("--lam", type=float, default=None, help="default: SynthesisConfig's")
    p.add_argument("--tol", type=float, default=None, help="default: SynthesisConfig's")
    p.add_argument("--batch-size", type=int, default=None, help="default: SynthesisConfig's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip", action="store_true",
                   help="input level: optimise δ for clip(x + δ) to valid pixels, so every noised input is an image")
    p.add_argument("--sweep", nargs="+", default=None, metavar="NAME=V1,V2",
                   help="trace the frontier over a grid instead, e.g. --sweep lam=0,0.1,0.5,1 lim=1,3 steps=100,200")
    p.add_argument("--html", type=Path, default=None, help="with --sweep: save the frontier plot (HTML)")
    p.add_argument("--out", type=Path, default=None, help="save δ with its metadata (.pt)")

    p = sub.add_parser("attention", help="attention and representations, clean vs. noised")
    _model_args(p)
    p.add_argument("--image", default="sample")
    p.add_argument("--noise", default="exact", help="'exact' (fresh nullspace noise) or a saved noise file")
    p.add_argument("--magnitude", type=float, default=1.0, help="size of the exact noise (normalised units)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"])
    p.add_argument("--discard-ratio", type=float, default=0.0)
    p.add_argument("--query", default="cls", help="the query token of the maps: 'cls' or a patch 'ROW,COL' (0-based)")
    p.add_argument("--block", type=int, default=None, help="with --query: the block (1-based; default the last)")
    p.add_argument("--contrast", action="store_true",
                   help="per layer: exact nullspace noise vs the --noise δ (if a file) vs random noise of the same norms")
    p.add_argument("--sanity", action="store_true",
                   help="every attribution method on the image and on the image + exact nullspace noise (--magnitude, "
                        "--seed): how much each map changes (an output that did not change must not be explained "
                        "differently) and the input gradient's share in the nullspace")
    p.add_argument("--methods", default="all",
                   help="attribution methods for --sanity and --faithfulness: 'all' or a comma-separated list")
    p.add_argument("--faithfulness", type=int, default=0, metavar="N",
                   help="deletion and insertion curves of every attribution method (and a random ranking) over N "
                        "images of --data, each explained for its predicted class")
    p.add_argument("--road", action="store_true",
                   help="with --faithfulness: each map's ROAD score too (pytorch-grad-cam's ROADCombined: pixels "
                        "removed by noisy linear imputation, most and least relevant first; higher is more faithful)")
    p.add_argument("--set", type=int, default=0, metavar="N",
                   help="statistics over N images of --data (attention change, representation change, heads)")
    p.add_argument("--data", default="default", help=f"{OWN} (held-out split) or an ImageFolder path, for --set")
    p.add_argument("--batch-size", type=int, default=64, help="images per traced batch, for --set")
    p.add_argument("--out", type=Path, default=None, help="write attention tensors and rollouts (.npz)")

    p = sub.add_parser("evaluate", help="robustness: clean, adversarial, corruptions, noise tolerance")
    _model_args(p)
    p.add_argument("--data", default="default", help=f"{OWN} (held-out split) or an ImageFolder path")
    p.add_argument("--attacks", default=None,
                   help="comma-separated attack names (fgsm, pgd, cw, autoattack, patchfool; a wrong name lists "
                        "them all), or 'none'; default fgsm,pgd — with --suite the paper's patchfool,cw,fgsm")
    p.add_argument("--eps", type=float, default=8 / 255, help="attack radius in [0, 1] pixel units (8/255)")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--pgd-alpha", type=float, default=2 / 255)
    p.add_argument("--pgd-norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--autoattack-eps", type=float, default=4 / 255,
                   help="AutoAttack's L∞ radius (4/255, RobustBench's ImageNet setting)")
    p.add_argument("--cw-steps", type=int, default=50, help="CW-L2's Adam steps")
    p.add_argument("--cw-c", type=float, default=1.0, help="CW-L2's weight of the margin term")
    p.add_argument("--corruptions", default="none", help="'all', 'none' or comma-separated ImageNet-C names")
    p.add_argument("--severities", default="1-5", help="e.g. 1-5 or 1,3,5")
    p.add_argument("--shifts", default="none",
                   help="the cluttered model's distribution shifts, 'all', 'none' or comma-separated (inverted, "
                        "outline, small, large, colour, texture): its held-out scenes re-rendered with one change")
    p.add_argument("--tolerance", default="", help="comma-separated L2 noise sizes for tolerance curves")
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", type=Path, default=None, help="also write the tidy table as CSV")
    p.add_argument("--reference", default=None,
                   help="'default' or a checkpoint: also report the corruption error relative to it (mCE-style)")
    p.add_argument("--suite", choices=["imagenet"], default=None,
                   help="the paper's Table 1 benchmarks from their published folders under --root (ImageNet val, "
                        "-A, -R, -C, -V2, -Sketch, Stylized, DamageNet; --attacks run on the val images): "
                        "nothing is downloaded, a data set absent from --root is skipped")
    p.add_argument("--root", type=Path, default=None, help="with --suite: the folder that holds the benchmarks")
    p.add_argument("--only", default=None, help="with --suite: comma-separated benchmarks (val,a,r,c,v2,sketch,…)")

    p = sub.add_parser("finetune", help="nullspace-augmented finetuning (or a control) on a copy of the model")
    _model_args(p)
    p.add_argument("--method", default="nullspace",
                   help="nullspace (the paper's), or a control: baseline, gaussian, … (a wrong name lists them all)")
    p.add_argument("--data", default="default", help=f"{OWN}, 'cifar10', or an ImageFolder path")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the training set")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--freeze", default="none", choices=["none", "patch_embed", "all_but_head"])
    p.add_argument("--noise-every", type=int, default=None, help="resynthesize δ every K steps (default: per epoch)")
    p.add_argument("--noise-norms", type=float, nargs="+", default=None, metavar="NORM",
                   help="(gaussian, random_start) the control's noise norm for each δ period, the last repeated — e.g. "
                        "a nullspace run's δ norms — instead of a δ synthesized on the control's own model")
    p.add_argument("--synth-steps", type=int, default=200)
    p.add_argument("--synth-batch-size", type=int, default=64, help="images per step of the training δs")
    p.add_argument("--synth-lam", type=float, default=0.5, help="λ of δ synthesis (0: the research code's rule)")
    p.add_argument("--synth-lim", type=float, default=1.0, help="δ's random start U(−lim, lim)")
    p.add_argument("--synth-fraction", type=float, default=0.1)
    p.add_argument("--fgsm-eps", type=float, default=8 / 255)
    p.add_argument("--fresh-deltas", type=int, default=3,
                   help="δs synthesized from the model at each evaluation; accuracy under δ is their mean (0: off)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per optimizer step (global batch = batch size × grad-accum × processes)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes that decode images")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    p.add_argument("--eval-synth-steps", type=int, default=200,
                   help="steps of the evaluation δs (fixed settings, the same for every run compared)")
    p.add_argument("--new-head", action="store_true",
                   help="train a new classifier head when the data's classes are not the model's (otherwise refused)")
    p.add_argument("--augment", nargs="?", const="timm", default="none", choices=["none", "rrc_flip", "timm"],
                   help="training augmentation for natural images: rrc_flip (random resized crop + flip, the "
                        "paper's) or timm (the same plus colour jitter; --augment alone); not for the digits")
    p.add_argument("--keep-best", action="store_true",
                   help="keep the weights of the epoch with the best held-out clean accuracy (run folder 'best/')")
    p.add_argument("--synth-tol", type=float, default=0.01, help="ε: δ is kept inside this Σ Δp² on its validation images")
    p.add_argument("--epoch-measures", choices=["all", "clean"], default="all",
                   help="what each epoch's evaluation measures: all (clean, FGSM, δs, Gaussian noise) or clean "
                        "accuracy alone (what --keep-best reads; faster when the kept model is measured afterwards)")
    p.add_argument("--preset", choices=sorted(FINETUNE_PRESETS), default=None,
                   help="start from a named recipe; flags given explicitly override it. 'paper': "
                        + ", ".join(f"{k} {v}" for k, v in FINETUNE_PRESETS["paper"].items()))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=Path, default=None,
                   help="all run settings as JSON (a FinetuneConfig, e.g. a run's model.json 'finetune'); "
                        "replaces the setting flags above")
    p.add_argument("--data-cache", default="data", help="where CIFAR-10 is downloaded to")
    p.add_argument("--out", type=Path, default=Path("runs/finetune"), help="run folder (checkpoint and logs)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")

    p = sub.add_parser("jobs", help="the app server's jobs: list them, stop one, or clean old ones away")
    p.add_argument("action", nargs="?", default="list", choices=["list", "stop", "clean"])
    p.add_argument("job_id", nargs="?", default=None, help="the job to stop")
    p.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                   help="clean: ended jobs and uploads older than this (default: NULLVIZ_RETENTION_DAYS, else 7)")
    p.add_argument("--dry-run", action="store_true", help="clean: list what would be deleted, delete nothing")
    p.add_argument("--data-dir", default=None, help="the server's NULLVIZ_DATA_DIR (default: the same rule as the app)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return ap


def _spec(args):
    """The --model / --checkpoint / --device flags as a ModelSpec (the errors name the flags)."""
    from nullviz.models import ModelSpec

    if not args.model.strip():
        raise InvalidParameterError("--model", "nullviz", "'default' or a timm ViT name (e.g. vit_tiny_patch16_224)",
                                    args.model)
    if args.checkpoint is not None and not args.checkpoint.strip():
        raise InvalidParameterError("--checkpoint", "nullviz", "the path of a .safetensors/.pth file", args.checkpoint)
    return ModelSpec(args.model.strip(), args.checkpoint, args.device)


def _load(args):
    return _spec(args).load()


def cmd_info(args) -> dict[str, Any]:
    from nullviz.data import digits_dataset
    from nullviz.models import embedded_model

    lm = _load(args)
    out = lm.facts()
    own = embedded_model(lm.name)  # an embedded architecture (shipped weights or a finetuned checkpoint)
    if own is not None and own.data == "digits":
        from nullviz.robustness.evaluation import accuracy

        out["heldout_accuracy"] = accuracy(lm, digits_dataset("heldout"))
        out["heldout_images"] = len(digits_dataset("heldout"))
    elif own is not None:  # re-measure what the training script recorded (accuracy, localisation, invariance)
        from nullviz.robustness.cluttered_report import measure

        out.update(measure(lm))
    return out


def cmd_nullspace(args) -> dict[str, Any]:

    from nullviz.noise import exact as N
    from nullviz.data import resolve_image
    from nullviz.noise.files import save_noise

    if args.layernorm and (args.feasible or args.shared or args.norm != "l2_patch"):
        raise InvalidParameterError("--layernorm", "nullviz nullspace", "used without --feasible, --shared and "
                                    "--norm (they shape W's nullspace noise)", "combined with them")
    lm = _load(args)
    ns = N.nullspace(lm, args.rtol)
    img = resolve_image(args.image)
    x = lm.preprocess(img.image)
    # a full-rank embedding has no exact nullspace: its noise is the weakest directions', and says so
    kind = "layernorm" if args.layernorm else "exact" if ns.nullity > 0 else "weakest"
    if args.layernorm:
        from nullviz.noise.layernorm import layernorm_residual, sample_layernorm_noise

        v = sample_layernorm_noise(lm, lm.img_size, args.magnitude, args.seed)
    else:
        v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=args.magnitude, norm=args.norm,
                                                       shared=args.shared, seed=args.seed))
    out: dict[str, Any] = {"model": lm.name, "image": img.name, "kind": kind, **ns.summary()}
    if kind == "weakest":
        out["note"] = (f"full rank at rtol {ns.rtol:.1e}: no exact nullspace; the noise lies in the "
                       f"{N.FULL_RANK_WEAKEST} weakest singular directions, so it is not invisible (raise --rtol to "
                       f"count them as null, or use --layernorm)")
    if args.layernorm:
        out["layernorm_residual"] = layernorm_residual(lm, v)
    if args.feasible and ns.nullity > 0:
        f = N.feasible_noise(lm, ns, x, v)
        v = f.noise
        out.update(feasible_kept_norm_fraction=f.kept_norm_fraction, feasible_max_box_violation=f.max_box_violation)
    report = N.verify_invariance(lm, x, v, ns)
    out.update(report.to_dict())
    out["top1_class"] = lm.class_name(report.top1_clean)
    if args.out is not None:
        save_noise(args.out, v, {"level": "input", "kind": kind, "model": lm.name, "rtol": ns.rtol,
                                 "magnitude": args.magnitude, "norm": args.norm, "seed": args.seed})
        out["out"] = str(args.out)
    return out


def _synthesis_tensors(lm, data: str, n_fit: int | None, n_val: int, n_check: int):
    """Fit pool, validation and test images of a synthesis, as tensors, and what each set is: the embedded
    data's training split (less a fixed validation draw) and held-out split; a folder's training part (less a
    seeded validation draw) and its held-out 10 %."""
    import torch

    from nullviz.data import DataSpec, own_data, synthesis_sets, synthesis_sources, train_heldout
    from nullviz.robustness.evaluation import images_tensor

    data = own_data(data, lm.name)
    if DataSpec.parse(data).embedded:
        sets = synthesis_sets(synthesis_sources(data)[0], None, own=data, n_test=n_check)
        fit = sets.fit[:n_fit] if n_fit is not None else sets.fit
        val = sets.validation[:n_val]
        used = dict(sets.used)
        if len(fit) < len(sets.fit) or len(val) < len(sets.validation):
            used["fit"] = f"{len(fit):,} training images (--images), drawn as minibatches"
            used["validation"] = f"{len(val)} other training images, never fit on: they choose δ"
        return lm.preprocess(fit), lm.preprocess(val) if val else None, lm.preprocess(sets.test), used
    train, held = train_heldout(data, lm.transform)
    pool, _ = images_tensor(lm, train, limit=None if n_fit is None else n_fit + n_val)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(12345))
    n_val = min(n_val, len(pool) // 5)
    val, fit = pool[order[:n_val].sort().values], pool[order[n_val:].sort().values]
    test, _ = images_tensor(lm, held, limit=n_check)
    used = {"fit": f"{len(fit):,} images of {data}'s training part (90 %), drawn as minibatches",
            "validation": f"{n_val} other images of its training part, never fit on: they choose δ",
            "test": f"{len(test)} images of its held-out 10 %: the verdict is about these"}
    return fit, val if n_val else None, test, used


def _sweep_grid(items: list[str]) -> dict[str, tuple]:
    from nullviz.noise.approximate import parse_sweep

    spec = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep:
            raise InvalidParameterError("sweep", "synthesize", "items like lam=0,0.5,1 / lim=1,3 / steps=100,200",
                                        item)
        spec[name] = values
    return parse_sweep(spec)


def cmd_synthesize(args) -> dict[str, Any]:
    from nullviz.noise.approximate import SynthesisConfig, default_synthesis_config, frontier, synthesize

    given = {k: getattr(args, k) for k in ("lim", "lr", "lam", "tol", "steps", "batch_size")
             if getattr(args, k) is not None}
    given.update(level=args.level, seed=args.seed, clip=args.clip)
    SynthesisConfig(**given)  # bad settings fail before the model loads
    grid = _sweep_grid(args.sweep) if args.sweep else None
    for name, value, least in (("images", args.images, 1), ("check-images", args.check_images, 0),
                               ("validation-images", args.validation_images, 0)):
        if value is not None and value < least:
            raise InvalidParameterError(name, "synthesize", "a positive number of images", value)
    lm = _load(args)
    config = default_synthesis_config(lm.name, **given)  # the model's measured defaults, then the options
    x, validation, check, used = _synthesis_tensors(lm, args.data, args.images, args.validation_images,
                                                    args.check_images)
    if grid is not None:
        def tick(k, n, point):
            if sys.stderr.isatty():
                sys.stderr.write(f"\r{k}/{n}: {point.label} ‖δ‖ {point.noise_l2:.3g} held-out Σ Δp² "
                                 f"{point.check_mse_probs:.2e}   ")

        result = frontier(lm, x, config, lams=grid.get("lam", (config.lam,)), lims=grid.get("lim"),
                          steps=grid.get("steps"), check_images=check if len(check) else None, progress=tick,
                          validation_images=validation, images_used=used)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        out = result.to_dict()
        if args.html is not None:
            from nullviz import figures

            figures.frontier_plot(result).write_html(str(args.html), include_plotlyjs="cdn")
            out["html"] = str(args.html)
        return out
    progress = None
    if sys.stderr.isatty():
        def progress(s):
            sys.stderr.write(f"\rstep {s.step + 1}/{config.steps}  loss {s.loss:.4f}  Σ Δp² {s.mse_probs:.4f}  "
                             f"agreement {s.agreement:.3f}")
    result = synthesize(lm, x, config, callback=progress, check_images=check if len(check) else None,
                        validation_images=validation, images_used=used)
    if progress is not None:
        sys.stderr.write("\n")
    out = result.to_dict()
    out.pop("history")
    out["loss_curve"] = [h.loss for h in result.history]
    if args.out is not None:
        result.save(args.out)
        out["out"] = str(args.out)
    return out


def _parse_query(text: str) -> tuple[int, int] | None:
    if text.strip().lower() == "cls":
        return None
    try:
        r, c = (int(v) for v in text.split(","))
    except ValueError as exc:
        raise InvalidParameterError("query", "attention", "'cls' or a patch 'ROW,COL', e.g. 3,4", text) from exc
    return r, c


def _attribution_methods(spec: str) -> tuple[str, ...]:
    """--methods: 'all' (the registry) or a comma-separated list of its names (a wrong one lists them)."""
    from nullviz.core.params import Options, check
    from nullviz.inspection.attribution import ATTRIBUTION_METHODS

    if spec.strip() == "all":
        return tuple(ATTRIBUTION_METHODS)
    names = tuple(m.strip() for m in spec.split(",") if m.strip())
    if not names:
        raise InvalidParameterError("methods", "attention", "'all' or a comma-separated list of methods", spec)
    for m in names:
        check("methods", "attention", m, Options(tuple(ATTRIBUTION_METHODS)))
    return names


def cmd_attention(args) -> dict[str, Any]:
    import numpy as np

    from nullviz.inspection import attention as A
    from nullviz.noise import exact as N
    from nullviz.data import load_dataset, own_data, resolve_image
    from nullviz.robustness.evaluation import images_tensor
    from nullviz.noise.files import load_noise
    from nullviz.noise.approximate import check_noise_fits

    lm = _load(args)
    img = resolve_image(args.image)
    x = lm.preprocess(img.image)
    ns = N.nullspace(lm)
    exact = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=args.magnitude, seed=args.seed))
    if args.noise == "exact":
        noise, level = exact, "input"
        noise_desc = f"exact nullspace noise (nullity {ns.nullity}, magnitude {args.magnitude})"
    else:
        saved = load_noise(args.noise)
        check_noise_fits(lm, saved.delta, saved.level)
        noise, level, noise_desc = saved.delta, saved.level, f"{args.noise} ({saved.level} level)"
    cmp = A.compare(lm, x, noise, level, args.head_fusion, args.discard_ratio)
    out = {"model": lm.name, "image": img.name, "noise": noise_desc, "level": level, **cmp.to_dict()}
    arrays = cmp.arrays()

    patch = _parse_query(args.query)
    q = A.query_index(cmp.clean.num_prefix_tokens, cmp.clean.grid_size, patch)
    block = args.block if args.block is not None else cmp.clean.layers
    if not 1 <= block <= cmp.clean.layers:
        raise InvalidParameterError("block", "attention", f"a block in 1…{cmp.clean.layers}", block)
    qc = A.query_maps(cmp.clean.attention, q, cmp.clean.num_prefix_tokens, cmp.clean.grid_size)[block - 1, 0]
    qn = A.query_maps(cmp.noised.attention, q, cmp.noised.num_prefix_tokens, cmp.noised.grid_size)[block - 1, 0]
    out["query_token"] = {"index": q, "patch": list(patch) if patch else None, "block": block,
                          "map_clean_mean_of_heads": qc.mean(0).tolist(),
                          "largest_change": float((qn - qc).abs().max())}
    heads = A.head_statistics(cmp.clean, cmp.noised, lm.patch_size)
    out["head_statistics"] = heads.to_dict()

    if args.contrast:
        noises = A.contrast_noises(exact, None if args.noise == "exact" else (noise, level), seed=args.seed)
        contrast = A.noise_contrast(lm, x, noises, clean=cmp.clean)
        out["contrast"] = contrast.to_dict()
        arrays.update({"contrast_repr_change": contrast.repr_change, "contrast_attention_tv": contrast.attention_tv})

    if args.sanity:
        from nullviz.inspection.attribution import nullspace_sanity

        pixels = lm.denormalize(x)
        out["sanity"] = [nullspace_sanity(lm, pixels, m, magnitude=args.magnitude, seed=args.seed).to_dict()
                         for m in _attribution_methods(args.methods)]

    if args.faithfulness:
        from nullviz.inspection.faithfulness import faithfulness

        if args.faithfulness < 1:
            raise InvalidParameterError("faithfulness", "attention", "a number of images ≥ 1", args.faithfulness)
        fx, _ = images_tensor(lm, load_dataset(own_data(args.data, lm.name), split="heldout"), limit=args.faithfulness)
        report = faithfulness(lm, lm.denormalize(fx), _attribution_methods(args.methods), seed=args.seed,
                              batch_size=args.batch_size, with_road=args.road,
                              progress=lambda k, n: sys.stderr.write(f"\rfaithfulness: image {k}/{n}"))
        sys.stderr.write("\n")
        out["faithfulness"] = report.to_dict()

    if args.set:
        if args.set < 1:
            raise InvalidParameterError("set", "attention", "a number of images ≥ 1", args.set)
        xs, _ = images_tensor(lm, load_dataset(own_data(args.data, lm.name), split="heldout"), limit=args.set)
        stats = A.set_statistics(lm, xs, noise, level, batch_size=args.batch_size)
        out["set"] = stats.to_dict()
        arrays.update({f"set_{k}": v for k, v in stats.arrays().items()})
    if args.out is not None:
        np.savez_compressed(args.out, **arrays)
        out["out"] = str(args.out)
    return out


def cmd_evaluate(args) -> dict[str, Any]:
    from nullviz.robustness import evaluation as R
    from nullviz.data import load_dataset, own_data

    spec = args.attacks if args.attacks is not None else "patchfool,cw,fgsm" if args.suite else "fgsm,pgd"
    attacks = () if spec.strip() in ("", "none") else tuple(a.strip() for a in spec.split(","))
    try:
        magnitudes = tuple(float(v) for v in args.tolerance.split(",") if v.strip())
    except ValueError as exc:
        raise InvalidParameterError("tolerance", "evaluate", "comma-separated numbers", args.tolerance) from exc
    config = R.EvalConfig(attacks=attacks, eps=args.eps, pgd_steps=args.pgd_steps, pgd_alpha=args.pgd_alpha,
                          pgd_norm=args.pgd_norm, autoattack_eps=args.autoattack_eps, cw_steps=args.cw_steps,
                          cw_c=args.cw_c, corruptions=R.corruptions_from_spec(args.corruptions),
                          severities=R.severities_from_spec(args.severities), tolerance_magnitudes=magnitudes,
                          shifts=_shifts_from_spec(args.shifts),
                          limit=args.limit, batch_size=args.batch_size, seed=args.seed)
    lm = _load(args)
    if args.suite is not None:
        return _evaluate_suite(args, lm, attacks, config)
    dataset = load_dataset(own_data(args.data, lm.name), split="heldout")
    progress = None
    if sys.stderr.isatty():
        def progress(stage, done, total):
            sys.stderr.write(f"\r{stage}: {done}/{total}     ")
    report = R.evaluate(lm, dataset, config, progress=progress)
    if progress is not None:
        sys.stderr.write("\n")
    out = report.to_dict()
    if args.reference is not None and config.corruptions:
        from dataclasses import replace

        spec = _spec(args)
        # the embedded default, or a checkpoint of --model's architecture (or one whose sidecar names it)
        ref_lm = replace(spec, name="default", checkpoint=None).load() if args.reference == "default" else \
            replace(spec, checkpoint=args.reference).load()
        ref = R.evaluate(ref_lm, dataset, replace(config, attacks=(), tolerance_magnitudes=()))
        out["reference"] = ref.model
        out["reference_mean_corruption_acc"] = ref.mean_corruption_acc
        rce = report.relative_corruption_error(ref)
        out["relative_corruption_error"] = rce.value
        out["relative_corruption_error_per_corruption"] = rce.per_corruption
        out["relative_corruption_error_left_out"] = rce.excluded
    if args.csv is not None:
        args.csv.write_text(R.rows_to_csv(report.to_rows()))
        out["csv"] = str(args.csv)
    return out


def _shifts_from_spec(spec: str) -> tuple[str, ...]:
    from nullviz.data.scenes import SHIFTS

    spec = spec.strip()
    if spec in ("", "none"):
        return ()
    return tuple(SHIFTS) if spec == "all" else tuple(s.strip() for s in spec.split(",") if s.strip())


def _evaluate_suite(args, lm, attacks: tuple[str, ...], config) -> dict[str, Any]:
    from nullviz.robustness.benchmarks import evaluate_suite

    if args.root is None:
        raise InvalidParameterError("root", "evaluate --suite", "the folder that holds the benchmarks (--root DIR)",
                                    None)
    only = None if args.only is None else tuple(n.strip() for n in args.only.split(",") if n.strip())
    progress = None
    if sys.stderr.isatty():
        def progress(key, done, total):
            sys.stderr.write(f"\r{key}: {done}/{total} images   ")
    report = evaluate_suite(lm, args.root, only, args.limit, attacks, config, args.batch_size, args.seed, progress)
    if progress is not None:
        sys.stderr.write("\n")
    for reason in report.skipped.values():
        sys.stderr.write(f"nullviz: skipped {reason}\n")
    return report.to_dict()


def cmd_finetune(args) -> dict[str, Any]:
    from nullviz.data import own_data, train_heldout
    from nullviz.train.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(method=args.method, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                            batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                            warmup_steps=args.warmup_steps, freeze=args.freeze, noise_every=args.noise_every,
                            synth_steps=args.synth_steps, synth_batch_size=args.synth_batch_size,
                            synth_fraction=args.synth_fraction,
                            synth_lam=args.synth_lam, synth_lim=args.synth_lim,
                            fgsm_eps=args.fgsm_eps, fresh_deltas=args.fresh_deltas, seed=args.seed,
                            grad_accum=args.grad_accum, workers=args.workers, compile=args.compile,
                            new_head=args.new_head, eval_synth_steps=args.eval_synth_steps, augment=args.augment,
                            keep_best=args.keep_best, synth_tol=args.synth_tol, epoch_measures=args.epoch_measures,
                            noise_norms=tuple(args.noise_norms) if args.noise_norms else None)
    if args.config is not None:
        try:
            settings = json.loads(args.config.read_text())
            if not isinstance(settings, dict) or set(settings) - set(FinetuneConfig.__dataclass_fields__):
                raise ValueError("not a FinetuneConfig")
        except (OSError, ValueError) as exc:
            raise InvalidParameterError("config", "finetune", "a JSON file of FinetuneConfig settings",
                                        str(args.config)) from exc
        config = FinetuneConfig(**settings)
    lm = _load(args)
    train, held = train_heldout(own_data(args.data, lm.name), lm.transform, args.data_cache,
                                train_transform=lm.augmentation(config.augment))
    primary = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    progress = None
    if sys.stderr.isatty() and primary:
        def progress(rec):
            sys.stderr.write(f"\r{rec['method']} step {rec['step']}/{rec['total_steps']}  loss {rec['loss']:.4f}   ")
    stop = {"requested": False}
    previous = signal.signal(signal.SIGTERM, lambda *a: stop.update(requested=True))  # stop at the next step, save
    try:
        result = finetune(lm, train, held, config, args.out, resume=args.resume, on_step=progress,
                          should_stop=lambda: stop["requested"])
    finally:
        signal.signal(signal.SIGTERM, previous)
        from nullviz.train.distributed import cleanup

        cleanup()
    if progress is not None:
        sys.stderr.write("\n")
    return result.to_dict() if primary else None


def cmd_jobs(args) -> dict[str, Any]:
    from nullviz.server.settings import ServerSettings
    from nullviz.jobs.queue import JobQueue

    env = {"NULLVIZ_DATA_DIR": args.data_dir} if args.data_dir else None
    settings = ServerSettings.from_env(env)
    queue = JobQueue(settings.jobs_root, settings.max_running_jobs)
    if args.action == "clean":
        from nullviz.jobs.retention import clean_old

        days = args.older_than if args.older_than is not None else (settings.retention_days or 7)
        if days < 0:
            raise InvalidParameterError("--older-than", "nullviz jobs clean", "a number of days ≥ 0", days)
        return {"data_dir": str(settings.data_root), "older_than_days": days,
                **clean_old(settings, days, dry_run=args.dry_run).to_dict()}
    if args.action == "stop":
        if not args.job_id:
            raise InvalidParameterError("job_id", "nullviz jobs stop", "the id of a job (see 'nullviz jobs')", None)
        job = queue.stop(args.job_id)
        return {"stopping": job.id, "state": job.state}
    jobs = queue.jobs()
    return {"jobs_dir": str(settings.jobs_root), "running": sum(j.state == "running" for j in jobs),
            "waiting": sum(j.state == "queued" for j in jobs),
            "jobs": [f"{j.id} {j.owner} {j.state} {j.steps_done}/{j.steps_total} {j.label}" for j in jobs]}


COMMANDS = {"info": cmd_info, "nullspace": cmd_nullspace, "synthesize": cmd_synthesize, "attention": cmd_attention,
            "evaluate": cmd_evaluate, "finetune": cmd_finetune, "jobs": cmd_jobs}


def _print_human(out: dict[str, Any]) -> None:
    for key, value in out.items():
        if isinstance(value, list):
            shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value[:6 if len(value) > 12 else None])
            value = f"[{shown}, … ({len(value)} values)]" if len(value) > 12 else f"[{shown}]"
        elif isinstance(value, float):
            value = f"{value:.6g}"
        print(f"{key:>28}: {value}")


def _finetune_parser(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["finetune"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    for i, arg in enumerate(argv):  # a preset's values become the defaults, so explicit flags override them
        name = arg.split("=", 1)[1] if arg.startswith("--preset=") else argv[i + 1] if arg == "--preset" and \
            i + 1 < len(argv) else None
        if name in FINETUNE_PRESETS:
            _finetune_parser(parser).set_defaults(**FINETUNE_PRESETS[name])
    args = parser.parse_args(argv)
    try:
        out = COMMANDS[args.command](args)
    except NullvizError as exc:
        sys.stderr.write(f"nullviz: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("nullviz: interrupted\n")
        return 130
    if out is None:  # a non-primary rank of a distributed run: rank 0 reports
        return 0
    try:
        if args.json:
            print(json.dumps(out, default=str))
        else:
            _print_human(out)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
    return 0


def console_main() -> None:
    """The ``nullviz`` command (and ``python -m nullviz``): a process of its own tunes its allocator, then runs."""
    from nullviz.server.process import keep_freed_memory

    keep_freed_memory()  # a command, a job or a torchrun rank: reuse freed memory instead of faulting it in again
    raise SystemExit(main())
