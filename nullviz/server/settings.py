"""How one server is shared: settings from the environment, per-session workspaces, and upload limits.

Local mode (the default) is one trusted user or lab: server paths may be typed, every job on the server is
listed. Shared mode (``NULLVIZ_SHARED=1``, for a class) admits a session only with the class code (or a login,
:mod:`.access`), turns every server-path input off in favour of uploads, caps upload sizes, model sizes and jobs,
and gives each browser session a workspace the server issued (a signed, unguessable id) under which its uploads
and jobs live; a session can only name files inside its own workspace, and the job list shows only its own jobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from nullviz.core.atomic import write_bytes_atomic, write_text_atomic
from nullviz.core.errors import DataError, DiskSpaceError, InvalidParameterError, ServerPathRefusedError, UploadTooLargeError
from nullviz.models import EMBEDDED_MODELS, embedded_model

from nullviz.models.hf import is_hub_id

from .access import OPEN_ACCESS, lexically_inside, normalise_code
from .process import env_flag

_WORKSPACE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
LOCAL_WORKSPACE = "local"


def default_max_running_jobs() -> int:
    """One job per 4 CPU cores (at least 1, at most 4): each job's torch then gets the cores it needs."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def _positive_int(name: str, value: object) -> int:
    try:
        out = int(str(value).strip())
    except ValueError:
        out = 0
    if out < 1:
        raise InvalidParameterError(name, "ServerSettings", "a whole number ≥ 1", value)
    return out


#: Shared mode's default model budget (parameters): ViT-B/16 (86.6 M) and smaller.
SHARED_MAX_MODEL_PARAMS = 90_000_000
#: The bounds shared mode sets and local mode leaves off: (field, variable, shared default). ``none`` turns one off.
SHARED_BOUNDS = (("max_queued_jobs", "NULLVIZ_MAX_QUEUED_JOBS", 16),
                 ("max_job_minutes", "NULLVIZ_MAX_JOB_MINUTES", 60),
                 ("max_job_memory_mb", "NULLVIZ_MAX_JOB_MEMORY_MB", 8192),
                 ("retention_days", "NULLVIZ_RETENTION_DAYS", 7),
                 ("workspace_quota_mb", "NULLVIZ_WORKSPACE_QUOTA_MB", 2048),
                 ("min_free_disk_mb", "NULLVIZ_MIN_FREE_DISK_MB", 1024),
                 ("max_sweep_points", "NULLVIZ_MAX_SWEEP_POINTS", 12),
                 ("max_sweep_steps", "NULLVIZ_MAX_SWEEP_STEPS", 3000))
#: A class code a teacher sets must have at least this many letters or digits.
MIN_ACCESS_CODE_CHARS = 6


def _positive_number(name: str, value: object) -> float:
    try:
        out = float(str(value).strip())
    except ValueError:
        out = 0.0
    if not out > 0 or out == float("inf"):
        raise InvalidParameterError(name, "ServerSettings", "a number > 0", value)
    return out


#: Bounds counted in fractions too (a retention of 0.01 days, a quarter of an hour, for a soak test).
FRACTIONAL_BOUNDS = frozenset({"NULLVIZ_RETENTION_DAYS"})


def _optional_limit(name: str, value: object) -> int | float | None:
    if str(value).strip().lower() in ("none", "", "0", "unlimited"):
        return None
    return _positive_number(name, value) if name in FRACTIONAL_BOUNDS else _positive_int(name, value)


def _access_code(value: str | None) -> str | None:
    if value is None or not str(value).strip():
        return None
    if str(value).strip().lower() == OPEN_ACCESS:
        return OPEN_ACCESS
    if len(normalise_code(value)) < MIN_ACCESS_CODE_CHARS:
        raise InvalidParameterError("NULLVIZ_ACCESS_CODE", "ServerSettings",
                                    f"at least {MIN_ACCESS_CODE_CHARS} letters or digits, or 'none' for an open server",
                                    "a shorter code")  # never echo a secret
    return str(value).strip()


def _embedded_name(value: str) -> str:
    found = embedded_model(value.strip())
    if found is None:
        raise InvalidParameterError("NULLVIZ_DEFAULT_MODEL", "ServerSettings",
                                    f"an embedded model: {', '.join(m.short_name for m in EMBEDDED_MODELS.values())}",
                                    value)
    return found.short_name


@dataclass(frozen=True)
class ServerSettings:
    """One server's deployment settings (read once per server; see :meth:`from_env`)."""

    shared: bool = False
    max_running_jobs: int = field(default_factory=lambda: default_max_running_jobs())  # more wait in the queue
    max_jobs_per_workspace: int = 4  # queued + running jobs one workspace may have (shared mode)
    max_upload_mb: int = 200  # one uploaded file (image, zip, checkpoint, noise)
    max_expanded_mb: int = 1024  # what an ImageFolder zip may unpack to
    max_zip_files: int = 50_000
    #: Robustness evaluations costlier than this (``robustness.evaluation_size``: forward passes of a
    #: 1M-parameter model) run as background jobs. The page's defaults on the default model (~21,000) run on
    #: the spot in seconds; all 15 corruptions × 5 severities on the 359 held-out digits (~285,000, about a
    #: minute) or the defaults on a ViT-B (~500,000) become jobs.
    eval_job_threshold: int = 100_000
    #: The embedded model every session starts on ('cluttered': the 8×8-token cluttered-digits ViT, made for
    #: attention; 'digits': the fastest one). ``NULLVIZ_DEFAULT_MODEL``.
    default_model: str = "cluttered"
    data_root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "nullviz")
    #: Shared mode's class code (``NULLVIZ_ACCESS_CODE``): None, a random one made at start and printed in the
    #: server's log; ``"none"``, no code (anyone who reaches the port is let in). Unused in local mode.
    access_code: str | None = None
    #: Host names besides the served address and loopback that a shared server answers to
    #: (``NULLVIZ_ALLOWED_HOSTS``, comma-separated: the DNS name students type, a proxy's name).
    extra_allowed_hosts: tuple[str, ...] = ()
    #: The largest model (parameters) a session may load, counted on the meta device before anything is
    #: allocated (``NULLVIZ_MAX_MODEL_PARAMS``); None: no limit (local mode's default). Shared mode: ViT-B/16's
    #: 86.6 M fits, ViT-L's 304 M does not.
    max_model_params: int | None = None
    #: Jobs waiting in the queue, everyone's together (``NULLVIZ_MAX_QUEUED_JOBS``); None: no bound.
    max_queued_jobs: int | None = None
    #: A running job's wall-clock limit in minutes (``NULLVIZ_MAX_JOB_MINUTES``); None: none.
    max_job_minutes: float | None = None
    #: A job worker's address space in MB (``NULLVIZ_MAX_JOB_MEMORY_MB``; torch's own mappings take ~3.6 GB of
    #: it on CPU); None: no limit.
    max_job_memory_mb: int | None = None
    #: Uploads and ended jobs older than this many days are deleted by the server (``NULLVIZ_RETENTION_DAYS``);
    #: None: kept.
    retention_days: float | None = None
    #: What one workspace may keep on disk, uploads and jobs together (``NULLVIZ_WORKSPACE_QUOTA_MB``).
    workspace_quota_mb: int | None = None
    #: Uploads are refused while the data folder's disk has less free space than this (``NULLVIZ_MIN_FREE_DISK_MB``).
    min_free_disk_mb: int | None = None
    #: A page's sweep (the Nullspace page's frontier) runs in the server's process: at most this many syntheses
    #: (``NULLVIZ_MAX_SWEEP_POINTS``) and synthesis steps in all (``NULLVIZ_MAX_SWEEP_STEPS``).
    max_sweep_points: int | None = None
    max_sweep_steps: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, object] | None = None) -> "ServerSettings":
        """``NULLVIZ_SHARED``, ``NULLVIZ_MAX_JOBS``, ``NULLVIZ_MAX_JOBS_PER_SESSION``, ``NULLVIZ_MAX_UPLOAD_MB``,
        ``NULLVIZ_MAX_EXPANDED_MB``, ``NULLVIZ_DATA_DIR``, ``NULLVIZ_EVAL_JOB_THRESHOLD``, ``NULLVIZ_DEFAULT_MODEL``; ``overrides`` (e.g. the ``[nullviz]`` table of
        ``.streamlit/secrets.toml``: shared, max_jobs, …) win over the environment. Shared mode lowers the
        defaults to a class's scale: 50 MB uploads, 500 MB unpacked, 2 jobs per session, models up to
        :data:`SHARED_MAX_MODEL_PARAMS` parameters. ``NULLVIZ_ACCESS_CODE``, ``NULLVIZ_ALLOWED_HOSTS`` and
        ``NULLVIZ_MAX_MODEL_PARAMS`` (``none``: no limit) are read too."""
        env = dict(os.environ if environ is None else environ)
        for key, value in (overrides or {}).items():
            env["NULLVIZ_" + str(key).upper()] = str(value)
        shared = env_flag(env.get("NULLVIZ_SHARED", ""))
        default = cls()
        return cls(
            shared=shared,
            max_running_jobs=_positive_int("NULLVIZ_MAX_JOBS", env.get("NULLVIZ_MAX_JOBS", default.max_running_jobs)),
            max_jobs_per_workspace=_positive_int("NULLVIZ_MAX_JOBS_PER_SESSION",
                                                 env.get("NULLVIZ_MAX_JOBS_PER_SESSION", 2 if shared else 4)),
            max_upload_mb=_positive_int("NULLVIZ_MAX_UPLOAD_MB", env.get("NULLVIZ_MAX_UPLOAD_MB", 50 if shared else 200)),
            max_expanded_mb=_positive_int("NULLVIZ_MAX_EXPANDED_MB",
                                          env.get("NULLVIZ_MAX_EXPANDED_MB", 500 if shared else 1024)),
            data_root=Path(env.get("NULLVIZ_DATA_DIR") or default.data_root),
            eval_job_threshold=_positive_int("NULLVIZ_EVAL_JOB_THRESHOLD",
                                             env.get("NULLVIZ_EVAL_JOB_THRESHOLD", default.eval_job_threshold)),
            default_model=_embedded_name(env.get("NULLVIZ_DEFAULT_MODEL") or default.default_model),
            access_code=_access_code(env.get("NULLVIZ_ACCESS_CODE")),
            extra_allowed_hosts=tuple(h.strip() for h in env.get("NULLVIZ_ALLOWED_HOSTS", "").split(",") if h.strip()),
            max_model_params=_optional_limit("NULLVIZ_MAX_MODEL_PARAMS", env.get(
                "NULLVIZ_MAX_MODEL_PARAMS", SHARED_MAX_MODEL_PARAMS if shared else "none")),
            **{name: _optional_limit(var, env.get(var, shared_default if shared else "none"))
               for name, var, shared_default in SHARED_BOUNDS},
        )

    @property
    def open_access(self) -> bool:
        """Shared mode with no class code, on purpose (``NULLVIZ_ACCESS_CODE=none``)."""
        return self.shared and self.access_code == OPEN_ACCESS

    @property
    def jobs_root(self) -> Path:
        return self.data_root / "jobs"

    @property
    def uploads_root(self) -> Path:
        return self.data_root / "uploads"

    @property
    def datasets_cache(self) -> Path:
        """Downloaded public data sets (CIFAR-10): shared by everyone, written once."""
        return self.data_root / "datasets"

    def describe(self) -> str:
        if not self.shared:
            return "local mode: server paths allowed, all jobs listed"
        access = "open to anyone who reaches it" if self.open_access else "class code required"
        return (f"shared mode: {access}, uploads only (≤ {self.max_upload_mb} MB each), {self.max_running_jobs} "
                f"jobs at once, ≤ {self.max_jobs_per_workspace} per session, each session's files private")


# ------------------------------------------------------------------------------------------- workspaces
def valid_workspace_id(value: object) -> bool:
    return isinstance(value, str) and (value == LOCAL_WORKSPACE or bool(_WORKSPACE_RE.match(value)))


@dataclass(frozen=True)
class Workspace:
    """The folders one session may read and write: its uploads and its jobs."""

    id: str
    settings: ServerSettings

    def __post_init__(self):
        if not valid_workspace_id(self.id):
            raise InvalidParameterError("id", "Workspace", "'local' or a 16–64 character token", self.id)

    @property
    def uploads(self) -> Path:
        return self.settings.uploads_root / self.id

    @property
    def jobs(self) -> Path:
        return self.settings.jobs_root / self.id

    def allows(self, path: str | Path) -> bool:
        """Whether ``path`` lies in this workspace's uploads or jobs, decided on its text alone (``..`` folded,
        nothing read from the disk: the answer cannot tell what exists)."""
        return lexically_inside(path, (self.uploads, self.jobs))

    def check_server_path(self, path: str | Path, what: str) -> Path:
        """A path a user typed or a page carried: in shared mode it must lie in this workspace.

        The refusal says nothing about whether the path exists (no probing the server's disk)."""
        if self.settings.shared and not self.allows(path):
            raise ServerPathRefusedError(
                f"This is a shared server: {what} can only be one of your uploads or runs, not a path on the "
                f"server. Upload the file instead.")
        return Path(path)

    def check_model_name(self, name: str) -> str:
        """How a model name may be loaded here: ``"name"`` (an embedded model or a timm architecture),
        ``"hub"`` (``hf:owner/name``, fetched from the hub or its cache only, never read as a folder) or
        ``"folder"`` (``hf:`` + a folder; in shared mode only one of this workspace's uploads).

        In shared mode every other form — ``hf:`` with an absolute, relative or ``~`` path outside the
        workspace, timm's ``local-dir:``/``file:`` prefixes — is refused before the file system is touched,
        with one sentence whatever the folder is or whether it exists."""
        name = str(name).strip()
        hf = name.startswith("hf:")
        ident = name[3:] if hf else name
        if hf and self.settings.shared and os.path.isabs(ident) and self.allows(ident):
            return "folder"
        if hf and is_hub_id(ident):
            return "hub"
        if not hf and re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", ident):
            return "name"
        if self.settings.shared:
            raise ServerPathRefusedError(
                "This is a shared server: the model can only be an embedded model, a timm name, a Hugging Face hub "
                "id (hf:owner/name) or one of your uploads, not a path on the server. Upload the model instead.")
        return "folder" if hf else "name"

    def save_upload(self, name: str, data: bytes, suffixes: tuple[str, ...]) -> Path:
        """Store an upload under this workspace, size-checked, with a safe file name; returns its path.

        Stored once per content (a folder named by its hash): loading the same upload again reuses the file."""
        check_upload_size(name, len(data), self.settings.max_upload_mb)
        base = Path(name).name
        suffix = Path(base).suffix.lower()
        if suffix not in suffixes:
            raise DataError(f"{base!r} is not one of the accepted file types ({', '.join(suffixes)}).")
        path = self.uploads / f"u-{content_hash(data)}" / (safe_stem(base) + suffix)
        if not path.is_file():
            self.check_space(len(data))
            write_bytes_atomic(self._mkdir(path.parent) / path.name, data)
        return path

    def save_model_folder_zip(self, name: str, data: bytes) -> Path:
        """Unpack a zipped Hugging Face model folder (an upload kind of its own) under this workspace, once per
        content; returns the folder to load as ``hf:<folder>``, named after the zip (``vit-s.zip`` → ``vit-s``)."""
        from nullviz.models.uploads import unpack_model_folder_zip

        check_upload_size(name, len(data), self.settings.max_upload_mb)
        if Path(name).suffix.lower() != ".zip":
            raise DataError(f"{Path(name).name!r} is not a .zip of a model folder.")
        home = self.uploads / f"m-{content_hash(data)}"
        target = home / safe_stem(Path(name).name)
        done = home / ".unpacked"
        if done.is_file():
            return Path(done.read_text())
        self.check_space(len(data))
        staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=self._mkdir(self.uploads)))
        try:
            folder = unpack_model_folder_zip(data, staging, max_bytes=self.unpack_budget())
            home.mkdir(parents=True, exist_ok=True)
            os.replace(folder, target)
            write_text_atomic(done, str(target))
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # a refused zip leaves nothing behind
        return target

    def new_upload_folder(self) -> Path:
        self.check_space(0)
        return Path(tempfile.mkdtemp(prefix="d-", dir=self._mkdir(self.uploads)))

    @contextlib.contextmanager
    def upload_folder(self, keep: bool = True):
        """A new folder for an unpacked upload, deleted at once if anything in the ``with`` block refuses it (a zip
        over a limit, a folder that turns out not to be a data set): nothing refused stays on disk. ``keep=False``:
        deleted when the block ends too (an upload read once, into memory)."""
        folder = self.new_upload_folder()
        try:
            yield folder
        except Exception:  # a refusal. Not BaseException: a page's rerun (Streamlit's control flow) can interrupt
            shutil.rmtree(folder, ignore_errors=True)  # the block after its job was submitted with this folder
            raise
        finally:
            if not keep:
                shutil.rmtree(folder, ignore_errors=True)

    # --------------------------------------------------------------------------------------- disk space
    def usage_bytes(self) -> int:
        """What this workspace keeps on disk: its uploads and its jobs' folders."""
        return folder_bytes(self.uploads) + folder_bytes(self.jobs)

    def space_left(self) -> int | None:
        """Bytes this workspace may still write: the smaller of what its quota and the data folder's free-space
        floor leave (None: neither is set)."""
        left = []
        if self.settings.workspace_quota_mb is not None:
            left.append(self.settings.workspace_quota_mb * 2**20 - self.usage_bytes())
        if self.settings.min_free_disk_mb is not None:
            root = self._mkdir(self.settings.data_root)
            left.append(shutil.disk_usage(root).free - self.settings.min_free_disk_mb * 2**20)
        return max(0, min(left)) if left else None

    def check_space(self, incoming: int) -> None:
        """Refuse (:class:`DiskSpaceError`, saying what to delete) an upload of ``incoming`` bytes that would pass
        this workspace's quota or leave the server's disk below its floor."""
        settings = self.settings
        if settings.workspace_quota_mb is not None:
            used = self.usage_bytes()
            if used + incoming > settings.workspace_quota_mb * 2**20:
                raise DiskSpaceError(
                    f"Your files take {used / 2**20:,.0f} MB of the {settings.workspace_quota_mb:,} MB each session "
                    f"may keep on this server" + (f" (this upload needs {incoming / 2**20:,.1f} MB)" if incoming else "")
                    + ": delete finished jobs you no longer need (Finetune page), or wait: files older than "
                    + (f"{settings.retention_days:g} days" if settings.retention_days else "a while")
                    + " are deleted.")
        if settings.min_free_disk_mb is not None:
            free = shutil.disk_usage(self._mkdir(settings.data_root)).free
            if free - incoming < settings.min_free_disk_mb * 2**20:
                raise DiskSpaceError(f"The server's disk is nearly full ({free / 2**20:,.0f} MB free): nothing more "
                                     f"can be stored until space is freed. Tell whoever runs the server.")

    def unpack_budget(self) -> int:
        """How many bytes a zip upload may unpack to here: the server's limit, or less when space is short."""
        budget = self.settings.max_expanded_mb * 2**20
        left = self.space_left()
        return budget if left is None else min(budget, left)

    @staticmethod
    def _mkdir(p: Path) -> Path:
        p.mkdir(parents=True, exist_ok=True)
        return p


def folder_bytes(path: Path) -> int:
    """The bytes of the files under ``path`` (or of ``path`` itself, a file); 0 if it does not exist. Links are not
    followed."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return path.stat().st_size if path.is_file() else 0


def content_hash(data: bytes) -> str:
    """A short name for an upload's content (the first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(data).hexdigest()[:16]


def safe_stem(file_name: str) -> str:
    """A file name's stem reduced to letters, digits and ``._-`` (at most 80), never empty."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(file_name).stem)[:80].lstrip(".") or "upload"


def check_upload_size(name: str, size: int, max_mb: int) -> None:
    if size > max_mb * 1024 * 1024:
        raise UploadTooLargeError(f"{Path(name).name!r} is {size / 2**20:.1f} MB; this server accepts uploads of "
                                  f"at most {max_mb} MB.")
