"""Pixel attributions through captum (and Chefer's attention relevance), for clean and noised input, with one
call signature for every method.

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

import numpy as np
import torch

from nullviz.core.errors import InvalidParameterError
from nullviz.core.params import Interval, Options, check
from nullviz.core.registry import registrar
from nullviz.models import LoadedModel, PixelModel, shared_weights_view
from nullviz.noise import exact as N

from .attention import has_class_token


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


register_attribution = registrar(ATTRIBUTION_METHODS, "an attribution method")


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


@register_attribution
class AttentionRelevanceMethod(AttributionMethod):
    """Class-specific, gradient-weighted attention relevance: Chefer, Gur & Wolf's generic rule for attention
    models (*Generic Attention-model Explainability*, ICCV 2021). With every block's attention A and the
    gradient G of the target logit with respect to it, Ā = mean over heads of (G ⊙ A)⁺ and the relevance
    R = I, R ← R + Ā·R block by block; the output token's row of R (the class token's, or the mean of the patch
    rows for a ViT without one) over the patches is the map, spread evenly over each patch's pixels.

    It runs on a private view of the model (fused attention off, hooks on ``attn_drop`` that capture the
    attention): the shared model gets no hook, flag or mode switch."""

    name, label = "attention_relevance", "Attention relevance (Chefer et al., class-specific)"

    def __call__(self, fn, inputs, target, settings):
        model = fn.model
        blocks = list(getattr(model, "blocks", []))
        if not blocks or not all(hasattr(b, "attn") and hasattr(b.attn, "attn_drop") for b in blocks):
            raise InvalidParameterError("model", "attention relevance", "a timm ViT whose blocks have .attn.attn_drop",
                                        type(model).__name__)
        view = shared_weights_view(model).eval()
        for m in view.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False  # the softmax goes through attn_drop, where the hook reads it
        captured: list[torch.Tensor] = []
        hooks = [b.attn.attn_drop.register_forward_hook(lambda mod, args, out: captured.append(out))
                 for b in view.blocks]
        try:
            with torch.enable_grad():
                logits = PixelModel(view, fn.mean, fn.std, fn.token_noise)(inputs)
                score = logits.gather(1, target.view(-1, 1)).sum()  # images are independent: one backward
                grads = torch.autograd.grad(score, captured)
        finally:
            for h in hooks:
                h.remove()
        B, _, T, _ = captured[0].shape
        relevance = torch.eye(T, device=inputs.device).expand(B, T, T).clone()
        for attn, grad in zip(captured, grads):
            weighted = (grad * attn).clamp(min=0).mean(1).detach()
            relevance = relevance + weighted @ relevance
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        rows = relevance[:, 0, prefix:] if has_class_token(model) else relevance[:, prefix:, prefix:].mean(1)
        gh, gw = (int(g) for g in model.patch_embed.grid_size)
        p = inputs.shape[-1] // gw
        per_pixel = rows.reshape(B, gh, gw).repeat_interleave(p, 1).repeat_interleave(p, 2)
        c = inputs.shape[1]
        return (per_pixel / c).unsqueeze(1).expand(-1, c, -1, -1).contiguous(), None


class CamMethod(AttributionMethod):
    """A Grad-CAM-family map from pytorch-grad-cam (a dependency, not re-written here), for a ViT: the target
    layer is the last block's first LayerNorm and the patch tokens are reshaped into a [D, gh, gw] feature map
    (the library's ViT recipe). It runs on a private view of the model, wrapped with the normalisation: the
    library's hooks and its ``.eval()`` touch that view only, never the shared model. The map (per image in
    [0, 1], upsampled to the input) is spread over the channels like the other methods'."""

    cam_class: str

    def __call__(self, fn, inputs, target, settings):
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        model = fn.model
        if not hasattr(model, "blocks") or not hasattr(model.blocks[-1], "norm1"):
            raise InvalidParameterError("model", self.label, "a timm ViT whose blocks have .norm1", type(model).__name__)
        view = shared_weights_view(model)
        wrapped = PixelModel(view, fn.mean, fn.std, fn.token_noise)
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        gh, gw = (int(g) for g in model.patch_embed.grid_size)

        def tokens_to_map(t: torch.Tensor) -> torch.Tensor:
            return t[:, prefix:].reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)

        cam_type = getattr(pytorch_grad_cam, self.cam_class)
        with cam_type(model=wrapped, target_layers=[view.blocks[-1].norm1], reshape_transform=tokens_to_map) as cam:
            if hasattr(cam, "batch_size"):
                cam.batch_size = settings.internal_batch_size
            maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in target])
        heat = torch.as_tensor(maps, dtype=inputs.dtype, device=inputs.device)
        c = inputs.shape[1]
        return (heat / c).unsqueeze(1).expand(-1, c, -1, -1).contiguous(), None


@register_attribution
class GradCamMethod(CamMethod):
    name, label, cam_class = "gradcam", "Grad-CAM (pytorch-grad-cam)", "GradCAM"


@register_attribution
class GradCamPlusPlusMethod(CamMethod):
    name, label, cam_class = "gradcam++", "Grad-CAM++ (pytorch-grad-cam)", "GradCAMPlusPlus"


@register_attribution
class ScoreCamMethod(CamMethod):
    name, label, cam_class = "scorecam", "Score-CAM (pytorch-grad-cam; a forward per feature channel)", "ScoreCAM"


@register_attribution
class EigenCamMethod(CamMethod):
    name, label, cam_class = "eigencam", "Eigen-CAM (pytorch-grad-cam; class-agnostic)", "EigenCAM"


@register_attribution
class LayerCamMethod(CamMethod):
    name, label, cam_class = "layercam", "LayerCAM (pytorch-grad-cam)", "LayerCAM"


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


# ----------------------------------------------------------------------------------- the nullspace sanity check
#: A map that changes by less than this (relative to its largest value) under exact nullspace noise passes.
SANITY_TOLERANCE = 1e-4


def map_change(clean: Attribution, noised: Attribution, patch_size: int | None = None) -> float:
    """The largest change between two maps of the first image, relative to the clean map's largest value: per
    pixel, or (``patch_size``) of the maps summed per patch — the resolution the ViT reads."""
    a, b = clean.heatmap()[:1], noised.heatmap()[:1]
    if patch_size is not None:
        h, w = a.shape[-2:]
        a, b = (m.reshape(1, h // patch_size, patch_size, w // patch_size, patch_size).sum((2, 4)) for m in (a, b))
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


@dataclass
class NullspaceSanity:
    """What exact nullspace noise does to an explanation. The noise changes no output, so an explanation of the
    output must not change either: the largest change of the map, relative to its largest value, per patch
    (``patch_change``: the resolution the ViT reads; ``passes``) and per pixel (``map_change``;
    ``pixel_passes``) is float32 rounding for a method that passes. ``gradient_null_fraction``: the share of
    the input gradient's norm in the patch embedding's nullspace — zero by construction (the gradient of anything
    the model computes lies in the row space). Integrated Gradients passes per patch and fails per pixel: it
    multiplies the path gradient by (x − baseline), which the noise changes pixel by pixel, while in each patch
    the change sums to vᵀ·(the gradient) = 0. ``map_null_fraction``: the clean map's own share in the nullspace
    (:func:`attribution_split`) — zero for a gradient map, not for one that multiplies by the input."""

    method: str
    map_change: float
    patch_change: float
    gradient_null_fraction: float
    noise_norm: float
    map_null_fraction: float = float("nan")

    @property
    def passes(self) -> bool:
        return self.patch_change < SANITY_TOLERANCE

    @property
    def pixel_passes(self) -> bool:
        return self.map_change < SANITY_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "patch_change": self.patch_change, "passes": self.passes,
                "map_change": self.map_change, "pixel_passes": self.pixel_passes,
                "gradient_null_fraction": self.gradient_null_fraction, "map_null_fraction": self.map_null_fraction,
                "noise_norm": self.noise_norm}


@dataclass
class AttributionSplit:
    """An attribution map split into the part the patch embedding can see (its row space) and the part it cannot
    (its nullspace), each summed over channels per pixel, in the map's own units: ``row + null`` is the map.
    The map is read as a covector of the model's input (as a gradient is): in the embedding's normalised
    coordinates (the pixel map × the normalisation's std), projected patch by patch. A gradient's null part is
    zero by construction; a map that multiplies by the input (Integrated Gradients) has one."""

    method: str
    row: np.ndarray  # [H, W]
    null: np.ndarray  # [H, W]
    null_fraction: float  # ‖null part‖ / ‖map‖ over all channels and pixels

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "null_fraction": self.null_fraction}


def attribution_split(lm: LoadedModel, attribution: Attribution, index: int = 0) -> AttributionSplit:
    """Split image ``index``'s map of ``attribution`` into row-space and nullspace parts (:class:`AttributionSplit`).
    Raises for a model whose patch embedding has full rank (it has no nullspace)."""
    ns = N.nullspace(lm)
    if ns.nullity == 0:
        raise InvalidParameterError("model", "attribution_split", "a model whose patch embedding has a nullspace",
                                    f"{lm.name} (full rank)")
    std = lm.std.detach().double().cpu().view(1, -1, 1, 1)
    a = attribution.attributions[index:index + 1].detach().double().cpu() * std
    patches = N.patchify(a, lm.patch_size)
    null = ns.project(patches)
    size = tuple(a.shape[-2:])
    null_img = N.unpatchify(null, lm.patch_size, size) / std
    row_img = N.unpatchify(patches - null, lm.patch_size, size) / std
    fraction = float(null.norm() / patches.norm().clamp_min(1e-300))
    return AttributionSplit(attribution.method, row_img[0].sum(0).numpy(), null_img[0].sum(0).numpy(), fraction)


def nullspace_sanity(lm: LoadedModel, pixels: torch.Tensor, method: str = "saliency", target: int | None = None,
                     magnitude: float = 1.0, seed: int = 0, **options) -> NullspaceSanity:
    """Run ``method`` on an image and on the image plus exact nullspace noise (normalised units, ``magnitude``
    per patch) and compare the maps; split the input gradient of the target logit into its nullspace and row-space
    parts. Raises for a model whose patch embedding has full rank (no exact nullspace noise to add)."""
    ns = N.nullspace(lm)
    if ns.nullity == 0:
        raise InvalidParameterError("model", "nullspace_sanity", "a model whose patch embedding has a nullspace",
                                    f"{lm.name} (full rank)")
    pixels = (pixels if pixels.dim() == 4 else pixels.unsqueeze(0))[:1].to(lm.device, torch.float32)
    x = lm.normalize(pixels)
    v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=magnitude, seed=seed)).to(x)
    clean = attribute(lm, pixels, method, target, **options)
    noised = attribute(lm, lm.denormalize(x + v), method, clean.target[0], **options)
    change, patch_change = map_change(clean, noised), map_change(clean, noised, lm.patch_size)
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():  # the input's gradient alone: the frozen, eval-mode model is only read
        (grad,) = torch.autograd.grad(lm.model(xg)[0, clean.target[0]], xg)
    patches = N.patchify(grad.double().cpu(), lm.patch_size)
    null_part = ns.project(patches)
    fraction = float(null_part.norm() / patches.norm().clamp_min(1e-300))
    return NullspaceSanity(method, change, patch_change, fraction, float(v.norm()),
                           attribution_split(lm, clean).null_fraction)
