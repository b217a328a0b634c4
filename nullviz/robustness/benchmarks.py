"""The paper's Table 1 benchmarks, read from their published folder layouts (nothing is downloaded).

Under one root folder, each data set in the layout its authors publish (the names in :data:`BENCHMARKS`):

- ``val/<wnid>/…``: ImageNet validation, 1,000 WordNet-id folders;
- ``imagenet-a/<wnid>/…``, ``imagenet-r/<wnid>/…``: their 200-class subsets. As their authors' code does, the
  logits are restricted to those 200 classes before the arg-max (timm ships both class lists);
- ``imagenet-sketch/<wnid>/…`` (or ``sketch/``), ``stylized-imagenet/<wnid>/…``, ``damagenet/<wnid>/…``;
- ``imagenetv2/<class index>/…`` (ImageNet-V2's own layout: folders ``0`` … ``999``);
- ``imagenet-c/<corruption>/<severity>/<wnid>/…``: the 15 corruptions × 5 severities, already 224×224: read
  without another resize or crop (a resize only if the model's input has another size). The corruption error
  of each corruption is the model's top-1 error averaged over its severities, divided by AlexNet's
  (``data/alexnet_imagenet_c.json``, from hendrycks/robustness); mCE is their mean, ×100. The relative mCE
  subtracts each model's clean error (needs ``val``).

Images are classified with the model's own evaluation transform (resize, centre crop, its normalisation).
``limit`` takes a seeded random subset of each data set (not its first classes). The paper's average is the
mean of its eleven numbers, ImageNet-C counted as 100 − mCE; it is given only when all eleven were measured.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nullviz.core.errors import DataError, InvalidParameterError
from nullviz.core.params import Options, check
from nullviz.core.registry import registrar
from nullviz.data.images import load_image_file
from nullviz.models import LoadedModel

from .evaluation import EvalConfig, evaluate

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
WNID = re.compile(r"n\d{8}")
IMAGENET_C_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                          "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                          "elastic_transform", "pixelate", "jpeg_compression")
#: The paper's eleven columns (Table 1), in its order; "c" enters the average as 100 − mCE.
PAPER_COLUMNS = ("clean", "patchfool", "cw", "fgsm", "damagenet", "a", "c", "v2", "r", "sketch", "stylized")


def _timm_list(name: str) -> list[str]:
    text = resources.files("timm.data").joinpath("_info", name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k class folders, in the class-index order every timm ImageNet model uses."""
    return _timm_list("imagenet_synsets.txt")


def subset_indices(name: str) -> list[int]:
    """ImageNet-A's or -R's 200 classes as ImageNet-1k indices (timm's ``imagenet_{a,r}_indices.txt``)."""
    return [int(v) for v in _timm_list(f"imagenet_{name}_indices.txt")]


def alexnet_reference() -> dict[str, Any]:
    """AlexNet's published ImageNet-C errors (per corruption, mean over severities) and clean error."""
    return json.loads(resources.files("nullviz.robustness").joinpath("data", "alexnet_imagenet_c.json").read_text())


class LabelledFiles(Dataset):
    """(image file, ImageNet-1k index) pairs through a transform."""

    def __init__(self, items: list[tuple[Path, int]], transform: Callable | None):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        img = load_image_file(path)
        return (self.transform(img) if self.transform is not None else img), label


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _wnid_items(folder: Path, allowed: set[str], expected: str) -> list[tuple[Path, int]]:
    """Every image of a folder of WordNet-id sub-folders, labelled with its ImageNet-1k index."""
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    wrong = [p.name for p in subs if p.name not in allowed]
    if not subs or wrong:
        raise DataError(f"{str(folder)!r} is not in the published layout: expected {expected}"
                        + (f"; found {', '.join(wrong[:3])}{' …' if len(wrong) > 3 else ''}" if wrong else
                           "; found no class folders") + ".")
    return [(f, index[s.name]) for s in subs for f in _images(s)]


@dataclass
class BenchmarkResult:
    accuracy: float
    images: int  # evaluated
    available: int  # in the folder

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "images": self.images, "available": self.available}


# ------------------------------------------------------------------------------------------- registry
BENCHMARKS: dict[str, "Benchmark"] = {}
register_benchmark = registrar(BENCHMARKS, "a benchmark")


class Benchmark:
    """One data set of the suite: where it lies under the root, its layout, and how it is scored."""

    name: ClassVar[str]
    label: ClassVar[str]
    folders: ClassVar[tuple[str, ...]]  # accepted folder names under the root, first preferred
    layout: ClassVar[str]  # the expected layout, in words (the message of a wrong one)

    def find(self, root: Path) -> Path | None:
        return next((root / f for f in self.folders if (root / f).is_dir()), None)

    def items(self, folder: Path) -> list[tuple[Path, int]]:
        return _wnid_items(folder, set(imagenet_wnids()), self.layout)

    def restrict(self) -> list[int] | None:
        """ImageNet-1k indices the logits are restricted to (None: all 1,000)."""
        return None


class _WnidBenchmark(Benchmark):
    layout = "one folder per ImageNet WordNet id (n01440764/ …), 1,000 classes"


@register_benchmark
class Validation(_WnidBenchmark):
    name, label, folders = "val", "ImageNet (validation)", ("val", "imagenet/val")


@register_benchmark
class Sketch(_WnidBenchmark):
    name, label, folders = "sketch", "ImageNet-Sketch", ("imagenet-sketch", "imagenet-sketch/sketch", "sketch")


@register_benchmark
class Stylized(_WnidBenchmark):
    name, label, folders = "stylized", "Stylized-ImageNet", ("stylized-imagenet", "stylized-imagenet/val", "stylized")


@register_benchmark
class DamageNet(_WnidBenchmark):
    name, label, folders = "damagenet", "DAmageNet (adversarial images)", ("damagenet", "DAmageNet")


class _SubsetBenchmark(Benchmark):
    layout = "one folder per WordNet id of its 200 classes (timm's imagenet_{a,r}_synsets.txt)"

    def items(self, folder):
        return _wnid_items(folder, set(_timm_list(f"imagenet_{self.name}_synsets.txt")),
                           self.layout.replace("{a,r}", self.name))

    def restrict(self):
        return subset_indices(self.name)


@register_benchmark
class ImageNetA(_SubsetBenchmark):
    name, label, folders = "a", "ImageNet-A", ("imagenet-a",)


@register_benchmark
class ImageNetR(_SubsetBenchmark):
    name, label, folders = "r", "ImageNet-R", ("imagenet-r",)


@register_benchmark
class ImageNetV2(Benchmark):
    name, label = "v2", "ImageNet-V2 (matched frequency)"
    folders = ("imagenetv2", "imagenetv2-matched-frequency-format-val")
    layout = "one folder per ImageNet class index (0/ … 999/), as ImageNet-V2 is published"

    def items(self, folder):
        subs = sorted(p for p in folder.iterdir() if p.is_dir())
        wrong = [p.name for p in subs if not (p.name.isdigit() and 0 <= int(p.name) < 1000)]
        if not subs or wrong:
            raise DataError(f"{str(folder)!r} is not in the published layout: expected {self.layout}"
                            + (f"; found {', '.join(wrong[:3])}" if wrong else "; found no class folders") + ".")
        return [(f, int(s.name)) for s in subs for f in _images(s)]


@register_benchmark
class ImageNetC(Benchmark):
    name, label, folders = "c", "ImageNet-C", ("imagenet-c",)
    layout = "<corruption>/<severity 1-5>/<WordNet id>/ (15 corruptions, e.g. gaussian_noise/3/n01440764/)"

    def splits(self, folder: Path) -> dict[tuple[str, int], Path]:
        """The (corruption, severity) folders present; a folder that is neither a corruption nor a severity is
        a wrong layout."""
        found = {}
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if sub.name not in IMAGENET_C_CORRUPTIONS:
                raise DataError(f"{str(folder)!r} is not in ImageNet-C's layout: expected {self.layout}; found "
                                f"{sub.name!r}.")
            for sev in sorted(p for p in sub.iterdir() if p.is_dir()):
                if sev.name not in {"1", "2", "3", "4", "5"}:
                    raise DataError(f"{str(sub)!r}: expected severity folders 1 … 5, found {sev.name!r}.")
                found[(sub.name, int(sev.name))] = sev
        if not found:
            raise DataError(f"{str(folder)!r} holds no ImageNet-C corruption: expected {self.layout}.")
        return found


def suite_root(folder: str | Path) -> Path:
    """The root that holds the benchmarks, given it or one benchmark's own folder (an unpacked upload of
    ``val/`` alone lands on ``val``)."""
    folder = Path(folder)
    if any(b.find(folder) is not None for b in BENCHMARKS.values()):
        return folder
    if any(b.find(folder.parent) == folder for b in BENCHMARKS.values()):
        return folder.parent
    return folder


def suite_size(root: str | Path, only: tuple[str, ...] | None = None, limit: int | None = None) -> int:
    """How many images :func:`evaluate_suite` would classify (no image is opened): what decides whether the page
    runs it on the spot or as a job."""
    root = Path(root)
    total = 0
    for name in (tuple(BENCHMARKS) if only is None else only):
        folder = BENCHMARKS[name].find(root) if name in BENCHMARKS else None
        if folder is None:
            continue
        parts = [f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        if name == "c":
            per_split: dict[Path, int] = {}
            for f in parts:
                per_split[f.parent.parent] = per_split.get(f.parent.parent, 0) + 1
            total += sum(n if limit is None else min(n, limit) for n in per_split.values())
        else:
            total += len(parts) if limit is None else min(len(parts), limit)
    return total


# ------------------------------------------------------------------------------------------- scoring
def _subset(items: list, limit: int | None, seed: int) -> list:
    if limit is None or limit >= len(items):
        return items
    keep = np.random.default_rng(seed).choice(len(items), size=limit, replace=False)
    return [items[i] for i in sorted(keep)]


@torch.no_grad()
def accuracy(lm: LoadedModel, items: list[tuple[Path, int]], transform: Callable, restrict: list[int] | None = None,
             batch_size: int = 64, on_batch: Callable[[int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> tuple[int, int]:
    """(right, seen) top-1 over ``items``; with ``restrict`` the arg-max is taken over those classes only."""
    loader = DataLoader(LabelledFiles(items, transform), batch_size=batch_size, shuffle=False)
    sub = torch.tensor(restrict, device=lm.device) if restrict is not None else None
    right = seen = 0
    for x, y in loader:
        if should_stop is not None and should_stop():
            break
        logits = lm.model(x.to(lm.device))
        pred = sub[logits[:, sub].argmax(-1)] if sub is not None else logits.argmax(-1)
        right += int((pred.cpu() == y).sum())
        seen += len(y)
        if on_batch is not None:
            on_batch(len(y))
    return right, seen


def unresized_transform(lm: LoadedModel) -> Callable:
    """ImageNet-C's images as published: to tensor and the model's normalisation, no crop (a resize only when the
    model reads another size)."""
    from torchvision import transforms as T

    size = tuple(int(v) for v in lm.data_config["input_size"][1:])
    norm = T.Normalize(lm.data_config["mean"], lm.data_config["std"])

    def transform(img):
        img = img.convert("RGB")
        if (img.height, img.width) != size:
            img = img.resize((size[1], size[0]), resample=3)  # bicubic
        return norm(T.functional.to_tensor(img))

    return transform


@dataclass
class SuiteReport:
    model: str
    root: str
    results: dict[str, BenchmarkResult] = field(default_factory=dict)
    corruption_errors: dict[str, dict[int, float]] = field(default_factory=dict)  # ImageNet-C top-1 error
    attacks: dict[str, float] = field(default_factory=dict)  # accuracy under each attack, on val images
    attack_images: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # benchmark → why
    stopped: bool = False

    def corruption_summary(self) -> dict[str, Any]:
        """CE per corruption (its mean error over the severities present ÷ AlexNet's), mCE, the relative mCE
        (with a clean error), and which of the 15 × 5 were missing."""
        if not self.corruption_errors:
            return {}
        ref = alexnet_reference()
        ce, rel = {}, {}
        clean_err = 1 - self.results["val"].accuracy if "val" in self.results else None
        for c, by_sev in self.corruption_errors.items():
            mean_err = float(np.mean(list(by_sev.values())))
            ce[c] = mean_err / ref["errors"][c]
            if clean_err is not None:
                rel[c] = (mean_err - clean_err) / (ref["errors"][c] - ref["clean_error"])
        missing = [f"{c}/{s}" for c in IMAGENET_C_CORRUPTIONS for s in range(1, 6)
                   if s not in self.corruption_errors.get(c, {})]
        return {"ce": ce, "mce": 100 * float(np.mean(list(ce.values()))),
                "relative_mce": 100 * float(np.mean(list(rel.values()))) if rel else None,
                "complete": not missing, "missing": missing}

    def columns(self) -> dict[str, float]:
        """The paper's columns measured, in %, ImageNet-C as mCE."""
        out: dict[str, float] = {}
        names = {"val": "clean"}
        for name, r in self.results.items():
            out[names.get(name, name)] = 100 * r.accuracy
        out.update({a: 100 * v for a, v in self.attacks.items()})
        summary = self.corruption_summary()
        if summary:
            out["c"] = summary["mce"]
        return {k: out[k] for k in [*PAPER_COLUMNS, *sorted(set(out) - set(PAPER_COLUMNS))] if k in out}

    def paper_average(self) -> tuple[float | None, list[str]]:
        """The mean of the paper's eleven numbers (C as 100 − mCE) and the columns missing (then None)."""
        cols = self.columns()
        summary = self.corruption_summary()
        missing = [c for c in PAPER_COLUMNS if c not in cols or (c == "c" and not summary.get("complete"))]
        if missing:
            return None, missing
        return float(np.mean([100 - cols[c] if c == "c" else cols[c] for c in PAPER_COLUMNS])), []

    def to_dict(self) -> dict[str, Any]:
        average, missing = self.paper_average()
        return {"model": self.model, "root": self.root, "columns": self.columns(),
                "results": {k: v.to_dict() for k, v in self.results.items()},
                "imagenet_c": {**self.corruption_summary(),
                               "errors": {c: {str(s): e for s, e in v.items()} for c, v in self.corruption_errors.items()}},
                "attacks": self.attacks, "attack_images": self.attack_images, "paper_average": average,
                "paper_average_missing": missing, "skipped": self.skipped, "stopped": self.stopped}


def evaluate_suite(lm: LoadedModel, root: str | Path, only: tuple[str, ...] | None = None, limit: int | None = None,
                   attacks: tuple[str, ...] = (), attack_config=None, batch_size: int = 64, seed: int = 0,
                   progress: Callable[[str, int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> SuiteReport:
    """Every benchmark of :data:`BENCHMARKS` found under ``root`` (or those in ``only``), each on at most ``limit``
    images (a seeded random subset); the ``attacks`` on ``limit`` validation images (``attack_config``: an
    ``EvalConfig`` for their budgets). A benchmark absent from ``root`` is skipped with the reason; one in a
    wrong layout raises :class:`DataError` naming the expected layout. Needs a 1,000-class ImageNet model."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"The benchmark root {str(root)!r} does not exist or is not a directory.")
    names = tuple(BENCHMARKS) if only is None else tuple(only)
    for n in names:
        check("only", "evaluate_suite", n, Options(tuple(BENCHMARKS)))
    if int(lm.model.num_classes) != 1000:
        raise InvalidParameterError("lm", "evaluate_suite", "an ImageNet-1k model (1,000 classes)",
                                    f"{lm.name} with {lm.model.num_classes} classes")
    stop = should_stop or (lambda: False)
    report = SuiteReport(lm.name + (f" ({lm.checkpoint})" if lm.checkpoint else ""), str(root))
    found = {n: BENCHMARKS[n].find(root) for n in names}
    for n, folder in found.items():
        if folder is None:
            report.skipped[n] = (f"{BENCHMARKS[n].label}: no folder {' or '.join(map(repr, BENCHMARKS[n].folders))} "
                                 f"under {str(root)!r}")
    plan: list[tuple[str, Any, list, Callable, list[int] | None]] = []  # (key, benchmark key, items, transform, mask)
    for n, folder in found.items():
        if folder is None:
            continue
        bench = BENCHMARKS[n]
        if isinstance(bench, ImageNetC):
            for (c, s), sev in bench.splits(folder).items():
                items = _wnid_items(sev, set(imagenet_wnids()), bench.layout)
                plan.append((f"c/{c}/{s}", (c, s), _subset(items, limit, seed), unresized_transform(lm), None))
        else:
            items = bench.items(folder)
            plan.append((n, n, _subset(items, limit, seed), lm.transform, bench.restrict()))
            report.results[n] = BenchmarkResult(float("nan"), 0, len(items))
    total = sum(len(p[2]) for p in plan)
    done = 0
    for key, which, items, transform, mask in plan:
        if stop():
            report.stopped = True
            break

        def tick(k: int, key=key) -> None:
            nonlocal done
            done += k
            if progress is not None:
                progress(key, done, total)

        right, seen = accuracy(lm, items, transform, mask, batch_size, tick, stop)
        if seen < len(items):
            report.stopped = True
        if isinstance(which, tuple):
            if seen:
                report.corruption_errors.setdefault(which[0], {})[which[1]] = 1 - right / seen
        else:
            report.results[which] = BenchmarkResult(right / seen if seen else float("nan"), seen,
                                                    report.results[which].available)
        if report.stopped:
            break
    report.results = {k: v for k, v in report.results.items() if v.images}
    if attacks and not report.stopped:
        if found.get("val") is None and Validation().find(root) is None:
            report.skipped.update({a: "attacks run on ImageNet validation images: no 'val' folder" for a in attacks})
        else:
            report.attacks, report.attack_images = _attack_columns(lm, root, attacks, attack_config, limit, seed, stop,
                                                                   progress)
    return report


def _attack_columns(lm, root, attacks, config, limit, seed, stop, progress=None) -> tuple[dict[str, float], int]:
    """Accuracy under each attack on the (same seeded subset of) validation images, through the evaluation's
    attack registry (pixels in [0, 1], normalisation inside the model)."""
    items = _subset(Validation().items(Validation().find(root)), limit, seed)
    cfg = EvalConfig(attacks=tuple(attacks)) if config is None else config
    cfg = replace(cfg, attacks=tuple(attacks), corruptions=(), tolerance_magnitudes=(), limit=None)
    rep = evaluate(lm, LabelledFiles(items, None), cfg, should_stop=stop,
                   progress=None if progress is None else lambda stage, done, total: progress(f"attack {stage}", done,
                                                                                             total))
    return {a: v["robust_acc"] for a, v in rep.attacks.items()}, rep.num_images
