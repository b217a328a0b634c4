"""Adversarial attacks: one class per attack, one registry, one call.

Every attack is built with its budget (torchattacks' and captum's pattern: options at construction, data at
the call) and called the same way: ``attack(fn, pixels, labels, seed=0)`` → adversarial pixels, where ``fn``
is the model as a function of pixels in [0, 1] (:class:`~nullviz.models.PixelModel`: the normalisation is
inside, so ε is in pixel units and the images stay valid). :data:`ATTACKS` maps each name to its class;
pages, jobs and the command line take their choices and labels from it, so adding an attack is one class here
(decorated with :func:`register_attack`) and its test.

The gradients are taken for the input alone (the weights' ``requires_grad`` is left as it is and no weight
gradient is accumulated), so a cached model shared by other sessions is only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from nullviz.core.global_rng import seeded_global_rng
from nullviz.core.params import Interval, Options, check
from nullviz.core.registry import registrar
from nullviz.inspection.attention import trace


def _eps(eps: float) -> str:
    """ε in pixel units, as n/255 when it is one (8/255), else as a number."""
    n = eps * 255
    return f"{round(n)}/255" if abs(n - round(n)) < 1e-6 and round(n) > 0 else f"{eps:g}"


def _input_grad(fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(fn(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(fn: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, eps: float = 8 / 255) -> torch.Tensor:
    """FGSM (Goodfellow et al. 2015): x + ε·sign(∇ₓ CE), clipped to [0, 1]. ``pixels``: [B, C, H, W] in [0, 1]."""
    check("eps", "fgsm", eps, Interval(float, 0.0, None))
    grad = _input_grad(fn, pixels, labels)
    return (pixels + eps * grad.sign()).clamp(0, 1).detach()


def pgd(fn: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, eps: float = 8 / 255,
        alpha: float = 2 / 255, steps: int = 10, norm: str = "linf", random_start: bool = True,
        seed: int = 0) -> torch.Tensor:
    """PGD (Madry et al. 2018) in the L∞ or L2 ball of radius ε around ``pixels`` (in [0, 1]), step α."""
    check("eps", "pgd", eps, Interval(float, 0.0, None))
    check("alpha", "pgd", alpha, Interval(float, 0.0, None))
    check("steps", "pgd", steps, Interval(int, 1, 10_000))
    check("norm", "pgd", norm, Options(("linf", "l2")))
    x0 = pixels.detach()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if random_start and eps > 0:
        if norm == "linf":
            start = (torch.rand(x0.shape, generator=gen) * 2 - 1) * eps
        else:
            d = torch.randn(x0.shape, generator=gen)
            r = torch.rand(x0.shape[0], generator=gen).view(-1, 1, 1, 1)
            start = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * r * eps
        x = (x0 + start.to(x0)).clamp(0, 1)
    else:
        x = x0.clone()
    for _ in range(steps):
        grad = _input_grad(fn, x, labels)
        if norm == "linf":
            x = x + alpha * grad.sign()
            x = torch.min(torch.max(x, x0 - eps), x0 + eps)
        else:
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x = x + alpha * g
            d = x - x0
            scale = (eps / d.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(-1, 1, 1, 1)
            x = x0 + d * scale
        x = x.clamp(0, 1).detach()
    return x


@torch.no_grad()
def most_attended_patch(model: torch.nn.Module, x: torch.Tensor, views=None) -> torch.Tensor:
    """Index of the patch that receives the most attention (mean over layers, heads and query tokens) for
    normalised images ``x``. ``views``: the loaded model's trace views (see ``attention.attention_views``)."""
    t = trace(model, x, views=views)
    received = t.attention.mean(dim=(0, 2, 3))[:, t.num_prefix_tokens:]  # [B, patches]
    return received.argmax(-1)


def patchfool(fn: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, steps: int = 30,
              alpha: float = 0.1, views=None) -> torch.Tensor:
    """PatchFool-style attack (Fu et al. 2022, our version): only the most-attended patch is perturbed,
    unbounded inside [0, 1]; ``fn`` a :class:`~nullviz.models.PixelModel` (its ViT and normalisation)."""
    check("steps", "patchfool", steps, Interval(int, 1, 10_000))
    model = fn.model
    p = int(model.patch_embed.patch_size[0])
    gh, gw = (int(g) for g in model.patch_embed.grid_size)
    idx = most_attended_patch(model, fn.normalize(pixels), views).cpu()
    mask = torch.zeros(pixels.shape[0], 1, gh, gw)
    mask[torch.arange(len(idx)), 0, idx // gw, idx % gw] = 1.0
    mask = F.interpolate(mask, scale_factor=p, mode="nearest").to(pixels)
    x = pixels.detach().clone()
    for _ in range(steps):
        grad = _input_grad(fn, x, labels)
        x = (x + alpha * grad.sign() * mask).clamp(0, 1).detach()
    return x


# ------------------------------------------------------------------------------------------- registry
ATTACKS: dict[str, type["Attack"]] = {}


register_attack = registrar(ATTACKS, "an attack", instantiate=False)


class Attack:
    """An attack with its budget; ``attack(fn, pixels, labels, seed)`` → adversarial pixels in [0, 1]."""

    name: ClassVar[str]
    label: ClassVar[str]  # what pages and tables call it

    def __call__(self, fn: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
                 seed: int = 0) -> torch.Tensor:
        raise NotImplementedError

    @property
    def gradient_steps(self) -> int:
        """Forward+backward passes per image: what a progress bar over an evaluation weighs it by."""
        raise NotImplementedError

    @property
    def budget(self) -> str:
        """What the attack may do, in words with its numbers (ε in pixel units): what a table states beside it."""
        raise NotImplementedError

    @classmethod
    def from_settings(cls, settings: Any, views=None) -> "Attack":
        """Built from an evaluation's settings (``EvalConfig``: eps, pgd_*, patch_steps)."""
        raise NotImplementedError


@register_attack
@dataclass(frozen=True)
class FGSM(Attack):
    eps: float = 8 / 255
    name: ClassVar[str] = "fgsm"
    label: ClassVar[str] = "FGSM"

    def __call__(self, fn, pixels, labels, seed=0):
        return fgsm(fn, pixels, labels, self.eps)

    @property
    def budget(self) -> str:
        return f"L∞ ε = {_eps(self.eps)}, one step"

    @property
    def gradient_steps(self) -> int:
        return 1

    @classmethod
    def from_settings(cls, settings, views=None):
        return cls(settings.eps)


@register_attack
@dataclass(frozen=True)
class PGD(Attack):
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    norm: str = "linf"
    name: ClassVar[str] = "pgd"
    label: ClassVar[str] = "PGD"

    def __call__(self, fn, pixels, labels, seed=0):
        return pgd(fn, pixels, labels, self.eps, self.alpha, self.steps, self.norm, seed=seed)

    @property
    def budget(self) -> str:
        return f"{'L∞' if self.norm.lower() == 'linf' else 'L2'} ε = {_eps(self.eps)}, {self.steps} steps"

    @property
    def gradient_steps(self) -> int:
        return self.steps

    @classmethod
    def from_settings(cls, settings, views=None):
        return cls(settings.eps, settings.pgd_alpha, settings.pgd_steps, settings.pgd_norm)


@register_attack
@dataclass(frozen=True)
class PatchFool(Attack):
    steps: int = 30
    alpha: float = 0.1
    views: Any = None  # the loaded model's trace views (faster; None: a view is made per call)
    name: ClassVar[str] = "patchfool"
    label: ClassVar[str] = "PatchFool (one patch)"

    def __call__(self, fn, pixels, labels, seed=0):
        return patchfool(fn, pixels, labels, self.steps, self.alpha, self.views)

    @property
    def budget(self) -> str:
        return f"one patch, any change inside it, {self.steps} steps"

    @property
    def gradient_steps(self) -> int:
        return self.steps

    @classmethod
    def from_settings(cls, settings, views=None):
        return cls(settings.patch_steps, views=views)


def _torchattacks(attack_class: str, fn: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
                  generator_seed: int, **options) -> torch.Tensor:
    """A torchattacks attack on ``fn`` (pixels in [0, 1], normalisation inside). torchattacks seeds and draws from
    torch's global generator: run under :func:`~nullviz.core.global_rng.seeded_global_rng` (a forked state, one
    process-wide lock), so an attack never moves another caller's random stream and two at once give what each
    gives alone."""
    import torchattacks

    devices = (pixels.device,) if pixels.device.type == "cuda" else ()
    with seeded_global_rng(generator_seed, devices):
        attack = getattr(torchattacks, attack_class)(fn, **options)
        return attack(pixels.detach(), labels).detach()


@register_attack
@dataclass(frozen=True)
class CW(Attack):
    """Carlini & Wagner's L2 attack (2017), torchattacks' implementation: minimises ‖δ‖₂² + c·max(margin, −κ)
    with Adam for ``steps`` steps; unbounded in norm — report its success rate and the L2 it needed."""

    c: float = 1.0
    kappa: float = 0.0
    steps: int = 50
    lr: float = 0.01
    name: ClassVar[str] = "cw"
    label: ClassVar[str] = "CW-L2 (torchattacks)"

    def __call__(self, fn, pixels, labels, seed=0):
        return _torchattacks("CW", fn, pixels, labels, seed, c=self.c, kappa=self.kappa, steps=self.steps, lr=self.lr)

    @property
    def budget(self) -> str:
        return f"L2, no ε (c = {self.c:g}), {self.steps} steps"

    @property
    def gradient_steps(self) -> int:
        return self.steps

    @classmethod
    def from_settings(cls, settings, views=None):
        return cls(settings.cw_c, 0.0, settings.cw_steps, settings.cw_lr)


@register_attack
@dataclass(frozen=True)
class AutoAttack(Attack):
    """AutoAttack (Croce & Hein, 2020), torchattacks' 'standard' version as RobustBench runs it: APGD-CE, then
    APGD-T and FAB-T on 9 target classes, then Square (5,000 queries), each on the images still classified
    correctly; L∞ at ε (RobustBench's ImageNet ε: 4/255). Cost: 100 passes per image for APGD-CE, and an image
    that survives it costs up to ~1,800 more gradient passes and 5,000 forwards."""

    eps: float = 4 / 255
    norm: str = "Linf"
    name: ClassVar[str] = "autoattack"
    label: ClassVar[str] = "AutoAttack (standard, torchattacks)"

    def __call__(self, fn, pixels, labels, seed=0):
        with torch.no_grad():
            classes = int(fn(pixels[:1]).shape[-1])
        return _torchattacks("AutoAttack", fn, pixels, labels, seed, norm=self.norm, eps=self.eps,
                             version="standard", n_classes=min(classes, 10), seed=int(seed))

    @property
    def budget(self) -> str:
        return f"{'L∞' if self.norm.lower() == 'linf' else 'L2'} ε = {_eps(self.eps)}"

    @property
    def gradient_steps(self) -> int:
        return 100  # APGD-CE; the later attacks run only on the images it did not fool

    @classmethod
    def from_settings(cls, settings, views=None):
        return cls(settings.autoattack_eps)


def make_attack(name: str, settings: Any, views=None) -> Attack:
    """The registered attack ``name`` with the budget in ``settings`` (an ``EvalConfig``)."""
    check("attack", "make_attack", name, Options(tuple(ATTACKS)))
    return ATTACKS[name].from_settings(settings, views)
