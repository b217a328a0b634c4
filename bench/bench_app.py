"""A fresh server's first figure, as users start it: `streamlit run server.py` (what `bash run.sh` runs) → its
health check answers (the server reports ready: it has loaded the default model by then) → the Home page's
heading and figure (its three images: the picture draws without Plotly) in Chromium, for a first session and
then a second one (a new browser context).

    python bench/bench_app.py [--model digits|cluttered]

Goals (issue: first start): first figure ≤ 5 s after the server reports ready, a second session's ≤ 2 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_server import ARGS, CHROMIUM, Server

HEADING = "nullviz — noise a Vision Transformer cannot see"
#: The Home page's figure — its three images (original, noise, sum), decoded and laid out.
HOME_PICTURE_DRAWN = """() => { const im = [...document.querySelectorAll('.st-key-home_picture img')];
  return im.length === 3 && im.every(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0); }"""


def first_figure(browser, url: str) -> tuple[float, float]:
    """Seconds from opening the page in a new browser context to its heading, and to its first figure."""
    context = browser.new_context()
    page = context.new_page()
    t = time.perf_counter()
    page.goto(url)
    page.get_by_role("heading", name=HEADING).wait_for(timeout=120_000)
    heading = time.perf_counter() - t
    page.wait_for_function(HOME_PICTURE_DRAWN, timeout=120_000)
    figure = time.perf_counter() - t
    context.close()
    return heading, figure


def main(argv=None) -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cluttered", help="the server's default model (NULLVIZ_DEFAULT_MODEL)")
    args = ap.parse_args(argv)
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)  # started before the server
        t0 = time.perf_counter()
        server = Server(Path(tmp), NULLVIZ_DEFAULT_MODEL=args.model)  # returns once its health check answers
        ready = time.perf_counter() - t0
        try:
            first = first_figure(browser, server.url)
            second = first_figure(browser, server.url)
        finally:
            server.stop()
            browser.close()
    print(f"default model                      {args.model}")
    print(f"start → ready (model loaded)       {ready:.2f} s")
    print(f"first session: heading / figure    {first[0]:.2f} / {first[1]:.2f} s after ready   (goal ≤ 5 s)")
    print(f"second session: heading / figure   {second[0]:.2f} / {second[1]:.2f} s   (goal ≤ 2 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
