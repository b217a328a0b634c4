"""App start to first render: `streamlit run server.py` → health endpoint → home heading and its figure in Chromium.

    python bench/bench_app.py
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def main() -> int:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "server.py"), "--server.headless",
                             "true", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        t_server = time.perf_counter() - t0
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page()
            t1 = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_role("heading", name="nullviz — noise a Vision Transformer cannot see").wait_for(timeout=120_000)
            t_heading = time.perf_counter() - t1
            page.wait_for_selector(".js-plotly-plot", timeout=120_000)
            t_figure = time.perf_counter() - t1
            browser.close()
    finally:
        proc.terminate()
    print(f"server_ready_s            {t_server:.2f}")
    print(f"first_render_heading_s    {t_heading:.2f}   (page load → heading, first session: imports + model load)")
    print(f"first_render_figure_s     {t_figure:.2f}")
    print(f"start_to_first_figure_s   {t_server + t_figure:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
