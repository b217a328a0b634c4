"""The nullviz noise file: one format for every δ nullviz saves and reads (a page's download, ``nullviz
synthesize --out`` / ``nullviz nullspace --out``, a finetuning run's δ) — a ``torch.save`` of
``{"delta", "meta", "format"}``, read back with ``weights_only=True`` (tensors and plain data only: an upload
cannot run code). ``meta["level"]`` says where δ is added: ``"input"`` (pixels, [C, H, W]) or ``"encoder"``
(patch tokens, [N, D]).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nullviz.core.atomic import write_bytes_atomic
from nullviz.core.errors import NoiseFileError


NOISE_FORMAT = "nullviz-noise-1"
#: Where a δ is added: to the patch tokens ([N, D]) or to the normalised pixels ([C, H, W]).
LEVELS = ("encoder", "input")


def noise_bytes(delta: torch.Tensor, meta: dict[str, Any]) -> bytes:
    """δ and its metadata (plain data; it must say its ``level``) as the bytes of a noise file."""
    if meta.get("level") not in LEVELS:
        raise NoiseFileError(f"A noise file needs its level ({' or '.join(LEVELS)}); got {meta.get('level')!r}.")
    buf = io.BytesIO()
    torch.save({"delta": delta.detach().cpu().contiguous(), "meta": dict(meta), "format": NOISE_FORMAT}, buf)
    return buf.getvalue()


def save_noise(path: str | Path, delta: torch.Tensor, meta: dict[str, Any]) -> Path:
    """Write a noise file (atomically: a reader never sees half of one)."""
    path = Path(path)
    write_bytes_atomic(path, noise_bytes(delta, meta))
    return path


@dataclass
class Noise:
    """A δ and what it is: where it is added (``level``), its kind (a :data:`nullviz.noise.kinds.NOISE_KINDS`
    name) and the plain metadata it was made or saved with. The one value a noise file holds and the pages hand
    each other (the Nullspace page's noise on the Attention page); ``made_for`` names the model it fits,
    ``synthesis`` keeps an approximate δ's full :class:`~nullviz.noise.approximate.SynthesisResult` while it is
    in memory (a file keeps its summary in ``meta``), and ``given_images`` the images that synthesis was given
    (a reference, often to a cached pool), so that whether any later image was fit on is answered by content
    (``synthesis.was_fit_on``)."""

    delta: torch.Tensor
    level: str
    kind: str = "approximate"
    meta: dict[str, Any] = field(default_factory=dict)
    made_for: str | None = None
    synthesis: Any = None
    given_images: torch.Tensor | None = None

    def __post_init__(self):
        if self.level not in LEVELS:
            raise NoiseFileError(f"Noise is added at the {' or the '.join(LEVELS)} level; got {self.level!r}.")

    def to_bytes(self) -> bytes:
        return noise_bytes(self.delta, {**self.meta, "level": self.level, "kind": self.kind})

    def save(self, path: str | Path) -> Path:
        return save_noise(path, self.delta, {**self.meta, "level": self.level, "kind": self.kind})


def load_noise(path: str | Path) -> Noise:
    """Read a δ saved by :func:`save_noise` (the Nullspace page's download, ``--out`` of the command line)."""
    path = Path(path)
    if not path.is_file():
        raise NoiseFileError(f"The noise file {str(path)!r} does not exist.")
    return load_noise_bytes(path.read_bytes(), path.name)


def load_noise_bytes(data: bytes, name: str) -> Noise:
    """:func:`load_noise` for an upload: the file's bytes and the name the user knows it by (messages use
    that name, never a temporary file's). Loaded with ``weights_only=True``: tensors and plain data only."""
    import pickle
    import zipfile

    label = Path(name).name
    if not data:
        raise NoiseFileError(f"{label!r} is empty (0 bytes); upload a .pt noise file saved by nullviz.")
    not_torch = (f"{label!r} is not a nullviz noise file: it is not a PyTorch file (save noise with nullviz's "
                 f"download button or --out).")
    if not data.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip; old torch a raw pickle
        raise NoiseFileError(not_torch)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as exc:
        raise NoiseFileError(not_torch) from exc
    except Exception as exc:  # noqa: BLE001 — torch raises many types for foreign or damaged files
        raise NoiseFileError(f"{label!r} is not a nullviz noise file: it could not be read as one "
                             f"({type(exc).__name__}).") from exc
    if isinstance(obj, torch.Tensor):  # a bare input-space tensor (what ``nullviz nullspace --out`` wrote before 0.1)
        return Noise(obj.float(), "input", "exact", {"level": "input", "kind": "exact"})
    if not isinstance(obj, dict) or not isinstance(obj.get("delta"), torch.Tensor):
        raise NoiseFileError(f"{label!r} holds no 'delta' tensor; save noise with nullviz first.")
    meta = dict(obj.get("meta") or {})
    level = meta.get("level", "input" if obj["delta"].dim() == 3 else "encoder")
    if level not in LEVELS:
        raise NoiseFileError(f"{label!r} says its noise is added at the {level!r} level; nullviz knows "
                             f"{' and '.join(LEVELS)}.")
    return Noise(obj["delta"].float(), level, str(meta.get("kind", "approximate")), meta)
