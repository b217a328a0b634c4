"""Cluttered digits: a handwritten digit at a random place and size on a crop of a photograph, box known.

The embedded digits model sees 32×32 digits as a 4×4 grid of tokens; there is nothing to *find*. These
64×64 scenes give an 8×8 token grid with an object somewhere in it, so attention maps can be checked against
where the object is (``box_attention_ratio``). Everything is generated from data that ships with the
installed packages: scikit-learn's 8×8 digits (its fixed train/held-out split, ``nullviz.data``) drawn
bright over dimmed crops of scikit-image's sample photographs; held-out scenes use held-out digits on
photographs that training never used, so the held-out accuracy measures digits *and* clutter never seen.
Generation is seeded and batched on the CPU (the same pixels on every machine)."""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nullviz.core.atomic import replace_atomically
from nullviz.core.errors import DataError

from .digits import DIGITS_CLASS_NAMES, ImageListDataset, digits_indices


CANVAS = 64
DIGIT_SIDES = (22, 38)  # the digit's side in pixels: uniform in [22, 38)
TRAIN_BACKGROUNDS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "camera", "coins", "moon", "grass",
                     "gravel", "brick", "cell", "clock", "text")
HELDOUT_BACKGROUNDS = ("chelsea", "cat", "immunohistochemistry", "retina", "page", "colorwheel")
#: Training photographs whose scenes validate a synthesis and are never in its fit pool: the held-out scenes
#: are on photographs training never used, so validation images on photographs the fit never saw tell how δ
#: does there far better than more scenes on the fit's own photographs (measured: ``bench/bench_frontier.py``).
VALIDATION_BACKGROUNDS = ("rocket", "brick", "text")
HELDOUT_SCENES = 1000
TRAIN_SCENES = 4000  # the fixed training set (finetuning, fit images); the training script draws fresh scenes
SPLIT_SEEDS = {"train": 0, "heldout": 1}
ALPHA_IN_BOX = 0.25  # a pixel belongs to the digit's box where the digit's opacity exceeds this


@dataclass
class Scenes:
    """A batch of scenes: ``pixels`` [B, 3, 64, 64] in [0, 1] (8-bit values), ``labels`` [B], ``boxes`` [B, 4]
    as (x0, y0, x1, y1) pixel bounds, end exclusive."""

    pixels: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    backgrounds: torch.Tensor | None = None  # [B] index into the split's photographs

    def __len__(self) -> int:
        return len(self.labels)

    def images(self) -> list[Image.Image]:
        arr = (self.pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(a, mode="RGB") for a in arr]

    def image(self, i: int) -> Image.Image:
        return Scenes(self.pixels[i:i + 1], self.labels[i:i + 1], self.boxes[i:i + 1]).images()[0]

    def subset(self, idx: torch.Tensor) -> "Scenes":
        return Scenes(self.pixels[idx], self.labels[idx], self.boxes[idx],
                      None if self.backgrounds is None else self.backgrounds[idx])


@lru_cache(maxsize=2)
def _backgrounds(split: str) -> tuple[torch.Tensor, ...]:
    """The split's photographs as [3, H, W] float tensors, the shorter side brought to 256 pixels."""
    import skimage.data

    names = TRAIN_BACKGROUNDS if split == "train" else HELDOUT_BACKGROUNDS
    out = []
    for name in names:
        arr = np.asarray(getattr(skimage.data, name)())
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        img = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1).float() / 255
        scale = 256 / min(img.shape[1:])
        size = (round(img.shape[1] * scale), round(img.shape[2] * scale))
        out.append(F.interpolate(img[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0])
    return tuple(out)


@lru_cache(maxsize=2)
def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's 8×8 digits as opacities in [0, 1], and their labels."""
    from sklearn.datasets import load_digits


    d = load_digits()
    idx = digits_indices(split)
    return torch.from_numpy(d.images[idx] / 16.0).float(), torch.from_numpy(d.target[idx]).long()


#: Distribution shifts made by the renderer, in the spirit of ImageNet-R / -Sketch (the scenes' own renditions):
#: each renders the *same* held-out scenes — digit, place, background, draws — with one thing changed, so its
#: accuracy drop is that change's alone.
SHIFTS = {
    "inverted": "inverted (the scene's negative)",
    "outline": "outlines only (the digit's edge, its inside left empty)",
    "small": "small digits (12–20 px; training 22–38)",
    "large": "large digits (44–60 px)",
    "colour": "saturated colours (training digits are near-white)",
    "texture": "unseen backgrounds (synthetic stripes, no photograph)",
}
SHIFT_SIDES = {"small": (12, 20), "large": (44, 60)}


def _outline(alpha: torch.Tensor) -> torch.Tensor:
    """The digit's edge: its opacity minus its erosion (a 5×5 minimum), about two pixels wide."""
    eroded = -F.max_pool2d(-alpha[None, None], 5, stride=1, padding=2)[0, 0]
    return (alpha - eroded).clamp(0, 1)


def _stripes(u: torch.Tensor, colour_draw: torch.Tensor) -> torch.Tensor:
    """A synthetic background no scene was trained on: coloured sinusoidal stripes, frequency and angle from
    the scene's own draws."""
    yy, xx = torch.meshgrid(torch.arange(CANVAS).float(), torch.arange(CANVAS).float(), indexing="ij")
    angle, freq = float(u[1]) * torch.pi, 2 + 6 * float(u[2])
    wave = 0.5 + 0.5 * torch.sin(2 * torch.pi * freq * (xx * torch.cos(torch.tensor(angle)) +
                                                        yy * torch.sin(torch.tensor(angle))) / CANVAS)
    return wave[None] * colour_draw.flip(0)[:, None, None]


def render(split: str, n: int, generator: torch.Generator, shift: str | None = None) -> Scenes:
    """``n`` scenes from the ``split``'s digits and photographs, drawn with ``generator`` (CPU); ``shift`` (one
    of :data:`SHIFTS`) renders the same scenes — the same draws — with that one thing changed."""
    if split not in SPLIT_SEEDS:
        raise DataError(f"The cluttered digits split must be 'train' or 'heldout'. Got {split!r} instead.")
    if shift is not None and shift not in SHIFTS:
        raise DataError(f"Unknown distribution shift {shift!r}: one of {', '.join(SHIFTS)}.")
    digits, labels = _digits(split)
    photos = _backgrounds(split)
    g = generator
    pick = torch.randint(len(digits), (n,), generator=g)
    photo = torch.randint(len(photos), (n,), generator=g)
    u = torch.rand(n, 10, generator=g)
    pixels = torch.empty(n, 3, CANVAS, CANVAS)
    boxes = torch.empty(n, 4, dtype=torch.long)
    for i in range(n):
        bg_img = photos[int(photo[i])]
        h, w = bg_img.shape[1:]
        side = int(48 + u[i, 0] * (min(h, w) - 48))  # a crop of 48…256 pixels: fine to coarse texture
        top, left = int(u[i, 1] * (h - side)), int(u[i, 2] * (w - side))
        bg = F.interpolate(bg_img[None, :, top:top + side, left:left + side], size=(CANVAS, CANVAS),
                           mode="bilinear", antialias=True, align_corners=False)[0]
        if u[i, 3] < 0.5:
            bg = bg.flip(-1)
        colour_draw = torch.rand(3, generator=g)  # drawn here whatever the shift: the same scenes
        if shift == "texture":
            bg = _stripes(u[i], colour_draw)
        bg = bg * (0.2 + 0.35 * u[i, 4])  # dimmed: the digit stays the brightest thing in the scene
        lo, hi = SHIFT_SIDES.get(shift, DIGIT_SIDES)
        s = int(lo + u[i, 5] * (hi - lo))
        alpha = F.interpolate(digits[int(pick[i])][None, None], size=(s, s), mode="bicubic",
                              align_corners=False)[0, 0].clamp(0, 1)
        x0, y0 = int(u[i, 6] * (CANVAS - s + 1)), int(u[i, 7] * (CANVAS - s + 1))
        colour = 0.7 + 0.3 * colour_draw
        if shift == "colour":  # one saturated primary: the brightest channel of the draw, the others dark
            colour = 0.1 + 0.9 * F.one_hot(colour_draw.argmax(), 3).float()
        a = torch.zeros(CANVAS, CANVAS)
        a[y0:y0 + s, x0:x0 + s] = alpha
        shown = _outline(a) if shift == "outline" else a
        pixels[i] = bg * (1 - shown) + colour[:, None, None] * shown
        ys, xs = torch.nonzero(a > ALPHA_IN_BOX, as_tuple=True)
        boxes[i] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    levels = (pixels.clamp(0, 1) * 255).round()  # 8-bit values
    pixels = (255 - levels if shift == "inverted" else levels) / 255
    return Scenes(pixels, labels[pick], boxes, photo)


def scene_cache_dir() -> Path:
    """Where rendered fixed scenes are kept between processes: ``NULLVIZ_CACHE_DIR``, else ~/.cache/nullviz."""
    return Path(os.environ.get("NULLVIZ_CACHE_DIR") or Path.home() / ".cache" / "nullviz")


def _scene_file(split: str, n: int) -> Path:
    """The cache file of a split's fixed scenes, named by everything that decides their pixels: this module's
    source, the split, its size and seed, and the versions of torch (the resampling) and of the packages the
    digits and photographs come from. Any change makes a new name, so a stale file is never read. (The versions
    come from the installed packages' metadata: importing scikit-learn to ask took 1.2 s of a server's start.)"""
    key = hashlib.sha256(Path(__file__).read_bytes())
    key.update(f"{split}|{n}|{SPLIT_SEEDS[split]}|{torch.__version__}|{version('scikit-image')}|"
               f"{version('scikit-learn')}".encode())
    return scene_cache_dir() / f"scenes-{split}-{key.hexdigest()[:16]}.pt"


def _load_scenes(path: Path, n: int) -> Scenes | None:
    try:
        saved = torch.load(path, weights_only=True)
        scenes = Scenes(saved["levels"].float() / 255, saved["labels"], saved["boxes"], saved["backgrounds"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError):
        return None  # missing or unreadable: render again
    if scenes.pixels.shape != (n, 3, CANVAS, CANVAS) or len(scenes.boxes) != n:
        return None
    return scenes


@lru_cache(maxsize=2)
def fixed_scenes(split: str) -> Scenes:
    """The fixed scenes of a split (held-out: 1000, train: 4000), the same on every call and machine.
    Rendered once per machine and kept in :func:`scene_cache_dir` (a job's worker and every server start read
    the file, ~0.2 s, instead of rendering 5,000 scenes, ~7 s on 2 cores); the file holds the very pixels."""
    n = HELDOUT_SCENES if split == "heldout" else TRAIN_SCENES
    if split not in SPLIT_SEEDS:
        return render(split, n, torch.Generator())  # raises the clear error
    path = _scene_file(split, n)
    cached = _load_scenes(path, n)
    if cached is not None:
        return cached
    scenes = render(split, n, torch.Generator().manual_seed(SPLIT_SEEDS[split]))
    saved = {"levels": (scenes.pixels * 255).round().to(torch.uint8),  # 8-bit values: stored exactly
             "labels": scenes.labels, "boxes": scenes.boxes, "backgrounds": scenes.backgrounds}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda tmp: torch.save(saved, tmp))
    except OSError:
        pass  # a read-only home: render each time, as before
    return scenes


@lru_cache(maxsize=2)
def _fixed_images(split: str) -> tuple[Image.Image, ...]:
    """The fixed scenes as PIL images, made once per process (every page and job reads the same ones)."""
    return tuple(fixed_scenes(split).images())


def synthesis_fit_validation(n_validation: int) -> tuple[list[Image.Image], list[Image.Image]]:
    """The fixed training scenes cut for a synthesis: the fit pool (scenes on every training photograph but
    VALIDATION_BACKGROUNDS) and the first ``n_validation`` scenes on those photographs."""
    scenes = fixed_scenes("train")
    held_bg = torch.tensor([TRAIN_BACKGROUNDS.index(name) for name in VALIDATION_BACKGROUNDS])
    is_val = torch.isin(scenes.backgrounds, held_bg)
    images = _fixed_images("train")
    fit = [images[i] for i in (~is_val).nonzero()[:, 0].tolist()]
    val = [images[i] for i in is_val.nonzero()[:, 0].tolist()[:n_validation]]
    return fit, val


@lru_cache(maxsize=len(SHIFTS))
def _shifted_images(shift: str) -> tuple[tuple[Image.Image, ...], list[int]]:
    scenes = render("heldout", HELDOUT_SCENES, torch.Generator().manual_seed(SPLIT_SEEDS["heldout"]), shift=shift)
    return tuple(scenes.images()), scenes.labels.tolist()


def shifted_dataset(shift: str, transform: Callable | None = None):
    """The held-out scenes rendered with distribution shift ``shift`` (:data:`SHIFTS`): the same scenes as
    :func:`cluttered_dataset` ("heldout") item by item, with one thing changed."""
    if shift not in SHIFTS:
        raise DataError(f"Unknown distribution shift {shift!r}: one of {', '.join(SHIFTS)}.")
    images, labels = _shifted_images(shift)
    return ImageListDataset(images, labels, DIGITS_CLASS_NAMES, transform)


#: Seeds of scene draws made for finetuning comparisons, apart from the fixed splits' (SPLIT_SEEDS).
STREAM_SEED, VALIDATION_STREAM_SEED = 1_000_003, 2_000_003


def rendered_dataset(split: str, n: int, seed: int, transform: Callable | None = None):
    """``n`` freshly rendered scenes of ``split`` (its digits and photographs) drawn from ``seed``: the renderer
    as augmentation — every scene a new crop and flip of a photograph, a new digit size, place and colour — so a
    run drawing a stream of them never sees a scene twice (the model was trained this way). Seeds other than
    the fixed splits' give scenes none of them holds."""
    scenes = render(split, n, torch.Generator().manual_seed(seed))
    return ImageListDataset(scenes.images(), scenes.labels.tolist(), DIGITS_CLASS_NAMES, transform)


def cluttered_dataset(split: str = "heldout", transform: Callable | None = None):
    """The fixed scenes of ``split`` as a data set of PIL images (with ``boxes`` beside them)."""
    scenes = fixed_scenes(split)
    ds = ImageListDataset(_fixed_images(split), scenes.labels.tolist(), DIGITS_CLASS_NAMES, transform)
    ds.boxes = scenes.boxes
    ds.shiftable = split == "heldout"  # shifted_dataset renders these very scenes, item by item
    return ds
