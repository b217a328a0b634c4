"""What a term of old jobs costs a shared server: the Home page's run and the idle server's CPU, with an empty data
folder and with 3,000 ended jobs in it (issue 38's goals: Home within 1.1× of the empty server's, the idle
dispatcher under 2 % of a core).

    python bench/bench_old_jobs.py [--jobs 3000] [--samples 20] [--idle-seconds 60]

Each side is a fresh `streamlit run server.py` in shared mode (the cluttered model); the Home page's first view is
timed with a raw client (request sent → script run finished), ``--samples`` times, median; then the server sits
idle (its housekeeping thread sweeping every 2 s) and its CPU time is read from /proc.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_server import Server  # noqa: E402
from helpers.streamlit_client import RawClient  # noqa: E402

CODE = "OLD-JOBS-1"


def old_jobs(root: Path, count: int) -> None:
    """``count`` ended finetune jobs in 30 workspaces, each with its job.json, status.json and a log."""
    now = time.time()
    for k in range(count):
        d = root / "jobs" / f"workspace{k % 30:02d}aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[:46] / f"old-{k:05d}"
        d.mkdir(parents=True)
        (d / "job.json").write_text(json.dumps({"id": d.name, "owner": d.parent.name, "kind": "finetune",
                                                "label": "baseline · 1 epochs", "submitted": now - 3600,
                                                "params": {}}))
        (d / "status.json").write_text(json.dumps({"state": "done", "finished": now - 3000}))
        (d / "worker.log").write_text("")


def measure(jobs: int, samples: int, idle_seconds: float) -> dict:
    data = Path(tempfile.mkdtemp(prefix="nullviz-old-jobs-"))
    old_jobs(data, jobs)
    server = Server(data, NULLVIZ_SHARED="1", NULLVIZ_ACCESS_CODE=CODE, NULLVIZ_DEFAULT_MODEL="cluttered")
    try:
        times = []
        for _ in range(samples + 1):
            with RawClient(server.url) as client:
                start = time.perf_counter()
                run = client.rerun(query_string=f"code={CODE}")
                assert run.finished
                times.append(time.perf_counter() - start)
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        time.sleep(idle_seconds)
        idle = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    finally:
        server.stop()
    return {"jobs": jobs, "home_median_s": statistics.median(times[1:]), "idle_cpu_percent": 100 * idle}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--idle-seconds", type=float, default=60)
    args = ap.parse_args()
    empty = measure(0, args.samples, args.idle_seconds)
    full = measure(args.jobs, args.samples, args.idle_seconds)
    for r in (empty, full):
        print(f"{r['jobs']:>5} old jobs: Home page {r['home_median_s'] * 1000:.0f} ms (median of {args.samples}), "
              f"idle server {r['idle_cpu_percent']:.2f} % of a core")
    print(f"Home with {args.jobs} old jobs ÷ empty: {full['home_median_s'] / empty['home_median_s']:.2f}")


if __name__ == "__main__":
    main()
