"""A class at once: N raw-client sessions open each page of a real shared server at the same moment.

    python bench/bench_load.py [--sessions 1,8,16,32] [--pages home,model,…] [--record bench/results/load_cpu.md]

Each session is a websocket speaking Streamlit's protocol (tests/helpers/streamlit_client.py: no browser), joined
with the class code; all N connect first, then ask for the page in the same instant. For every (page, N): the
latency of each session's first view (request sent → its script run finished), p50 and p95, errors (no finished
run, or an exception element), and the server's resident memory after the round. The server is the shipped one
(`streamlit run server.py`, the cluttered model), in shared mode. Goal (issue 38): p95 ≤ 5 s for 32 sessions on
every page, on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_server import Server  # noqa: E402
from helpers.streamlit_client import RawClient  # noqa: E402

CODE = "LOAD-TEST-1"
PAGES = ("home", "model", "nullspace", "attention", "finetune", "robustness", "learn")


def one_round(url: str, page: str, sessions: int) -> dict:
    clients = [RawClient(url, timeout=300) for _ in range(sessions)]
    go = threading.Barrier(sessions)
    latencies: list[float | None] = [None] * sessions
    errors = [0] * sessions

    def visit(k: int) -> None:
        go.wait()
        start = time.perf_counter()
        try:
            run = clients[k].rerun(query_string=f"code={CODE}", page_name="" if page == "home" else page)
            if run.finished and "exception" not in run.kinds():
                latencies[k] = time.perf_counter() - start
            else:
                errors[k] = 1
        except Exception:  # noqa: BLE001 — a bench counts every failure
            errors[k] = 1

    threads = [threading.Thread(target=visit, args=(k,)) for k in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    done = sorted(v for v in latencies if v is not None)
    p95 = done[min(len(done) - 1, max(0, round(0.95 * len(done)) - 1))] if done else float("nan")
    return {"page": page, "sessions": sessions, "p50": statistics.median(done) if done else float("nan"),
            "p95": p95, "max": done[-1] if done else float("nan"), "errors": sum(errors)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", default="1,8,16,32")
    ap.add_argument("--pages", default=",".join(PAGES))
    ap.add_argument("--record", type=Path, default=None, help="write the table (markdown) here")
    args = ap.parse_args()
    counts = [int(v) for v in args.sessions.split(",")]
    pages = [p for p in args.pages.split(",") if p]
    server = Server(Path(tempfile.mkdtemp(prefix="nullviz-load-")), NULLVIZ_SHARED="1", NULLVIZ_ACCESS_CODE=CODE,
                    NULLVIZ_DEFAULT_MODEL="cluttered")
    rows = []
    try:
        start_rss = server.rss_mb()
        for page in pages:
            one_round(server.url, page, 1)  # the page's own first run (imports, caches) is not a class's cost
            for n in counts:
                row = one_round(server.url, page, n)
                row["rss_mb"] = server.rss_mb()
                rows.append(row)
                print(f"{page:>10} {n:>3} sessions: p50 {row['p50']:.2f} s, p95 {row['p95']:.2f} s, max "
                      f"{row['max']:.2f} s, errors {row['errors']}, server RSS {row['rss_mb']:,.0f} MB", flush=True)
    finally:
        server.stop()
    table = ["| page | sessions at once | p50 (s) | p95 (s) | max (s) | errors | server RSS after (MB) |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['page']} | {r['sessions']} | {r['p50']:.2f} | {r['p95']:.2f} | {r['max']:.2f} | {r['errors']} | "
              f"{r['rss_mb']:,.0f} |" for r in rows]
    text = (f"Server RSS at start {start_rss:,.0f} MB; each row: N raw-client sessions, joined with the class code, "
            f"opening the page at the same moment (bench/bench_load.py).\n\n" + "\n".join(table) + "\n")
    print(text)
    if args.record:
        args.record.write_text(text)


if __name__ == "__main__":
    main()
