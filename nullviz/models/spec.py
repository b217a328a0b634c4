"""Which model: the one typed value pages, jobs and the command line pass around (a job's parameters file
stores it as a plain dict; :meth:`ModelSpec.from_dict` reads it back, checked)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from nullviz.core.errors import InvalidParameterError

from .loaded import LoadedModel
from .loading import load_model


@dataclass(frozen=True)
class ModelSpec:
    """An embedded model's name or a timm architecture, an optional local checkpoint, a device ("auto",
    "cpu", "cuda", "cuda:1"…). ``load()`` gives the model; the app caches one per spec (device resolved)."""

    name: str = "default"
    checkpoint: str | None = None
    device: str = "auto"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidParameterError("name", "ModelSpec", "a model name (an embedded model or a timm architecture)",
                                        self.name)
        if self.checkpoint is not None and (not isinstance(self.checkpoint, str) or not self.checkpoint.strip()):
            raise InvalidParameterError("checkpoint", "ModelSpec", "None or the path of a checkpoint file",
                                        self.checkpoint)
        if not isinstance(self.device, str) or not self.device:
            raise InvalidParameterError("device", "ModelSpec", "a device name such as 'auto', 'cpu' or 'cuda'",
                                        self.device)

    @classmethod
    def of(cls, lm: LoadedModel) -> "ModelSpec":
        """The spec that loads ``lm`` again (on the device it is on)."""
        return cls(lm.name, lm.checkpoint, str(lm.device))

    @classmethod
    def from_dict(cls, d: Any) -> "ModelSpec":
        """From ``to_dict``'s form (missing keys take their defaults; unknown keys are refused)."""
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict):
            raise InvalidParameterError("model", "ModelSpec", "a dict with name, checkpoint and device", d)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidParameterError("model", "ModelSpec", "only the keys name, checkpoint and device",
                                        sorted(unknown))
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load(self) -> LoadedModel:
        return load_model(self.name, checkpoint=self.checkpoint, device=self.device)
