"""Hugging Face ``transformers`` ViTs, converted once into the timm ``VisionTransformer`` nullviz works on.

Supported: ``ViTForImageClassification`` (google/vit-*, the non-distilled facebook/deit-*-patch16-224, finetuned
ViTs) and ``ViTModel`` backbones (DINO, facebook/dino-vit*: no classifier, the CLS token after the final norm is
the output), by hub name or local folder: ``hf:google/vit-base-patch16-224`` or ``hf:/path/to/folder``. Their
patch embedding is the same linear map (a p×p convolution with stride p), so the weights map one to one: the
query/key/value projections concatenated into timm's ``qkv``, the two LayerNorms with the model's own ε. Other
architectures (distilled DeiT with its distillation token, DINOv2 with layer scale, BEiT, Swin …) are refused
by name. The image processor's mean, std and size become the data config (resize to the size, no crop: what
``ViTImageProcessor`` does); ``id2label`` gives the class names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from nullviz.core.errors import CheckpointError, ModelNotFoundError, PretrainedWeightsUnavailableError, UnsupportedModelError

from .budget import check_param_budget, count_params_on_meta

PREFIX = "hf:"
SUPPORTED = ("ViTForImageClassification", "ViTModel")


def is_hf_name(name: str | None) -> bool:
    return bool(name) and str(name).startswith(PREFIX)


#: A Hugging Face hub id: ``name`` or ``owner/name``, letters, digits, ``-_.``, no ``..``, not starting with ``.``.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")


def is_hub_id(ident: str) -> bool:
    """Whether ``ident`` (after ``hf:``) has the form of a hub id rather than of a folder: what a shared server
    fetches from the hub, and how a model's label is chosen."""
    return bool(_HUB_ID.match(ident)) and ".." not in ident and not ident.endswith(".")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _cache_else_hub(fetch, misses: tuple, offline: str, failed: str):
    """``fetch(local_files_only=True)``; on a cache miss (``misses``), unless HF_HUB_OFFLINE is set (then
    ``offline`` as the error), ``fetch()`` from the hub, whose failure is one explained error (``failed``, with
    ``{kind}`` for the exception's type): the one path from the local cache to the hub."""
    try:
        return fetch(local_files_only=True)
    except misses:
        pass
    if _hub_offline():
        raise PretrainedWeightsUnavailableError(offline)
    try:
        return fetch()
    except Exception as exc:  # noqa: BLE001 — any hub/network failure becomes one explained error
        raise PretrainedWeightsUnavailableError(failed.format(kind=type(exc).__name__)) from exc


def _from_pretrained(cls, ident: str, **kwargs):
    """The local folder, else the local Hugging Face cache (offline, whatever HF_HUB_OFFLINE says), else the hub;
    a failure of the last is one explained error."""
    if not Path(ident).is_dir() and not is_hub_id(ident):  # a path, not an id: never sent to the hub as one
        raise ModelNotFoundError(f"No Hugging Face model folder at {ident!r}: hf:/path/to/folder must be a folder "
                                 f"with config.json and model.safetensors (as save_pretrained writes them); a hub "
                                 f"model is hf:owner/name.")
    if Path(ident).is_dir():
        try:
            return cls.from_pretrained(ident, **kwargs)
        except Exception as exc:  # noqa: BLE001 — transformers raises many kinds; the message names the folder only
            raise CheckpointError(f"The model folder {Path(ident).name!r} could not be read as a Hugging Face "
                                  f"ViT ({type(exc).__name__}): it needs config.json and model.safetensors as "
                                  f"save_pretrained writes them.") from exc
    return _cache_else_hub(
        lambda **more: cls.from_pretrained(ident, **kwargs, **more), (OSError, ValueError),
        f"{ident!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it once with network "
        f"(`huggingface-cli download {ident}`), or give a local folder as hf:/path/to/folder.",
        f"Could not fetch {ident!r} from the Hugging Face hub ({{kind}}). Without network, put it in the local cache "
        f"first or give a local folder as hf:/path/to/folder.")


def _hub_snapshot(ident: str, patterns: list[str]) -> str:
    """The local snapshot folder of hub repo ``ident`` holding ``patterns`` (from the cache if it is there, else
    downloaded): the hub-only path, which never reads ``ident`` as a folder on this machine."""
    from huggingface_hub import snapshot_download

    return _cache_else_hub(
        lambda **more: snapshot_download(ident, allow_patterns=patterns, **more), (Exception,),
        f"{ident!r} is not in this server's Hugging Face cache and it is offline: ask whoever runs it to download "
        f"it once (`huggingface-cli download {ident}`).",
        f"Could not fetch {ident!r} from the Hugging Face hub ({{kind}}). Check the id, or upload the model instead.")


def _timm_kwargs(cfg, has_head: bool) -> dict[str, Any]:
    """timm VisionTransformer kwargs of a transformers ViT config."""
    return dict(img_size=int(cfg.image_size), patch_size=int(cfg.patch_size), in_chans=int(cfg.num_channels),
                embed_dim=int(cfg.hidden_size), depth=int(cfg.num_hidden_layers), num_heads=int(cfg.num_attention_heads),
                mlp_ratio=cfg.intermediate_size / cfg.hidden_size, qkv_bias=bool(cfg.qkv_bias),
                num_classes=int(cfg.num_labels) if has_head else 0, global_pool="token")


def _quiet_transformers() -> None:
    """transformers prints a progress bar for every load and a table of mismatched weights before raising: on a
    command line that put two screens before nullviz's one-line error. nullviz says what went wrong itself, so
    transformers' progress bars and warnings are off once a Hugging Face model is loaded (errors still show)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_hf(name: str, *, local_folders: bool = True, max_params: int | None = None
            ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The transformers model ``hf:<hub id or folder>`` and its image processor's settings.

    ``local_folders=False`` (a shared server): ``name`` is a hub id only, resolved through the hub's cache or a
    download, never as a folder on this machine (transformers would read ``hf:assets/..`` from the disk).
    ``max_params``: the architecture its config describes is counted on the meta device first and refused
    (:class:`ModelTooLargeError`) above it, before its weights are read or fetched."""
    try:
        from transformers import AutoConfig
    except ImportError as exc:  # pragma: no cover — a runtime requirement
        raise UnsupportedModelError("Hugging Face models need the 'transformers' package.") from exc
    ident = name[len(PREFIX):] if is_hf_name(name) else name
    if not ident:
        raise ModelNotFoundError("Give a Hugging Face model as hf:<hub id> or hf:/path/to/folder.")
    _quiet_transformers()
    source = ident if local_folders else _hub_snapshot(ident, ["config.json", "preprocessor_config.json"])
    config = _from_pretrained(AutoConfig, source)
    arch = (config.architectures or ["ViTModel" if config.model_type == "vit" else config.model_type])[0]
    if config.model_type != "vit" or arch not in SUPPORTED:
        raise UnsupportedModelError(
            f"{Path(ident).name or ident!r} is a {arch} ({config.model_type}); nullviz converts {', '.join(SUPPORTED)} "
            f"(ViT, the non-distilled DeiT, DINO) into timm. Distilled DeiT, DINOv2, BEiT, Swin and others are not "
            f"supported.")
    if max_params is not None:
        kwargs = _timm_kwargs(config, arch == "ViTForImageClassification")
        check_param_budget(count_params_on_meta(lambda: build(kwargs, 1e-12)), max_params, Path(ident).name or ident)
    if not local_folders:
        source = _hub_snapshot(ident, ["*.json", "*.safetensors"])
    import transformers

    model = _from_pretrained(getattr(transformers, arch), source)
    processor: dict[str, Any] = {}
    try:
        from transformers import AutoImageProcessor

        proc = _from_pretrained(AutoImageProcessor, source)
        processor = {"mean": tuple(proc.image_mean), "std": tuple(proc.image_std)}
    except (OSError, ValueError, PretrainedWeightsUnavailableError, CheckpointError):
        processor = {}  # no preprocessor_config.json: ViT's own defaults below
    return model.eval(), processor


def convert(hf_model: torch.nn.Module, processor: dict[str, Any] | None = None
            ) -> tuple[VisionTransformer, dict[str, Any], dict[str, Any], list[str]]:
    """A timm VisionTransformer with ``hf_model``'s weights; its build kwargs (with the LayerNorm ε), data config
    and class names. Logits (or, for a backbone, the CLS features) equal the original's."""
    cfg = hf_model.config
    if cfg.hidden_act not in ("gelu",):
        raise UnsupportedModelError(f"activation {cfg.hidden_act!r}: nullviz converts ViTs with exact GELU")
    has_head = hasattr(hf_model, "classifier")
    kwargs = _timm_kwargs(cfg, has_head)
    model = build(kwargs, float(cfg.layer_norm_eps))
    model.load_state_dict(_mapped_state(hf_model.state_dict(), kwargs["depth"], has_head))
    processor = processor or {}
    data_config = {"input_size": (kwargs["in_chans"], kwargs["img_size"], kwargs["img_size"]),
                   "mean": tuple(float(v) for v in processor.get("mean", (0.5, 0.5, 0.5))),
                   "std": tuple(float(v) for v in processor.get("std", (0.5, 0.5, 0.5))),
                   "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    names = [str(cfg.id2label[i]) for i in range(kwargs["num_classes"])] if has_head else []
    return model, {**kwargs, "layer_norm_eps": float(cfg.layer_norm_eps)}, data_config, names


def build(kwargs: dict[str, Any], layer_norm_eps: float) -> VisionTransformer:
    """A timm VisionTransformer of these kwargs whose LayerNorms use ``layer_norm_eps`` (transformers' ViT: 1e-12)."""
    model = VisionTransformer(**{k: v for k, v in kwargs.items() if k != "layer_norm_eps"})
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = layer_norm_eps
    return model


def _mapped_state(state: dict[str, torch.Tensor], depth: int, has_head: bool) -> dict[str, torch.Tensor]:
    """transformers' names (v5: ``vit.layers.N.attention.q_proj``; v4: ``vit.encoder.layer.N.attention.attention.
    query``) → timm's."""
    pre = "vit." if any(k.startswith("vit.") for k in state) else ""
    out = {"cls_token": state[f"{pre}embeddings.cls_token"], "pos_embed": state[f"{pre}embeddings.position_embeddings"],
           "patch_embed.proj.weight": state[f"{pre}embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": state[f"{pre}embeddings.patch_embeddings.projection.bias"],
           "norm.weight": state[f"{pre}layernorm.weight"], "norm.bias": state[f"{pre}layernorm.bias"]}
    v5 = f"{pre}layers.0.attention.q_proj.weight" in state
    for i in range(depth):
        if v5:
            b = f"{pre}layers.{i}."
            q, k, v, o = (f"{b}attention.{n}_proj" for n in ("q", "k", "v", "o"))
            fc1, fc2 = f"{b}mlp.fc1", f"{b}mlp.fc2"
        else:
            b = f"{pre}encoder.layer.{i}."
            q, k, v = (f"{b}attention.attention.{n}" for n in ("query", "key", "value"))
            o, fc1, fc2 = f"{b}attention.output.dense", f"{b}intermediate.dense", f"{b}output.dense"
        t = f"blocks.{i}."
        for kind in ("weight", "bias"):
            if f"{q}.{kind}" in state:  # no query/key/value bias when the config says qkv_bias=False
                out[f"{t}attn.qkv.{kind}"] = torch.cat([state[f"{q}.{kind}"], state[f"{k}.{kind}"],
                                                        state[f"{v}.{kind}"]])
            out[f"{t}attn.proj.{kind}"] = state[f"{o}.{kind}"]
            out[f"{t}mlp.fc1.{kind}"] = state[f"{fc1}.{kind}"]
            out[f"{t}mlp.fc2.{kind}"] = state[f"{fc2}.{kind}"]
            out[f"{t}norm1.{kind}"] = state[f"{b}layernorm_before.{kind}"]
            out[f"{t}norm2.{kind}"] = state[f"{b}layernorm_after.{kind}"]
    if has_head:
        out["head.weight"], out["head.bias"] = state["classifier.weight"], state["classifier.bias"]
    return out
