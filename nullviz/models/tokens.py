"""The ViT at the level of patch tokens: where exact and approximate nullspace noise is added. Token
forward passes and :class:`PixelModel` (pixels in [0, 1] → logits, with the normalisation and an optional
token-level δ inside) for attacks, attributions and corruptions."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from nullviz.core.errors import InvalidParameterError

from .loaded import LoadedModel


# ------------------------------------------------------------------------------ token-level forward
def patch_tokens(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The patch embedding's output u = f_θ(x), always [B, N, D] (before class token / position)."""
    u = model.patch_embed(x)
    return u.flatten(1, 2) if u.dim() == 4 else u


def token_grid(model: VisionTransformer, x: torch.Tensor) -> tuple[int, int]:
    """The token grid of images x: from their own height and width when the model takes any size
    (``dynamic_img_size``), else the model's fixed grid."""
    pe = model.patch_embed
    if getattr(model, "dynamic_img_size", False) and hasattr(pe, "dynamic_feat_size"):
        gh, gw = pe.dynamic_feat_size(tuple(x.shape[-2:]))
        return int(gh), int(gw)
    return tuple(int(g) for g in pe.grid_size)


def block_input(model: VisionTransformer, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """The first block's input from [B, N, D] patch tokens: prefix tokens, position embedding, norm_pre.
    ``grid``: the tokens' (rows, columns) (:func:`token_grid` of the images they came from); a model with
    ``dynamic_img_size`` interpolates its position embedding to it. Without it, the model's default grid."""
    if getattr(model, "dynamic_img_size", False):
        gh, gw = grid if grid is not None else model.patch_embed.grid_size
        if gh * gw != tokens.shape[1]:
            raise InvalidParameterError("grid", "block_input", f"a token grid of {tokens.shape[1]} tokens (pass "
                                        f"token_grid(model, x) of the images)", (gh, gw))
        tokens = tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[-1])
    x = model._pos_embed(tokens)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def logits_from_patch_tokens(model: VisionTransformer, tokens: torch.Tensor,
                             grid: tuple[int, int] | None = None) -> torch.Tensor:
    """f_ψ(f_φ(u)): everything after the patch embedding, on [B, N, D] tokens (noise can be added to u);
    ``grid`` as for :func:`block_input`."""
    x = model.blocks(block_input(model, tokens, grid))
    x = model.norm(x)
    return model.forward_head(x)


class PixelModel(torch.nn.Module):
    """pixels ∈ [0, 1] → logits: the model's normalisation inside (attacks, attributions and corruptions act
    on pixels), and optionally a fixed token-level δ added after the patch embedding."""

    def __init__(self, model: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor,
                 token_noise: torch.Tensor | None = None):
        super().__init__()
        self.training = False  # a wrapper of a shared model is in eval mode, as that model is; (only this flag:
        # .eval() would recurse into the shared model) so an attack library that restores the mode it found
        # (torchattacks: .eval() during the attack, .train() after) never flips the shared model to training
        self.model = model
        device = next(model.parameters()).device
        self.register_buffer("mean", mean.reshape(-1, 1, 1).to(device))
        self.register_buffer("std", std.reshape(-1, 1, 1).to(device))
        self.token_noise = None if token_noise is None else token_noise.to(device)

    @classmethod
    def of(cls, lm: LoadedModel, token_noise: torch.Tensor | None = None) -> "PixelModel":
        return cls(lm.model, lm.mean, lm.std, token_noise)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.normalize(pixels)
        if self.token_noise is None:
            return self.model(x)
        return logits_from_patch_tokens(self.model, patch_tokens(self.model, x) + self.token_noise,
                                        token_grid(self.model, x))
