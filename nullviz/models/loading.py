"""Loading Vision Transformers: the embedded default, any timm ViT by name (the hub, with a clear message
offline), or a local checkpoint, checked to be a plain ViT. The library never caches models; the app does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from timm.models.vision_transformer import VisionTransformer

from nullviz.core.errors import (CheckpointError, ModelNotFoundError, NotAVisionTransformerError,
                                 PretrainedWeightsUnavailableError, UnsupportedModelError)

from .budget import check_param_budget, count_params_on_meta
from .checkpoint import read_sidecar, read_weights, recorded_arch
from .device import resolve_device
from .hf import build, convert, is_hf_name, is_hub_id, load_hf
from .loaded import LoadedModel
from .registry import DEFAULT_MODEL_NAME, EMBEDDED_MODELS, _build_embedded, embedded_model


# ---------------------------------------------------------------------------------------------- loading
def load_model(name: str = "default", checkpoint: str | Path | None = None,
               device: str | torch.device | None = "auto", pretrained: bool = True, *, max_params: int | None = None,
               local_folders: bool = True) -> LoadedModel:
    """Load a ViT for analysis.

    - ``name='default'`` → the embedded digits ViT (weights under ``assets/``; no network).
    - a timm name (``vit_tiny_patch16_224``…) → timm's hub path with ``pretrained=True``; offline, this
      raises :class:`PretrainedWeightsUnavailableError` naming the two offline alternatives.
    - ``checkpoint=PATH`` → that local file (.safetensors, .pth/.pt) loaded into architecture ``name``
      (or the architecture recorded in the checkpoint's JSON sidecar).
    - ``hf:<hub id or folder>`` → a Hugging Face ViT converted into timm's (:mod:`.hf`).

    ``max_params``: the architecture is built on the meta device first and refused with
    :class:`ModelTooLargeError` above this many parameters, before anything is allocated or downloaded.
    ``local_folders=False``: an ``hf:`` name is a hub id only, never read as a folder (a shared server).
    """
    dev = resolve_device(device)
    if is_hf_name(name) and checkpoint is None:
        return _load_hf(name, dev, local_folders=local_folders, max_params=max_params)
    sidecar = read_sidecar(checkpoint) if checkpoint is not None else {}
    if checkpoint is not None and is_hf_name(sidecar.get("arch") if name in (None, "", "default") else name):
        return _load_hf_checkpoint(sidecar.get("arch") if name in (None, "", "default") else name, checkpoint,
                                   sidecar, dev, max_params)
    state = None
    if checkpoint is not None and name in (None, "", "default") and not sidecar.get("arch"):
        # a file on its own (an upload has no sidecar): the architecture its header records, else the
        # embedded model whose every weight shape it matches (a finetuned cluttered model is not the digits')
        state = read_weights(checkpoint)
        arch_in_file = recorded_arch(checkpoint) or _embedded_arch_matching(state)
        if arch_in_file:
            sidecar = {**sidecar, "arch": arch_in_file}
    arch = _resolve_arch_name(name, sidecar)
    _check_is_vit_name(arch)

    kwargs: dict[str, Any] = {}
    if checkpoint is not None:
        state = state if state is not None else read_weights(checkpoint)
        num_classes = _num_classes_in(state)
        kwargs = dict(sidecar.get("arch_kwargs", {}))
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
    if arch not in EMBEDDED_MODELS:  # architecture and size checked without allocating or downloading anything
        with torch.device("meta"):
            meta = timm.create_model(arch, pretrained=False, **kwargs)
        _check_is_vit_module(meta, arch)
        what = f"{Path(checkpoint).name} ({arch})" if checkpoint is not None else arch
        check_param_budget(sum(p.numel() for p in meta.parameters()), max_params, what)
        del meta

    if checkpoint is not None:
        model = _create(arch, pretrained=False, **kwargs)
        _load_state(model, state, arch, checkpoint)
    else:
        model = _create(arch, pretrained=pretrained)
    _check_is_vit_module(model, arch)

    model.eval().to(dev)
    for p in model.parameters():
        p.requires_grad_(False)

    data_config = dict(sidecar.get("data_config") or model_data_config(model))
    data_config["input_size"] = tuple(data_config["input_size"])
    for key in ("mean", "std"):
        data_config[key] = tuple(float(v) for v in data_config[key])
    class_names = sidecar.get("class_names") or _class_names(arch, model)
    info = {}
    if arch in EMBEDDED_MODELS and checkpoint is None:
        info = json.loads((EMBEDDED_MODELS[arch].directory / "config.json").read_text())
    return LoadedModel(model=model, name=arch, device=dev, data_config=data_config,
                       class_names=list(class_names), checkpoint=str(checkpoint) if checkpoint else None,
                       info=info)


def _ready(model: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    model.eval().to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _load_hf(name: str, dev: torch.device, local_folders: bool = True, max_params: int | None = None) -> LoadedModel:
    """A Hugging Face ViT (``hf:<id or folder>``) converted into timm's VisionTransformer (:mod:`.hf`)."""
    hf_model, processor = load_hf(name, local_folders=local_folders, max_params=max_params)
    model, kwargs, data_config, names = convert(hf_model, processor)
    return LoadedModel(model=_ready(model, dev), name=name, device=dev, data_config=data_config,
                       class_names=names or [f"feature {i}" for i in range(int(model.num_features))],
                       checkpoint=None, info={"arch_kwargs": kwargs}, label=hf_label(name))


def hf_label(name: str) -> str:
    """How an ``hf:`` model is shown: a hub id as it is, a folder by its last part (``hf:/srv/m/vit-s`` →
    ``hf:vit-s``), never the folder's path."""
    ident = name[3:] if is_hf_name(name) else name
    return name if is_hub_id(ident) else f"hf:{Path(ident).name}"


def _load_hf_checkpoint(name: str, checkpoint: str | Path, sidecar: dict, dev: torch.device,
                        max_params: int | None = None) -> LoadedModel:
    """A finetuned copy of a Hugging Face ViT: its sidecar keeps the converted architecture (``arch_kwargs``)."""
    kwargs = dict(sidecar.get("arch_kwargs") or {})
    if not kwargs:
        raise CheckpointError(f"{Path(checkpoint).name!r} names the Hugging Face model {name!r} but its sidecar has no "
                              f"'arch_kwargs' (the converted architecture nullviz writes when it saves one).")
    state = read_weights(checkpoint)
    num_classes = _num_classes_in(state)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    check_param_budget(count_params_on_meta(lambda: build(kwargs, 1e-12)), max_params, Path(checkpoint).name)
    model = build(kwargs, float(kwargs.get("layer_norm_eps", 1e-12)))
    _load_state(model, state, name, checkpoint)
    data_config = dict(sidecar["data_config"])
    data_config["input_size"] = tuple(data_config["input_size"])
    return LoadedModel(model=_ready(model, dev), name=name, device=dev, data_config=data_config,
                       class_names=list(sidecar.get("class_names") or []), checkpoint=str(checkpoint),
                       info={"arch_kwargs": kwargs}, label=hf_label(name))


def model_data_config(model: torch.nn.Module) -> dict[str, Any]:
    """timm's data config (mean, std, interpolation, crop) with the input size the model was *built* with:
    ``pretrained_cfg`` still says 224 for a ViT created with another ``img_size``."""
    cfg = dict(resolve_data_config(model=model))
    built = (int(model.patch_embed.proj.in_channels), *(int(s) for s in model.patch_embed.img_size))
    if tuple(cfg["input_size"]) != built:
        cfg["input_size"] = built
        cfg["crop_pct"] = 1.0
    cfg["input_size"] = tuple(cfg["input_size"])
    c = built[0]
    for key in ("mean", "std"):  # pretrained configs give 3 values; a model with other in_chans needs c of them
        if len(cfg[key]) != c:
            cfg[key] = (float(sum(cfg[key]) / len(cfg[key])),) * c
    return cfg


def _resolve_arch_name(name: str | None, sidecar: dict) -> str:
    if name in (None, "", "default") and sidecar.get("arch"):
        return sidecar["arch"]
    if name in (None, ""):
        return DEFAULT_MODEL_NAME
    embedded = embedded_model(name)
    return embedded.name if embedded is not None else name


def _check_is_vit_name(arch: str) -> None:
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5] if arch else []
        hint = f" Did you mean one of: {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(f"Unknown model name {arch!r}: it is not a timm architecture.{hint}")


def _check_is_vit_module(model: torch.nn.Module, arch: str) -> None:
    pe = getattr(model, "patch_embed", None)
    if not (isinstance(model, VisionTransformer) and pe is not None and hasattr(pe, "proj")
            and isinstance(pe.proj, torch.nn.Conv2d) and pe.proj.kernel_size == pe.proj.stride):
        raise NotAVisionTransformerError(
            f"{arch!r} is not a plain Vision Transformer: nullviz needs a linear patch embedding "
            f"(timm VisionTransformer, e.g. 'vit_tiny_patch16_224' or 'deit_small_patch16_224').")
    ph, pw = (int(v) for v in pe.proj.kernel_size)
    if ph != pw:
        raise UnsupportedModelError(
            f"{arch!r} has rectangular {ph}×{pw} patches; nullviz works with square patches (p×p), as every "
            f"timm ViT has by default. Create it with a square patch_size, e.g. {max(ph, pw)}.")


def _create(arch: str, pretrained: bool, **kwargs) -> torch.nn.Module:
    if arch in EMBEDDED_MODELS:
        return _build_embedded(EMBEDDED_MODELS[arch], pretrained, **kwargs)
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    cached = cached_weights_file(arch)
    if cached is not None:  # already downloaded: no network at all, whether or not HF_HUB_OFFLINE is set
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}, **kwargs)
    _check_hub_reachable(arch)
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 — any hub/network failure becomes one explained error
        raise PretrainedWeightsUnavailableError(
            f"Could not get pretrained weights for {arch!r} from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). Offline, use "
            f"the embedded default model (name 'default'), or load a local checkpoint file "
            f"(.safetensors/.pth) into this architecture.") from exc


#: Common timm ViTs offered by name in the app (any other timm ViT can be typed).
COMMON_VITS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_small_patch32_224",
               "vit_base_patch32_224", "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
               "vit_small_patch14_reg4_dinov2", "vit_base_patch16_reg4_gap_256")


@dataclass(frozen=True)
class ArchitectureFacts:
    """What a ViT's patch embedding is, from its architecture alone (built on the meta device: no weights,
    no download): patch p, c·p² inputs → D outputs, and the nullity that shape forces, max(0, c·p² − D)
    (trained weights can only add to it)."""

    name: str
    patch_size: int
    in_chans: int
    embed_dim: int
    img_size: tuple[int, int]
    prefix_tokens: int
    weights_cached: bool

    @property
    def input_dim(self) -> int:
        return self.in_chans * self.patch_size ** 2

    @property
    def structural_nullity(self) -> int:
        return max(0, self.input_dim - self.embed_dim)

    @property
    def label(self) -> str:
        return (f"{self.name} — {self.input_dim}→{self.embed_dim}, nullity ≥ {self.structural_nullity}"
                + (" · cached" if self.weights_cached else ""))


def architecture_facts(name: str) -> ArchitectureFacts:
    """:class:`ArchitectureFacts` of a timm ViT name (raises ModelNotFoundError / NotAVisionTransformerError)."""
    _check_is_vit_name(name)
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    _check_is_vit_module(model, name)
    pe = model.patch_embed
    return ArchitectureFacts(name=name, patch_size=int(pe.proj.kernel_size[0]), in_chans=int(pe.proj.in_channels),
                             embed_dim=int(model.embed_dim), img_size=tuple(int(v) for v in pe.img_size),
                             prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)),
                             weights_cached=cached_weights_file(name) is not None)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (HF_HUB_CACHE, else HF_HOME/hub, else
    ~/.cache/huggingface/hub), as huggingface_hub itself resolves it."""
    import os

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached_weights_file(arch: str) -> Path | None:
    """The local file of ``arch``'s pretrained weights if a previous download left it in the hub cache
    (``model.safetensors``, else ``pytorch_model.bin`` of the timm config's ``hf_hub_id``), else None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except (RuntimeError, ValueError, KeyError):
        return None
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, cache_dir=str(hub_cache_dir()))
        if isinstance(found, str):
            return Path(found)
    return None


def _check_hub_reachable(arch: str) -> None:
    """Fail in milliseconds, not after a minute of retries, when the hub's host cannot even be resolved.

    Skipped when HF_HUB_OFFLINE is set (weights may then come from the local Hugging Face cache).
    """
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise PretrainedWeightsUnavailableError(
            f"Cannot reach {host} to download pretrained weights for {arch!r} (no network: {exc.strerror or exc}). "
            f"Offline, use the embedded default model (name 'default'), or load a local checkpoint file "
            f"(.safetensors/.pth) into this architecture.") from exc


def _embedded_arch_matching(state: dict[str, torch.Tensor]) -> str | None:
    """The embedded model whose weights have exactly these names and shapes (the head may differ in its
    number of classes), else None."""
    for spec in EMBEDDED_MODELS.values():
        with torch.device("meta"):
            reference = VisionTransformer(**spec.arch).state_dict()
        if set(reference) != set(state):
            continue
        if all(tuple(reference[k].shape) == tuple(state[k].shape) for k in reference if not k.startswith("head.")):
            return spec.name
    return None


def _num_classes_in(state: dict[str, torch.Tensor]) -> int | None:
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None and head.dim() == 2 else None


def _load_state(model: torch.nn.Module, state: dict, arch: str, path: str | Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shape = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
        if shape:
            k = sorted(shape)[0]
            parts.append(f"{len(shape)} shape mismatches (e.g. {k!r}: checkpoint {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise CheckpointError(f"Checkpoint {Path(path).name!r} does not match architecture {arch!r}: "
                              f"{'; '.join(parts) or exc}. Pick the architecture it was trained with.") from exc


def _class_names(arch: str, model: torch.nn.Module) -> list[str]:
    if arch in EMBEDDED_MODELS:
        return list(EMBEDDED_MODELS[arch].class_names)
    n = int(getattr(model, "num_classes", 0))
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            info = ImageNetInfo(subset)
            if info.num_classes() == n:
                return [info.index_to_description(i) for i in range(n)]
    except (ImportError, KeyError, ValueError):
        pass
    return [f"class {i}" for i in range(n)]


def create_random_vit(name: str = "vit_tiny_patch16_224", seed: int = 0, device: str | torch.device = "cpu",
                      **kwargs) -> LoadedModel:
    """A randomly initialised, seeded timm ViT wrapped like a loaded one (tests, benchmarks, offline demos)."""
    _check_is_vit_name(name)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, **kwargs)
    _check_is_vit_module(model, name)
    model.eval().to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = model_data_config(model)
    n = int(model.num_classes)
    return LoadedModel(model=model, name=name, device=dev, data_config=cfg, class_names=[f"class {i}" for i in range(n)])
