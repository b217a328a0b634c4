"""A Hugging Face model folder uploaded as a zip (what ``save_pretrained`` writes: ``config.json``,
``model.safetensors``, optionally ``preprocessor_config.json``), unpacked safely for :func:`.load_model` as
``hf:<folder>``. Only ``.json`` and ``.safetensors`` members are unpacked: no pickles, no code."""

from __future__ import annotations

from pathlib import Path

from nullviz.core.archives import unpack_zip
from nullviz.core.errors import CheckpointError

MODEL_FOLDER_SUFFIXES = (".json", ".safetensors")


def _kept(name: str) -> bool:
    parts = Path(name).parts
    return (Path(name).suffix.lower() in MODEL_FOLDER_SUFFIXES
            and not any(p.startswith(".") or p == "__MACOSX" for p in parts))


def unpack_model_folder_zip(data: bytes, dest: str | Path, *, max_bytes: int, max_files: int = 64) -> Path:
    """Unpack a zipped model folder into ``dest``; returns the folder that holds its ``config.json`` (at the
    zip's top or in one folder below). A :class:`CheckpointError` names what is missing."""
    dest = unpack_zip(data, dest, max_bytes=max_bytes, max_files=max_files, keep=_kept)
    configs = sorted(dest.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise CheckpointError("The zip holds no config.json: zip the folder that save_pretrained wrote "
                              "(config.json and model.safetensors).")
    folder = configs[0].parent
    if not any(folder.glob("*.safetensors")):
        raise CheckpointError("The zipped model folder holds no .safetensors weights beside its config.json "
                              "(save it with save_pretrained(..., safe_serialization=True)).")
    return folder
