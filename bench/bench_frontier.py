"""The approximate nullspace on images δ never saw: old defaults vs the frontier defaults, and the frontier.

    python bench/bench_frontier.py [--seeds 0 1 2] [--out bench/out/frontier]

Embedded default model; δ (encoder level) is fit on 128 training digits (a different slice per seed) and
measured on the 359 held-out digits, which it never saw: ‖δ‖, the distance travelled from its random start,
held-out mean Σ Δp² and top-1 agreement, the permuted and random-start controls, seconds. Then a sweep over λ
(seed 0) for the README's frontier figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nullviz import figures  # noqa: E402
from nullviz.data import digits_dataset  # noqa: E402
from nullviz.models import load_model  # noqa: E402
from nullviz.robustness import images_tensor  # noqa: E402
from nullviz.synthesis import RESEARCH_CODE, SynthesisConfig, frontier, synthesize  # noqa: E402

SETTINGS = {"research code's (lim 3, λ 0, stop inside ε)": SynthesisConfig(**RESEARCH_CODE),
            "nullviz defaults (lim 1, λ 0.5, 200 steps)": SynthesisConfig()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("bench/out/frontier"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    lm = load_model("default", device="cpu")
    train, _ = images_tensor(lm, digits_dataset("train"))
    held, _ = images_tensor(lm, digits_dataset("heldout"))
    rows, out = [], {}
    for name, cfg in SETTINGS.items():
        runs = []
        for seed in args.seeds:
            fit = train[seed * 128:(seed + 1) * 128]
            r = synthesize(lm, fit, SynthesisConfig(**{**cfg.__dict__, "seed": seed}), check_images=held)
            runs.append({"l2": r.noise_l2, "travelled": r.travelled_l2, "start": r.start_l2,
                         "held_mse": r.check_mse_probs, "held_agree": r.check_agreement,
                         "permuted": r.check_permuted_mse_probs, "random_start": r.check_random_start_mse_probs,
                         "reached": r.reached_tolerance, "beats_permuted": r.beats_permuted_on_check,
                         "steps": r.steps_run, "seconds": r.seconds})
        out[name] = runs
        mean = lambda k: statistics.mean(x[k] for x in runs)  # noqa: E731
        each = lambda k, f: ", ".join(format(x[k], f) for x in runs)  # noqa: E731
        rows.append(f"| {name} | {mean('l2'):.0f} ({each('l2', '.0f')}) | "
                    f"{mean('travelled'):.0f} | {each('held_mse', '.4f')} | "
                    f"{mean('held_agree'):.1%} | {mean('permuted'):.2f} / {mean('random_start'):.2f} | "
                    f"{sum(x['reached'] for x in runs)}/{len(runs)} | {mean('steps'):.0f} | {mean('seconds'):.1f} |")
        print(rows[-1], flush=True)
    table = "\n".join(["| settings | ‖δ‖ (per seed) | travelled from start | held-out mean Σ Δp² (per seed) | "
                       "held-out agreement | controls Σ Δp²: permuted / random start | inside ε = 0.01 | steps | "
                       "seconds |", "|---" * 9 + "|", *rows])
    front = frontier(lm, train[:128], SynthesisConfig(), lams=(0.0, 0.1, 0.3, 0.5, 1.0, 2.0), check_images=held)
    sweep = "\n".join(["| λ | ‖δ‖ | held-out mean Σ Δp² | permuted | Gaussian | random start |", "|---" * 6 + "|"]
                      + [f"| {p.lam:g} | {p.noise_l2:.0f} | {p.check_mse_probs:.4f} | {p.permuted_mse_probs:.3f} | "
                         f"{p.gaussian_mse_probs:.3f} | {p.random_start_mse_probs:.3f} |" for p in front.points])
    best = front.allowed()
    text = (table + "\n\n" + sweep + "\n\nlargest δ within ε = 0.01 on the held-out digits: "
            + (f"{best.label}, ‖δ‖ {best.noise_l2:.0f}" if best else "none") + "\n")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text(text)
    Path(f"{args.out}.json").write_text(json.dumps({"defaults": out, "frontier": front.to_dict()}, indent=1))
    figures.frontier_plot(front).write_html(f"{args.out}.html", include_plotlyjs="cdn")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
