"""Is a map faithful to the model? Deletion and insertion curves (Petsiuk et al., RISE, 2018), patch by patch.

Deletion: remove the patches a map ranks highest first (set them to the baseline, black pixels) and follow the
probability of the explained class; a faithful map makes it fall fast (a low area under the curve). Insertion:
start from the baseline image and put the highest-ranked patches back first; a faithful map makes the
probability rise fast (a high area). Every method of the attribution registry is measured on the same images,
classes and steps, beside a random ranking of the patches (seeded): a method is only informative where it beats
random. Patches, not pixels, because a ViT reads patches: the map's values are summed per patch.

ROAD (Rong et al., *A Consistent and Efficient Evaluation Strategy for Attribution Methods*, ICML 2022), on
request, through pytorch-grad-cam's own ``ROADCombined``: pixels are removed by noisy linear imputation from
their neighbours instead of set to black (black patches are out of distribution and leak the mask's shape),
most- and least-relevant first at 10 … 90 %, and the score is (LeRF − MoRF) / 2 of the class probability —
higher is more faithful. It ranks pixels, as its authors do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from nullviz.core.global_rng import seeded_global_rng
from nullviz.core.params import Interval, Options, check
from nullviz.models import LoadedModel, PixelModel

from .attribution import ATTRIBUTION_METHODS, attribute

#: The ranking every method is compared with.
RANDOM = "random"
#: ROAD's removal percentiles (pytorch-grad-cam's and the paper's default).
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@dataclass
class FaithfulnessReport:
    """Per method: the mean deletion and insertion curves over the images (probability of the explained class
    vs. the fraction of patches removed / inserted) and each image's areas under them."""

    fractions: list[float]
    images: int
    deletion: dict[str, list[float]] = field(default_factory=dict)  # mean curve per method
    insertion: dict[str, list[float]] = field(default_factory=dict)
    deletion_auc: dict[str, list[float]] = field(default_factory=dict)  # per image
    insertion_auc: dict[str, list[float]] = field(default_factory=dict)
    road: dict[str, list[float]] = field(default_factory=dict)  # per image, when asked for
    stopped: bool = False

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean areas per method (deletion: lower is more faithful; insertion: higher; ROAD: higher)."""
        return {m: {"deletion_auc": float(np.mean(self.deletion_auc[m])),
                    "insertion_auc": float(np.mean(self.insertion_auc[m])),
                    **({"road": float(np.mean(self.road[m]))} if m in self.road else {})} for m in self.deletion_auc}

    def to_dict(self) -> dict[str, Any]:
        return {"fractions": self.fractions, "images": self.images, "summary": self.summary(),
                "deletion": self.deletion, "insertion": self.insertion, "deletion_auc": self.deletion_auc,
                "insertion_auc": self.insertion_auc, "road": self.road, "road_percentiles": list(ROAD_PERCENTILES),
                "stopped": self.stopped}


def patch_scores(heatmap: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, H, W] pixel map → [B, N] per-patch sums (row-major patches, as the model reads them)."""
    b, h, w = heatmap.shape
    p = patch_size
    return heatmap.reshape(b, h // p, p, w // p, p).sum((2, 4)).flatten(1)


@torch.no_grad()
def curves(fn: torch.nn.Module, pixels: torch.Tensor, target: torch.Tensor, order: torch.Tensor, patch_size: int,
           steps: int, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion curves [B, steps + 1] of the probability of ``target`` when the patches are removed
    (inserted) in ``order`` ([B, N], most important first), ``steps`` equal stretches of patches at a time."""
    b, c, h, w = pixels.shape
    p = patch_size
    n = order.shape[1]
    counts = [round(n * k / steps) for k in range(steps + 1)]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))  # rank of each patch
    ranks = ranks.reshape(b, h // p, w // p).repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1)
    out = []
    for mode in ("deletion", "insertion"):
        probs = []
        for k in counts:
            chosen = ranks < k  # the k top-ranked patches
            keep = ~chosen if mode == "deletion" else chosen
            probs.append(torch.where(keep, pixels, torch.zeros_like(pixels)))
        stacked = torch.stack(probs, 1).flatten(0, 1)  # [B·(steps+1), C, H, W]
        logits = torch.cat([fn(stacked[i:i + batch_size]) for i in range(0, len(stacked), batch_size)])
        prob = logits.softmax(-1).view(b, steps + 1, -1)
        out.append(prob.gather(2, target.view(b, 1, 1).expand(b, steps + 1, 1)).squeeze(2).cpu())
    return out[0], out[1]


def road(fn: torch.nn.Module, pixels: torch.Tensor, heat: torch.Tensor, target: int, seed: int = 0,
         percentiles: tuple[int, ...] = ROAD_PERCENTILES) -> float:
    """pytorch-grad-cam's ``ROADCombined`` of one [1, C, H, W] image and its [H, W] (or [1, H, W]) pixel map for
    class ``target``: (LeRF − MoRF) / 2 of the softmax probability, averaged over ``percentiles``. The
    imputation adds Gaussian noise from torch's global generator: drawn under ``seed`` in
    :func:`~nullviz.core.global_rng.seeded_global_rng`, so the score is reproducible and nothing else's random
    stream moves."""
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    cams = heat.detach().float().reshape(1, *pixels.shape[-2:]).cpu().numpy()
    with seeded_global_rng(seed), torch.no_grad():
        score = ROADCombined(percentiles=list(percentiles))(pixels, cams, [ClassifierOutputSoftmaxTarget(target)], fn)
    return float(np.asarray(score).reshape(-1)[0])


def area(curve: torch.Tensor) -> torch.Tensor:
    """Area under [B, K] curves over [0, 1] (trapezoids)."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)


def faithfulness(lm: LoadedModel, pixels: torch.Tensor, methods: tuple[str, ...] | None = None, steps: int = 16,
                 seed: int = 0, attribution_steps: int = 16, batch_size: int = 64,
                 progress: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, with_road: bool = False) -> FaithfulnessReport:
    """Deletion and insertion curves of each method's map (default: every registered one) and of a random
    ranking, on [B, C, H, W] pixels in [0, 1], each image explained for its predicted class; ``with_road``: each
    map's ROAD score too (:func:`road`; the random ranking's map is its patch ranks, spread over the pixels).
    ``progress(done, total)`` after each image; ``should_stop`` between images (the report then covers the
    images done)."""
    methods = tuple(ATTRIBUTION_METHODS) if methods is None else tuple(methods)
    for m in methods:
        check("methods", "faithfulness", m, Options(tuple(ATTRIBUTION_METHODS)))
    check("steps", "faithfulness", steps, Interval(int, 2, 1024))
    pixels = (pixels if pixels.dim() == 4 else pixels.unsqueeze(0)).to(lm.device, torch.float32)
    fn = PixelModel.of(lm)
    with torch.no_grad():
        targets = torch.cat([fn(pixels[i:i + batch_size]).argmax(-1) for i in range(0, len(pixels), batch_size)])
    names = (*methods, RANDOM)
    dele: dict[str, list[torch.Tensor]] = {m: [] for m in names}
    ins: dict[str, list[torch.Tensor]] = {m: [] for m in names}
    roads: dict[str, list[float]] = {m: [] for m in names}
    gh, gw = (int(g) for g in lm.model.patch_embed.grid_size)
    gen = torch.Generator().manual_seed(seed)
    n_patches = int(lm.model.patch_embed.num_patches)
    stopped = False
    for i in range(len(pixels)):
        if should_stop is not None and should_stop():
            stopped = True
            break
        x, t = pixels[i:i + 1], targets[i:i + 1]
        for m in names:
            if m == RANDOM:
                order = torch.randperm(n_patches, generator=gen).unsqueeze(0).to(lm.device)
                ranks = torch.empty(n_patches).scatter_(0, order[0].cpu(), torch.arange(n_patches, 0, -1).float())
                heat = ranks.reshape(1, gh, gw).repeat_interleave(lm.patch_size, 1).repeat_interleave(lm.patch_size, 2)
            else:
                heat = attribute(lm, x, m, int(t), steps=max(2, attribution_steps), seed=seed).heatmap()
                order = patch_scores(heat, lm.patch_size).argsort(1, descending=True).to(lm.device)
            d, s = curves(fn, x, t, order, lm.patch_size, steps, batch_size)
            dele[m].append(d)
            ins[m].append(s)
            if with_road:
                roads[m].append(road(fn, x, heat, int(t), seed=seed + i))
        if progress is not None:
            progress(i + 1, len(pixels))
    report = FaithfulnessReport(fractions=[k / steps for k in range(steps + 1)], images=len(dele[RANDOM]),
                                stopped=stopped)
    for m in names:
        if not dele[m]:
            continue
        d, s = torch.cat(dele[m]), torch.cat(ins[m])
        report.deletion[m], report.insertion[m] = d.mean(0).tolist(), s.mean(0).tolist()
        report.deletion_auc[m], report.insertion_auc[m] = area(d).tolist(), area(s).tolist()
        if with_road:
            report.road[m] = roads[m]
    return report
