"""Models: which ViTs nullviz knows, how one is loaded and shared, and the ViT at the level of patch tokens.

Every model comes back as a :class:`LoadedModel`: the timm module in eval mode with frozen parameters, its
data config, transforms, class names and device. The library never caches models; the app caches
``load_model`` once per (name, checkpoint, device) and shares that object between every session and thread.

Sharing rule: a LoadedModel's module is read-only. Nothing in the library switches its mode, flags, hooks or
``requires_grad``. Whatever needs a module of its own works on :func:`shared_weights_view`: a private module
tree over the *same* weight storage (no copy of the weights, so no extra GPU memory per request).

``registry`` (the embedded models) · ``device`` · ``loaded`` (LoadedModel, views) · ``loading`` (load_model,
timm names, the hub) · ``spec`` (ModelSpec: which model) · ``checkpoint`` (reading checkpoint files) · ``tokens`` (token-level forward, PixelModel).
"""

from .checkpoint import read_sidecar, read_weights, recorded_arch
from .device import available_devices, resolve_device
from .loaded import LoadedModel, ViewPool, shared_weights_view
from .loading import (COMMON_VITS, ArchitectureFacts, architecture_facts, cached_weights_file, create_random_vit,
                      hub_cache_dir, load_model, model_data_config)
from .registry import (ASSETS, CLUTTERED_ARCH, CLUTTERED_DATA_CONFIG, CLUTTERED_MODEL_DIR, CLUTTERED_MODEL_NAME,
                       DEFAULT_ARCH, DEFAULT_DATA_CONFIG, DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, EMBEDDED_MODELS,
                       EmbeddedModel, embedded_model, nullviz_cluttered_vit, nullviz_digits_vit)
from .spec import ModelSpec
from .tokens import PixelModel, block_input, logits_from_patch_tokens, patch_tokens, token_grid
