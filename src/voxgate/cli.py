"""The ``voxgate`` command: ``info``, ``cp`` and ``demo``."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from . import __version__
from .errors import VoxgateError
from .geometry import Box

__all__ = ["main"]


def _fail(exc: Exception) -> None:
    raise click.ClickException(f"{type(exc).__name__}: {exc}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="voxgate")
def main() -> None:
    """voxgate: one API over zarr, N5, HDF5, precomputed and more."""


@main.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(url: str, as_json: bool) -> None:
    """Describe the volume at URL: dtype, kind, scales, chunks, voxel sizes."""
    from .api import open as vopen

    try:
        vol = vopen(url)
    except (VoxgateError, OSError) as exc:
        _fail(exc)
        return
    meta = vol.meta
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
        click.echo(json.dumps(out, indent=2))
        return
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


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--box", default=None, help="Only this scale-0 region, 'z0:z1,y0:y1,x0:x1'.")
@click.option("--scales", default=None, help="Comma-separated scale indices (default: all).")
@click.option("--workers", type=int, default=None, help="Blocks in flight at once.")
@click.option("--no-progress", is_flag=True, help="Do not draw a progress bar.")
@click.option(
    "--option", "-o", "options", multiple=True,
    help="Destination option KEY=VALUE when cp creates it (e.g. -o zarr_format=2).",
)
def cp(
    src: str, dst: str, box: str | None, scales: str | None, workers: int | None,
    no_progress: bool, options: tuple[str, ...],
) -> None:
    """Copy SRC to DST (created with SRC's metadata if missing); rerun to resume."""
    from .transfer import copy

    try:
        parsed_box = Box.parse(box) if box else None
        scale_list = [int(s) for s in scales.split(",")] if scales else None
        opts = dict(_parse_option(o) for o in options)
        report = copy(
            src, dst, box=parsed_box, scales=scale_list, workers=workers,
            progress=not no_progress, **opts,
        )
    except (VoxgateError, OSError, ValueError) as exc:
        _fail(exc)
        return
    click.echo(str(report))


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
        click.echo(f"voxgate relay: {len(cfg.channels)} configured channel(s)"
                   + (f", data root {cfg.data_root}" if cfg.data_root else "")
                   + f", listening on http://{cfg.host}:{cfg.port}", err=True)
        run(cfg)
    except VoxgateError as exc:
        _fail(exc)


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
    from . import copy, create
    from . import open as vopen
    from .synthetic import synthetic_em

    say = click.echo
    t0 = time.perf_counter()
    image, labels = synthetic_em((size // 2, size, size), seed=0)
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


if __name__ == "__main__":  # pragma: no cover
    main()
