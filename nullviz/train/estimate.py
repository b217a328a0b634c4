"""How long a finetuning job will take here, before it starts: its work plan (the units its progress bar counts,
in plain training steps) times one plain training step measured on this machine.

The plan is the one the job's worker counts (:func:`finetune_work`), so the estimate and the progress bar agree;
the step is measured on a copy of the model at a small batch and scaled to the job's batch and threads, which
over-estimates a little for small models (their per-step overhead does not grow with the batch)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from nullviz.models import LoadedModel

from .config import FinetuneConfig
from .evaluator import reference_key

#: The batch the step is measured at (scaled linearly to the job's): small enough for a ViT-B on a laptop.
PROBE_BATCH = 8


def finetune_work(configs: Sequence[FinetuneConfig], train_images: int, eval_images: int,
                  processes: int = 1) -> list[dict[str, float]]:
    """Each run's work by phase (``FinetuneConfig.work_plan``) as the job's worker will count it: runs of one job
    on one process share the starting model's fixed δs, so only the first of each kind makes them."""
    keys = [reference_key(c) for c in configs]
    return [c.work_plan(c.steps_per_epoch or math.ceil(train_images / (c.batch_size * c.grad_accum * processes)),
                        eval_images, start_delta=processes != 1 or keys.index(keys[i]) == i)
            for i, c in enumerate(configs)]


def measure_step_seconds(lm: LoadedModel, batch_size: int, threads: int | None = None, repeats: int = 2) -> float:
    """Seconds of one plain training step (forward, backward, AdamW) of ``lm`` at ``batch_size`` on ``threads``
    CPU threads (None: as many as this process uses), measured on a copy at :data:`PROBE_BATCH` and scaled."""
    model = lm.trainable_copy().train()
    probe = min(PROBE_BATCH, batch_size)
    x = torch.randn(probe, lm.in_chans, *lm.img_size, device=lm.device)
    y = torch.zeros(probe, dtype=torch.long, device=lm.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = []
    for k in range(repeats + 1):  # the first step warms the allocator and kernels up
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)
        if k:
            times.append(time.perf_counter() - start)
    seconds = min(times) * batch_size / probe
    if threads and lm.device.type == "cpu":
        seconds *= max(1.0, torch.get_num_threads() / threads)
    return seconds


@dataclass(frozen=True)
class JobEstimate:
    """A job's work (plain training steps) and its time here at ``step_seconds`` a step."""

    units: float
    step_seconds: float

    @property
    def seconds(self) -> float:
        return self.units * self.step_seconds

    def describe(self) -> str:
        minutes = self.seconds / 60
        when = f"about {self.seconds:,.0f} s" if minutes < 2 else f"about {minutes:,.0f} minutes"
        return (f"{when} on this machine ({self.units:,.0f} training-step equivalents × {self.step_seconds:.3g} s, "
                f"measured now)")


def estimate_finetune(configs: Sequence[FinetuneConfig], train_images: int, eval_images: int, step_seconds: float,
                      processes: int = 1) -> JobEstimate:
    """The whole job's :class:`JobEstimate` from its configs, data sizes and a measured step."""
    plans = finetune_work(configs, train_images, eval_images, processes)
    return JobEstimate(sum(sum(p.values()) for p in plans), step_seconds)


def job_data_sizes(configs: Sequence[FinetuneConfig], data: str, model_name: str, cache: str = "data"
                   ) -> tuple[int, int]:
    """(training images, held-out images) the estimate needs: read from the data only when a run makes full passes
    or evaluates every held-out image (else the configs alone bound the work)."""
    if all(c.steps_per_epoch and c.eval_limit for c in configs):
        return 0, max(int(c.eval_limit) for c in configs)
    from nullviz.data import own_data, train_heldout

    train, held = train_heldout(own_data(data, model_name), None, cache)
    return len(train), len(held)
