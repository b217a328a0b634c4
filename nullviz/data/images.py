"""Single images: the sample photographs that ship with scikit-image, sample digits and scenes, and
uploads and files (checked against decompression bombs), all as PIL RGB images."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nullviz.core.errors import ImageLoadError

from .digits import ImageListDataset, digits_split
from .scenes import fixed_scenes


#: Pixel budget for uploads (a 12k × 12k photo is 144 MP): protects the app against decompression bombs.
MAX_IMAGE_PIXELS = 50_000_000
#: The longest side an upload keeps: larger images are downscaled right after decoding (JPEG decodes at a reduced
#: scale directly), before any transform. Every model here takes ≤ 518 px, so nothing is lost for the model.
MAX_IMAGE_SIDE = 2048
#: The most elongated image accepted (long side ÷ short side). A model's resize scales the short side to its input
#: size, so a 1×60,000 strip would become 224×13,440,000 pixels: such images are refused before decoding.
MAX_ASPECT_RATIO = 10.0
#: Where :func:`load_image_bytes` notes the size an image was downscaled from (``image.info``).
DOWNSCALED_FROM = "nullviz_downscaled_from"

#: Sample photographs that ship inside scikit-image (name -> skimage.data function name), distinct by content:
#: ``skimage.data.cat`` is ``chelsea`` again, pixel for pixel, so it is not one of them (a held-out split that held
#: one copy out and fit on the other would judge δ on an image it was fit on).
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry")


def image_digest(image: Image.Image) -> str:
    """What an image is, by content: a digest of its mode, size and pixels (names and files do not matter)."""
    import hashlib

    digest = hashlib.blake2b(f"{image.mode}|{image.size}|".encode(), digest_size=16)
    digest.update(image.tobytes())
    return digest.hexdigest()


def distinct_images(images, exclude=()) -> list[Image.Image]:
    """``images`` without repeats by content (the first of each kept, in order) and without any image whose
    content is among ``exclude``: how sets of images stay disjoint whatever their names."""
    seen = {image_digest(im) for im in exclude}
    out = []
    for im in images:
        key = image_digest(im)
        if key not in seen:
            seen.add(key)
            out.append(im)
    return out


def sample_photos_dataset(transform: Callable | None = None) -> ImageListDataset:
    """The sample photographs as an unlabelled set (label −1): the images a model without data of its own is
    shown on, for measures that need no labels (attention statistics)."""
    return ImageListDataset([sample_image(name) for name in SAMPLE_PHOTOS], [-1] * len(SAMPLE_PHOTOS),
                            ["unlabelled"], transform)


# ------------------------------------------------------------------------------------------- samples
def sample_image_names() -> list[str]:
    """Names of the sample images: scikit-image photographs, then a few held-out digits."""
    return [*SAMPLE_PHOTOS, *(f"digit-{i}" for i in range(10)), *(f"scene-{i}" for i in range(10))]


def sample_image(name: str) -> Image.Image:
    """A sample photograph from scikit-image (``'chelsea'``…), a held-out digit (``'digit-3'``) or a held-out
    cluttered scene (``'scene-3'``: a 3 on a photograph, the cluttered model's own kind of image)."""
    if name.startswith("digit-"):
        try:
            wanted = int(name.split("-", 1)[1])
        except ValueError:
            wanted = -1
        if wanted not in range(10):
            raise ImageLoadError(f"Unknown sample {name!r}: digits are 'digit-0' … 'digit-9'.")
        images, labels = digits_split("heldout")
        return images[labels.index(wanted)]
    if name.startswith("scene-"):
        wanted = name.split("-", 1)[1]
        if wanted not in [str(i) for i in range(10)]:
            raise ImageLoadError(f"Unknown sample {name!r}: cluttered scenes are 'scene-0' … 'scene-9'.")
        scenes = fixed_scenes("heldout")
        first = int((scenes.labels == int(wanted)).nonzero()[0])
        return scenes.image(first)
    if name not in SAMPLE_PHOTOS:
        raise ImageLoadError(f"Unknown sample {name!r}; choose one of {', '.join(sample_image_names())}.")
    import skimage.data

    arr = getattr(skimage.data, name)()
    return _array_to_rgb(arr)


def _array_to_rgb(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        arr = (255 * (arr - arr.min()) / max(arr.max() - arr.min(), 1e-12)).round().astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    return Image.fromarray(arr[..., :3])


# ------------------------------------------------------------------------------------------- uploads
def load_image_bytes(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an uploaded image into an RGB PIL image.

    Applies EXIF orientation, converts grayscale / RGBA (onto white) / palette / CMYK / 16-bit to 8-bit
    RGB, refuses images over ``max_pixels`` or more elongated than :data:`MAX_ASPECT_RATIO` before decoding them
    (decompression bombs, strips that explode in a resize), downscales images whose long side passes
    :data:`MAX_IMAGE_SIDE` (``image.info[DOWNSCALED_FROM]`` then holds the original size, see
    :func:`downscale_note`), and turns every decoding failure into :class:`ImageLoadError` with a reason a user
    understands.
    """
    if not data:
        raise ImageLoadError("The file is empty (0 bytes); upload a PNG, JPEG, BMP, GIF, TIFF or WebP image.")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageLoadError("The file is not an image this tool can read; upload a PNG, JPEG, BMP, GIF, "
                             "TIFF or WebP image.") from exc
    except Image.DecompressionBombError as exc:  # PIL refuses > 2× its own limit already while opening
        import re

        size = re.search(r"\((\d+) pixels\)", str(exc))  # PIL names the size, and its own limit (not ours)
        count = f"{int(size.group(1)):,} pixels" if size else "too many pixels to open safely"
        raise ImageLoadError(f"The image has {count}, more than the {max_pixels:,} allowed; downscale it "
                             f"first.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"The image could not be decoded (truncated or corrupt file: {exc}).") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageLoadError(f"The image is {width}×{height} = {width * height:,} pixels, more than the "
                             f"{max_pixels:,} allowed; downscale it first.")
    check_aspect_ratio(width, height)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if max(width, height) > MAX_IMAGE_SIDE:
                img.draft("RGB", _fit((width, height), MAX_IMAGE_SIDE))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
            img.load()
        if max(img.size) > MAX_IMAGE_SIDE:  # shrink first, in the image's own mode: converting or turning the
            try:                             # full-size image first would copy all of its pixels
                img.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
            except ValueError:  # a mode PIL cannot resample: convert, then shrink
                img = _to_rgb(img)
                img.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
        rgb = _to_rgb(img)
        if max(width, height) > MAX_IMAGE_SIDE:
            rgb.info[DOWNSCALED_FROM] = (width, height)
        return rgb
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageLoadError(f"The image could not be decoded (truncated or corrupt file: {exc}).") from exc


def check_aspect_ratio(width: int, height: int) -> None:
    """Refuse an image more elongated than :data:`MAX_ASPECT_RATIO` (from its header, before decoding)."""
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        ratio = max(width, height) / max(1, min(width, height))
        raise ImageLoadError(f"The image is {width:,}×{height:,} pixels ({ratio:,.0f}:1); images up to "
                             f"{MAX_ASPECT_RATIO:g}:1 are accepted (a model scales the short side up to its input "
                             f"size): crop it first.")


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def downscale_note(image: Image.Image) -> str | None:
    """One sentence saying an upload was downscaled, and from what size (None if it was not)."""
    original = image.info.get(DOWNSCALED_FROM)
    if not original:
        return None
    return (f"Downscaled from {original[0]:,}×{original[1]:,} to {image.width:,}×{image.height:,} pixels (at most "
            f"{MAX_IMAGE_SIDE:,} on the long side) before anything else.")


def load_image_file(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Like :func:`load_image_bytes`, from a path."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"The image file {str(path)!r} does not exist.")
    return load_image_bytes(path.read_bytes(), max_pixels)


def _to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        return _array_to_rgb(arr)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class LabelledImage:
    """An image with a display name, for pages and the command line."""

    name: str
    image: Image.Image


def resolve_image(spec: str | None) -> LabelledImage:
    """``None``/'sample' → the first sample; a sample name; or a path to an image file."""
    if spec in (None, "", "sample"):
        spec = SAMPLE_PHOTOS[1]
    if spec in sample_image_names():
        return LabelledImage(spec, sample_image(spec))
    return LabelledImage(Path(spec).name, load_image_file(spec))
