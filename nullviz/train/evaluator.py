"""Held-out evaluation of a finetuned model with one yardstick for every run compared (timm's ``validate``).

The yardstick is made once, from the untouched starting model and the run's seed alone: the starting model's δ
(how the finetuned model copes with the noise the original could not see) and a Gaussian grid at fixed
multiples of the starting model's mean patch-token norm. Fresh δs are synthesized from the evaluated model with
the fixed ``EVAL_SYNTHESIS`` settings, whatever the run trained with (:class:`~nullviz.train.deltas.RunDeltas`).
The held-out images are sharded over ranks and counted with the robustness suite's counter
(:func:`nullviz.robustness.evaluation.correctness`); the counts are all-reduced, so every rank reports the same
numbers.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch

from nullviz.core.errors import InvalidParameterError
from nullviz.core.seeds import stream_seed
from nullviz.models import PixelModel, logits_from_patch_tokens, patch_tokens, token_grid
from nullviz.robustness.attacks import fgsm
from nullviz.robustness.evaluation import Batch, correctness

from . import distributed as D
from .comparison import summarize
from .config import EPOCH_MEASURES, EVAL_PASS_COST_PER_IMAGE, GAUSSIAN_GRID, FinetuneConfig
from .deltas import RunDeltas
from .loader import collate

#: Held-out images per evaluation batch.
EVAL_BATCH = 256


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, token_noise: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted classes of normalised images, with ``token_noise`` added to their patch tokens if given."""
    if token_noise is None:
        return model(x).argmax(-1)
    return logits_from_patch_tokens(model, patch_tokens(model, x) + token_noise, token_grid(model, x)).argmax(-1)


def reference_key(config: FinetuneConfig) -> tuple:
    """What a run's fixed evaluation noises (:meth:`Evaluator.reference`) depend on besides the start model and
    the training images: runs with the same key share them."""
    return config.seed, config.eval_synth_steps, config.augment


class Evaluator:
    """``evaluate(model, training_delta)`` → the metrics of one epoch's record (see :meth:`evaluate`).

    ``start_model`` is the untouched model the run started from: only read (δ's gradient alone is taken; no
    weight is touched and its mode is never switched), so it may be the cached model other sessions use.
    ``references``: a cache shared by the runs of one start model and training set (a job's methods): the fixed
    noises of :meth:`reference` are then made once per seed and evaluation setting, not once per run."""

    def __init__(self, start_model: torch.nn.Module, deltas: RunDeltas, train_set, eval_set, config: FinetuneConfig,
                 mean: torch.Tensor, std: torch.Tensor, device: torch.device, rank: int = 0, world: int = 1,
                 on_work: Callable[[str, float], None] | None = None,
                 references: dict[tuple, dict[str, Any]] | None = None):
        self.start_model, self.deltas = start_model, deltas
        self.references = references
        self.train_set, self.eval_set, self.cfg = train_set, eval_set, config
        self.mean, self.std, self.device, self.rank, self.world = mean, std, device, rank, world
        self.on_work = on_work or (lambda phase, units: None)
        self.synthesis_seconds = 0.0  # spent synthesizing evaluation δs
        self._reference: dict[str, Any] | None = None

    def reference(self) -> dict[str, Any]:
        """The fixed noises every evaluation of every run from this start and seed shares."""
        if self._reference is None and self.references is not None:
            self._reference = self.references.get(reference_key(self.cfg))
        if self._reference is None:
            start = self.start_model
            if next(start.parameters()).device != self.device:  # another GPU of a DDP run: a copy on this one
                start = copy.deepcopy(start).to(self.device)
            seed = stream_seed("start_delta", self.cfg.seed)
            delta, res = self.deltas.synthesize(start, seed, evaluation=True)
            _, val_idx = self.deltas.images(seed, evaluation=True)
            with torch.no_grad():
                idx = val_idx if len(val_idx) else torch.arange(min(64, len(self.train_set)))
                norm = float(patch_tokens(start, collate(self.train_set, idx)[0].to(self.device))
                             .flatten(1).norm(dim=1).mean())
            gen = torch.Generator().manual_seed(stream_seed("eval_gaussian", self.cfg.seed))
            direction = torch.randn(delta.shape, generator=gen).to(delta)
            direction = direction / direction.norm()
            self._reference = {"start_delta": delta, "start_delta_l2": res.noise_l2, "token_norm": norm,
                               "gaussians": {m: direction * (m * norm) for m in GAUSSIAN_GRID}}
            if self.references is not None:
                self.references[reference_key(self.cfg)] = self._reference
        return self._reference

    def evaluate(self, model: torch.nn.Module, training_delta: torch.Tensor | None = None,
                 fresh_deltas: int | None = None, measures: str = "all") -> dict[str, Any]:
        """Held-out accuracy of ``model`` as it is now. ``measures="clean"``: ``clean_acc`` alone (no δ is
        synthesized; see ``FinetuneConfig.epoch_measures``); ``"all"``:

        - ``delta_acc``: under *fresh* δs synthesized from this model on training images, mean over
          ``fresh_deltas`` seeds (the config's, unless given; ``delta_acc_std``, ``delta_acc_seeds``): how
          invisible the approximate nullspace of *this* model is on images δ never saw. Their mean norm in token
          norms is ``nullspace_size``.
        - ``train_delta_acc``: under the δ the epoch trained on, labelled apart (it was fit to an earlier model).
        - ``start_delta_acc``: under the starting model's δ; ``gaussian_acc@m``: under the Gaussian grid
          (``gaussian_acc``: at one token norm).
        - ``fgsm_acc``: under FGSM at ``fgsm_eps``.
        """
        if measures not in EPOCH_MEASURES:
            raise InvalidParameterError("measures", "Evaluator.evaluate", f"one of {EPOCH_MEASURES}", measures)
        if measures == "clean":
            return {"clean_acc": self._accuracies({"clean_acc": lambda b: predict(model, b.x)}, model, 1)["clean_acc"]}
        t = time.perf_counter()
        count = self.cfg.fresh_deltas if fresh_deltas is None else fresh_deltas
        made = [self.deltas.synthesize(model, stream_seed("fresh_delta", self.cfg.seed, k), evaluation=True)
                for k in range(count)]
        ref = self.reference()
        self.synthesis_seconds += time.perf_counter() - t

        conditions: dict[str, Callable[[Batch], torch.Tensor]] = {"clean_acc": lambda b: predict(model, b.x)}
        for k, (d, _) in enumerate(made):
            conditions[f"fresh_{k}"] = lambda b, d=d: predict(model, b.x, d)
        conditions["start_delta_acc"] = lambda b: predict(model, b.x, ref["start_delta"])
        for m, g in ref["gaussians"].items():
            conditions[f"gaussian_acc@{m:g}"] = lambda b, g=g: predict(model, b.x, g)
        if training_delta is not None:
            conditions["train_delta_acc"] = lambda b: predict(model, b.x, training_delta)
        fn = PixelModel(model, self.mean, self.std)
        conditions["fgsm_acc"] = lambda b: predict(
            model, (fgsm(fn, b.x * self.std + self.mean, b.y, self.cfg.fgsm_eps) - self.mean) / self.std)

        acc = self._accuracies(conditions, model, self.cfg.eval_passes(fresh=self.cfg.fresh_deltas))
        out: dict[str, Any] = {"clean_acc": acc["clean_acc"], "fgsm_acc": acc["fgsm_acc"],
                               "start_delta_acc": acc["start_delta_acc"]}
        for m in GAUSSIAN_GRID:
            out[f"gaussian_acc@{m:g}"] = acc[f"gaussian_acc@{m:g}"]
        out["gaussian_acc"] = out[f"gaussian_acc@{GAUSSIAN_GRID[-1]:g}"]  # the headline: one token norm
        out.update(start_delta_l2=ref["start_delta_l2"], token_norm=ref["token_norm"])
        if made:
            accs = [acc[f"fresh_{k}"] for k in range(len(made))]
            sizes = [float(d.norm()) for d, _ in made]
            out.update(delta_acc=sum(accs) / len(accs), delta_acc_std=summarize(accs).std, delta_acc_seeds=accs,
                       fresh_delta_l2=sum(sizes) / len(sizes),
                       # the largest δ inside ε on training images it was not fit on, in token norms
                       nullspace_size=sum(sizes) / len(sizes) / ref["token_norm"],
                       nullspace_size_validation_mse=sum(r.validation.mse_probs if r.validation else 0.0
                                                         for _, r in made) / len(made))
        if training_delta is not None:
            out["train_delta_acc"] = acc["train_delta_acc"]
        return out

    def _accuracies(self, conditions: dict[str, Callable[[Batch], torch.Tensor]], model: torch.nn.Module,
                    passes: int) -> dict[str, float]:
        """Accuracy under each condition on the held-out images, every rank's share counted and summed; the
        model in eval mode for it and back. ``passes``: forward passes per image, for the progress count."""
        n = len(self.eval_set) if self.cfg.eval_limit is None else min(self.cfg.eval_limit, len(self.eval_set))
        mine = list(range(self.rank, n, self.world))  # this rank's share; the counts are summed below
        per_image = passes * EVAL_PASS_COST_PER_IMAGE / self.cfg.batch_size
        was_training = model.training
        model.eval()
        try:
            right = correctness(conditions, self._batches(mine),
                                on_batch=lambda b: self.on_work("evaluating", len(b.y) * self.world * per_image))
        finally:
            model.train(was_training)
        names = list(conditions)
        counts = D.all_reduce_sum(torch.tensor([float(right[k].sum()) for k in names], dtype=torch.float64,
                                               device=self.device)).cpu().tolist()
        return {k: c / n for k, c in zip(names, counts)}

    def _batches(self, indices: list[int]):
        for i in range(0, len(indices), EVAL_BATCH):
            x, y = collate(self.eval_set, indices[i:i + EVAL_BATCH])
            yield Batch(i, x.to(self.device), y.to(self.device))
