"""map_blocks: run any function over a volume block by block, with halos, on Dask.

Each block is read with its halo (outside the volume reads as fill), passed to ``fn``, cropped
back to the block and written to the output.  The local threaded scheduler runs it by default;
pass a ``dask.distributed`` Client to spread it over a cluster, whose workers reopen both
volumes from their URLs (so in-memory ``mem://`` volumes cannot go there).  Every block is
accounted for at the end: a block that failed (after the scheduler's retries) raises, so the
output is never silently incomplete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import DtypeError, InvalidRequestError
from ..geometry import Box, Vec
from ..volume import Volume
from ._common import (
    ArrayResult,
    Provenance,
    as_volume,
    block_boxes,
    progress_bar,
    region_meta,
    resolve_output,
)

__all__ = ["map_blocks", "run_block"]


def run_block(fn: Callable[[np.ndarray], Any], src: Volume, out: Volume, block: Box,
              halo: Vec) -> Box:
    """One block: read with halo, apply ``fn``, crop, write.  Returns the block."""
    ext = Box(block.start - halo, block.stop + halo)
    data = src.with_bounds("fill").read(ext)
    result = np.asarray(fn(data))
    if result.shape == tuple(ext.shape):
        result = result[Box(ext.start + halo, ext.stop - halo).slices(ext.start)]
    elif result.shape != tuple(block.shape):
        raise InvalidRequestError(
            f"fn returned shape {result.shape} for block {block!r}; it must return the shape it "
            f"was given {tuple(ext.shape)} (the halo is cropped) or the block's "
            f"{tuple(block.shape)}")
    if result.dtype != out.dtype:
        if not np.can_cast(result.dtype, out.dtype, casting="safe"):
            raise DtypeError(
                f"fn returned {result.dtype.name} but the output is {out.dtype.name}; pass "
                f"dtype='{result.dtype.name}' to map_blocks or cast inside fn")
        result = result.astype(out.dtype)
    out.write(np.ascontiguousarray(result), block)
    return block


def map_blocks(
    fn: Callable[[np.ndarray], Any],
    source: Any,
    out: Any = None,
    *,
    block: Sequence[int] = (128, 256, 256),
    halo: Sequence[int] = (0, 0, 0),
    dtype: Any = None,
    kind: str | None = None,
    client: Any = None,
    workers: int | None = None,
    progress: bool = False,
    overwrite: bool = False,
    retries: int = 2,
    **create_options: Any,
) -> Any:
    """Apply ``fn`` to every ``block`` of ``source`` (with ``halo`` voxels of context).

    ``fn`` takes a C-order (z, y, x) array of the block plus its halo and returns an array of
    that shape (the halo is cropped) or of the block's shape.  ``out``: None returns a numpy
    array; a URL is created with the source's geometry (``dtype``, ``kind`` default to the
    source's; it must not exist unless ``overwrite``); a writable Volume is written in place.
    ``client``: a ``dask.distributed.Client``; without one the local threaded scheduler runs
    ``workers`` blocks at a time.  ``block`` is rounded up to whole chunks of the output.
    """
    t0 = time.perf_counter()
    src = as_volume(source)
    if src.ndim != 3 or any(a.step != 1 for a in src._axes):
        raise InvalidRequestError("map_blocks needs a 3-D view with step 1")
    b = Vec.of(block, "block")
    h = Vec.of(halo, "halo")
    if any(v <= 0 for v in b):
        raise InvalidRequestError(f"block must be positive in every axis, got {tuple(b)}")
    if any(v < 0 for v in h):
        raise InvalidRequestError(f"halo must not be negative, got {tuple(h)}")
    if any(hv > bv for hv, bv in zip(h, b, strict=True)):
        raise InvalidRequestError(
            f"halo {tuple(h)} is larger than the block {tuple(b)}: each block would read more "
            "of its neighbours than of itself; use a larger block or a smaller halo")
    region = src.bounds
    dt = np.dtype(dtype) if dtype is not None else src.dtype
    def covers_region(vol: Volume) -> None:
        if not vol.bounds.contains(region):
            raise InvalidRequestError(f"out {vol.url} covers {vol.bounds!r}, not {region!r}")

    target = resolve_output(out, region_meta(src, region, dt, kind or src.kind),
                            overwrite=overwrite, options=create_options, check=covers_region)
    # whole output chunks per block: two blocks never rewrite the same chunk at once
    grid = target.remote.write_grid(target.scale)
    b = Vec(*(-(-v // g) * g for v, g in zip(b, grid, strict=True)))
    blocks = list(block_boxes(region, b))
    if client is not None:
        for vol in (src, target):
            if vol.url.startswith("mem://"):
                raise InvalidRequestError(
                    f"{vol.url} lives in this process only; a dask.distributed cluster needs "
                    "volumes its workers can open by URL (zarr://, precomputed://, ...)")
        futures = client.map(run_block, [fn] * len(blocks), [src] * len(blocks),
                             [target] * len(blocks), blocks, [h] * len(blocks), pure=False,
                             retries=retries)
        with progress_bar(progress, len(blocks), "map_blocks") as bar:
            from distributed import as_completed

            finished = []
            for fut in as_completed(futures):
                finished.append(fut.result())  # a block that failed after its retries raises
                bar.advance()
    else:
        import dask

        with progress_bar(progress, len(blocks), "map_blocks") as bar:
            def tracked(bx: Box) -> Box:
                done = run_block(fn, src, target, bx, h)
                bar.advance()
                return done

            tasks = [dask.delayed(tracked, pure=False)(bx) for bx in blocks]
            finished = list(dask.compute(*tasks, scheduler="threads", num_workers=workers))
    missing = {bx for bx in blocks} - set(finished)
    if missing:
        raise RuntimeError(f"map_blocks: {len(missing)} blocks did not complete: "
                           f"{sorted(missing, key=lambda x: tuple(x.start))[:5]}")
    prov = Provenance("map_blocks", "local", src.url, {
        "blocks": len(blocks), "scheduler": "distributed" if client is not None else "threads",
        "seconds": round(time.perf_counter() - t0, 3)})
    if out is None:
        return ArrayResult(target.read(), prov)
    return target
