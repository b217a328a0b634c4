"""One student cannot exhaust the queue: jobs bounded per person and in the queue, waiting jobs hold no process, every
way a job ends written to its status.json, a stop honoured inside a long step, time and memory limits, retention."""

import json
import os
import signal
import stat
import time

import pytest

from conftest import wait_until
from nullviz.jobs.limits import STOP_GRACE_S, JobLimitError, JobLimits, Watchdog
from nullviz.jobs.queue import JobQueue, finetune_params
from nullviz.jobs.retention import clean_old
from nullviz.server.settings import ServerSettings
from nullviz.train.finetune import FinetuneConfig

MODEL = {"name": "default", "device": "cpu"}


def params(steps=2, batch=8, epochs=1):
    cfg = FinetuneConfig(method="baseline", epochs=epochs, steps_per_epoch=steps, batch_size=batch, synth_steps=2,
                         eval_synth_steps=2, synth_fraction=0.02, eval_limit=16)
    return finetune_params(MODEL, "default", [cfg])


@pytest.fixture
def sleeper(tmp_path):
    """A stand-in for the worker's Python: starts, does nothing for a minute (no torch, no job)."""
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\nexec sleep 60\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def pids(queue):
    return [j.status.get("pid") for j in queue.active()]


def kill_workers(queue) -> None:
    for pid in pids(queue):
        if pid:
            os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------ the queue
def test_waiting_jobs_hold_no_process(tmp_path, sleeper):
    queue = JobQueue(tmp_path / "jobs", max_running=1, python=sleeper)
    jobs = [queue.submit("finetune", params(), owner="ws-a") for _ in range(4)]
    try:
        running = [p for p in pids(queue) if p]
        assert len(running) == 1 and jobs[0].id == queue.active()[0].id and queue.active()[0].status["pid"]
        assert [queue.position(queue.get(j.id)) for j in jobs[1:]] == [2, 3, 4]
        assert queue.dispatch() == []  # no slot free: nothing more starts
    finally:
        kill_workers(queue)


def test_a_killed_worker_is_written_failed_and_the_next_job_starts(tmp_path, sleeper):
    queue = JobQueue(tmp_path / "jobs", max_running=1, python=sleeper)
    first, second = (queue.submit("finetune", params(), owner="ws-a") for _ in range(2))
    pid = queue.get(first.id).status["pid"]
    os.kill(pid, signal.SIGKILL)
    status = wait_until(lambda: (s := json.loads((first.dir / "status.json").read_text()))["state"] == "failed" and s)
    assert "was killed (signal 9)" in status["message"]
    wait_until(lambda: queue.get(second.id).status.get("pid"))  # the reaper handed the slot on
    os.kill(queue.get(second.id).status["pid"], signal.SIGKILL)


def test_a_worker_that_died_unseen_is_written_failed_by_whoever_looks(tmp_path, sleeper):
    """A server restart: the dead worker was nobody's child, so the next look at the queue writes its ending."""
    queue = JobQueue(tmp_path / "jobs", max_running=1, python=sleeper)
    job = queue.submit("finetune", params(), owner="ws-a")
    status = json.loads((job.dir / "status.json").read_text())
    os.kill(status["pid"], signal.SIGKILL)
    wait_until(lambda: json.loads((job.dir / "status.json").read_text())["state"] == "failed")  # this queue's reaper
    # as the status and index were before a restart: running, under a worker that no one alive started
    (job.dir / "status.json").write_text(json.dumps({"state": "running", "pid": 2**22 + 12345}))
    queue._marker("ws-a", job.id).touch()
    fresh = JobQueue(tmp_path / "jobs", max_running=1, python=sleeper)
    assert fresh.active() == []
    written = json.loads((job.dir / "status.json").read_text())
    assert written["state"] == "failed" and "ended without finishing" in written["message"]


def test_jobs_per_person_across_workspaces_and_the_queue_cap(tmp_path, sleeper):
    queue = JobQueue(tmp_path / "jobs", max_running=1, python=sleeper, limits=JobLimits(per_identity=2, queued=2))
    try:
        queue.submit("finetune", params(), owner="tab-one", identity="10.0.0.7")
        queue.submit("finetune", params(), owner="tab-two", identity="10.0.0.7")  # another tab, the same person
        with pytest.raises(JobLimitError, match="allows 2 per person"):
            queue.submit("finetune", params(), owner="tab-three", identity="10.0.0.7")
        queue.submit("finetune", params(), owner="tab-four", identity="10.0.0.8")
        with pytest.raises(JobLimitError, match=r"queue is full \(2 jobs waiting\)"):
            queue.submit("finetune", params(), owner="tab-five", identity="10.0.0.9")
        waiting = queue.waiting()
        queue.stop(waiting[-1].id)  # a waiting job stopped: cancelled at once, and its person may submit again
        assert queue.get(waiting[-1].id).state == "cancelled"
        queue.submit("finetune", params(), owner="tab-five", identity="10.0.0.9")
    finally:
        kill_workers(queue)


def test_listing_reads_the_index_not_every_old_job(tmp_path, sleeper):
    queue = JobQueue(tmp_path / "jobs", max_running=1, python=sleeper)
    for k in range(300):  # old, ended jobs
        d = tmp_path / "jobs" / "ws-old" / f"old-{k}"
        d.mkdir(parents=True)
        (d / "job.json").write_text(json.dumps({"id": f"old-{k}", "owner": "ws-old", "kind": "finetune",
                                                "submitted": 1.0, "params": {}}))
        (d / "status.json").write_text(json.dumps({"state": "done", "finished": 2.0}))
    reads = []
    original = JobQueue._info
    JobQueue._info = lambda self, d: (reads.append(d), original(self, d))[1]
    try:
        assert queue.running() == 0 and queue.waiting() == [] and queue.dispatch() == []
    finally:
        JobQueue._info = original
    assert reads == []


# ---------------------------------------------------------------------------------------- the watchdog
def test_watchdog_stops_at_the_time_limit_and_ends_an_ignored_stop():
    now = [0.0]
    asked, ended = [], []
    stop = {"on": False, "seen": False}

    def request():
        asked.append(now[0])
        stop["on"] = True

    dog = Watchdog(lambda: stop["on"], lambda: stop["seen"], request, ended.append, max_seconds=10,
                   clock=lambda: now[0])
    assert dog.check() is None
    now[0] = 11
    assert dog.check() is None and asked == [11] and dog.timed_out
    now[0] = 11 + STOP_GRACE_S + 0.1
    assert dog.check() == "ignored"  # the loop never came round to its stop check
    stop["seen"] = True
    assert dog.check() is None  # acknowledged: it may save
    now[0] = 10_000
    assert dog.check() == "slow"


# ------------------------------------------------------------------------------------------ real workers
@pytest.mark.slow
def test_stop_is_honoured_within_seconds_inside_one_long_step(tmp_path):
    """One step of batch 4,096 takes far longer than 2 s on CPU: the watchdog ends the job and says so."""
    queue = JobQueue(tmp_path / "jobs", max_running=1)
    job = queue.submit("finetune", params(steps=1, batch=4096), owner="ws-a", threads=1)
    wait_until(lambda: "training" in queue.get(job.id).phase or "baseline" in queue.get(job.id).phase, 120)
    time.sleep(1.0)  # inside the step
    asked = time.monotonic()
    queue.stop(job.id)
    info = wait_until(lambda: (j := queue.get(job.id)).finished and j, 60)
    took = time.monotonic() - asked
    assert info.state == "stopped" and "long step" in info.message, info.status
    assert took < STOP_GRACE_S + 5, took  # grace + the watchdog's poll + process exit, with room for a slow CI


@pytest.mark.slow
def test_the_time_limit_ends_a_job_as_failed(tmp_path):
    queue = JobQueue(tmp_path / "jobs", max_running=1, limits=JobLimits(max_seconds=3))
    job = queue.submit("finetune", params(steps=100_000), owner="ws-a", threads=1)
    info = wait_until(lambda: (j := queue.get(job.id)).finished and j, 120)
    assert info.state == "failed" and "time limit of 0.05 minutes" in info.message, info.status


@pytest.mark.slow
def test_the_memory_limit_ends_a_job_as_failed_with_one_sentence(tmp_path):
    """Torch maps ~3.6 GB of address space on import; 4.5 GB leaves too little for a batch of 20,000."""
    queue = JobQueue(tmp_path / "jobs", max_running=1, limits=JobLimits(max_memory_mb=4500))
    job = queue.submit("finetune", params(steps=1, batch=20_000), owner="ws-a", threads=1)
    info = wait_until(lambda: (j := queue.get(job.id)).finished and j, 180)
    assert info.state == "failed" and "ran out of its memory limit (4,500 MB" in info.message, info.status
    assert "\n" not in info.message


# --------------------------------------------------------------------------------------------- retention
def test_retention_deletes_old_ended_jobs_and_uploads_only(tmp_path, sleeper):
    settings = ServerSettings(shared=True, data_root=tmp_path, max_running_jobs=1)
    queue = JobQueue(settings.jobs_root, 1, python=sleeper)
    now = time.time()
    old_done = tmp_path / "jobs" / "ws-a" / "old-done"
    old_done.mkdir(parents=True)
    (old_done / "job.json").write_text(json.dumps({"id": "old-done", "owner": "ws-a", "kind": "finetune",
                                                   "submitted": now - 30 * 86400, "params": {}}))
    (old_done / "status.json").write_text(json.dumps({"state": "done", "finished": now - 29 * 86400}))
    (old_done / "model.safetensors").write_bytes(b"\0" * 4096)
    running = queue.submit("finetune", {**params(), "data": str(tmp_path / "uploads" / "ws-a" / "d-used")},
                           owner="ws-a")
    for name in ("u-old", "d-used", "u-new"):
        (tmp_path / "uploads" / "ws-a" / name).mkdir(parents=True)
        (tmp_path / "uploads" / "ws-a" / name / "f.bin").write_bytes(b"\0" * 1000)
    for name in ("u-old", "d-used"):
        for p in (tmp_path / "uploads" / "ws-a" / name, tmp_path / "uploads" / "ws-a" / name / "f.bin"):
            os.utime(p, (now - 10 * 86400, now - 10 * 86400))
    try:
        dry = clean_old(settings, 7, dry_run=True)
        assert dry.jobs == ["ws-a/old-done"] and dry.uploads == ["ws-a/u-old"] and old_done.exists()
        report = clean_old(settings, 7)
        assert report.bytes >= 4096 + 1000 and not old_done.exists()
        assert not (tmp_path / "uploads" / "ws-a" / "u-old").exists()
        assert (tmp_path / "uploads" / "ws-a" / "d-used").exists()  # a waiting job still needs it
        assert (tmp_path / "uploads" / "ws-a" / "u-new").exists() and running.dir.exists()
    finally:
        kill_workers(queue)


def test_jobs_clean_on_the_command_line(tmp_path, capsys):
    from nullviz.cli import main

    d = tmp_path / "jobs" / "ws-a" / "old"
    d.mkdir(parents=True)
    (d / "job.json").write_text(json.dumps({"id": "old", "owner": "ws-a", "kind": "finetune", "submitted": 1.0,
                                            "params": {}}))
    (d / "status.json").write_text(json.dumps({"state": "stopped", "finished": 2.0}))
    assert main(["jobs", "clean", "--dry-run", "--data-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] and out["jobs"] == ["ws-a/old"] and d.exists()
    assert main(["jobs", "clean", "--older-than", "1", "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["jobs"] == ["ws-a/old"] and not d.exists()


# ----------------------------------------------------------------------------------- the estimate
def test_the_budget_refuses_a_job_estimated_past_the_limit():
    from nullviz.jobs.limits import check_job_minutes

    check_job_minutes(59 * 60, 60)
    check_job_minutes(10**9, None)
    with pytest.raises(JobLimitError, match="about 95 minutes here; this server runs jobs of at most 60 minutes"):
        check_job_minutes(95 * 60, 60)


def test_measuring_a_step_leaves_the_model_as_it_was(default_lm):
    from conftest import assert_state_equal, state_snapshot
    from nullviz.train.estimate import estimate_finetune, measure_step_seconds

    snap = state_snapshot(default_lm.model)
    seconds = measure_step_seconds(default_lm, 64, threads=1)
    assert seconds > 0 and not default_lm.model.training
    assert_state_equal(default_lm.model, snap)
    assert all(not p.requires_grad for p in default_lm.model.parameters())
    est = estimate_finetune([FinetuneConfig(method="baseline", epochs=2, steps_per_epoch=10, eval_limit=32)], 0, 32,
                            seconds)
    assert est.seconds == pytest.approx(est.units * seconds) and "on this machine" in est.describe()


@pytest.mark.slow
def test_the_estimate_counts_the_work_the_worker_counts(tmp_path):
    from nullviz.train.estimate import estimate_finetune

    queue = JobQueue(tmp_path / "jobs", max_running=1)
    configs = [FinetuneConfig(method=m, epochs=2, steps_per_epoch=3, batch_size=8, synth_steps=2, eval_synth_steps=2,
                              synth_fraction=0.02, eval_limit=16, fresh_deltas=1) for m in ("baseline", "nullspace")]
    job = queue.submit("finetune", finetune_params(MODEL, "default", configs), owner="ws-a", threads=1)
    info = wait_until(lambda: (j := queue.get(job.id)).finished and j, 180)
    assert info.state == "done"
    assert info.steps_total == pytest.approx(estimate_finetune(configs, 0, 16, 1.0).units)
