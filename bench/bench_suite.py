"""Throughput of the Table 1 suite (``nullviz.robustness.benchmarks``) on a synthetic benchmark root, in one run.

    python bench/bench_suite.py [--model vit_small_patch16_224] [--images 128] [--device cpu|cuda]

Writes JPEGs in the published layouts under a temporary root — ``val/<wnid>/`` at 256×256 (resized and centre-
cropped by the model's transform) and ``imagenet-c/fog/<1-5>/<wnid>/`` at 224×224 (read as published) — and
times ``evaluate_suite`` on each, beside a plain forward of the same number of already-decoded tensors at the
same batch size: images/s, and the suite's time ÷ the bare forward (what decoding and transforms add). The
model is randomly initialised (no download); its accuracy is meaningless, its speed is the model's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nullviz.models import create_random_vit
from nullviz.robustness.benchmarks import evaluate_suite, imagenet_wnids


def write_root(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    wnids = imagenet_wnids()[:8]
    for k in range(images):
        folder = root / "val" / wnids[k % 8]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"{k}.JPEG", quality=90)
    for s in range(1, 6):
        for k in range(images // 5):
            folder = root / "imagenet-c" / "fog" / str(s) / wnids[k % 8]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(folder / f"{k}.JPEG", quality=90)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    lm = create_random_vit(a.model, seed=0, device=a.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_root(root, a.images)
        x = torch.randn(a.batch_size, *lm.data_config["input_size"], device=lm.device)
        with torch.no_grad():
            lm.model(x)  # warm-up at the measured batch size
            t = time.perf_counter()
            for _ in range(max(1, a.images // a.batch_size)):
                lm.model(x)
            if lm.device.type == "cuda":
                torch.cuda.synchronize()
            bare = (time.perf_counter() - t) / (max(1, a.images // a.batch_size) * a.batch_size)
        print(f"machine: {torch.get_num_threads()} threads, device {lm.device}; model {a.model} (random init)")
        print(f"bare forward                     {1 / bare:8.1f} images/s")
        for only in (("val",), ("c",)):
            t = time.perf_counter()
            report = evaluate_suite(lm, root, only=only, batch_size=a.batch_size)
            seconds = time.perf_counter() - t
            n = sum(r.images for r in report.results.values()) or (a.images // 5) * 5
            print(f"suite {only[0]:<6} ({n:4d} images)       {n / seconds:8.1f} images/s   "
                  f"÷ bare forward {seconds / (n * bare):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
