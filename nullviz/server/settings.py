"""How one server is shared: settings from the environment, per-session workspaces, and upload limits.

Local mode (the default) is one trusted user or lab: server paths may be typed, every job on the server is
listed. Shared mode (``NULLVIZ_SHARED=1``, for a class) turns every server-path input off in favour of
uploads, caps upload sizes and jobs, and gives each browser session a workspace of its own (a random,
unguessable id) under which its uploads and jobs live; a session can only name files inside its own
workspace, and the job list shows only its own jobs.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from nullviz.core.errors import DataError, InvalidParameterError, ServerPathRefusedError, UploadTooLargeError
from nullviz.models import EMBEDDED_MODELS, embedded_model

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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, object] | None = None) -> "ServerSettings":
        """``NULLVIZ_SHARED``, ``NULLVIZ_MAX_JOBS``, ``NULLVIZ_MAX_JOBS_PER_SESSION``, ``NULLVIZ_MAX_UPLOAD_MB``,
        ``NULLVIZ_MAX_EXPANDED_MB``, ``NULLVIZ_DATA_DIR``, ``NULLVIZ_EVAL_JOB_THRESHOLD``, ``NULLVIZ_DEFAULT_MODEL``; ``overrides`` (e.g. the ``[nullviz]`` table of
        ``.streamlit/secrets.toml``: shared, max_jobs, …) win over the environment. Shared mode lowers the
        defaults to a class's scale: 50 MB uploads, 500 MB unpacked, 2 jobs per session."""
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
        )

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
        return (f"shared mode: uploads only (≤ {self.max_upload_mb} MB each), {self.max_running_jobs} jobs at once, "
                f"≤ {self.max_jobs_per_workspace} per session, each session's files private")


# ------------------------------------------------------------------------------------------- workspaces
def new_workspace_id() -> str:
    return secrets.token_urlsafe(18)


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
        p = Path(path).resolve()
        return any(p.is_relative_to(root.resolve()) for root in (self.uploads, self.jobs))

    def check_server_path(self, path: str | Path, what: str) -> Path:
        """A path a user typed or a page carried: in shared mode it must lie in this workspace.

        The refusal says nothing about whether the path exists (no probing the server's disk)."""
        if self.settings.shared and not self.allows(path):
            raise ServerPathRefusedError(
                f"This is a shared server: {what} can only be one of your uploads or runs, not a path on the "
                f"server. Upload the file instead.")
        return Path(path)

    def save_upload(self, name: str, data: bytes, suffixes: tuple[str, ...]) -> Path:
        """Store an upload under this workspace, size-checked, with a safe file name; returns its path."""
        check_upload_size(name, len(data), self.settings.max_upload_mb)
        base = Path(name).name
        suffix = Path(base).suffix.lower()
        if suffix not in suffixes:
            raise DataError(f"{base!r} is not one of the accepted file types ({', '.join(suffixes)}).")
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(base).stem)[:80] or "upload"
        folder = Path(tempfile.mkdtemp(prefix="u-", dir=self._mkdir(self.uploads)))
        path = folder / (stem + suffix)
        path.write_bytes(data)
        return path

    def new_upload_folder(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="d-", dir=self._mkdir(self.uploads)))

    @staticmethod
    def _mkdir(p: Path) -> Path:
        p.mkdir(parents=True, exist_ok=True)
        return p


def check_upload_size(name: str, size: int, max_mb: int) -> None:
    if size > max_mb * 1024 * 1024:
        raise UploadTooLargeError(f"{Path(name).name!r} is {size / 2**20:.1f} MB; this server accepts uploads of "
                                  f"at most {max_mb} MB.")
