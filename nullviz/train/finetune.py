"""Nullspace-augmented finetuning (the paper's §3) and its controls, one loop for every method.

Methods, same loop and budget (``nullviz.train.methods``, one object each):
- ``baseline``: CE(model(x), y).
- ``nullspace``: at the start of each epoch (or every K steps) synthesize a fresh encoder-level δ on a
  fraction of the training images from the *current* model (``nullviz.noise.approximate``), then train all weights
  on CE(clean) + CE(tokens + δ) with δ fixed and detached. The patch embedding runs once per batch and the
  clean and noised tokens go through the encoder as one concatenated batch.
- ``gaussian``: the same with δ replaced by Gaussian noise of δ's norm (is it the nullspace, or any noise?).
- ``random_start``: the same with δ replaced by an unoptimised draw from δ's start distribution U(−a, a),
  scaled to δ's norm (is it the *optimisation*, or any noise of that kind and size?).
- ``adversarial``: FGSM adversarial training at ε (pixels in [0, 1]): CE(clean) + CE(x_adv).

The noise methods synthesize the epoch's δ (``nullspace`` trains on it, the controls on noise of its norm, or,
given ``noise_norms``, on noise of those norms with no δ made); every evaluation measures accuracy under *fresh* δs synthesized from the model being evaluated. AdamW with linear
warm-up then cosine decay; optional freezing of the patch embedding or of everything but the head; bf16 autocast
on CUDA; optional ``torch.compile``; seeded and deterministic on CPU.

:class:`FinetuneRun` only assembles the pieces, cut along the seams of timm's ``train.py``, that one process,
the app's job runner and ``torchrun`` (DistributedDataParallel) share:

- ``config``: :class:`FinetuneConfig` and the fixed evaluation and cost policies;
- ``methods``: each method's loss; ``loop``: the optimizer, the schedule, :class:`~nullviz.train.loop.OptimizerStep`
  (the forward DDP wraps, gradient accumulation under ``no_sync``), :class:`~nullviz.train.loop.TrainState` and
  :func:`~nullviz.train.loop.train_one_epoch`;
- ``deltas``: which images each δ is fit and selected on, broadcast from rank 0;
- ``evaluator``: held-out accuracy with one yardstick for every run (the robustness suite's counter, sharded over
  ranks, counts all-reduced);
- ``checkpoint``: the saver (atomic, rank 0 only); ``logger``: ``log.jsonl`` and ``epochs.csv``;
- ``distributed`` and ``loader``: the process group and a (seed, epoch)-determined order sharded over ranks.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from nullviz.core.errors import CheckpointError, DataError, InvalidParameterError, NullvizError
from nullviz.core.seeds import stream_seed
from nullviz.models import LoadedModel

from . import distributed as D
from .checkpoint import CheckpointSaver
from .config import (EVAL_FIT_FRACTION, EVAL_PASS_COST_PER_IMAGE, EVAL_SYNTHESIS, EVAL_VALIDATION_IMAGES, FREEZE,
                     GAUSSIAN_GRID, METHODS, PHASES, SYNTHESIS_STEP_COST, TOKEN_NOISE_METHODS, TRAIN_STEP_COST,
                     FinetuneConfig)
from .deltas import RunDeltas, training_delta_info
from .evaluator import Evaluator
from .loader import EpochBatchSampler, make_train_loader
from .logger import RunLogger
from .loop import (MethodForward, OptimizerStep, TrainState, apply_freeze, make_optimizer, noise_seed, train_one_epoch,
                   warmup_cosine)

__all__ = ["FinetuneConfig", "FinetuneResult", "FinetuneRun", "MethodForward", "PeerFailedError", "check_head",
           "finetune", "METHODS", "PHASES", "EVAL_FIT_FRACTION", "EVAL_PASS_COST_PER_IMAGE", "EVAL_SYNTHESIS",
           "EVAL_VALIDATION_IMAGES", "FREEZE", "GAUSSIAN_GRID", "SYNTHESIS_STEP_COST", "TOKEN_NOISE_METHODS",
           "TRAIN_STEP_COST"]


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
    best_epoch: int | None = None  # keep_best: the epoch whose weights ``checkpoint`` holds

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.world_size

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def final(self) -> dict[str, Any]:
        """The last finished epoch's record (empty when none finished)."""
        return self.history[-1] if self.history else {}

    @property
    def usable(self) -> bool:
        """Whether there is a trained model to use: at least one epoch finished and its checkpoint saved."""
        return self.epochs_run > 0 and bool(self.checkpoint)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FinetuneResult":
        """Back from ``to_dict``'s JSON (a job's results.json, ``nullviz finetune --json``); a run stopped
        before it started says only its config and that it stopped."""
        config = FinetuneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["config"].items()})
        return cls(config=config, history=list(d.get("history", [])), epochs_run=int(d.get("epochs_run", 0)),
                   steps_run=int(d.get("steps_run", 0)), stopped=bool(d.get("stopped", False)),
                   checkpoint=d.get("checkpoint"), seconds=float(d.get("seconds", 0.0)),
                   synthesis_seconds=float(d.get("synthesis_seconds", 0.0)),
                   evaluation_synthesis_seconds=float(d.get("evaluation_synthesis_seconds", 0.0)),
                   world_size=int(d.get("world_size", 1)), images_per_second=float(d.get("images_per_second", 0.0)),
                   resume_note=d.get("resume_note"),
                   best_epoch=None if d.get("best_epoch") is None else int(d["best_epoch"]))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.config.method, "config": asdict(self.config), "epochs_run": self.epochs_run,
                "steps_run": self.steps_run, "stopped": self.stopped, "checkpoint": self.checkpoint,
                "seconds": self.seconds, "synthesis_seconds": self.synthesis_seconds,
                "evaluation_synthesis_seconds": self.evaluation_synthesis_seconds, "world_size": self.world_size,
                "global_batch": self.global_batch, "images_per_second": self.images_per_second,
                "resume_note": self.resume_note, "best_epoch": self.best_epoch, "usable": self.usable,
                "history": self.history}


#: keep_best: the best epoch's run folder, inside the run's own (loadable like it: weights + sidecar).
BEST_DIR = "best"


def best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The first epoch with the highest held-out clean accuracy (the keep_best choice), or None."""
    scored = [(r["clean_acc"], -r["epoch"]) for r in history if r.get("clean_acc") is not None]
    return -max(scored)[1] if scored else None


class PeerFailedError(NullvizError, RuntimeError):
    """Another process of a distributed run stopped (killed, out of memory…) and this one cannot go on."""


class FinetuneRun:
    """A stoppable, resumable finetuning run on a *copy* of a loaded model.

    ``train_set`` / ``eval_set`` yield (normalised tensor, label) — e.g. ``digits_dataset(split,
    lm.transform)``. Callbacks receive plain dicts (one per step, one per epoch); the run never prints.
    """

    #: Settings that may differ when a run is resumed (they change how, not what, it computes).
    RESUMABLE_CHANGES = ("epochs", "workers", "compile", "fresh_deltas", "fresh_every_epoch", "eval_limit")

    def __init__(self, lm: LoadedModel, train_set, eval_set, config: FinetuneConfig, out_dir: str | Path | None = None,
                 on_step: Callable[[dict], None] | None = None, on_epoch: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_work: Callable[[str, float], None] | None = None,
                 references: dict[tuple, dict[str, Any]] | None = None):
        if len(train_set) == 0 or len(eval_set) == 0:
            raise InvalidParameterError("train_set", "FinetuneRun", "non-empty training and held-out sets",
                                        (len(train_set), len(eval_set)))
        self.lm, self.cfg = lm, config
        self.train_set, self.eval_set = train_set, eval_set
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.on_step, self.on_epoch = on_step or (lambda d: None), on_epoch or (lambda d: None)
        self.on_work = on_work or (lambda phase, units: None)  # (phase, units of work done), see work_plan
        self.should_stop = should_stop or (lambda: False)
        self.dist, self.device = D.init_distributed(lm.device)
        self.rank, self.world = self.dist.rank, self.dist.world_size

        self.model = trainable_model(lm, train_set, config, self.device)
        self.net: torch.nn.Module = MethodForward(self.model)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.forward = torch.compile(self.net) if config.compile else self.net
        self.optimizer = make_optimizer(self.model, config)
        self.global_batch = config.batch_size * config.grad_accum * self.world
        self.steps_per_epoch = config.steps_per_epoch or math.ceil(len(train_set) / self.global_batch)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           warmup_cosine(config.warmup_steps, self.total_steps))
        self.mean, self.std = lm.mean.to(self.device), lm.std.to(self.device)
        self.step = OptimizerStep(self.model, self.net, self.forward, self.optimizer, self.scheduler, config,
                                  self.mean, self.std, self.device, self.world)
        self.deltas = RunDeltas(train_set, config, self.device, on_work=self.on_work)
        self.evaluator = Evaluator(lm.model, self.deltas, train_set, eval_set, config, self.mean, self.std,
                                   self.device, self.rank, self.world, on_work=self.on_work, references=references)
        self.saver = CheckpointSaver(self.out_dir, primary=self.dist.is_primary)
        self.logger = RunLogger(self.out_dir, primary=self.dist.is_primary)
        self.state = TrainState(last_lr=self.optimizer.param_groups[0]["lr"])
        self.resume_note: str | None = None

    # where the run is (the state's fields, read and written by callers and tests as the run's own)
    epoch = property(lambda self: self.state.epoch)
    step_in_epoch = property(lambda self: self.state.step_in_epoch)
    global_step = property(lambda self: self.state.global_step)
    delta = property(lambda self: self.state.delta)
    delta_info = property(lambda self: self.state.delta_info)
    history = property(lambda self: self.state.history)
    synthesis_seconds = property(lambda self: self.state.synthesis_seconds)

    @property
    def evaluation_synthesis_seconds(self) -> float:
        return self.evaluator.synthesis_seconds

    def batch_sampler(self, epoch: int, start_step: int = 0) -> EpochBatchSampler:
        """This rank's micro-batches of ``epoch`` from ``start_step`` on: a function of (seed, epoch) alone."""
        cfg = self.cfg
        return EpochBatchSampler(len(self.train_set), cfg.seed, epoch, self.steps_per_epoch, cfg.batch_size,
                                 cfg.grad_accum, self.rank, self.world, start_step)

    def synthesize_delta(self, seed: int) -> None:
        """The δ the coming steps train on; a control given ``noise_norms`` gets a stand-in of the period's norm."""
        if self.cfg.noise_norms is not None:  # a control told its noise norms: nothing to synthesize
            period = self.state.global_step // (self.cfg.noise_every or self.steps_per_epoch)
            self.state.delta, self.state.delta_info = self.deltas.of_given_norm(self.model, period)
            return
        t = time.perf_counter()
        delta, res = self.deltas.synthesize(self.model, seed)
        self.state.delta, self.state.delta_info = delta, training_delta_info(res)
        self.state.synthesis_seconds += time.perf_counter() - t

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimisation step of the configured method on a batch (x normalised)."""
        return self.step([(x, y)], self.state.delta, noise_seed(self.cfg, self.state.global_step, self.steps_per_epoch))

    def evaluate(self, fresh_deltas: int | None = None) -> dict[str, Any]:
        """Held-out accuracy of the model as it is now (:meth:`Evaluator.evaluate`)."""
        return self.evaluator.evaluate(self.model, self.state.delta, fresh_deltas, measures=self.cfg.epoch_measures)

    # ---------------------------------------------------------------------------------- checkpoints
    def save(self, out_dir: str | Path | None = None) -> Path | None:
        """model.safetensors + model.json (architecture, classes, data config, config, metrics, loadable by
        ``load_model(checkpoint=…)``) + trainer_state.pt (optimizer, schedule, δ, position) for resuming.
        Rank 0 only; each file is written atomically (``nullviz.train.checkpoint``)."""
        st = self.state
        side = {"arch": self.lm.name, "class_names": _class_names(self.train_set, self.lm, self.model),
                "data_config": {**self.lm.data_config, "input_size": list(self.lm.data_config["input_size"])},
                "finetune": asdict(self.cfg), "source_checkpoint": self.lm.checkpoint,
                "epoch": st.epoch, "step_in_epoch": st.step_in_epoch, "world_size": self.world,
                "metrics": st.history[-1] if st.history else {},
                # the architecture's build arguments where its name alone does not say them (a converted
                # Hugging Face ViT), so the checkpoint loads back
                **({"arch_kwargs": self.lm.info["arch_kwargs"]} if self.lm.info.get("arch_kwargs") else {})}
        trainer = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "world_size": self.world, "config": json.dumps(asdict(self.cfg)), **st.to_saved()}
        return self.saver.save(self.model.state_dict(), side, trainer, out_dir)

    def load_state(self, out_dir: str | Path) -> None:
        """Restore weights, optimizer, schedule, δ and position from ``save``'s files. With the same world
        size the run continues exactly where it stopped; with another one it continues from the same point of
        the same epoch, at the nearest step of the new global batch, and ``resume_note`` says so."""
        weights, saved = self.saver.load(out_dir)
        saved_cfg = FinetuneConfig(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in json.loads(saved["config"]).items()})
        same = {k: getattr(self.cfg, k) for k in self.RESUMABLE_CHANGES}
        if replace(saved_cfg, **same) != self.cfg:
            raise CheckpointError("The run in that folder used other settings; resume it with the same ones "
                                  f"(only {', '.join(self.RESUMABLE_CHANGES)} may change).")
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        st = self.state
        st.restore(saved, self.device)
        saved_world = int(saved.get("world_size", 1))
        if saved_world != self.world:
            images = st.step_in_epoch * self.cfg.batch_size * self.cfg.grad_accum * saved_world
            st.step_in_epoch = min(self.steps_per_epoch, images // self.global_batch)
            st.global_step = st.epoch * self.steps_per_epoch + st.step_in_epoch
            self.scheduler.last_epoch = st.global_step - 1
            self.scheduler.step()  # the learning rate of the new position
            self.resume_note = (f"Resumed on {self.world} process(es) a run saved on {saved_world}: it continues "
                                f"from epoch {st.epoch + 1}, step {st.step_in_epoch} of {self.steps_per_epoch} "
                                f"(the same images seen, to the nearest step of the new global batch "
                                f"{self.global_batch}); it is not bit-identical to an uninterrupted run.")

    # ------------------------------------------------------------------------------------------ loop
    def _stop_requested(self) -> bool:
        """Any rank's stop request stops every rank at the same step (so they all save and leave together)."""
        flag = torch.tensor([1.0 if self.should_stop() else 0.0], device=self.device)
        return bool(D.all_reduce_sum(flag).item() > 0)

    def _micro_batches(self, epoch: int):
        """This rank's batches of ``epoch`` from the current step on, ``grad_accum`` micro-batches at a time."""
        cfg = self.cfg
        loader = make_train_loader(self.train_set, self.batch_sampler(epoch, self.state.step_in_epoch), cfg.workers,
                                   pin_memory=self.device.type == "cuda", seed=stream_seed("data_order", cfg.seed, epoch))
        group: list = []
        for batch in loader:
            group.append(batch)
            if len(group) == cfg.grad_accum:
                yield group
                group = []

    def _on_step(self, record: dict[str, Any]) -> None:
        self.logger.log(record)
        self.on_step(record)
        self.on_work("training", TRAIN_STEP_COST[self.cfg.method])

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
        cfg, st = self.cfg, self.state
        uses_delta = cfg.method in TOKEN_NOISE_METHODS

        def resynthesize() -> None:
            self.synthesize_delta(stream_seed("train_delta", cfg.seed, st.global_step))

        stopped = False
        while st.epoch < cfg.epochs:
            if uses_delta and (st.step_in_epoch == 0 or st.delta is None):
                resynthesize()
            if st.step_in_epoch == 0:
                st.epoch_sums = {}
            stopped = train_one_epoch(self.step, st, self._micro_batches(st.epoch), self.steps_per_epoch,
                                      self.global_batch, should_stop=self._stop_requested,
                                      resynthesize=resynthesize if uses_delta else None, on_step=self._on_step)
            if stopped:
                break
            last = st.epoch + 1 == cfg.epochs
            record = {"kind": "epoch", "method": cfg.method, "epoch": st.epoch + 1, "step": st.global_step,
                      **{k: v / self.steps_per_epoch for k, v in st.epoch_sums.items() if k != "lr"},
                      "lr": st.last_lr, **self.evaluate(None if cfg.fresh_every_epoch or last else 0),
                      **st.delta_info, "world_size": self.world, "global_batch": self.global_batch,
                      "images_per_second": st.images_per_second}
            st.history.append(record)
            self.logger.log(record)
            self.on_epoch(record)
            st.epoch += 1
            st.step_in_epoch = 0
            if st.epoch < cfg.epochs:
                self.save()  # the last checkpoint a failed run resumes from
            if cfg.keep_best and best_epoch(st.history) == record["epoch"] and self.out_dir is not None:
                self.save(self.out_dir / BEST_DIR)  # a loadable run folder of the best epoch so far
        checkpoint = self.save()
        best = best_epoch(st.history) if cfg.keep_best else None
        if best is not None and self.out_dir is not None and (self.out_dir / BEST_DIR / "model.safetensors").exists():
            checkpoint = self.out_dir / BEST_DIR / "model.safetensors"
        return FinetuneResult(config=cfg, history=st.history, epochs_run=st.epoch, steps_run=st.global_step,
                              stopped=stopped, checkpoint=str(checkpoint) if checkpoint else None, best_epoch=best,
                              seconds=time.perf_counter() - t0, synthesis_seconds=st.synthesis_seconds,
                              evaluation_synthesis_seconds=self.evaluator.synthesis_seconds,
                              world_size=self.world, resume_note=self.resume_note,
                              images_per_second=st.images_per_second)


def trainable_model(lm: LoadedModel, train_set, config: FinetuneConfig, device: torch.device) -> torch.nn.Module:
    """A trainable copy of the loaded model on ``device`` (the cached one is never touched): a new seeded head
    when the data has other classes and one was asked for, the configured weights frozen, in training mode."""
    model = lm.trainable_copy().to(device)
    num_classes = _num_classes(train_set)
    if num_classes is not None and num_classes != model.num_classes:
        check_head(lm.name, model.num_classes, num_classes, config.new_head)
        with torch.random.fork_rng(devices=[]):  # a seeded new head without touching the global RNG
            torch.manual_seed(stream_seed("head_init", config.seed))
            model.reset_classifier(num_classes)
        model.to(device)
    apply_freeze(model, config.freeze)
    model.train()
    return model


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
    """Run (or resume, from ``out_dir``) one finetuning run; see :class:`FinetuneRun` (``callbacks``: its
    on_step / on_epoch / should_stop / on_work, and ``references``, the evaluation noises shared with other runs
    of the same start model and training set)."""
    run = FinetuneRun(lm, train_set, eval_set, config, out_dir, **callbacks)
    if resume:
        if out_dir is None:
            raise InvalidParameterError("out_dir", "finetune", "the folder of the run to resume", None)
        run.load_state(out_dir)
    return run.run()
