"""Finetuning at scale on this machine: 1 vs 2 processes (gloo), and JPEG decoding with 0 vs 2 loader workers.

    python bench/bench_distributed.py

1. ``nullviz finetune`` (baseline, default model, digits, batch 32 per process, 60 steps) in one process with
   2 threads, then under ``torchrun --nproc_per_node 2`` with 1 thread each: training images per second from
   the run's own JSON (global batch 32 vs 64).
2. An ImageFolder of 512 JPEGs (224², crops of the scikit-image photographs) read through the training loader
   with timm's eval transform for ViT-S/16: images per second with 0 and 2 worker processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench_core import print_table


def finetune_rate(processes: int, out: Path) -> float:
    args = ["-m", "nullviz", "finetune", "--method", "baseline", "--epochs", "1", "--steps-per-epoch", "60",
            "--batch-size", "32", "--fresh-deltas", "0", "--out", str(out), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // processes)}
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
           if processes > 1 else [sys.executable]) + args
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return float(json.loads(proc.stdout)["images_per_second"])


def jpeg_folder(root: Path, count: int = 512) -> Path:
    import numpy as np
    from PIL import Image

    from nullviz.data import SAMPLE_PHOTOS, sample_image

    rng = np.random.default_rng(0)
    photos = [np.asarray(sample_image(n)) for n in SAMPLE_PHOTOS]
    for i in range(count):
        arr = photos[i % len(photos)]
        h, w = arr.shape[:2]
        s = int(rng.integers(min(h, w) // 2, min(h, w)))
        top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        cls = root / f"class{i % 4}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr[top:top + s, left:left + s]).resize((224, 224)).save(cls / f"{i}.jpg", quality=90)
    return root


def loader_rate(folder: Path, workers: int) -> float:
    import timm
    from timm.data import create_transform, resolve_data_config

    from nullviz.data import image_folder
    from nullviz.train.loader import EpochBatchSampler, make_train_loader

    with __import__("torch").device("meta"):
        cfg = resolve_data_config(model=timm.create_model("vit_small_patch16_224"))
    ds = image_folder(folder, create_transform(**cfg, is_training=False))
    loader = make_train_loader(ds, EpochBatchSampler(len(ds), 0, 0, len(ds) // 32, 32), workers=workers)
    t = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    return n / (time.perf_counter() - t)


def main() -> int:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        one = finetune_rate(1, Path(tmp) / "one")
        two = finetune_rate(2, Path(tmp) / "two")
        out.update({"finetune_1proc_2threads_img_per_s": one, "finetune_2proc_1thread_img_per_s": two,
                    "two_over_one": two / one})
        folder = jpeg_folder(Path(tmp) / "jpegs")
        w0, w2 = loader_rate(folder, 0), loader_rate(folder, 2)
        out.update({"jpeg_224_loader_0_workers_img_per_s": w0, "jpeg_224_loader_2_workers_img_per_s": w2,
                    "workers_2_over_0": w2 / w0})
    print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
