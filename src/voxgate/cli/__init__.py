"""The ``voxgate`` command: ``info``, ``cp``, ``serve``, the Services and ``demo``.

The group and what its commands share are here; the commands live by concern in
:mod:`.data` (info, cp, demo), :mod:`.serving` (serve, view), :mod:`.services` (mesh,
skeletonize, downsample, cc, stats, predict, synapses) and :mod:`.proofreading` (merge, split,
history, undo), imported at the end so that they register with :func:`main`.

Start-up stays light (``voxgate --help`` imports click and voxgate's plain value modules
only): each command imports what it needs (tensorstore, numpy, the relay, the Services) inside
its function.
"""

from __future__ import annotations

import sys
import threading
import traceback
from typing import Any, NoReturn

import click

from .. import __version__
from ..errors import redact

__all__ = ["main"]


def _fail(exc: Exception) -> None:
    # (a VoxgateError's message is redacted already; an OSError's or a ValueError's is not)
    raise click.ClickException(redact(f"{type(exc).__name__}: {exc}"))


#: what an interrupted command left behind, and how to finish it (``cp`` says its own)
_INTERRUPTED = {
    "downsample": "the new scales may be partly written (their absent chunks read as the fill "
                  "value); run the same command again to compute them",
    "cc": "OUT may be partly written; run the same command again with --overwrite",
    "predict": "OUT may be partly written; run the same command again with --overwrite",
    "mesh": "meshes or files written so far are kept; run the same command again to redo them",
    "skeletonize": "skeletons or files written so far are kept; run the same command again to "
                   "redo them",
    "synapses": "outputs may be partly written; run the same command again",
    "merge": "the edit may be partly applied; voxgate history URL shows its status",
    "split": "the edit may be partly applied; voxgate history URL shows its status",
    "undo": "the undo may be partly applied; voxgate history URL shows its status",
}


class _Group(click.Group):
    """Ctrl-C ends any command with one line and exit status 130 (128 + SIGINT), as shells
    do, instead of click's bare "Aborted!" with status 1; an exception no command caught (a
    bug, a third-party library's error) prints its whole traceback, redacted, and exits 1;
    so does (without exiting) one that ends a thread."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        threading.excepthook = _thread_excepthook  # (not restored: the process ends)
        try:
            return super().main(*args, **kwargs)
        except Exception as exc:
            if kwargs.get("standalone_mode", True) is False:
                raise  # a caller that handles errors itself gets the exception
            _print_traceback(exc)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            name = ctx.invoked_subcommand or ""
            hint = _INTERRUPTED.get(name)
            click.echo(f"interrupted (Ctrl-C): voxgate {name} stopped"
                       + (f"; {hint}" if hint else ""), err=True)
            ctx.exit(130)


def _print_traceback(exc: BaseException) -> NoReturn:
    # Python would print this traceback as is, and a third-party error (httpx's, say) or one
    # of its chained causes names the URL it failed on, ?token= and all: the traceback is kept
    # whole (a bug report needs it), every line through redact
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    sys.stderr.write(redact(text))
    sys.stderr.flush()
    sys.exit(1)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    # Python's own hook prints a dying thread's traceback as is (a worker's httpx error, with
    # its URL's ?token=): the same traceback, through redact
    if args.exc_type is SystemExit:  # (ignored, as Python's hook does)
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(redact(f"Exception in thread {name}:\n{text}"))
    sys.stderr.flush()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="voxgate")
def main() -> None:
    """voxgate: one API over zarr, N5, HDF5, precomputed and more."""


_MISSING_HELP = (
    "What absent source chunks mean: 'fill' (default) reports them and reads them as the fill "
    "value; 'error' fails when any is absent."
)


_NO_PROGRESS_HELP = "Do not draw progress bars."

# the commands register themselves with main (they import it from here)
from . import data, proofreading, services, serving  # noqa: E402

__all__ += ["data", "proofreading", "serving", "services"]

