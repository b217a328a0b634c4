"""The second exact nullspace: the directions every LayerNorm removes.

A LayerNorm subtracts each token's mean over its D channels before anything else. In a pre-norm ViT (timm's
``Block``: x + attn(norm1(x)), x + mlp(norm2(x))) every branch reads the residual stream only through such a
norm, and so does the head (the class token's final norm, or a norm before / after average pooling). Adding
c_i·1 (the same number c_i to all D channels of patch token i) therefore changes no branch's input: the
residual stream carries c_i·1 along untouched and every norm removes it, so **the logits are unchanged for
any c_i** — exactly, like the patch embedding's nullspace, up to float rounding.

- At the encoder level this is an N-dimensional exact nullspace (one direction per patch token). An
  approximate δ's norm ‖δ‖ can grow without bound along it at no cost, so a size that means something is
  measured without it: the synthesis removes δ's token means on such models (:func:`remove_token_means`).
- At the input level the patch embedding maps a patch v to W v; any v with W v ∝ 1 is removed as well. So a
  trained ViT whose W is square and full rank (ViT-B/16: 768 → 768, "no nullspace") still has one exact
  direction per patch, v₁ = W⁺1 (:func:`patch_mean_direction`), as long as 1 lies in W's range.

Post-norm blocks (``ResPostBlock``), RMSNorm (no mean subtraction), average pooling without a norm, and
anything this module does not recognise are treated as *not* invariant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from nullviz.core.errors import InvalidParameterError
from nullviz.core.params import Interval, check
from nullviz.models import LoadedModel

from .exact import patch_embed_matrix, patchify, unpatchify


def _mean_subtracting(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm)


def is_layernorm_invariant(model: nn.Module, level: str = "encoder") -> bool:
    """Does adding c_i·1 to patch token i leave this model's logits unchanged (see the module doc)?
    True only for a timm ViT whose every block is a pre-norm ``Block`` with LayerNorms and whose head reads
    the tokens through a LayerNorm or the class token. ``level="input"``: the same for W v ∝ 1 added to a
    patch, which also needs the patch embedding's own norm (if any) to subtract the mean."""
    if not isinstance(model, VisionTransformer) or len(model.blocks) == 0:
        return False
    embed_norm = getattr(model.patch_embed, "norm", nn.Identity())
    if level == "input" and not (isinstance(embed_norm, nn.Identity) or _mean_subtracting(embed_norm)):
        return False
    if not (isinstance(model.norm_pre, nn.Identity) or _mean_subtracting(model.norm_pre)):
        return False
    for block in model.blocks:
        if type(block) is not Block or not (_mean_subtracting(block.norm1) and _mean_subtracting(block.norm2)):
            return False
    pool = model.global_pool
    if pool == "token":
        return getattr(model, "cls_token", None) is not None
    if pool == "avg":
        return _mean_subtracting(model.norm) or _mean_subtracting(model.fc_norm)
    if pool in ("max", "avgmax"):
        return _mean_subtracting(model.norm)
    return False


def token_means(delta: torch.Tensor) -> torch.Tensor:
    """The part of an encoder-level δ [..., N, D] in the LayerNorm nullspace: each token's mean, broadcast."""
    return delta.mean(dim=-1, keepdim=True).expand_as(delta)


def remove_token_means(delta: torch.Tensor) -> torch.Tensor:
    """δ without its LayerNorm-nullspace part: what an invariant model can see of it (same shape)."""
    return delta - delta.mean(dim=-1, keepdim=True)


def token_mean_fraction(delta: torch.Tensor) -> float:
    """The share of ‖δ‖² that an invariant model cannot see at all (0 for a δ without token means)."""
    total = float(delta.pow(2).sum())
    return float(token_means(delta).pow(2).sum()) / total if total > 0 else 0.0


@dataclass(frozen=True)
class PatchMeanDirection:
    """v₁ = W⁺1 in the model's normalised input space, flattened like a patch (c·r² numbers): adding c·v₁ to
    a patch adds c·(W v₁) to its token. ``residual`` = ‖W v₁ − 1‖ / ‖1‖: 0 when 1 is in W's range (then the
    direction is exactly invisible to an invariant model); v₁ is orthogonal to W's nullspace."""

    vector: torch.Tensor  # [c·r²], float64
    residual: float


def patch_mean_direction(model: nn.Module) -> PatchMeanDirection:
    """The input-level direction per patch that the first LayerNorm removes (see the module doc)."""
    w = patch_embed_matrix(model)
    ones = torch.ones(w.shape[0], dtype=w.dtype)
    v = torch.linalg.pinv(w) @ ones
    residual = float((w @ v - ones).norm() / ones.norm())
    return PatchMeanDirection(vector=v, residual=residual)


def cached_patch_mean_direction(lm: LoadedModel) -> PatchMeanDirection:
    """:func:`patch_mean_direction` of a loaded (frozen) model, computed once and kept on it."""
    return lm.derived.get("layernorm_direction", lambda: patch_mean_direction(lm.model))


def why_not_invariant(model: nn.Module) -> str | None:
    """None if the model is LayerNorm-invariant at the input level, else what it has instead, in words."""
    if is_layernorm_invariant(model, level="input"):
        return None
    blocks = getattr(model, "blocks", None)
    kinds = sorted({type(b).__name__ for b in blocks}) if blocks is not None else []
    return (f"{type(model).__name__} with {', '.join(kinds) or 'no'} blocks, global_pool "
            f"{getattr(model, 'global_pool', '?')!r}: not every path from the patch tokens starts with a "
            "mean-subtracting LayerNorm")


def sample_layernorm_noise(lm: LoadedModel, image_size: tuple[int, int], magnitude: float = 1.0,
                           seed: int = 0) -> torch.Tensor:
    """Input-level noise [C, H, W] (float32, normalised units) that every LayerNorm removes: patch p gets
    c_p·v₁ with v₁ = W⁺1 / ‖W⁺1‖ and c_p drawn N(0, 1), scaled so the patches' RMS L2 norm is ``magnitude``.
    Raises InvalidParameterError for a model that is not invariant (:func:`why_not_invariant`) or whose W
    cannot reach the all-ones token shift."""
    check("magnitude", "sample_layernorm_noise", magnitude, Interval(float, 0.0, None, closed="left"))
    reason = why_not_invariant(lm.model)
    if reason is not None:
        raise InvalidParameterError("model", "sample_layernorm_noise", "a pre-norm ViT (LayerNorm first on every "
                                    "path)", reason)
    direction = cached_patch_mean_direction(lm)
    if direction.residual > 1e-6:
        raise InvalidParameterError("model", "sample_layernorm_noise", "a patch embedding whose range holds the "
                                    "all-ones token shift", f"‖W W⁺1 − 1‖/‖1‖ = {direction.residual:.1e}")
    p = int(lm.model.patch_embed.patch_size[0])
    H, W = image_size
    if H % p or W % p:
        raise InvalidParameterError("image_size", "sample_layernorm_noise", f"a multiple of the patch size {p}",
                                    image_size)
    n = (H // p) * (W // p)
    coeffs = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    coeffs = coeffs / coeffs.pow(2).mean().sqrt().clamp_min(1e-300) * magnitude
    unit = direction.vector / direction.vector.norm()
    return unpatchify((coeffs * unit).unsqueeze(0), p, (H, W))[0].to(torch.float32)  # [C, H, W]


def layernorm_residual(lm: LoadedModel, v: torch.Tensor) -> float:
    """The noise's certificate: of the token shifts W v_p it causes, the share a LayerNorm does *not* remove,
    ‖W v_p − mean(W v_p)·1‖ / ‖W v_p‖ over all patches (0 for LayerNorm noise, ~1 for anything else)."""
    w = patch_embed_matrix(lm.model)
    p = int(lm.model.patch_embed.patch_size[0])
    shifts = patchify(v.detach().to("cpu", torch.float64).reshape(1, *v.shape[-3:]), p)[0] @ w.T  # [N, D]
    total = float(shifts.norm())
    return float(remove_token_means(shifts).norm()) / total if total > 0 else 0.0
