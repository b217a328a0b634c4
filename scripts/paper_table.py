"""The paper in miniature: every finetuning method, 3 seeds, on the default model and digits; mean ± std.

    python scripts/paper_table.py [--epochs 5] [--lr 5e-4] [--seeds 0 1 2] [--out bench/out/paper_table.md]

Per run: finetune a copy of the embedded default model with the same budget, then measure on the 359 held-out
digits: clean accuracy; accuracy under fresh δs synthesized from the run's final model on training images (mean
over 3 seeds) and, apart, under the δ the last epoch trained on; under Gaussian noise of the fresh δs' norm
(from an evaluation stream no training draw uses; all token level); FGSM and PGD-10 at ε = 8/255 (pixels);
mean accuracy over the 15 ImageNet-C corruptions at severity 3 (32-px parameters) and the mCE-style relative
corruption error against the untouched default model, which is the first row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nullviz import robustness as R  # noqa: E402
from nullviz.data import digits_dataset  # noqa: E402
from nullviz.finetune import METHODS, FinetuneConfig, FinetuneRun  # noqa: E402
from nullviz.models import load_model  # noqa: E402

COLUMNS = ("clean", "under δ", "under its training δ", "Gaussian", "FGSM", "PGD-10", "corruptions", "rel. CE")
PERCENT = {"rel. CE": False}  # already ×100


def robustness_of(lm, reference=None) -> tuple[dict[str, float], R.RobustnessReport]:
    cfg = R.EvalConfig(attacks=("fgsm", "pgd"), corruptions=R.CORRUPTIONS, severities=(3,))
    rep = R.evaluate(lm, digits_dataset("heldout"), cfg)
    rce = rep.relative_corruption_error(reference or rep)
    if rce.excluded:
        print(f"  relative corruption error leaves out: {rce.excluded}", flush=True)
    return ({"clean": rep.clean_acc, "FGSM": rep.attacks["fgsm"]["robust_acc"],
             "PGD-10": rep.attacks["pgd"]["robust_acc"], "corruptions": rep.mean_corruption_acc,
             "rel. CE": rce.value}, rep)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("bench/out/paper_table.md"))
    args = ap.parse_args(argv)
    lm = load_model("default", device="cpu")
    train, held = digits_dataset("train", lm.transform), digits_dataset("heldout", lm.transform)
    rows: dict[str, list[dict[str, float]]] = {}

    t0 = time.perf_counter()
    original = FinetuneRun(lm, train, held, FinetuneConfig(method="baseline", seed=0))
    noise = original.evaluate()  # fresh δs from the untouched model
    measured, reference = robustness_of(lm)
    rows["default model (no finetuning)"] = [{**measured, "under δ": noise["delta_acc"], "under its training δ": None,
                                              "Gaussian": noise["gaussian_acc"]}]
    for method in METHODS:
        for seed in args.seeds:
            cfg = FinetuneConfig(method=method, epochs=args.epochs, lr=args.lr, seed=seed)
            run = FinetuneRun(lm, train, held, cfg)
            result = run.run()
            last = result.history[-1]
            tuned = load_model("default", device="cpu")
            tuned.model.load_state_dict(run.model.state_dict())
            rows.setdefault(method, []).append({**robustness_of(tuned, reference)[0], "under δ": last["delta_acc"],
                                                "under its training δ": last["train_delta_acc"],
                                                "Gaussian": last["gaussian_acc"]})
            print(f"{method} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[method][-1].items()
                                                        if v is not None), flush=True)

    lines = [f"| model ({args.epochs} epochs, lr {args.lr:g}, seeds {', '.join(map(str, args.seeds))}) | "
             + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, runs in rows.items():
        cells = []
        for col in COLUMNS:
            vals = [r[col] * (100 if PERCENT.get(col, True) else 1) for r in runs if r[col] is not None]
            cells.append("—" if not vals else f"{vals[0]:.1f}" if len(vals) == 1 else
                         f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    print(f"total {time.perf_counter() - t0:.0f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
