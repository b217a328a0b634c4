"""A model's size before it exists: its architecture built on the meta device (shapes, no memory) and counted, so a
server can refuse a model above its budget without allocating it: a checkpoint is a few bytes of header that
may name any architecture, and building it first would allocate every weight before any check."""

from __future__ import annotations

from typing import Callable

import torch

from nullviz.core.errors import ModelTooLargeError


def count_params_on_meta(build: Callable[[], torch.nn.Module]) -> int:
    """The number of parameters of the module ``build()`` makes, made on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


def check_param_budget(params: int, max_params: int | None, what: str) -> None:
    """Raise :class:`ModelTooLargeError` when ``params`` exceeds ``max_params`` (None: no budget)."""
    if max_params is not None and params > max_params:
        raise ModelTooLargeError(
            f"{what!r} has {params / 1e6:,.1f} M parameters; this server loads models of at most "
            f"{max_params / 1e6:,.1f} M. Pick a smaller model (ViT-Ti, ViT-S or ViT-B).")
