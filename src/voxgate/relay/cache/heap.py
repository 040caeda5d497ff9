"""Handing the allocator's free pages back to the system in a relay process (glibc's
``malloc_trim``), so a busy relay's resident memory follows what it holds."""

from __future__ import annotations

import threading
import time

__all__ = ["TRIM_ABOVE", "TRIM_SECONDS", "limit_heap_growth"]

#: how often the server hands the allocator's free pages back to the system
TRIM_SECONDS = 0.25
#: ... when more than this lies free in the allocator's arenas
TRIM_ABOVE = 64 * 2**20
_trimmer: threading.Thread | None = None


def limit_heap_growth(interval: float | None = None) -> bool:
    """Hand freed memory back to the system every ``interval`` s (default: the environment's
    ``VOXGATE_RELAY_TRIM_SECONDS``, else :data:`TRIM_SECONDS`; 0 turns it off); glibc only; a
    server process calls this once; returns whether it runs.

    The relay allocates and frees cell-, cutout- and body-sized buffers (0.1-4 MiB) on ~90
    threads.  glibc serves them from per-thread arenas once its mmap threshold has risen
    (it rises on every free of a large block, up to 32 MiB) and keeps what is freed there,
    fragmented between live blocks, for reuse: measured, a relay with a 64 MiB cache grew to
    2.5 GiB RSS in two minutes of 32 clients, all of it anonymous arena heaps (limiting the
    arenas to 2 still gave 1.2 GiB after one minute).  A fixed low threshold keeps RSS down
    but makes every such buffer a fresh mapping (page faults, unmaps): 40x slower to
    allocate, measured.  ``malloc_trim(0)`` returns the free pages inside every arena to the
    system without moving anything; pages used again fault back in, which cost about 15% of
    the soak's throughput (docs/relay.md, "Memory"), so it runs only when more than
    :data:`TRIM_ABOVE` lies free.
    """
    import ctypes
    import ctypes.util
    import os

    global _trimmer
    if _trimmer is not None:
        return True
    if interval is None:
        try:
            interval = float(os.environ.get("VOXGATE_RELAY_TRIM_SECONDS", TRIM_SECONDS))
        except ValueError:
            interval = TRIM_SECONDS
    if not interval > 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return False
    trim.argtypes = [ctypes.c_size_t]

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    info = getattr(libc, "mallinfo2", None)  # glibc >= 2.33; without it, trim every time
    if info is not None:
        info.restype = _MallInfo2
        info.argtypes = []

    def run() -> None:
        while True:
            time.sleep(interval)
            # trimming makes the next use of those pages fault them in again: only when
            # more than TRIM_ABOVE lies free in the arenas
            if info is None or info().fordblks > TRIM_ABOVE:
                trim(0)

    _trimmer = threading.Thread(target=run, name="voxgate-malloc-trim", daemon=True)
    _trimmer.start()
    return True
