"""Is every corruption a severity scale? SSIM to the clean image by severity at 32, 64 and 224 px, and the
embedded model's held-out accuracy by severity at 32 px.

    python scripts/corruption_scale.py [--sizes 32 64 224] [--digits 300] [--out bench/out/corruption_scale.md]

SSIM: mean over six photographs that ship with scikit-image, centre-cropped and resized; one seed per image.
A ladder is flagged when a severity is more than 0.01 SSIM (or 0.02 accuracy) *less* damaging than the one
before it, or severity 5 is not at least 0.05 SSIM below severity 1. This is the measurement behind
``nullviz.robustness.corruptions.SEVERITY_ORDER``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


from nullviz.robustness.corruptions import CORRUPTIONS, is_severity_scale, scale_photos, ssim_by_severity


def accuracy_ladder(name: str, limit: int) -> list[float]:
    from nullviz.robustness import evaluation as R
    from nullviz.data import digits_dataset
    from nullviz.models import load_model

    lm = load_model("default", device="cpu")
    cfg = R.EvalConfig(attacks=(), corruptions=(name,), limit=limit)
    return R.evaluate(lm, digits_dataset("heldout"), cfg).corruptions[name]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    ap.add_argument("--digits", type=int, default=300, help="held-out digits for the 32-px accuracy (0: skip)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/corruption_scale.md"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    lines = ["| corruption | " + " | ".join(f"SSIM {s} px (sev 1–5)" for s in args.sizes)
             + (" | accuracy 32 px digits (sev 1–5)" if args.digits else "") + " |",
             "|---" * (1 + len(args.sizes) + bool(args.digits)) + "|"]
    images = {size: scale_photos(size) for size in args.sizes}
    flagged = []
    for name in CORRUPTIONS:
        cells = []
        for size in args.sizes:
            ladder = ssim_by_severity(images[size], name)
            ok = is_severity_scale(ladder, 0.01, 0.05)
            flagged += [] if ok else [f"{name} SSIM {size}px"]
            cells.append(" ".join(f"{v:.2f}" for v in ladder) + ("" if ok else " ✗"))
        if args.digits:
            ladder = accuracy_ladder(name, args.digits)
            ok = is_severity_scale(ladder, 0.02, None)
            flagged += [] if ok else [f"{name} accuracy"]
            cells.append(" ".join(f"{v:.2f}" for v in ladder) + ("" if ok else " ✗"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    print(f"not a scale: {', '.join(flagged) or 'none'}; {time.perf_counter() - t0:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    return 1 if flagged else 0


if __name__ == "__main__":
    raise SystemExit(main())
