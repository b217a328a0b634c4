"""Where a run's δs come from: which training images each δ is fit on (and, for evaluation δs, selected on),
with which settings, and how every rank of a distributed run ends up with the same one.

Training δs use the run's own settings on ``synth_fraction`` of the training images. Evaluation δs use the fixed
``EVAL_SYNTHESIS`` settings on ``EVAL_FIT_FRACTION`` of them and are kept as the largest δ inside ε on a validation
draw of ``EVAL_VALIDATION_IMAGES`` others: never on held-out images, which only judge. Images and δ's random start
are drawn from the seed alone, so runs that differ only in training settings draw the same images. δ is computed
on every rank from the same images and seed and then broadcast from rank 0: no rank idles waiting for it, no
gradient crosses the network during synthesis, and δ is bit-identical where kernels are not deterministic.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from nullviz.models import patch_tokens
from nullviz.noise.approximate import SynthesisResult, synthesize_for_model

from . import distributed as D
from .config import EVAL_FIT_FRACTION, EVAL_VALIDATION_IMAGES, SYNTHESIS_STEP_COST, FinetuneConfig
from .loader import collate


class RunDeltas:
    """δs for one run: ``synthesize(model, seed)`` for training, ``synthesize(model, seed, evaluation=True)`` for
    the evaluator. ``on_work(phase, units)`` is told every synthesis step (see ``config.work_plan``)."""

    def __init__(self, train_set, config: FinetuneConfig, device: torch.device,
                 on_work: Callable[[str, float], None] | None = None):
        self.train_set, self.cfg, self.device = train_set, config, device
        self.on_work = on_work or (lambda phase, units: None)

    def images(self, seed: int, evaluation: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the training images a δ is fit on, and (evaluation δs only) of those that select it."""
        n = len(self.train_set)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        if not evaluation:
            return order[:max(1, int(round(n * self.cfg.synth_fraction)))], order[:0]
        n_fit = max(1, int(round(n * EVAL_FIT_FRACTION)))
        n_val = min(EVAL_VALIDATION_IMAGES, max(0, n - n_fit) // 2)
        return order[:n_fit], order[n_fit:n_fit + n_val]

    def of_given_norm(self, model: torch.nn.Module, period: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """A control's stand-in for δ when the run was given its noise norms (``noise_norms``): a tensor of the
        patch tokens' shape with the period's norm (the last norm repeated). The control draws its noise with
        this shape and norm (``random_like``); no δ is synthesized."""
        norms = self.cfg.noise_norms
        norm = float(norms[min(period, len(norms) - 1)])
        with torch.no_grad():
            x, _ = collate(self.train_set, torch.arange(1))
            shape = patch_tokens(model, x.to(self.device)).shape[1:]
        ref = torch.full(shape, norm / math.sqrt(math.prod(shape)), device=self.device)
        return ref, {"delta_l2": norm, "delta_source": "given norm"}

    def synthesize(self, model: torch.nn.Module, seed: int, evaluation: bool = False
                   ) -> tuple[torch.Tensor, SynthesisResult]:
        """A δ from ``model`` as it is now (detached; under DDP rank 0's on every rank) and its synthesis result.
        A model in training mode is put in eval mode for the call and back (δ is fit to the model as it
        predicts); a model in eval mode — the untouched start — is only read."""
        fit_idx, val_idx = self.images(seed, evaluation)
        x, _ = collate(self.train_set, fit_idx)
        val = collate(self.train_set, val_idx)[0].to(self.device) if len(val_idx) else None
        cfg = self.cfg.evaluation_synthesis(seed) if evaluation else self.cfg.synthesis(seed)
        was_training = model.training
        if was_training:
            model.eval()
        try:
            res = synthesize_for_model(model, x.to(self.device), cfg, validation_images=val,
                                       callback=lambda s: self.on_work("synthesizing δ", SYNTHESIS_STEP_COST))
        finally:
            if was_training:
                model.train()
        if res.steps_run < cfg.steps:  # stopped inside ε early: the planned work is done
            self.on_work("synthesizing δ", (cfg.steps - res.steps_run) * SYNTHESIS_STEP_COST)
        delta = D.broadcast(res.delta.to(self.device).contiguous())
        return delta.detach(), res


def training_delta_info(res: SynthesisResult) -> dict[str, Any]:
    """What an epoch's record says about the δ it trained on."""
    return {"delta_l2": res.noise_l2, "delta_mse_probs": res.fit.mse_probs, "delta_agreement": res.fit.agreement,
            "delta_steps": res.steps_run, "delta_permuted_agreement": res.fit.permuted_agreement,
            "delta_check_mse_probs": res.check.mse_probs if res.check else None,
            "delta_travelled_l2": res.travelled_l2}
