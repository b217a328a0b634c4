"""The encoder pass behind :func:`nullviz.inspection.attention.trace`: every block's attention and output,
and the logits.

Two interchangeable passes over a borrowed, eval-mode view of the model (same numbers to float32 rounding):

- :func:`direct_pass`, for timm's standard pre-norm ``Block`` (``Attention`` + ``Mlp``, as in ViT, DeiT and
  ViTs with registers, LayerScale or q/k-norm). It computes each block from the module's own weights and
  norms, writing the softmax and the block outputs straight into the [L, …] tensors it returns (no per-layer
  tensors to keep and stack), applying the scale inside the score product, keeping q, k, v, the scores and
  the context in buffers reused across layers, and — on a CPU with oneDNN — running the linear layers
  through oneDNN with the MLP's GELU fused in and the weights packed once per model (on a 2-core CPU
  oneDNN's float32 GEMM takes about half of the default BLAS path's time at these shapes;
  ``bench/bench_attention.py``). timm's ``AttentionExtract`` keeps each block's tensors and runs the
  model's own layers, so it can do none of these.
- :func:`hooked_pass`, for any other block: the model's own forward with hooks on ``attn_drop`` (the
  softmax output when fused attention is off) and on every block.

Both return tensors in the model's dtype on its device; :func:`~nullviz.inspection.attention.trace` makes them float32
on the CPU.
"""

from __future__ import annotations

import functools
import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F

from nullviz.models import block_input, logits_from_patch_tokens, patch_tokens, token_grid


class EncoderPass(NamedTuple):
    attention: torch.Tensor  # [L, B, H, T, T]
    hidden: torch.Tensor  # [L + 1, B, T, D], index 0 = the first block's input
    logits: torch.Tensor  # [B, classes]


#: A model's views share oneDNN-packed copies of its linear weights when they total at most this many bytes
#: (the embedded models, ViT-Ti); above it (ViT-S/B) the copy would cost more memory than it saves time.
PACKED_WEIGHTS_MAX_BYTES = 32 * 2**20


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN's fused linear (``mkldnn::_linear_pointwise``, weights plain or packed by
    ``mkldnn::_reorder_linear_weight``) and it gives F.linear's numbers here (checked once on a small
    problem; any failure means the plain path)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(33, 40, generator=g), torch.randn(24, 40, generator=g), torch.randn(24, generator=g)
        expected = F.gelu(F.linear(x, w, b))
        with torch.no_grad():
            plain = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
            packed = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 16), b,
                                                        "gelu", [], "none")
        return all(bool(torch.allclose(y, expected, atol=1e-5, rtol=1e-5)) for y in (plain, packed))
    except Exception:  # an op missing or renamed in this build: the plain path is always correct
        return False


class PackedWeights:
    """oneDNN-packed copies of one model's linear weights, made on first use and shared by every view of the
    model (the views share the weights' storage, so a packed copy is keyed by that storage and the weight's
    version: a weight changed in place is packed again). Disabled when the linear weights total more than
    ``PACKED_WEIGHTS_MAX_BYTES``. Safe to share between threads: packing happens under a lock."""

    def __init__(self, model: torch.nn.Module):
        size = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                   if isinstance(m, torch.nn.Linear))
        self.enabled = size <= PACKED_WEIGHTS_MAX_BYTES
        self._packed: dict[int, tuple[int, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def get(self, weight: torch.Tensor, rows: int) -> torch.Tensor:
        key = weight.data_ptr()
        entry = self._packed.get(key)
        if entry is None or entry[0] != weight._version:
            with self._lock:
                entry = self._packed.get(key)
                if entry is None or entry[0] != weight._version:
                    entry = self._packed[key] = (weight._version,
                                                 torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows))
        return entry[1]


class Linears:
    """How one direct pass runs the linear layers: oneDNN on a float32 CPU tensor (GELU fused; the weights
    packed when ``packed`` is given and enabled), else F.linear."""

    def __init__(self, x: torch.Tensor, packed: PackedWeights | None = None):
        self.onednn = (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.enabled
                       and onednn_linear_available())
        self.packed = packed if self.onednn and packed is not None and packed.enabled else None

    def __call__(self, x: torch.Tensor, layer: torch.nn.Linear, gelu: str | None = None) -> torch.Tensor:
        """layer(x) on [M, K], then GELU with ``gelu`` ('none'/'tanh': its approximation) if given."""
        if not self.onednn:
            y = F.linear(x, layer.weight, layer.bias)
            return y if gelu is None else F.gelu(y, approximate=gelu)
        weight = layer.weight if self.packed is None else self.packed.get(layer.weight, x.shape[0])
        return torch.ops.mkldnn._linear_pointwise(x, weight, layer.bias, "none" if gelu is None else "gelu", [],
                                                  "" if gelu is None else gelu)


def supports_direct_pass(model: torch.nn.Module) -> bool:
    """True when every block is timm's standard ``Block`` with ``Attention`` (no output gate) and ``Mlp``, all
    with the same heads."""
    try:
        from timm.layers import Attention, Mlp
        from timm.models.vision_transformer import Block
    except ImportError:  # pragma: no cover - timm is a dependency; an old layout means the hooked pass
        return False
    blocks = list(getattr(model, "blocks", []))
    if not blocks or not all(type(b) is Block and type(b.attn) is Attention and type(b.mlp) is Mlp
                             and getattr(b.attn, "gate", None) is None for b in blocks):
        return False
    shape = (blocks[0].attn.num_heads, blocks[0].attn.head_dim)  # one [L, B, H, T, T] tensor needs equal heads
    return all((b.attn.num_heads, b.attn.head_dim) == shape for b in blocks)


def _gelu_kind(act: torch.nn.Module) -> str | None:
    return act.approximate if type(act) is torch.nn.GELU else None


@torch.no_grad()
def direct_pass(view: torch.nn.Module, x: torch.Tensor, token_noise: torch.Tensor | None = None,
                packed: PackedWeights | None = None) -> EncoderPass:
    """The encoder block by block from the view's weights (see the module doc); ``view`` must be in eval
    mode and satisfy :func:`supports_direct_pass`. Dropout and drop-path are identities in eval and skipped.
    ``packed``: the model's packed weights (a pool of views keeps one, :class:`~nullviz.inspection.attention.TraceViews`);
    without it oneDNN reads the plain weights."""
    u = patch_tokens(view, x)
    h0 = block_input(view, u if token_noise is None else u + token_noise.to(u), token_grid(view, x))
    blocks = view.blocks
    B, T, D = h0.shape
    L = len(blocks)
    H, hd = blocks[0].attn.num_heads, blocks[0].attn.head_dim
    like = dict(dtype=h0.dtype, device=h0.device)
    attention = torch.empty(L, B, H, T, T, **like)
    hidden = torch.empty(L + 1, B, T, D, **like)
    hidden[0].copy_(h0)
    scores = torch.empty(B * H, T, T, **like)
    q, k, v = (torch.empty(B, H, T, hd, **like) for _ in range(3))
    context = torch.empty(B * H, T, hd, **like)
    mid = torch.empty(B, T, D, **like)
    linear = Linears(h0, packed)
    for i, blk in enumerate(blocks):
        a, m, h = blk.attn, blk.mlp, hidden[i]
        qkv = linear(blk.norm1(h).reshape(B * T, D), a.qkv).view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
        q.copy_(a.q_norm(qkv[0]))
        k.copy_(a.k_norm(qkv[1]))
        v.copy_(qkv[2])
        torch.baddbmm(scores, q.view(B * H, T, hd), k.view(B * H, T, hd).transpose(1, 2), beta=0, alpha=a.scale,
                      out=scores)  # scale · q kᵀ in one kernel
        p = attention[i]
        torch.softmax(scores.view(B, H, T, T), dim=-1, out=p)
        torch.bmm(p.view(B * H, T, T), v.view(B * H, T, hd), out=context)
        o = a.norm(context.view(B, H, T, hd).transpose(1, 2).reshape(B, T, H * hd))
        torch.add(h, blk.ls1(linear(o.reshape(B * T, H * hd), a.proj).view(B, T, D)), out=mid)
        gelu = _gelu_kind(m.act)
        z = linear(blk.norm2(mid).reshape(B * T, D), m.fc1, gelu)
        z = m.norm(z if gelu is not None else m.act(z))
        torch.add(mid, blk.ls2(linear(z, m.fc2).view(B, T, D)), out=hidden[i + 1])
    logits = view.forward_head(view.norm(hidden[L]))
    return EncoderPass(attention, hidden, logits)


@torch.no_grad()
def hooked_pass(view: torch.nn.Module, x: torch.Tensor, token_noise: torch.Tensor | None = None) -> EncoderPass:
    """The model's own forward, hooked (see the module doc); every hook is removed before it returns."""
    attn: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []
    handles = [view.blocks[0].register_forward_pre_hook(lambda m, args: hidden.append(args[0].detach()))]
    try:
        for blk in view.blocks:
            handles.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: attn.append(o.detach())))
            handles.append(blk.register_forward_hook(lambda m, i, o: hidden.append(o.detach())))
        u = patch_tokens(view, x)
        logits = logits_from_patch_tokens(view, u if token_noise is None else u + token_noise.to(u),
                                          token_grid(view, x))
    finally:
        for h in handles:
            h.remove()
    return EncoderPass(torch.stack(attn), torch.stack(hidden), logits)
