"""Attention maps and per-layer representations, clean vs. noised: where does the encoder absorb noise?

timm's ``Attention`` uses fused ``scaled_dot_product_attention``, which never materialises the attention
matrix. :func:`trace` therefore runs on a private module tree over the model's own weights
(:func:`~nullviz.models.shared_weights_view`, borrowed from a :class:`~nullviz.models.ViewPool`): in eval
mode, with ``fused_attn`` off, and — for blocks other than timm's standard one — hooks on each block's
``attn_drop`` and output, removed before it hands the view back (:mod:`nullviz.inspection.tracing` has both passes).
Flags and hooks live on the borrowed view alone, so any number of threads can trace the one cached model
at once, each seeing only its own tensors, and the cached model is never touched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from nullviz.core.errors import InvalidParameterError, StoppedError
from nullviz.core.params import Interval, Options, check
from nullviz.models import LoadedModel, ViewPool
from nullviz.noise.kinds import label as noise_label
from nullviz.noise.kinds import random_like

from .tracing import PackedWeights, direct_pass, hooked_pass, supports_direct_pass


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


class TraceViews(ViewPool):
    """A pool of trace-ready views of one model and what they share: the model's oneDNN-packed weights."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model, _prepare_for_trace)
        self.packed = PackedWeights(model)


def attention_views(lm: LoadedModel) -> TraceViews:
    """The loaded model's pool of trace-ready views (kept with its other derived caches, shared by every
    request on that model): a trace borrows one instead of building a module tree each time."""
    return lm.derived.get("attention_views", lambda: TraceViews(lm.model))


@torch.no_grad()
def trace(model: torch.nn.Module, x: torch.Tensor, token_noise: torch.Tensor | None = None,
          views: TraceViews | None = None, method: str = "auto") -> AttentionTrace:
    """One forward pass of normalised images x (optionally with δ added to the patch tokens), recording
    every block's attention probabilities and output tokens. ``model`` itself is never modified (eval-mode
    numbers, whatever mode the caller's model is in); ``views`` (see :func:`attention_views`) lends a
    prepared view of it instead of making one. ``method``: 'direct' (timm's standard blocks, computed from
    their weights), 'hooks' (any block: the model's own forward, hooked) or 'auto' (direct where it
    applies); see :mod:`nullviz.inspection.tracing`."""
    check("method", "attention.trace", method, Options(("auto", "direct", "hooks")))
    blocks = list(getattr(model, "blocks", []))
    if not blocks or not hasattr(blocks[0], "attn") or not hasattr(blocks[0].attn, "attn_drop"):
        raise InvalidParameterError("model", "attention.trace", "a timm ViT whose blocks have .attn.attn_drop",
                                    type(model).__name__)
    direct = supports_direct_pass(model)
    if method == "direct" and not direct:
        raise InvalidParameterError("method", "attention.trace",
                                    "'hooks' or 'auto' for blocks other than timm's standard Block", method)
    pool = views if views is not None else TraceViews(model)
    with pool.borrow() as view:  # private while borrowed: its flags and hooks are this call's alone
        if direct and method != "hooks":
            out = direct_pass(view, x, token_noise, pool.packed)
        else:
            out = hooked_pass(view, x, token_noise)
    gh, gw = (int(g) for g in model.patch_embed.grid_size)
    return AttentionTrace(attention=out.attention.float().cpu(), hidden=out.hidden.float().cpu(),
                          logits=out.logits.float().cpu(), num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)),
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


def _row_tv(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Total variation ½Σ|p − q| between matching attention rows: [..., T, T] → [..., T]."""
    return 0.5 * (p - q).abs().sum(-1)


def attention_distance(clean: torch.Tensor, noised: torch.Tensor, metric: str = "tv") -> torch.Tensor:
    """Per-layer distance between two attention tensors [L, B, H, T, T]: mean over batch, heads and query
    tokens of the total variation ('tv', ½Σ|p − q|) or Jensen–Shannon divergence ('js', in nats)."""
    check("metric", "attention_distance", metric, Options(("tv", "js")))
    if clean.shape != noised.shape:
        raise InvalidParameterError("noised", "attention_distance", f"shape {tuple(clean.shape)}",
                                    tuple(noised.shape))
    p, q = clean.double(), noised.double()
    if metric == "tv":
        d = _row_tv(p, q)
    else:
        m = 0.5 * (p + q)
        kl = lambda a, b: (a * (a.clamp_min(1e-30).log() - b.clamp_min(1e-30).log())).sum(-1)  # noqa: E731
        d = 0.5 * kl(p, m) + 0.5 * kl(q, m)
    return d.mean(dim=(1, 2, 3)).float()


def representation_change(clean: torch.Tensor, noised: torch.Tensor) -> torch.Tensor:
    """Relative change ‖h' − h‖ / ‖h‖ of the token representations at each depth ([L+1, B, T, D] → [L+1])."""
    diff = (noised.double() - clean.double()).flatten(1).norm(dim=1)
    return (diff / clean.double().flatten(1).norm(dim=1).clamp_min(1e-30)).float()


def _noised_trace(lm: LoadedModel, x: torch.Tensor, noise: torch.Tensor, level: str, views: TraceViews) -> AttentionTrace:
    """Trace x with one noise: added to the pixels (normalised, level 'input') or to the patch tokens ('encoder')."""
    if level == "input":
        return trace(lm.model, x + (noise if noise.dim() == 4 else noise.unsqueeze(0)).to(x), views=views)
    return trace(lm.model, x, token_noise=noise, views=views)


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
    noised = clean if noise is None else _noised_trace(lm, x, noise, level, views)
    change = representation_change(clean.hidden, noised.hidden)
    return AttentionComparison(
        clean=clean, noised=noised,
        rollout_clean=rollout(clean.attention, head_fusion, discard_ratio),
        rollout_noised=rollout(noised.attention, head_fusion, discard_ratio),
        layer_attention_distance=attention_distance(clean.attention, noised.attention, "tv"),
        layer_attention_js=attention_distance(clean.attention, noised.attention, "js"),
        layer_repr_change=change[1:], embed_repr_change=float(change[0]),
    )


# ----------------------------------------------------------------------------------- research views
def query_index(num_prefix_tokens: int, grid_size: tuple[int, int], patch: tuple[int, int] | None) -> int:
    """Token index of a query: None → token 0 (the class token), (row, col) → that patch's token."""
    if patch is None:
        return 0
    gh, gw = grid_size
    r, c = patch
    if not (0 <= r < gh and 0 <= c < gw):
        raise InvalidParameterError("patch", "query_index", f"(row, col) inside the {gh}×{gw} grid", patch)
    return num_prefix_tokens + r * gw + c


def query_maps(attention: torch.Tensor, query: int, num_prefix_tokens: int,
               grid_size: tuple[int, int]) -> torch.Tensor:
    """[L, B, H, T, T] → the attention of token ``query`` to the patch tokens as [L, B, H, gh, gw]: row
    ``query`` of the full matrix, without the prefix columns."""
    T = attention.shape[-1]
    if not 0 <= query < T:
        raise InvalidParameterError("query", "query_maps", f"a token index in 0…{T - 1}", query)
    gh, gw = grid_size
    return attention[..., query, num_prefix_tokens:].reshape(*attention.shape[:-2], gh, gw)


def patch_distances(grid_size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """[P, P] Euclidean distance in pixels between patch centres (P = gh·gw)."""
    gh, gw = grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], 1).double() * patch_size
    return torch.cdist(centres, centres)


def mean_attention_distance(attention: torch.Tensor, num_prefix_tokens: int, grid_size: tuple[int, int],
                            patch_size: int) -> torch.Tensor:
    """Mean attention distance in pixels (Dosovitskiy et al. 2021, Fig. 7): for every patch query, the
    attention-weighted distance to the patch keys, averaged over the queries. [L, B, H, T, T] → [L, B, H].

    Only patch-to-patch attention has a distance; the weights are renormalised over the patch keys, so a
    head that sends most of its mass to the class token still reports how far its patch attention reaches."""
    n = num_prefix_tokens
    a = attention[..., n:, n:].double()
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    d = patch_distances(grid_size, patch_size)
    return (a * d).sum(-1).mean(-1).float()


def attention_entropy(attention: torch.Tensor) -> torch.Tensor:
    """Entropy of each attention row −Σ p log p in nats (over all keys), averaged over the queries:
    [L, B, H, T, T] → [L, B, H]. 0 = every query looks at one token; log T = uniform attention."""
    p = attention.double()
    return -(p * p.clamp_min(1e-30).log()).sum(-1).mean(-1).float()


@dataclass
class HeadStatistics:
    """Per layer and head, mean over images: attention distance (pixels) and entropy (nats), clean vs.
    noised. Arrays are [layers, heads]."""

    distance_clean: np.ndarray
    distance_noised: np.ndarray
    entropy_clean: np.ndarray
    entropy_noised: np.ndarray
    max_entropy: float  # log T: uniform attention

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}


def _head_terms(t: AttentionTrace, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer, image and head [L, B, H]: mean attention distance (pixels) and entropy (nats) of a trace."""
    return (mean_attention_distance(t.attention, t.num_prefix_tokens, t.grid_size, patch_size),
            attention_entropy(t.attention))


def head_statistics(clean: AttentionTrace, noised: AttentionTrace, patch_size: int) -> HeadStatistics:
    """Attention distance and entropy per head and layer of two traces of the same images."""
    (dc, ec), (dn, en) = _head_terms(clean, patch_size), _head_terms(noised, patch_size)
    return HeadStatistics(distance_clean=dc.mean(1).numpy(), distance_noised=dn.mean(1).numpy(),
                          entropy_clean=ec.mean(1).numpy(), entropy_noised=en.mean(1).numpy(),
                          max_entropy=float(np.log(clean.tokens)))


@dataclass
class SetStatistics:
    """Clean vs. noised over a set of images: per image and layer, the attention change (total variation of
    the attention rows) and the relative representation change; mean output-query maps; head statistics."""

    attention_tv: np.ndarray  # [N, L]
    repr_change: np.ndarray  # [N, L] after each block
    mean_map_clean: np.ndarray  # [L, gh, gw] mean over images and heads
    mean_map_noised: np.ndarray
    heads: HeadStatistics
    top1_agreement: float  # share of images whose top-1 class the noise keeps
    images: int
    query: str

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "query": self.query, "top1_agreement": self.top1_agreement,
                "attention_tv_mean": self.attention_tv.mean(0).tolist(),
                "attention_tv_max": self.attention_tv.max(0).tolist(),
                "repr_change_mean": self.repr_change.mean(0).tolist(),
                "repr_change_max": self.repr_change.max(0).tolist(), "heads": self.heads.to_dict()}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"attention_tv": self.attention_tv, "repr_change": self.repr_change,
                "mean_map_clean": self.mean_map_clean, "mean_map_noised": self.mean_map_noised,
                **{f"heads_{k}": v for k, v in self.heads.__dict__.items() if isinstance(v, np.ndarray)}}


def _per_image(clean: AttentionTrace, noised: AttentionTrace) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] attention TV and [B, L] representation change of each image of a batch."""
    tv = _row_tv(clean.attention.double(), noised.attention.double()).mean(dim=(2, 3))  # [L, B]
    h0, h1 = clean.hidden[1:].double(), noised.hidden[1:].double()  # [L, B, T, D]
    rc = (h1 - h0).flatten(2).norm(dim=2) / h0.flatten(2).norm(dim=2).clamp_min(1e-30)
    return tv.T.float(), rc.T.float()


def set_statistics(lm: LoadedModel, x: torch.Tensor, noise: torch.Tensor | None, level: str = "input",
                   batch_size: int = 64, progress: Callable[[int, int], None] | None = None) -> SetStatistics:
    """Clean vs. noised statistics over images ``x`` [N, C, H, W] (normalised), traced ``batch_size`` at a
    time (one noise for all: pixel noise at level 'input', token δ at 'encoder'); ``progress(done, N)``
    after each batch. Equal to tracing the images one at a time (tested)."""
    check("level", "attention.set_statistics", level, Options(("input", "encoder")))
    check("batch_size", "attention.set_statistics", batch_size, Interval(int, 1, None))
    if x.dim() != 4 or len(x) == 0:
        raise InvalidParameterError("x", "attention.set_statistics", "a non-empty [N, C, H, W] batch",
                                    tuple(x.shape))
    views = attention_views(lm)
    tvs, rcs, agree = [], [], 0
    sums: dict[str, Any] = {}
    n = len(x)
    for start in range(0, n, batch_size):
        xb = x[start:start + batch_size].to(lm.device)
        clean = trace(lm.model, xb, views=views)
        noised = clean if noise is None else _noised_trace(lm, xb, noise, level, views)
        tv, rc = _per_image(clean, noised)
        tvs.append(tv)
        rcs.append(rc)
        agree += int((clean.logits.argmax(-1) == noised.logits.argmax(-1)).sum())
        (dc, ec), (dn, en) = _head_terms(clean, lm.patch_size), _head_terms(noised, lm.patch_size)
        parts = {  # sums over the batch's images: [L, gh, gw] maps, [L, H] head terms
            "map_clean": clean.cls_maps().double().mean(2).sum(1),
            "map_noised": noised.cls_maps().double().mean(2).sum(1),
            "dist_clean": dc.double().sum(1), "dist_noised": dn.double().sum(1),
            "ent_clean": ec.double().sum(1), "ent_noised": en.double().sum(1),
        }
        for k, v in parts.items():
            sums[k] = sums[k] + v if k in sums else v
        if progress is not None:
            progress(min(start + batch_size, n), n)
    mean = {k: (v / n).float().numpy() for k, v in sums.items()}
    return SetStatistics(
        attention_tv=torch.cat(tvs).numpy(), repr_change=torch.cat(rcs).numpy(),
        mean_map_clean=mean["map_clean"], mean_map_noised=mean["map_noised"],
        heads=HeadStatistics(mean["dist_clean"], mean["dist_noised"], mean["ent_clean"], mean["ent_noised"],
                             float(np.log(clean.tokens))),
        top1_agreement=agree / n, images=n, query=clean.query_label)


@dataclass
class NoiseContrast:
    """Per layer, how far each noise moves the representations and the attention of the same images."""

    names: list[str]  # keys: a noise kind ("exact", "approximate") or "<control>@<kind>" (see contrast_noises)
    norms: list[float]  # L2 norm of each noise (its own level: pixels in normalised units, or tokens)
    levels: list[str]
    repr_change: np.ndarray  # [noises, L + 1]: after the patch embedding (+ position), then each block
    attention_tv: np.ndarray  # [noises, L]

    @property
    def labels(self) -> list[str]:
        """What the chart and the page call each noise."""
        return [contrast_label(name) for name in self.names]

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "labels": self.labels, "norms": self.norms, "levels": self.levels,
                "repr_change": self.repr_change.tolist(), "attention_tv": self.attention_tv.tolist()}

    def ratio_to_control(self, name: str, control: str) -> float:
        """How much ``name`` moves the last block's tokens, as a multiple of how much ``control`` moves them."""
        i, j = self.names.index(name), self.names.index(control)
        return float(self.repr_change[i, -1] / max(float(self.repr_change[j, -1]), 1e-30))

    def describe(self) -> str:
        """The chart in words, from what was measured (never a fixed sentence: an approximate δ that moves the
        tokens as much as random noise of its norm must not be called small)."""
        parts = []
        if "exact" in self.names:
            peak = float(self.repr_change[self.names.index("exact")].max())
            parts.append(f"Exact nullspace noise moves the tokens by at most {peak:.1e} of their norm at any depth"
                         + (" (float32 rounding)." if peak < 1e-5 else "."))
        if "approximate" in self.names and "gaussian@approximate" in self.names:
            r = self.ratio_to_control("approximate", "gaussian@approximate")
            verdict = ("far less than" if r < 0.2 else "less than" if r < 0.8 else "about as much as" if r < 1.25
                       else "more than")
            parts.append(f"At the last block the approximate δ moves them {r:.2f}× as much as random noise of its "
                         f"norm: {verdict} random noise.")
        if "layernorm" in self.names:
            i = self.names.index("layernorm")
            parts.append(f"LayerNorm noise moves the residual stream by {float(self.repr_change[i, -1]):.1e} of its "
                         f"norm at the last block, yet the attention by at most {float(self.attention_tv[i].max()):.1e}"
                         " (TV): every norm subtracts each token's mean, so no branch and no logit sees it.")
        for control, whose in (("gaussian@exact", "the exact noise's"), ("gaussian@approximate", "δ's"),
                               ("gaussian@layernorm", "the LayerNorm noise's")):
            if control in self.names:
                last = float(self.repr_change[self.names.index(control), -1])
                parts.append(f"Random noise of {whose} norm moves them by {last:.1e} of their norm at the last block.")
        return " ".join(parts)


def contrast_noises(exact: torch.Tensor, approximate: tuple[torch.Tensor, str] | None = None,
                    seed: int = 0, kind: str = "approximate") -> dict[str, tuple[torch.Tensor, str]]:
    """The noises of :func:`noise_contrast`, as the Attention page and ``nullviz attention --contrast`` both
    draw them: the exact nullspace noise (pixel level, key "exact"), the approximate δ with its level if there
    is one (key ``kind``: "approximate", or "layernorm" for LayerNorm noise), and Gaussian noise of the same
    norm and level as each ("gaussian@exact", "gaussian@<kind>"; ``seed``). A pixel-level δ gets the exact
    noise rescaled to its norm, so the lines differ in structure, not size, and one random control serves both."""
    gen = torch.Generator().manual_seed(int(seed))

    def control(noise: torch.Tensor) -> torch.Tensor:
        return random_like(noise.float().cpu(), "gaussian", gen)

    if approximate is None:
        return {"exact": (exact, "input"), "gaussian@exact": (control(exact), "input")}
    delta, level = approximate
    if level == "input":
        noises = {"exact": (exact * (delta.norm() / exact.norm().clamp_min(1e-30)).to(exact), "input")}
    else:
        noises = {"exact": (exact, "input"), "gaussian@exact": (control(exact), "input")}
    noises[kind] = (delta, level)
    noises[f"gaussian@{kind}"] = (control(delta), level)
    return noises


def contrast_label(name: str) -> str:
    """A contrast key in words: a noise kind's label, or "random, same norm as …" for a control of one."""
    control, _, of = name.partition("@")
    if not of:
        return noise_label(name)
    whose = {"exact": "the exact noise", "approximate": "δ", "layernorm": "the LayerNorm noise"}.get(of, noise_label(of))
    return f"{noise_label(control)}, same norm as {whose}"


def noise_contrast(lm: LoadedModel, x: torch.Tensor, noises: dict[str, tuple[torch.Tensor, str]],
                   clean: AttentionTrace | None = None) -> NoiseContrast:
    """Trace clean ``x`` once and each named (noise, level) once: the teaching chart of the app — exact
    nullspace noise (zero to float32 precision at every depth), an approximate δ (small, growing or not
    with depth), and random noise of the same norm (large from the first layer). ``clean``: x's clean trace
    if the caller has it already (e.g. :func:`compare`'s), so it is not traced again."""
    if not noises:
        raise InvalidParameterError("noises", "attention.noise_contrast", "at least one (noise, level)", noises)
    x = (x if x.dim() == 4 else x.unsqueeze(0)).to(lm.device)
    views = attention_views(lm)
    if clean is None:
        clean = trace(lm.model, x, views=views)
    elif clean.logits.shape[0] != x.shape[0]:
        raise InvalidParameterError("clean", "attention.noise_contrast", f"the trace of x's {x.shape[0]} images",
                                    f"a trace of {clean.logits.shape[0]}")
    rc, tv, norms, levels = [], [], [], []
    for name, (noise, level) in noises.items():
        check("level", "attention.noise_contrast", level, Options(("input", "encoder")))
        noised = _noised_trace(lm, x, noise, level, views)
        rc.append(representation_change(clean.hidden, noised.hidden).numpy())
        tv.append(attention_distance(clean.attention, noised.attention, "tv").numpy())
        norms.append(float(noise.double().norm()))
        levels.append(level)
    return NoiseContrast(list(noises), norms, levels, np.stack(rc), np.stack(tv))


# ------------------------------------------------------------------------------------------ model vs. model
@dataclass
class ModelComparison:
    """Two models (e.g. before and after finetuning) on the same image and noise: each one's clean-vs-noised
    comparison, and how far apart the two models are inside — per block, the attention total variation and the
    relative difference of the token representations between their clean traces — and their rollout maps."""

    names: tuple[str, str]
    a: AttentionComparison
    b: AttentionComparison
    between_attention: torch.Tensor  # [L] TV between model A's and model B's clean attention
    between_repr: torch.Tensor  # [L + 1] ‖h_B − h_A‖ / ‖h_A‖ after the embedding and each block

    def rollout_maps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Model A's and model B's clean rollout maps [gh, gw] of the first image, and B − A."""
        ra, rb = self.a.rollout_maps()[0][0], self.b.rollout_maps()[0][0]
        return ra, rb, rb - ra

    def to_dict(self) -> dict[str, Any]:
        return {"models": list(self.names), "a": self.a.to_dict(), "b": self.b.to_dict(),
                "between_attention": self.between_attention.tolist(), "between_repr": self.between_repr.tolist()}


def compare_models(lm_a: LoadedModel, lm_b: LoadedModel, x: torch.Tensor, noise: torch.Tensor | None,
                   level: str = "input", head_fusion: str = "mean", discard_ratio: float = 0.0) -> ModelComparison:
    """:func:`compare` on both models with the same image and noise, and the distance between them inside.
    They must share the architecture's shape (blocks, heads, tokens); model B gets the noise made for model A
    (exact for A need not be exact for B, whose patch embedding finetuning may have changed: the chart shows it)."""
    def shape(lm: LoadedModel) -> tuple:
        m = lm.model
        return (tuple(lm.img_size), lm.patch_size, len(m.blocks), m.blocks[0].attn.num_heads,
                int(getattr(m, "num_prefix_tokens", 1)))

    if shape(lm_a) != shape(lm_b):
        sa, sb = shape(lm_a), shape(lm_b)
        raise InvalidParameterError("lm_b", "attention.compare_models",
                                    f"a model of {lm_a.name}'s shape ({sa[0][0]} px, {sa[1]}-px patches, {sa[2]} "
                                    f"blocks, {sa[3]} heads)", f"{lm_b.name} ({sb[0][0]} px, {sb[1]}-px patches, "
                                    f"{sb[2]} blocks, {sb[3]} heads)")
    x = (x if x.dim() == 4 else x.unsqueeze(0))
    a = compare(lm_a, x.to(lm_a.device), noise, level, head_fusion, discard_ratio)
    b = compare(lm_b, x.to(lm_b.device), noise, level, head_fusion, discard_ratio)
    name_a = lm_a.name + (f" ({lm_a.checkpoint})" if lm_a.checkpoint else "")
    name_b = lm_b.name + (f" ({lm_b.checkpoint})" if lm_b.checkpoint else "")
    return ModelComparison((name_a, name_b), a, b,
                           attention_distance(a.clean.attention, b.clean.attention, "tv"),
                           representation_change(a.clean.hidden, b.clean.hidden))


# ------------------------------------------------------------------------------ a head across many images
@dataclass
class HeadEmbedding:
    """AttentionViz's joint view of one head (Yeh et al., 2023): the queries and keys of the patch tokens of a set
    of images, under each noise, in one 2-D embedding. ``coords[c]`` is [2, B·N, 2] (queries, keys) for
    condition c; ``image`` and ``patch`` say which image (0-based, in the order given) and (row, column) each
    point is."""

    block: int  # 1-based
    head: int  # 1-based
    method: str
    conditions: list[str]
    coords: dict[str, np.ndarray]
    image: np.ndarray  # [B·N]
    patch: np.ndarray  # [B·N, 2]
    explained: float | None  # PCA: the share of the clean q/k variance the 2 axes keep
    stopped: bool = False  # stopped early: the images done so far

    @property
    def images(self) -> int:
        return int(self.image.max()) + 1 if len(self.image) else 0

    def shift(self) -> dict[str, float]:
        """Per condition, the mean distance of its points from the clean ones (queries and keys), in the
        embedding's units: where noise moves the head."""
        clean = self.coords[self.conditions[0]]
        return {c: float(np.linalg.norm(self.coords[c] - clean, axis=-1).mean()) for c in self.conditions}

    def to_dict(self) -> dict[str, Any]:
        return {"block": self.block, "head": self.head, "method": self.method, "conditions": self.conditions,
                "explained": self.explained, "stopped": self.stopped, "shift": self.shift(),
                "coords": {c: v.tolist() for c, v in self.coords.items()}, "image": self.image.tolist(),
                "patch": self.patch.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HeadEmbedding":
        """Back from :meth:`to_dict` (a job's result file)."""
        try:
            return cls(int(d["block"]), int(d["head"]), str(d["method"]), list(d["conditions"]),
                       {c: np.asarray(v, dtype=np.float64).reshape(2, -1, 2) for c, v in d["coords"].items()},
                       np.asarray(d["image"], dtype=np.int64), np.asarray(d["patch"], dtype=np.int64).reshape(-1, 2),
                       None if d.get("explained") is None else float(d["explained"]), bool(d.get("stopped", False)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidParameterError("d", "HeadEmbedding.from_dict", "a head embedding's JSON", type(d)) from exc


#: t-SNE's cost per embedded point, in :func:`head_embedding_size`'s units (measured here: 64 digits × 3 noises,
#: 24,576 points, 26 s — and it reports no progress, so a large one belongs in a job).
TSNE_COST_PER_POINT = 10.0


def head_embedding_size(lm: LoadedModel, num_images: int, conditions: int, method: str) -> float:
    """The rough cost of :func:`head_embedding`, in forward passes of a one-million-parameter model (the unit of
    :func:`nullviz.robustness.evaluation.evaluation_size`, so one server threshold decides both): each image
    traced once per condition, and t-SNE's cost per point."""
    scale = max(1.0, sum(p.numel() for p in lm.model.parameters()) / 1e6)
    points = 2 * num_images * int(lm.model.patch_embed.num_patches) * conditions
    return float(num_images * conditions * scale + (TSNE_COST_PER_POINT * points if method == "tsne" else 0.0))


def save_conditions(noises: dict[str, tuple[torch.Tensor, str] | None], path: str | Path) -> Path:
    """The named noises of :func:`head_embedding` as one file (what its background job reads)."""
    path = Path(path)
    torch.save({name: None if spec is None else (spec[0].detach().float().cpu(), str(spec[1]))
                for name, spec in noises.items()}, path)
    return path


def load_conditions(path: str | Path) -> dict[str, tuple[torch.Tensor, str] | None]:
    """Back from :func:`save_conditions` (tensors and names only: ``weights_only``)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unreadable file is the same error to the caller
        raise InvalidParameterError("path", "attention.load_conditions", "a file written by save_conditions",
                                    str(path)) from exc
    if not isinstance(loaded, dict) or not all(v is None or (isinstance(v, tuple) and len(v) == 2
                                                             and isinstance(v[0], torch.Tensor)) for v in loaded.values()):
        raise InvalidParameterError("path", "attention.load_conditions", "a file written by save_conditions", str(path))
    return loaded


@torch.no_grad()
def _queries_keys(lm: LoadedModel, x: torch.Tensor, noise: torch.Tensor | None, level: str, block: int, head: int,
                  views: TraceViews) -> tuple[torch.Tensor, torch.Tensor]:
    """[B·N, hd] queries and keys of the patch tokens at ``block`` (0-based) and ``head``, from the block's input."""
    tr = trace(lm.model, x, views=views) if noise is None else _noised_trace(lm, x, noise, level, views)
    with views.borrow() as view:
        blk = view.blocks[block]
        a = blk.attn
        h = tr.hidden[block].to(x.device, x.dtype)
        B, T, D = h.shape
        qkv = a.qkv(blk.norm1(h)).view(B, T, 3, a.num_heads, a.head_dim)
        q, k = a.q_norm(qkv[:, :, 0]), a.k_norm(qkv[:, :, 1])
    p = tr.num_prefix_tokens
    return q[:, p:, head].reshape(-1, a.head_dim).float().cpu(), k[:, p:, head].reshape(-1, a.head_dim).float().cpu()


def head_embedding(lm: LoadedModel, x: torch.Tensor, noises: dict[str, tuple[torch.Tensor, str] | None],
                   block: int, head: int, method: str = "pca", seed: int = 0, batch_size: int = 32,
                   progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> HeadEmbedding:
    """Queries and keys of one head over images ``x`` under each named noise (None: clean; the first is the
    reference), embedded in 2-D. PCA is fit on the first condition's queries and keys together and every
    condition projected with it, so positions compare across noises; t-SNE (scikit-learn, seeded) embeds all
    conditions jointly. Traced ``batch_size`` images at a time; ``progress(done, total)`` after each batch;
    ``should_stop`` between batches (the embedding then covers the images done, ``stopped`` set)."""
    check("method", "attention.head_embedding", method, Options(("pca", "tsne")))
    model = lm.model
    check("block", "attention.head_embedding", block, Interval(int, 1, len(model.blocks)))
    check("head", "attention.head_embedding", head, Interval(int, 1, model.blocks[0].attn.num_heads))
    check("batch_size", "attention.head_embedding", batch_size, Interval(int, 1, 4096))
    if not noises:
        raise InvalidParameterError("noises", "attention.head_embedding", "at least one condition", noises)
    x = (x if x.dim() == 4 else x.unsqueeze(0)).to(lm.device)
    views = attention_views(lm)
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in noises}
    done, stopped = 0, False
    for i in range(0, x.shape[0], batch_size):
        if should_stop is not None and should_stop():
            stopped = True
            break
        xb = x[i:i + batch_size]
        for name, spec in noises.items():
            noise, level = (None, "input") if spec is None else spec
            parts[name].append(_queries_keys(lm, xb, noise, level, block - 1, head - 1, views))
        done += xb.shape[0]
        if progress is not None:
            progress(done, x.shape[0])
    if done == 0:
        raise StoppedError("attention.head_embedding was stopped before its first batch")
    qk = {name: (torch.cat([q for q, _ in v]), torch.cat([k for _, k in v])) for name, v in parts.items()}
    names = list(qk)
    n = qk[names[0]][0].shape[0]
    if method == "pca":
        ref = torch.cat(qk[names[0]]).double()
        mean = ref.mean(0)
        _, s, vh = torch.linalg.svd(ref - mean, full_matrices=False)
        axes = vh[:2].T
        explained = float((s[:2] ** 2).sum() / (s ** 2).sum().clamp_min(1e-300))
        coords = {c: torch.stack([(t.double() - mean) @ axes for t in qk[c]]).numpy() for c in names}
    else:
        from sklearn.manifold import TSNE

        everything = torch.cat([torch.cat(qk[c]) for c in names]).numpy()
        flat = TSNE(n_components=2, random_state=seed, init="pca",
                    perplexity=float(min(30, max(2, len(everything) // 4)))).fit_transform(everything)
        coords = {c: flat[i * 2 * n:(i + 1) * 2 * n].reshape(2, n, 2) for i, c in enumerate(names)}
        explained = None
    gh, gw = (int(g) for g in model.patch_embed.grid_size)
    per_image = np.arange(gh * gw)
    return HeadEmbedding(block, head, method, names, coords, np.repeat(np.arange(done), gh * gw),
                         np.tile(np.stack([per_image // gw, per_image % gw], 1), (done, 1)), explained, stopped)
