"""Process tuning, one explicit call each, made by whoever starts a process (the server, the command line, a
job worker): how many torch threads the server and each job take, how long the server's OpenMP workers spin,
and the allocator setting that lets a process reuse the memory it frees. Imports nothing heavy, so a process can
tune itself before torch."""

from __future__ import annotations

import os
import sys
from typing import Mapping, MutableMapping


def threads_per_job(max_running_jobs: int) -> int:
    """The CPU threads each of ``max_running_jobs`` concurrent jobs may use without oversubscribing."""
    return max(1, (os.cpu_count() or 1) // max_running_jobs)


def server_threads(max_running_jobs: int, running_jobs: int | None = None) -> int:
    """Torch intra-op threads for the app server itself: the cores the running jobs leave, at least 1.
    ``running_jobs``: how many run now (None: as many as may run). With no job running the server takes
    every core; an OpenMP pool that shares its cores with a job's pool spins against it instead. Measured on
    2 cores beside a running finetuning job, one default δ synthesis (200 steps, 128 images) took 222 s with 2
    server threads and 7.6 s with 1 (5.3 s alone)."""
    running = max_running_jobs if running_jobs is None else min(max(0, running_jobs), max_running_jobs)
    return max(1, (os.cpu_count() or 1) - threads_per_job(max_running_jobs) * running)


#: How long (in libgomp's spins, ~100 per µs) an OpenMP worker of the server waits for torch's next parallel region
#: before it sleeps (see :func:`short_openmp_spin`).
SERVER_OPENMP_SPIN = 10_000


def short_openmp_spin(environ: MutableMapping[str, str] | None = None) -> bool:
    """Before torch loads: the server's OpenMP workers wait ~0.1 ms for torch's next parallel region, then sleep.

    libgomp's default, ~3 ms of spinning after every region, keeps a worker busy through all the Python between
    torch calls of a page (figures, messages), on a core the browser beside it needs: the Attention page's new
    seed cost the server 1.24–1.29 CPU-s (cluttered model, 2 cores) with it and 0.69–0.90 with this, while a
    synthesis step, torch calls back to back, is as fast as with the default (47–51 ms; 1,000 spins or fewer:
    76–84 ms, the worker sleeps between calls). A ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` already set is the
    operator's choice and stays. Returns whether it set one (False also once torch is loaded: too late)."""
    env = os.environ if environ is None else environ
    if "GOMP_SPINCOUNT" in env or "OMP_WAIT_POLICY" in env or "torch" in sys.modules:
        return False
    env["GOMP_SPINCOUNT"] = str(SERVER_OPENMP_SPIN)
    return True


#: glibc malloc settings of a server or CLI process (see :func:`keep_freed_memory`).
MALLOC_MMAP_THRESHOLD = 64 * 2**20
MALLOC_TRIM_THRESHOLD = 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Let this process reuse the memory it frees instead of page-faulting it in again on every request.

    glibc's default hands each freed block above a moving threshold (128 KB–32 MB) back to the kernel and
    trims the heap's top; a model's per-request tensors (attention matrices, activations, oneDNN's
    buffers) are mostly that size, so every request pays its page faults again: the digits model's
    attention trace at batch 64 took about 1,200 per call (5 MB, ~1.5 ms of its ~6 ms). With blocks up to
    64 MB served from the heap and up to 256 MB of freed heap kept, a warm process takes none — the advice
    PyTorch's CPU tuning guide gives with jemalloc/tcmalloc, done with the allocator already loaded.
    Process-wide; the app server and the command line call it once at start. ``NULLVIZ_KEEP_FREED_MEMORY=0``
    keeps glibc's defaults. Returns whether the settings took effect (False off glibc: macOS, musl)."""
    env = os.environ if environ is None else environ
    if not env_flag(env.get("NULLVIZ_KEEP_FREED_MEMORY", "1")):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: other C libraries have other knobs
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                      MALLOC_TRIM_THRESHOLD))


def env_flag(value: object) -> bool:
    """An on/off setting from the environment (or secrets.toml): 1, true, yes, on — any case — mean on."""
    return str(value).strip().lower() in ("1", "true", "yes", "on")
