"""Attention maps and per-layer representations, clean vs. noised: where does the encoder absorb noise?

timm's ``Attention`` uses fused ``scaled_dot_product_attention``, which never materialises the attention
matrix. :func:`trace` therefore runs on a private module tree over the model's own weights
(:func:`~nullviz.models.shared_weights_view`, borrowed from a :class:`~nullviz.models.ViewPool`): on that
view ``fused_attn`` is off, and the trace hooks each block's ``attn_drop`` (identity in eval) for the softmax
output and each block for its output tokens, removing the hooks before it hands the view back. Hooks and
flags live on the borrowed view alone, so any number of threads can trace the one cached model at once,
each seeing only its own tensors, and the cached model is never touched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from .errors import InvalidParameterError
from .models import LoadedModel, ViewPool, logits_from_patch_tokens, patch_tokens
from .params import Interval, Options, check


@contextlib.contextmanager
def unfused_attention(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily set ``fused_attn = False`` on every attention module; restore the old values after.

    Only for a module the caller owns (a copy or a :func:`~nullviz.models.shared_weights_view`): on a shared
    model another thread would see the flag mid-switch."""
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    try:
        for m, _ in saved:
            m.fused_attn = False
        yield
    finally:
        for m, value in saved:
            m.fused_attn = value


@dataclass
class AttentionTrace:
    """Attention probabilities and block outputs of one forward pass.

    ``attention``: [layers, batch, heads, tokens, tokens] (rows sum to 1); ``hidden``: [layers + 1, batch,
    tokens, dim], index 0 being the block input (tokens after class token and position embedding).
    """

    attention: torch.Tensor
    hidden: torch.Tensor
    logits: torch.Tensor
    num_prefix_tokens: int
    grid_size: tuple[int, int]
    has_class_token: bool = True

    @property
    def layers(self) -> int:
        return self.attention.shape[0]

    @property
    def heads(self) -> int:
        return self.attention.shape[2]

    @property
    def tokens(self) -> int:
        return self.attention.shape[-1]

    @property
    def query_label(self) -> str:
        """What the maps' query is, in words (see :func:`cls_attention_maps`)."""
        return query_label(self.has_class_token)

    def cls_maps(self) -> torch.Tensor:
        """Attention of the output's query to the patches: [layers, batch, heads, gh, gw]. The query is the
        class token, or the mean of the patch queries for a ViT without one (``global_pool='avg'``)."""
        return cls_attention_maps(self.attention, self.num_prefix_tokens, self.grid_size, self.has_class_token)


def query_label(has_class_token: bool) -> str:
    return ("CLS" if has_class_token
            else "mean of patch queries (this model has no class token: its output averages the patch tokens)")


def has_class_token(model: torch.nn.Module) -> bool:
    """Whether the ViT's first token is a class token (timm: ``cls_token`` is None with ``class_token=False``)."""
    return getattr(model, "cls_token", None) is not None


def _prepare_for_trace(view: torch.nn.Module) -> None:
    view.eval()
    for m in view.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


def attention_views(lm: LoadedModel) -> ViewPool:
    """The loaded model's pool of trace-ready views (kept with its other derived caches, shared by every
    request on that model): a trace borrows one instead of building a module tree each time."""
    return lm.__dict__.setdefault("_derived", {}).setdefault("attention_views", ViewPool(lm.model, _prepare_for_trace))


@torch.no_grad()
def trace(model: torch.nn.Module, x: torch.Tensor, token_noise: torch.Tensor | None = None,
          views: ViewPool | None = None) -> AttentionTrace:
    """One forward pass of normalised images x (optionally with δ added to the patch tokens), recording
    every block's attention probabilities and output tokens. ``model`` itself is never modified (eval-mode
    numbers, whatever mode the caller's model is in); ``views`` (see :func:`attention_views`) lends a
    prepared view of it instead of making one."""
    blocks = list(getattr(model, "blocks", []))
    if not blocks or not hasattr(blocks[0], "attn") or not hasattr(blocks[0].attn, "attn_drop"):
        raise InvalidParameterError("model", "attention.trace", "a timm ViT whose blocks have .attn.attn_drop",
                                    type(model).__name__)
    pool = views if views is not None else ViewPool(model, _prepare_for_trace)
    attn: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []
    with pool.borrow() as view:  # private while borrowed: its flags and hooks are this call's alone
        handles = [view.blocks[0].register_forward_pre_hook(lambda m, args: hidden.append(args[0].detach()))]
        try:
            for blk in view.blocks:
                handles.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: attn.append(o.detach())))
                handles.append(blk.register_forward_hook(lambda m, i, o: hidden.append(o.detach())))
            u = patch_tokens(view, x)
            logits = logits_from_patch_tokens(view, u if token_noise is None else u + token_noise.to(u))
        finally:
            for h in handles:
                h.remove()
    gh, gw = (int(g) for g in model.patch_embed.grid_size)
    return AttentionTrace(attention=torch.stack(attn).float().cpu(), hidden=torch.stack(hidden).float().cpu(),
                          logits=logits.float().cpu(), num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)),
                          grid_size=(gh, gw), has_class_token=has_class_token(model))


def _output_query(rows: torch.Tensor, num_prefix_tokens: int, class_token: bool) -> torch.Tensor:
    """[..., T, T] → the attention row of the token the output reads: the class token (row 0), or, for a ViT
    without one, the mean over the patch rows (its head averages the patch tokens). Row 0 there would be a
    patch's (or a register's) own attention, not the model's."""
    if class_token:
        return rows[..., 0, :]
    return rows[..., num_prefix_tokens:, :].mean(-2)


def cls_attention_maps(attention: torch.Tensor, num_prefix_tokens: int, grid_size: tuple[int, int],
                       class_token: bool = True) -> torch.Tensor:
    """[L, B, H, T, T] → the output query's attention to the patch tokens, as [L, B, H, gh, gw]."""
    gh, gw = grid_size
    if attention.shape[-1] != num_prefix_tokens + gh * gw:
        raise InvalidParameterError("attention", "cls_attention_maps",
                                    f"{num_prefix_tokens} prefix + {gh}×{gw} patch tokens", attention.shape[-1])
    maps = _output_query(attention, num_prefix_tokens, class_token)[..., num_prefix_tokens:]
    return maps.reshape(*maps.shape[:-1], gh, gw)


def rollout(attention: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): fuse heads, drop the weakest links, add the residual
    identity, renormalise rows, and multiply through the layers. [L, B, H, T, T] → [B, T, T]."""
    check("head_fusion", "rollout", head_fusion, Options(("mean", "max", "min")))
    check("discard_ratio", "rollout", discard_ratio, Interval(float, 0.0, 1.0, closed="left"))
    L, B, _, T, _ = attention.shape
    eye = torch.eye(T, dtype=attention.dtype).expand(B, T, T)
    result = eye.clone()
    for layer in range(L):
        heads = attention[layer]  # [B, H, T, T]
        a = heads.mean(1) if head_fusion == "mean" else heads.amax(1) if head_fusion == "max" else heads.amin(1)
        if discard_ratio > 0:
            flat = a.reshape(B, -1)
            k = int(flat.shape[1] * discard_ratio)
            _, idx = flat.topk(k, dim=-1, largest=False)
            drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
            drop[:, 0] = False  # never drop CLS→CLS
            a = flat.masked_fill(drop, 0.0).view(B, T, T)
        a = (a + eye) / 2
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    return result


def rollout_map(rolled: torch.Tensor, num_prefix_tokens: int, grid_size: tuple[int, int],
                class_token: bool = True) -> torch.Tensor:
    """The output query's row of a rollout [B, T, T] (CLS, or the mean of patch rows without a class token)
    as patch maps [B, gh, gw]."""
    gh, gw = grid_size
    return _output_query(rolled, num_prefix_tokens, class_token)[:, num_prefix_tokens:].reshape(-1, gh, gw)


def attention_distance(clean: torch.Tensor, noised: torch.Tensor, metric: str = "tv") -> torch.Tensor:
    """Per-layer distance between two attention tensors [L, B, H, T, T]: mean over batch, heads and query
    tokens of the total variation ('tv', ½Σ|p − q|) or Jensen–Shannon divergence ('js', in nats)."""
    check("metric", "attention_distance", metric, Options(("tv", "js")))
    if clean.shape != noised.shape:
        raise InvalidParameterError("noised", "attention_distance", f"shape {tuple(clean.shape)}",
                                    tuple(noised.shape))
    p, q = clean.double(), noised.double()
    if metric == "tv":
        d = 0.5 * (p - q).abs().sum(-1)
    else:
        m = 0.5 * (p + q)
        kl = lambda a, b: (a * (a.clamp_min(1e-30).log() - b.clamp_min(1e-30).log())).sum(-1)  # noqa: E731
        d = 0.5 * kl(p, m) + 0.5 * kl(q, m)
    return d.mean(dim=(1, 2, 3)).float()


def representation_change(clean: torch.Tensor, noised: torch.Tensor) -> torch.Tensor:
    """Relative change ‖h' − h‖ / ‖h‖ of the token representations at each depth ([L+1, B, T, D] → [L+1])."""
    diff = (noised.double() - clean.double()).flatten(1).norm(dim=1)
    return (diff / clean.double().flatten(1).norm(dim=1).clamp_min(1e-30)).float()


@dataclass
class AttentionComparison:
    """Clean vs. noised traces, their rollouts and per-layer distances."""

    clean: AttentionTrace
    noised: AttentionTrace
    rollout_clean: torch.Tensor
    rollout_noised: torch.Tensor
    layer_attention_distance: torch.Tensor  # [L], total variation
    layer_attention_js: torch.Tensor  # [L]
    layer_repr_change: torch.Tensor  # [L], after each block
    embed_repr_change: float  # before the first block (tokens + position)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        c = self.clean
        return {
            "layers": c.layers, "heads": c.heads, "tokens": c.tokens,
            "num_prefix_tokens": c.num_prefix_tokens, "grid_size": list(c.grid_size),
            "query": c.query_label,
            "layer_attention_distance": [float(v) for v in self.layer_attention_distance],
            "layer_attention_js": [float(v) for v in self.layer_attention_js],
            "layer_repr_change": [float(v) for v in self.layer_repr_change],
            "embed_repr_change": self.embed_repr_change,
            "top1_clean": int(c.logits[0].argmax()), "top1_noised": int(self.noised.logits[0].argmax()),
            **self.extra,
        }

    def rollout_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean and noised rollout maps [B, gh, gw] of the output's query (see :func:`rollout_map`)."""
        c = self.clean
        return tuple(rollout_map(r, c.num_prefix_tokens, c.grid_size, c.has_class_token)
                     for r in (self.rollout_clean, self.rollout_noised))

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as numpy arrays for an .npz download."""
        return {
            "attention_clean": self.clean.attention.numpy(), "attention_noised": self.noised.attention.numpy(),
            "rollout_clean": self.rollout_clean.numpy(), "rollout_noised": self.rollout_noised.numpy(),
            "cls_maps_clean": self.clean.cls_maps().numpy(), "cls_maps_noised": self.noised.cls_maps().numpy(),
            "rollout_map_clean": self.rollout_maps()[0].numpy(), "rollout_map_noised": self.rollout_maps()[1].numpy(),
            "layer_attention_distance": self.layer_attention_distance.numpy(),
            "layer_attention_js": self.layer_attention_js.numpy(),
            "layer_repr_change": self.layer_repr_change.numpy(),
        }


def compare(lm: LoadedModel, x: torch.Tensor, noise: torch.Tensor | None, level: str = "input",
            head_fusion: str = "mean", discard_ratio: float = 0.0) -> AttentionComparison:
    """Trace clean x and noised x (pixel-space noise at level 'input', token δ at level 'encoder')."""
    check("level", "attention.compare", level, Options(("input", "encoder")))
    x = (x if x.dim() == 4 else x.unsqueeze(0)).to(lm.device)
    views = attention_views(lm)
    clean = trace(lm.model, x, views=views)
    if noise is None:
        noised = clean
    elif level == "input":
        v = noise if noise.dim() == 4 else noise.unsqueeze(0)
        noised = trace(lm.model, x + v.to(x), views=views)
    else:
        noised = trace(lm.model, x, token_noise=noise, views=views)
    change = representation_change(clean.hidden, noised.hidden)
    return AttentionComparison(
        clean=clean, noised=noised,
        rollout_clean=rollout(clean.attention, head_fusion, discard_ratio),
        rollout_noised=rollout(noised.attention, head_fusion, discard_ratio),
        layer_attention_distance=attention_distance(clean.attention, noised.attention, "tv"),
        layer_attention_js=attention_distance(clean.attention, noised.attention, "js"),
        layer_repr_change=change[1:], embed_repr_change=float(change[0]),
    )
