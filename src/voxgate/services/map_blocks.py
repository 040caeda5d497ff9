"""map_blocks: run any function over a volume block by block, with halos, on Dask.

Each block is read with its halo (outside the volume reads as fill), passed to ``fn``, cropped
back to the block and written to the output.  The local threaded scheduler runs it by default;
pass a ``dask.distributed`` Client to spread it over a cluster, whose workers reopen both
volumes from their URLs (so in-memory ``mem://`` volumes cannot go there).  The blocks run
through :mod:`voxgate.blockwise`: a block failing with a transient error (an unreachable store,
a worker that died) is run again; any other error stops the run and is raised naming the block,
so the output is never silently incomplete.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..blockwise import (
    block_shape,
    check_for_cluster,
    check_run,
    plan_blocks,
    run_blocks,
    scheduler_name,
)
from ..errors import DtypeError, InvalidRequestError
from ..geometry import Box, Vec
from ..volume import Volume
from ._common import (
    Provenance,
    as_volume,
    region_meta,
    resolve_output,
    scratch_result,
)

__all__ = ["map_blocks", "run_block"]


def run_block(fn: Callable[[np.ndarray], Any], src: Volume, out: Volume, block: Box,
              halo: Vec, results: dict[Box, np.ndarray] | None = None) -> Box:
    """One block: read with halo, apply ``fn``, crop, write.  Returns the block.

    ``results`` (a run writing into its source): each block's result is kept there until the
    block is done, and a block run again (a transient error after part of its write) writes
    it again instead of reading its source, which it may already have overwritten."""
    if results is not None and block in results:
        out.write(results[block], block)
        return block
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
    result = np.ascontiguousarray(result)
    if results is not None:
        results[block] = result
    out.write(result, block)
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
    ``retries``: how many times a block failing with a transient error (an unreachable store,
    a dask worker that died) is run again; other errors are raised at once, naming the block.
    """
    t0 = time.perf_counter()
    if not callable(fn):
        raise InvalidRequestError(
            f"map_blocks applies a function to each block; fn must be callable, got "
            f"{type(fn).__name__} {fn!r}")
    # refused before an out= URL is created
    workers, retries = check_run(workers, retries, client, "map_blocks")
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
    try:
        dt = np.dtype(dtype) if dtype is not None else src.dtype
    except TypeError:
        raise InvalidRequestError(f"unknown dtype {dtype!r}; give a numpy dtype such as "
                                  "'uint8', 'uint64' or 'float32'") from None
    if client is not None:
        check_for_cluster(src.url, "source", "map_blocks")

    def covers_region(vol: Volume) -> None:
        if not vol.bounds.contains(region):
            raise InvalidRequestError(f"out {vol.url} covers {vol.bounds!r}, not {region!r}")
        if any(h) and vol.url == src.url:
            raise InvalidRequestError(
                f"out is the source {src.url}: with a halo each block reads its neighbours, "
                "which earlier blocks would already have overwritten; write to another volume")

    target = resolve_output(out, region_meta(src, region, dt, kind or src.kind),
                            overwrite=overwrite, options=create_options, check=covers_region,
                            scale_of=None if isinstance(source, np.ndarray) else src)
    # whole output chunks per block, on the output's chunk grid: two blocks never rewrite the
    # same chunk at once
    grid = target.remote.write_grid(target.scale)
    b = block_shape(grid, dt.itemsize, region.shape, block=b)
    blocks = [p.box for p in plan_blocks(region, b, target.bounds)]
    in_place = target.url == src.url and target.scale == src.scale
    if client is not None:
        check_for_cluster(target.url, "output", "map_blocks", writes=True)
        if in_place:
            # dask runs a block again when its worker dies, on another worker, which would
            # read the block's voxels as the first run already wrote them (fn applied twice)
            raise InvalidRequestError(
                f"map_blocks with a dask.distributed client: out is the source {src.url}; a "
                "block whose worker dies is run again and would read what it already wrote "
                "(fn applied twice); write to another volume, or run it without client=")
    # in place, each block's result is kept until the block is done (see run_block)
    results: dict[Box, np.ndarray] | None = {} if in_place else None

    def done(bx: Box, _r: object) -> None:
        if results is not None:
            results.pop(bx, None)

    run_blocks(functools.partial(run_block, fn, src, target, halo=h, results=results), blocks,
               name="map_blocks", client=client, workers=workers, progress=progress,
               retries=retries, nbytes=lambda bx: bx.size * dt.itemsize, on_done=done)
    prov = Provenance("map_blocks", "local", src.url, {
        "blocks": len(blocks), "scheduler": scheduler_name(client),
        "seconds": round(time.perf_counter() - t0, 3)})
    if out is None:
        return scratch_result(target, prov)
    return target
