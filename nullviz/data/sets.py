"""Data sets by spec (``default``, the embedded sets, ``cifar10``, an ImageFolder), the model's own data, the
fit / validation / test images of a synthesis, training splits, and uploaded zips of folders. Everything
yields PIL RGB images (or tensors made by the model's own timm transform), so the same preprocessing path
serves the embedded models, a pretrained ImageNet ViT and a user's checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nullviz.core.errors import DataError, ImageLoadError, UploadTooLargeError
from nullviz.core.registry import registrar
from nullviz.models import embedded_model

from .digits import digits_dataset
from .images import (MAX_IMAGE_PIXELS, SAMPLE_PHOTOS, check_aspect_ratio, distinct_images, load_image_file,
                     sample_image, sample_photos_dataset)
from .scenes import VALIDATION_BACKGROUNDS, cluttered_dataset, synthesis_fit_validation


def image_folder(path: str | Path, transform: Callable | None = None):
    """A torchvision ``ImageFolder`` (one sub-directory per class) with the model's transform."""
    from torchvision.datasets import ImageFolder

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"The data folder {str(path)!r} does not exist or is not a directory.")
    try:
        return ImageFolder(str(path), transform=transform, loader=lambda p: load_image_file(p))
    except (FileNotFoundError, RuntimeError) as exc:  # torchvision: no class folders / no valid files
        raise DataError(f"{str(path)!r} is not an ImageFolder: it needs one sub-folder of images per class "
                        f"({exc}).") from exc


class DataSource:
    """One kind of data set a spec can name. ``splits`` gives (train, held-out); ``held_out`` the held-out part
    alone (or the training part, ``split="train"``), where the source has fixed splits."""

    name: ClassVar[str]
    label: ClassVar[str]  # what the pages call it
    classes: ClassVar[int | None] = None  # known without reading any image
    embedded: ClassVar[bool] = False  # generated from installed packages: offline, no path

    def held_out(self, spec: "DataSpec", transform: Callable | None, split: str = "heldout"):
        raise DataError(f"{self.label} comes as (train, held-out): load it with train_heldout({str(spec)!r}).")

    def splits(self, spec: "DataSpec", transform: Callable | None, train_transform: Callable | None,
               cache_dir: Path):
        return self.held_out(spec, train_transform or transform, "train"), self.held_out(spec, transform, "heldout")


DATA_SOURCES: dict[str, DataSource] = {}


register_data_source = registrar(DATA_SOURCES, "a data source", reserved=("default",))


@register_data_source
class Digits(DataSource):
    name, label, classes, embedded = "digits", "digits", 10, True

    def held_out(self, spec, transform, split="heldout"):
        return digits_dataset(split, transform)


@register_data_source
class Cluttered(DataSource):
    name, label, classes, embedded = "cluttered", "cluttered scenes", 10, True

    def held_out(self, spec, transform, split="heldout"):
        return cluttered_dataset(split, transform)


@register_data_source
class Cifar10(DataSource):
    """Downloaded once into the cache folder (through torchvision); its own train and test splits."""

    name, label, classes = "cifar10", "CIFAR-10", 10

    def splits(self, spec, transform, train_transform, cache_dir):
        train, held = cifar10(Path(cache_dir) / "cifar10", transform)
        if train_transform is not None:
            train.transform = train_transform
        return train, held


@register_data_source
class Folder(DataSource):
    """An ImageFolder (one sub-folder per class), split 90/10 with a fixed seed: the same split in every
    process of a distributed run."""

    name, label = "folder", "an ImageFolder"

    def held_out(self, spec, transform, split="heldout"):
        return image_folder(spec.path, transform)

    def splits(self, spec, transform, train_transform, cache_dir):
        train, held = split_dataset(image_folder(spec.path, transform))
        if train_transform is not None:
            train.dataset = image_folder(spec.path, train_transform)  # same files, same order: the indices hold
            train.classes = held.classes
        return train, held


#: Data sets that ship with nullviz (generated from installed packages), and those downloaded once, by spec.
EMBEDDED_DATA = tuple(name for name, src in DATA_SOURCES.items() if src.embedded)
DOWNLOADED_DATA = tuple(name for name, src in DATA_SOURCES.items() if not src.embedded and name != "folder")


@dataclass(frozen=True)
class DataSpec:
    """What a data spec string names, parsed in one place: ``default`` (the model's own data, resolved by
    :func:`own_data`), a registered source by name (the embedded ``digits`` and ``cluttered``; ``cifar10``,
    downloaded once), or an ImageFolder path. ``str(spec)`` gives the string back."""

    kind: str  # "default" or a DATA_SOURCES name
    path: Path | None = None

    @classmethod
    def parse(cls, spec: "str | DataSpec") -> "DataSpec":
        if isinstance(spec, DataSpec):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise DataError(f"No data given ({spec!r}): name 'default', {', '.join(map(repr, EMBEDDED_DATA))}, "
                            f"'cifar10' or an ImageFolder folder.")
        if spec == "default" or (spec in DATA_SOURCES and spec != "folder"):
            return cls(spec)
        return cls("folder", Path(spec))

    def __str__(self) -> str:
        return str(self.path) if self.kind == "folder" else self.kind

    @property
    def source(self) -> DataSource:
        """The registered source ('default' must be resolved first, with :func:`own_data`)."""
        if self.kind == "default":
            raise DataError("'default' names the model's own data: resolve it with own_data(spec, model_name).")
        return DATA_SOURCES[self.kind]

    @property
    def embedded(self) -> bool:
        return self.kind in EMBEDDED_DATA

    def class_count(self) -> int | None:
        """How many classes it holds, without reading its images: what the source knows (10 for the embedded
        sets and CIFAR-10), the class folders of an ImageFolder (None if they cannot be read, or for 'default'
        before it is resolved)."""
        if self.kind == "default":
            return None
        if self.kind != "folder":
            return self.source.classes
        try:
            return sum(1 for p in self.path.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return None


def model_own_data(model_name: str | None) -> str | None:
    """The embedded data set a model was trained on ('digits', 'cluttered'), or None for any other model (a timm
    / ImageNet ViT has no training images of its own here: the 32-px digits are not its data)."""
    if not model_name:
        return "digits"
    embedded = embedded_model(model_name)
    return embedded.data if embedded is not None else None


def held_out_or_sample_photos(model_name: str | None):
    """The images a view over many images uses for a model: its own data's held-out split, or the sample
    photographs for a model without data of its own (never another model's data)."""
    own = model_own_data(model_name)
    return load_dataset(own, split="heldout") if own else sample_photos_dataset()


def no_own_data_message(model_name: str) -> str:
    return (f"{model_name} has no training images of its own in nullviz (only the embedded models do: the digits "
            f"and the cluttered scenes are not its classes). Give it images of its own classes: an ImageFolder "
            f"(a folder, or a zip uploaded on the page), or CIFAR-10 with a new classifier head.")


def own_data(spec: str, model_name: str | None) -> str:
    """'default' means the data set the model was trained on: an embedded model's own (the digits, the
    cluttered model's scenes); any other spec is kept. A model without data of its own has no default: a
    :class:`DataError` says what to give instead (it used to get the digits, silently)."""
    if DataSpec.parse(spec).kind != "default":
        return spec
    own = model_own_data(model_name)
    if own is None:
        raise DataError(no_own_data_message(str(model_name)))
    return own


def load_dataset(spec: str, transform: Callable | None = None, split: str = "heldout"):
    """One split of a source with fixed splits ('default' is the digits'; an ImageFolder path: the folder
    itself). CIFAR-10 comes only as (train, held-out): :func:`train_heldout`."""
    parsed = DataSpec.parse(spec)
    return (DATA_SOURCES["digits"] if parsed.kind == "default" else parsed.source).held_out(parsed, transform, split)


#: Where a synthesis takes its images from, by key: the model's own training images, the sample photographs,
#: the current image alone. Pages show :func:`synthesis_source_label`.
SYNTHESIS_SOURCES = ("own", "photos", "current")
OWN_SOURCE, PHOTOS_SOURCE, ONE_IMAGE_SOURCE = SYNTHESIS_SOURCES
#: How the pages name the embedded data sets.
EMBEDDED_DATA_WORDS = {name: DATA_SOURCES[name].label for name in EMBEDDED_DATA}


def synthesis_sources(own: str | None = "digits") -> tuple[str, ...]:
    """The image sources to optimise a shared δ on, the first being the model's own training images if it has
    any (``own`` None: a model without data of its own starts from the sample photographs)."""
    return SYNTHESIS_SOURCES if own else SYNTHESIS_SOURCES[1:]


def synthesis_source_label(source: str, own: str | None = "digits") -> str:
    """What a page calls a synthesis source."""
    if source == OWN_SOURCE:
        return f"{EMBEDDED_DATA_WORDS.get(own, own)} (train split)"
    return {PHOTOS_SOURCE: "sample photos", ONE_IMAGE_SOURCE: "current image only"}.get(source, source)


def _own_images(own: str, split: str, n: int) -> list[Image.Image]:
    return list(load_dataset(own, None, split).images[:n])


#: Images a synthesis on the own data selects δ on (training images it is not fit on), and judges it on.
SYNTHESIS_VALIDATION_IMAGES = 256
SYNTHESIS_TEST_IMAGES = 256
#: The validation images are a fixed draw from the training split, the same for every synthesis seed.
VALIDATION_SEED = 12345


@dataclass(frozen=True)
class SynthesisSets:
    """Which images a synthesis uses for what. ``fit``: the pool δ's minibatches are drawn from;
    ``validation``: training images δ is never fit on, which decide when to stop and which δ to keep (None:
    the synthesis holds some of ``fit`` out itself, if there are enough); ``test``: images that neither δ nor
    any choice saw, which every verdict is about (None: the synthesis holds some of ``fit`` out).
    ``used`` says what each set is, in words."""

    fit: list[Image.Image]
    validation: list[Image.Image] | None
    test: list[Image.Image] | None
    used: dict[str, str]


def own_train_validation(own: str, n_validation: int = SYNTHESIS_VALIDATION_IMAGES) -> tuple[list, list]:
    """The own data's training split cut into the fit pool and a fixed validation draw (disjoint). The
    cluttered scenes validate on scenes of training photographs the pool leaves out (see
    ``cluttered.VALIDATION_BACKGROUNDS``); the digits on a seeded draw of training digits."""
    if own == "cluttered":
        return synthesis_fit_validation(n_validation)
    train = list(load_dataset(own, None, "train").images)
    n_val = min(n_validation, len(train) // 5)
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(train))
    val_idx = set(order[:n_val].tolist())
    return [im for i, im in enumerate(train) if i not in val_idx], [train[i] for i in sorted(val_idx)]


def synthesis_sets(source: str, current: Image.Image | None = None, own: str = "digits",
                   current_is_small: bool = True, n_test: int = SYNTHESIS_TEST_IMAGES) -> SynthesisSets:
    """The fit, validation and test images of a synthesis on ``source`` (one of :func:`synthesis_sources`).

    The own data: δ is fit on minibatches drawn from the whole training split except a fixed validation draw,
    and judged on the held-out split (digits: held-out digits; cluttered: held-out digits on photographs
    training never used). The sample photos and a single image are too few to hold much out: the result says
    what was held out, and gives no verdict on fewer unseen images than it needs."""
    sources = synthesis_sources(own)
    words = EMBEDDED_DATA_WORDS.get(own, own)
    if own and source == OWN_SOURCE:
        fit, val = own_train_validation(own)
        test = _own_images(own, "heldout", n_test)
        unseen = ("held-out digits on photographs training never used" if own == "cluttered"
                  else f"held-out {words}")
        if own == "cluttered":
            where = (f"training scenes on photographs the fit pool leaves out ({', '.join(VALIDATION_BACKGROUNDS)})")
            pool = f"{len(fit):,} training scenes (every training photograph but those {len(VALIDATION_BACKGROUNDS)})"
        else:
            where = f"other training {words} (a fixed draw)"
            pool = f"{len(fit):,} training {words} (the whole training split but the validation draw)"
        return SynthesisSets(fit, val, test, {
            "fit": f"{pool}, drawn as minibatches",
            "validation": f"{len(val)} {where}, never fit on: they decide when to stop and how large δ may be",
            "test": f"{len(test)} {unseen}: δ and every choice never saw them; the verdict is about these"})
    if source == PHOTOS_SOURCE:
        if current is None:
            fit = distinct_images(sample_image(name) for name in SAMPLE_PHOTOS)
            return SynthesisSets(fit, None, None, {"fit": f"the {len(fit)} sample photographs"})
        others = distinct_images((sample_image(name) for name in SAMPLE_PHOTOS), exclude=[current])
        also = "" if len(others) == len(SAMPLE_PHOTOS) else " other"  # the current image is one of them
        return SynthesisSets([current, *others], None, None,
                             {"fit": f"the current image and the {len(others)}{also} sample photographs"})
    if source == ONE_IMAGE_SOURCE:
        if current is None:
            raise DataError("No current image to synthesize on; pick or upload one first.")
        # the test images never include the current image itself (a sample digit is a held-out digit)
        if current_is_small and own:
            test = distinct_images(_own_images(own, "heldout", n_test + 1), exclude=[current])[:n_test]
            what = f"{len(test)} held-out {words}"
        else:
            test = distinct_images((sample_image(p) for p in SAMPLE_PHOTOS), exclude=[current])
            what = f"the {len(test)} sample photographs"
        return SynthesisSets([current], None, test, {"fit": "the current image alone",
                                                     "test": f"{what}, never the current image itself"})
    raise DataError(f"Unknown image source {source!r}; choose one of {', '.join(sources)}.")


# ------------------------------------------------------------------------------------ training data
def split_dataset(dataset, heldout_fraction: float = 0.1, seed: int = 0):
    """A fixed random train/held-out split of any data set (the paper holds out 10 %)."""
    n = len(dataset)
    n_held = max(1, int(round(n * heldout_fraction)))
    if n - n_held < 1:
        raise DataError(f"The data set has only {n} images; it needs at least 2 to split into train and held-out.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    train = torch.utils.data.Subset(dataset, sorted(order[n_held:]))
    held = torch.utils.data.Subset(dataset, sorted(order[:n_held]))
    train.classes = held.classes = getattr(dataset, "classes", None)
    return train, held


def cifar10(root: str | Path, transform: Callable | None = None):
    """CIFAR-10 (train, test) through torchvision; downloads once into ``root``."""
    from torchvision.datasets import CIFAR10

    try:
        return (CIFAR10(str(root), train=True, transform=transform, download=True),
                CIFAR10(str(root), train=False, transform=transform, download=True))
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise DataError(f"CIFAR-10 could not be downloaded into {str(root)!r} (no network? {exc}). Use the "
                        f"default digits or an ImageFolder directory instead.") from exc


def check_data_spec(spec: str) -> str:
    """Fail now, with the reason, for a data spec a job would only reject minutes later: 'default',
    'cifar10', or a folder with at least one class sub-folder (cheap: the folder is not scanned)."""
    parsed = DataSpec.parse(spec)
    if parsed.kind != "folder":
        return spec
    path = parsed.path
    if not path.is_dir():
        raise DataError(f"The data folder {str(path)!r} does not exist or is not a directory.")
    if not any(child.is_dir() for child in path.iterdir()):
        raise DataError(f"{str(path)!r} is not an ImageFolder: it needs one sub-folder of images per class.")
    return spec


def train_heldout(spec: str, transform: Callable | None = None, cache_dir: str | Path = "data",
                  train_transform: Callable | None = None):
    """(train, held-out) of any source: the embedded sets' fixed splits ('default' is the digits'), CIFAR-10's,
    or an ImageFolder's seeded 90/10 split. ``train_transform`` (e.g. the model's timm training augmentation)
    replaces ``transform`` for the training part only."""
    parsed = DataSpec.parse(spec)
    source = DATA_SOURCES["digits"] if parsed.kind == "default" else parsed.source
    if train_transform is not None:
        check_augmentable(spec)
    return source.splits(parsed, transform, train_transform, Path(cache_dir))


def check_augmentable(spec: str) -> None:
    """Training augmentation (random crops, flips) is for natural images: the embedded digits and scenes are
    fixed images at the model's size. Raises :class:`DataError` for them, before any job starts."""
    parsed = DataSpec.parse(spec)
    source = DATA_SOURCES["digits"] if parsed.kind == "default" else parsed.source
    if source.embedded:
        raise DataError(f"Training augmentation is for natural images (an ImageFolder, CIFAR-10); {source.label} "
                        f"come as fixed images at the model's size — train on them without augmentation.")


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def extract_image_folder_zip(data: bytes, dest: str | Path, max_bytes: int = 1024 * 2**20, max_files: int = 50_000,
                             max_image_pixels: int | None = None) -> Path:
    """Unpack an uploaded zip of an ImageFolder into ``dest`` and return the folder that holds the classes.

    Only image members are unpacked (and counted): anything else in the zip is never written. Everything is
    checked before a byte is written: every member's path must stay inside ``dest``
    (``Path.is_relative_to``, not a string prefix), no links, at most ``max_files`` members, a declared
    total of at most ``max_bytes``, and every image's declared size within ``max_image_pixels`` (read from
    its header). The copy then counts the real bytes too, so a zip that lies about its sizes stops at the
    limit and leaves nothing behind.
    """
    import zipfile

    from nullviz.core.archives import unpack_zip

    max_pixels = MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels

    def image_size_ok(zf: zipfile.ZipFile, m: zipfile.ZipInfo) -> None:
        if Path(m.filename).suffix.lower() not in _IMAGE_SUFFIXES:
            return
        try:
            with zf.open(m) as f, Image.open(f) as img:
                w, h = img.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return  # ImageFolder skips or reports unreadable files later
        if w * h > max_pixels:
            raise UploadTooLargeError(f"{m.filename!r} is {w}×{h} pixels, more than the {max_pixels:,} "
                                      f"allowed per image.")
        try:
            check_aspect_ratio(w, h)
        except ImageLoadError as exc:
            raise DataError(f"{m.filename!r}: {exc}") from exc

    def is_image(name: str) -> bool:
        return Path(name).suffix.lower() in _IMAGE_SUFFIXES and not any(
            part.startswith(".") or part == "__MACOSX" for part in Path(name).parts)

    root = unpack_zip(data, dest, max_bytes=max_bytes, max_files=max_files, keep=is_image, check=image_size_ok).resolve()
    if not any(root.iterdir()):
        raise DataError("The zip holds no images (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM or PGM); zip one folder of "
                        "images per class.")
    entries = [p for p in root.iterdir() if not p.name.startswith(("__MACOSX", "."))]
    if len(entries) == 1 and entries[0].is_dir() and any(c.is_dir() for c in entries[0].iterdir()):
        return entries[0]  # zip of a single top folder that holds the classes
    return root
