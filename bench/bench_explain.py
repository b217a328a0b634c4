"""What each explanation costs, as ratios in one run: every method of the attribution registry on one image of
each embedded model, ÷ one plain forward+backward of that image (the unit a gradient map cannot go below); the
nullspace sanity check (two maps and a gradient) and the faithfulness curves (8 steps, one image) per method in
seconds; and the head view (queries and keys of one head over 64 images, PCA and t-SNE).

    python bench/bench_explain.py [--device cpu|cuda]
"""

from __future__ import annotations

import time

import torch

from bench_core import device_from_argv, print_table, timeit
from nullviz.data import load_dataset, sample_image
from nullviz.inspection.attention import contrast_noises, head_embedding
from nullviz.inspection.attribution import ATTRIBUTION_METHODS, attribute, nullspace_sanity
from nullviz.inspection.faithfulness import faithfulness
from nullviz.models import embedded_model, load_model
from nullviz.noise import exact as N
from nullviz.robustness.evaluation import images_tensor


def main(argv=None) -> int:
    device = device_from_argv(argv)
    out: dict = {"device": str(device)}
    for name in ("digits", "cluttered"):
        lm = load_model(name, device=device)
        pixels = lm.denormalize(lm.preprocess(sample_image(embedded_model(name).sample)))
        pixels = pixels if pixels.dim() == 4 else pixels.unsqueeze(0)

        def forward_backward():
            x = pixels.clone().requires_grad_(True)
            lm.model(lm.normalize(x))[0].max().backward()

        unit = timeit(forward_backward, repeat=9)
        out[f"{name}_forward_backward_ms"] = unit * 1e3
        for method in ATTRIBUTION_METHODS:
            t = timeit(lambda: attribute(lm, pixels, method, target=3), repeat=3, warmup=1)
            out[f"{name}_{method}_over_fb"] = t / unit
        for method in ATTRIBUTION_METHODS:
            t = time.perf_counter()
            nullspace_sanity(lm, pixels, method)
            out[f"{name}_sanity_{method}_s"] = time.perf_counter() - t
        t = time.perf_counter()
        faithfulness(lm, pixels, steps=8)
        out[f"{name}_faithfulness_every_method_1_image_s"] = time.perf_counter() - t
        x, _ = images_tensor(lm, load_dataset(name, split="heldout"), limit=64)
        v = N.sample_noise(N.nullspace(lm), lm.img_size, N.NoiseSpec(seed=0))
        noises = {"clean": None, **contrast_noises(v)}
        for method in ("pca", "tsne"):
            t = time.perf_counter()
            head_embedding(lm, x, noises, block=len(lm.model.blocks), head=1, method=method)
            out[f"{name}_head_view_64_images_{method}_s"] = time.perf_counter() - t
    print_table(out)
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())
