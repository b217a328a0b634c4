"""What one job, one person and the whole queue may take on a shared server, and the worker's own guards.

:class:`JobLimits` is checked by :meth:`JobQueue.submit` (jobs per person, jobs waiting) and written into each
job's ``job.json`` (its wall-clock and memory limits); the worker applies those to itself at start
(:func:`apply_memory_limit`, :class:`Watchdog`), so a job ends — and says how in its ``status.json`` — whether
it finishes, is stopped, runs out of time or memory, or ignores a stop inside one long step.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass
from typing import Callable

from nullviz.core.errors import NullvizError


class JobLimitError(NullvizError, RuntimeError):
    """A job was refused at submit: its owner has as many as allowed, or the server's queue is full."""


@dataclass(frozen=True)
class JobLimits:
    """A shared server's bounds on jobs (None: no bound).

    ``per_identity``: queued + running jobs of one person (their login, else their address, else their
    workspace), whatever tab or workspace they submit from. ``queued``: jobs waiting, everyone's together.
    ``max_seconds``: a running job's wall-clock limit. ``max_memory_mb``: a worker's address space
    (``RLIMIT_AS``), torch's own mappings included."""

    per_identity: int | None = None
    queued: int | None = None
    max_seconds: float | None = None
    max_memory_mb: int | None = None


#: How long a worker has to acknowledge a stop (its loop's next check) before the watchdog ends it.
STOP_GRACE_S = 2.0
#: How long a worker that acknowledged a stop may take to save and finish before the watchdog ends it.
SAVE_GRACE_S = 120.0


def check_job_minutes(estimated_seconds: float, max_minutes: float | None) -> None:
    """Refuse at submit a job whose estimate passes the server's limit (None: no limit), saying what to cut."""
    if max_minutes is not None and estimated_seconds > max_minutes * 60:
        raise JobLimitError(f"This job would take about {estimated_seconds / 60:,.0f} minutes here; this server runs "
                            f"jobs of at most {max_minutes:g} minutes (NULLVIZ_MAX_JOB_MINUTES). Use fewer epochs, "
                            f"steps, seeds, methods or evaluation images.")


def apply_memory_limit(max_memory_mb: int | None) -> bool:
    """Cap this process's address space at ``max_memory_mb`` (an allocation beyond it fails with MemoryError,
    which the worker reports in one sentence). Returns whether a limit was set."""
    if not max_memory_mb:
        return False
    limit = int(max_memory_mb) * 2**20
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return True


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's CPU allocator failing (``RuntimeError: … can't allocate memory``)."""
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "not enough memory" in str(exc)


class Watchdog:
    """A daemon thread of the worker that ends the job when its loop cannot:

    - past ``max_seconds`` of running it asks the job to stop (as Stop does) and records why;
    - once a stop is asked (``stop_requested()``), the job has :data:`STOP_GRACE_S` to notice it
      (``acknowledged()``: its loop called ``should_stop`` since) and :data:`SAVE_GRACE_S` more to finish; past
      either, ``on_overdue(reason)`` runs (the worker writes the job's final status there and exits)."""

    def __init__(self, stop_requested: Callable[[], bool], acknowledged: Callable[[], bool],
                 request_stop: Callable[[], None], on_overdue: Callable[[str], None], max_seconds: float | None = None,
                 poll_s: float = 0.25, clock: Callable[[], float] = time.monotonic):
        self.stop_requested, self.acknowledged, self.request_stop = stop_requested, acknowledged, request_stop
        self.on_overdue, self.max_seconds, self.poll_s, self.clock = on_overdue, max_seconds, poll_s, clock
        self.timed_out = False
        self._started = clock()
        self._asked_at: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="nullviz-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def finish(self) -> None:
        self._done.set()

    def check(self) -> str | None:
        """One look (the thread calls this every ``poll_s``): the reason the job is overdue, or None."""
        now = self.clock()
        if self.max_seconds is not None and not self.timed_out and now - self._started > self.max_seconds:
            self.timed_out = True
            self.request_stop()
        if self._asked_at is None and self.stop_requested():
            self._asked_at = now
        if self._asked_at is None:
            return None
        if not self.acknowledged() and now - self._asked_at > STOP_GRACE_S:
            return "ignored"
        if now - self._asked_at > STOP_GRACE_S + SAVE_GRACE_S:
            return "slow"
        return None

    def _watch(self) -> None:
        while not self._done.wait(self.poll_s):
            reason = self.check()
            if reason is not None:
                self.on_overdue(reason)
                return


def exit_now(code: int) -> None:
    """End the worker at once (its status is already written): no torch teardown, no waiting on the loop."""
    os._exit(code)
