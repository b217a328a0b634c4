"""Evaluation of a model on a data set (clean accuracy; the robustness suite builds on it)."""

from __future__ import annotations

from typing import Callable

import torch

from .models import LoadedModel
from .params import Interval, check


def images_tensor(lm: LoadedModel, dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` items of a data set of PIL images (or of already transformed tensors), as a
    normalised batch and labels on the model's device."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    tf = lm.transform
    xs, ys = [], []
    for i in range(n):
        img, y = dataset[i]
        xs.append(img if isinstance(img, torch.Tensor) else tf(img))
        ys.append(int(y))
    if not xs:
        return torch.empty(0, *lm.data_config["input_size"]), torch.empty(0, dtype=torch.long)
    return torch.stack(xs).to(lm.device), torch.tensor(ys, device=lm.device)


@torch.no_grad()
def accuracy(lm: LoadedModel, dataset, batch_size: int = 256, limit: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> float:
    """Top-1 accuracy of ``lm`` on (the first ``limit`` items of) ``dataset``, measured now."""
    check("batch_size", "accuracy", batch_size, Interval(int, 1, None))
    x, y = images_tensor(lm, dataset, limit)
    if len(y) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((lm.model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
        if progress is not None:
            progress(min(i + batch_size, len(y)), len(y))
    return correct / len(y)
