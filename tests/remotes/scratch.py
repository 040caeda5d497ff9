"""The folder the hypothesis state machines of these modules make their volumes in.

A state machine's TestCase takes no tmp_path, so its volumes were made under
``$TMPDIR/voxgate-sm-<pid>``, named ``sm-0``, ``sm-1``, ... by a counter that starts again in
every process, and never removed: with pids wrapping at 32768, a later run's process could get
the pid of an earlier one and find its volumes (``voxgate.create`` then refuses them).  Here
the folder is made by ``tempfile.mkdtemp`` (a name no other process or run has) when first
used, and removed when the module ends (tests/remotes/conftest.py).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

__all__ = ["remove_scratch_dir", "scratch_dir"]

_made: list[Path] = []


def scratch_dir() -> Path:
    """This process's state machine folder, made on first use."""
    if not _made or not _made[0].is_dir():
        _made[:] = [Path(tempfile.mkdtemp(prefix="voxgate-sm-"))]
    return _made[0]


def remove_scratch_dir() -> None:
    for path in _made:
        shutil.rmtree(path, ignore_errors=True)
    _made.clear()
