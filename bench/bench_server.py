"""The app as a shared server, measured with real Chromium against `streamlit run server.py` on this machine.

    python bench/bench_server.py watched [--rounds 2]      # finetuning: watched in Chromium ÷ unwatched
    python bench/bench_server.py load [--sessions 8] [--seconds 120]   # N sessions looping exact noise + attention
    python bench/bench_server.py queue                     # three job requests at once

- ``watched``: the Finetune page's default run on the default model (its form's defaults) started by clicking
  Start in Chromium and followed live until its table shows, vs. the very same job parameters (read back from
  the watched job) submitted with no browser open (the server runs idle). Alternating which goes first,
  ``--rounds`` pairs; the job's own run time (from its status file: slot acquired → finished) on each side,
  and the ratio. Goal ≤ 1.10.
- ``load``: N Chromium pages (one browser each, like N students) on the Attention page with fresh exact
  noise, each changing the noise seed in a loop for ``--seconds``: errors (exceptions on a page, tracebacks
  in the server log), p50/p95 latency from the input change to the script run's end, and the server's
  resident memory at start, after the first minute and at the end (goal: growth ≤ 50 MB after minute one).
- ``queue``: three small finetuning jobs submitted at the same moment to a queue that runs one at a time:
  when each started and finished.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from nullviz.jobs.queue import JobQueue, finetune_params
from nullviz.train.finetune import FinetuneConfig

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def wait_healthy(url: str, seconds: float) -> None:
    """Until the Streamlit server at ``url`` answers its health check (RuntimeError after ``seconds``)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"streamlit did not start at {url} within {seconds:.0f} s")


class Server:
    """`streamlit run server.py` on a free port with its own NULLVIZ_DATA_DIR."""

    def __init__(self, data_dir: Path, **env):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "server.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "server.py"), "--server.headless", "true",
             "--server.port", str(self.port), "--server.address", "127.0.0.1"],
            cwd=ROOT, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
            env={**os.environ, "NULLVIZ_DATA_DIR": str(data_dir), **env})
        wait_healthy(self.url, 120)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


#: Counts finished script runs in a page (bench/run_counter.js: the benches and the browser tests share it).
RUN_COUNTER = (Path(__file__).parent / "run_counter.js").read_text()


def wait_idle(page, timeout_ms=120_000) -> None:
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout_ms)


def job_seconds(job) -> float:
    return float(job.status["finished"]) - float(job.status["started"])


def wait_job(queue: JobQueue, job_id: str, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = queue.get(job_id)
        if job.finished:
            return job
        time.sleep(0.5)
    raise RuntimeError("job did not finish")


# -------------------------------------------------------------------------------------------- watched
def bench_watched(rounds: int) -> None:
    from playwright.sync_api import sync_playwright

    from nullviz.server.process import threads_per_job
    from nullviz.server.settings import ServerSettings

    data = Path(tempfile.mkdtemp(prefix="nullviz-bench-"))
    server = Server(data)
    settings = ServerSettings.from_env({"NULLVIZ_DATA_DIR": str(data)})
    queue = JobQueue(settings.jobs_root, settings.max_running_jobs)
    threads = threads_per_job(settings.max_running_jobs)
    unwatched, watched = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            params = None  # the page's own submission, so both runs do the same work

            def run_watched() -> float:
                nonlocal params
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(server.url + "/finetune")
                before = {j.id for j in queue.jobs()}
                page.get_by_role("button", name="Start").click(timeout=120_000)
                deadline = time.time() + 60
                while not (new := [j for j in queue.jobs() if j.id not in before]) and time.time() < deadline:
                    time.sleep(0.1)
                page.get_by_text(re.compile(r"running · ")).wait_for(timeout=120_000)  # followed live
                job = wait_job(queue, new[0].id)  # the page follows it live all the while
                page.get_by_text("Final numbers").wait_for(timeout=120_000)
                errors = page.locator("[data-testid='stException']").count()
                page.close()
                if errors:
                    raise RuntimeError(f"{errors} exception(s) on the watched page")
                params = job.params
                return job_seconds(job)

            def run_unwatched() -> float:
                job = queue.submit("finetune", params, label="unwatched", threads=threads)
                return job_seconds(wait_job(queue, job.id))

            for r in range(rounds):  # alternate which goes first; the first round must learn the page's params
                if r % 2 == 0:
                    watched.append(run_watched())
                    unwatched.append(run_unwatched())
                else:
                    unwatched.append(run_unwatched())
                    watched.append(run_watched())
                print(f"round {r + 1}: unwatched {unwatched[-1]:.1f} s, watched {watched[-1]:.1f} s, "
                      f"ratio {watched[-1] / unwatched[-1]:.3f}", flush=True)
            browser.close()
    finally:
        server.stop()
    ratios = [w / u for w, u in zip(watched, unwatched)]
    print(f"watched_over_unwatched   {statistics.mean(ratios):.3f}   (mean of {rounds} alternating pairs; "
          f"median {statistics.median(ratios):.3f}; ratio of total times {sum(watched) / sum(unwatched):.3f}; "
          f"goal ≤ 1.10)")
    print(f"unwatched_seconds        {statistics.mean(unwatched):.1f}")
    print(f"watched_seconds          {statistics.mean(watched):.1f}")


# ----------------------------------------------------------------------------------------------- load
def bench_load(sessions: int, seconds: float) -> None:
    from playwright.sync_api import sync_playwright

    data = Path(tempfile.mkdtemp(prefix="nullviz-bench-"))
    server = Server(data)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(sessions + 1)
    go = threading.Event()
    t_end = [0.0]

    def session(k: int) -> None:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            try:
                page.goto(server.url + "/attention", timeout=300_000)
                page.get_by_text("Prediction clean").first.wait_for(timeout=300_000)
                wait_idle(page, 300_000)
            except Exception as exc:  # noqa: BLE001
                with lock:
                    errors.append(f"session {k} start: {exc}")
            ready.wait()
            go.wait()
            seed = k * 1000
            seed_box = page.get_by_label("seed")
            while time.time() < t_end[0]:
                seed += 1
                try:
                    seed_box.fill(str(seed))
                    done = page.evaluate(RUN_COUNTER)
                    t = time.perf_counter()
                    seed_box.press("Enter")
                    page.wait_for_function(f"window.__nullvizRuns > {done}", timeout=120_000)
                    dt = time.perf_counter() - t
                    bad = page.locator("[data-testid='stException']").count()
                    with lock:
                        latencies.append(dt)
                        if bad:
                            errors.append(f"session {k}: exception on page at seed {seed}")
                except Exception as exc:  # noqa: BLE001
                    with lock:
                        errors.append(f"session {k}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            browser.close()

    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    try:
        for t in threads:
            t.start()
        ready.wait()
        rss = [server.rss_mb()]
        cpu0 = server.cpu_seconds()
        t0 = time.time()
        t_end[0] = t0 + seconds
        go.set()
        series = []
        while time.time() < t_end[0]:
            time.sleep(max(0.0, min(30.0, t_end[0] - time.time())))
            series.append((round(time.time() - t0), round(server.rss_mb())))
        rss.append(next((mb for sec, mb in series if sec >= min(60, seconds)), series[-1][1]))
        for t in threads:
            t.join()
        rss.append(server.rss_mb())
        cpu = server.cpu_seconds() - cpu0
    finally:
        server.stop()
    tracebacks = server.log.read_text().count("Traceback")
    lat = sorted(latencies)
    print(f"sessions                 {sessions}")
    print(f"interactions             {len(lat)} in {seconds:.0f} s")
    print(f"errors                   {len(errors) + tracebacks}   (page/driver {len(errors)}, server tracebacks {tracebacks})")
    for e in errors[:5]:
        print("   ", e)
    if lat:
        print(f"latency_p50_s            {lat[len(lat) // 2]:.2f}")
        print(f"latency_p95_s            {lat[min(len(lat) - 1, int(len(lat) * 0.95))]:.2f}")
    if lat:
        print(f"server_cpu_s_per_interaction  {cpu / len(lat):.2f}   (the rest of the machine's time went to the "
              f"{sessions} Chromium instances on the same {os.cpu_count()} cores)")
    print(f"server_rss_mb            start {rss[0]:.0f}, after 1 min {rss[1]:.0f}, end {rss[2]:.0f} "
          f"(growth after the first minute {rss[2] - rss[1]:+.0f} MB)")
    print(f"server_rss_series        {series}  (seconds, MB)")


# ---------------------------------------------------------------------------------------------- queue
def bench_queue() -> None:
    root = Path(tempfile.mkdtemp(prefix="nullviz-queue-"))
    queue = JobQueue(root, max_running=1)
    configs = [FinetuneConfig(method="nullspace", epochs=1, steps_per_epoch=20, batch_size=64, synth_steps=10, eval_synth_steps=10)]
    params = finetune_params({"name": "default", "device": "cpu"}, "default", configs)
    t0 = time.time()
    jobs = [queue.submit("finetune", params, label=f"request {k + 1}", threads=os.cpu_count()) for k in range(3)]
    done = [wait_job(queue, j.id) for j in jobs]
    for j in done:
        s = j.status
        print(f"{j.label}: waited {s['started'] - t0:5.1f} s, ran {s['finished'] - s['started']:5.1f} s, {j.state}")
    spans = [(j.status["started"], j.status["finished"]) for j in done]
    overlap = any(b[0] < a[1] - 0.05 for a, b in zip(spans, spans[1:]))
    print(f"in submission order: {spans == sorted(spans)}; overlapping runs: {overlap}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["watched", "load", "queue"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=120)
    a = ap.parse_args()
    if a.what == "watched":
        bench_watched(a.rounds)
    elif a.what == "load":
        bench_load(a.sessions, a.seconds)
    else:
        bench_queue()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
