"""A job's one-line status is true at the moment it is read (issue 39: "done · gaussian · evaluating · 100 %",
"stopped · baseline · evaluating · 12 %", and nothing for ~14 s after Stop)."""

import os
import time

from nullviz.jobs.queue import JobInfo


def job(tmp_path, **status) -> JobInfo:
    return JobInfo(id="j", owner="o", kind="finetune", label="", dir=tmp_path, submitted=0.0, params={},
                   status={"pid": os.getpid(), **status})


def test_each_state_says_what_is_true_now(tmp_path):
    now = time.time()
    assert job(tmp_path, state="queued", pid=None).describe(3) == "waiting in line (number 3)"
    running = job(tmp_path, state="running", current="gaussian · evaluating", steps_done=50, steps_total=200,
                  started=now - 30)
    assert running.describe().startswith("running · gaussian · evaluating · 25% · about ")
    done = job(tmp_path, state="done", current="gaussian · evaluating", steps_done=200, steps_total=200,
               started=now - 150, finished=now)
    assert done.describe() == "done in 2 min"  # no stage, no percentage: it is not at work any more
    stopped = job(tmp_path, state="stopped", current="stopping: finishing the step and saving", steps_done=24,
                  steps_total=200, started=now - 20, finished=now)
    assert stopped.describe() == "stopped at 12% of its work in 20 s"
    failed = job(tmp_path, state="failed", current="baseline · training", steps_done=10, steps_total=100,
                 started=now - 5, finished=now)
    assert failed.describe() == "failed at 10% of its work during baseline · training in 5 s"
    assert job(tmp_path, state="cancelled", pid=None).describe() == "cancelled before it started"
    evaluating = job(tmp_path, state="running", current="fgsm · 8/32 images", fraction=0.25)
    assert evaluating.describe() == "running · fgsm · 8/32 images · 25%"  # kinds that count a fraction


def test_a_stop_is_acknowledged_the_moment_it_is_asked(tmp_path):
    running = job(tmp_path, state="running", current="nullspace · synthesizing δ", steps_done=5, steps_total=100)
    assert not running.stop_requested
    (tmp_path / "STOP").touch()  # what JobQueue.stop writes; the worker reads it between steps
    assert running.stop_requested and running.describe().startswith("stop asked: the job ends after its current step")
    seen = job(tmp_path, state="running", current="stopping: finishing the step and saving")
    assert seen.describe() == "stopping: finishing the step and saving"
    ended = job(tmp_path, state="stopped", steps_done=5, steps_total=100)
    assert not ended.stop_requested and ended.describe() == "stopped at 5% of its work"
