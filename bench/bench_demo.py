"""The default path as a teacher demos it: the app started with `bash run.sh`, driven in Chromium.

    python bench/bench_demo.py [--idle-seconds 20] [--port 8642]

1. ``bash run.sh`` (the README's command: its .venv, .streamlit/config.toml, no extra flags) until healthy.
2. One Chromium page on the Nullspace page; once it is drawn, the server's CPU use over ``--idle-seconds``
   with nothing happening (per cent of one core, from /proc; goal < 2 %).
3. The approximate mode (encoder level) at its defaults on the default model: click *Make noise*, time until
   the result's verification is drawn (browser seconds, and the synthesis's own seconds shown on the page).
4. The Finetune page's default run (its three methods, the form's defaults) started with *Start*, watched
   until its final table shows (goal ≤ 2 minutes).
5. The same synthesis from the command line (``python -m nullviz synthesize`` at its defaults, same model),
   timed by the process; the ratio page ÷ CLI (goal ≤ 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench_server import wait_healthy

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live threads (fields 14, 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def chromium_cpu_seconds() -> float:
    """CPU seconds of every Chromium process so far (the browser shares this machine's cores with the server)."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"chromium" in (d / "cmdline").read_bytes().split(b"\0")[0]:
                    total += cpu_seconds(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return total


def server_pid(port: int) -> int:
    """The Python process that listens on the port (run.sh execs it)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "streamlit run server.py" in line and f"--server.port {port}" in line:
            return int(line.split()[0])
    raise RuntimeError("server process not found")


class _Done(Exception):
    """The browser part is over early (--skip-finetune)."""


def main(argv=None) -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--port", type=int, default=8642)
    ap.add_argument("--skip-finetune", action="store_true", help="only the idle server, the page's δ and the CLI's")
    args = ap.parse_args(argv)
    log = open(ROOT / "bench" / "out" / "demo-server.log", "w") if (ROOT / "bench" / "out").is_dir() else None
    # a data folder of its own: an earlier run's finished job must not be the "Final numbers" the page shows
    data_dir = tempfile.mkdtemp(prefix="nullviz-demo-")
    proc = subprocess.Popen(["bash", "run.sh", "--server.headless", "true", "--server.port", str(args.port)],
                            cwd=ROOT, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "NULLVIZ_DATA_DIR": data_dir})
    url = f"http://127.0.0.1:{args.port}"
    out: dict[str, float] = {}
    try:
        wait_healthy(url, 600)  # the first run of run.sh installs the environment
        pid = server_pid(args.port)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{url}/nullspace")
            page.get_by_text("Choose a kind of noise and press").wait_for(timeout=180_000)
            page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
            if log is not None:  # idle means after the server's own start-up work (the δ pool, in a thread)
                deadline = time.monotonic() + 120
                while "training images for δ ready" not in (ROOT / "bench" / "out" / "demo-server.log").read_text() \
                        and time.monotonic() < deadline:
                    time.sleep(0.5)
            time.sleep(2)
            c0, t0 = cpu_seconds(pid), time.perf_counter()
            time.sleep(args.idle_seconds)
            out["idle_cpu_percent_of_one_core"] = 100 * (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)
            page.get_by_text("Approximate — encoder level").click()
            page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
            page.get_by_role("button", name="Make noise").wait_for(timeout=60_000)
            t0, browser0, server0 = time.perf_counter(), chromium_cpu_seconds(), cpu_seconds(pid)
            page.get_by_role("button", name="Make noise").click()
            page.get_by_text("Which images each number is about").wait_for(timeout=600_000)
            page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=600_000)
            out["page_synthesis_browser_s"] = time.perf_counter() - t0
            out["page_synthesis_chromium_cpu_s"] = chromium_cpu_seconds() - browser0
            out["page_synthesis_server_cpu_s"] = cpu_seconds(pid) - server0
            caption = page.locator("[data-testid='stProgress']").all_inner_texts()
            done = [re.search(r"steps in ([\d.]+)s", c) for c in caption]
            out["page_synthesis_own_s"] = float(next(m.group(1) for m in done if m)) if any(done) else float("nan")
            out["page_exceptions"] = page.locator("[data-testid='stException']").count()
            if args.skip_finetune:
                browser.close()
                raise _Done
            page.goto(f"{url}/finetune")
            page.get_by_role("button", name="Start").wait_for(timeout=120_000)
            page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
            t0 = time.perf_counter()
            page.get_by_role("button", name="Start").click()
            page.get_by_text("Final numbers").wait_for(timeout=900_000)
            out["finetune_default_run_browser_s"] = time.perf_counter() - t0
            out["finetune_exceptions"] = page.locator("[data-testid='stException']").count()
            browser.close()
    except _Done:
        pass
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)
    t0 = time.perf_counter()
    cli = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "nullviz", "synthesize", "--model", "cluttered",
                          "--json"],
                         cwd=ROOT, capture_output=True, text=True)
    out["cli_process_s"] = time.perf_counter() - t0
    result = json.loads(cli.stdout)
    out["cli_synthesis_own_s"] = result["seconds"]
    out["page_browser_over_cli_process"] = out["page_synthesis_browser_s"] / out["cli_process_s"]
    out["page_own_over_cli_own"] = out["page_synthesis_own_s"] / out["cli_synthesis_own_s"]
    out["cli_verdict"] = result["verdict"]
    for key, value in out.items():
        print(f"{key:34s} {value:.3f}" if isinstance(value, float) else f"{key:34s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
