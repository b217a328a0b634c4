"""Streamlit glue shared by app.py and the pages: the cached model, the sidebar, image input, errors.

Only UI plumbing lives here; every computation is a call into ``nullviz``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from nullviz.data import load_image_bytes, sample_image, sample_image_names
from nullviz.errors import NullvizError
from nullviz.models import LoadedModel, available_devices, load_model, resolve_device

DEFAULT_SPEC = {"name": "default", "checkpoint": None, "device": "auto"}


@st.cache_resource(show_spinner="Loading model…", max_entries=4)
def _cached_model(name: str, checkpoint: str | None, device: str) -> LoadedModel:
    return load_model(name, checkpoint=checkpoint, device=device)


def cached_model(name: str, checkpoint: str | None, device: str) -> LoadedModel:
    """One LoadedModel per (name, checkpoint, resolved device), shared by all sessions: never mutate it."""
    return _cached_model(name, checkpoint, str(resolve_device(device)))


def init_session() -> None:
    """Session defaults, set once per browser session (app.py calls this before any page)."""
    st.session_state.setdefault("model_spec", dict(DEFAULT_SPEC))
    st.session_state.setdefault("model_error", None)


def require_shell(page_file: str) -> None:
    """Open this page through app.py's navigation.

    Until the first session of a server process runs app.py's ``st.navigation``, Streamlit serves ``pages/``
    the old way and runs a deep-linked page (``/finetune``) on its own, without the app's sidebar. Such a
    run goes to app.py once, which sets up navigation and switches back to the page.
    """
    if "model_spec" not in st.session_state:
        st.session_state["_deep_link"] = f"pages/{Path(page_file).name}"
        st.switch_page("app.py")


def follow_deep_link() -> None:
    """Called by app.py after ``st.navigation``: finish a deep link that ``require_shell`` redirected."""
    target = st.session_state.pop("_deep_link", None)
    if target:
        st.switch_page(target)


def current_model() -> LoadedModel:
    """The active model for this script run; falls back to the embedded default if the chosen one cannot be
    loaded.

    Each run gets its own :meth:`LoadedModel.view` of the cached model: a private module tree over the
    shared weights. The library already leaves a model untouched; the view makes that hold by construction
    for whatever a page does, and for this session's previous run still finishing in another thread.
    """
    spec = st.session_state.get("model_spec", DEFAULT_SPEC)
    try:
        return cached_model(spec["name"], spec["checkpoint"], spec["device"]).view()
    except NullvizError as exc:
        st.session_state["model_error"] = str(exc)
        st.session_state["model_spec"] = dict(DEFAULT_SPEC)
        return cached_model(**DEFAULT_SPEC).view()


def model_sidebar() -> None:
    """Sidebar form: embedded default / timm name with pretrained weights / local checkpoint, and device."""
    spec = st.session_state["model_spec"]
    with st.sidebar:
        st.subheader("Model")
        with st.form("model_form", border=False):
            sources = ["Embedded default (digits ViT)", "timm name (pretrained, downloads)", "Local checkpoint"]
            current = 0 if spec["name"] == "default" and not spec["checkpoint"] else (2 if spec["checkpoint"] else 1)
            source = st.radio("Source", sources, index=current, key="model_source")
            name = st.text_input("timm architecture", value="" if spec["name"] == "default" else spec["name"],
                                 placeholder="vit_tiny_patch16_224", key="model_name",
                                 help="For 'timm name' and 'Local checkpoint'. Leave empty for a checkpoint "
                                      "saved by nullviz (its .json sidecar names the architecture).")
            checkpoint = st.text_input("Checkpoint path", value=spec["checkpoint"] or "", key="model_checkpoint",
                                       placeholder="/path/to/model.safetensors")
            devices = ["auto", *available_devices()]
            device = st.selectbox("Device", devices, index=devices.index(spec["device"]) if spec["device"] in devices else 0,
                                  key="model_device")
            submitted = st.form_submit_button("Load model", type="primary")
        if submitted:
            _switch_model(source, sources, name.strip(), checkpoint.strip(), device)
        lm = current_model()
        if st.session_state.get("model_error"):
            st.error(st.session_state["model_error"])
        st.caption(f"Active: **{lm.name}**" + (f" from `{lm.checkpoint}`" if lm.checkpoint else "")
                   + f" on `{lm.device}`")


def _switch_model(source: str, sources: list[str], name: str, checkpoint: str, device: str) -> None:
    if source == sources[0]:
        new = {"name": "default", "checkpoint": None, "device": device}
    elif source == sources[1]:
        if not name:
            st.session_state["model_error"] = "Type a timm architecture name, e.g. vit_tiny_patch16_224."
            return
        new = {"name": name, "checkpoint": None, "device": device}
    else:
        if not checkpoint:
            st.session_state["model_error"] = "Type the path of a .safetensors or .pth checkpoint file."
            return
        new = {"name": name or "default", "checkpoint": checkpoint, "device": device}
    try:
        cached_model(new["name"], new["checkpoint"], new["device"])
    except NullvizError as exc:  # keep the previous model: nothing is lost
        st.session_state["model_error"] = str(exc)
        return
    st.session_state["model_error"] = None
    st.session_state["model_spec"] = new


def set_active_checkpoint(path: str, device: str | None = None) -> None:
    """Make a checkpoint (e.g. a finetuned model) the active model of the app."""
    spec = st.session_state["model_spec"]
    st.session_state["model_spec"] = {"name": "default", "checkpoint": path, "device": device or spec["device"]}
    st.session_state["model_error"] = None


@dataclass
class ChosenImage:
    name: str
    image: Image.Image


def image_picker(key: str, default_sample: str | None = None) -> ChosenImage | None:
    """Upload an image or pick a sample; bad uploads get a one-line message and the sample is kept."""
    lm = current_model()
    names = sample_image_names()
    if default_sample is None:
        default_sample = "digit-3" if lm.img_size[0] <= 64 else "chelsea"  # small models: digits
    col1, col2 = st.columns([1, 1])
    with col1:
        sample = st.selectbox("Sample image", names, index=names.index(default_sample), key=f"{key}_sample")
    with col2:
        upload = st.file_uploader("…or upload an image", type=None, key=f"{key}_upload")
    if upload is not None:
        try:
            return ChosenImage(upload.name, load_image_bytes(upload.getvalue()))
        except NullvizError as exc:
            st.error(f"{upload.name}: {exc} Showing the sample image instead.")
    return ChosenImage(sample, sample_image(sample))


def show_error(exc: Exception) -> None:
    """One clear line for a user error (never a traceback)."""
    st.error(str(exc))


def png_bytes(hwc: np.ndarray) -> bytes:
    """An H×W×3 float image in [0, 1] as PNG bytes (8-bit)."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(hwc, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def figure_html(fig) -> bytes:
    """A self-contained interactive HTML of a plotly figure (PNG export is in the figure's own toolbar)."""
    return fig.to_html(include_plotlyjs="cdn", full_html=True).encode()
