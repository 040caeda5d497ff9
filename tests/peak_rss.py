"""Peak RSS of code run in a fresh Python, above a baseline taken after its imports.

The memory tests run the code they measure in a subprocess (``python -c``): a prelude (the
imports, an optional warm-up, then ``gc.collect()`` and the baseline ``_BASE``, the process's
VmHWM from /proc/self/status), the code, and an epilogue that prints ``PEAK_DELTA_MIB``, the
peak RSS (MiB) above that baseline.  glibc's mmap threshold is fixed (:data:`MALLOC_ENV`), so
the peak counts the buffers alive at once, not the ones glibc keeps after they were freed (see
tests/test_memory_bounds.py's docstring).  Linux only (VmHWM).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

__all__ = ["EPILOGUE", "MALLOC_ENV", "PEAK_FUNCTION", "peak_delta", "peak_delta_and_stdout",
           "prelude"]

#: ``_peak_mib()``: the process's peak RSS so far (MiB)
PEAK_FUNCTION = """def _peak_mib():
    # VmHWM: this process's own peak (ru_maxrss keeps the parent's RSS at fork across exec)
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
"""

#: prints the peak RSS above the baseline the prelude took
EPILOGUE = """
print(f"PEAK_DELTA_MIB {_peak_mib() - _BASE:.1f}")
"""

#: buffers of 1 MiB and more are mapped and unmapped one by one (glibc's own default is 128 KiB,
#: raised as buffers are freed): see tests/test_memory_bounds.py's docstring
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def prelude(imports: str, warm_up: str = "") -> str:
    """The code run before the measured code: ``import gc, sys``, ``imports``, ``warm_up``
    (code run before the baseline, e.g. to start thread pools), :data:`PEAK_FUNCTION`, then
    ``gc.collect()`` and the baseline ``_BASE``."""
    parts = ["import gc, sys\n", _lines(imports), _lines(warm_up), PEAK_FUNCTION,
             "gc.collect()\n_BASE = _peak_mib()\n"]
    return "".join(parts)


def _lines(code: str) -> str:
    code = textwrap.dedent(code).strip("\n")
    return code + "\n" if code else ""


def peak_delta_and_stdout(code: str, cwd: Path | None, *, prelude: str,
                          timeout: float = 300) -> tuple[float, str]:
    """Run ``prelude``, ``code`` (dedented) and :data:`EPILOGUE` in a fresh Python in ``cwd``
    (None: this process's) with :data:`MALLOC_ENV`: its peak RSS (MiB) above the prelude's
    baseline, and what it printed.  It must exit with 0."""
    src = prelude + textwrap.dedent(code) + EPILOGUE
    proc = subprocess.run([sys.executable, "-c", src], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **MALLOC_ENV})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_DELTA_MIB")][-1]
    return float(line.split()[1]), proc.stdout


def peak_delta(code: str, cwd: Path | None, *, prelude: str, timeout: float = 300) -> float:
    """:func:`peak_delta_and_stdout`'s peak alone."""
    return peak_delta_and_stdout(code, cwd, prelude=prelude, timeout=timeout)[0]
