"""The LayerNorm nullspace, measured: how much larger than an image the noise is, and how little the logits move.

    python bench/bench_layernorm.py [--images 16] [--seed 0]

For each model: W's shape and numerical nullity (the patch embedding's exact nullspace), the residual
‖W W⁺1 − 1‖ / ‖1‖, and on real images (the model's own test split, or the sample photographs for the random
timm ViTs) the relative change of the logits and the top-1 agreement under
- input level: c_i·W⁺1 added to patch i (a different random c_i per patch), ‖noise‖ = 2× the image's;
- encoder level: c_i·1 added to patch token i, ‖noise‖ = 10× the image's tokens;
- the same sizes drawn at random (the control: what noise of that size does).
Random ViT-B/16 has a square, full-rank W — "no exact nullspace" — and still one exact direction per patch.
"""

from __future__ import annotations

import argparse

import torch

from nullviz.data import sample_image, synthesis_sets, synthesis_sources
from nullviz.models import create_random_vit, embedded_model, load_model, logits_from_patch_tokens, patch_tokens
from nullviz.noise import exact as N
from nullviz.noise.layernorm import is_layernorm_invariant, patch_mean_direction


def images_for(lm, short: str | None, count: int) -> tuple[torch.Tensor, str]:
    if short is not None:
        spec = embedded_model(short)
        sets = synthesis_sets(synthesis_sources(spec.data)[0], None, own=spec.data)
        return lm.preprocess(sets.test[:count]), f"the first {count} of its test split"
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    return torch.cat([lm.preprocess(sample_image(n)) for n in names]), "4 sample photographs"


def relative_change(clean: torch.Tensor, noised: torch.Tensor) -> tuple[float, float]:
    change = float(((noised - clean).norm(dim=1) / clean.norm(dim=1)).max())
    agree = float((noised.argmax(1) == clean.argmax(1)).float().mean())
    return change, agree


@torch.no_grad()
def measure(lm, x: torch.Tensor, seed: int) -> dict:
    model, p = lm.model, int(lm.model.patch_embed.patch_size[0])
    gen = torch.Generator().manual_seed(seed)
    ns = N.nullspace(lm)
    direction = patch_mean_direction(model)
    n_patches = int(model.patch_embed.num_patches)
    clean = model(x)
    scales = torch.randn(x.shape[0], n_patches, 1, generator=gen, dtype=torch.float64)
    v = N.unpatchify((scales * direction.vector).float(), p, tuple(x.shape[-2:]))
    v = v * (2 * x.flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    control = torch.randn(x.shape, generator=gen)
    control = control * (v.flatten(1).norm(dim=1) / control.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    u = patch_tokens(model, x)
    means = torch.randn(u.shape[0], u.shape[1], 1, generator=gen).expand_as(u)
    means = means * (10 * u.flatten(1).norm(dim=1) / means.flatten(1).norm(dim=1)).view(-1, 1, 1)
    token_control = torch.randn(u.shape, generator=gen)
    token_control = token_control * (means.flatten(1).norm(dim=1) / token_control.flatten(1).norm(dim=1)).view(-1, 1, 1)
    return {"W": tuple(N.patch_embed_matrix(model).shape), "nullity": ns.nullity, "residual": direction.residual,
            "invariant": (is_layernorm_invariant(model, "input"), is_layernorm_invariant(model)),
            "input": relative_change(clean, model(x + v)), "input control": relative_change(clean, model(x + control)),
            "encoder": relative_change(clean, logits_from_patch_tokens(model, u + means)),
            "encoder control": relative_change(clean, logits_from_patch_tokens(model, u + token_control))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    models = [("digits", lambda: load_model(embedded_model("digits").name, device="cpu"), "digits"),
              ("cluttered", lambda: load_model(embedded_model("cluttered").name, device="cpu"), "cluttered"),
              ("random ViT-S/16", lambda: create_random_vit("vit_small_patch16_224", seed=0), None),
              ("random ViT-B/16", lambda: create_random_vit("vit_base_patch16_224", seed=0), None)]
    print("| model | W (D × 3p²) | exact nullity of W | ‖W W⁺1 − 1‖/‖1‖ | invariant (input, encoder) | images | "
          "input c_i·W⁺1, 2× ‖x‖: max rel. Δlogits / top-1 kept | random, same size | "
          "encoder c_i·1, 10× ‖u‖ | random, same size |")
    print("|---" * 10 + "|")
    for name, make, short in models:
        lm = make()
        x, which = images_for(lm, short, args.images)
        m = measure(lm, x, args.seed)
        cell = lambda k: f"{m[k][0]:.1e} / {m[k][1]:.0%}"  # noqa: E731
        print(f"| {name} | {m['W'][0]} × {m['W'][1]} | {m['nullity']} | {m['residual']:.1e} | "
              f"{'yes' if m['invariant'][0] else 'no'}, {'yes' if m['invariant'][1] else 'no'} | {which} | "
              f"{cell('input')} | {cell('input control')} | {cell('encoder')} | {cell('encoder control')} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
