"""The training input pipeline: a (seed, epoch)-determined order, sharded over ranks, read by DataLoader workers.

The order of epoch e is a function of (seed, e) alone (``nullviz.core.seeds``), so a run resumes exactly: the batch
sampler starts at the step the checkpoint reached. One optimizer step consumes a *global chunk* of
``batch_size × grad_accum × world_size`` images of that order; rank r reads ``chunk[r::world]`` in
``grad_accum`` micro-batches of ``batch_size``. With one process and no accumulation this is the old path's
``order[step·b : (step+1)·b]``; 2 ranks × b read the same images per step as 1 process × 2b, so their mean
gradients agree.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from nullviz.core.seeds import stream_seed


def epoch_order(n: int, seed: int, epoch: int, needed: int) -> torch.Tensor:
    """The first ``needed`` indices of epoch ``epoch``'s order over n items (reshuffled passes if needed > n)."""
    gen = torch.Generator().manual_seed(stream_seed("data_order", seed, epoch))
    reps = math.ceil(needed / n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:needed]


class EpochBatchSampler(torch.utils.data.Sampler):
    """Micro-batches of indices for one rank and one epoch, from step ``start_step`` on (resume)."""

    def __init__(self, n: int, seed: int, epoch: int, steps_per_epoch: int, batch_size: int, grad_accum: int = 1,
                 rank: int = 0, world_size: int = 1, start_step: int = 0):
        self.batch_size, self.grad_accum, self.rank, self.world = batch_size, grad_accum, rank, world_size
        self.steps, self.start = steps_per_epoch, start_step
        self.chunk = batch_size * grad_accum * world_size
        self.order = epoch_order(n, seed, epoch, steps_per_epoch * self.chunk)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            mine = self.order[step * self.chunk:(step + 1) * self.chunk][self.rank::self.world]
            for m in range(self.grad_accum):
                yield mine[m * self.batch_size:(m + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return (self.steps - self.start) * self.grad_accum


def _collate(items):
    return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])


def make_train_loader(dataset, sampler: EpochBatchSampler, workers: int = 0, pin_memory: bool = False,
                      seed: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over ``sampler``'s micro-batches; ``workers`` processes decode images in parallel (their
    own random augmentation seeded from ``seed`` and the epoch, so a run is reproducible)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                                       collate_fn=_collate, generator=gen,
                                       persistent_workers=False, prefetch_factor=4 if workers else None)


def collate(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """The same batch without a DataLoader (evaluation, synthesis images)."""
    return _collate([dataset[int(i)] for i in indices])
