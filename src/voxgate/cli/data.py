"""``voxgate info``, ``voxgate cp`` (and its journals), ``voxgate demo``."""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import click

from ..errors import VoxgateError, VoxgateWarning, redact
from ..geometry import Box
from . import _MISSING_HELP, _fail, main
from ._cluster import cluster_client, scheduler_option
from ._open_options import open_options_option, parse_options


def _absent_by_scale(vol: Any) -> dict[int, tuple[list[Any], int]] | None:
    """Per scale, its first absent chunks (the first ``absence.ABSENT_LISTED``) and how many
    there are, asked for in pieces (held memory does not grow with the chunks); None when the
    store cannot tell (bossdb, dvid)."""
    from ..absence import absent_in
    from ..remotes.base import Capability, has_capability

    if not has_capability(vol.remote, Capability.CHUNK_PRESENCE):
        return None
    return {s.index: absent_in(vol.remote, s.bounds, s.index) if not s.bounds.is_empty()
            else ([], 0) for s in vol.meta.scales}


@main.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--check", is_flag=True,
              help="Also list the chunks absent from the store inside each scale's bounds.")
@click.option("--missing", type=click.Choice(["fill", "error"]), default="fill",
              help="With --check: 'error' exits with an error when any chunk is absent.")
@open_options_option()
def info(url: str, as_json: bool, check: bool, missing: str,
         open_options: dict[str, Any]) -> None:
    """Describe the volume at URL: dtype, kind, scales, chunks, voxel sizes."""
    from ..api import open as vopen
    from ..remotes.base import LISTED_CHUNKS, format_chunks

    if missing == "error" and not check:
        raise click.UsageError("--missing error applies to --check (which lists absent "
                               "chunks): give both")

    try:
        vol = vopen(url, **open_options)
        absent = _absent_by_scale(vol) if check else None
    except (VoxgateError, OSError) as exc:
        _fail(exc)
        return
    meta = vol.meta
    total_absent = sum(n for _, n in (absent or {}).values())
    if as_json:
        import json

        out: dict[str, Any] = {
            "url": vol.url,
            "dtype": meta.dtype.name,
            "kind": meta.kind,
            "num_channels": meta.num_channels,
            "scales": [
                {
                    "index": s.index,
                    "shape_zyx": list(s.shape),
                    "chunks_zyx": list(s.chunks),
                    "voxel_size_zyx": list(s.voxel_size.zyx()),
                    "unit": s.voxel_size.unit,
                    "offset_zyx": list(s.offset),
                    "encoding": s.encoding,
                }
                for s in meta.scales
            ],
        }
        if check:
            # per scale: how many chunks are absent and the first few grid indices (z, y, x);
            # null when the store cannot tell
            out["absent_chunks"] = None if absent is None else {
                str(k): {"total": n,
                         "first_zyx": [[int(i) for i in g] for g in v[:LISTED_CHUNKS]]}
                for k, (v, n) in absent.items()
            }
        click.echo(json.dumps(out, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        console.print(f"[bold]{vol.url}[/bold]")
        console.print(
            f"  {meta.dtype.name} {meta.kind}, {meta.num_channels} channel(s), "
            f"{len(meta.scales)} scale(s), axes (z, y, x)"
        )
        table = Table("scale", "shape", "chunks", "voxel size", "offset", "encoding")
        for s in meta.scales:
            vs = s.voxel_size
            table.add_row(
                str(s.index),
                " x ".join(map(str, s.shape)),
                " x ".join(map(str, s.chunks)),
                f"{vs.z:g} x {vs.y:g} x {vs.x:g} {vs.unit}",
                ", ".join(map(str, s.offset)),
                s.encoding or "",
            )
        console.print(table)
        if check and absent is None:
            click.echo("check: this store shows clients no chunks (it answers every region in "
                       "bounds), so absent chunks cannot be listed")
        elif check and not total_absent:
            click.echo(f"check: no chunk absent in {len(absent or {})} scale(s)")
        elif check and absent is not None:
            for k, (v, n) in absent.items():
                if n:
                    click.echo(f"check: {n} chunk(s) absent at scale {k}: "
                               f"{format_chunks(v, total=n)}")
            click.echo(f"check: {total_absent} chunk(s) absent in all; they read as the fill "
                       f"value {meta.fill_value} (open with missing='error' to refuse them)")
    if check and missing == "error":
        if absent is None:
            raise click.ClickException(
                f"CapabilityNotSupportedError: {vol.url} cannot tell absent chunks"
            )
        if total_absent:
            raise click.ClickException(
                f"MissingChunkError: {total_absent} chunk(s) absent from {vol.url}"
            )


@main.command()
@click.argument("src", required=False)
@click.argument("dst", required=False)
@click.option("--box", default=None, help="Only this scale-0 region, 'z0:z1,y0:y1,x0:x1'.")
@click.option("--scales", default=None, help="Comma-separated scale indices (default: all).")
@click.option("--workers", type=int, default=None, help="Blocks in flight at once.")
@click.option("--no-progress", is_flag=True, help="Do not draw a progress bar.")
@click.option(
    "--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
    help="Destination option KEY=VALUE when cp creates it (e.g. -o zarr_format=2).",
)
@open_options_option(
    "Source open option KEY=VALUE, as voxgate.open takes it (repeat for more; VALUE is JSON "
    "when it parses, else a string): e.g. -O multiscale=1, -O layer=color, -O missing=error "
    "(the same as --missing error).  The copy's region and scales are --box and --scales.")
@click.option("--missing", type=click.Choice(["fill", "error"]), default=None,
              help=_MISSING_HELP)
@click.option("--verify", is_flag=True,
              help="On a rerun, read the blocks the journal lists from both stores and copy "
                   "again those that differ (the source changed since the interruption).")
@click.option("--status", is_flag=True,
              help="List the journals of unfinished copies (source, destination, blocks done, "
                   "age) and of unfinished in-place map_blocks runs (volume, function, blocks "
                   "done) instead of copying.")
@click.option("--forget", is_flag=True,
              help="Delete the journal(s) of the unfinished copy SRC -> DST instead of copying.")
@click.option("--forget-map-blocks", "forget_map_blocks", metavar="URL", default=None,
              help="Delete the journal(s) of the unfinished in-place map_blocks run(s) into "
                   "the volume URL (the volume is left as it is) instead of copying.")
@click.option("--forget-all", is_flag=True,
              help="Delete every unfinished copy's and in-place map_blocks run's journal.")
@scheduler_option("Run the blocks on the dask.distributed scheduler at ADDRESS "
                  "(tcp://host:port); the journal and progress stay here.")
def cp(
    src: str | None, dst: str | None, box: str | None, scales: str | None,
    workers: int | None, no_progress: bool, options: tuple[str, ...],
    open_options: dict[str, Any], missing: str | None, verify: bool, status: bool,
    forget: bool, forget_map_blocks: str | None, forget_all: bool, scheduler: str | None,
) -> None:
    """Copy SRC to DST (created with SRC's metadata if missing); rerun to resume.

    An interrupted copy (Ctrl-C, a kill, a failure) keeps a journal of the blocks it finished;
    the same command run again skips them (with --verify, checks them against SRC).  --status
    lists such journals, --forget SRC DST or --forget-all deletes them.  --status also lists
    the journals of in-place map_blocks runs that stopped (voxgate.map_blocks writing into its
    source, which the same call run again finishes); --forget-map-blocks URL deletes those of
    the volume URL.
    """
    from ..transfer import CopyInterrupted, copy

    if sum((status, forget, forget_all, forget_map_blocks is not None)) > 1:
        raise click.UsageError("give one of --status, --forget, --forget-map-blocks, "
                               "--forget-all")
    if forget_map_blocks is not None:
        if src is not None:
            raise click.UsageError("--forget-map-blocks URL takes no SRC/DST")
        _map_blocks_journals(forget=True, url=forget_map_blocks)
        return
    if status or forget_all:
        if src is not None:
            raise click.UsageError(
                f"--{'status' if status else 'forget-all'} takes no SRC/DST "
                "(use --forget SRC DST for one copy)")
        _journals(forget=forget_all)
        _map_blocks_journals(forget=forget_all)
        return
    if src is None or dst is None:
        raise click.UsageError("give SRC and DST (or --status / --forget-all)")
    if forget:
        _journals(forget=True, src=src, dst=dst)
        return
    scale_list = _parse_scales(scales)
    opts = parse_options(options, "'--option' / '-o'")
    missing = _source_missing(missing, open_options)
    try:
        parsed_box = Box.parse(box) if box is not None else None
        source: Any = src
        if open_options:
            from ..api import open as vopen

            # the source opened with its options (their spec() carries them to a cluster's
            # workers), and with missing as the copy checks it
            source = vopen(src, missing=missing, **open_options)
        with cluster_client(scheduler, workers) as client:
            report = copy(
                source, dst, box=parsed_box, scales=scale_list, workers=workers,
                progress=not no_progress, missing=missing, client=client, verify=verify,
                **opts,
            )
    except CopyInterrupted as exc:
        click.echo(
            f"interrupted after {exc.blocks_done} of {exc.blocks_total} blocks; run the same "
            f"command again to resume (journal at {exc.journal}; voxgate cp --forget SRC DST "
            "deletes it)", err=True)
        sys.exit(130)
    except (VoxgateError, OSError, ValueError) as exc:
        _fail(exc)
        return
    click.echo(str(report))


def _journals(*, forget: bool, src: str | None = None, dst: str | None = None) -> None:
    """List (or delete) the journals of unfinished copies."""
    from ..transfer import damaged_journals, forget_journals, journal_dir, list_journals

    if not forget:
        found = list_journals()
        damaged = damaged_journals()
        if not found and not damaged:
            click.echo(f"no unfinished copies (journals live in {journal_dir()})")
        for j in found:
            click.echo(str(j))
        for path, why in damaged:
            click.echo(f"damaged journal {path}: {why} (voxgate cp --forget-all deletes it)")
        return
    damaged = damaged_journals()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VoxgateWarning)
        gone = forget_journals(src, dst)
    left = []  # (the journals of copies running now: forget_journals warns of each)
    for w in caught:
        if issubclass(w.category, VoxgateWarning):
            left.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if src is not None:  # (the damaged ones of this copy: those deleted)
        damaged = [(p, w) for p, w in damaged if not (p.exists() or p.is_symlink())]
    for path, _ in damaged:
        click.echo(f"{'left' if path.exists() or path.is_symlink() else 'deleted'} damaged "
                   f"journal {path}")
    for message in left:
        click.echo(message)
    if not gone and not damaged and not left:
        which = "" if src is None else f" from {src} to {dst}"
        click.echo(f"no unfinished copy{which}; nothing to forget (voxgate cp --status lists "
                   "them)")
    for j in gone:
        click.echo(f"forgot {j.src} -> {j.dst}: {j.blocks_done}/{j.blocks_total} blocks "
                   f"were done ({j.path} deleted; the destination is left as it is)")


def _map_blocks_journals(*, forget: bool, url: str | None = None) -> None:
    """List (or delete) the journals of unfinished in-place map_blocks runs (all, or those
    into ``url``).  Their URLs and function names are stored redacted, and shown redacted."""
    from ..services.map_blocks import forget_journals, list_journals
    from ..storage import state_dir

    if not forget:
        found = [j for j in list_journals() if j.path is not None]  # (mem://: another process)
        if not found:
            click.echo("no unfinished in-place map_blocks runs (journals live in "
                       f"{state_dir('map_blocks')})")
        for j in found:
            click.echo(str(j))
        return
    matched = [j for j in forget_journals(url) if j.path is not None]
    if not matched and url is not None:
        click.echo(f"no unfinished in-place map_blocks run into {redact(url)}; nothing to "
                   "forget (voxgate cp --status lists them)")
    for j in matched:
        if j.running:
            click.echo(f"left {j.url} scale {j.scale}: a map_blocks run is writing into it now "
                       f"({j.path} is locked)")
        else:
            click.echo(f"forgot map_blocks in place {j.url} scale {j.scale} fn {j.fn}: "
                       f"{j.blocks_done}/{j.blocks_total} blocks were done ({j.path} deleted; "
                       "the volume is left as it is: the same call run again applies fn to "
                       "every block)")




def _parse_scales(text: str | None) -> list[int] | None:
    """``--scales 0,2`` as [0, 2] (None when not given)."""
    if text is None:
        return None
    try:
        out = [int(s) for s in text.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"scales are comma-separated scale indices such as 0,1,2, got {text!r}",
            param_hint="'--scales'") from None
    return out


def _source_missing(missing: str | None, open_options: dict[str, Any]) -> str:
    """``cp``'s one ``missing``: --missing, or -O missing=... (the same option of the source's
    open), "fill" when neither is given.  -O scale= / bounds= are refused: a copy names its
    scales and region with --scales and --box."""
    for key, instead in (("scale", "--scales"), ("bounds", "--box")):
        if key in open_options:
            raise click.BadParameter(f"{key!r}: cp copies the scales and region given by "
                                     f"{instead}, not a view of one; use {instead}",
                                     param_hint="'--open-option' / '-O'")
    given = open_options.pop("missing", None)
    if given is not None and missing is not None and given != missing:
        raise click.UsageError(f"--missing {missing} and -O missing={given} disagree; give "
                               "one of them")
    out = missing if missing is not None else given
    return "fill" if out is None else out


@main.command()
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where to write the demo data (default: a temporary folder, removed afterwards).",
)
@click.option("--size", type=click.IntRange(min=48), default=128,
              help="Edge length (y, x) of the synthetic volume; z is half of it.  At least 48.")
def demo(directory: Path | None, size: int) -> None:
    """Build a small synthetic EM image and segmentation, write, copy and read them back."""
    try:
        if directory is None:
            with tempfile.TemporaryDirectory(prefix="voxgate-demo-") as tmp:
                _demo(Path(tmp), size, kept=False)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            _demo(directory, size, kept=True)
    except (VoxgateError, OSError) as exc:
        _fail(exc)


def _demo(root: Path, size: int, kept: bool) -> None:
    import numpy as np

    from .. import copy, create
    from .. import open as vopen
    from ..synthetic import synthetic_em

    say = click.echo
    t0 = time.perf_counter()
    image, labels = synthetic_em((size // 2, size, size), seed=0,
                                 progress=sys.stderr.isatty())
    say(f"synthetic EM: image {image.shape} uint8, segmentation with "
        f"{len(np.unique(labels)) - 1} cells (uint64), voxel size 40 x 8 x 8 nm (z, y, x)")

    img_url = f"zarr://{root / 'em.zarr'}"
    seg_url = f"zarr://{root / 'seg.zarr'}"
    img = create(img_url, shape=image.shape, dtype="uint8", chunks=(32, 64, 64),
                 voxel_size=(40, 8, 8), kind="image", exist_ok=True)
    img[:] = image
    seg = create(seg_url, shape=labels.shape, dtype="uint64", chunks=(32, 64, 64),
                 voxel_size=(40, 8, 8), kind="segmentation", exist_ok=True)
    seg[:] = labels
    say(f"wrote {img_url} and {seg_url} (OME-Zarr, Zarr v3, blosc-zstd)")

    for name in ("em", "seg"):
        report = copy(f"zarr://{root / (name + '.zarr')}", f"precomputed://file://{root / name}",
                      progress=sys.stderr.isatty())
        say(f"copied: {report}")

    pre_img = vopen(root / "em")  # format detected from the precomputed 'info' file
    pre_seg = vopen(root / "seg")
    same_img = np.array_equal(pre_img.read(), image)
    same_seg = np.array_equal(pre_seg.read(), labels)
    say(f"read back {pre_img.url}: {pre_img.shape} {pre_img.dtype}, equal to the original: "
        f"{same_img}")
    say(f"read back {pre_seg.url}: {pre_seg.shape} {pre_seg.dtype} "
        f"({pre_seg.meta.scale(0).encoding}), equal to the original: {same_seg}")
    z0, z1, x0 = size // 12, size // 6, size // 3
    cut = pre_seg[z0:z1, ::2, -x0:]
    say(f"a lazy view seg[{z0}:{z1}, ::2, -{x0}:] -> {cut.shape}, ids in it: "
        f"{len(np.unique(cut.read()))}")
    where = (f"data in {root}" if kept else
             "the data was in a temporary folder, now removed (keep it with --dir DIR)")
    say(f"done in {time.perf_counter() - t0:.2f} s; {where}")
    if not (same_img and same_seg):
        raise click.ClickException("round trip mismatch")


# -- learned models: predict, synapses (issue 12) ---------------------------------------------
