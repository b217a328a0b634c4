import sys

from nullviz.server.process import keep_freed_memory

from .queue import run_worker

keep_freed_memory()  # a process of its own: reuse freed memory instead of faulting it in again
raise SystemExit(run_worker(sys.argv[1]) if len(sys.argv) == 2 else 2)
