"""Long jobs (finetuning runs, large robustness evaluations, large head embeddings) as separate processes that a page only watches.

A job is a folder ``root/<owner>/<job id>/``:

- ``job.json`` — what to run (a kind from :data:`KINDS` and its parameters), who owns it, when it was asked for;
- ``status.json`` — state, progress and pid, written atomically (temp file + rename) by the worker;
- ``STOP`` — a stop request (the page or ``nullviz jobs stop`` creates it; the worker checks it every step, and
  its watchdog ends a worker that has not noticed it within 2 s);
- the job's own outputs: one run folder per method with its ``log.jsonl`` (one JSON line per step and per
  epoch), ``results.json`` at the end, and ``worker.log`` (the worker's stderr: a crash's traceback).

The queue: at most ``max_running`` jobs of one root run at once; the others wait as ``queued`` and hold no
process. :meth:`JobQueue.dispatch` — called at every submit, by every worker as it ends, and by the server's
sweep — starts ``python -m nullviz.jobs DIR`` for the oldest waiting jobs while slots are free, in a session of
its own, so a job outlives the page that started it, a closed tab and a restart of the server, and the server's
Python process never shares a GIL with training. A slot is an exclusive ``fcntl`` lock on
``root/.slots/<n>.lock``; the operating system releases it when the worker exits, however it exits. Jobs not yet
finished are listed in ``root/.active/<owner>/<id>`` (empty files), so the queue reads those, not every job ever
run; a job whose worker died without saying so gets its ``status.json`` written as failed by whoever notices.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from nullviz.core.atomic import write_json_atomic, write_text_atomic
from nullviz.core.errors import InvalidParameterError, JobNotFoundError, NullvizError
from nullviz.core.params import Interval, Options, check
from nullviz.data import check_augmentable, held_out_or_sample_photos, load_dataset, own_data, train_heldout
from nullviz.inspection.attention import head_embedding, load_conditions
from nullviz.models import ModelSpec
from nullviz.robustness import evaluation as R
from nullviz.robustness.benchmarks import BENCHMARKS, evaluate_suite
from nullviz.robustness.evaluation import config_from_dict, images_tensor
from nullviz.train.finetune import TRAIN_STEP_COST, FinetuneConfig, FinetuneResult, finetune
from nullviz.train.estimate import finetune_work

from .limits import (SAVE_GRACE_S, STOP_GRACE_S, JobLimitError, JobLimits, Watchdog, apply_memory_limit, exit_now,
                     is_out_of_memory)


FINAL_STATES = ("done", "stopped", "failed", "cancelled")
STATUS_INTERVAL_S = 1.0  # the worker rewrites status.json at most this often (plus at every state change)


# ------------------------------------------------------------------------------------------ file helpers
def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _pid_alive(pid: int | None) -> bool:
    """Is ``pid`` a live process (not a zombie)?"""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class LogFollower:
    """Reads only what was appended to JSON-lines files since the last call (complete lines only).

    A page keeps one per job and calls :meth:`read` on every redraw: the cost is proportional to the new
    lines, not to the length of the run.
    """

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}

    def read(self, path: Path) -> list[dict[str, Any]]:
        key = str(path)
        try:
            with open(path, "rb") as f:
                f.seek(self.offsets.get(key, 0))
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offsets[key] = self.offsets.get(key, 0) + end
        out = []
        for line in chunk[:end].splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def thin(values: list, max_points: int) -> list:
    """At most ``max_points`` evenly spaced items, always keeping the last (long runs stay readable)."""
    if len(values) <= max_points or max_points < 2:
        return list(values)
    stride = math.ceil(len(values) / max_points)
    out = values[::stride]
    return out if out[-1] is values[-1] else [*out, values[-1]]


# --------------------------------------------------------------------------------------------- the job
def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class JobInfo:
    """A snapshot of one job, read from its folder."""

    id: str
    owner: str
    kind: str
    label: str
    dir: Path
    submitted: float
    params: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)
    identity: str = ""  # who asked (a login, an address or a workspace): per-person caps count by it

    @property
    def state(self) -> str:
        """The worker's state; a worker that died without saying so is 'failed' (a waiting job has no worker)."""
        state = self.status.get("state", "queued")
        if state not in FINAL_STATES and self.status.get("pid") and not _pid_alive(self.status["pid"]):
            return "failed"
        return state

    @property
    def message(self) -> str:
        if self.state == "failed" and self.status.get("state") != "failed":
            return "The job's process ended unexpectedly; its worker.log says why."
        return str(self.status.get("message", ""))

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def steps_done(self) -> float:
        """Work done: steps, or for finetuning every phase's work in training steps (``work_plan``)."""
        return float(self.status.get("steps_done", 0))

    @property
    def steps_total(self) -> float:
        return float(self.status.get("steps_total", 0))

    @property
    def phase(self) -> str:
        """What the job does now, in words ("nullspace · synthesizing δ"); empty before it starts."""
        return str(self.status.get("current", ""))

    @property
    def eta_seconds(self) -> float | None:
        started = self.status.get("started")
        if self.state != "running" or not started or not self.steps_done:
            return None
        elapsed = time.time() - started
        return elapsed / self.steps_done * max(0, self.steps_total - self.steps_done)

    @property
    def stop_requested(self) -> bool:
        """Stop was asked and the job has not ended yet (its worker reads the request between steps)."""
        return not self.finished and (self.dir / "STOP").exists()

    def describe(self, position: int | None = None) -> str:
        """The job's state in one line, true at this moment: what a running job does now; how far a job that
        ended got and how long it ran (never a stage and a percentage as if it were still at work); a stop
        acknowledged the moment it is asked."""
        state, phase = self.state, self.phase
        fraction = min(float(self.status["fraction"]) if "fraction" in self.status  # kinds that count a fraction
                       else self.steps_done / max(self.steps_total, 1.0), 1.0)
        if state == "queued":
            return "waiting in line" + (f" (number {position})" if position else "")
        if state == "running":
            if self.stop_requested:
                return (phase if phase.startswith("stopping") else
                        "stop asked: the job ends after its current step and saves what it has")
            eta = self.eta_seconds
            return (f"running · {phase} · {fraction:.0%}" if phase else f"running · {fraction:.0%}") + (
                f" · about {_duration(eta)} left" if eta is not None else "")
        started, ended = self.status.get("started"), self.status.get("finished")
        took = f" in {_duration(ended - started)}" if started and ended else ""
        if state == "done":
            return f"done{took}"
        if state == "cancelled":
            return "cancelled before it started"
        where = phase.removeprefix("stopping: ").strip()
        during = f" during {where}" if where and not where.startswith("finishing") else ""
        return f"{state} at {fraction:.0%} of its work{during}{took}"

    @property
    def results(self) -> dict[str, FinetuneResult]:
        """A finetune job's finished runs by name (typed; empty before the first run ends)."""
        return {name: FinetuneResult.from_dict(d) for name, d in read_json(self.dir / "results.json").items()}

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "kind": self.kind, "label": self.label, "dir": str(self.dir),
                "submitted": self.submitted, "state": self.state, "message": self.message,
                "steps_done": self.steps_done, "steps_total": self.steps_total}


class JobQueue:
    """Submit, list and stop the jobs under one folder, at most ``max_running`` at once.

    One per server (the app caches it); the folder is the only shared state, so several server processes
    or the command line can share one queue.
    """

    def __init__(self, root: str | Path, max_running: int = 2, python: str = sys.executable,
                 limits: JobLimits | None = None):
        check("max_running", "JobQueue", max_running, Interval(int, 1, 1024))
        self.root = Path(root)
        self.max_running = max_running
        self.python = python
        self.limits = limits or JobLimits()
        self._children: list[subprocess.Popen] = []

    # ------------------------------------------------------------------------------------------- submit
    def submit(self, kind: str, params: dict[str, Any], owner: str = "local", label: str = "",
               threads: int | None = None, identity: str | None = None) -> JobInfo:
        """Write the job's folder and queue it; :meth:`dispatch` starts its worker once a slot is free.

        With :class:`JobLimits`, refused (:class:`JobLimitError`, one sentence) when ``identity`` (default: the
        owner) already has ``per_identity`` jobs queued or running, or ``queued`` jobs already wait."""
        if kind not in KINDS:
            raise InvalidParameterError("kind", "JobQueue.submit", f"one of {sorted(KINDS)}", kind)
        _check_owner(owner)
        KINDS[kind].validate(params)
        identity = identity or owner
        with self._dispatch_lock():
            active = self.active()
            limits = self.limits
            mine = sum(1 for j in active if (j.identity or j.owner) == identity)
            if limits.per_identity is not None and mine >= limits.per_identity:
                raise JobLimitError(f"You already have {mine} jobs queued or running; this server allows "
                                    f"{limits.per_identity} per person. Stop one or wait for one to end.")
            waiting = sum(1 for j in active if not j.status.get("pid"))  # no worker yet
            if limits.queued is not None and waiting >= limits.queued:
                raise JobLimitError(f"The server's queue is full ({waiting} jobs waiting); try again once one "
                                    f"has started.")
            job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
            job_dir = self.root / owner / job_id
            job_dir.mkdir(parents=True)
            spec = {"id": job_id, "owner": owner, "kind": kind, "label": label or kind, "submitted": time.time(),
                    "params": params, "max_running": self.max_running, "threads": threads, "identity": identity,
                    "max_seconds": limits.max_seconds, "max_memory_mb": limits.max_memory_mb}
            write_json_atomic(job_dir / "job.json", spec)
            write_json_atomic(job_dir / "status.json", {"state": "queued"})
            self._marker(owner, job_id).parent.mkdir(parents=True, exist_ok=True)
            self._marker(owner, job_id).touch()
        self.dispatch()
        return self._info(job_dir)

    # ------------------------------------------------------------------------------------- the dispatcher
    def _marker(self, owner: str, job_id: str) -> Path:
        return self.root / ".active" / owner / job_id

    @contextlib.contextmanager
    def _dispatch_lock(self):
        """One dispatcher (or submitter) at a time across threads and processes sharing this folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".dispatch.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def active(self) -> list[JobInfo]:
        """Every owner's jobs that have not ended, from the ``.active`` index (oldest first). A job found ended —
        its worker died without saying so — gets its ``status.json`` written as failed and leaves the index."""
        out = []
        for marker in sorted(self.root.glob(".active/*/*")):
            try:
                job = self._info(self.root / marker.parent.name / marker.name)
            except (JobNotFoundError, KeyError, ValueError):
                marker.unlink(missing_ok=True)
                continue
            if job.finished:
                if job.status.get("state") not in FINAL_STATES:
                    self._record_death(job)
                marker.unlink(missing_ok=True)
                continue
            out.append(job)
        return sorted(out, key=lambda j: (j.submitted, j.id))

    def _record_death(self, job: JobInfo, returncode: int | None = None) -> None:
        if returncode is not None and returncode < 0:
            how = f"was killed (signal {-returncode})"
        elif returncode is not None:
            how = f"exited with code {returncode} without finishing"
        else:
            how = "ended without finishing (killed, or the machine restarted)"
        status = {**job.status, "state": "failed", "finished": time.time(),
                  "message": f"The job's process {how}; its worker.log may say why."}
        write_json_atomic(job.dir / "status.json", status)

    def dispatch(self) -> list[str]:
        """Start workers for the oldest waiting jobs while fewer than ``max_running`` are started; a waiting job
        that was stopped is cancelled. Returns the ids started."""
        started = []
        with self._dispatch_lock():
            active = self.active()
            busy = sum(1 for j in active if j.status.get("pid"))
            for job in active:
                if job.status.get("pid"):
                    continue
                if (job.dir / "STOP").exists():
                    self._end_waiting(job)
                    continue
                if busy >= self.max_running:
                    break
                self._launch(job)
                busy += 1
                started.append(job.id)
        return started

    def _end_waiting(self, job: JobInfo) -> None:
        write_json_atomic(job.dir / "status.json", {"state": "cancelled", "finished": time.time(),
                                                    "message": "Stopped before it started."})
        self._marker(job.owner, job.id).unlink(missing_ok=True)

    def _launch(self, job: JobInfo) -> None:
        with open(job.dir / "worker.log", "ab") as log:
            proc = subprocess.Popen([self.python, "-m", "nullviz.jobs", str(job.dir)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True,
                                    cwd=str(Path(__file__).resolve().parents[2]))
        write_json_atomic(job.dir / "status.json", {"state": "queued", "pid": proc.pid})
        self._children.append(proc)

        def reap() -> None:  # the moment it exits (no <defunct> workers): its ending written, the next job started
            code = proc.wait()
            try:
                info = self._info(job.dir)
                if info.status.get("state") not in FINAL_STATES:
                    self._record_death(info, code)
                self._marker(job.owner, job.id).unlink(missing_ok=True)
                self.dispatch()
            except (OSError, JobNotFoundError):  # the folder was cleaned away meanwhile
                pass

        threading.Thread(target=reap, name=f"reap-{job.id}", daemon=True).start()

    # -------------------------------------------------------------------------------------------- read
    def _info(self, job_dir: Path) -> JobInfo:
        spec = read_json(job_dir / "job.json")
        if not spec:
            raise JobNotFoundError(f"No job in {job_dir.name!r}.")
        return JobInfo(id=spec["id"], owner=spec["owner"], kind=spec["kind"], label=spec.get("label", ""),
                       dir=job_dir, submitted=float(spec["submitted"]), params=spec.get("params", {}),
                       status=read_json(job_dir / "status.json"), identity=str(spec.get("identity") or ""))

    def jobs(self, owner: str | None = None) -> list[JobInfo]:
        """Jobs of ``owner`` (all owners if None), newest first."""
        self._children = [p for p in self._children if p.poll() is None]  # reap finished workers
        if owner is not None:
            _check_owner(owner)
        owners = [self.root / owner] if owner is not None else [p for p in self.root.glob("*") if p.is_dir()]
        out = []
        for d in owners:
            for job_dir in d.glob("*/job.json"):
                try:
                    out.append(self._info(job_dir.parent))
                except (JobNotFoundError, KeyError, ValueError):
                    continue
        return sorted(out, key=lambda j: (j.submitted, j.id), reverse=True)

    def get(self, job_id: str, owner: str | None = None) -> JobInfo:
        """One job; with ``owner``, only that owner's (another owner's job is 'not found', not 'forbidden')."""
        for job in self.jobs(owner):
            if job.id == job_id:
                return job
        raise JobNotFoundError(f"There is no job {job_id!r}" + (" in this workspace." if owner else "."))

    def waiting(self) -> list[JobInfo]:
        """Every owner's queued jobs, oldest first: the queue's order (read from the index of active jobs)."""
        return [j for j in self.active() if j.state == "queued"]

    def position(self, job: JobInfo) -> int | None:
        """1 for the next job to start; None if the job is not waiting."""
        ids = [j.id for j in self.waiting()]
        return ids.index(job.id) + 1 if job.id in ids else None

    def running(self) -> int:
        return sum(1 for j in self.active() if j.state == "running")

    # -------------------------------------------------------------------------------------------- stop
    def stop(self, job_id: str, owner: str | None = None) -> JobInfo:
        """Ask a job to stop: a running job ends its current step cleanly and saves; a queued one never starts."""
        job = self.get(job_id, owner)
        if not job.finished:
            (job.dir / "STOP").touch()
            if not job.status.get("pid"):  # still waiting: no worker to tell, cancelled now
                with self._dispatch_lock():
                    if not self._info(job.dir).status.get("pid"):
                        self._end_waiting(job)
                job = self._info(job.dir)
        return job

    # ------------------------------------------------------------------------------------------- clean
    def clean(self, older_than_days: float, dry_run: bool = False, owner: str | None = None,
              now: float | None = None) -> list[JobInfo]:
        """Delete the folders of ended jobs (done, stopped, failed, cancelled) that ended more than
        ``older_than_days`` ago (every owner's, or ``owner``'s); running and waiting jobs are never touched.
        Returns the jobs deleted (or, with ``dry_run``, that would be)."""
        cutoff = (time.time() if now is None else now) - older_than_days * 86400
        gone = [job for job in self.jobs(owner)
                if job.finished and float(job.status.get("finished") or job.submitted) < cutoff]
        if not dry_run:
            for job in gone:
                self.delete(job)
        return gone

    def delete(self, job: JobInfo) -> None:
        """Remove an ended job's folder (and any entry it left in the index)."""
        shutil.rmtree(job.dir, ignore_errors=True)
        self._marker(job.owner, job.id).unlink(missing_ok=True)


def _check_owner(owner: str) -> None:
    if not owner or not all(c.isalnum() or c in "-_" for c in owner) or len(owner) > 64:
        raise InvalidParameterError("owner", "JobQueue", "1–64 letters, digits, '-' or '_'", owner)


# ------------------------------------------------------------------------------------------ the worker
class JobContext:
    """What a job kind's ``run`` gets: its folder, a stop flag, and a progress reporter."""

    def __init__(self, job_dir: Path, spec: dict[str, Any]):
        self.dir = job_dir
        self.spec = spec
        self.status: dict[str, Any] = {"state": "queued", "pid": os.getpid()}
        self._last_write = 0.0
        self.stop_seen: float | None = None  # when the job's loop first saw the stop request
        self._lock = threading.Lock()  # the watchdog and the loop both write status.json

    def should_stop(self) -> bool:
        if (self.dir / "STOP").exists():
            if self.stop_seen is None:
                self.stop_seen = time.time()
                self.update(current="stopping: finishing the step and saving")
            return True
        return False

    def update(self, force: bool = True, **fields) -> None:
        with self._lock:
            if self.status.get("state") in FINAL_STATES and fields.get("state") not in FINAL_STATES:
                return  # the watchdog already wrote how the job ended
            self.status.update(fields)
            now = time.time()
            if force or now - self._last_write >= STATUS_INTERVAL_S:
                self.status["heartbeat"] = now
                write_json_atomic(self.dir / "status.json", self.status)
                self._last_write = now

    def step(self, n: float = 1) -> None:
        """n more steps (units of work) done (status.json is rewritten at most once a second)."""
        self.update(force=False, steps_done=float(self.status.get("steps_done", 0)) + n)


def _acquire_slot(ctx: JobContext, root: Path, max_running: int) -> int | None:
    """Take a free slot (the dispatcher started this worker because one was free; a worker of a job that was
    dispatched by another server process at the same moment waits here for its turn); the slot's lock fd, or
    None if the job was stopped meanwhile."""
    slots = root / ".slots"
    slots.mkdir(parents=True, exist_ok=True)
    while not (ctx.dir / "STOP").exists():
        for n in range(max_running):
            fd = os.open(slots / f"{n}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
        time.sleep(0.2)
    return None


def run_worker(job_dir: str | Path) -> int:
    """The body of ``python -m nullviz.jobs DIR``: take a slot, run, record the outcome, start the next waiting
    job. Returns the exit code. Whatever ends the job — done, Stop, its time or memory limit, a bug, a stop it
    ignores inside one long step — is written to ``status.json`` with one sentence."""
    job_dir = Path(job_dir)
    spec = read_json(job_dir / "job.json")
    if not spec:
        sys.stderr.write(f"nullviz: error: {job_dir.name!r} holds no job.json\n")
        return 2
    root = job_dir.parent.parent
    max_running = int(spec.get("max_running") or 1)
    ctx = JobContext(job_dir, spec)
    signal.signal(signal.SIGTERM, lambda *_: (job_dir / "STOP").touch())  # `kill` stops cleanly too
    ctx.update(state="queued")
    import torch  # before the slot: the import takes a second or more

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    slot = _acquire_slot(ctx, root, max_running)
    if slot is None:
        ctx.update(state="cancelled", message="Stopped before it started.", finished=time.time())
        return _ended(root, max_running, spec, 0)
    max_memory = spec.get("max_memory_mb")
    apply_memory_limit(max_memory)
    time_limit = (f"Ended at its time limit of {(spec.get('max_seconds') or 0) / 60:g} minutes "
                  f"(NULLVIZ_MAX_JOB_MINUTES)")

    def overdue(reason: str) -> None:
        if watchdog.timed_out:
            message = time_limit + "."
            state = "failed"
        elif reason == "ignored":
            message = f"Stopped during a long step (it did not reach a stop check within {STOP_GRACE_S:g} s); the " \
                      f"step in progress is lost, earlier results are kept."
            state = "stopped"
        else:
            message = f"Stopped; saving took longer than {SAVE_GRACE_S:g} s and was cut short."
            state = "stopped"
        ctx.update(state=state, message=message, finished=time.time())
        os.close(slot)
        _ended(root, max_running, spec, 3)
        exit_now(3)

    watchdog = Watchdog(lambda: (job_dir / "STOP").exists(), lambda: ctx.stop_seen is not None,
                        lambda: (job_dir / "STOP").touch(), overdue, spec.get("max_seconds")).start()
    ctx.update(state="running", started=time.time())
    code = 0
    try:
        KINDS[spec["kind"]].run(spec["params"], ctx)
    except NullvizError as exc:
        ctx.update(state="failed", message=str(exc), finished=time.time())
        code = 2
    except Exception as exc:  # noqa: BLE001 — a bug or no memory: one line for the page, the traceback in worker.log
        traceback.print_exc()
        if is_out_of_memory(exc):
            message = f"The job ran out of its memory limit ({max_memory:,} MB, NULLVIZ_MAX_JOB_MEMORY_MB): " \
                      f"choose a smaller batch, model or data set." if max_memory else \
                      "The job ran out of memory: choose a smaller batch, model or data set."
        else:
            message = f"{type(exc).__name__}: {exc}"
        ctx.update(state="failed", message=message, finished=time.time())
        code = 1
    finally:
        watchdog.finish()
        os.close(slot)  # free the slot now, not after the interpreter's (slow, torch-laden) shutdown
    if code == 0:
        if watchdog.timed_out:
            ctx.update(state="failed", finished=time.time(), message=time_limit + "; what finished by then is saved.")
        else:
            stopped = ctx.should_stop()
            ctx.update(state="stopped" if stopped else "done", finished=time.time(),
                       message="Stopped by request; what finished is saved." if stopped else "")
    return _ended(root, max_running, spec, code)


def _ended(root: Path, max_running: int, spec: dict[str, Any], code: int) -> int:
    """A worker's last act: leave the index of active jobs and start the next waiting one."""
    queue = JobQueue(root, max_running)
    queue._marker(spec["owner"], spec["id"]).unlink(missing_ok=True)
    try:
        queue.dispatch()
    except OSError as exc:  # the next job still starts at the next submit or sweep
        sys.stderr.write(f"nullviz: could not start the next job: {exc}\n")
    return code


# -------------------------------------------------------------------------------------------- job kinds
@dataclass(frozen=True)
class JobKind:
    validate: Callable[[dict[str, Any]], None]
    run: Callable[[dict[str, Any], JobContext], None]


def finetune_params(model: ModelSpec | dict[str, Any], data: str, configs: list, data_cache: str = "data",
                    processes: int = 1) -> dict[str, Any]:
    """Parameters of a 'finetune' job: the model to copy, the data spec, one FinetuneConfig per run, and how
    many processes (GPUs) each run uses (more than one: launched through torchrun with DDP)."""
    return {"model": ModelSpec.from_dict(model).to_dict(), "data": data, "data_cache": data_cache, "processes": int(processes),
            "configs": [c if isinstance(c, dict) else asdict(c) for c in configs]}


def run_names(configs: list[dict[str, Any]]) -> list[str]:
    """The folder (and results key) of each run of a finetune job: the method, with its seed when the job
    runs that method more than once (``nullspace-seed1``)."""
    methods = [c["method"] for c in configs]
    return [c["method"] if methods.count(c["method"]) == 1 else f"{c['method']}-seed{c.get('seed', 0)}"
            for c in configs]


def _validate_finetune(params: dict[str, Any]) -> None:
    ModelSpec.from_dict(params.get("model"))
    if not params.get("configs"):
        raise InvalidParameterError("configs", "finetune job", "at least one run configuration", params.get("configs"))
    for c in params["configs"]:
        if FinetuneConfig(**c).augment != "none" and isinstance(params.get("data"), str):
            check_augmentable(own_data(params["data"], ModelSpec.from_dict(params["model"]).name))
    names = run_names(params["configs"])
    if len(set(names)) != len(names):
        raise InvalidParameterError("configs", "finetune job", "runs that differ in method or seed", names)
    processes = params.get("processes", 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or not 1 <= processes <= 64:
        raise InvalidParameterError("processes", "finetune job", "an int from 1 to 64", processes)
    if not isinstance(params.get("data"), str) or not params["data"]:
        raise InvalidParameterError("data", "finetune job", "'default', 'cifar10' or an ImageFolder path",
                                    params.get("data"))


def _run_finetune(params: dict[str, Any], ctx: JobContext) -> None:
    spec = ModelSpec.from_dict(params["model"])
    processes = int(params.get("processes", 1))
    # several processes: the torchrun ranks load their own copies; this worker only counts the steps
    lm = spec.load() if processes == 1 else None
    data = own_data(params["data"], lm.name if lm else spec.name)
    train, held = train_heldout(data, lm.transform if lm else None, params.get("data_cache", "data"))
    configs = [FinetuneConfig(**c) for c in params["configs"]]
    augmented = {kind: train_heldout(data, lm.transform, params.get("data_cache", "data"),
                                     train_transform=lm.augmentation(kind))[0]
                 for kind in {c.augment for c in configs} - {"none"}} if lm else {}
    # one process: the runs share the starting model's fixed noises per (seed, evaluation steps, augmentation),
    # so only the first run of each makes them (torchrun's ranks are processes of their own: each run makes its own)
    references: dict | None = {} if processes == 1 else None
    plans = finetune_work(configs, len(train), len(held), processes)  # what the estimate before Start counted too
    names = run_names(params["configs"])
    ctx.update(steps_total=sum(sum(p.values()) for p in plans), steps_done=0, methods=names, processes=processes)
    results: dict[str, Any] = {}
    done_before = 0.0
    for name, cfg, plan in zip(names, configs, plans):
        if ctx.should_stop():
            break
        ctx.update(current=name)

        def work(phase: str, units: float, name=name) -> None:
            if ctx.status.get("current") != f"{name} · {phase}":
                ctx.status["current"] = f"{name} · {phase}"
            ctx.step(units)

        if processes > 1:
            summary = _run_with_torchrun(params, cfg, name, processes, ctx)
        else:
            summary = finetune(lm, augmented.get(cfg.augment, train), held, cfg, ctx.dir / name, on_work=work,
                               should_stop=ctx.should_stop, references=references).to_dict()
        done_before += sum(plan.values())
        if not ctx.should_stop():  # the plan's estimate of this run's work is spent: line the count up with it
            ctx.update(force=False, steps_done=done_before)
        results[name] = FinetuneResult.from_dict(summary).to_dict()  # checked, and the same form either way
        write_json_atomic(ctx.dir / "results.json", results)
    ctx.update(force=True)


def torchrun_command(params: dict[str, Any], config_file: Path, out: Path, processes: int) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m nullviz finetune …`` for one run of a finetune job."""
    spec = ModelSpec.from_dict(params["model"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", "nullviz", "finetune", "--config", str(config_file), "--data", params["data"],
           "--data-cache", str(params.get("data_cache", "data")), "--out", str(out), "--json",
           "--model", spec.name, "--device", spec.device]
    if spec.checkpoint:
        cmd += ["--checkpoint", spec.checkpoint]
    return cmd


def _run_with_torchrun(params: dict[str, Any], cfg, name: str, processes: int, ctx: JobContext) -> dict[str, Any]:
    """One run on several processes: torchrun in a child process; progress from the run's log; Stop sends
    SIGTERM, which the ranks turn into a shared stop at the next step (rank 0 saves)."""
    out = ctx.dir / name
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.json"
    write_json_atomic(config_file, asdict(cfg))
    env = dict(os.environ)
    threads = int(env.get("OMP_NUM_THREADS", "0") or 0) or os.cpu_count() or 1
    env["OMP_NUM_THREADS"] = str(max(1, threads // processes))  # the job's share of cores, split over ranks
    log = open(out / "torchrun.log", "w")
    proc = subprocess.Popen(torchrun_command(params, config_file, out, processes), stdout=subprocess.PIPE,
                            stderr=log, env=env, text=True, start_new_session=True)

    follower, signalled = LogFollower(), False
    per_step = TRAIN_STEP_COST[cfg.method]  # the ranks' δ synthesis and evaluation are added when the run ends
    ctx.update(current=f"{name} · {processes} processes")
    try:
        while proc.poll() is None:
            new = sum(1 for rec in follower.read(out / "log.jsonl") if rec.get("kind") == "step")
            if new:
                ctx.step(new * per_step)
            if ctx.should_stop() and not signalled:
                os.killpg(proc.pid, signal.SIGTERM)
                signalled = True
            time.sleep(0.5)
        stdout = proc.stdout.read() if proc.stdout else ""
    finally:
        log.close()
    ctx.step(per_step * sum(1 for rec in follower.read(out / "log.jsonl") if rec.get("kind") == "step"))
    lines = [s for s in stdout.splitlines() if s.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    tail = (out / "torchrun.log").read_text(errors="replace").strip().splitlines()[-20:]
    errors = [s for s in tail if s.startswith("nullviz: error:")]
    if signalled:
        return {"method": cfg.method, "config": asdict(cfg), "epochs_run": 0, "stopped": True, "history": [],
                "checkpoint": None}
    raise RuntimeError(errors[-1] if errors else "the distributed run failed:\n" + "\n".join(tail))


def evaluate_params(models: list[ModelSpec | dict[str, Any]], data: str, config) -> dict[str, Any]:
    """Parameters of an 'evaluate' job: the models, data spec, EvalConfig."""
    return {"models": [ModelSpec.from_dict(m).to_dict() for m in models], "data": data,
            "config": config if isinstance(config, dict) else asdict(config)}


def _validate_evaluate(params: dict[str, Any]) -> None:
    if not params.get("models"):
        raise InvalidParameterError("models", "evaluate job", "at least one model", params.get("models"))
    for m in params["models"]:
        ModelSpec.from_dict(m)
    config_from_dict(params.get("config", {}))


def _run_evaluate(params: dict[str, Any], ctx: JobContext) -> None:
    cfg = R.config_from_dict(params["config"])
    specs = [ModelSpec.from_dict(m) for m in params["models"]]
    dataset = load_dataset(own_data(params["data"], specs[0].name), split="heldout")
    ctx.update(steps_total=len(specs), steps_done=0)
    reports = []
    for k, m in enumerate(specs):
        if ctx.should_stop():
            break
        lm = m.load()

        def progress(stage, done, total, k=k):
            ctx.update(force=False, current=f"model {k + 1}/{len(specs)} · {stage} {done}/{total}",
                       fraction=(k + cfg.fraction_done(stage, done, total)) / len(specs))

        reports.append(R.evaluate(lm, dataset, cfg, progress=progress, should_stop=ctx.should_stop))
        write_text_atomic(ctx.dir / "reports.json", R.report_json(reports))
        ctx.update(steps_done=k + 1, fraction=(k + 1) / len(specs))


def head_embedding_params(model: ModelSpec | dict[str, Any], noises_file: str | Path, images: int, block: int,
                          head: int, method: str = "pca", seed: int = 0) -> dict[str, Any]:
    """Parameters of a 'head_embedding' job: the model, the file of its named noises
    (:func:`nullviz.inspection.attention.save_conditions`), how many of the model's own held-out images (or
    of the sample photographs, for a model without data of its own), the block, head, method and seed."""
    return {"model": ModelSpec.from_dict(model).to_dict(), "noises": str(noises_file), "images": int(images),
            "block": int(block), "head": int(head), "method": method, "seed": int(seed)}


def _validate_head_embedding(params: dict[str, Any]) -> None:
    ModelSpec.from_dict(params.get("model", {}))
    check("images", "head_embedding job", params.get("images"), Interval(int, 1, 100_000))
    check("method", "head_embedding job", params.get("method"), Options(("pca", "tsne")))
    for key in ("block", "head"):
        check(key, "head_embedding job", params.get(key), Interval(int, 1, 10_000))
    if not Path(str(params.get("noises", ""))).is_file():
        raise InvalidParameterError("noises", "head_embedding job", "a file of named noises", params.get("noises"))


def _run_head_embedding(params: dict[str, Any], ctx: JobContext) -> None:
    lm = ModelSpec.from_dict(params["model"]).load()
    noises = load_conditions(params["noises"])
    x, _ = images_tensor(lm, held_out_or_sample_photos(lm.name), limit=int(params["images"]))
    ctx.update(steps_total=len(x), steps_done=0, current="tracing", fraction=0.0)
    share = 0.5 if params["method"] == "tsne" else 0.95  # of the bar for tracing; the rest is the embedding

    def progress(done: int, total: int) -> None:
        last = done == total
        ctx.update(force=last, steps_done=done, fraction=share * done / total,
                   current=("embedding (t-SNE reports no progress of its own)" if params["method"] == "tsne"
                            else "embedding") if last else f"tracing {done}/{total} images")

    emb = head_embedding(lm, x, noises, int(params["block"]), int(params["head"]), params["method"],
                         int(params.get("seed", 0)), progress=progress, should_stop=ctx.should_stop)
    write_text_atomic(ctx.dir / "embedding.json", json.dumps(emb.to_dict()))
    ctx.update(fraction=1.0, current="done")


def suite_params(model: ModelSpec | dict[str, Any], root: str | Path, only: list[str] | None, limit: int | None,
                 attacks: list[str], config) -> dict[str, Any]:
    """Parameters of a 'suite' job: the model, the benchmark root, which benchmarks, the limit per benchmark,
    the attacks on the validation images and their budgets (an EvalConfig)."""
    return {"model": ModelSpec.from_dict(model).to_dict(), "root": str(root), "only": only, "limit": limit,
            "attacks": list(attacks), "config": config if isinstance(config, dict) else asdict(config)}


def _validate_suite(params: dict[str, Any]) -> None:
    ModelSpec.from_dict(params.get("model", {}))
    if not Path(str(params.get("root", ""))).is_dir():
        raise InvalidParameterError("root", "suite job", "a folder that holds the benchmarks", params.get("root"))
    for name in params.get("only") or []:
        check("only", "suite job", name, Options(tuple(BENCHMARKS)))
    config_from_dict(params.get("config", {}))


def _run_suite(params: dict[str, Any], ctx: JobContext) -> None:
    lm = ModelSpec.from_dict(params["model"]).load()
    cfg = config_from_dict(params["config"])
    ctx.update(fraction=0.0, current="classifying")

    def progress(key: str, done: int, total: int) -> None:
        ctx.update(force=False, current=f"{key} · {done}/{total} images", fraction=0.9 * done / max(total, 1))

    report = evaluate_suite(lm, params["root"], tuple(params["only"]) if params.get("only") else None,
                            params.get("limit"), tuple(params.get("attacks", ())), cfg, cfg.batch_size, cfg.seed,
                            progress, ctx.should_stop)
    write_text_atomic(ctx.dir / "suite.json", json.dumps(report.to_dict(), indent=2))
    ctx.update(fraction=1.0, current="done")


KINDS: dict[str, JobKind] = {"finetune": JobKind(_validate_finetune, _run_finetune),
                             "suite": JobKind(_validate_suite, _run_suite),
                             "evaluate": JobKind(_validate_evaluate, _run_evaluate),
                             "head_embedding": JobKind(_validate_head_embedding, _run_head_embedding)}
