"""Nullspace-augmented finetuning (the paper's §3) and its controls, one loop for every method.

Methods, same loop and budget:
- ``baseline``: CE(model(x), y).
- ``nullspace``: at the start of each epoch (or every K steps) synthesize a fresh encoder-level δ on a
  fraction of the training images from the *current* model (``nullviz.noise.approximate``), then train all weights
  on CE(clean) + CE(tokens + δ) with δ fixed and detached. The patch embedding runs once per batch and the
  clean and noised tokens go through the encoder as one concatenated batch.
- ``gaussian``: the same with δ replaced by Gaussian noise of δ's norm (is it the nullspace, or any noise?).
- ``random_start``: the same with δ replaced by an unoptimised draw from δ's start distribution U(−a, a),
  scaled to δ's norm (is it the *optimisation*, or any noise of that kind and size?).
- ``adversarial``: FGSM adversarial training at ε (pixels in [0, 1]): CE(clean) + CE(x_adv).

The noise methods synthesize the epoch's δ (``nullspace`` trains on it, the controls on noise of its norm);
every evaluation measures accuracy under *fresh* δs synthesized from the model being evaluated. AdamW with
linear warm-up then cosine decay; optional freezing of the patch embedding or of everything but the head;
bf16 autocast on CUDA; optional ``torch.compile``; seeded and deterministic on CPU.

One loop for one process, the app's job runner and ``torchrun`` (DistributedDataParallel), cut along the seams of
timm's ``train.py``: the distributed helpers (``nullviz.train.distributed``), the loader (``nullviz.train.loader``:
a (seed, epoch)-determined order sharded over ranks, DataLoader workers), the step (:class:`MethodForward`, the
module DDP wraps, so the clean and the noised pass both run through DDP's forward and its gradient hooks; gradient
accumulation under ``no_sync``; each method's loss in ``nullviz.train.methods``), the evaluation (held-out set
sharded over ranks, counts all-reduced: every rank reports the same numbers) and the checkpoint saver
(``nullviz.train.checkpoint``: atomic, rank 0 only). δ is computed on every rank from the same images and seed and
then broadcast from rank 0: the ranks never idle waiting for it, no gradient has to cross the network during
synthesis, and the broadcast makes δ bit-identical even where kernels are not deterministic (joint synthesis over
every rank's images, as the research code does, would fit δ to more images but would add an all-reduce per
synthesis step).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from nullviz.core.errors import CheckpointError, DataError, InvalidParameterError, NullvizError
from nullviz.core.params import Interval, Options, bounded, validate_fields
from nullviz.core.seeds import MAX_SEED, stream_seed
from nullviz.models import LoadedModel, PixelModel, logits_from_patch_tokens, patch_tokens, token_grid
from nullviz.noise.approximate import (DEFAULT_LAM, DEFAULT_LIM, DEFAULT_LR, DEFAULT_STEPS, SynthesisConfig,
                                       synthesize_for_model)
from nullviz.robustness.attacks import fgsm

from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint
from .comparison import summarize
from .loader import EpochBatchSampler, collate, make_train_loader
from .methods import FINETUNE_METHODS


METHODS = tuple(FINETUNE_METHODS)
#: One yardstick for every run compared. Evaluation δs use these settings whatever a run trained with (a run's
#: own λ gave its "under δ" figure larger, more visible δs), are fit on EVAL_FIT_FRACTION of the training
#: images and kept as the largest δ inside ε on EVAL_VALIDATION_IMAGES other training images: that δ's norm is
#: the model's *nullspace size*. All drawn from the run's seed alone, so runs that differ only in training
#: settings draw the same images.
EVAL_SYNTHESIS = dict(level="encoder", lim=DEFAULT_LIM, lr=DEFAULT_LR, lam=DEFAULT_LAM, tol=0.01)
EVAL_FIT_FRACTION = 0.1
EVAL_VALIDATION_IMAGES = 128
#: Gaussian controls at fixed norms: these multiples of the *starting* model's mean patch-token norm (on the
#: validation draw), the same noise for every run from that start (it was each model's own δ norm, so a model
#: whose approximate nullspace grew was tested with larger noise).
GAUSSIAN_GRID = (0.25, 0.5, 1.0)
TOKEN_NOISE_METHODS = tuple(name for name, m in FINETUNE_METHODS.items() if m.uses_delta)
FREEZE = ("none", "patch_embed", "all_but_head")


#: What each kind of work costs, in *batch passes* (a forward+backward of ``batch_size`` images into every
#: weight): the progress bar and the ETA count all of a run's work in these units, so δ synthesis and
#: evaluation move them as much as they take. Measured on the cluttered model, CPU, batch 64, 2 threads
#: (0.285 s a batch pass): a training step is 1 pass (baseline), 2 (clean + noised: the noise methods) or
#: 2.5 (adversarial: the attack, then clean + adversarial); a δ step (one batch forward+backward to δ alone)
#: 0.55; one image through one evaluation forward 0.225 / batch (0.93–1.0 ms).
TRAIN_STEP_COST = {name: m.step_cost for name, m in FINETUNE_METHODS.items()}
SYNTHESIS_STEP_COST = 0.55
EVAL_PASS_COST_PER_IMAGE = 0.225
PHASES = ("synthesizing δ", "training", "evaluating")


@dataclass(frozen=True)
class FinetuneConfig:
    """One run's settings. Defaults: the research code's optimiser (AdamW, lr 1e-4, wd 1e-4, cosine); δ is
    synthesized at the frontier defaults of :class:`~nullviz.noise.approximate.SynthesisConfig` (lim 1, λ 0.5,
    200 steps, ε 0.01) on 10 % of the training images; the research code's lim 3, λ 0 stops while δ is
    still its random start."""

    method: str = bounded("nullspace", Options(METHODS))
    epochs: int = bounded(3, Interval(int, 1, 10_000))
    steps_per_epoch: int | None = None  # None: one full pass over the training set
    batch_size: int = bounded(64, Interval(int, 1, 65_536))
    lr: float = bounded(1e-4, Interval(float, 0.0, 1.0, closed="right"))
    weight_decay: float = bounded(1e-4, Interval(float, 0.0, 1.0))
    warmup_steps: int = bounded(0, Interval(int, 0, None))
    freeze: str = bounded("none", Options(FREEZE))
    noise_every: int | None = None  # resynthesize δ every K steps (None: once per epoch)
    synth_fraction: float = bounded(0.1, Interval(float, 0.0, 1.0, closed="right"))
    synth_steps: int = bounded(DEFAULT_STEPS, Interval(int, 1, 100_000))
    synth_lim: float = bounded(DEFAULT_LIM, Interval(float, 0.0, None, closed="neither"))
    synth_lr: float = bounded(DEFAULT_LR, Interval(float, 0.0, None, closed="neither"))
    synth_tol: float = bounded(0.01, Interval(float, 0.0, None, closed="neither"))
    synth_lam: float = bounded(DEFAULT_LAM, Interval(float, 0.0, None))
    fgsm_eps: float = bounded(8 / 255, Interval(float, 0.0, 1.0))
    eval_limit: int | None = None
    fresh_deltas: int = bounded(2, Interval(int, 0, 16))  # δs synthesized on the evaluated model
    fresh_every_epoch: bool = False  # fresh δs at every epoch's evaluation (slower), else after the last one
    amp: bool = True  # bf16 autocast, CUDA only
    grad_accum: int = bounded(1, Interval(int, 1, 1024))  # micro-batches of batch_size per optimizer step
    workers: int = bounded(0, Interval(int, 0, 64))  # DataLoader worker processes (0: read in this process)
    compile: bool = False  # torch.compile the training forward
    # the evaluation δs' synthesis steps: an evaluation setting, the same for every run compared (a run's own
    # synth_* settings only shape the δ it trains on)
    eval_synth_steps: int = bounded(DEFAULT_STEPS, Interval(int, 1, 100_000))
    # a new classifier head when the data's classes are not the model's: said explicitly, so a 1,000-class
    # ImageNet ViT is never quietly retrained as a 10-digit classifier
    new_head: bool = False
    seed: int = bounded(0, Interval(int, 0, MAX_SEED))

    def __post_init__(self):
        validate_fields(self)
        for name in ("steps_per_epoch", "noise_every", "eval_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidParameterError(name, "FinetuneConfig", "None or an int ≥ 1", value)

    def work_plan(self, steps_per_epoch: int, eval_images: int) -> dict[str, float]:
        """The run's work by phase, in batch passes (see TRAIN_STEP_COST): what the progress bar counts."""
        deltas = 0
        if self.method in TOKEN_NOISE_METHODS:
            per_epoch = 1 + ((steps_per_epoch - 1) // self.noise_every if self.noise_every else 0)
            deltas = self.epochs * per_epoch
        fresh_epochs = self.epochs if self.fresh_every_epoch else 1
        fresh = self.fresh_deltas * fresh_epochs + 1  # + the starting model's δ, made once
        n = eval_images if self.eval_limit is None else min(self.eval_limit, eval_images)
        return {"synthesizing δ": (deltas * self.synth_steps + fresh * self.eval_synth_steps) * SYNTHESIS_STEP_COST,
                "training": self.epochs * steps_per_epoch * TRAIN_STEP_COST[self.method],
                "evaluating": self.epochs * n * self.eval_passes(fresh=self.fresh_deltas) * EVAL_PASS_COST_PER_IMAGE
                / self.batch_size}

    def eval_passes(self, fresh: int) -> int:
        """Forward passes per held-out image in one evaluation: clean, each fresh δ, the starting model's δ,
        the Gaussian grid, the training δ, FGSM (attack and prediction: three)."""
        noise = self.method in TOKEN_NOISE_METHODS
        return 1 + fresh + 1 + len(GAUSSIAN_GRID) + (1 if noise else 0) + 3

    def synthesis(self, seed: int) -> SynthesisConfig:
        """The δ this run trains on (its own settings)."""
        return SynthesisConfig(level="encoder", lim=self.synth_lim, lr=self.synth_lr, lam=self.synth_lam,
                               tol=self.synth_tol, steps=self.synth_steps, seed=seed)

    def evaluation_synthesis(self, seed: int) -> SynthesisConfig:
        """The δs every evaluation measures with: fixed settings, whatever the run trained with."""
        return SynthesisConfig(**EVAL_SYNTHESIS, steps=self.eval_synth_steps, seed=seed)


@dataclass
class FinetuneResult:
    config: FinetuneConfig
    history: list[dict[str, Any]]
    epochs_run: int
    steps_run: int
    stopped: bool
    checkpoint: str | None
    seconds: float
    synthesis_seconds: float
    evaluation_synthesis_seconds: float = 0.0
    world_size: int = 1
    images_per_second: float = 0.0  # training images per second over the whole run (all ranks)
    resume_note: str | None = None

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.world_size

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.config.method, "config": asdict(self.config), "epochs_run": self.epochs_run,
                "steps_run": self.steps_run, "stopped": self.stopped, "checkpoint": self.checkpoint,
                "seconds": self.seconds, "synthesis_seconds": self.synthesis_seconds,
                "evaluation_synthesis_seconds": self.evaluation_synthesis_seconds, "world_size": self.world_size,
                "global_batch": self.global_batch, "images_per_second": self.images_per_second,
                "resume_note": self.resume_note, "history": self.history}


class MethodForward(torch.nn.Module):
    """The training forward, as one module (the one DDP wraps): clean logits, or, given token noise, the
    logits of the clean and the noised tokens as one concatenated batch (the patch embedding runs once)."""

    def __init__(self, vit: torch.nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor, token_noise: torch.Tensor | None = None) -> torch.Tensor:
        if token_noise is None:
            return self.vit(x)
        u = patch_tokens(self.vit, x)
        return logits_from_patch_tokens(self.vit, torch.cat([u, u + token_noise]), token_grid(self.vit, x))


class PeerFailedError(NullvizError, RuntimeError):
    """Another process of a distributed run stopped (killed, out of memory…) and this one cannot go on."""


class FinetuneRun:
    """A stoppable, resumable finetuning run on a *copy* of a loaded model.

    ``train_set`` / ``eval_set`` yield (normalised tensor, label) — e.g. ``digits_dataset(split,
    lm.transform)``. Callbacks receive plain dicts (one per step, one per epoch); the run never prints.
    """

    def __init__(self, lm: LoadedModel, train_set, eval_set, config: FinetuneConfig, out_dir: str | Path | None = None,
                 on_step: Callable[[dict], None] | None = None, on_epoch: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_work: Callable[[str, float], None] | None = None):
        if len(train_set) == 0 or len(eval_set) == 0:
            raise InvalidParameterError("train_set", "FinetuneRun", "non-empty training and held-out sets",
                                        (len(train_set), len(eval_set)))
        self.lm, self.cfg = lm, config
        self._reference: dict[str, Any] | None = None  # the evaluation's fixed noises (see _yardstick)
        self.train_set, self.eval_set = train_set, eval_set
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.on_step, self.on_epoch = on_step or (lambda d: None), on_epoch or (lambda d: None)
        self.on_work = on_work or (lambda phase, units: None)  # (phase, units of work done), see work_plan
        self.should_stop = should_stop or (lambda: False)
        self.dist, self.device = D.init_distributed(lm.device)
        self.rank, self.world = self.dist.rank, self.dist.world_size

        self.model = lm.trainable_copy().to(self.device)
        num_classes = _num_classes(train_set)
        if num_classes is not None and num_classes != self.model.num_classes:
            check_head(lm.name, self.model.num_classes, num_classes, config.new_head)
            with torch.random.fork_rng(devices=[]):  # a seeded new head without touching the global RNG
                torch.manual_seed(stream_seed("head_init", config.seed))
                self.model.reset_classifier(num_classes)
            self.model.to(self.device)
        self._apply_freeze()
        self.model.train()
        self.net: torch.nn.Module = MethodForward(self.model)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.forward = torch.compile(self.net) if config.compile else self.net
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.global_batch = config.batch_size * config.grad_accum * self.world
        self.steps_per_epoch = config.steps_per_epoch or math.ceil(len(train_set) / self.global_batch)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.mean, self.std = lm.mean.to(self.device), lm.std.to(self.device)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.delta: torch.Tensor | None = None
        self.delta_info: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.synthesis_seconds = 0.0
        self.evaluation_synthesis_seconds = 0.0
        self._epoch_sums: dict[str, float] = {}
        self._last_lr = self.optimizer.param_groups[0]["lr"]
        self.resume_note: str | None = None
        self._images_trained = 0
        self._train_seconds = 0.0

    # ---------------------------------------------------------------------------------------- pieces
    def _lr_factor(self, step: int) -> float:
        warm = self.cfg.warmup_steps
        if step < warm:
            return (step + 1) / warm
        span = max(1, self.total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(step - warm, span) / span))

    def _apply_freeze(self) -> None:
        if self.cfg.freeze == "patch_embed":
            for p in self.model.patch_embed.parameters():
                p.requires_grad_(False)
        elif self.cfg.freeze == "all_but_head":
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.startswith("head"))

    def batch_sampler(self, epoch: int, start_step: int = 0) -> EpochBatchSampler:
        """This rank's micro-batches of ``epoch`` from ``start_step`` on: a function of (seed, epoch) alone."""
        cfg = self.cfg
        return EpochBatchSampler(len(self.train_set), cfg.seed, epoch, self.steps_per_epoch, cfg.batch_size,
                                 cfg.grad_accum, self.rank, self.world, start_step)

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _synthesize(self, seed: int, evaluation: bool = False, model: torch.nn.Module | None = None
                    ) -> tuple[torch.Tensor, Any]:
        """A δ from the model as it is now (or from ``model``), the images and δ's random start drawn from
        ``seed``. Training δs: the run's own settings on ``synth_fraction`` of the training images.
        Evaluation δs (``evaluation``): the fixed EVAL_SYNTHESIS settings on EVAL_FIT_FRACTION of them, kept as
        the largest δ inside ε on a validation draw of others. Under DDP every rank gets rank 0's δ."""
        model = self.model if model is None else model
        fit_idx, val_idx = self._synthesis_images(seed, evaluation)
        x, _ = collate(self.train_set, fit_idx)
        val = collate(self.train_set, val_idx)[0].to(self.device) if len(val_idx) else None
        cfg = self.cfg.evaluation_synthesis(seed) if evaluation else self.cfg.synthesis(seed)
        was_training = model.training
        if was_training:
            model.eval()  # our own copy: δ is fit to the model as it predicts (the untouched start is left alone)
        cost = SYNTHESIS_STEP_COST
        try:
            res = synthesize_for_model(model, x.to(self.device), cfg, validation_images=val,
                                       callback=lambda s: self.on_work("synthesizing δ", cost))
        finally:
            if was_training:
                model.train()
        if res.steps_run < cfg.steps:  # stopped inside ε early: the planned work is done
            self.on_work("synthesizing δ", (cfg.steps - res.steps_run) * cost)
        delta = D.broadcast(res.delta.to(self.device).contiguous())
        return delta.detach(), res

    def _synthesis_images(self, seed: int, evaluation: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the training images a δ is fit on, and (evaluation δs only) of those that select it."""
        n = len(self.train_set)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        if not evaluation:
            return order[:max(1, int(round(n * self.cfg.synth_fraction)))], order[:0]
        n_fit = max(1, int(round(n * EVAL_FIT_FRACTION)))
        n_val = min(EVAL_VALIDATION_IMAGES, max(0, n - n_fit) // 2)
        return order[:n_fit], order[n_fit:n_fit + n_val]

    def _yardstick(self) -> dict[str, Any]:
        """What every evaluation of this run shares with every run from the same start and seed: the starting
        model's δ (transferred: how the finetuned model copes with the noise the original could not see) and
        the Gaussian grid's norms. Made once, on the untouched model."""
        if self._reference is None:
            start = self.lm.model  # read only: δ's gradient alone is taken (no weight is touched or switched)
            if next(start.parameters()).device != self.device:  # another GPU of a DDP run: a copy on this one
                start = copy.deepcopy(start).to(self.device)
            delta, res = self._synthesize(stream_seed("start_delta", self.cfg.seed), evaluation=True, model=start)
            _, val_idx = self._synthesis_images(stream_seed("start_delta", self.cfg.seed), True)
            with torch.no_grad():
                x = collate(self.train_set, val_idx if len(val_idx) else torch.arange(min(64, len(self.train_set))))[0]
                norm = float(patch_tokens(start, x.to(self.device)).flatten(1).norm(dim=1).mean())
            gen = torch.Generator().manual_seed(stream_seed("eval_gaussian", self.cfg.seed))
            direction = torch.randn(delta.shape, generator=gen).to(delta)
            direction = direction / direction.norm()
            self._reference = {"start_delta": delta, "start_delta_l2": res.noise_l2, "token_norm": norm,
                               "gaussians": {m: direction * (m * norm) for m in GAUSSIAN_GRID}}
        return self._reference

    def synthesize_delta(self, seed: int) -> None:
        """The δ the coming steps train on (every method makes one, so every run is measured alike)."""
        t = time.perf_counter()
        self.delta, res = self._synthesize(seed)
        self.delta_info = {"delta_l2": res.noise_l2, "delta_mse_probs": res.mse_probs,
                           "delta_agreement": res.agreement, "delta_steps": res.steps_run,
                           "delta_permuted_agreement": res.permuted_agreement,
                           "delta_check_mse_probs": res.check_mse_probs, "delta_travelled_l2": res.travelled_l2}
        self.synthesis_seconds += time.perf_counter() - t

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, clean part, noised part) of one micro-batch, by the configured method
        (:mod:`nullviz.train.methods`); every forward goes through ``self.forward`` (DDP's), the FGSM attack
        through the bare model (it needs input gradients only)."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self._autocast():
            return FINETUNE_METHODS[self.cfg.method].loss(self, x, y)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimisation step of the configured method on a batch (x normalised)."""
        return self._optimizer_step([(x, y)])

    def _optimizer_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Accumulate the gradients of ``grad_accum`` micro-batches (DDP synchronises on the last only), then
        step. Logged losses are means over micro-batches and ranks."""
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler moves it on below)
        self.optimizer.zero_grad(set_to_none=True)
        k = len(micro_batches)
        sums = torch.zeros(3, dtype=torch.float64)
        for i, (x, y) in enumerate(micro_batches):
            sync = i == k - 1 or not hasattr(self.net, "no_sync")
            with contextlib.nullcontext() if sync else self.net.no_sync():
                loss, clean, noise = self._loss(x, y)
                (loss / k).backward()
            sums += torch.tensor([float(loss.detach()), float(clean.detach()), float(noise.detach())],
                                 dtype=torch.float64)
        self.optimizer.step()
        self.scheduler.step()
        sums = D.all_reduce_sum(sums.to(self.device)).cpu() / (k * self.world)
        return {"loss": float(sums[0]), "loss_clean": float(sums[1]), "loss_noise": float(sums[2]), "lr": lr}

    @torch.no_grad()
    def _predict(self, x: torch.Tensor, token_noise: torch.Tensor | None = None) -> torch.Tensor:
        if token_noise is None:
            return self.model(x).argmax(-1)
        return logits_from_patch_tokens(self.model, patch_tokens(self.model, x) + token_noise,
                                        token_grid(self.model, x)).argmax(-1)

    def evaluate(self, fresh_deltas: int | None = None) -> dict[str, Any]:
        """Held-out accuracy of the model as it is now.

        - ``delta_acc``: under *fresh* δs synthesized from this model on training images, mean over
          ``fresh_deltas`` seeds (the config's, unless given; ``delta_acc_std``, ``delta_acc_seeds``): how
          invisible the approximate nullspace of *this* model is on images δ never saw. The δ a run trained on is fit to an earlier
          model and the choice of one δ alone moves the figure by points, so it is not the headline.
        - ``train_delta_acc``: under the δ the epoch trained on, labelled apart.
        - ``gaussian_acc``: under Gaussian noise of each fresh δ's norm (the epoch's δ when there are none),
          drawn from the evaluation stream, which no training draw shares (``nullviz.core.seeds``).
        - ``fgsm_acc``: under FGSM at ``fgsm_eps``.
        """
        t = time.perf_counter()
        count = self.cfg.fresh_deltas if fresh_deltas is None else fresh_deltas
        made = [self._synthesize(stream_seed("fresh_delta", self.cfg.seed, k), evaluation=True) for k in range(count)]
        fresh = [d for d, _ in made]
        ref = self._yardstick()
        self.evaluation_synthesis_seconds += time.perf_counter() - t
        gauss = list(ref["gaussians"].values())
        fixed = [ref["start_delta"], *gauss]  # the same noise for every run from this start
        was_training = self.model.training
        self.model.eval()
        try:
            n = len(self.eval_set) if self.cfg.eval_limit is None else min(self.cfg.eval_limit, len(self.eval_set))
            fn = PixelModel(self.model, self.mean, self.std)
            clean = fgsm_right = train_delta = 0
            fresh_right = [0] * len(fresh)
            fixed_right = [0] * len(fixed)
            mine = list(range(self.rank, n, self.world))  # this rank's share; the counts are summed below
            per_image = self.cfg.eval_passes(fresh=self.cfg.fresh_deltas) * EVAL_PASS_COST_PER_IMAGE / self.cfg.batch_size
            for i in range(0, len(mine), 256):
                self.on_work("evaluating", len(mine[i:i + 256]) * self.world * per_image)
                x, y = collate(self.eval_set, mine[i:i + 256])
                x, y = x.to(self.device), y.to(self.device)
                clean += int((self._predict(x) == y).sum())
                for k, d in enumerate(fresh):
                    fresh_right[k] += int((self._predict(x, d) == y).sum())
                for k, g in enumerate(fixed):
                    fixed_right[k] += int((self._predict(x, g) == y).sum())
                if self.delta is not None:
                    train_delta += int((self._predict(x, self.delta) == y).sum())
                adv = fgsm(fn, x * self.std + self.mean, y, self.cfg.fgsm_eps)
                fgsm_right += int((self._predict((adv - self.mean) / self.std) == y).sum())
        finally:
            self.model.train(was_training)
        counts = D.all_reduce_sum(torch.tensor([clean, fgsm_right, train_delta, *fresh_right, *fixed_right],
                                               dtype=torch.float64, device=self.device)).cpu().tolist()
        clean, fgsm_right, train_delta = counts[:3]
        fresh_right, fixed_right = counts[3:3 + len(fresh)], counts[3 + len(fresh):]
        out: dict[str, Any] = {"clean_acc": clean / n, "fgsm_acc": fgsm_right / n,
                               "start_delta_acc": fixed_right[0] / n}
        for m, right in zip(GAUSSIAN_GRID, fixed_right[1:]):
            out[f"gaussian_acc@{m:g}"] = right / n
        out["gaussian_acc"] = out[f"gaussian_acc@{GAUSSIAN_GRID[-1]:g}"]  # the headline: one token norm
        out.update(start_delta_l2=ref["start_delta_l2"], token_norm=ref["token_norm"])
        if fresh:
            accs = [r / n for r in fresh_right]
            sizes = [float(d.norm()) for d in fresh]
            out.update(delta_acc=sum(accs) / len(accs), delta_acc_std=summarize(accs).std, delta_acc_seeds=accs,
                       fresh_delta_l2=sum(sizes) / len(sizes),
                       # the largest δ inside ε on training images it was not fit on, in token norms
                       nullspace_size=sum(sizes) / len(sizes) / ref["token_norm"],
                       nullspace_size_validation_mse=sum(r.validation_mse_probs or 0.0 for _, r in made) / len(made))
        if self.delta is not None:
            out["train_delta_acc"] = train_delta / n
        return out

    # ---------------------------------------------------------------------------------- checkpoints
    def save(self, out_dir: str | Path | None = None) -> Path | None:
        """model.safetensors + model.json (architecture, classes, data config, config, metrics, loadable by
        ``load_model(checkpoint=…)``) + trainer_state.pt (optimizer, schedule, δ, position) for resuming.
        Rank 0 only; each file is written atomically (``nullviz.train.checkpoint``)."""
        out = Path(out_dir) if out_dir is not None else self.out_dir
        if out is None or not self.dist.is_primary:
            return None
        side = {"arch": self.lm.name, "class_names": _class_names(self.train_set, self.lm, self.model),
                "data_config": {**self.lm.data_config, "input_size": list(self.lm.data_config["input_size"])},
                "finetune": asdict(self.cfg), "source_checkpoint": self.lm.checkpoint,
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "world_size": self.world,
                "metrics": self.history[-1] if self.history else {}}
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                 "world_size": self.world, "delta": self.delta.cpu() if self.delta is not None else None,
                 "delta_info": json.dumps(self.delta_info), "history": json.dumps(self.history),
                 "synthesis_seconds": self.synthesis_seconds, "config": json.dumps(asdict(self.cfg)),
                 "epoch_sums": json.dumps(self._epoch_sums)}
        return save_checkpoint(out, self.model.state_dict(), side, state)

    #: Settings that may differ when a run is resumed (they change how, not what, it computes).
    RESUMABLE_CHANGES = ("epochs", "workers", "compile", "fresh_deltas", "fresh_every_epoch", "eval_limit")

    def load_state(self, out_dir: str | Path) -> None:
        """Restore weights, optimizer, schedule, δ and position from ``save``'s files. With the same world
        size the run continues exactly where it stopped; with another one it continues from the same point of
        the same epoch, at the nearest step of the new global batch, and ``resume_note`` says so."""
        out = Path(out_dir)
        weights, state = load_checkpoint(out)
        saved_cfg = FinetuneConfig(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in json.loads(state["config"]).items()})
        same = {k: getattr(self.cfg, k) for k in self.RESUMABLE_CHANGES}
        if replace(saved_cfg, **same) != self.cfg:
            raise CheckpointError("The run in that folder used other settings; resume it with the same ones "
                                  f"(only {', '.join(self.RESUMABLE_CHANGES)} may change).")
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world:
            images = self.step_in_epoch * self.cfg.batch_size * self.cfg.grad_accum * saved_world
            self.step_in_epoch = min(self.steps_per_epoch, images // self.global_batch)
            self.global_step = self.epoch * self.steps_per_epoch + self.step_in_epoch
            self.scheduler.last_epoch = self.global_step - 1
            self.scheduler.step()  # the learning rate of the new position
            self.resume_note = (f"Resumed on {self.world} process(es) a run saved on {saved_world}: it continues "
                                f"from epoch {self.epoch + 1}, step {self.step_in_epoch} of {self.steps_per_epoch} "
                                f"(the same images seen, to the nearest step of the new global batch "
                                f"{self.global_batch}); it is not bit-identical to an uninterrupted run.")
        self.delta = state["delta"].to(self.device) if state["delta"] is not None else None
        self.delta_info = json.loads(state["delta_info"])
        self.history = json.loads(state["history"])
        self.synthesis_seconds = float(state["synthesis_seconds"])
        self._epoch_sums = json.loads(state["epoch_sums"])

    # --------------------------------------------------------------------------------------- logging
    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if record["kind"] == "epoch":
            path = self.out_dir / "epochs.csv"
            new = not path.exists()
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(record))
                if new:
                    writer.writeheader()
                writer.writerow(record)

    # ------------------------------------------------------------------------------------------ loop
    def _stop_requested(self) -> bool:
        """Any rank's stop request stops every rank at the same step (so they all save and leave together)."""
        flag = torch.tensor([1.0 if self.should_stop() else 0.0], device=self.device)
        return bool(D.all_reduce_sum(flag).item() > 0)

    def _micro_batches(self, epoch: int):
        """This rank's batches of ``epoch`` from the current step on, ``grad_accum`` micro-batches at a time."""
        cfg = self.cfg
        loader = make_train_loader(self.train_set, self.batch_sampler(epoch, self.step_in_epoch), cfg.workers,
                                   pin_memory=self.device.type == "cuda", seed=stream_seed("data_order", cfg.seed, epoch))
        group: list = []
        for batch in loader:
            group.append(batch)
            if len(group) == cfg.grad_accum:
                yield group
                group = []

    def run(self) -> FinetuneResult:
        try:
            return self._run()
        except RuntimeError as exc:
            if not self.dist.distributed or isinstance(exc, NullvizError):
                raise
            raise PeerFailedError(
                f"Rank {self.rank} of {self.world}: another process of this run stopped ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no message'}). The last checkpoint is in "
                f"{str(self.out_dir)!r}: start the same command with --resume to continue from it.") from exc

    def _run(self) -> FinetuneResult:
        t0 = time.perf_counter()
        cfg = self.cfg
        stopped = False
        while self.epoch < cfg.epochs:
            if cfg.method in TOKEN_NOISE_METHODS and (self.step_in_epoch == 0 or self.delta is None):
                self.synthesize_delta(stream_seed("train_delta", cfg.seed, self.global_step))
            if self.step_in_epoch == 0:
                self._epoch_sums = {}
            batches = self._micro_batches(self.epoch)
            while self.step_in_epoch < self.steps_per_epoch:
                if self._stop_requested():
                    stopped = True
                    break
                if (cfg.method in TOKEN_NOISE_METHODS and cfg.noise_every and self.step_in_epoch
                        and self.global_step % cfg.noise_every == 0):
                    self.synthesize_delta(stream_seed("train_delta", cfg.seed, self.global_step))
                t = time.perf_counter()
                micro = next(batches)
                metrics = self._optimizer_step(micro)
                self._train_seconds += time.perf_counter() - t
                self._images_trained += self.global_batch
                self._last_lr = metrics["lr"]
                self.step_in_epoch += 1
                self.global_step += 1
                for k, v in metrics.items():
                    self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v
                record = {"kind": "step", "method": cfg.method, "epoch": self.epoch, "step": self.global_step,
                          "total_steps": self.total_steps, **metrics}
                self._log(record)
                self.on_step(record)
                self.on_work("training", TRAIN_STEP_COST[cfg.method])
            if stopped:
                break
            record = {"kind": "epoch", "method": cfg.method, "epoch": self.epoch + 1, "step": self.global_step,
                      **{k: v / self.steps_per_epoch for k, v in self._epoch_sums.items() if k != "lr"},
                      "lr": self._last_lr, **self.evaluate(None if cfg.fresh_every_epoch or self.epoch + 1 == cfg.epochs
                                                           else 0), **self.delta_info,
                      "world_size": self.world, "global_batch": self.global_batch,
                      "images_per_second": self._images_trained / max(self._train_seconds, 1e-9)}
            self.history.append(record)
            self._log(record)
            self.on_epoch(record)
            self.epoch += 1
            self.step_in_epoch = 0
            if self.epoch < cfg.epochs:
                self.save()  # the last checkpoint a failed run resumes from
        checkpoint = self.save()
        return FinetuneResult(config=cfg, history=self.history, epochs_run=self.epoch, steps_run=self.global_step,
                              stopped=stopped, checkpoint=str(checkpoint) if checkpoint else None,
                              seconds=time.perf_counter() - t0, synthesis_seconds=self.synthesis_seconds,
                              evaluation_synthesis_seconds=self.evaluation_synthesis_seconds,
                              world_size=self.world, resume_note=self.resume_note,
                              images_per_second=self._images_trained / max(self._train_seconds, 1e-9))


def check_head(model_name: str, model_classes: int, data_classes: int | None, new_head: bool) -> None:
    """Refuse to finetune a model on data of another number of classes unless a new head was asked for."""
    if data_classes is not None and data_classes != model_classes and not new_head:
        raise DataError(f"{model_name} predicts {model_classes:,} classes but the training data has {data_classes:,}: "
                        f"finetuning it there needs a new classifier head (new_head=True, --new-head, or the page's "
                        f"'new classifier head' box), or data of its own classes.")


def _classes(dataset) -> list | None:
    """The data set's class names, looking through a ``Subset`` to the data set it wraps."""
    return getattr(dataset, "classes", None) or getattr(getattr(dataset, "dataset", None), "classes", None)


def _num_classes(dataset) -> int | None:
    classes = _classes(dataset)
    return len(classes) if classes else None


def _class_names(dataset, lm: LoadedModel, model) -> list[str]:
    classes = _classes(dataset)
    if classes and len(classes) == model.num_classes:
        return [str(c) for c in classes]
    return list(lm.class_names)


def finetune(lm: LoadedModel, train_set, eval_set, config: FinetuneConfig, out_dir: str | Path | None = None,
             resume: bool = False, **callbacks) -> FinetuneResult:
    """Run (or resume, from ``out_dir``) one finetuning run; see :class:`FinetuneRun`."""
    run = FinetuneRun(lm, train_set, eval_set, config, out_dir, **callbacks)
    if resume:
        if out_dir is None:
            raise InvalidParameterError("out_dir", "finetune", "the folder of the run to resume", None)
        run.load_state(out_dir)
    return run.run()
