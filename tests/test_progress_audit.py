"""Progress bars of nested calls, and in Jupyter without ipywidgets.

Each bar drew its own rich Live display on its own Console, so a bar opened while another was
drawn (a ``voxgate.copy`` inside a Service's blocks, a user's loop around copies) redrew the
same terminal line as the outer one: the two bars overwrote each other, frame after frame.
Now the bars open at once are lines of one display.

In Jupyter, rich draws a live display only with ipywidgets (not a voxgate dependency, nor of
its ``notebook`` extra); without it rich warned 'install "ipywidgets"' and drew nothing, so
``voxgate.copy`` (``progress=True`` by default) in a notebook showed no bar and a warning (an
error under ``-W error``).  Now the bar is redrawn as text in the cell's output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate

_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def _rows_written(raw: str) -> dict[int, list[str]]:
    """A minimal terminal: for each screen row, the first word of every text written at its
    first column, in order (carriage return, newline, cursor up and erase line; the styles
    ignored)."""
    rows: dict[int, list[str]] = {}
    row = col = 0
    i = 0
    while i < len(raw):
        m = _CSI.match(raw, i)
        if m:
            arg, op = m.groups()
            if op == "A":
                row = max(0, row - int(arg or 1))
            i = m.end()
            continue
        ch = raw[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
        elif ch == "\x1b":
            pass
        else:
            if col == 0 and not ch.isspace():
                word = re.match(r"[^\s\x1b]+", raw[i:])
                assert word is not None
                rows.setdefault(row, []).append(word.group(0))
            col += 1
        i += 1
    return rows


_NESTED = textwrap.dedent("""
    import numpy as np, voxgate
    from voxgate.blockwise import run_blocks
    src = voxgate.create("mem://progress-audit/src", shape=(16, 64, 64), chunks=(8, 32, 32),
                         dtype="uint8", voxel_size=(8, 8, 8))
    src[:] = 5

    def block(i):
        # a copy inside a Service's block: progress=True, copy's default
        voxgate.copy(src, f"mem://progress-audit/dst{i}")

    run_blocks(block, range(3), name="service", progress=True)
""")


def test_a_copy_inside_a_service_does_not_draw_over_its_bar() -> None:
    pty = pytest.importorskip("pty")
    parent, child = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "LINES": "40", "TERM": "xterm"}
    env.pop("TTY_COMPATIBLE", None)
    env.pop("FORCE_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-c", _NESTED], stdin=child, stdout=child,
                            stderr=child, env=env)
    os.close(child)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                data = os.read(parent, 65536)
            except OSError:  # (the child closed its end)
                break
            if not data:
                break
            out += data
    finally:
        os.close(parent)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    rows = _rows_written(text)
    labels = {w for ws in rows.values() for w in ws}
    assert {"service", "copy"} <= labels, rows
    # the service's bar keeps its row; the copies' bars are drawn on rows of their own
    mixed = {r: ws for r, ws in rows.items() if "service" in ws and "copy" in ws}
    assert not mixed, f"bars drawn over each other on the same row: {mixed}"
    assert "3/3" in text  # (the service's bar ends at its total)


class _Handle:
    """What IPython.display.display(..., display_id=True) returns: a cell output to update."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def update(self, obj: dict[str, str], raw: bool = False) -> None:
        assert raw
        self.texts.append(obj["text/plain"])


@pytest.fixture
def notebook(monkeypatch: pytest.MonkeyPatch) -> list[_Handle]:
    """Jupyter (as rich detects it) with IPython but without ipywidgets."""
    import rich.console

    handles: list[_Handle] = []

    def display(obj: Any, raw: bool = False, display_id: bool = False) -> _Handle:
        assert display_id
        handle = _Handle()
        handle.texts.append(obj["text/plain"])
        handles.append(handle)
        return handle

    ipython = types.ModuleType("IPython")
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.display = display  # type: ignore[attr-defined]
    ipython.display = ipython_display  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # (import fails)
    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    return handles


def test_copy_in_a_notebook_without_ipywidgets_draws_its_bar(
        notebook: list[_Handle], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = voxgate.create(f"zarr://{tmp_path}/src.zarr", shape=(16, 64, 64),
                         chunks=(8, 32, 32), dtype="uint8", voxel_size=(8, 8, 8))
    src[:] = np.arange(16 * 64 * 64, dtype=np.uint64).reshape(16, 64, 64).astype(np.uint8)
    report = voxgate.copy(src, f"zarr://{tmp_path}/dst.zarr")  # (progress=True: the default)
    assert report.chunks_written == 8
    assert len(notebook) == 1, "one bar, in one cell output"
    last = notebook[0].texts[-1]
    assert last.startswith("copy") and "100%" in last and "64.0 KiB / 64.0 KiB" in last, last
    assert "\x1b" not in last  # (text: no escape codes in a notebook's output)
    assert "copy" not in capsys.readouterr().err  # (not drawn a second time on stderr)


def test_nested_bars_in_a_notebook_share_its_output(notebook: list[_Handle]) -> None:
    from voxgate.progress import progress_bar

    with progress_bar(True, 2, "outer") as outer:
        for i in range(2):
            with progress_bar(True, 4, f"inner{i}", unit="bytes") as inner:
                inner.advance(4)
            outer.advance()
    assert len(notebook) == 1
    last = notebook[0].texts[-1]
    assert "outer" in last and "2/2" in last and "inner" not in last, last


def test_a_bar_whose_line_cannot_be_added_stops_the_display(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C (or any error) as a bar's line is added: the display no bar uses is stopped
    (it was counted as used, so it kept drawing until the process ended), and the next bar
    opens a display of its own."""
    from rich.progress import Progress

    from voxgate import progress

    real_add = Progress.add_task

    def interrupted(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "add_task", interrupted)
    with pytest.raises(KeyboardInterrupt), progress.progress_bar(True, 4, "copy"):
        pass
    assert progress._DISPLAY is None  # (stopped: nothing holds the terminal)
    monkeypatch.setattr(Progress, "add_task", real_add)
    with progress.progress_bar(True, 4, "copy") as bar:
        bar.advance(4)
        display = progress._DISPLAY
        assert display is not None and display.users == 1
        assert display.progress.live.is_started
    assert progress._DISPLAY is None and not display.progress.live.is_started
