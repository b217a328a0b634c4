"""Finetuning methods: one object per method that owns its loss and says whether it needs δ.

The paper's method (``nullspace``: clean + δ-noised patch tokens) and its controls (``baseline``,
``gaussian``, ``random_start``: the same loss on noise of δ's norm that was never optimised, ``adversarial``:
FGSM adversarial training) share one call, ``method.loss(run, x, y)`` → (loss, clean part, noised part), on a
micro-batch already on the run's device. :data:`FINETUNE_METHODS` maps names to them; the training loop, the
progress plan, the Finetune page and the command line read their names, labels and costs from it, so a new
control is one class here (decorated with :func:`register_method`) and its test.

A method sees one step's :class:`StepInputs` and nothing else of the run: the training forward (clean and
noised logits in one pass, through DDP when distributed), the bare model with its normalisation (for attacks),
the period's δ and the seed of the period's control draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from nullviz.core.registry import registrar
from nullviz.models import PixelModel
from nullviz.noise.kinds import random_like
from nullviz.robustness.attacks import fgsm


FINETUNE_METHODS: dict[str, "FinetuneMethod"] = {}


@dataclass(frozen=True)
class StepInputs:
    """What a method's loss reads in one step."""

    forward: Callable[..., torch.Tensor]  # forward(x) → logits; forward(x, token_noise) → [clean; noised] logits
    model: torch.nn.Module  # the bare model (input gradients for attacks; its weights are the forward's)
    mean: torch.Tensor
    std: torch.Tensor
    delta: torch.Tensor | None  # the period's δ (token noise methods), fixed and detached
    noise_seed: int  # the seed of the period's control draw (an epoch, or noise_every steps)
    fgsm_eps: float


register_method = registrar(FINETUNE_METHODS, "a finetuning method")


class FinetuneMethod:
    name: ClassVar[str]
    label: ClassVar[str]  # what the Finetune page and the tables call it
    #: A training step's cost in batch passes (a forward+backward of one batch into every weight); the progress
    #: bar and the ETA count a run's work in these units (see ``finetune.TRAIN_STEP_COST``'s measurement).
    step_cost: ClassVar[float]
    #: Whether it trains on token noise of δ's size: the loop then synthesizes δ each epoch (or noise_every).
    uses_delta: ClassVar[bool] = False
    #: Whether its noise is a control drawn at δ's norm (so it may be given the norms instead: noise_norms).
    is_control: ClassVar[bool] = False

    def loss(self, step: StepInputs, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, clean part, noised part) of one micro-batch already on the training device."""
        raise NotImplementedError


def _two_halves(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean and noised cross-entropy of logits over [clean batch; noised batch]."""
    b = len(y)
    clean = F.cross_entropy(logits[:b].float(), y)
    noised = F.cross_entropy(logits[b:].float(), y)
    return clean + noised, clean, noised


@register_method
class Baseline(FinetuneMethod):
    name, label, step_cost = "baseline", "baseline (plain finetuning)", 1.0

    def loss(self, step, x, y):
        clean = F.cross_entropy(step.forward(x).float(), y)
        return clean, clean, torch.zeros((), device=clean.device)


class TokenNoiseMethod(FinetuneMethod):
    """Clean + noised patch tokens in one pass; the noise is δ or a control of δ's norm, redrawn each period
    (an epoch, or ``noise_every`` steps) from the run's own seed stream."""

    step_cost, uses_delta = 2.0, True

    def training_noise(self, delta: torch.Tensor, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, step, x, y):
        return _two_halves(step.forward(x, self.training_noise(step.delta, step.noise_seed)), y)


@register_method
class Nullspace(TokenNoiseMethod):
    name, label = "nullspace", "nullspace (δ: the paper's method)"

    def training_noise(self, delta, seed):
        return delta


@register_method
class Gaussian(TokenNoiseMethod):
    name, label = "gaussian", "Gaussian noise of δ's norm (control)"
    is_control = True

    def training_noise(self, delta, seed):
        return random_like(delta, "gaussian", torch.Generator().manual_seed(seed))


@register_method
class RandomStart(TokenNoiseMethod):
    name, label = "random_start", "δ's unoptimised random start (control)"
    is_control = True

    def training_noise(self, delta, seed):
        return random_like(delta, "random_start", torch.Generator().manual_seed(seed))


@register_method
class Adversarial(FinetuneMethod):
    name, label, step_cost = "adversarial", "FGSM adversarial training (control)", 2.5

    def loss(self, step, x, y):
        pixels = x * step.std + step.mean
        adv = fgsm(PixelModel(step.model, step.mean, step.std), pixels, y, step.fgsm_eps)
        return _two_halves(step.forward(torch.cat([x, (adv - step.mean) / step.std])), y)
