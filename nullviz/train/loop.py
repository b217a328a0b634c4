"""The training loop's pieces, along timm's ``train.py`` seams: the optimizer and its schedule, the forward DDP
wraps, one optimizer step of any method (gradient accumulation under ``no_sync``), where a run is
(:class:`TrainState`, what a checkpoint saves) and :func:`train_one_epoch`."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from nullviz.core.seeds import stream_seed
from nullviz.models import logits_from_patch_tokens, patch_tokens, token_grid

from . import distributed as D
from .config import FinetuneConfig
from .methods import FINETUNE_METHODS, StepInputs


def make_optimizer(model: torch.nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW over the weights left trainable (the research code's optimiser)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of step k: linear warm-up over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, span) / span))

    return factor


def apply_freeze(model: torch.nn.Module, freeze: str) -> None:
    """Freeze the patch embedding, or everything but the classifier head (``FinetuneConfig.freeze``)."""
    if freeze == "patch_embed":
        for p in model.patch_embed.parameters():
            p.requires_grad_(False)
    elif freeze == "all_but_head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("head"))


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


@dataclass
class TrainState:
    """Where a run is and what it carries from step to step: what a checkpoint saves and a resume restores."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    delta: torch.Tensor | None = None  # the δ the coming steps train on
    delta_info: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    synthesis_seconds: float = 0.0
    epoch_sums: dict[str, float] = field(default_factory=dict)  # sums of this epoch's step metrics
    # this process only (not saved): throughput
    images_trained: int = 0
    train_seconds: float = 0.0
    last_lr: float = 0.0

    def to_saved(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "delta": self.delta.cpu() if self.delta is not None else None,
                "delta_info": json.dumps(self.delta_info), "history": json.dumps(self.history),
                "synthesis_seconds": self.synthesis_seconds, "epoch_sums": json.dumps(self.epoch_sums)}

    def restore(self, saved: dict[str, Any], device: torch.device) -> None:
        self.epoch, self.step_in_epoch, self.global_step = saved["epoch"], saved["step_in_epoch"], saved["global_step"]
        self.delta = saved["delta"].to(device) if saved["delta"] is not None else None
        self.delta_info = json.loads(saved["delta_info"])
        self.history = json.loads(saved["history"])
        self.synthesis_seconds = float(saved["synthesis_seconds"])
        self.epoch_sums = json.loads(saved["epoch_sums"])

    @property
    def images_per_second(self) -> float:
        return self.images_trained / max(self.train_seconds, 1e-9)


class OptimizerStep:
    """One optimizer step of the configured method over ``grad_accum`` micro-batches: gradients accumulated
    (DDP synchronises on the last only), the optimizer and the schedule stepped; the logged losses are means
    over micro-batches and ranks."""

    def __init__(self, model: torch.nn.Module, net: torch.nn.Module, forward: Callable[..., torch.Tensor],
                 optimizer: torch.optim.Optimizer, scheduler, config: FinetuneConfig, mean: torch.Tensor,
                 std: torch.Tensor, device: torch.device, world: int = 1):
        self.model, self.net, self.forward = model, net, forward
        self.optimizer, self.scheduler, self.cfg = optimizer, scheduler, config
        self.method = FINETUNE_METHODS[config.method]
        self.mean, self.std, self.device, self.world = mean, std, device, world

    def autocast(self):
        """bf16 autocast on CUDA when the config asks for it; full precision otherwise."""
        if self.device.type == "cuda" and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def __call__(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]], delta: torch.Tensor | None,
                 noise_seed: int) -> dict[str, float]:
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler moves it on below)
        inputs = StepInputs(forward=self.forward, model=self.model, mean=self.mean, std=self.std, delta=delta,
                            noise_seed=noise_seed, fgsm_eps=self.cfg.fgsm_eps)
        self.optimizer.zero_grad(set_to_none=True)
        k = len(micro_batches)
        sums = torch.zeros(3, dtype=torch.float64)
        for i, (x, y) in enumerate(micro_batches):
            sync = i == k - 1 or not hasattr(self.net, "no_sync")
            with contextlib.nullcontext() if sync else self.net.no_sync():
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                with self.autocast():
                    loss, clean, noise = self.method.loss(inputs, x, y)
                (loss / k).backward()
            sums += torch.tensor([float(loss.detach()), float(clean.detach()), float(noise.detach())],
                                 dtype=torch.float64)
        self.optimizer.step()
        self.scheduler.step()
        sums = D.all_reduce_sum(sums.to(self.device)).cpu() / (k * self.world)
        return {"loss": float(sums[0]), "loss_clean": float(sums[1]), "loss_noise": float(sums[2]), "lr": lr}


def noise_seed(config: FinetuneConfig, global_step: int, steps_per_epoch: int) -> int:
    """The seed of the control noise a step trains on: one draw per period (an epoch, or noise_every steps)."""
    return stream_seed("train_gaussian", config.seed, global_step // (config.noise_every or steps_per_epoch))


def train_one_epoch(step: OptimizerStep, state: TrainState, batches: Iterator[list], steps_per_epoch: int,
                    global_batch: int, *, should_stop: Callable[[], bool] = lambda: False,
                    resynthesize: Callable[[], None] | None = None,
                    on_step: Callable[[dict[str, Any]], None] = lambda record: None) -> bool:
    """The steps of ``state.epoch`` from ``state.step_in_epoch`` on; True when a stop was requested (between
    two steps). ``resynthesize`` is called before a step that starts a new noise period inside the epoch
    (``noise_every``); ``on_step`` gets each step's record."""
    cfg = step.cfg
    while state.step_in_epoch < steps_per_epoch:
        if should_stop():
            return True
        if resynthesize is not None and cfg.noise_every and state.step_in_epoch and state.global_step % cfg.noise_every == 0:
            resynthesize()
        t = time.perf_counter()
        metrics = step(next(batches), state.delta, noise_seed(cfg, state.global_step, steps_per_epoch))
        state.train_seconds += time.perf_counter() - t
        state.images_trained += global_batch
        state.last_lr = metrics["lr"]
        state.step_in_epoch += 1
        state.global_step += 1
        for k, v in metrics.items():
            state.epoch_sums[k] = state.epoch_sums.get(k, 0.0) + v
        on_step({"kind": "step", "method": cfg.method, "epoch": state.epoch, "step": state.global_step,
                 "total_steps": steps_per_epoch * cfg.epochs, **metrics})
    return False
