"""Loading Vision Transformers: the embedded default, any timm ViT by name, or a local checkpoint.

Every model comes back as a :class:`LoadedModel`: the timm module in eval mode with frozen parameters,
its data config (mean, std, size, from timm's ``resolve_data_config``), the matching transform and its
inverse, its class names and its device. The library never caches models (no module-level state); the app
caches ``load_model`` with ``st.cache_resource``, keyed by (name, checkpoint, device), and shares that one
object between every session and thread.

Sharing rule: a LoadedModel's module is read-only. Nothing in the library switches its mode, flags, hooks or
``requires_grad``. Whatever needs a module of its own (attention extraction turns fused attention off and
records block outputs; attacks libraries call ``.eval()``) works on :func:`shared_weights_view`: a private
module tree over the *same* weight storage (no copy of the weights, so no extra GPU memory per request).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from .checkpoint import read_sidecar, read_weights, recorded_arch
from .errors import (CheckpointError, InvalidParameterError, ModelNotFoundError, NotAVisionTransformerError,
                     PretrainedWeightsUnavailableError, UnsupportedModelError)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL_DIR = ASSETS / "default_model"
DEFAULT_MODEL_NAME = "nullviz_digits_vit"

#: Architecture of the embedded default: 32×32 RGB digits, 8×8 patches (3·8² = 192 inputs) embedded in
#: D = 96 dimensions, so the patch embedding has a nullspace of dimension ≥ 96 (like ViT-Ti/16's 576).
DEFAULT_ARCH: dict[str, Any] = dict(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=96,
                                    depth=4, num_heads=4, mlp_ratio=2.0, global_pool="token")
DEFAULT_DATA_CONFIG: dict[str, Any] = dict(input_size=(3, 32, 32), interpolation="bicubic",
                                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0,
                                           crop_mode="center")


#: The second embedded model, made for looking at attention: 64×64 cluttered digits (``nullviz.cluttered``),
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


# ---------------------------------------------------------------------------------------------- device
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto'/None → CUDA when present, else Apple MPS, else CPU; otherwise the device asked for."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError("device", "resolve_device", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'",
                                    device) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError("device", "resolve_device", "a device present on this machine (no CUDA "
                                    "GPU is available here; use 'cpu' or 'auto')", str(device))
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidParameterError("device", "resolve_device", "a device present on this machine (Apple MPS "
                                    "is not available here; use 'cpu' or 'auto')", str(device))
    return dev


def available_devices() -> list[str]:
    """Devices a user can pick on this machine, best first."""
    out = []
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out + ["cpu"]


# ------------------------------------------------------------------------------------------ the result
@dataclass
class LoadedModel:
    """A frozen, eval-mode ViT with everything needed to feed it images and read its outputs."""

    model: VisionTransformer
    name: str
    device: torch.device
    data_config: dict[str, Any]
    class_names: list[str]
    checkpoint: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    # geometry, read from the model (never hard-coded)
    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @property
    def in_chans(self) -> int:
        return int(self.model.patch_embed.proj.in_channels)

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(int(g) for g in self.model.patch_embed.grid_size)

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.data_config["input_size"][1:])

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 1))

    @property
    def mean(self) -> torch.Tensor:
        return torch.tensor(self.data_config["mean"], dtype=torch.float32).view(-1, 1, 1)

    @property
    def std(self) -> torch.Tensor:
        return torch.tensor(self.data_config["std"], dtype=torch.float32).view(-1, 1, 1)

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_MODEL_NAME and self.checkpoint is None

    @property
    def transform(self):
        """timm's eval transform for this model: resize, centre crop, to tensor, normalise."""
        return create_transform(**self.data_config, is_training=False)

    @property
    def train_transform(self):
        """timm's training augmentation for this model's data config (random resized crop, flip, colour
        jitter), then normalisation: for finetuning on natural images."""
        return create_transform(**self.data_config, is_training=True)

    @property
    def pixel_transform(self):
        """The same transform without the normalisation: a [0, 1] tensor (attacks and noise act there)."""
        return create_transform(**{**self.data_config, "mean": (0.0,) * self.in_chans,
                                   "std": (1.0,) * self.in_chans}, is_training=False)

    def preprocess(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """PIL image(s) → normalised batch on the model's device, shape [B, C, H, W]."""
        if isinstance(images, Image.Image):
            images = [images]
        tf = self.transform
        return torch.stack([tf(img) for img in images]).to(self.device)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels → the model's normalised input space."""
        return (pixels - self.mean.to(pixels)) / self.std.to(pixels)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input → [0, 1]-scale pixels (not clipped; noise may leave the range)."""
        return x * self.std.to(x) + self.mean.to(x)

    def to_display(self, x: torch.Tensor) -> np.ndarray:
        """A normalised tensor [C, H, W] (or [1, C, H, W]) → an H×W×3 float array in [0, 1] for display."""
        if x.dim() == 4:
            x = x[0]
        pixels = self.denormalize(x.detach().float().cpu()).clamp(0, 1)
        return pixels.permute(1, 2, 0).numpy()

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else f"class {index}"

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised batch (no autograd)."""
        return self.model(x.to(self.device))

    def facts(self) -> dict[str, Any]:
        """Architecture facts for the Model page and ``nullviz info``."""
        m = self.model
        return {
            "name": self.name,
            "checkpoint": self.checkpoint,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.embed_dim,
            "patch_input_dim": self.in_chans * self.patch_size ** 2,
            "depth": len(m.blocks),
            "num_heads": int(m.blocks[0].attn.num_heads),
            "num_params": int(sum(p.numel() for p in m.parameters())),
            "img_size": list(self.img_size),
            "grid_size": list(self.grid_size),
            "num_patches": int(m.patch_embed.num_patches),
            "num_prefix_tokens": self.num_prefix_tokens,
            "num_classes": int(m.num_classes),
            "device": str(self.device),
            "mean": [float(v) for v in self.data_config["mean"]],
            "std": [float(v) for v in self.data_config["std"]],
        }

    def view(self) -> "LoadedModel":
        """This model with a private module tree over the same weights (see :func:`shared_weights_view`).

        Derived caches (spectrum, nullspace bases) stay shared: they depend on the weights alone."""
        out = LoadedModel(model=shared_weights_view(self.model), name=self.name, device=self.device,
                          data_config=self.data_config, class_names=self.class_names, checkpoint=self.checkpoint,
                          info=self.info)
        out.__dict__["_derived"] = self.__dict__.setdefault("_derived", {})
        return out

    def trainable_copy(self) -> VisionTransformer:
        """A deep copy with gradients enabled: finetuning and anything else that mutates works on this."""
        model = copy.deepcopy(self.model)
        for p in model.parameters():
            p.requires_grad_(True)
        return model


def shared_weights_view(model: torch.nn.Module) -> torch.nn.Module:
    """A structural copy of ``model`` whose parameters and buffers share storage with the original.

    Every module object (and so its ``training`` flag, ``fused_attn`` flag and hook lists) is new, and
    every parameter is a new, frozen ``Parameter`` over the same memory: mode switches, flags, hooks and
    ``requires_grad`` changes on the view never reach ``model``, while weights are not duplicated (a few
    milliseconds for the default model, ~25 ms for ViT-B on CPU). In-place writes to the weights would still
    be shared; nothing in nullviz makes them (tests check the tensors' version counters).
    """
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if isinstance(t, torch.nn.Parameter):
            memo[id(t)] = torch.nn.Parameter(t.detach(), requires_grad=False)
        else:
            memo[id(t)] = t.detach()
    return copy.deepcopy(model, memo)


class ViewPool:
    """Reusable views (:func:`shared_weights_view`) of one model, each lent to one caller at a time.

    Making a view costs milliseconds (a module tree); a pool makes one per *concurrent* caller and reuses
    it, so a request pays only for borrowing. ``prepare`` sets a fresh view up once (e.g. eval mode, fused
    attention off); a borrower must hand the view back as it found it (hooks removed).
    """

    def __init__(self, model: torch.nn.Module, prepare: Callable[[torch.nn.Module], None] | None = None):
        self._model = model
        self._prepare = prepare
        self._free: list[torch.nn.Module] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[torch.nn.Module]:
        with self._lock:
            view = self._free.pop() if self._free else None
        if view is None:
            view = shared_weights_view(self._model)
            if self._prepare is not None:
                self._prepare(view)
        try:
            yield view
        finally:
            with self._lock:
                self._free.append(view)

    def __len__(self) -> int:
        """Views made so far that are not lent out."""
        return len(self._free)


# ---------------------------------------------------------------------------------------------- loading
def load_model(name: str = "default", checkpoint: str | Path | None = None,
               device: str | torch.device | None = "auto", pretrained: bool = True) -> LoadedModel:
    """Load a ViT for analysis.

    - ``name='default'`` → the embedded digits ViT (weights under ``assets/``; no network).
    - a timm name (``vit_tiny_patch16_224``…) → timm's hub path with ``pretrained=True``; offline, this
      raises :class:`PretrainedWeightsUnavailableError` naming the two offline alternatives.
    - ``checkpoint=PATH`` → that local file (.safetensors, .pth/.pt) loaded into architecture ``name``
      (or the architecture recorded in the checkpoint's JSON sidecar).
    """
    dev = resolve_device(device)
    sidecar = read_sidecar(checkpoint) if checkpoint is not None else {}
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

    if arch not in EMBEDDED_MODELS:
        with torch.device("meta"):  # architecture check without allocating or downloading anything
            _check_is_vit_module(timm.create_model(arch, pretrained=False), arch)

    if checkpoint is not None:
        state = state if state is not None else read_weights(checkpoint)
        num_classes = _num_classes_in(state)
        kwargs = dict(sidecar.get("arch_kwargs", {}))
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
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


# ------------------------------------------------------------------------------ token-level forward
def patch_tokens(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The patch embedding's output u = f_θ(x), always [B, N, D] (before class token / position)."""
    u = model.patch_embed(x)
    return u.flatten(1, 2) if u.dim() == 4 else u


def token_grid(model: VisionTransformer, x: torch.Tensor) -> tuple[int, int]:
    """The token grid of images x: from their own height and width when the model takes any size
    (``dynamic_img_size``), else the model's fixed grid."""
    pe = model.patch_embed
    if getattr(model, "dynamic_img_size", False) and hasattr(pe, "dynamic_feat_size"):
        gh, gw = pe.dynamic_feat_size(tuple(x.shape[-2:]))
        return int(gh), int(gw)
    return tuple(int(g) for g in pe.grid_size)


def block_input(model: VisionTransformer, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """The first block's input from [B, N, D] patch tokens: prefix tokens, position embedding, norm_pre.
    ``grid``: the tokens' (rows, columns) (:func:`token_grid` of the images they came from); a model with
    ``dynamic_img_size`` interpolates its position embedding to it. Without it, the model's default grid."""
    if getattr(model, "dynamic_img_size", False):
        gh, gw = grid if grid is not None else model.patch_embed.grid_size
        if gh * gw != tokens.shape[1]:
            raise InvalidParameterError("grid", "block_input", f"a token grid of {tokens.shape[1]} tokens (pass "
                                        f"token_grid(model, x) of the images)", (gh, gw))
        tokens = tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[-1])
    x = model._pos_embed(tokens)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def logits_from_patch_tokens(model: VisionTransformer, tokens: torch.Tensor,
                             grid: tuple[int, int] | None = None) -> torch.Tensor:
    """f_ψ(f_φ(u)): everything after the patch embedding, on [B, N, D] tokens (noise can be added to u);
    ``grid`` as for :func:`block_input`."""
    x = model.blocks(block_input(model, tokens, grid))
    x = model.norm(x)
    return model.forward_head(x)


class PixelModel(torch.nn.Module):
    """pixels ∈ [0, 1] → logits: the model's normalisation inside (attacks, attributions and corruptions act
    on pixels), and optionally a fixed token-level δ added after the patch embedding."""

    def __init__(self, model: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor,
                 token_noise: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        device = next(model.parameters()).device
        self.register_buffer("mean", mean.reshape(-1, 1, 1).to(device))
        self.register_buffer("std", std.reshape(-1, 1, 1).to(device))
        self.token_noise = None if token_noise is None else token_noise.to(device)

    @classmethod
    def of(cls, lm: LoadedModel, token_noise: torch.Tensor | None = None) -> "PixelModel":
        return cls(lm.model, lm.mean, lm.std, token_noise)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.normalize(pixels)
        if self.token_noise is None:
            return self.model(x)
        return logits_from_patch_tokens(self.model, patch_tokens(self.model, x) + self.token_noise,
                                        token_grid(self.model, x))
