"""What a class leaves behind, deleted once it is old: ended jobs and uploads older than the server's retention
(``NULLVIZ_RETENTION_DAYS``). The server sweeps on a timer (server.py); ``nullviz jobs clean`` does it by hand.
Running and waiting jobs, and the uploads a job still waiting or running may read, are never touched."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from nullviz.server.settings import ServerSettings, folder_bytes

from .queue import JobQueue


@dataclass
class CleanReport:
    """What a clean deleted (or, in a dry run, would delete): job and upload folders, and the bytes they held."""

    jobs: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    bytes: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {"dry_run": self.dry_run, "jobs": self.jobs, "uploads": self.uploads, "freed_mb": round(self.bytes / 2**20, 1)}


def _newest_mtime(path: Path) -> float:
    """When anything under ``path`` was last written (an upload folder in use by a job is younger than its files)."""
    times = [path.stat().st_mtime] + [f.stat().st_mtime for f in path.rglob("*")] if path.is_dir() else \
        [path.stat().st_mtime]
    return max(times)


def clean_old(settings: ServerSettings, older_than_days: float, dry_run: bool = False,
              now: float | None = None) -> CleanReport:
    """Delete ended jobs and uploads older than ``older_than_days`` under ``settings.data_root``."""
    now = time.time() if now is None else now
    report = CleanReport(dry_run=dry_run)
    queue = JobQueue(settings.jobs_root, settings.max_running_jobs)
    cutoff = now - older_than_days * 86400
    in_use = {str(v) for job in queue.active() for v in _paths_in(job.params)}
    for job in queue.clean(older_than_days, dry_run=True, now=now):  # one scan: the jobs, sized, then deleted
        report.jobs.append(f"{job.owner}/{job.id}")
        report.bytes += folder_bytes(job.dir)
        if not dry_run:
            queue.delete(job)
    uploads = settings.uploads_root
    for entry in sorted(uploads.glob("*/*")) if uploads.is_dir() else []:
        if entry.name.startswith(".unpacking-") and now - entry.stat().st_mtime < 3600:
            continue  # an unpack in progress
        if any(p.startswith(str(entry)) for p in in_use) or _newest_mtime(entry) >= cutoff:
            continue
        report.uploads.append(f"{entry.parent.name}/{entry.name}")
        report.bytes += folder_bytes(entry)
        if not dry_run:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    if not dry_run:
        for folder in [*uploads.glob("*"), *settings.jobs_root.glob("*")] if uploads.exists() else []:
            if folder.is_dir() and not folder.name.startswith(".") and not any(folder.iterdir()):
                folder.rmdir()
    return report


def _paths_in(value) -> list[str]:
    """Every string in a job's parameters that could be a path (its data folder, checkpoint, noise file)."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _paths_in(v)]
    return [value] if isinstance(value, str) and "/" in value else []
