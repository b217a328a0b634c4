"""A seeded, private use of torch's *global* random generator, for library code that only draws from it.

torchattacks seeds and draws from torch's global generator (``torch.manual_seed`` inside its attacks), and
pytorch-grad-cam's ROAD imputer draws its noise there. nullviz's own draws use explicit generators; around these
calls :func:`seeded_global_rng` forks the generator state (restored after, so no other caller's stream moves) and
holds one process-wide lock, so two sessions of a shared server running such code at once cannot interleave
their draws: each result is the same as when run alone.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

_LOCK = threading.Lock()


@contextlib.contextmanager
def seeded_global_rng(seed: int, devices: tuple = ()) -> Iterator[None]:
    import torch

    with _LOCK, torch.random.fork_rng(devices=list(devices)):
        torch.manual_seed(int(seed))
        yield
