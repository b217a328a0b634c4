"""The embedded models nullviz ships: the digits and cluttered-digits ViTs (weights under ``assets/``),
registered with timm so every timm path knows their names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer


ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEFAULT_MODEL_DIR = ASSETS / "default_model"
DEFAULT_MODEL_NAME = "nullviz_digits_vit"

#: Architecture of the embedded default: 32×32 RGB digits, 8×8 patches (3·8² = 192 inputs) embedded in
#: D = 96 dimensions, so the patch embedding has a nullspace of dimension ≥ 96 (like ViT-Ti/16's 576).
DEFAULT_ARCH: dict[str, Any] = dict(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=96,
                                    depth=4, num_heads=4, mlp_ratio=2.0, global_pool="token")
DEFAULT_DATA_CONFIG: dict[str, Any] = dict(input_size=(3, 32, 32), interpolation="bicubic",
                                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0,
                                           crop_mode="center")


#: The second embedded model, made for looking at attention: 64×64 cluttered digits (``nullviz.data.scenes``),
#: 8×8 patches → an 8×8 token grid, 3·8² = 192 inputs embedded in D = 96 (nullity ≥ 96).
CLUTTERED_MODEL_NAME = "nullviz_cluttered_vit"
CLUTTERED_MODEL_DIR = ASSETS / "cluttered_model"
CLUTTERED_ARCH: dict[str, Any] = dict(img_size=64, patch_size=8, in_chans=3, num_classes=10, embed_dim=96,
                                      depth=6, num_heads=4, mlp_ratio=2.0, global_pool="token")
CLUTTERED_DATA_CONFIG: dict[str, Any] = {**DEFAULT_DATA_CONFIG, "input_size": (3, 64, 64)}


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships with nullviz: its weights folder, architecture, data config and own data set."""

    name: str
    directory: Path
    arch: dict[str, Any]
    data_config: dict[str, Any]
    data: str  # the data spec of the set it was trained on ('digits', 'cluttered'): 'default' data means this
    aliases: tuple[str, ...]
    description: str
    sample: str  # the sample image a page opens with: the model's own kind of image
    class_names: tuple[str, ...] = tuple(str(i) for i in range(10))

    @property
    def short_name(self) -> str:
        """The name users type and settings store ('digits', 'cluttered'): the last alias."""
        return self.aliases[-1]

    @property
    def synthesis_defaults(self) -> dict[str, Any]:
        """The approximate-nullspace settings measured for this model (its ``config.json``'s "synthesis":
        chosen on validation images by ``bench/bench_frontier.py``); empty when none were recorded."""
        path = self.directory / "config.json"
        if not path.is_file():
            return {}
        return dict(json.loads(path.read_text()).get("synthesis", {}).get("config", {}))


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL_NAME: EmbeddedModel(DEFAULT_MODEL_NAME, DEFAULT_MODEL_DIR, DEFAULT_ARCH, DEFAULT_DATA_CONFIG,
                                      "digits", ("default", "digits"),
                                      "32×32 digits, 4×4 tokens: the fastest", "digit-3"),
    CLUTTERED_MODEL_NAME: EmbeddedModel(CLUTTERED_MODEL_NAME, CLUTTERED_MODEL_DIR, CLUTTERED_ARCH,
                                        CLUTTERED_DATA_CONFIG, "cluttered", ("cluttered",),
                                        "64×64 digits on photos, 8×8 tokens: for attention",
                                        "scene-3"),
}


def embedded_model(name: str | None) -> EmbeddedModel | None:
    """The embedded model a name or alias means, else None."""
    if name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name]
    return next((m for m in EMBEDDED_MODELS.values() if name in m.aliases), None)


def _build_embedded(spec: EmbeddedModel, pretrained: bool, **kwargs) -> VisionTransformer:
    args = {**spec.arch, **kwargs}
    model = VisionTransformer(**args)
    model.pretrained_cfg = {**spec.data_config, "num_classes": args["num_classes"], "architecture": spec.name}
    if pretrained:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(spec.directory / "model.safetensors")))
    return model


@register_model
def nullviz_digits_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """nullviz's embedded digits ViT (registered with timm so every timm path knows the name)."""
    return _build_embedded(EMBEDDED_MODELS[DEFAULT_MODEL_NAME], pretrained, **kwargs)


@register_model
def nullviz_cluttered_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """nullviz's embedded cluttered-digits ViT (8×8 token grid), registered with timm."""
    return _build_embedded(EMBEDDED_MODELS[CLUTTERED_MODEL_NAME], pretrained, **kwargs)
