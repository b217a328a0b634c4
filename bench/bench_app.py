"""A fresh server's first figure, as users start it: `streamlit run server.py` (what `bash run.sh` runs) → its
health check answers (the server reports ready: it has loaded the default model by then) → the Home page's
heading and figure in Chromium, for a first session and then a second one (a new browser context).

    python bench/bench_app.py [--model digits|cluttered]

Goals (issue: first start): first figure ≤ 5 s after the server reports ready, a second session's ≤ 2 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
HEADING = "nullviz — noise a Vision Transformer cannot see"


def first_figure(browser, url: str) -> tuple[float, float]:
    """Seconds from opening the page in a new browser context to its heading, and to its first figure."""
    context = browser.new_context()
    page = context.new_page()
    t = time.perf_counter()
    page.goto(url)
    page.get_by_role("heading", name=HEADING).wait_for(timeout=120_000)
    heading = time.perf_counter() - t
    page.wait_for_selector(".js-plotly-plot", timeout=120_000)
    figure = time.perf_counter() - t
    context.close()
    return heading, figure


def main(argv=None) -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cluttered", help="the server's default model (NULLVIZ_DEFAULT_MODEL)")
    args = ap.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)  # started before the server
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "server.py"),
                                 "--server.headless", "true", "--server.port", str(port),
                                 "--browser.gatherUsageStats", "false"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "NULLVIZ_DEFAULT_MODEL": args.model})
        try:
            while True:
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            ready = time.perf_counter() - t0
            first = first_figure(browser, url)
            second = first_figure(browser, url)
        finally:
            proc.terminate()
            browser.close()
    print(f"default model                      {args.model}")
    print(f"start → ready (model loaded)       {ready:.2f} s")
    print(f"first session: heading / figure    {first[0]:.2f} / {first[1]:.2f} s after ready   (goal ≤ 5 s)")
    print(f"second session: heading / figure   {second[0]:.2f} / {second[1]:.2f} s   (goal ≤ 2 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
