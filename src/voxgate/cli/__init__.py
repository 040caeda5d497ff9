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

import click

from .. import __version__

__all__ = ["main"]


def _fail(exc: Exception) -> None:
    raise click.ClickException(f"{type(exc).__name__}: {exc}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="voxgate")
def main() -> None:
    """voxgate: one API over zarr, N5, HDF5, precomputed and more."""


_MISSING_HELP = (
    "What absent source chunks mean: 'fill' (default) reports them and reads them as the fill "
    "value; 'error' fails when any is absent."
)


# the commands register themselves with main (they import it from here)
from . import data, proofreading, services, serving  # noqa: E402

__all__ += ["data", "proofreading", "serving", "services"]

