"""Pixel attributions through captum, for clean and noised input, with one call signature for every method.

Attributions are taken with respect to pixels in [0, 1]: :class:`PixelModel` puts the model's normalisation
(and, optionally, a fixed noise: pixel-space or token-level δ) inside the attributed function. Integrated
Gradients reports captum's convergence delta, its own completeness check: Σ attributions − (f(x) − f(0)).

One class per method in :data:`ATTRIBUTION_METHODS` (captum's pattern: the same ``attribute`` call for every
method, options in one settings object); the Attention page and the command line take names and labels from
it, so another method is one class here (with :func:`register_attribution`) and its test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nullviz.core.params import Interval, Options, check
from nullviz.models import LoadedModel, PixelModel


@dataclass(frozen=True)
class AttributionSettings:
    """Every method's options (each reads its own): IG's path steps, the batch of inputs per forward, and
    SmoothGrad's samples, noise std and seed."""

    steps: int = 32
    internal_batch_size: int = 16
    smoothgrad_samples: int = 16
    smoothgrad_std: float = 0.1
    seed: int = 0
    patch_size: int = 16  # Occlusion's window: one patch


class AttributionMethod:
    """``method(fn, inputs, target, settings)`` → (attributions like ``inputs``, completeness deltas or None);
    ``fn`` maps [0, 1] pixels to logits (a :class:`PixelModel`), ``inputs`` requires grad."""

    name: str
    label: str

    def __call__(self, fn, inputs: torch.Tensor, target: torch.Tensor, settings: AttributionSettings
                 ) -> tuple[torch.Tensor, list[float] | None]:
        raise NotImplementedError


ATTRIBUTION_METHODS: dict[str, AttributionMethod] = {}


def register_attribution(cls: type[AttributionMethod]) -> type[AttributionMethod]:
    if cls.name in ATTRIBUTION_METHODS:
        raise ValueError(f"an attribution method named {cls.name!r} is registered already")
    ATTRIBUTION_METHODS[cls.name] = cls()
    return cls


@register_attribution
class IntegratedGradientsMethod(AttributionMethod):
    name, label = "integrated_gradients", "Integrated Gradients"

    def __call__(self, fn, inputs, target, settings):
        from captum.attr import IntegratedGradients

        attr, d = IntegratedGradients(fn).attribute(inputs, baselines=torch.zeros_like(inputs), target=target,
                                                    n_steps=settings.steps,
                                                    internal_batch_size=settings.internal_batch_size,
                                                    return_convergence_delta=True)
        return attr, [float(v) for v in d]


@register_attribution
class SaliencyMethod(AttributionMethod):
    name, label = "saliency", "Saliency (gradient)"

    def __call__(self, fn, inputs, target, settings):
        from captum.attr import Saliency

        return Saliency(fn).attribute(inputs, target=target, abs=False), None


@register_attribution
class SmoothGradMethod(AttributionMethod):
    name, label = "smoothgrad", "SmoothGrad"

    def __call__(self, fn, inputs, target, settings):
        return _smoothgrad(fn, inputs.detach(), target, settings.smoothgrad_samples, settings.smoothgrad_std,
                           settings.internal_batch_size, settings.seed), None


@register_attribution
class OcclusionMethod(AttributionMethod):
    name, label = "occlusion", "Occlusion (one patch at a time)"

    def __call__(self, fn, inputs, target, settings):
        from captum.attr import Occlusion

        p, c = settings.patch_size, inputs.shape[1]
        return Occlusion(fn).attribute(inputs, sliding_window_shapes=(c, p, p), strides=(c, p, p), baselines=0.0,
                                       target=target, perturbations_per_eval=settings.internal_batch_size), None


METHODS = tuple(ATTRIBUTION_METHODS)


@dataclass
class Attribution:
    """Attributions [B, C, H, W] for ``target``, their per-pixel map, and the method's self-check."""

    method: str
    attributions: torch.Tensor
    target: list[int]
    convergence_delta: list[float] | None  # IG only: Σ attr − (f(x) − f(baseline)), per image

    def heatmap(self) -> torch.Tensor:
        """Signed sum over channels: [B, H, W]."""
        return self.attributions.sum(1)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "target": self.target, "convergence_delta": self.convergence_delta,
                "total_attribution": [float(a) for a in self.attributions.flatten(1).sum(1)]}


def attribute(lm: LoadedModel, pixels: torch.Tensor, method: str = "integrated_gradients",
              target: int | None = None, token_noise: torch.Tensor | None = None, steps: int = 32,
              internal_batch_size: int = 16, smoothgrad_samples: int = 16, smoothgrad_std: float = 0.1,
              seed: int = 0) -> Attribution:
    """Attribute the logit of ``target`` (default: the predicted class) to the [0, 1] pixels.

    ``pixels`` is [C, H, W] or [B, C, H, W] (noised input: pass the noised pixels, or the clean pixels and a
    token-level ``token_noise``). The model's mode and weights are untouched.
    """
    check("method", "attribute", method, Options(tuple(ATTRIBUTION_METHODS)))
    check("steps", "attribute", steps, Interval(int, 2, 1024))
    check("internal_batch_size", "attribute", internal_batch_size, Interval(int, 1, 4096))
    check("smoothgrad_samples", "attribute", smoothgrad_samples, Interval(int, 1, 1024))
    check("smoothgrad_std", "attribute", smoothgrad_std, Interval(float, 0.0, None, closed="neither"))
    if target is not None:
        check("target", "attribute", target, Interval(int, 0, int(lm.model.num_classes) - 1))
    return _attribute(lm, pixels, method, target, token_noise, steps, internal_batch_size, smoothgrad_samples,
                      smoothgrad_std, seed)


def _attribute(lm, pixels, method, target, token_noise, steps, internal_batch_size, sg_samples, sg_std,
               seed) -> Attribution:
    pixels = (pixels if pixels.dim() == 4 else pixels.unsqueeze(0)).to(lm.device, torch.float32)
    fn = PixelModel.of(lm, token_noise)  # reads lm.model, an eval-mode frozen module: nothing to switch
    with torch.no_grad():
        pred = fn(pixels).argmax(-1)
    targets = pred.tolist() if target is None else [int(target)] * pixels.shape[0]
    tgt = torch.tensor(targets, device=lm.device)
    settings = AttributionSettings(steps, internal_batch_size, sg_samples, sg_std, seed, lm.patch_size)
    attr, delta = ATTRIBUTION_METHODS[method](fn, pixels.clone().requires_grad_(True), tgt, settings)
    return Attribution(method=method, attributions=attr.detach().float().cpu(), target=targets,
                       convergence_delta=delta)


def _smoothgrad(fn, pixels: torch.Tensor, target: torch.Tensor, samples: int, std: float, batch: int,
                seed: int) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean of captum's Saliency over ``samples`` copies of the input
    with N(0, std²) noise — captum's ``NoiseTunnel(Saliency)`` with nt_type='smoothgrad', but with the noise
    drawn from a private seeded generator: NoiseTunnel draws from torch's global RNG, which concurrent
    requests share, so seeding it would not make one request reproducible."""
    from captum.attr import Saliency

    gen = torch.Generator().manual_seed(seed)
    saliency = Saliency(fn)
    total = torch.zeros_like(pixels)
    for start in range(0, samples, batch):
        k = min(batch, samples - start)
        noise = torch.randn((k, *pixels.shape), generator=gen).to(pixels) * std
        noisy = (pixels.unsqueeze(0) + noise).flatten(0, 1).requires_grad_(True)
        grads = saliency.attribute(noisy, target=target.repeat(k), abs=False)
        total += grads.view(k, *pixels.shape).sum(0)
    return total / samples
