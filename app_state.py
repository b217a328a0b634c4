"""Streamlit glue shared by app.py and the pages: the cached model, the sidebar, image input, errors.

Only UI plumbing lives here; every computation is a call into ``nullviz``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import sys
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from PIL import Image

from nullviz import figures
from nullviz.core.errors import JobNotFoundError, NullvizError
from nullviz.data import OWN_SOURCE, downscale_note, load_image_bytes, model_own_data, sample_image, sample_image_names, synthesis_sets
from nullviz.jobs.limits import JobLimits
from nullviz.jobs.queue import JobQueue
from nullviz.train.estimate import JobEstimate, estimate_finetune, job_data_sizes, measure_step_seconds
from nullviz.models import (COMMON_VITS, EMBEDDED_MODELS, LoadedModel, ModelSpec, architecture_facts,
                            available_devices, embedded_model, load_model, resolve_device)
from nullviz.noise.approximate import clean_logits
from nullviz.noise.exact import NoiseSpec, nullspace, sample_noise, to_pixels, verify_invariance
from nullviz.server.access import (AttemptLimiter, WorkspaceSigner, codes_match, generate_access_code, markdown_text,
                                   server_secret)
from nullviz.server.process import server_threads, threads_per_job
from nullviz.server.settings import LOCAL_WORKSPACE, ServerSettings, Workspace, check_upload_size

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")
#: A name (file, class, checkpoint, job) as literal text inside markdown: names are data, never markup.
plain = markdown_text
#: A zipped Hugging Face model folder: an upload kind of its own (loaded as hf:<its folder>)
MODEL_FOLDER_SUFFIX = ".zip"


# ------------------------------------------------------------------------------------- the shared server
def _secrets_section(name: str) -> dict:
    try:
        return dict(st.secrets.get(name, {}))
    except FileNotFoundError:  # no secrets.toml (StreamlitSecretNotFoundError is a FileNotFoundError)
        return {}


@st.cache_resource(show_spinner=False)
def server_settings() -> ServerSettings:
    """Read once per server: the environment (NULLVIZ_SHARED…), overridden by secrets.toml's [nullviz]. A shared
    server without a configured class code gets a random one here, once (server.py prints it)."""
    settings = ServerSettings.from_env(overrides=_secrets_section("nullviz"))
    if settings.shared and settings.access_code is None and not login_configured():
        settings = dataclasses.replace(settings, access_code=generate_access_code())
    return settings


def login_configured() -> bool:
    """Whether the teacher configured Streamlit's own login (``[auth]`` in secrets.toml, OIDC): it then
    replaces the class code, and each student's workspace is tied to their ``st.user``."""
    return bool(_secrets_section("auth"))


@dataclass(frozen=True)
class ServerKeys:
    """The server's workspace signer (its secret kept in the data folder) and its wrong-code limiter."""

    signer: WorkspaceSigner
    limiter: AttemptLimiter


@st.cache_resource(show_spinner=False)
def server_keys() -> ServerKeys:
    return ServerKeys(WorkspaceSigner(server_secret(server_settings().data_root)), AttemptLimiter())


def logged_in_identity() -> str | None:
    """The logged-in user's stable id (OIDC ``sub``, else e-mail) where login is configured, else None."""
    if not login_configured() or not st.user.is_logged_in:
        return None
    ident = st.user.get("sub") or st.user.get("email")
    return str(ident) if ident else None


def _client_address() -> str | None:
    """The browser's address (every tab of one machine together), or None where there is none (AppTest)."""
    ip = st.context.ip_address
    return ip if isinstance(ip, str) and ip else None


def _client_key() -> str:
    """Whom wrong codes are counted against: the browser's address, else this session."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return _client_address() or f"session:{ctx.session_id if ctx else 'none'}"


def _try_code(code: str) -> None:
    settings, keys = server_settings(), server_keys()
    client = _client_key()
    wait = keys.limiter.wait_seconds(client)
    if wait > 0:
        st.session_state["access_message"] = (f"Too many wrong codes from your address: try again in "
                                              f"{wait:.0f} s.")
        return
    if codes_match(code, settings.access_code or ""):
        keys.limiter.succeeded(client)
        st.session_state["admitted"] = True
        st.session_state.pop("access_message", None)
        return
    wait = keys.limiter.failed(client)
    st.session_state["access_message"] = ("That is not this class's code." + (
        f" Too many wrong codes from your address: try again in {wait:.0f} s." if wait > 0 else ""))


def admit() -> bool:
    """Shared mode: whether this session may use the server; if not, it gets the class-code prompt (or the login
    button) and nothing else — no page, no upload, no job, no model work. Local mode: always.

    A session is let in by the code (typed, or from the join link ``?code=…``, which is then removed from the
    address), by a workspace link the server issued (``?ws=…``: a bookmark or a reload), by Streamlit's login
    where ``[auth]`` is configured, or by anyone when the teacher set ``NULLVIZ_ACCESS_CODE=none``."""
    settings = server_settings()
    if not settings.shared or st.session_state.get("admitted"):
        return True
    if login_configured():
        if logged_in_identity() is not None:
            st.session_state["admitted"] = True
            return True
        return False
    if settings.open_access:
        st.session_state["admitted"] = True
        return True
    asked = st.query_params.get("ws")
    if asked and server_keys().signer.verify(asked):
        st.session_state["admitted"] = True
        return True
    code = st.query_params.get("code")
    if code is not None:
        st.query_params.pop("code", None)  # the code never stays in the page's link
        _try_code(code)
        if st.session_state.get("admitted"):
            return True
    return False


def access_prompt() -> None:
    """The only page a shared server shows a session it has not let in: the class-code form, or the login."""
    if login_configured():
        _login_prompt()
    else:
        _code_prompt()


def _code_prompt() -> None:
    st.title("nullviz · class server")
    with st.form("access_form", border=False):
        code = st.text_input("Class code", type="password", key="access_code",
                             help="Your teacher has it: the server prints it, with a join link, when it starts.")
        joined = st.form_submit_button("Join", type="primary")
    if joined:
        _try_code(code)
        if st.session_state.get("admitted"):
            st.rerun()
    if st.session_state.get("access_message"):
        st.error(st.session_state["access_message"])


def _login_prompt() -> None:
    st.title("nullviz · class server")
    st.write("Log in to use this server: your uploads and jobs are kept under your login.")
    st.button("Log in", type="primary", on_click=st.login, key="login")


def default_spec() -> ModelSpec:
    """The model every session starts on (``NULLVIZ_DEFAULT_MODEL``: the cluttered-digits ViT unless the
    server says otherwise), and what a failed load falls back to."""
    return ModelSpec(server_settings().default_model)


@st.cache_resource(show_spinner=False)
def job_queue() -> JobQueue:
    """The server's one job queue (its state is the jobs folder; this object only launches and reads). On a
    shared server it bounds jobs per person and in the queue, and each job's time and memory."""
    s = server_settings()
    limits = JobLimits(per_identity=s.max_jobs_per_workspace, queued=s.max_queued_jobs,
                       max_seconds=s.max_job_minutes * 60 if s.max_job_minutes else None,
                       max_memory_mb=s.max_job_memory_mb) if s.shared else None
    return JobQueue(s.jobs_root, s.max_running_jobs, limits=limits)


@st.cache_resource(show_spinner="Timing one training step on this machine…", max_entries=16)
def _step_seconds(_lm: LoadedModel, key: str, batch_size: int, threads: int) -> float:
    return measure_step_seconds(_lm, batch_size, threads)


def estimate_finetune_job(lm: LoadedModel, configs: list, data: str, processes: int = 1) -> JobEstimate:
    """How long a finetuning job of these runs would take here: its work plan times one training step of this
    model, measured once per (model, batch size, threads) on this server."""
    train, held = job_data_sizes(configs, data, lm.name, str(server_settings().datasets_cache))
    step = _step_seconds(lm, f"{model_key(lm)}|{lm.device}", int(configs[0].batch_size), job_threads())
    return estimate_finetune(configs, train, held, step, processes)


def submit_job(kind: str, params: dict, label: str, threads: int | None = None):
    """Queue a background job of this session: owned by its workspace and counted against its person (login,
    else address, else workspace), whatever tab it comes from."""
    ws = workspace()
    identity = logged_in_identity() or _client_address() or ws.id
    safe = re.sub(r"[^A-Za-z0-9_.:@-]", "_", identity)[:128]
    return job_queue().submit(kind, params, owner=ws.id, label=label, threads=threads, identity=safe)


def follow_job(job_id: str, key: str, stop_label: str, caption: str | None = None):
    """Follow one of this session's background jobs: a Stop button and one progress bar, refreshed every second in
    a fragment (the rest of the page is not rerun), and one rerun of the whole page when the job ends, so its
    result is drawn. Returns the job as it is now, or None when it is gone (its folder removed)."""
    queue, ws = job_queue(), workspace()
    try:
        job = queue.get(job_id, ws.id)
    except JobNotFoundError:
        return None

    @st.fragment(run_every=None if job.finished else 1.0)
    def follow() -> None:
        now = queue.get(job_id, ws.id)
        if caption:
            st.caption(caption)
        if st.button(stop_label, key=f"{key}_stop", disabled=now.finished):
            now = queue.stop(job_id, ws.id)
        st.progress(float(now.status.get("fraction", 0.0)), text=now.describe(queue.position(now)))
        if now.finished and not st.session_state.get(f"{key}_final_{job_id}"):
            st.session_state[f"{key}_final_{job_id}"] = True
            st.rerun()

    follow()
    return job


def follow_job_result(job_key: str, result_key: str, file_name: str, stop_label: str, failure: str,
                      caption: str | None = None, parse=lambda d: d) -> None:
    """The session's pending job, stored as (what it is about, job id) under ``job_key``: followed with
    :func:`follow_job`; when it ends, its ``file_name`` (JSON) parsed and stored as (what it is about, result)
    under ``result_key`` — or, failed or stopped before writing it, its message (else ``failure``) shown."""
    pending = st.session_state.get(job_key)
    if pending is None:
        return
    job = follow_job(pending[1], job_key.removesuffix("_job"), stop_label, caption)
    if job is None or job.finished:
        st.session_state.pop(job_key)
    if job is not None and job.finished:
        path = job.dir / file_name
        if job.state == "failed" or not path.exists():
            show_error(NullvizError(job.message or failure))
        else:
            st.session_state[result_key] = (pending[0], parse(json.loads(path.read_text())))


def job_threads() -> int:
    return threads_per_job(server_settings().max_running_jobs)


def workspace() -> Workspace:
    """This session's files and jobs. Local mode: one workspace for everyone. Shared mode: the logged-in user's
    (where login is configured), else one the server issued to this browser session, signed and kept in the URL
    (``?ws=…``) so a reload or a bookmark finds the same jobs. A link whose workspace the server did not issue
    (guessed, chosen, altered) is refused: the session gets a fresh workspace and says so."""
    settings = server_settings()
    if not settings.shared:
        return Workspace(LOCAL_WORKSPACE, settings)
    ws = st.session_state.get("workspace_id")
    identity = logged_in_identity()
    if ws is None:
        signer = server_keys().signer
        asked = st.query_params.get("ws")
        if identity is not None:
            ws = signer.for_identity(identity)
        elif asked and signer.verify(asked):
            ws = asked
        else:
            if asked:
                st.session_state["workspace_refused"] = True
            ws = signer.issue()
        st.session_state["workspace_id"] = ws
    if identity is None and st.query_params.get("ws") != ws:
        st.query_params["ws"] = ws
    return Workspace(ws, settings)


def upload_widget(label: str, key: str, types: list[str] | None = None, container=st, **kwargs):
    """``st.file_uploader`` capped at this server's upload size."""
    return container.file_uploader(label, type=types, key=key, max_upload_size=server_settings().max_upload_mb,
                                   **kwargs)


@st.cache_resource(show_spinner="Loading model…", max_entries=4)
def _cached_model(name: str, checkpoint: str | None, device: str, max_params: int | None,
                  local_folders: bool) -> LoadedModel:
    lm = load_model(name, checkpoint=checkpoint, device=device, max_params=max_params, local_folders=local_folders)
    sys.stderr.write(f"nullviz: model {lm.label!r} loaded into the shared cache\n")
    return lm


def cached_model(spec: ModelSpec) -> LoadedModel:
    """One LoadedModel per (name, checkpoint, resolved device), shared by all sessions: never mutate it.

    On a shared server the spec is checked first (:meth:`Workspace.check_model_name`: no server path, an ``hf:``
    id from the hub only, a folder or checkpoint only from this session's uploads) and the model's size is
    counted before it is built (``NULLVIZ_MAX_MODEL_PARAMS``)."""
    settings = server_settings()
    form = "name"
    if settings.shared and (spec.checkpoint or embedded_model(spec.name) is None):
        ws = workspace()
        form = ws.check_model_name(spec.name)
        if spec.checkpoint:
            ws.check_server_path(spec.checkpoint, "the checkpoint")
    return _cached_model(spec.name, spec.checkpoint, str(resolve_device(spec.device)), settings.max_model_params,
                         not settings.shared or form == "folder")


@st.cache_data(show_spinner=False)
def home_picture(spec: ModelSpec):
    """The Home page's live picture: the default model's sample, exact nullspace noise, and its proof — as three
    PNGs at the model's resolution with captions, as data URLs (no Plotly and no request for the images: the first
    page a visitor sees draws as soon as it arrives; the browser enlarges the pixels, ``HOME_PICTURE_CSS``)."""
    lm = cached_model(spec)
    x = lm.preprocess(sample_image(default_sample_for(lm)))
    ns = nullspace(lm)
    v = sample_noise(ns, lm.img_size, NoiseSpec(magnitude=1.5, seed=0))
    report = verify_invariance(lm, x, v, ns)
    panels = [(figures.png_data_url(image), caption) for image, caption in figures.noise_triplet_images(
        lm.to_display(x), to_pixels(lm, v).permute(1, 2, 0).numpy(), lm.to_display(x + v))]
    own = embedded_model(lm.name)
    kind = ("cluttered-digits ViT (a 3 on a photograph it never saw)" if own is not None and own.data == "cluttered"
            else "digits ViT")
    return panels, report, kind


def warm_start() -> str:
    """At server start, before the first visitor: the default model and the Home page's picture into the
    shared caches, so the first session draws at once (server.py runs this in a thread of its own). Returns the
    model's name."""
    spec = default_spec()
    job_queue()  # every session's first run reads the jobs folder through it
    home_picture(spec)
    return spec.name


@dataclass(frozen=True)
class PreparedSynthesisSets:
    """An embedded model's own fit pool, validation draw and test images as tensors on its device, what each set
    is (``used``), and the model's clean logits of each set: what every default synthesis on the Nullspace page
    starts from, made once per model."""

    fit: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    used: dict
    fit_logits: torch.Tensor
    validation_logits: torch.Tensor
    test_logits: torch.Tensor

    def known_logits(self) -> dict[str, torch.Tensor]:
        """The clean logits as :func:`nullviz.noise.approximate.synthesize` takes them."""
        return {"fit_logits": self.fit_logits, "validation_logits": self.validation_logits,
                "check_logits": self.test_logits}


@st.cache_resource(show_spinner=False, max_entries=2)  # (the server's warm thread has no page to spin on)
def _own_synthesis_sets(_lm: LoadedModel, key: tuple) -> PreparedSynthesisSets:
    sets = synthesis_sets(OWN_SOURCE, None, own=key[-1])
    fit, validation, test = (_lm.preprocess(images) for images in (sets.fit, sets.validation, sets.test))
    return PreparedSynthesisSets(fit, validation, test, sets.used, *(clean_logits(_lm.model, images)
                                                                     for images in (fit, validation, test)))


def own_synthesis_sets(lm: LoadedModel) -> PreparedSynthesisSets:
    """:class:`PreparedSynthesisSets` of an embedded model: made once per model and shared read-only by every
    session (the same for every synthesis on the Nullspace page; its clean logits save every δ ~0.6 s of
    forward passes on 2 cores)."""
    return _own_synthesis_sets(lm, (lm.name, lm.checkpoint, str(lm.device), model_own_data(lm.name)))


def own_synthesis_sets_shown(lm: LoadedModel) -> PreparedSynthesisSets:
    """:func:`own_synthesis_sets` from a page: a spinner while they are prepared (none once they are cached)."""
    with st.spinner("Preparing the training images…"):
        return own_synthesis_sets(lm)


def warm_synthesis_pool() -> None:
    """At server start, before it reports ready (server.py): the default model's own training, validation and
    test images and their clean logits (~4 s on 2 cores for the cluttered scenes), so the page's first default δ
    does not wait for them and no visitor's page shares the cores with them. A model without data of its own has
    nothing to prepare."""
    lm = cached_model(default_spec())
    if model_own_data(lm.name) is not None:
        own_synthesis_sets(lm)


def fit_threads_to_jobs() -> None:
    """Every script run: the server's torch threads are the cores the running jobs leave (all of them while no
    job runs); set before the page computes anything."""
    settings = server_settings()
    wanted = server_threads(settings.max_running_jobs, job_queue().running())
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def init_session() -> None:
    """Session defaults, set once per browser session (app.py calls this before any page)."""
    st.session_state.setdefault("model_spec", default_spec())
    st.session_state.setdefault("model_error", None)
    workspace()
    fit_threads_to_jobs()


def require_shell(page_file: str) -> None:
    """Open this page through app.py's navigation.

    Until the first session of a server process runs app.py's ``st.navigation``, Streamlit serves ``pages/``
    the old way and runs a deep-linked page (``/finetune``) on its own, without the app's sidebar. Such a
    run goes to app.py once, which sets up navigation and switches back to the page.
    """
    if "model_spec" not in st.session_state:
        admit()  # a join link's class code is taken here, before the detour: it is never carried on in the link
        params = {k: v for k, v in st.query_params.to_dict().items() if k != "code"}
        st.session_state["_deep_link"] = (f"pages/{Path(page_file).name}", params)
        st.switch_page("app.py")


def follow_deep_link() -> None:
    """Called by app.py after ``st.navigation``: finish a deep link that ``require_shell`` redirected."""
    target = st.session_state.pop("_deep_link", None)
    if target:
        page, params = target
        st.switch_page(page, query_params=params or None)  # ?present=1&step=4 survives the detour


PRESENTATION_CSS = """<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stSidebarCollapseButton"],
[data-testid="stExpandSidebarButton"] {display: none !important}
html {font-size: 130%}
[data-testid="stMainBlockContainer"] {max-width: 100%; padding-left: 3rem; padding-right: 3rem}
</style>"""


#: The Home picture's pixels enlarged as squares by the browser (the PNGs are the model's 64 or 32 px).
HOME_PICTURE_CSS = """<style>.st-key-home_picture img {image-rendering: pixelated}</style>"""
#: Wide enough for the longest model entry ("vit_small_patch14_reg4_dinov2 — 588→384, nullity ≥ 204 · cached"):
#: at Streamlit's 300 px the lists cut every entry's end, "cached" included. Still resizable by dragging.
SIDEBAR_CSS = """<style>
section[data-testid="stSidebar"] {width: 30rem !important; min-width: 30rem}
</style>"""


def presentation_mode() -> bool:
    """Presentation mode: for projecting in class (``?present=1`` opens it; the Learn page toggles it)."""
    if "presentation" not in st.session_state:
        st.session_state["presentation"] = st.query_params.get("present") == "1"
    return bool(st.session_state["presentation"])


def set_presentation_mode(on: bool) -> None:
    st.session_state["presentation"] = bool(on)
    if on:
        st.query_params["present"] = "1"
    else:
        st.query_params.pop("present", None)


def presentation_shell() -> None:
    """In presentation mode every page is scaled up and the sidebar is hidden; a button leaves the mode.

    Text and widgets grow with the root font size (Streamlit sizes them in rem); figures and tables keep laying
    themselves out at the width they are given. A CSS ``zoom`` would scale them after Plotly and the data grid
    measured their container, so they came out 1.3× wider than the screen and were cut at the right."""
    if not presentation_mode():
        return
    st.html(PRESENTATION_CSS)
    st.button("Leave presentation mode", key="leave_presentation", on_click=set_presentation_mode, args=(False,),
              icon=":material/close_fullscreen:")


def active_model() -> LoadedModel:
    """The session's chosen model as cached for every session: for reading its facts (name, input size,
    label), never for running it (that is :func:`current_model`'s view). Falls back to the embedded default if
    the chosen one cannot be loaded."""
    try:
        return cached_model(ModelSpec.from_dict(st.session_state.get("model_spec") or default_spec()))
    except NullvizError as exc:
        st.session_state["model_error"] = str(exc)
        st.session_state["model_spec"] = default_spec()
        return cached_model(default_spec())


def current_model() -> LoadedModel:
    """The active model for this script run, to run: its own :meth:`LoadedModel.view` of the cached model, a
    private module tree over the shared weights. The library already leaves a model untouched; the view makes
    that hold by construction for whatever a page does, and for this session's previous run still finishing
    in another thread."""
    return active_model().view()


@st.cache_data(show_spinner=False)
def vit_catalog() -> list[tuple[str, str]]:
    """(name, label) of the common timm ViTs, with patch-embedding shape and structural nullity."""
    return [(f.name, f.label) for f in (architecture_facts(n) for n in COMMON_VITS)]


def model_sidebar() -> None:
    """Sidebar form: embedded default / timm name with pretrained weights / a checkpoint, and device.

    The checkpoint is a path on the server in local mode and an upload in shared mode."""
    spec = ModelSpec.from_dict(st.session_state["model_spec"])
    shared = server_settings().shared
    with st.sidebar:
        st.html(SIDEBAR_CSS)
        st.subheader("Model")
        with st.form("model_form", border=False):
            sources = ["Embedded model (offline)", "timm name (pretrained, downloads)",
                       "Upload a checkpoint" if shared else "Local checkpoint"]
            embedded = embedded_model(spec.name) if not spec.checkpoint else None
            current = 0 if embedded is not None else (2 if spec.checkpoint else 1)
            if st.session_state.pop("_model_spec_changed", False):  # a page switched the model: show it here
                st.session_state["model_source"] = sources[current]
                if embedded is not None:
                    st.session_state["model_embedded"] = embedded.short_name
                st.session_state["model_name"] = "" if embedded_model(spec.name) else spec.name
                if not shared:
                    st.session_state["model_checkpoint"] = spec.checkpoint or ""
            source = st.radio("Source", sources, index=current, key="model_source")
            names = [m.short_name for m in EMBEDDED_MODELS.values()]
            shown = embedded.short_name if embedded is not None else server_settings().default_model
            embedded_pick = st.selectbox(
                "Embedded model", names, index=names.index(shown), key="model_embedded",
                format_func=lambda n: f"{n} — {embedded_model(n).description}",
                help="Models that ship with nullviz, trained by the scripts in scripts/ (no network).")
            catalog = vit_catalog()
            picks = ["type a name below", *(label for _, label in catalog)]
            pick = st.selectbox("Common ViTs", picks, key="model_pick",
                                help="Patch embedding c·p² → D and the nullity its shape forces (from the "
                                     "architecture alone, nothing downloaded); 'cached': the weights are in "
                                     "this machine's Hugging Face cache and load offline.")
            name = st.text_input("timm architecture", value="" if embedded_model(spec.name) else spec.name,
                                 placeholder="vit_tiny_patch16_224", key="model_name",
                                 help="For 'timm name' and the checkpoint. Leave empty for a checkpoint "
                                      "saved by nullviz (its .json sidecar names the architecture). A Hugging "
                                      "Face transformers ViT (ViT, non-distilled DeiT, DINO) as "
                                      "hf:google/vit-base-patch16-224 is converted into timm's ViT.")
            if shared:
                upload = upload_widget("Checkpoint (.safetensors, or .pth/.pt holding weights only), or a zipped "
                                       "Hugging Face model folder (.zip)", "model_checkpoint_upload",
                                       [s.lstrip(".") for s in (*CHECKPOINT_SUFFIXES, MODEL_FOLDER_SUFFIX)])
                checkpoint = ""
            else:
                upload = None
                checkpoint = st.text_input("Checkpoint path", value=spec.checkpoint or "", key="model_checkpoint",
                                           placeholder="/path/to/model.safetensors")
            devices = ["auto", *available_devices()]
            device = st.selectbox("Device", devices, index=devices.index(spec.device) if spec.device in devices else 0,
                                  key="model_device")
            submitted = st.form_submit_button("Load model", type="primary")
        if submitted:
            if upload is not None and Path(upload.name).suffix.lower() == MODEL_FOLDER_SUFFIX:
                try:
                    folder = workspace().save_model_folder_zip(upload.name, upload.getvalue())
                    _switch_model(sources[1], sources, f"hf:{folder}", "", device)
                except NullvizError as exc:
                    st.session_state["model_error"] = f"{upload.name}: {exc}"
                checkpoint = None
            elif upload is not None:
                try:
                    checkpoint = str(workspace().save_upload(upload.name, upload.getvalue(), CHECKPOINT_SUFFIXES))
                except NullvizError as exc:
                    st.session_state["model_error"] = str(exc)
                    checkpoint = None
            if checkpoint is not None:
                picked = catalog[picks.index(pick) - 1][0] if pick != picks[0] else ""
                typed = name.strip()
                chosen = picked if picked and (not typed or typed == spec.name) else typed
                _switch_model(source, sources, embedded_pick if source == sources[0] else chosen, checkpoint.strip(),
                              device)
        lm = active_model()
        if st.session_state.get("model_error"):
            st.error(user_message(st.session_state["model_error"]))
        st.caption(f"Active: **{markdown_text(lm.label)}**" + (f" from {markdown_text(shown_checkpoint(lm.checkpoint))}"
                                                            if lm.checkpoint else "") + f" on `{lm.device}`")
        if shared:
            if st.session_state.pop("workspace_refused", False):
                st.warning("The workspace in that link was not issued by this server: you have a new, empty one.")
            if logged_in_identity() is not None:
                st.caption(":material/group: Shared server: your uploads and jobs are kept under your login.")
            else:
                st.caption(":material/group: Shared server: your uploads and jobs are private to this browser tab's "
                           "link (bookmark it to come back to your jobs; whoever has the link has them).")
            if server_settings().open_access:
                st.caption(":material/lock_open: This server is open to anyone who reaches it (no class code).")


def _switch_model(source: str, sources: list[str], name: str, checkpoint: str, device: str) -> None:
    if source == sources[0]:
        new = ModelSpec(name, None, device)
    elif source == sources[1]:
        if not name:
            st.session_state["model_error"] = "Type a timm architecture name, e.g. vit_tiny_patch16_224."
            return
        new = ModelSpec(name, None, device)
    else:
        if not checkpoint:
            st.session_state["model_error"] = ("Choose a checkpoint file to upload." if server_settings().shared
                                               else "Type the path of a .safetensors or .pth checkpoint file.")
            return
        new = ModelSpec(name or "default", checkpoint, device)
    try:
        cached_model(new)  # checks the spec against this server's rules before anything is read
    except NullvizError as exc:  # keep the previous model: nothing is lost
        st.session_state["model_error"] = str(exc)
        return
    st.session_state["model_error"] = None
    st.session_state["model_spec"] = new


def set_active_checkpoint(path: str, device: str | None = None) -> None:
    """Make a checkpoint (e.g. a finetuned model) the active model of the app."""
    workspace().check_server_path(path, "the checkpoint")
    spec = ModelSpec.from_dict(st.session_state["model_spec"])
    st.session_state["model_spec"] = ModelSpec("default", path, device or spec.device)
    st.session_state["model_error"] = None
    st.session_state["_model_spec_changed"] = True  # the sidebar's widgets follow at the next run


def own_checkpoints() -> dict[str, str]:
    """This session's finetuned models that can be used ("job label · run" → checkpoint path), newest job first."""
    return {f"{job.label} · {name}": res.checkpoint for job in job_queue().jobs(workspace().id)
            if job.finished and job.kind == "finetune" for name, res in job.results.items() if res.usable}


def _cache_key(fn, key: str) -> str:
    """A shared cache's key: the function's qualified name and what its result is about."""
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', fn)}|{key}"


@st.cache_resource(show_spinner=False, max_entries=64)
def _shared_result(key: str, _fn, _args: tuple, _kwargs: dict):  # "_": not hashed, the key stands for them
    return _fn(*_args, **_kwargs)


def shared_result(fn, key: str, *args, **kwargs):
    """``fn(*args, **kwargs)`` computed once per server for ``key`` and shared read-only by every session (a bounded
    cache: the 64 most recent keys). ``key`` must name everything the result depends on (:func:`fingerprint` of the
    model and inputs): a class opening a page's default view computes it once, not once per student. Sessions
    asking for one key at the same time wait for the first to compute it."""
    return _shared_result(_cache_key(fn, key), fn, args, kwargs)


@st.cache_resource(show_spinner=False, max_entries=256)
def _shared_figure(key: str, _fn, _args: tuple, _kwargs: dict):
    return _fn(*_args, **_kwargs)


def shared_figure(fn, key: str, *args, **kwargs):
    """:func:`shared_result` for a figure builder, in a cache of its own (the 256 most recent keys, each figure at
    most a few hundred kB): the figures of every block, head and query a class looks at come and go there
    without pushing the results they draw out of theirs. A shared figure is never changed after it is made."""
    return _shared_figure(_cache_key(fn, key), fn, args, kwargs)


def default_sample_for(lm: LoadedModel) -> str:
    """The sample a page opens with: the model's own kind of image (a cluttered scene, a digit), else a photo."""
    own = embedded_model(lm.name)
    if own is not None:
        return own.sample
    return "digit-3" if lm.img_size[0] <= 64 else "chelsea"


@dataclass
class ChosenImage:
    name: str
    image: Image.Image


def image_picker(key: str, default_sample: str | None = None) -> ChosenImage | None:
    """Upload an image or pick a sample; bad uploads get a one-line message and the sample is kept."""
    lm = active_model()
    names = sample_image_names()
    if default_sample is None:
        default_sample = default_sample_for(lm)
    col1, col2 = st.columns([1, 1])
    with col1:
        sample = st.selectbox("Sample image", names, index=names.index(default_sample), key=f"{key}_sample")
    with col2:
        upload = upload_widget("…or upload an image", f"{key}_upload")
    if upload is not None:
        try:
            check_upload_size(upload.name, upload.size, server_settings().max_upload_mb)
            image = load_image_bytes(upload.getvalue())
            note = downscale_note(image)
            if note:
                st.caption(note)
            return ChosenImage(upload.name, image)
        except NullvizError as exc:
            st.error(user_message(f"{upload.name}: {exc} Showing the sample image instead."))
    return ChosenImage(sample, sample_image(sample))


def block_slider(container, label: str, layers: int, key: str, **kwargs) -> int:
    """A 1-based block picker; a one-block model gets a caption instead (a slider needs two ends)."""
    if layers > 1:
        return container.slider(label, 1, layers, key=key, **kwargs)
    container.caption("block 1 (the model's only block)")
    return 1


def model_key(lm: LoadedModel) -> str:
    """Which model a stored result is about: the architecture and the checkpoint (two checkpoints of one
    architecture are different models)."""
    return f"{lm.name}|{lm.checkpoint or ''}"


def fingerprint(*parts) -> str:
    """A short digest of what a result was computed from (tensors, images, names and numbers): a page keeps
    it beside a stored result and shows the result only while its inputs are still the current ones."""
    digest = hashlib.blake2b(digest_size=12)
    for part in parts:
        if isinstance(part, torch.Tensor):
            digest.update(part.detach().float().cpu().contiguous().numpy().tobytes())
        elif isinstance(part, Image.Image):
            digest.update(f"{part.mode}{part.size}".encode())
            digest.update(part.tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def shown_checkpoint(path: str | None) -> str:
    """How a checkpoint is named on screen: its path locally (the user typed it), its file name on a shared
    server (never a server path, nor the workspace's key in it)."""
    if not path:
        return ""
    return Path(path).name if server_settings().shared else path


def user_message(text: str) -> str:
    """A message for the screen: on a shared server every path under the data folder becomes its last part, and
    the whole is shown as text (a file or class name is never read as markdown)."""
    settings = server_settings()
    if settings.shared:
        text = re.sub(re.escape(str(settings.data_root)) + r"[^\s'\"]*", lambda m: Path(m.group(0)).name, text)
    return markdown_text(text)


def session_gone():
    """A stop flag for long work in the server's process (a page's sweep): true once this browser session has ended
    (its tab closed), so nobody's closed tab keeps a core busy. Without a server (AppTest): never."""
    from streamlit.runtime import get_instance
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    try:
        runtime = get_instance()
    except RuntimeError:
        return lambda: False
    if ctx is None:
        return lambda: False
    return lambda: not runtime.is_active_session(ctx.session_id)


def show_error(exc: Exception) -> None:
    """One clear line for a user error (never a traceback; names shown as text)."""
    st.error(user_message(str(exc)))


def png_bytes(hwc: np.ndarray) -> bytes:
    """An H×W×3 float image in [0, 1] as PNG bytes (8-bit)."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(hwc, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def figure_html(fig) -> Callable[[], bytes]:
    """A self-contained interactive HTML of a plotly figure (PNG export is in the figure's own toolbar), for a
    download button: made when the button is pressed, not at every run (plotly hashes its 4.6 MB script for
    the page's integrity attribute each time: a third of a class's first views of the Attention page)."""
    return lambda: fig.to_html(include_plotlyjs="cdn", full_html=True).encode()
