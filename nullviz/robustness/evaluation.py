"""Robustness evaluation: clean accuracy, adversarial attacks, natural corruptions, noise-tolerance curves.

Everything acts on pixels in [0, 1] with the model's normalisation inside the attacked function
(:class:`~nullviz.models.PixelModel`); ε is given in pixel units (8/255 by default). The research code
attacked normalised tensors while the attack library clamped to [0, 1], which corrupts the images: not here.

- FGSM and PGD (L∞ or L2, random start): short torch loops that take gradients for the input alone.
- ``patchfool``: a PatchFool-style attack — only the patch that receives the most attention is perturbed,
  unbounded inside the valid pixel range.
- Corruptions: the 15 ImageNet-C types × severities 1–5 with the parameters of the image's resolution
  (:mod:`nullviz.robustness.corruptions`), applied at the model's input size; a corruption that cannot apply is
  reported, not raised. ``relative_corruption_error`` is mCE-style, with a stated rule for what it leaves out.
- Tolerance curves: accuracy and agreement with the clean prediction vs. the L2 size of exact-nullspace,
  approximate (optimised δ), Gaussian and δ's random-start noise U(−1, 1) (``nullviz.noise.kinds``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from nullviz.core.errors import DataError, InvalidParameterError
from nullviz.core.params import Interval, Options, bounded, check, validate_fields
from nullviz.data.scenes import SHIFTS, shifted_dataset
from nullviz.inspection.attention import attention_views
from nullviz.models import LoadedModel, PixelModel
from nullviz.noise import exact as N
from nullviz.noise.approximate import SynthesisConfig, synthesize
from nullviz.noise.kinds import NOISE_KINDS

from .attacks import ATTACKS, make_attack
from .corruptions import CORRUPTIONS, CorruptionNotApplicableError, corrupt_image


#: The noises a tolerance curve can follow (names from :data:`nullviz.noise.kinds.NOISE_KINDS`).
TOLERANCE_KINDS = ("exact", "approximate", "gaussian", "random_start")
#: What stored configurations (job parameters from before the registry) called a kind.
_OLD_KIND_NAMES = {"uniform": "random_start"}

Progress = Callable[[str, int, int], None]


# ----------------------------------------------------------------------------------------------- data
def images_tensor(lm: LoadedModel, dataset, limit: int | None = None,
                  indices: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` items of a data set of PIL images (or of already transformed tensors) — or the items
    at ``indices`` —, as a normalised batch and labels on the model's device."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if indices is not None and any(not 0 <= int(i) < len(dataset) for i in indices):
        raise InvalidParameterError("indices", "images_tensor", f"item numbers below {len(dataset)}", indices)
    tf = lm.transform  # a property that builds the transform: once, not per image
    xs, ys = [], []
    for i in (range(n) if indices is None else [int(i) for i in indices]):
        img, y = dataset[i]
        xs.append(_as_tensor(img, tf))
        ys.append(int(y))
    if not xs:
        return torch.empty(0, *lm.data_config["input_size"]), torch.empty(0, dtype=torch.long)
    return torch.stack(xs).to(lm.device), torch.tensor(ys, device=lm.device)


@torch.no_grad()
def accuracy(lm: LoadedModel, dataset, batch_size: int = 256, limit: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> float:
    """Top-1 accuracy of ``lm`` on (the first ``limit`` items of) ``dataset``, measured now."""
    check("batch_size", "accuracy", batch_size, Interval(int, 1, None))
    x, y = images_tensor(lm, dataset, limit)
    if len(y) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((lm.model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
        if progress is not None:
            progress(min(i + batch_size, len(y)), len(y))
    return correct / len(y)


# ----------------------------------------------------------------------------- the shared counter
@dataclass(frozen=True)
class Batch:
    """A batch of the evaluated images and where it starts in them (attacks seed their draws from it)."""

    start: int
    x: torch.Tensor
    y: torch.Tensor


#: A way of predicting a batch: its predicted classes under one perturbation (clean, an attack, a corruption,
#: token noise…).
Condition = Callable[[Batch], torch.Tensor]


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[Batch]:
    for i in range(0, len(y), batch_size):
        yield Batch(i, x[i:i + batch_size], y[i:i + batch_size])


def correctness(conditions: dict[str, Condition], batches: Iterable[Batch],
                on_batch: Callable[[Batch], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> dict[str, torch.Tensor] | None:
    """Per image and condition, whether the prediction is right (bool, CPU, in the batches' order); ``None``
    when ``should_stop`` asks to stop between two batches.

    The one counter the robustness suite and finetuning's evaluator (:mod:`nullviz.train.evaluator`) share.
    It keeps the per-image outcome, not only a count, so success rates (right when clean, wrong when attacked)
    and paired comparisons come from the same numbers as the accuracies."""
    right: dict[str, list[torch.Tensor]] = {name: [] for name in conditions}
    for batch in batches:
        if should_stop is not None and should_stop():
            return None
        for name, condition in conditions.items():
            right[name].append((condition(batch) == batch.y).cpu())
        if on_batch is not None:
            on_batch(batch)
    return {name: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool) for name, parts in right.items()}


@torch.no_grad()
def predict_pixels(fn: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted classes of [0, 1] pixel batches."""
    return torch.cat([fn(pixels[i:i + batch_size]).argmax(-1) for i in range(0, len(pixels), batch_size)])


# ---------------------------------------------------------------------------------------- corruptions
def corrupt(pixels: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Apply one ImageNet-C corruption to [B, C, H, W] pixels in [0, 1]; returns the same shape and dtype.

    The parameters are those of the images' resolution (:mod:`nullviz.robustness.corruptions`). Images are
    quantised to 8 bits first, as ImageNet-C's sources are; every draw comes from one generator seeded by
    ``seed``, so a call is reproducible and shares no random state with concurrent calls. Raises
    :class:`~nullviz.robustness.corruptions.CorruptionNotApplicableError` for images it cannot corrupt (e.g. 4
    channels).
    """
    check("name", "corrupt", name, Options(CORRUPTIONS))
    check("severity", "corrupt", severity, Interval(int, 1, 5))
    arr = (pixels.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round() / 255
    rng = np.random.default_rng(seed)
    out = np.stack([corrupt_image(img.astype(np.float32), name, severity, rng) for img in arr])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(pixels.device, pixels.dtype).contiguous()


# ----------------------------------------------------------------------------------- tolerance curves
def _noise_direction(kind: str, lm: LoadedModel, shape: tuple, gen: torch.Generator,
                     approx_delta: torch.Tensor | None) -> torch.Tensor:
    if kind == "exact":
        ns = N.nullspace(lm)
        if ns.nullity == 0:
            raise InvalidParameterError("kinds", "tolerance_curves", "kinds without 'exact' for a full-rank patch "
                                        "embedding (its exact nullspace is {0})", kind)
        v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(seed=int(torch.randint(0, 2**31, (1,), generator=gen))))
    elif kind == "approximate":
        if approx_delta is None:
            raise InvalidParameterError("approx_delta", "tolerance_curves", "an input-level δ [C, H, W] when "
                                        "'approximate' is among the kinds", None)
        v = approx_delta.float().cpu()
    else:  # a random control, drawn to the images' shape
        v = NOISE_KINDS[kind].draw(torch.empty(shape), gen)
    return v / v.norm().clamp_min(1e-30)


@torch.no_grad()
def tolerance_curves(lm: LoadedModel, x: torch.Tensor, y: torch.Tensor, magnitudes: list[float],
                     kinds: tuple[str, ...] = ("exact", "gaussian", "random_start"),
                     approx_delta: torch.Tensor | None = None, seed: int = 0,
                     batch_size: int = 256) -> dict[str, dict[str, list[float]]]:
    """Accuracy and top-1 agreement with the clean prediction vs. the L2 norm (normalised input units) of one
    noise pattern per kind added to every image. Exact-nullspace noise gives a flat curve by construction."""
    for k in kinds:
        check("kinds", "tolerance_curves", k, Options(TOLERANCE_KINDS))
    gen = torch.Generator().manual_seed(seed)
    clean_pred = torch.cat([lm.model(x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])
    out: dict[str, dict[str, list[float]]] = {}
    image_norm = float(x.flatten(1).norm(dim=1).mean())
    for kind in kinds:
        direction = _noise_direction(kind, lm, tuple(x.shape[1:]), gen, approx_delta).to(x)
        acc, agree = [], []
        for m in magnitudes:
            pred = torch.cat([lm.model(x[i:i + batch_size] + m * direction).argmax(-1)
                              for i in range(0, len(x), batch_size)])
            acc.append(float((pred == y).float().mean()))
            agree.append(float((pred == clean_pred).float().mean()))
        out[kind] = {"magnitude": [float(m) for m in magnitudes],
                     "relative_magnitude": [float(m) / image_norm for m in magnitudes],
                     "accuracy": acc, "agreement": agree}
    return out


# ------------------------------------------------------------------------------------------- the suite
@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate; ε and α in [0, 1] pixel units."""

    attacks: tuple[str, ...] = ("fgsm", "pgd")
    eps: float = bounded(8 / 255, Interval(float, 0.0, 1.0))
    pgd_steps: int = bounded(10, Interval(int, 1, 1000))
    pgd_alpha: float = bounded(2 / 255, Interval(float, 0.0, 1.0, closed="right"))
    pgd_norm: str = bounded("linf", Options(("linf", "l2")))
    patch_steps: int = bounded(30, Interval(int, 1, 1000))
    cw_c: float = bounded(1.0, Interval(float, 0.0, None, closed="right"))
    cw_steps: int = bounded(50, Interval(int, 1, 10_000))
    cw_lr: float = bounded(0.01, Interval(float, 0.0, 1.0, closed="right"))
    autoattack_eps: float = bounded(4 / 255, Interval(float, 0.0, 1.0, closed="right"))  # RobustBench's ImageNet ε
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    # distribution shifts rendered from the cluttered model's own held-out scenes (data.scenes.SHIFTS)
    shifts: tuple[str, ...] = ()
    tolerance_magnitudes: tuple[float, ...] = ()
    tolerance_kinds: tuple[str, ...] = TOLERANCE_KINDS
    # steps of the input-level δ the 'approximate' curve follows (fit on images the curves do not score)
    tolerance_delta_steps: int = bounded(100, Interval(int, 1, 100_000))
    limit: int | None = None
    batch_size: int = bounded(128, Interval(int, 1, 65_536))
    seed: int = bounded(0, Interval(int, 0, None))

    def __post_init__(self):
        validate_fields(self)
        for a in self.attacks:
            check("attacks", "EvalConfig", a, Options(ATTACKS))
        for c in self.corruptions:
            check("corruptions", "EvalConfig", c, Options(CORRUPTIONS))
        for s in self.severities:
            check("severities", "EvalConfig", s, Interval(int, 1, 5))
        for name in self.shifts:
            check("shifts", "EvalConfig", name, Options(tuple(SHIFTS)))
        for k in self.tolerance_kinds:
            check("tolerance_kinds", "EvalConfig", k, Options(TOLERANCE_KINDS))
        if self.limit is not None:
            check("limit", "EvalConfig", self.limit, Interval(int, 1, None))

    def work_plan(self) -> dict[str, float]:
        """Each stage's share of an evaluation, in forward passes over the images (an attack step is a forward
        and a backward: 3): what one progress bar over the whole evaluation counts."""
        plan = {"clean": 1.0}
        plan.update({a: 3.0 * make_attack(a, self).gradient_steps + 1 for a in self.attacks})
        if self.corruptions:
            plan["corruptions"] = 2.0 * len(self.corruptions) * len(self.severities)  # corrupting ≈ one pass
        if self.shifts:
            plan["shifts"] = 2.0 * len(self.shifts)  # rendering ≈ one pass
        if self.tolerance_magnitudes:
            plan["tolerance"] = float(len(self.tolerance_magnitudes) * len(self.tolerance_kinds))
        return plan

    def fraction_done(self, stage: str, done: int, total: int) -> float:
        """How far the whole evaluation is when ``stage`` reports done of total (0 … 1): the stages before it
        and its own part, weighted by :meth:`work_plan` — not each stage's own bar (which read full at every
        stage's end)."""
        plan = self.work_plan()
        names = list(plan)
        before = sum(plan[k] for k in names[:names.index(stage)]) if stage in plan else 0.0
        own = plan.get(stage, 0.0) * min(1.0, done / max(total, 1))
        return min(1.0, (before + own) / sum(plan.values()))


@dataclass
class RobustnessReport:
    """Results of one evaluation of one model; ``to_rows`` gives a tidy table for CSV."""

    model: str
    num_images: int
    clean_acc: float
    attacks: dict[str, dict[str, float]] = field(default_factory=dict)
    attack_budgets: dict[str, str] = field(default_factory=dict)  # each attack's ε and steps, in words
    corruptions: dict[str, list[float]] = field(default_factory=dict)
    corruption_skipped: dict[str, str] = field(default_factory=dict)
    severities: list[int] = field(default_factory=list)
    tolerance: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    tolerance_skipped: dict[str, str] = field(default_factory=dict)
    tolerance_images: int | None = None  # how many images the curves score
    tolerance_fit_images: int | None = None  # how many other images the approximate δ was fit on
    shifts: dict[str, float] = field(default_factory=dict)  # accuracy on the same scenes, shifted
    seconds: dict[str, float] = field(default_factory=dict)
    stopped: bool = False
    #: Per image (in the evaluated order), right or wrong: 'clean', each attack, each shift, and
    #: 'corruption_errors' (how many of the corruption × severity conditions it is wrong under). For paired
    #: comparisons over images (a bootstrap); not written to JSON.
    per_image: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def mean_corruption_acc(self) -> float | None:
        vals = [a for accs in self.corruptions.values() for a in accs]
        return float(np.mean(vals)) if vals else None

    def pooled_corruption_error(self, reference: "RobustnessReport") -> float | None:
        """Σ err / Σ reference err ×100 over every corruption and severity both were evaluated on (100 = as
        robust as the reference, lower is better). One ratio of totals: with a few errors per corruption, the
        mean of per-corruption ratios moved by 25–33 points for one image; the pool does not."""
        err = ref_err = 0.0
        if list(reference.severities) != list(self.severities):
            return None
        for name, accs in self.corruptions.items():
            ref = reference.corruptions.get(name)
            if ref is not None:
                err += sum(1 - a for a in accs)
                ref_err += sum(1 - a for a in ref)
        if ref_err == 0:
            return 100.0 if err == 0 and self.corruptions else None
        return 100 * err / ref_err

    def relative_corruption_error(self, reference: "RobustnessReport") -> "RelativeCorruptionError":
        """mCE-style score ×100 against ``reference``: the mean over corruptions of CE_c = Σ_s err / Σ_s
        err_reference (100 = as robust as the reference, lower is better), Hendrycks & Dietterich's CE with
        the reference in AlexNet's place. Rule for the cases where CE_c is not a number: a corruption the
        reference was not evaluated on (or at other severities) is left out; where the reference makes no
        error, CE_c is 1 if this model makes none either, else undefined and left out. Everything left out is
        listed with its reason in the result, never dropped silently."""
        per: dict[str, float] = {}
        excluded: dict[str, str] = {}
        for name, accs in self.corruptions.items():
            ref = reference.corruptions.get(name)
            if ref is None:
                why = reference.corruption_skipped.get(name, "not evaluated")
                excluded[name] = f"the reference has no result for it ({why})"
                continue
            if list(reference.severities) != list(self.severities):
                excluded[name] = (f"the reference was evaluated at severities {list(reference.severities)}, "
                                  f"this model at {list(self.severities)}")
                continue
            err, ref_err = sum(1 - a for a in accs), sum(1 - a for a in ref)
            if ref_err > 0:
                per[name] = 100 * err / ref_err
            elif err == 0:
                per[name] = 100.0
            else:
                excluded[name] = (f"the reference makes no error on it and this model's summed error is "
                                  f"{err:.3g}: the ratio is undefined")
        for name, why in self.corruption_skipped.items():
            excluded.setdefault(name, f"could not be applied to this model's images ({why})")
        value = float(np.mean(list(per.values()))) if per else None
        return RelativeCorruptionError(value=value, per_corruption=per, excluded=excluded)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, per_image={}))
        del d["per_image"]
        d["mean_corruption_acc"] = self.mean_corruption_acc
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RobustnessReport":
        """The inverse of :meth:`to_dict` (e.g. a report an evaluation job wrote as JSON)."""
        return cls(**{k: v for k, v in d.items() if k != "mean_corruption_acc"})

    def to_rows(self) -> list[dict[str, Any]]:
        rows = [{"model": self.model, "evaluation": "clean", "setting": "", "value": self.clean_acc}]
        for name, r in self.attacks.items():
            rows.append({"model": self.model, "evaluation": name, "setting": "robust_acc", "value": r["robust_acc"]})
            rows.append({"model": self.model, "evaluation": name, "setting": "success_rate",
                         "value": r["success_rate"]})
        for name, accs in self.corruptions.items():
            for s, a in zip(self.severities, accs):
                rows.append({"model": self.model, "evaluation": name, "setting": f"severity {s}", "value": a})
        if self.mean_corruption_acc is not None:
            rows.append({"model": self.model, "evaluation": "mean_corruption_acc", "setting": "",
                         "value": self.mean_corruption_acc})
        for name, acc in self.shifts.items():
            rows.append({"model": self.model, "evaluation": f"shift_{name}", "setting": "", "value": acc})
        for kind, curve in self.tolerance.items():
            for m, a, g in zip(curve["magnitude"], curve["accuracy"], curve["agreement"]):
                rows.append({"model": self.model, "evaluation": f"tolerance_{kind}", "setting": f"l2={m:g} acc",
                             "value": a})
                rows.append({"model": self.model, "evaluation": f"tolerance_{kind}", "setting": f"l2={m:g} agreement",
                             "value": g})
        return rows


@dataclass
class RelativeCorruptionError:
    """The mCE-style score, per corruption, and what it leaves out and why."""

    value: float | None
    per_corruption: dict[str, float]
    excluded: dict[str, str]

    def summary(self) -> str:
        """One sentence for people: the value, over how many corruptions, and what was left out."""
        if self.value is None:
            text = "No relative corruption error: no corruption could be compared."
        else:
            n = len(self.per_corruption)
            text = f"{self.value:.1f} (mean over {n} corruption{'s' if n != 1 else ''})."
        if self.excluded:
            text += " Left out: " + "; ".join(f"{k}: {v}" for k, v in self.excluded.items()) + "."
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["model", "evaluation", "setting", "value"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class CorruptedImages:
    """Corrupted images made once and handed to every model evaluated on the same images: comparing many
    models on one test set otherwise corrupts the same images again for each (on the cluttered test scenes,
    15 corruptions × 5 severities cost more than the models' forwards). Keyed by the batch's own values, so
    other images are never served a stale copy. One per set of images (it holds them all: 75 conditions of
    256 scenes of 64 px ≈ 0.9 GB)."""

    def __init__(self):
        self._store: dict[tuple, torch.Tensor] = {}

    def __call__(self, pixels: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
        key = (name, severity, seed, tuple(pixels.shape), float(pixels.double().sum()),
               float((pixels.double() * torch.arange(pixels.numel(), dtype=torch.float64, device=pixels.device)
                      .view_as(pixels)).sum()))
        if key not in self._store:
            self._store[key] = corrupt(pixels, name, severity, seed=seed).cpu()
        return self._store[key].to(pixels.device)

    def __len__(self) -> int:
        return len(self._store)


def evaluate(lm: LoadedModel, dataset, config: EvalConfig = EvalConfig(), progress: Progress | None = None,
             should_stop: Callable[[], bool] | None = None,
             approx_delta: torch.Tensor | None = None, corrupted: CorruptedImages | None = None) -> RobustnessReport:
    """Run the configured evaluations batched on the model's device; stoppable between batches (the
    report then holds what finished, with ``stopped=True``). ``corrupted``: a store of corrupted images
    shared by the models evaluated on these images (each corrupts them itself otherwise)."""
    check_classes_match(lm, dataset)
    if config.shifts and not getattr(dataset, "shiftable", False):
        raise DataError("Distribution shifts are renderings of the cluttered model's own held-out scenes: evaluate "
                        "them on that data ('default' for the cluttered model), where each shifted scene is paired "
                        "with its clean one.")
    x, y = images_tensor(lm, dataset, config.limit)
    if len(y) == 0:
        raise InvalidParameterError("dataset", "evaluate", "a non-empty data set", 0)
    fit = None
    if (config.tolerance_magnitudes and "approximate" in config.tolerance_kinds and approx_delta is None
            and len(dataset) > len(y)):  # δ is fit on images after the evaluated ones
        tf = lm.transform
        fit = torch.stack([_as_tensor(dataset[i][0], tf)
                           for i in range(len(y), min(len(dataset), len(y) + FIT_IMAGES))]).to(lm.device)
    return _evaluate(lm, x, y, config, progress or (lambda *a: None), should_stop or (lambda: False),
                     approx_delta, fit, corrupted)


def check_classes_match(lm: LoadedModel, dataset) -> None:
    """Refuse to score a model on images of other classes (a 1,000-class ImageNet ViT on the 10 digits): every
    number would be about labels the model does not predict. Data sets that name their classes (ImageFolder,
    the embedded data) are checked by count."""
    classes = getattr(dataset, "classes", None) or getattr(getattr(dataset, "dataset", None), "classes", None)
    k = int(getattr(lm.model, "num_classes", 0) or len(lm.class_names))
    if classes and len(classes) != k:
        raise DataError(f"{lm.name} predicts {k:,} classes but the data set has {len(classes):,} "
                        f"({', '.join(map(str, list(classes)[:5]))}{', …' if len(classes) > 5 else ''}): its accuracy "
                        f"there would mean nothing. Evaluate it on images of its own classes (an ImageFolder with one "
                        f"folder per class, in the model's class order), or finetune it on this data first.")


#: How many images an evaluation's own input-level δ is fit on (never among the images it scores).
FIT_IMAGES = 64


def _as_tensor(img, transform) -> torch.Tensor:
    """An item of a data set as a normalised tensor (already one, or a PIL image through ``transform``)."""
    return img if isinstance(img, torch.Tensor) else transform(img)


def _evaluate(lm, x, y, cfg: EvalConfig, progress: Progress, should_stop, approx_delta,
              fit: torch.Tensor | None = None, corrupted: CorruptedImages | None = None) -> RobustnessReport:
    fn = PixelModel.of(lm)
    pixels = lm.denormalize(x)
    n = len(y)
    report = RobustnessReport(model=lm.name + (f" ({lm.checkpoint})" if lm.checkpoint else ""), num_images=n,
                              clean_acc=float("nan"), severities=list(cfg.severities))
    bs = cfg.batch_size
    t = time.perf_counter()
    clean_right = correctness({"clean": lambda b: predict_pixels(fn, b.x, bs)}, batches(pixels, y, bs))["clean"]
    report.clean_acc = int(clean_right.sum()) / n
    report.per_image["clean"] = clean_right
    report.seconds["clean"] = time.perf_counter() - t
    progress("clean", n, n)

    views = attention_views(lm)
    for name in cfg.attacks:
        attack = make_attack(name, cfg, views)
        t = time.perf_counter()
        right = correctness({name: lambda b: predict_pixels(fn, attack(fn, b.x, b.y, seed=cfg.seed + b.start), bs)},
                            batches(pixels, y, bs), should_stop=should_stop,
                            on_batch=lambda b: progress(name, b.start + len(b.y), n))
        if right is None:
            report.stopped = True
            return report
        n_right = int(clean_right.sum())
        report.per_image[name] = right[name]
        report.attacks[name] = {"robust_acc": int(right[name].sum()) / n,
                                "success_rate": int((clean_right & ~right[name]).sum()) / n_right if n_right else 0.0}
        report.attack_budgets[name] = attack.budget
        report.seconds[name] = time.perf_counter() - t

    total = len(cfg.corruptions) * len(cfg.severities)
    step = 0
    if corrupted is None:
        def make(pixels, name, severity, seed):
            return corrupt(pixels, name, severity, seed=seed)
    else:
        make = corrupted
    errors = torch.zeros(n, dtype=torch.long)
    for name in cfg.corruptions:
        t = time.perf_counter()
        accs = []
        wrong = torch.zeros(n, dtype=torch.long)  # this corruption's errors per image, over its severities
        for s in cfg.severities:
            if should_stop():
                report.stopped = True
                return report
            try:
                right = correctness({name: lambda b: predict_pixels(fn, make(b.x, name, s, cfg.seed + b.start),
                                                                    bs)}, batches(pixels, y, bs))
                accs.append(int(right[name].sum()) / n)
                wrong = wrong + ~right[name]
            except CorruptionNotApplicableError as exc:  # e.g. images with 4 channels
                report.corruption_skipped[name] = str(exc)
                accs = []
                break
            step += 1
            progress("corruptions", step, total)
        if accs:
            report.corruptions[name] = accs
            errors += wrong
        report.seconds[f"corruption_{name}"] = time.perf_counter() - t
    if report.corruptions:
        report.per_image["corruption_errors"] = errors

    for k, name in enumerate(cfg.shifts):
        if should_stop():
            report.stopped = True
            return report
        t = time.perf_counter()
        sx, sy = images_tensor(lm, shifted_dataset(name), n)  # the same scenes as the n clean ones, shifted
        right = correctness({name: lambda b: predict_pixels(fn, b.x, bs)}, batches(lm.denormalize(sx), sy, bs))
        report.shifts[name] = int(right[name].sum()) / n
        report.per_image[name] = right[name]
        report.seconds[f"shift_{name}"] = time.perf_counter() - t
        progress("shifts", k + 1, len(cfg.shifts))

    if cfg.tolerance_magnitudes:
        if should_stop():
            report.stopped = True
            return report
        t = time.perf_counter()
        kinds = list(cfg.tolerance_kinds)
        if "exact" in kinds and N.nullspace(lm).nullity == 0:
            kinds.remove("exact")
            report.tolerance_skipped["exact"] = "the patch embedding has full rank: its exact nullspace is {0}"
        tx, ty = x, y
        if "approximate" in kinds and approx_delta is None:
            if fit is None:  # no images beyond the evaluated ones: hold some out of the curves to fit δ on
                k = min(FIT_IMAGES, len(y) // 4)
                if k == 0:
                    kinds.remove("approximate")
                    report.tolerance_skipped["approximate"] = ("too few images to fit δ on images the curves do "
                                                               "not score (need at least 4)")
                else:
                    fit, tx, ty = x[-k:], x[:-k], y[:-k]
            if fit is not None:
                approx_delta = _input_delta(lm, fit, cfg.seed, cfg.tolerance_delta_steps)
                report.tolerance_fit_images = int(len(fit))
        report.tolerance_images = int(len(ty))
        report.tolerance = tolerance_curves(lm, tx, ty, list(cfg.tolerance_magnitudes), tuple(kinds), approx_delta,
                                            cfg.seed, cfg.batch_size)
        report.seconds["tolerance"] = time.perf_counter() - t
        progress("tolerance", 1, 1)
    return report


def _input_delta(lm: LoadedModel, fit: torch.Tensor, seed: int, steps: int = 100) -> torch.Tensor:
    """An input-level approximate-nullspace δ optimised on ``fit``: images the tolerance curves do not score
    (scoring the images δ was fit on reads agreement 1.000 where unseen images give 0.95–0.99)."""
    return synthesize(lm, fit, SynthesisConfig(level="input", steps=steps, seed=seed)).delta


def examples(lm: LoadedModel, dataset, config: EvalConfig, count: int = 4, severity: int = 3) -> dict[str, torch.Tensor]:
    """A few images under each configured attack and corruption (pixels [count, C, H, W]), for display."""
    x, y = images_tensor(lm, dataset, count)
    pixels = lm.denormalize(x)
    fn = PixelModel.of(lm)
    out = {"clean": pixels.cpu(), "_labels": y.cpu()}
    views = attention_views(lm)
    for name in config.attacks:
        out[name] = make_attack(name, config, views)(fn, pixels, y, seed=config.seed).cpu()
    for name in config.corruptions:
        try:
            out[name] = corrupt(pixels, name, severity, seed=config.seed).cpu()
        except CorruptionNotApplicableError:
            continue
    return out


def evaluation_size(num_images: int, config: EvalConfig, model_params: list[int] | None = None) -> float:
    """The rough cost of an evaluation, in forward passes of a one-million-parameter model: what decides
    whether the page runs it on the spot or as a background job. A backward pass counts as a forward; one
    ImageNet-C corruption of one image as ten (CPU image processing, not the model); each model's passes
    scale with its size (at least 1)."""
    n = num_images if config.limit is None else min(num_images, config.limit)
    passes = (1 + sum(2 * make_attack(a, config).gradient_steps + 1 for a in config.attacks)
              + len(config.tolerance_magnitudes) * len(config.tolerance_kinds) + len(config.shifts))
    corruption = 10 * (len(config.corruptions) * len(config.severities) + len(config.shifts))  # + rendering
    scales = [max(1.0, p / 1e6) for p in (model_params or [1_000_000])]
    return float(n * sum(passes * s + corruption for s in scales))


def config_from_dict(d: dict[str, Any]) -> EvalConfig:
    """An EvalConfig from JSON (lists back to tuples; kinds under their old names renamed)."""
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    if "tolerance_kinds" in d:
        d["tolerance_kinds"] = tuple(_OLD_KIND_NAMES.get(k, k) for k in d["tolerance_kinds"])
    return EvalConfig(**d)


def report_json(reports: list[RobustnessReport]) -> str:
    return json.dumps([r.to_dict() for r in reports], indent=2, default=float)


def severities_from_spec(spec: str) -> tuple[int, ...]:
    """'1-5' → (1, 2, 3, 4, 5); '1,3' → (1, 3)."""
    spec = spec.strip()
    try:
        if "-" in spec:
            lo, hi = (int(v) for v in spec.split("-", 1))
            values = tuple(range(lo, hi + 1))
        else:
            values = tuple(int(v) for v in spec.split(",") if v.strip())
    except ValueError as exc:
        raise InvalidParameterError("severities", "evaluate", "a range like '1-5' or a list like '1,3'", spec) from exc
    if not values or any(not 1 <= v <= 5 for v in values):
        raise InvalidParameterError("severities", "evaluate", "severities between 1 and 5", spec)
    return values


def corruptions_from_spec(spec: str) -> tuple[str, ...]:
    """'all' → the 15 ImageNet-C types; 'none' → (); else a comma-separated list of names."""
    spec = spec.strip()
    if spec == "all":
        return CORRUPTIONS
    if spec in ("", "none"):
        return ()
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    for s in names:
        check("corruptions", "evaluate", s, Options(CORRUPTIONS))
    return names

