"""The Services' commands: mesh, skeletonize, downsample, cc, stats, predict, synapses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import InvalidRequestError, VoxgateError
from . import _NO_PROGRESS_HELP, _fail, main
from ._cluster import cluster_client, scheduler_option
from ._open_options import open_input, open_options_option


def _ids(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ids = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        ids = []
    if not ids:  # '' or ',' is no id at all, not "every id" (leave --ids out for that)
        raise click.BadParameter(f"ids are comma-separated integers, got {text!r}",
                                 param_hint="'--ids'")
    return ids


def _zyx(text: str | None, what: str) -> tuple[int, int, int] | None:
    if not text:
        return None
    parts = text.split(",")
    if len(parts) != 3:
        raise click.BadParameter(f"{what} is 'z,y,x', got {text!r}")
    try:
        zyx = (int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        raise click.BadParameter(f"{what} is 'z,y,x' integers, got {text!r}") from None
    if what == "--block" and min(zyx) < 1:
        # refused here, before the command opens or creates anything (cc made OUT first)
        raise InvalidRequestError(f"block must be three positive integers (z, y, x), got {zyx}")
    return zyx


def _no_progress(f: Any) -> Any:
    return click.option("--no-progress", is_flag=True, help=_NO_PROGRESS_HELP)(f)


def _output_layer(url: str, out: str | None, sharded: bool, what: str,
                  files: Path | None, open_options: dict[str, Any]) -> tuple[Any, str | None]:
    """Open URL and decide, before any work, where the results go: the precomputed layer
    ``out``, URL itself when it is a precomputed layer, or (None) only the per-id files.
    Returns (volume, target layer URL or None); refuses when nothing would be written."""
    from ..api import open as vopen

    vol = vopen(url, **open_options)
    target = out or (vol.remote.url if vol.url.startswith("precomputed://") else None)
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


_BLOCKS_HELP = ("Run the blocks on the dask.distributed scheduler at ADDRESS (tcp://host:port); "
                "URL must be a URL every worker can open.  A volume done in one piece (see "
                "--block) runs here.")


def _to_csv(df: Any, path: Path) -> None:
    """Write a table to ``path``; a path that cannot be written is a one-line error."""
    try:
        df.to_csv(path, index=False)
    except OSError as exc:
        _fail(exc)


def _write_each(directory: Path, texts: dict[int, str], suffix: str) -> None:
    """One ``<id>.<suffix>`` text file per segment in ``directory`` (made if need be)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, text in texts.items():
        (directory / f"{i}.{suffix}").write_text(text)
    click.echo(f"wrote {len(texts)} {suffix.upper()} files into {directory}")


@main.command("mesh")
@click.argument("url")
@click.option("--ids", default=None, help="Comma-separated ids (default: every id).")
@click.option("--out", "out", default=None,
              help="Write into this precomputed layer's mesh directory (default: URL itself "
                   "when it is precomputed).")
@click.option("--format", "fmt", type=click.Choice(["multires", "legacy"]), default="multires")
@click.option("--simplify", type=float, default=None,
              help="Reduction factor (a whole number >= 1).")
@click.option("--max-error", type=float, default=None, help="Simplification error bound, nm.")
@click.option("--close/--no-close", default=True, show_default=True,
              help="Close the meshes where segments meet the edge of the volume (as Igneous "
                   "does), or leave them open there.")
@click.option("--obj-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write one OBJ file per id here.")
@click.option("--sharded", is_flag=True,
              help="Store the meshes in neuroglancer_uint64_sharded_v1 shard files (multires "
                   "only) instead of files per id.")
@click.option("--prefer", type=click.Choice(["auto", "server", "local"]), default="auto")
@click.option("--block", default=None,
              help="Mesh block by block, blocks of 'z,y,x' voxels (default: a volume up to "
                   "512 MiB of labels in one piece here, a larger one in blocks of whole "
                   "chunks).")
@scheduler_option(_BLOCKS_HELP)
@open_options_option()
@_no_progress
def mesh_cmd(url: str, ids: str | None, out: str | None, fmt: str, simplify: float | None,
             max_error: float | None, close: bool, obj_dir: Path | None, sharded: bool,
             prefer: str, block: str | None, scheduler: str | None,
             open_options: dict[str, Any], no_progress: bool) -> None:
    """Mesh the segments of URL (marching cubes, or the store's own meshes).

    The meshes go into URL when it is a precomputed layer, into --out, and/or as OBJ files into
    --obj-dir; with none of these the command refuses before computing anything."""
    from ..services import mesh, write_meshes

    try:
        if sharded and fmt != "multires":
            raise InvalidRequestError("--sharded stores multires meshes only (Neuroglancer "
                                      "reads no sharded legacy meshes): drop --format legacy")
        vol, target = _output_layer(url, out, sharded, "meshes", obj_dir, open_options)
        simp = None if simplify is None else (simplify, max_error)
        with cluster_client(scheduler) as client:
            result = mesh(vol, _ids(ids), simplify=simp, prefer=prefer,  # type: ignore[arg-type]
                          block=_zyx(block, "--block"), client=client,
                          progress=not no_progress, close=close)
        click.echo(f"{len(result)} meshes ({result.provenance.path}), "
                   f"{sum(len(m.faces) for m in result.values())} triangles")
        # meshes computed here go back into a precomputed source; stored ones are there already
        if out is None and result.provenance.path != "local":
            target = None
        if target:
            write_meshes(target, result, format=fmt, sharded=sharded,
                         progress=not no_progress)
            click.echo(f"wrote {len(result)} {fmt}{' sharded' if sharded else ''} meshes "
                       f"into {target}")
        if obj_dir is not None:
            _write_each(obj_dir, {i: m.to_obj() for i, m in result.items()}, "obj")
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
@click.option("--block", default=None,
              help="Skeletonize block by block, blocks of 'z,y,x' voxels (default: a volume "
                   "up to 128 MiB of labels in one piece here, a larger one in blocks).")
@scheduler_option(_BLOCKS_HELP)
@open_options_option()
@_no_progress
def skeletonize_cmd(url: str, ids: str | None, out: str | None, swc_dir: Path | None,
                    sharded: bool, dust: int, workers: int | None, block: str | None,
                    scheduler: str | None, open_options: dict[str, Any],
                    no_progress: bool) -> None:
    """Skeletonize the segments of URL (kimimaro).

    The skeletons go into URL when it is a precomputed layer, into --out, and/or as SWC files
    into --swc-dir; with none of these the command refuses before computing anything."""
    from ..formats.skeleton import write_skeletons
    from ..services import skeletonize

    try:
        vol, target = _output_layer(url, out, sharded, "skeletons", swc_dir, open_options)
        with cluster_client(scheduler, workers) as client:
            result = skeletonize(vol, _ids(ids), dust_threshold=dust, workers=workers,
                                 block=_zyx(block, "--block"), client=client,
                                 progress=not no_progress)
        click.echo(f"{len(result)} skeletons ({result.provenance.path})")
        if out is None and result.provenance.path != "local":
            target = None  # the store's own skeletons: they are there already
        if target:
            write_skeletons(target, result, sharded=sharded)
            click.echo(f"wrote {len(result)}{' sharded' if sharded else ''} skeletons "
                       f"into {target}")
        if swc_dir is not None:
            _write_each(swc_dir, {i: sk.to_swc() for i, sk in result.items()}, "swc")
    except (VoxgateError, OSError) as exc:
        _fail(exc)


@main.command("downsample")
@click.argument("url")
@click.option("--num-scales", type=int, default=None, help="Scales in all, scale 0 included.")
@click.option("--block", default=None, help="Block shape 'z,y,x' (scale-0 voxels).")
@click.option("--workers", type=int, default=None, help="Blocks run at once on this machine.")
@scheduler_option()
@open_options_option()
@_no_progress
def downsample_cmd(url: str, num_scales: int | None, block: str | None,
                   workers: int | None, scheduler: str | None, open_options: dict[str, Any],
                   no_progress: bool) -> None:
    """Compute URL's coarser scales (mean for images, mode for segmentations) into the store."""
    from ..services import downsample

    try:
        with cluster_client(scheduler, workers) as client:
            vol = downsample(open_input(url, open_options, mode="r+"), num_scales,
                             block=_zyx(block, "--block"), workers=workers, client=client,
                             progress=not no_progress)
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
@click.option("--dtype", type=click.Choice(["uint64", "uint32", "auto"]), default="uint64",
              help="The ids' type: uint64 (default; segment ids are uint64 everywhere), uint32 "
                   "(half the bytes; an error once more than 4294967295 components are found) "
                   "or auto (an existing OUT with --overwrite keeps its uint32 or uint64; a new "
                   "OUT is uint64, its type being fixed before the count is known).")
@scheduler_option()
@open_options_option()
@_no_progress
def cc_cmd(url: str, out: str, connectivity: str, block: str | None, overwrite: bool,
           dtype: str, scheduler: str | None, open_options: dict[str, Any],
           no_progress: bool) -> None:
    """Label the connected components of URL into the new volume OUT."""
    from ..services import connected_components

    try:
        with cluster_client(scheduler) as client:
            vol = connected_components(open_input(url, open_options), out,
                                       connectivity=int(connectivity), dtype=dtype,
                                       block=_zyx(block, "--block"), overwrite=overwrite,
                                       client=client, progress=not no_progress)
        from ..services.connected_components import connected_components_provenance

        prov = connected_components_provenance(vol)
        count = "?" if prov is None else prov.details["components"]
        click.echo(f"{count} components written to {vol.url} ({vol.dtype.name})")
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
@scheduler_option()
@open_options_option()
@_no_progress
def stats_cmd(url: str, csv_path: Path | None, prefer: str, as_labels: bool,
              scheduler: str | None, open_options: dict[str, Any], no_progress: bool) -> None:
    """Ids, voxel counts, bounding boxes and centroids of every label in URL (a segmentation)."""
    from ..services import label_stats

    try:
        with cluster_client(scheduler) as client:
            df = label_stats(open_input(url, open_options), prefer=prefer,  # type: ignore[arg-type]
                             progress=not no_progress, as_labels=as_labels, client=client)
    except (VoxgateError, OSError) as exc:
        _fail(exc)
        return
    if csv_path is not None:
        _to_csv(df, csv_path)
        click.echo(f"{len(df)} labels written to {csv_path}")
    else:
        click.echo(df.to_string(index=False, max_rows=40))




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
@scheduler_option("Run the blocks on the dask.distributed scheduler at ADDRESS "
                  "(tcp://host:port); MODEL is loaded here and sent to each worker once, SRC "
                  "and OUT must be URLs every worker can open.")
@open_options_option("Open option KEY=VALUE for SRC, as voxgate.open takes it (repeat for "
                     "more; VALUE is JSON when it parses, else a string): e.g. "
                     "-O missing=error, -O multiscale=1.")
@_no_progress
def predict_cmd(model: str, src: str, out: str, block: str | None, halo: str | None,
                workers: int | None, device: str, as_float: bool, overwrite: bool,
                scheduler: str | None, open_options: dict[str, Any],
                no_progress: bool) -> None:
    """Run MODEL (an .onnx file or a built-in name) over SRC block by block into OUT."""
    from ..services.predict import predict, predict_provenance

    try:
        with cluster_client(scheduler, workers) as client:
            vol = predict(model, open_input(src, open_options), out, block=_zyx(block, "--block"),
                          halo=_zyx(halo, "--halo"), workers=workers, client=client,
                          device=device, dtype="float32" if as_float else None,
                          progress=not no_progress, overwrite=overwrite)
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
@click.option("--max-size", default=None, metavar="VOXELS|none",
              help="Largest detection (voxels; larger components are dropped with a warning, "
                   "e.g. empty space a model takes for a synapse); 'none' keeps every size. "
                   "Default 4194304 (2**22).")
@click.option("--model", default="synapse-unet", help="An .onnx file or a built-in name.")
@click.option("--probabilities", default=None, help="Keep the probability map at this URL.")
@click.option("--block", default=None, help="Block shape 'z,y,x'.")
@click.option("--workers", type=int, default=None, help="Blocks run at once.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--sharded", is_flag=True, help="Store the annotation indexes in shards.")
@click.option("--scratch", default=None,
              help="A directory for the temporary volumes (a shared path, s3://, gs://); "
                   "default a temporary directory here.")
@scheduler_option("Run the blocks on the dask.distributed scheduler at ADDRESS "
                  "(tcp://host:port); SRC and --segmentation must be reachable from every "
                  "worker, and --scratch too when workers run on other machines.")
@open_options_option("Open option KEY=VALUE for SRC and --segmentation (both), as "
                     "voxgate.open takes it (repeat for more; VALUE is JSON when it parses, "
                     "else a string): e.g. -O missing=error, -O multiscale=1.")
@_no_progress
def synapses_cmd(src: str, out: str | None, csv_path: Path | None, segmentation: str | None,
                 threshold: float, min_size: int | None, max_size: str | None, model: str,
                 probabilities: str | None, block: str | None, workers: int | None,
                 device: str, sharded: bool, scratch: str | None, scheduler: str | None,
                 open_options: dict[str, Any], no_progress: bool) -> None:
    """Detect synapses in SRC (an EM image) with a model; a table, an annotation layer."""
    from ..services.synapses import detect_synapses

    largest: dict[str, Any] = {}
    if max_size is not None:
        if max_size.strip().lower() == "none":
            largest["max_size"] = None
        else:
            try:
                largest["max_size"] = int(max_size)
            except ValueError:
                raise click.BadParameter(f"a number of voxels or 'none', got {max_size!r}",
                                         param_hint="--max-size") from None
    try:
        with cluster_client(scheduler, workers) as client:
            seg = None if segmentation is None else open_input(segmentation, open_options)
            df = detect_synapses(open_input(src, open_options), model=model,
                                 threshold=threshold, min_size=min_size, **largest,
                                 segmentation=seg, out=out,
                                 probabilities=probabilities, block=_zyx(block, "--block"),
                                 workers=workers, client=client, device=device,
                                 sharded=sharded, scratch=scratch,
                                 progress=not no_progress)
    except (VoxgateError, OSError) as exc:
        _fail(exc)
        return
    if csv_path is not None:
        _to_csv(df, csv_path)
        click.echo(f"{len(df)} synapses written to {csv_path}")
    if out is not None:
        click.echo(f"{len(df)} synapses written to the annotation layer {out}")
    if csv_path is None and out is None:
        click.echo(df.to_string(index=False, max_rows=40))


# -- proofreading (issue 13): merge, split, history, undo -------------------------------------
