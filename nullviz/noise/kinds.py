"""The kinds of noise nullviz adds, in one registry: their names (the keys of every result that holds a curve
or a measurement per noise), their labels (what pages, figures and tables show) and, for the random controls,
how each is drawn.

- ``exact``: noise in the patch embedding's nullspace, invisible to the model by construction;
- ``layernorm``: noise whose token shift every LayerNorm removes (``nullviz.noise.layernorm``), exact as well;
- ``approximate``: an optimised δ (``nullviz.noise.approximate``), invisible within a tolerance;
- the controls, which separate *optimised* from merely *random* noise of the same size: ``gaussian``,
  ``random_start`` (an unoptimised draw from δ's start distribution U(−1, 1)) and ``permuted`` (δ's own
  entries in random places).

A control is always drawn to a given noise's shape, device and norm (:func:`random_like`); a new control is one
class here, decorated with :func:`register_noise`, plus its test.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from nullviz.core.params import Options, check
from nullviz.core.registry import registrar

NOISE_KINDS: dict[str, "NoiseKind"] = {}


register_noise = registrar(NOISE_KINDS, "a noise kind")


class NoiseKind:
    name: ClassVar[str]
    label: ClassVar[str]
    #: A random draw that needs no model (it is scaled to another noise's norm): the controls.
    control: ClassVar[bool] = False

    def draw(self, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A control's draw of ``like``'s shape (any norm; :func:`random_like` scales it), on the CPU."""
        raise NotImplementedError(f"{self.name!r} noise is not a random control: it is made from a model")


@register_noise
class Exact(NoiseKind):
    name, label = "exact", "exact nullspace noise"


@register_noise
class Weakest(NoiseKind):
    """A full-rank patch embedding has no exact nullspace: its stand-in is noise in the weakest singular
    directions (``exact.FULL_RANK_WEAKEST`` of them), approximately null, never exactly."""

    name, label = "weakest", "noise in the weakest directions (full rank: not exactly null)"


@register_noise
class LayerNormExact(NoiseKind):
    name, label = "layernorm", "exact LayerNorm noise"


@register_noise
class Approximate(NoiseKind):
    name, label = "approximate", "approximate δ"


@register_noise
class Gaussian(NoiseKind):
    name, label, control = "gaussian", "Gaussian", True

    def draw(self, like, gen):
        return torch.randn(like.shape, generator=gen)


@register_noise
class RandomStart(NoiseKind):
    name, label, control = "random_start", "δ's random start U(−1, 1)", True

    def draw(self, like, gen):
        return torch.rand(like.shape, generator=gen) * 2 - 1


@register_noise
class Permuted(NoiseKind):
    name, label, control = "permuted", "δ permuted", True

    def draw(self, like, gen):
        return like.detach().flatten().cpu()[torch.randperm(like.numel(), generator=gen)].view(like.shape)


CONTROLS = tuple(name for name, kind in NOISE_KINDS.items() if kind.control)


def random_like(delta: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """The control ``kind`` drawn from ``gen`` with δ's shape, device, dtype and norm (a permutation of δ keeps
    its norm exactly and is not rescaled)."""
    check("kind", "random_like", kind, Options(CONTROLS))
    draw = NOISE_KINDS[kind].draw(delta, gen).to(delta)
    if kind == Permuted.name:
        return draw
    return draw / draw.norm() * delta.norm()


def label(kind: str) -> str:
    """What a page calls a noise kind (the name itself for one it does not know, e.g. from an old file)."""
    return NOISE_KINDS[kind].label if kind in NOISE_KINDS else kind
