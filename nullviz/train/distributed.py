"""The few distributed helpers the training loop needs (timm's ``utils/distributed.py``, in small).

``torchrun --nproc_per_node N -m nullviz finetune …`` sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``;
:func:`init_distributed` then starts the process group (NCCL on CUDA, gloo on CPU) and pins ``cuda:LOCAL_RANK``.
Without those variables nothing is initialised and every helper is the identity, so one loop serves a single
process, the app's job runner and torchrun alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        """Only global rank 0 writes logs and checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (or the one already initialised); the device to train on."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        info = current()
    elif launched_by_torchrun():
        from datetime import timedelta

        backend = "nccl" if device.type == "cuda" else "gloo"
        # a collective waits this long for a peer that died before it fails (torch's default is 30 minutes)
        timeout = timedelta(seconds=float(os.environ.get("NULLVIZ_DIST_TIMEOUT_S", "600")))
        dist.init_process_group(backend=backend, timeout=timeout)
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), backend)
    else:
        return DistInfo(), device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return info, device


def current() -> DistInfo:
    """The process group this process is in (a single process when none)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                        dist.get_backend())
    return DistInfo()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place on a copy); the identity in one process."""
    if not current().distributed:
        return t
    out = t.clone()
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s tensor on every rank (in place); the identity in one process."""
    if current().distributed:
        torch.distributed.broadcast(t, src=src)
    return t


def barrier() -> None:
    if current().distributed:
        torch.distributed.barrier()


def cleanup() -> None:
    """Leave the process group together: a rank that tears gloo down while a peer still finishes the last
    collective can abort the peer ("terminate called without an active exception")."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:  # a peer is gone already (the run failed): nothing to wait for
            pass
        dist.destroy_process_group()
