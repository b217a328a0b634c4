import sys

from .queue import run_worker


raise SystemExit(run_worker(sys.argv[1]) if len(sys.argv) == 2 else 2)
