"""Progress bars for long operations: one look and one unit everywhere.

:class:`progress_bar` counts steps (blocks, segments, shards, cells) or, with
``unit="bytes"``, bytes, which it shows in binary units (KiB, MiB, GiB and MiB/s), as every
byte count voxgate prints does (:func:`format_bytes`).  rich is imported only when a bar is
drawn, so a disabled bar costs nothing.
"""

from __future__ import annotations

import contextlib
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


def _count_column() -> Any:
    from rich.progress import MofNCompleteColumn, ProgressColumn, TaskProgressColumn
    from rich.text import Text

    steps, percent = MofNCompleteColumn(), TaskProgressColumn()
    done_of, rate = _byte_columns()

    class _Counts(ProgressColumn):
        """``done/total`` for a bar over steps; percent, bytes and rate for one over bytes (the
        bars shown together share one set of columns)."""

        def render(self, task: Any) -> Text:
            if not task.fields.get("bytes"):
                return steps.render(task)
            return Text(" ").join([percent.render(task), done_of.render(task),
                                   rate.render(task)])

    return _Counts()


def _in_notebook_without_widgets(console: Any) -> bool:
    """Jupyter, where rich draws a live display only with ipywidgets (without it rich warns
    and draws nothing)."""
    if not console.is_jupyter:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return True
    return False


class _Display:
    """The one live display the bars open at a time share (one task each): the bars of nested
    calls (a copy inside a Service, several at once on threads) are lines of one display, not
    displays drawn over each other.  A bar closing while others stay open leaves it; the last
    one stops it (its final state stays on the screen, or, when stderr is no terminal, is
    written once)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        # on stderr: a command's output on stdout (``voxgate stats URL > ids.csv``) must not
        # get the bars in it
        console = Console(stderr=True)
        #: a notebook's display handle (Jupyter without ipywidgets), else None
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: set once the notebook's display raised: nothing is drawn from then on
        self._broken = False
        if _in_notebook_without_widgets(console):
            self._handle = _notebook_handle()
            if self._handle is None:  # (no IPython: plain text on stderr, not a widget)
                console = Console(stderr=True, force_jupyter=False)
        self.users = 0
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 _count_column(), TimeRemainingColumn(), console=console,
                                 disable=self._handle is not None)

    def start(self) -> None:
        if self._handle is None:
            self.progress.start()
            return
        self._draw()
        self._thread = threading.Thread(target=self._redraw, name="voxgate-progress",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._handle is None:
            self.progress.stop()
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._draw()

    def _redraw(self) -> None:
        while not self._stop.wait(0.5):
            self._draw()

    def _draw(self) -> None:
        from rich.console import Console

        if self._broken:
            return
        text = Console(width=100, force_jupyter=False, force_terminal=False, color_system=None)
        with text.capture() as out:
            text.print(self.progress.get_renderable())
        try:
            self._handle.update({"text/plain": out.get().rstrip("\n")}, raw=True)
        except Exception:
            # (the notebook's display failing, e.g. its kernel's channel closing: the bars
            # are not drawn any more; the work goes on, neither the redraw thread dying with
            # a traceback nor the with-block's end raising the display's error)
            self._broken = True


def _notebook_handle() -> Any:
    """A display in the notebook's output to redraw the bars in (text), or None."""
    try:
        from IPython.display import display
    except ImportError:
        return None
    return display({"text/plain": ""}, raw=True, display_id=True)


#: the display the bars open now share, and how many use it
_DISPLAY: _Display | None = None
_DISPLAY_LOCK = threading.Lock()


class progress_bar:
    """A rich progress bar over ``total`` steps (or bytes), or nothing when ``enabled`` is False.
    ``total=None``: a bar without a total (steps done, no fraction), for work not counted ahead.

    Use as a context manager; ``advance(n)`` is thread-safe.  ``unit="bytes"`` shows done /
    total and the rate in KiB / MiB / GiB.  Bars open at once (nested calls, threads) are
    lines of one display; in Jupyter the bar is a widget (with ipywidgets) or redrawn text.
    """

    def __init__(self, enabled: bool, total: int | None, label: str,
                 unit: Literal["steps", "bytes"] = "steps") -> None:
        self.enabled = bool(enabled) and (total is None or total > 0)
        self.total = total
        self.label = label
        self.unit = unit
        self._bar: Any = None
        self._task: Any = None
        self._display: _Display | None = None

    def __enter__(self) -> progress_bar:
        global _DISPLAY
        if self.enabled:
            with _DISPLAY_LOCK:
                if _DISPLAY is None:
                    display = _Display()
                    display.start()
                    _DISPLAY = display
                display = _DISPLAY
                try:
                    task = display.progress.add_task(self.label, total=self.total,
                                                     bytes=self.unit == "bytes")
                except BaseException:
                    # (a Ctrl-C as the line is added: a display no bar uses is stopped, or
                    # it would draw, and hold the terminal, until the process ends)
                    if not display.users:
                        _DISPLAY = None
                        display.stop()
                    raise
                display.users += 1
                self._display, self._bar, self._task = display, display.progress, task
        return self

    def advance(self, n: int = 1) -> None:
        bar = self._bar
        if bar is not None:
            # (rich's Progress takes its own lock.)  A worker still advancing as the bar closes
            # (the with-block left on an error) finds its line gone from the shared display:
            # nothing to draw, not a KeyError in the worker
            with contextlib.suppress(KeyError):
                bar.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        global _DISPLAY
        display, self._display = self._display, None
        if display is None:
            return
        self._bar = None
        with _DISPLAY_LOCK:
            display.users -= 1
            if display.users:
                display.progress.remove_task(self._task)  # (the others go on)
                return
            if _DISPLAY is display:
                _DISPLAY = None
            display.stop()
