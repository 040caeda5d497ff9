"""downsample: build a volume's coarser scales (mean for images, mode for segmentations).

The local kernel is tinybrain.  tinybrain works on Fortran-order (x, y, z) arrays: a C-order
(z, y, x) array's ``.T`` is exactly that, with no copy, and its results' ``.T`` are C-order
(z, y, x) again.  (Passing the C-order array itself would make tinybrain downsample the wrong
axes: with factors (1, 2, 2) it would halve z and y instead of y and x.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidRequestError
from ..geometry import Box, Vec, grow_block
from ..meta import Scale, VolumeMeta, next_scales
from ..parallel import run_blocks
from ..remotes.base import Capability
from ..volume import Volume
from ._common import (
    Prefer,
    Provenance,
    as_volume,
    block_boxes,
    choose_path,
    progress_bar,
    scratch_remote,
)

__all__ = ["downsample", "downsample_kernel"]

#: blocks grow toward this many bytes of scale-0 data
BLOCK_BYTES = 64 * 2**20


def downsample_kernel(data: np.ndarray, factors: Sequence[Sequence[int]],
                      kind: str) -> list[np.ndarray]:
    """Downsample a C-order ([c,] z, y, x) array by each (z, y, x) factor in turn.

    Returns one C-order array per factor (the coarser scales, in order).  ``kind`` "image"
    averages, "segmentation" takes the mode.
    """
    import tinybrain

    if kind not in ("image", "segmentation"):
        raise InvalidRequestError(f"kind must be 'image' or 'segmentation', got {kind!r}")
    out: list[np.ndarray] = []
    current = np.ascontiguousarray(data)
    i = 0
    factors = [tuple(int(v) for v in f) for f in factors]
    while i < len(factors):
        f = factors[i]
        run = 1
        while i + run < len(factors) and factors[i + run] == f:
            run += 1
        xyz = (f[2], f[1], f[0]) + ((1,) if current.ndim == 4 else ())
        fortran = current.T  # (x, y, z[, c]) Fortran order: the same memory, no copy
        if kind == "segmentation":
            mips = tinybrain.downsample_segmentation(fortran, xyz, num_mips=run)
        else:
            mips = tinybrain.downsample_with_averaging(fortran, xyz, num_mips=run)
        for m in mips:
            out.append(np.ascontiguousarray(np.asarray(m).T))
        current = out[-1]
        i += run
    return out


def _factors_between(a: Scale, b: Scale) -> Vec:
    f = [round(vb / va) for va, vb in zip(a.voxel_size.zyx(), b.voxel_size.zyx(), strict=True)]
    if any(v < 1 for v in f):
        raise InvalidRequestError(f"scale {b.index} is finer than scale {a.index}")
    return Vec(*f)


def _default_num_scales(meta: VolumeMeta) -> int:
    """Enough scales that the coarsest fits in one chunk in y and x (at least 2)."""
    current = meta.with_scales(meta.scales[:1])
    while len(current.scales) < 16:
        sc = current.scales[-1]
        if sc.shape.y <= sc.chunks.y and sc.shape.x <= sc.chunks.x:
            break
        current = current.with_scales([*current.scales, *next_scales(current, 1)])
    return max(2, len(current.scales))


def downsample(
    source: Any,
    num_scales: int | None = None,
    *,
    factors: Sequence[Sequence[int]] | None = None,
    prefer: Prefer = "auto",
    block: Sequence[int] | None = None,
    workers: int | None = None,
    client: Any = None,
    progress: bool = False,
) -> Volume:
    """Compute scales 1 .. num_scales-1 of ``source`` from scale 0 and store them.

    ``source`` is a URL, a Volume or a numpy array (then the result lives in memory).  Missing
    scales are added to the store's metadata (precomputed info, OME-Zarr multiscales, N5 and
    HDF5 groups) with voxel sizes multiplied by ``factors`` ((z, y, x) per new scale; by
    default halving toward isotropy); scales that exist are recomputed.  Images are averaged,
    segmentations take the mode.  Big volumes run block by block (``block``, scale-0 voxels,
    rounded to whole chunks and factors), on ``workers`` threads or on a ``dask.distributed``
    ``client``'s workers, which reopen the store by URL.  Returns the volume opened read-write; its
    ``downsample_provenance`` attribute is not set — call ``downsample_provenance(vol)``.
    """
    t0 = time.perf_counter()
    vol = as_volume(source, mode="r+")
    if isinstance(source, np.ndarray):
        # an array: compute into a writable in-memory copy (the caller's array is not changed)
        copy = scratch_remote(vol.meta.with_scales(vol.meta.scales[:1]))
        copy.write(vol.scale_meta.bounds, vol.read())
        vol = Volume(copy)
    if vol.mode != "r+":
        from ..errors import ReadOnlyError

        raise ReadOnlyError(f"{vol.url} is opened read-only; downsample writes its scales")
    remote = vol.remote
    meta = remote.meta
    path = choose_path(prefer, remote, Capability.SERVER_DOWNSAMPLE, "downsample")
    if path == "server":
        _server_downsample(remote)
        done = Volume(remote, 0)
        _PROVENANCE[done.url] = Provenance("downsample", "server", done.url, {
            "seconds": round(time.perf_counter() - t0, 3)})
        return done
    if num_scales is None:
        num_scales = len(meta.scales) if len(meta.scales) > 1 else _default_num_scales(meta)
    if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 2:
        raise InvalidRequestError(f"num_scales must be an integer >= 2, got {num_scales!r}")
    existing = len(meta.scales)
    if factors is not None and len(factors) != num_scales - 1:
        raise InvalidRequestError(
            f"give one (z, y, x) factor per new scale: {num_scales - 1}, got {len(factors)}")
    steps: list[Vec] = []
    for k in range(1, min(existing, num_scales)):
        f = _factors_between(meta.scale(k - 1), meta.scale(k))
        if factors is not None and tuple(f) != tuple(factors[k - 1]):
            raise InvalidRequestError(
                f"scale {k} exists with factors {tuple(f)}, not {tuple(factors[k - 1])}")
        expect = Vec(*(math.ceil(s / v) for s, v in zip(meta.scale(k - 1).shape, f,
                                                         strict=True)))
        if expect != meta.scale(k).shape:
            raise InvalidRequestError(
                f"scale {k}'s shape {tuple(meta.scale(k).shape)} is not scale {k - 1}'s "
                f"divided by {tuple(f)}; voxgate cannot fill it consistently")
        steps.append(f)
    if num_scales > existing:
        new_factors = None if factors is None else [Vec.of(f) for f in factors[existing - 1:]]
        new = next_scales(meta, num_scales - existing, new_factors)
        remote.add_scales(new)
        meta = remote.meta
        steps += [_factors_between(meta.scale(k - 1), meta.scale(k))
                  for k in range(existing, num_scales)]
    total = Vec(*(math.prod(f[i] for f in steps) for i in range(3)))
    s0 = meta.scale(0)
    base = Vec.of(block) if block is not None else None
    grid = Vec(*(c * t for c, t in zip(s0.chunks, total, strict=True)))
    if base is None:
        itemsize = meta.dtype.itemsize * meta.num_channels
        base = grow_block(grid, itemsize, s0.shape, BLOCK_BYTES)
    base = Vec(*(max(g, math.ceil(b / g) * g) for b, g in zip(base, total, strict=True)))
    blocks = list(block_boxes(s0.bounds, base))

    if client is not None:
        if remote.url.startswith("mem://"):
            raise InvalidRequestError(
                f"{remote.url} lives in this process only; a dask.distributed cluster needs a "
                "volume its workers can open by URL")
        spec = remote.spec()
        futures = client.map(_downsample_block, [spec] * len(blocks), blocks,
                             [steps] * len(blocks), pure=False, retries=2)
        with progress_bar(progress, len(blocks), "downsample") as bar:
            from distributed import as_completed

            for fut in as_completed(futures):
                fut.result()  # a block that failed after its retries raises here
                bar.advance()
    else:
        with progress_bar(progress, len(blocks), "downsample") as bar:
            res = run_blocks(lambda b: _block(remote, b, steps), blocks, workers=workers,
                             on_done=lambda _b, _o: bar.advance())
        if res.failed:
            raise res.failed[0][1]
    out = Volume(remote, 0)
    _PROVENANCE[out.url] = Provenance("downsample", "local", out.url, {
        "scales": num_scales, "factors": [tuple(f) for f in steps], "blocks": len(blocks),
        "scheduler": "distributed" if client is not None else "threads",
        "seconds": round(time.perf_counter() - t0, 3)})
    return out


def _block(remote: Any, b: Box, steps: Sequence[Vec]) -> None:
    """Downsample one scale-0 block into every coarser scale."""
    meta = remote.meta
    s0 = meta.scale(0)
    levels = downsample_kernel(remote.read(b, 0), steps, meta.kind)
    cum = Vec(1, 1, 1)
    for k, arr in enumerate(levels, start=1):
        cum = Vec(*(c * f for c, f in zip(cum, steps[k - 1], strict=True)))
        sk = meta.scale(k)
        start = Vec(*(o + (a - o0) // c for o, a, o0, c in zip(sk.offset, b.start, s0.offset,
                                                               cum, strict=True)))
        target = Box(start, start + Vec(*arr.shape[-3:])).intersect(sk.bounds)
        remote.write(target, arr[(..., *target.slices(start))], k)


def _downsample_block(spec: dict[str, Any], b: Box, steps: Sequence[Vec]) -> Box:
    """A block on a dask.distributed worker: reopen the store from its spec."""
    from ..api import open_remote

    remote = open_remote(spec["url"], mode="r+", **spec.get("options", {}))
    _block(remote, b, steps)
    return b


_PROVENANCE: dict[str, Provenance] = {}


def downsample_provenance(vol: Volume) -> Provenance | None:
    """How the last ``downsample`` of this volume's URL in this process ran."""
    return _PROVENANCE.get(vol.url)


def _server_downsample(remote: Any, timeout: float = 3600.0) -> None:
    """Ask a bossDB-dialect server to downsample and wait for it."""
    project = remote.project
    c, e, ch = remote.collection, remote.experiment, remote.channel
    project.start_downsample(c, e, ch)
    deadline = time.monotonic() + timeout
    delay = 0.2
    while time.monotonic() < deadline:
        status = project.downsample_status(c, e, ch)["status"]
        if status == "DOWNSAMPLED":
            return
        if status == "FAILED":
            raise InvalidRequestError(f"the server's downsample of {remote.url} failed")
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
    raise TimeoutError(f"the server's downsample of {remote.url} did not finish in {timeout} s")
