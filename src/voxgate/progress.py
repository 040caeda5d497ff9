"""Progress bars for long operations: one look and one unit everywhere.

:class:`progress_bar` counts steps (blocks, segments, shards, cells) or, with
``unit="bytes"``, bytes, which it shows in binary units (KiB, MiB, GiB and MiB/s), as every
byte count voxgate prints does (:func:`format_bytes`).  rich is imported only when a bar is
drawn, so a disabled bar costs nothing.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

__all__ = ["format_bytes", "progress_bar"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: float, per_second: bool = False) -> str:
    """``n`` bytes in binary units: ``512 B``, ``1.5 KiB``, ``12.3 MiB`` (``/s`` for a rate)."""
    value = float(n)
    unit = _UNITS[0]
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            break
        value /= 1024
    text = f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
    return text + ("/s" if per_second else "")


def _byte_columns() -> list[Any]:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class _Bytes(ProgressColumn):
        """``done / total`` in binary units."""

        def render(self, task: Any) -> Text:
            total = "?" if task.total is None else format_bytes(task.total)
            return Text(f"{format_bytes(task.completed)} / {total}",
                        style="progress.download")

    class _Rate(ProgressColumn):
        """Bytes per second in binary units."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else format_bytes(speed, per_second=True),
                        style="progress.data.speed")

    return [_Bytes(), _Rate()]


class progress_bar:
    """A rich progress bar over ``total`` steps (or bytes), or nothing when ``enabled`` is False.
    ``total=None``: a bar without a total (steps done, no fraction), for work not counted ahead.

    Use as a context manager; ``advance(n)`` is thread-safe.  ``unit="bytes"`` shows done /
    total and the rate in KiB / MiB / GiB.
    """

    def __init__(self, enabled: bool, total: int | None, label: str,
                 unit: Literal["steps", "bytes"] = "steps") -> None:
        self.enabled = bool(enabled) and (total is None or total > 0)
        self.total = total
        self.label = label
        self.unit = unit
        self._bar: Any = None
        self._task: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> progress_bar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            counts: list[Any] = ([TaskProgressColumn(), *_byte_columns()]
                                 if self.unit == "bytes" else [MofNCompleteColumn()])
            from rich.console import Console

            # on stderr: a command's output on stdout (``voxgate stats URL > ids.csv``) must not
            # get the bars in it
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 *counts, TimeRemainingColumn(), console=Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
