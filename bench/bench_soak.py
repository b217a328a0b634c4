"""A class over half an hour: a real shared server, Chromium students, their jobs and a hostile one's uploads;
what the server holds, minute by minute.

    python bench/bench_soak.py [--minutes 30] [--students 4] [--record bench/results/soak_cpu.md]

The server is the shipped one (`streamlit run server.py`, the default model) in shared mode, with a class code
and a retention of ``--retention-minutes`` (so that it runs during the soak; the server sweeps a tenth of the
retention apart). Each student is a Chromium context of its own (its own session and workspace) looping: make
noise on the Nullspace page, open the Attention page and change the noise seed, and every fourth round start a
small finetuning job on the Finetune page (1 epoch of 20 steps). A hostile student, on the same loop, uploads
a 1×60,000 PNG as the image, a zip of 200 MB of zeros as the Attention page's image set, and PUTs a file of
three times the upload cap straight to Streamlit's upload route.

Every minute: the server's resident memory, open file descriptors and threads, the job workers running, and the
data folder's size. After ``--minutes`` the students stop, and the bench waits one retention plus a sweep for
what they left to expire (jobs still queued then run first: a queue of one slot drains at its own pace). Goals
(issue 38): no errors; RSS and the data folder back within 10 % of their start (measured after every student's
first round) once retention has run; no growth in fds or threads; no worker left.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_server import ARGS, CHROMIUM, Server, wait_idle  # noqa: E402
from helpers.streamlit_client import RawClient, upload, xsrf_cookie  # noqa: E402

CODE = "SOAK-TEST-1"
UPLOAD_CAP_MB = 50


def thin_png() -> bytes:
    """A 1×60,000 PNG: a few hundred bytes whose decoded pixels the server must bound (issue 38)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (60_000, 1)).save(buf, format="PNG")
    return buf.getvalue()


def zeros_zip(megabytes: int = 200) -> bytes:
    """A zip of one class folder holding a non-image member of ``megabytes`` MB of zeros (compresses to ~0.2 MB)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("cat/zeros.bin", b"\0" * (megabytes * 2**20))
    return buf.getvalue()


def folder_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total / 2**20


def workers(data: Path) -> int:
    """How many job worker processes run on this data folder (workers are detached from the server: they
    outlive a restart, so they are counted by their command line, not as its children)."""
    count = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                args = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"nullviz.jobs" in args and any(str(data).encode() in a for a in args):
                count += 1
    return count


def snapshot(server: Server, data: Path, t0: float) -> dict:
    proc = Path(f"/proc/{server.proc.pid}")
    status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
    return {"minute": round((time.time() - t0) / 60, 1), "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
            "fds": len(os.listdir(proc / "fd")), "threads": int(status["Threads"]),
            "processes": workers(data), "data_mb": folder_mb(data)}


def choose(page, key: str, option: str, tries: int = 5) -> None:
    """Pick ``option`` in the selectbox of widget ``key`` (its list can close again when a rerun redraws it)."""
    for _ in range(tries):
        page.locator(f".st-key-{key} button[aria-label='Open']").click()
        item = page.locator("[role='option']").filter(has_text=option)
        try:
            item.click(timeout=5_000)
            return
        except Exception:  # noqa: BLE001 — the list closed before the click: open it again
            wait_idle(page, 60_000)
    raise RuntimeError(f"could not choose {option!r} in {key}")


class Class:
    """The students' loops, their counters and their errors."""

    def __init__(self, url: str, students: int, until: float):
        self.url, self.students, self.until = url, students, until
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.counts = {"rounds": 0, "jobs": 0, "hostile": 0}
        self.first_round = threading.Barrier(students + 2)  # the students, the hostile one, the monitor

    def error(self, who: str, what: str) -> None:
        with self.lock:
            self.errors.append(f"{who}: {what}")

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def _check(self, page, who: str) -> None:
        if page.locator("[data-testid='stException']").count():
            self.error(who, f"exception on {page.url}")

    def student(self, k: int, hostile: bool = False) -> None:
        from playwright.sync_api import sync_playwright

        who = "hostile" if hostile else f"student {k}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(300_000)
            try:
                page.goto(f"{self.url}/?code={CODE}")
                page.get_by_text("Nullspace").first.wait_for()
            except Exception as exc:  # noqa: BLE001
                self.error(who, f"join: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            base = page.url.split("?", 1)[1] if "?" in page.url else ""  # the signed workspace link (ws=…)
            rounds, waited = 0, False
            while True:
                try:
                    self._round(page, base, who, k + rounds, hostile, start_job=rounds % 4 == 3)
                    self.count("rounds")
                except Exception as exc:  # noqa: BLE001 — a bench counts every failure and goes on
                    self.error(who, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                rounds += 1
                if not waited:
                    waited = True
                    self.first_round.wait(900)
                if time.time() >= self.until:
                    break
            browser.close()

    def _round(self, page, base: str, who: str, seed: int, hostile: bool, start_job: bool) -> None:
        page.goto(f"{self.url}/nullspace?{base}")
        uploader = page.locator("[data-testid='stMain'] input[type='file']").first
        if hostile:
            uploader.wait_for(state="attached")
            uploader.set_input_files(files=[{"name": "thin.png", "mimeType": "image/png", "buffer": thin_png()}])
            wait_idle(page, 300_000)
        page.get_by_role("button", name="Make noise").click()
        wait_idle(page, 300_000)
        self._check(page, who)
        page.goto(f"{self.url}/attention?{base}")
        box = page.get_by_label("seed")
        box.fill(str(seed))
        box.press("Enter")
        page.get_by_text("Prediction clean").first.wait_for()
        wait_idle(page, 300_000)
        self._check(page, who)
        if hostile:
            choose(page, "att_set_source", "upload a zip of an ImageFolder")
            zip_input = page.locator(".st-key-att_set_zip input[type='file']")
            zip_input.set_input_files(files=[{"name": "zeros.zip", "mimeType": "application/zip",
                                              "buffer": zeros_zip()}])
            page.get_by_role("button", name="Compute statistics").click()
            wait_idle(page, 300_000)
            self._check(page, who)
            with RawClient(self.url) as client:  # a raw client skips the browser's size check
                client.rerun(query_string=f"code={CODE}", page_name="nullspace")
                status = upload(self.url, client.session_id, 3 * UPLOAD_CAP_MB * 2**20, xsrf_cookie(self.url), 120)
            if status not in (0, 413):
                self.error(who, f"an upload of 3× the cap answered {status}")
            self.count("hostile")
        if start_job:
            page.goto(f"{self.url}/finetune?{base}")
            page.get_by_role("button", name="Start").wait_for()
            page.get_by_label("epochs").fill("1")
            page.get_by_label("steps per epoch (0 = full pass)").fill("20")
            page.get_by_role("button", name="Start").click()
            wait_idle(page, 300_000)
            self._check(page, who)
            self.count("jobs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--students", type=int, default=4)
    ap.add_argument("--retention-minutes", type=float, default=5)
    ap.add_argument("--drain-minutes", type=float, default=40, help="at most this long for queued jobs to finish")
    ap.add_argument("--record", type=Path, default=None, help="write the table (markdown) here")
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="nullviz-soak-"))
    retention_days = args.retention_minutes / 1440
    server = Server(data, NULLVIZ_SHARED="1", NULLVIZ_ACCESS_CODE=CODE, NULLVIZ_MAX_UPLOAD_MB=str(UPLOAD_CAP_MB),
                    NULLVIZ_RETENTION_DAYS=f"{retention_days:.6f}")
    t0 = time.time()
    klass = Class(server.url, args.students, t0 + 60 * args.minutes)
    threads = [threading.Thread(target=klass.student, args=(k,), daemon=True) for k in range(args.students)]
    threads.append(threading.Thread(target=klass.student, args=(args.students, True), daemon=True))
    rows = []
    try:
        for t in threads:
            t.start()
        klass.first_round.wait(900)
        start = snapshot(server, data, t0)
        rows.append({**start, "phase": "after the first round"})
        print(rows[-1], flush=True)
        while time.time() < klass.until:
            time.sleep(min(60.0, max(0.0, klass.until - time.time())))
            rows.append({**snapshot(server, data, t0), "phase": "class", **dict(klass.counts)})
            print(rows[-1], flush=True)
        for t in threads:
            t.join(600)
        drain = time.time() + 60 * args.drain_minutes  # the jobs still queued run first
        while (workers(data) or any((data / "jobs" / ".active").glob("*/*"))) and time.time() < drain:
            time.sleep(60.0)
            rows.append({**snapshot(server, data, t0), "phase": "queue draining"})
            print(rows[-1], flush=True)
        settle = time.time() + 60 * args.retention_minutes * 1.1 + 30  # one retention and a sweep after the last
        while time.time() < settle:
            time.sleep(min(60.0, max(0.0, settle - time.time())))
            rows.append({**snapshot(server, data, t0), "phase": "after the class"})
            print(rows[-1], flush=True)
    finally:
        server.stop()
    tracebacks = server.log.read_text().count("Traceback")
    end = rows[-1]
    peak = max(rows, key=lambda r: r["rss_mb"])
    summary = [
        f"Soak (bench/bench_soak.py): {args.students} Chromium students and a hostile one for {args.minutes:g} min, "
        f"retention {args.retention_minutes:g} min; {klass.counts['rounds']} rounds, {klass.counts['jobs']} jobs "
        f"started, {klass.counts['hostile']} hostile rounds (1×60,000 PNG, 200 MB zip of zeros, a raw upload of "
        f"{3 * UPLOAD_CAP_MB} MB).",
        f"Errors: {len(klass.errors)} in the browsers, {tracebacks} tracebacks in the server log.",
        f"RSS: {start['rss_mb']:,.0f} MB after the first round, peak {peak['rss_mb']:,.0f} MB (minute "
        f"{peak['minute']:g}), {end['rss_mb']:,.0f} MB at the end ({end['rss_mb'] / start['rss_mb'] - 1:+.0%}).",
        f"Data folder: {start['data_mb']:,.1f} MB after the first round, {max(r['data_mb'] for r in rows):,.1f} MB "
        f"at most, {end['data_mb']:,.1f} MB at the end.",
        f"fds {start['fds']} → {end['fds']}, threads {start['threads']} → {end['threads']}, processes "
        f"{start['processes']} → {end['processes']}.",
    ]
    for e in klass.errors[:10]:
        summary.append(f"- {e}")
    table = ["| minute | phase | RSS (MB) | fds | threads | job workers | data folder (MB) | rounds | jobs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['minute']:g} | {r['phase']} | {r['rss_mb']:,.0f} | {r['fds']} | {r['threads']} | "
                     f"{r['processes']} | {r['data_mb']:,.1f} | {r.get('rounds', '')} | {r.get('jobs', '')} |")
    text = "\n".join(summary) + "\n\n" + "\n".join(table) + "\n"
    print(text)
    if args.record:
        args.record.write_text(text)


if __name__ == "__main__":
    main()
