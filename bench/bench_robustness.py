"""Robustness throughput, and our PGD-10 vs. torchattacks' PGD-10 on the same model and batch (one run).

    python bench/bench_robustness.py [--device cpu|cuda]
"""

from __future__ import annotations

import time

import torch


from bench_core import device_from_argv, paired_ratio, print_table, timeit
from nullviz.data import digits_dataset
from nullviz.models import PixelModel, create_random_vit, load_model
from nullviz.robustness import evaluation as R
from nullviz.robustness.attacks import fgsm, pgd


def attack_rates(lm, px, y, label: str) -> dict:
    import torchattacks

    fn = PixelModel.of(lm)
    n = len(y)
    t_clean = timeit(lambda: R.predict_pixels(fn, px), repeat=5)
    t_fgsm = timeit(lambda: fgsm(fn, px, y), repeat=5)
    ta = torchattacks.PGD(fn, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    ratio, t_pgd, t_ta = paired_ratio(lambda: pgd(fn, px, y, steps=10), lambda: ta(px, y), repeat=5, warmup=1)
    return {f"{label}_clean_img_per_s": n / t_clean, f"{label}_fgsm_img_per_s": n / t_fgsm,
            f"{label}_pgd10_img_per_s": n / t_pgd, f"{label}_torchattacks_pgd10_img_per_s": n / t_ta,
            f"{label}_pgd10_ours_over_torchattacks_time": ratio}


def corruption_rate(px, label: str) -> dict:
    t = time.perf_counter()
    for name in R.CORRUPTIONS:
        R.corrupt(px, name, 3)
    dt = time.perf_counter() - t
    return {f"{label}_corruption_img_x_corruptions_per_s": len(px) * len(R.CORRUPTIONS) / dt}


def main(argv=None) -> int:
    device = device_from_argv(argv)
    out = {"device": str(device)}
    lm = load_model("default", device=device)
    x, y = R.images_tensor(lm, digits_dataset("heldout"), limit=128)
    px = lm.denormalize(x)
    out.update(attack_rates(lm, px, y, "default_b128"))
    out.update(corruption_rate(px[:64].cpu(), "32px"))

    tiny = create_random_vit("vit_tiny_patch16_224", seed=0, device=device)
    gen = torch.Generator().manual_seed(0)
    pt = torch.rand(16, 3, 224, 224, generator=gen).to(device)
    yt = torch.randint(0, 1000, (16,), generator=gen).to(device)
    out.update(attack_rates(tiny, pt, yt, "vit_ti16_b16"))
    out.update(corruption_rate(pt[:8].cpu(), "224px"))
    print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
