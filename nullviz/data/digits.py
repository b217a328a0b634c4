"""The embedded digits: scikit-learn's 8×8 handwritten digits as 32-px RGB images, on a fixed train/held-out
split (the default model never saw the held-out part), and the list data set both embedded sets use."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from nullviz.core.errors import DataError

#: Fixed split of the embedded digits data set; the default model never saw the held-out part.
DIGITS_SPLIT_SEED = 0
DIGITS_HELDOUT_FRACTION = 0.2
DIGITS_CLASS_NAMES = tuple(str(i) for i in range(10))


# --------------------------------------------------------------------------------------------- digits
def _digit_to_image(pixels: np.ndarray) -> Image.Image:
    """sklearn digits are 8×8 arrays with values 0..16; make them 8-bit RGB PIL images."""
    arr = np.clip(np.asarray(pixels, dtype=np.float64) * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return Image.fromarray(arr.reshape(8, 8), mode="L").convert("RGB")


def digits_indices(split: str) -> np.ndarray:
    """Sorted indices into scikit-learn's digits of ``split`` ('train', 'heldout' or 'all'): the fixed split."""
    if split not in ("train", "heldout", "all"):
        raise DataError(f"The digits split must be 'train', 'heldout' or 'all'. Got {split!r} instead.")
    n = 1797  # len(load_digits().target), fixed by scikit-learn
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(n)
    n_heldout = int(round(n * DIGITS_HELDOUT_FRACTION))
    if split == "heldout":
        return np.sort(order[:n_heldout])
    if split == "train":
        return np.sort(order[n_heldout:])
    return np.arange(n)


def digits_split(split: str) -> tuple[list[Image.Image], list[int]]:
    """The digits images and labels of ``split`` ('train', 'heldout' or 'all'), with the fixed split."""
    from sklearn.datasets import load_digits

    idx = digits_indices(split)
    digits = load_digits()
    images = [_digit_to_image(digits.images[i]) for i in idx]
    return images, [int(digits.target[i]) for i in idx]


class ImageListDataset(torch.utils.data.Dataset):
    """A list of PIL images and integer labels, with an optional transform (timm's, usually)."""

    def __init__(self, images: Sequence[Image.Image], labels: Sequence[int], class_names: Sequence[str],
                 transform: Callable | None = None):
        if len(images) != len(labels):
            raise DataError(f"Got {len(images)} images but {len(labels)} labels; they must match.")
        self.images, self.labels = list(images), list(labels)
        self.classes = list(class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.labels[i]


def digits_dataset(split: str = "heldout", transform: Callable | None = None) -> ImageListDataset:
    """The embedded default data set (scikit-learn's handwritten digits as RGB images)."""
    images, labels = digits_split(split)
    return ImageListDataset(images, labels, DIGITS_CLASS_NAMES, transform)
