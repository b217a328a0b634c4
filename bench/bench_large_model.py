"""What each interactive action costs on a real-sized model: ViT-S/16 at 224 px (22 M parameters), randomly
initialised (the same arithmetic as the trained weights; nothing is downloaded), with the pages' defaults for a
model without data of its own.

    python bench/bench_large_model.py [--device cuda] [--model vit_small_patch16_224] [--repeats 3]

Each action is timed as the page runs it (the median of --repeats; the first, warm-up call is not counted):
exact noise and its proof (the SVD is computed once per model and kept), one attention comparison (clean vs. noised trace), Integrated
Gradients (32 steps, clean and noised, as the Attention page), set statistics over the sample photographs, and
the approximate δ on the sample photographs at the generic defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from nullviz.data import PHOTOS_SOURCE, SAMPLE_PHOTOS, sample_image, synthesis_sets
from nullviz.inspection.attention import compare, set_statistics
from nullviz.inspection.attribution import attribute
from nullviz.models import create_random_vit
from nullviz.noise import exact as N
from nullviz.noise.approximate import default_synthesis_config, synthesize


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up: kernels, caches, allocator
    runs = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--synthesis-steps", type=int, default=None,
                    help="time this many synthesis steps and scale to the page's default (its 200 take minutes on a CPU)")
    args = ap.parse_args(argv)

    lm = create_random_vit(args.model, seed=0, device=args.device)
    dev = lm.device
    image = sample_image("chelsea")
    x = lm.preprocess(image)
    ns = N.nullspace(lm)
    noise = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=1.0, seed=0))
    pixels = lm.denormalize(x)
    photos = lm.preprocess([sample_image(n) for n in SAMPLE_PHOTOS])
    sets = synthesis_sets(PHOTOS_SOURCE, image, own=None, current_is_small=False)
    fit = lm.preprocess(sets.fit)
    cfg = default_synthesis_config(lm.name)

    def exact():
        fresh = N.nullspace(lm)  # as the page: the SVD is kept with the loaded model after its first call
        v = N.sample_noise(fresh, lm.img_size, N.NoiseSpec(magnitude=1.0, seed=1))
        N.verify_invariance(lm, x, v, fresh)

    def integrated_gradients():
        a = attribute(lm, pixels, "integrated_gradients", None, steps=32)
        attribute(lm, lm.denormalize(x + noise.to(x)), "integrated_gradients", int(a.target[0]), steps=32)

    rows = {
        "exact noise + proof (SVD, noise, invariance check)": timed(exact, dev, args.repeats),
        "attention: clean vs. noised trace": timed(lambda: compare(lm, x, noise.to(dev), "input"), dev, args.repeats),
        "Integrated Gradients, 32 steps, clean + noised": timed(integrated_gradients, dev, args.repeats),
        f"set statistics over the {len(SAMPLE_PHOTOS)} sample photographs": timed(
            lambda: set_statistics(lm, photos, noise.to(dev), "input"), dev, args.repeats),
    }
    steps = args.synthesis_steps or cfg.steps
    t0 = time.perf_counter()
    synthesize(lm, fit, replace(cfg, steps=steps))
    seconds = time.perf_counter() - t0
    label = f"approximate δ, {cfg.steps} steps on {len(fit)} images (the page's default for this model)"
    rows[label + (f", scaled from {steps} steps" if steps != cfg.steps else "")] = seconds * cfg.steps / steps
    out = {"model": args.model, "device": str(dev), "threads": torch.get_num_threads(),
           "seconds": {k: round(v, 3) for k, v in rows.items()}}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
