"""Proofreading: ``voxgate merge``, ``split``, ``history``, ``undo``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import VoxgateError
from . import _fail, main
from ._open_options import open_input, open_options_option
from .services import _no_progress, _to_csv, _zyx

#: what -O opens here: the segmentation edited (read-write) or whose history is shown; the
#: edit history is kept per volume those options choose (two multiscales of one group: two)
_O_HELP = ("Open option KEY=VALUE for URL, as voxgate.open takes it (repeat for more; VALUE "
           "is JSON when it parses, else a string): e.g. -O multiscale=1 edits, lists or "
           "undoes that multiscale of an OME-Zarr group, whose history is its own.")


def _seed(text: str) -> tuple[int, tuple[int, int, int]]:
    ident, sep, point = text.partition(":")
    try:
        zyx = _zyx(point, "--seed's point") if sep else None
        if zyx is None:
            raise ValueError
        return int(ident), zyx
    except (ValueError, click.BadParameter):
        raise click.BadParameter(f"--seed is ID:z,y,x (e.g. 41:10,20,30), got {text!r}") from None


def _edit_report(r: Any) -> None:
    what = {"merge": "merged", "split": "split", "relabel": "relabelled"}.get(r.operation,
                                                                              r.operation)
    path = r.provenance.path if r.provenance is not None else "local"
    extra = f", new ids {', '.join(map(str, r.new_ids))}" if r.new_ids else ""
    click.echo(f"edit {r.n}: {what} on the {path} path, {r.blocks} block(s) rewritten{extra}")


@main.command("merge")
@click.argument("url")
@click.argument("ids", nargs=-1, required=True, type=int)
@click.option("--into", type=int, default=None, help="The id they all get (default: smallest).")
@click.option("--user", default=None, help="Recorded in the history (default: $VOXGATE_USER "
                                           "or the login name).")
@click.option("--prefer", type=click.Choice(["auto", "server", "local"]), default="auto")
@click.option("--remesh", is_flag=True, help="Mesh the merged segment again.")
@open_options_option(_O_HELP)
@_no_progress
def merge_cmd(url: str, ids: tuple[int, ...], into: int | None, user: str | None, prefer: str,
              remesh: bool, open_options: dict[str, Any], no_progress: bool) -> None:
    """Merge segments IDS of the segmentation URL into one (recorded; voxgate undo URL)."""
    from ..services.proofread import merge

    try:
        seg = open_input(url, open_options, mode="r+")
        _edit_report(merge(seg, list(ids), into, user=user, prefer=prefer,  # type: ignore[arg-type]
                           progress=not no_progress, remesh=remesh))
    except (VoxgateError, OSError) as exc:
        _fail(exc)


@main.command("split")
@click.argument("url")
@click.argument("segment", type=int)
@click.option("--seed", "seeds", multiple=True,
              help="ID:z,y,x - a voxel of the piece that gets ID (repeat; an ID may repeat for "
                   "more points). Without seeds the connected pieces are split apart.")
@click.option("--image", default=None, help="Grow the seeds on this image (default: the "
                                            "distance to the segment's boundary).")
@click.option("--user", default=None, help="Recorded in the history.")
@click.option("--prefer", type=click.Choice(["auto", "server", "local"]), default="auto")
@click.option("--remesh", is_flag=True, help="Mesh the pieces again.")
@open_options_option(_O_HELP + " Not for --image, which opens with its URL alone.")
@_no_progress
def split_cmd(url: str, segment: int, seeds: tuple[str, ...], image: str | None,
              user: str | None, prefer: str, remesh: bool, open_options: dict[str, Any],
              no_progress: bool) -> None:
    """Split SEGMENT of the segmentation URL into pieces (recorded; voxgate undo URL)."""
    from ..services.proofread import split

    groups: dict[int, list[tuple[int, int, int]]] = {}
    for text in seeds:
        ident, point = _seed(text)
        groups.setdefault(ident, []).append(point)
    try:
        seg = open_input(url, open_options, mode="r+")
        _edit_report(split(seg, segment, seeds=groups or None, image=image, user=user,
                           prefer=prefer, progress=not no_progress, remesh=remesh))  # type: ignore[arg-type]
    except (VoxgateError, OSError) as exc:
        _fail(exc)


@main.command("history")
@click.argument("url")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the table to this CSV file.")
@open_options_option(_O_HELP)
def history_cmd(url: str, csv_path: Path | None, open_options: dict[str, Any]) -> None:
    """The proofreading edits of URL: time, user, operation, ids, status."""
    from ..services.proofread import history

    try:
        df = history(open_input(url, open_options))
    except (VoxgateError, OSError) as exc:
        _fail(exc)
        return
    if csv_path is not None:
        _to_csv(df, csv_path)
        click.echo(f"{len(df)} edits written to {csv_path}")
    elif df.empty:
        click.echo(f"no edits recorded for {url}")
    else:
        cols = ["n", "time", "user", "operation", "path", "ids", "blocks", "status", "undoes"]
        click.echo(df[cols].to_string(index=False, max_rows=60))


@main.command("undo")
@click.argument("url")
@click.option("-n", "count", type=int, default=1, help="How many of the last edits to undo.")
@click.option("--user", default=None, help="Recorded in the history.")
@open_options_option(_O_HELP)
@_no_progress
def undo_cmd(url: str, count: int, user: str | None, open_options: dict[str, Any],
             no_progress: bool) -> None:
    """Undo the last edits of URL: the voxels they changed are written back."""
    from ..services.proofread import undo

    try:
        for r in undo(open_input(url, open_options, mode="r+"), count, user=user,
                      progress=not no_progress):
            click.echo(f"edit {r.provenance.details['undid'] if r.provenance else '?'} undone "
                       f"({r.blocks} block(s) restored; recorded as edit {r.n})")
    except (VoxgateError, OSError) as exc:
        _fail(exc)
