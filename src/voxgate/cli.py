"""The ``voxgate`` command: ``info``, ``cp``, ``serve``, the Services and ``demo``.

Start-up stays light (``voxgate --help`` imports click and voxgate's plain value modules
only): each command imports what it needs (tensorstore, numpy, the relay, the Services) inside
its function.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import InvalidRequestError, VoxgateError
from .geometry import Box

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


def _absent_by_scale(vol: Any) -> dict[int, list[Any]] | None:
    """Absent chunks of every scale, or None when the store cannot tell (bossdb, dvid)."""
    from .remotes.base import Capability, has_capability

    if not has_capability(vol.remote, Capability.CHUNK_PRESENCE):
        return None
    return {s.index: vol.at_scale(s.index).missing_chunks() for s in vol.meta.scales}


@main.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--check", is_flag=True,
              help="Also list the chunks absent from the store inside each scale's bounds.")
@click.option("--missing", type=click.Choice(["fill", "error"]), default="fill",
              help="With --check: 'error' exits with an error when any chunk is absent.")
def info(url: str, as_json: bool, check: bool, missing: str) -> None:
    """Describe the volume at URL: dtype, kind, scales, chunks, voxel sizes."""
    from .api import open as vopen
    from .remotes.base import LISTED_CHUNKS, format_chunks

    try:
        vol = vopen(url)
        absent = _absent_by_scale(vol) if check else None
    except (VoxgateError, OSError) as exc:
        _fail(exc)
        return
    meta = vol.meta
    total_absent = sum(len(v) for v in (absent or {}).values())
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
                str(k): {"total": len(v),
                         "first_zyx": [[int(i) for i in g] for g in v[:LISTED_CHUNKS]]}
                for k, v in absent.items()
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
            for k, v in absent.items():
                if v:
                    click.echo(f"check: {len(v)} chunk(s) absent at scale {k}: "
                               f"{format_chunks(v)}")
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
    "--option", "-o", "options", multiple=True,
    help="Destination option KEY=VALUE when cp creates it (e.g. -o zarr_format=2).",
)
@click.option("--missing", type=click.Choice(["fill", "error"]), default="fill",
              help=_MISSING_HELP)
@click.option("--status", is_flag=True,
              help="List the journals of unfinished copies (source, destination, blocks done, "
                   "age) instead of copying.")
@click.option("--forget", is_flag=True,
              help="Delete the journal(s) of the unfinished copy SRC -> DST instead of copying.")
@click.option("--forget-all", is_flag=True, help="Delete every unfinished copy's journal.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run the blocks on the dask.distributed scheduler at ADDRESS "
                   "(tcp://host:port); the journal and progress stay here.")
def cp(
    src: str | None, dst: str | None, box: str | None, scales: str | None,
    workers: int | None, no_progress: bool, options: tuple[str, ...], missing: str,
    status: bool, forget: bool, forget_all: bool, scheduler: str | None,
) -> None:
    """Copy SRC to DST (created with SRC's metadata if missing); rerun to resume.

    An interrupted copy (Ctrl-C, a kill, a failure) keeps a journal of the blocks it finished;
    the same command run again skips them.  --status lists such journals, --forget SRC DST or
    --forget-all deletes them.
    """
    import contextlib

    from .transfer import CopyInterrupted, copy

    if sum((status, forget, forget_all)) > 1:
        raise click.UsageError("give one of --status, --forget, --forget-all")
    if status or forget_all:
        if src is not None:
            raise click.UsageError(
                f"--{'status' if status else 'forget-all'} takes no SRC/DST "
                "(use --forget SRC DST for one copy)")
        _journals(forget=forget_all)
        return
    if src is None or dst is None:
        raise click.UsageError("give SRC and DST (or --status / --forget-all)")
    if forget:
        _journals(forget=True, src=src, dst=dst)
        return
    try:
        parsed_box = Box.parse(box) if box else None
        scale_list = [int(s) for s in scales.split(",")] if scales else None
        opts = dict(_parse_option(o) for o in options)
        with contextlib.ExitStack() as stack:
            client = None
            if scheduler is not None:
                if workers is not None:
                    raise click.UsageError(
                        "--workers sets the threads of a local copy; with --scheduler the "
                        "cluster's worker threads run the blocks (give one or the other)")
                from distributed import Client

                client = stack.enter_context(Client(scheduler, timeout="30s"))
            report = copy(
                src, dst, box=parsed_box, scales=scale_list, workers=workers,
                progress=not no_progress, missing=missing, client=client, **opts,
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
    from .transfer import forget_journals, journal_dir, list_journals

    if not forget:
        found = list_journals()
        if not found:
            click.echo(f"no unfinished copies (journals live in {journal_dir()})")
        for j in found:
            click.echo(str(j))
        return
    gone = forget_journals(src, dst)
    if not gone:
        which = "" if src is None else f" from {src} to {dst}"
        click.echo(f"no unfinished copy{which}; nothing to forget (voxgate cp --status lists "
                   "them)")
    for j in gone:
        click.echo(f"forgot {j.src} -> {j.dst}: {j.blocks_done}/{j.blocks_total} blocks "
                   f"were done ({j.path} deleted; the destination is left as it is)")


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Serve every volume under DIR/collection/experiment/channel; channels "
                   "created through the API are written here.")
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8080).")
@click.option("--memory-bytes", default=None, help="Memory cache size, e.g. '2 GiB'.")
@click.option("--disk-path", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Disk cache folder (none: memory only).")
@click.option("--disk-bytes", default=None, help="Disk cache size, e.g. '200 GiB'.")
@click.option("--state-path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where metadata, reserved ids and created projects are kept.")
def serve(config: Path | None, data_root: Path | None, host: str | None, port: int | None,
          memory_bytes: str | None, disk_path: Path | None, disk_bytes: str | None,
          state_path: Path | None) -> None:
    """Run the relay: serve CONFIG's channels (and/or --data-root) in the bossDB and
    Neuroglancer precomputed dialects."""
    from .relay import load_config
    from .relay import serve as run

    try:
        cfg = load_config(config, data_root=data_root, host=host, port=port,
                          memory_bytes=memory_bytes, disk_path=disk_path, disk_bytes=disk_bytes,
                          state_path=state_path)
        if not cfg.channels and cfg.data_root is None:
            raise click.UsageError("give a CONFIG file with [[channel]] entries or --data-root")
        _check_port(cfg.host, cfg.port)
        click.echo(f"voxgate relay: {len(cfg.channels)} configured channel(s)"
                   + (f", data root {cfg.data_root}" if cfg.data_root else "")
                   + f", listening on http://{cfg.host}:{cfg.port} (index page: "
                   f"http://{cfg.host}:{cfg.port}/)", err=True)
        run(cfg)
    except VoxgateError as exc:
        _fail(exc)


@main.command("view")
@click.argument("urls", nargs=-1, required=True)
@click.option("--no-browser", is_flag=True, help="Only print the link; do not open a browser.")
@click.option("--port", type=int, default=0,
              help="Port of the in-process relay (default: a free one).")
def view_cmd(urls: tuple[str, ...], no_browser: bool, port: int) -> None:
    """Show URLS in Neuroglancer (offline client) through an in-process relay on 127.0.0.1,
    until Ctrl-C."""
    from .viewer import view

    try:
        if port:
            _check_port("127.0.0.1", port)
        session = view(*urls, open_browser=not no_browser, port=port)
    except VoxgateError as exc:
        _fail(exc)
        return
    try:  # from here on Ctrl-C ends the session cleanly, whenever it comes
        click.echo(f"layers served by {session.relay_url}/ : {', '.join(session.layers)} "
                   "(Ctrl-C to stop)", err=True)
        click.echo(f"Neuroglancer: {session.url}")
        sys.stdout.flush()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        session.stop()


def _check_port(host: str, port: int) -> None:
    """Bind ``host:port`` once (as the server will, with SO_REUSEADDR) so that a taken port is
    said before "listening" is printed, not logged by the server after it."""
    import errno
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port,
                                                          type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise InvalidRequestError(f"cannot listen on {host}:{port}: {host!r} does not resolve "
                                  f"({exc.strerror}); --host takes an address such as "
                                  "127.0.0.1") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InvalidRequestError(
                    f"port {port} on {host} is already in use (another voxgate serve?): stop "
                    f"that server or choose another port with --port") from None
            raise InvalidRequestError(f"cannot listen on {host}:{port}: {exc.strerror}"
                                      + (" (ports below 1024 need privileges)"
                                         if exc.errno == errno.EACCES else "")) from None


def _ids(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"ids are comma-separated integers, got {text!r}") from None


def _zyx(text: str | None, what: str) -> tuple[int, int, int] | None:
    if not text:
        return None
    parts = text.split(",")
    if len(parts) != 3:
        raise click.BadParameter(f"{what} is 'z,y,x', got {text!r}")
    try:
        return (int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        raise click.BadParameter(f"{what} is 'z,y,x' integers, got {text!r}") from None


def _output_layer(url: str, out: str | None, sharded: bool, what: str,
                  files: Path | None) -> tuple[Any, str | None]:
    """Open URL and decide, before any work, where the results go: the precomputed layer
    ``out``, URL itself when it is a precomputed layer, or (None) only the per-id files.
    Returns (volume, target layer URL or None); refuses when nothing would be written."""
    from .api import open as vopen

    vol = vopen(url)
    target = out or (vol.url if vol.url.startswith("precomputed://") else None)
    if target is None and files is None:
        raise InvalidRequestError(
            f"{url} is not a precomputed layer, so the {what} would be computed and thrown away: "
            f"give --out PRECOMPUTED_LAYER (a precomputed segmentation to store them in) or "
            f"{'--obj-dir' if what == 'meshes' else '--swc-dir'} DIR (one file per id)")
    if sharded and target is None:
        raise InvalidRequestError(
            f"--sharded applies to {what} written into a precomputed layer; {url} is not one: "
            f"give --out PRECOMPUTED_LAYER")
    return vol, target


@main.command("mesh")
@click.argument("url")
@click.option("--ids", default=None, help="Comma-separated ids (default: every id).")
@click.option("--out", "out", default=None,
              help="Write into this precomputed layer's mesh directory (default: URL itself "
                   "when it is precomputed).")
@click.option("--format", "fmt", type=click.Choice(["multires", "legacy"]), default="multires")
@click.option("--simplify", type=float, default=None, help="Reduction factor (>= 1).")
@click.option("--max-error", type=float, default=None, help="Simplification error bound, nm.")
@click.option("--obj-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write one OBJ file per id here.")
@click.option("--sharded", is_flag=True,
              help="Store the meshes in neuroglancer_uint64_sharded_v1 shard files (multires "
                   "only) instead of files per id.")
@click.option("--prefer", type=click.Choice(["auto", "server", "local"]), default="auto")
def mesh_cmd(url: str, ids: str | None, out: str | None, fmt: str, simplify: float | None,
             max_error: float | None, obj_dir: Path | None, sharded: bool, prefer: str) -> None:
    """Mesh the segments of URL (marching cubes, or the store's own meshes).

    The meshes go into URL when it is a precomputed layer, into --out, and/or as OBJ files into
    --obj-dir; with none of these the command refuses before computing anything."""
    from .services import mesh, write_meshes

    try:
        if sharded and fmt != "multires":
            raise InvalidRequestError("--sharded stores multires meshes only (Neuroglancer "
                                      "reads no sharded legacy meshes): drop --format legacy")
        vol, target = _output_layer(url, out, sharded, "meshes", obj_dir)
        simp = None if simplify is None else (simplify, max_error)
        result = mesh(vol, _ids(ids), simplify=simp, prefer=prefer, progress=True)  # type: ignore[arg-type]
        click.echo(f"{len(result)} meshes ({result.provenance.path}), "
                   f"{sum(len(m.faces) for m in result.values())} triangles")
        # meshes computed here go back into a precomputed source; stored ones are there already
        if out is None and result.provenance.path != "local":
            target = None
        if target:
            write_meshes(target, result, format=fmt, sharded=sharded, progress=True)
            click.echo(f"wrote {len(result)} {fmt}{' sharded' if sharded else ''} meshes "
                       f"into {target}")
        if obj_dir is not None:
            obj_dir.mkdir(parents=True, exist_ok=True)
            for i, m in result.items():
                (obj_dir / f"{i}.obj").write_text(m.to_obj())
            click.echo(f"wrote {len(result)} OBJ files into {obj_dir}")
    except (VoxgateError, OSError) as exc:
        _fail(exc)


@main.command("skeletonize")
@click.argument("url")
@click.option("--ids", default=None, help="Comma-separated ids (default: every id).")
@click.option("--out", "out", default=None,
              help="Precomputed layer to store skeletons in (default: URL itself when it is "
                   "precomputed).")
@click.option("--swc-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write one SWC file per id here.")
@click.option("--sharded", is_flag=True,
              help="Store the skeletons in neuroglancer_uint64_sharded_v1 shard files instead "
                   "of one file per id.")
@click.option("--dust", type=int, default=100, help="Skip objects smaller than this (voxels).")
@click.option("--workers", type=int, default=None,
              help="Processes for the blocks of a large volume (default: one).")
def skeletonize_cmd(url: str, ids: str | None, out: str | None, swc_dir: Path | None,
                    sharded: bool, dust: int, workers: int | None) -> None:
    """Skeletonize the segments of URL (kimimaro).

    The skeletons go into URL when it is a precomputed layer, into --out, and/or as SWC files
    into --swc-dir; with none of these the command refuses before computing anything."""
    from .formats.skeleton import write_skeletons
    from .services import skeletonize

    try:
        vol, target = _output_layer(url, out, sharded, "skeletons", swc_dir)
        result = skeletonize(vol, _ids(ids), dust_threshold=dust, workers=workers,
                             progress=True)
        click.echo(f"{len(result)} skeletons ({result.provenance.path})")
        if out is None and result.provenance.path != "local":
            target = None  # the store's own skeletons: they are there already
        if target:
            write_skeletons(target, result, sharded=sharded)
            click.echo(f"wrote {len(result)}{' sharded' if sharded else ''} skeletons "
                       f"into {target}")
        if swc_dir is not None:
            swc_dir.mkdir(parents=True, exist_ok=True)
            for i, sk in result.items():
                (swc_dir / f"{i}.swc").write_text(sk.to_swc())
            click.echo(f"wrote {len(result)} SWC files into {swc_dir}")
    except (VoxgateError, OSError) as exc:
        _fail(exc)


@main.command("downsample")
@click.argument("url")
@click.option("--num-scales", type=int, default=None, help="Scales in all, scale 0 included.")
@click.option("--block", default=None, help="Block shape 'z,y,x' (scale-0 voxels).")
@click.option("--workers", type=int, default=None)
def downsample_cmd(url: str, num_scales: int | None, block: str | None,
                   workers: int | None) -> None:
    """Compute URL's coarser scales (mean for images, mode for segmentations) into the store."""
    from .services import downsample

    try:
        vol = downsample(url, num_scales, block=_zyx(block, "--block"), workers=workers,
                         progress=True)
        for s in vol.scales:
            click.echo(f"scale {s.index}: {' x '.join(map(str, s.shape))} voxels of "
                       f"{s.voxel_size.z:g} x {s.voxel_size.y:g} x {s.voxel_size.x:g} nm")
    except (VoxgateError, OSError) as exc:
        _fail(exc)


@main.command("cc")
@click.argument("url")
@click.argument("out")
@click.option("--connectivity", type=click.Choice(["6", "18", "26"]), default="26")
@click.option("--block", default=None, help="Block shape 'z,y,x'.")
@click.option("--overwrite", is_flag=True, help="Write into OUT even if it exists.")
def cc_cmd(url: str, out: str, connectivity: str, block: str | None, overwrite: bool) -> None:
    """Label the connected components of URL into the new volume OUT."""
    from .services import connected_components

    try:
        vol = connected_components(url, out, connectivity=int(connectivity),
                                   block=_zyx(block, "--block"), overwrite=overwrite,
                                   progress=True)
        from .services.connected_components import connected_components_provenance

        prov = connected_components_provenance(vol)
        count = "?" if prov is None else prov.details["components"]
        click.echo(f"{count} components written to {vol.url}")
    except (VoxgateError, OSError) as exc:
        _fail(exc)


@main.command("stats")
@click.argument("url")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the table to this CSV file.")
@click.option("--prefer", type=click.Choice(["auto", "server", "local"]), default="auto")
@click.option("--as-labels", is_flag=True, default=False,
              help="Count an image's values as labels (refused otherwise: intensities are not "
                   "labels).")
def stats_cmd(url: str, csv_path: Path | None, prefer: str, as_labels: bool) -> None:
    """Ids, voxel counts, bounding boxes and centroids of every label in URL (a segmentation)."""
    from .services import label_stats

    try:
        df = label_stats(url, prefer=prefer, progress=True,  # type: ignore[arg-type]
                         as_labels=as_labels)
    except (VoxgateError, OSError) as exc:
        _fail(exc)
        return
    if csv_path is not None:
        df.to_csv(csv_path, index=False)
        click.echo(f"{len(df)} labels written to {csv_path}")
    else:
        click.echo(df.to_string(index=False, max_rows=40))


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise click.BadParameter(f"options are KEY=VALUE, got {text!r}")
    import json

    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


@main.command()
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where to write the demo data (default: a temporary folder, removed afterwards).",
)
@click.option("--size", type=int, default=128, help="Edge length of the synthetic volume.")
def demo(directory: Path | None, size: int) -> None:
    """Build a small synthetic EM image and segmentation, write, copy and read them back."""
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="voxgate-demo-") as tmp:
            _demo(Path(tmp), size)
    else:
        directory.mkdir(parents=True, exist_ok=True)
        _demo(directory, size)


def _demo(root: Path, size: int) -> None:
    import numpy as np

    from . import copy, create
    from . import open as vopen
    from .synthetic import synthetic_em

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
    cut = pre_seg[10:20, ::2, -40:]
    say(f"a lazy view seg[10:20, ::2, -40:] -> {cut.shape}, ids in it: "
        f"{len(np.unique(cut.read()))}")
    say(f"done in {time.perf_counter() - t0:.2f} s; data in {root}")
    if not (same_img and same_seg):
        raise click.ClickException("round trip mismatch")


# -- learned models: predict, synapses (issue 12) ---------------------------------------------


@main.command("predict")
@click.argument("model")
@click.argument("src")
@click.argument("out")
@click.option("--block", default=None, help="Block shape 'z,y,x' (default about 4 Mi voxels).")
@click.option("--halo", default=None,
              help="Context voxels 'z,y,x' (default: the model's measured receptive radius).")
@click.option("--workers", type=int, default=None, help="Blocks run at once (default 2).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              help="onnxruntime device: 'cuda' needs onnxruntime-gpu (default: CUDA if there).")
@click.option("--float32", "as_float", is_flag=True,
              help="Store the model's values as float32 (default uint8: round(p * 255)).")
@click.option("--overwrite", is_flag=True, help="Write into OUT even if it exists.")
def predict_cmd(model: str, src: str, out: str, block: str | None, halo: str | None,
                workers: int | None, device: str, as_float: bool, overwrite: bool) -> None:
    """Run MODEL (an .onnx file or a built-in name) over SRC block by block into OUT."""
    from .services.predict import predict, predict_provenance

    try:
        vol = predict(model, src, out, block=_zyx(block, "--block"), halo=_zyx(halo, "--halo"),
                      workers=workers, device=device, dtype="float32" if as_float else None,
                      progress=True, overwrite=overwrite)
    except (VoxgateError, OSError) as exc:
        _fail(exc)
        return
    prov = predict_provenance(vol)
    d = prov.details if prov is not None else {}
    click.echo(f"{vol.url}: {d.get('blocks', '?')} blocks of {d.get('block')} (halo "
               f"{d.get('halo')}) with {d.get('model')} on "
               f"{', '.join(d.get('providers') or ['?'])} in {d.get('seconds', '?')} s")


@main.command("synapses")
@click.argument("src")
@click.option("--out", "out", default=None,
              help="Write the detections as a precomputed annotation layer at this URL.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the table to this CSV file.")
@click.option("--segmentation", default=None,
              help="A segmentation covering SRC: adds pre_id / post_id to every detection.")
@click.option("--threshold", type=float, default=0.5, help="Probability threshold (0..1].")
@click.option("--min-size", type=int, default=None, help="Smallest detection (voxels).")
@click.option("--model", default="synapse-unet", help="An .onnx file or a built-in name.")
@click.option("--probabilities", default=None, help="Keep the probability map at this URL.")
@click.option("--block", default=None, help="Block shape 'z,y,x'.")
@click.option("--workers", type=int, default=None, help="Blocks run at once.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--sharded", is_flag=True, help="Store the annotation indexes in shards.")
def synapses_cmd(src: str, out: str | None, csv_path: Path | None, segmentation: str | None,
                 threshold: float, min_size: int | None, model: str,
                 probabilities: str | None, block: str | None, workers: int | None,
                 device: str, sharded: bool) -> None:
    """Detect synapses in SRC (an EM image) with a model; a table, an annotation layer."""
    from .services.synapses import detect_synapses

    try:
        df = detect_synapses(src, model=model, threshold=threshold, min_size=min_size,
                             segmentation=segmentation, out=out, probabilities=probabilities,
                             block=_zyx(block, "--block"), workers=workers, device=device,
                             sharded=sharded, progress=True)
    except (VoxgateError, OSError) as exc:
        _fail(exc)
        return
    if csv_path is not None:
        df.to_csv(csv_path, index=False)
        click.echo(f"{len(df)} synapses written to {csv_path}")
    if out is not None:
        click.echo(f"{len(df)} synapses written to the annotation layer {out}")
    if csv_path is None and out is None:
        click.echo(df.to_string(index=False, max_rows=40))


# -- proofreading (issue 13): merge, split, history, undo -------------------------------------
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
def merge_cmd(url: str, ids: tuple[int, ...], into: int | None, user: str | None, prefer: str,
              remesh: bool) -> None:
    """Merge segments IDS of the segmentation URL into one (recorded; voxgate undo URL)."""
    from .services.proofread import merge

    try:
        _edit_report(merge(url, list(ids), into, user=user, prefer=prefer,  # type: ignore[arg-type]
                           progress=True, remesh=remesh))
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
def split_cmd(url: str, segment: int, seeds: tuple[str, ...], image: str | None,
              user: str | None, prefer: str, remesh: bool) -> None:
    """Split SEGMENT of the segmentation URL into pieces (recorded; voxgate undo URL)."""
    from .services.proofread import split

    groups: dict[int, list[tuple[int, int, int]]] = {}
    for text in seeds:
        ident, point = _seed(text)
        groups.setdefault(ident, []).append(point)
    try:
        _edit_report(split(url, segment, seeds=groups or None, image=image, user=user,
                           prefer=prefer, progress=True, remesh=remesh))  # type: ignore[arg-type]
    except (VoxgateError, OSError) as exc:
        _fail(exc)


@main.command("history")
@click.argument("url")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the table to this CSV file.")
def history_cmd(url: str, csv_path: Path | None) -> None:
    """The proofreading edits of URL: time, user, operation, ids, status."""
    from .services.proofread import history

    try:
        df = history(url)
    except (VoxgateError, OSError) as exc:
        _fail(exc)
        return
    if csv_path is not None:
        df.to_csv(csv_path, index=False)
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
def undo_cmd(url: str, count: int, user: str | None) -> None:
    """Undo the last edits of URL: the voxels they changed are written back."""
    from .services.proofread import undo

    try:
        for r in undo(url, count, user=user, progress=True):
            click.echo(f"edit {r.provenance.details['undid'] if r.provenance else '?'} undone "
                       f"({r.blocks} block(s) restored; recorded as edit {r.n})")
    except (VoxgateError, OSError) as exc:
        _fail(exc)


if __name__ == "__main__":  # pragma: no cover
    main()
