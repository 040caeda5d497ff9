"""detect_synapses: a model's probabilities, thresholded, cut into connected detections.

The pipeline, every step block by block on any Remote: :func:`predict` gives a uint8
probability map (kept at ``probabilities`` if given), voxels at or above ``threshold`` form a
mask, :func:`connected_components` labels it (26-connected, numbered canonically, so the
labels equal the whole-volume answer whatever the blocks), one pass over the blocks sums each
component's voxels, coordinates and probabilities, and components of at least ``min_size``
and at most ``max_size`` voxels become detections (larger ones are dropped with a warning: a
model that answers about 1 on black, as ``synapse-unet``'s first weights did, makes the
empty space of a mostly-black volume one component of nearly every voxel).  Memory is
bounded by the blocks
whatever a component's size: the statistics take a block's voxels a slice at a time, and a
component too large to hold at once is placed, and given its segments, block by block.

Each detection's position is the voxel of the component nearest its centroid (in nm; ties go
to the first in C order), so it always lies on the detection.  The table gives that voxel's
index (``z, y, x``) and its centre in nm (``(index + 0.5) * voxel size``, the frame of
:func:`voxgate.mesh` and :func:`voxgate.skeletonize`); an annotation layer written with
``out=`` holds the point at the voxel's centre, ``index + 0.5`` in the layer's voxel
coordinates (Neuroglancer draws voxel ``i`` over ``[i, i + 1)``: a point at ``i`` would sit
on the voxel's corner).  ``score`` is the component's
mean probability.  With a ``segmentation``: ``post_id`` is the non-zero segment holding most of
the detection's voxels (a synaptic detection is the cleft and the postsynaptic density, which
lies inside the postsynaptic cell), ``pre_id`` the most frequent other non-zero segment in a
shell of ``shell`` nm around the detection (the cell across the cleft, where the vesicles
are); 0 where there is none.  The rule does not look at vesicles: where the detection straddles
the cleft evenly, which side is "post" follows the voxel majority.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from ..blockwise import (
    check_for_cluster,
    check_run,
    count_blocks,
    hosts_elsewhere,
    run_blocks,
    scheduler_name,
)
from ..errors import InvalidRequestError, VoxgateWarning, check_flag, refuses_unknown_keywords
from ..geometry import Box, Vec, grow_block
from ..storage import is_local, join, local_path
from ..volume import Volume
from ._common import Provenance, as_volume, block_boxes, remove_scratch
from .connected_components import connected_components, connected_components_provenance
from .map_blocks import map_blocks
from .predict import load_model, no_server_path, predict, to_unit_float

__all__ = ["DEFAULT_MAX_SIZE", "DEFAULT_MIN_SIZE", "detect_synapses", "synapse_segments"]

#: detections smaller than this many voxels are dropped unless the model's card says otherwise
DEFAULT_MIN_SIZE = 10
#: larger volumes keep their probabilities, mask and components in temporary zarr volumes
IN_MEMORY_VOXELS = 2**26
#: the stats pass reads blocks of about this many voxels
_STATS_VOXELS = 2**22
#: ... and takes a block's voxels this many at a time (its per-voxel arrays, ~100 bytes a
#: foreground voxel, stay small whatever the block)
_SLICE_VOXELS = 2**16
#: a detection whose window (bounding box, grown by the shell with a segmentation) holds more
#: voxels than this is placed, and given its segments, block by block
_PLACE_VOXELS = 2**20
#: components larger than this many voxels are dropped (with a warning) unless
#: ``max_size=None``: about 10.7 um^3 at the built-in model's 40 x 8 x 8 nm
DEFAULT_MAX_SIZE = 2**22


def _local_reader(vol: Volume) -> Any:
    """Read ``vol`` by boxes relative to its own first voxel."""
    origin = vol.bounds.start

    def read(box: Box) -> np.ndarray:
        return vol.read(Box(box.start + origin, box.stop + origin))
    return read


def _grey_level(threshold: float) -> int:
    """The smallest grey level g with g / 255 >= threshold (the documented rule, compared as
    it reads: a tolerance here took levels just below the threshold, and all of them, 0
    included, for a threshold under 4e-9)."""
    return next((g for g in range(256) if g / 255 >= threshold), 256)


def _mode(values: np.ndarray, exclude: Sequence[int] = ()) -> int:
    values = values[values != 0]
    for e in exclude:
        values = values[values != e]
    if values.size == 0:
        return 0
    ids, counts = np.unique(values, return_counts=True)
    return int(ids[np.argmax(counts)])  # ties: the smaller id (np.unique sorts)


def synapse_segments(detection: np.ndarray, segmentation: np.ndarray,
                     voxel_size: Sequence[float], shell: float) -> tuple[int, int]:
    """(pre_id, post_id) of one detection (a boolean mask) over a segmentation window that
    holds the mask and ``shell`` nm around it: post holds most of its voxels, pre is the most
    frequent other segment in the shell (0 where none)."""
    from scipy import ndimage

    post = _mode(segmentation[detection])
    near = ndimage.distance_transform_edt(~detection, sampling=tuple(voxel_size)) <= shell
    pre = _mode(segmentation[near & ~detection], exclude=(post,))
    return pre, post


def _scratch_location(value: object) -> str:
    """``scratch=`` as a storage location: an absolute local path, or an s3:// / gs:// URL."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(
            f"scratch must be a directory: a path, or an s3:// or gs:// URL, got {value!r}")
    if is_local(value):
        return local_path(value)
    if not value.startswith(("s3://", "gs://")) or not value.split("://", 1)[1].strip("/"):
        raise InvalidRequestError(
            f"scratch must be a directory: a path, or an s3:// or gs:// URL, got {value!r} "
            "(it is a storage location, not a volume URL)")
    return value.rstrip("/")


@refuses_unknown_keywords
def detect_synapses(
    source: Any,
    *,
    model: Any = "synapse-unet",
    threshold: float = 0.5,
    min_size: int | None = None,
    max_size: int | None = DEFAULT_MAX_SIZE,
    segmentation: Any = None,
    out: Any = None,
    probabilities: Any = None,
    client: Any = None,
    block: Sequence[int] | None = None,
    halo: Sequence[int] | None = None,
    workers: int | None = None,
    device: str = "auto",
    shell: float = 100.0,
    sharded: bool = False,
    voxel_size: Any = None,
    progress: bool = True,
    overwrite: bool = False,
    prefer: str = "auto",
    scratch: str | os.PathLike[str] | None = None,
) -> Any:
    """Find synapses in ``source`` (any Volume, URL or numpy array) with ``model``.

    Returns a pandas DataFrame, one row per detection: ``id`` (1.. in the order of each
    detection's first voxel in a C-order scan), ``z, y, x`` (the index of the voxel of the
    detection nearest its centroid, dataset coordinates including the volume's offset),
    ``x_nm, y_nm, z_nm`` (that voxel's centre: ``(index + 0.5) * voxel size``, the frame of
    voxgate's meshes and skeletons), ``size`` (voxels), ``score`` (mean probability, 0..1);
    with ``segmentation`` also ``pre_id`` and ``post_id`` (module docstring: the rule).
    ``threshold``: a voxel is in a detection when its probability (its uint8 grey level / 255)
    is at least this.  ``min_size`` (voxels): smaller components are dropped (default: the
    built-in model's card, else 10).  ``max_size`` (voxels): larger components are dropped too,
    with a :class:`~voxgate.errors.VoxgateWarning` that counts them (default
    :data:`DEFAULT_MAX_SIZE`, 2**22: no synapse is that large, a model that marks the
    background is; ``None`` keeps every size).  ``out``: a precomputed annotation layer URL written
    with the points at the voxels' centres (``z + 0.5, y + 0.5, x + 0.5``; properties size,
    score; relationships pre_id, post_id).
    ``probabilities``: a URL that keeps the uint8 probability map.  ``scratch``: a
    directory (a path on a file system every worker shares, or an s3:// / gs:// URL) for the
    temporary probability, mask and component volumes of a large run or a run on a cluster;
    default a temporary directory on this machine, which a cluster whose workers run on other
    machines cannot reach (refused before anything runs).  ``block``, ``halo``,
    ``workers``, ``client``, ``device``: as :func:`predict` (``block`` also cuts the
    connected components and stats passes).  ``voxel_size`` (z, y, x nm): of a numpy
    ``source`` (default 1 nm); a store's own is used otherwise.  ``prefer="server"`` is
    refused (no store runs models on its server).
    """

    t0 = time.perf_counter()
    no_server_path(prefer)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not (
            0 < float(threshold) <= 1):
        raise InvalidRequestError(f"threshold must be a probability in (0, 1], got {threshold!r}")
    if min_size is not None and (isinstance(min_size, bool) or not isinstance(
            min_size, (int, np.integer)) or min_size < 1):
        raise InvalidRequestError(f"min_size must be a positive number of voxels, got {min_size!r}")
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(
            max_size, (int, np.integer)) or max_size < 1):
        raise InvalidRequestError(
            f"max_size must be a positive number of voxels or None (every size), got {max_size!r}")
    if isinstance(shell, bool) or not isinstance(shell, numbers.Real) or not (
            0 < float(shell) < math.inf):
        raise InvalidRequestError(
            f"shell must be a positive, finite distance in nm, got {shell!r}")
    sharded = check_flag(sharded, "sharded")
    overwrite = check_flag(overwrite, "overwrite")
    progress = check_flag(progress, "progress")
    # everything below is checked before predict writes the probabilities
    check_run(workers, 0, client, "detect_synapses")
    if out is not None:
        _check_out(out)
    scratch_root = _scratch_location(scratch) if scratch is not None else None
    if voxel_size is not None and not isinstance(source, np.ndarray):
        raise InvalidRequestError(
            "voxel_size is for a numpy source; a store's volume has its own voxel size")
    # a numpy source is an image whatever its integer type (as_volume would take a uint32
    # or uint64 array for labels, which predict refuses)
    src = as_volume(source, voxel_size=voxel_size,
                    kind="image" if isinstance(source, np.ndarray) else None)
    if not isinstance(source, np.ndarray) and src.kind == "segmentation":
        raise InvalidRequestError(
            f"detect_synapses needs an EM image; {src.url} is a segmentation (its labels are "
            "not intensities): give the image, and the segmentation as segmentation=")
    if src.ndim != 3:
        raise InvalidRequestError(
            f"detect_synapses needs a 3-D single-channel image, got shape {src.shape}")
    region = src.bounds
    if client is not None:
        check_for_cluster(src.url, "source", "detect_synapses")
        if probabilities is not None:
            check_for_cluster(probabilities.url if isinstance(probabilities, Volume) else str(
                probabilities), "probabilities", "detect_synapses", writes=True)
    seg = None
    if segmentation is not None:
        seg = as_volume(segmentation)
        if seg.ndim != 3 or seg.dtype.kind not in "ui":
            raise InvalidRequestError(
                f"segmentation {seg.url} must be a 3-D integer volume, it is {seg.dtype.name} "
                f"of shape {seg.shape}")
        if not isinstance(segmentation, np.ndarray) and seg.kind != "segmentation":
            # (its intensities would be taken for cell ids)
            raise InvalidRequestError(
                f"segmentation {seg.url} is an image (kind='image'), not a segmentation: give "
                "the volume of cell ids")
        vs_seg, vs_src = seg.voxel_size, src.voxel_size
        if not isinstance(segmentation, np.ndarray) and vs_seg.unit == vs_src.unit and not (
                np.allclose(vs_seg.zyx(), vs_src.zyx(), rtol=1e-6)):  # an array has none
            raise InvalidRequestError(
                f"segmentation {seg.url} has voxels of {vs_seg.zyx()} {vs_seg.unit}, the image "
                f"{vs_src.zyx()} {vs_src.unit}: give the segmentation's scale that matches "
                "the image's (same scale and offset)")
        if not seg.bounds.contains(region):
            raise InvalidRequestError(
                f"segmentation {seg.url} covers {seg.bounds!r}; it must cover the image's "
                f"{region!r} (same scale and offset)")
    runner = load_model(model, device=device, workers=workers or 1)
    if runner.channels is None and region.size > 0:
        # a callable tells its channels only when run: on a corner, before predict writes
        # (one that cannot run on so small a piece, a model of fixed input size, is checked
        # on its first block instead, as before)
        corner = Box(region.start, region.start + Vec(*(min(8, n) for n in region.shape)))
        with contextlib.suppress(Exception):
            runner.channels = int(runner(to_unit_float(src.read(corner))).shape[0])
    if runner.channels not in (None, 1):
        raise InvalidRequestError(
            f"model {runner.name} returns {runner.channels} channels; detect_synapses needs one "
            "synapse probability per voxel")
    if min_size is None:
        min_size = int(runner.card.get("min_size") or (runner.card.get("accuracy") or {}).get(
            "min_size") or DEFAULT_MIN_SIZE)
    if max_size is not None and max_size < min_size:
        raise InvalidRequestError(
            f"max_size={max_size} is below min_size={min_size}: no detection could be kept")
    # in memory for small volumes; temporary zarr volumes for large ones or for a cluster
    # (whose workers write the probabilities and must reach them by URL)
    on_disk = client is not None or math.prod(region.shape) > IN_MEMORY_VOXELS
    tmp, scratch_dir = None, None
    if on_disk and scratch_root is None:
        elsewhere = hosts_elsewhere(client) if client is not None else []
        if elsewhere:
            raise InvalidRequestError(
                "detect_synapses keeps its temporary volumes in a directory its workers write; "
                f"the cluster has workers on other machines ({', '.join(elsewhere)}), which "
                "cannot reach a temporary directory on this one: give scratch= a directory "
                "they all share (a path on a shared file system, or an s3:// or gs:// URL)")
        tmp = tempfile.TemporaryDirectory(prefix="voxgate-synapses-")
        scratch_dir = tmp.name
    elif on_disk:
        scratch_dir = join(scratch_root, f"voxgate-synapses-{uuid.uuid4().hex}")
    scratch_url = (lambda name: f"zarr://{join(scratch_dir, name)}.zarr") if (
        scratch_dir is not None) else (lambda name: None)
    try:
        probs = predict(model, src, probabilities if probabilities is not None else
                        scratch_url("probabilities"), block=block, halo=halo, client=client,
                        workers=workers, device=device, progress=progress, overwrite=overwrite)
        if probs.ndim != 3:
            raise InvalidRequestError(
                f"model {runner.name} returned {probs.shape[0]} channels; detect_synapses "
                "needs one synapse probability per voxel")
        prob_vol = as_volume(np.asarray(probs)) if isinstance(probs, np.ndarray) else probs
        if isinstance(probs, Volume) and prob_vol.bounds != region:
            # a given Volume larger than the image: the image's region of it
            prob_vol = prob_vol[region.slices(prob_vol.bounds.start)]
        level = _grey_level(float(threshold))
        mask = map_blocks(lambda p: (p >= level).astype(np.uint8), prob_vol, scratch_url("mask"),
                          dtype=np.uint8, block=block or (128, 256, 256), client=client,
                          workers=workers)
        if scratch_dir is None:
            lab_vol, n = _components_in_memory(np.asarray(mask))
            scheduler: str | None = scheduler_name(None)
        else:
            labels = connected_components(mask, scratch_url("components"), block=block,
                                          workers=workers, client=client, progress=progress)
            lab_vol = labels if isinstance(labels, Volume) else as_volume(np.asarray(labels))
            prov = getattr(labels, "provenance", None) or connected_components_provenance(
                lab_vol)
            n = int(prov.details["components"]) if prov is not None else int(
                lab_vol.read().max())
            scheduler = prov.details.get("scheduler") if prov is not None else None
        table, too_big = _table(src, region, prob_vol, lab_vol, n, seg, min_size, max_size,
                                shell, block, workers, progress)
    finally:
        remove_scratch(tmp, scratch_dir, "detect_synapses could not remove its temporary volumes")
    if len(too_big):
        warnings.warn(VoxgateWarning(
            f"detect_synapses dropped {len(too_big)} component(s) larger than max_size="
            f"{max_size} voxels (the largest {int(too_big.max())} voxels, "
            f"{int(too_big.max()) / max(region.size, 1):.0%} of the image): no synapse is that "
            f"large; a model that marks empty or featureless space (model {runner.name}, "
            f"threshold {float(threshold)}) makes them.  max_size=None keeps them"),
            stacklevel=2)
    if out is not None:
        from ..formats.annotation import write_annotations

        # each point at its voxel's centre: Neuroglancer draws voxel i over [i, i + 1)
        centres = table.assign(**{c: table[c] + 0.5 for c in ("z", "y", "x")})
        write_annotations(out, centres, voxel_size=src.voxel_size, kind="point",
                          properties=["size", "score"],
                          relationships=["pre_id", "post_id"] if seg is not None else [],
                          sharded=sharded, bounds=region, progress=progress)
    table.attrs["provenance"] = Provenance("detect_synapses", "local", src.url, {
        "model": runner.name, "threshold": float(threshold), "min_size": int(min_size),
        "max_size": None if max_size is None else int(max_size),
        "dropped_too_large": len(too_big),
        "components": n, "detections": len(table),
        "components_scheduler": scheduler,
        "probabilities": prob_vol.url if probabilities is not None else None,
        "annotations": str(out) if out is not None else None,
        "seconds": round(time.perf_counter() - t0, 3)})
    return table


def _components_in_memory(mask: np.ndarray) -> tuple[Volume, int]:
    """The 26-connected components of an in-memory mask (numbered as
    :func:`connected_components` numbers them: cc3d's own order) and their count, as the
    narrowest dtype cc3d finds for them (uint16 while its estimate of the labels fits, else
    uint32 or uint64): as uint64 the components of 2**26 voxels took 512 MiB, read back whole
    for the statistics, and a run peaked at 845 MiB above its baseline; then 596 MiB, predict's
    own peak with the image as one block, 383 MiB now that predict cuts it into blocks
    (docs/services/synapses.md)."""
    import cc3d

    labels, n = cc3d.connected_components(
        np.ascontiguousarray(mask), connectivity=26, return_N=True)
    return as_volume(labels, kind="segmentation"), int(n)


def _check_out(out: Any) -> None:
    """Refuse an ``out`` the annotation writer would refuse, before anything is computed."""
    from ..formats.annotation.encoding import ANNOTATION_INFO_TYPE
    from ..formats.annotation.reader import annotation_location, read_info

    try:
        location = annotation_location(out)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"out= {exc}") from exc
    if location.startswith(("http://", "https://")):
        raise InvalidRequestError(f"out= {out} is served over HTTP, which is read-only; write "
                                  "the annotations to a local path, gs:// or s3://")
    old = read_info(location)
    if old is not None and old.get("@type") != ANNOTATION_INFO_TYPE:
        raise InvalidRequestError(
            f"out= {out} holds {old.get('@type') or old.get('type')!r}, not an annotation "
            "layer; write the annotations into a directory of their own")


def _tolerance(best: float, voxel_size: Sequence[float]) -> float:
    """Squared distances (floats) up to this are candidates for the nearest voxel, which exact
    fractions then decide among (a tie in floats is not one: a centroid a third of a voxel
    off rounds either way)."""
    return best + 1e-6 * (best + max(voxel_size) ** 2)


def _exact_nearest(at: np.ndarray, total: Sequence[float], count: int,
                   voxel_size: Sequence[float]) -> int:
    """The row of ``at`` (voxel indices) nearest the centroid ``total / count`` in nm, in exact
    arithmetic; of equal ones the first."""
    vs = [Fraction(v) for v in voxel_size]
    sums = [int(t) for t in total]

    def exact(i: int) -> Fraction:
        return sum((((count * int(c) - t) * v) ** 2 for c, t, v in zip(at[i], sums, vs,
                                                                       strict=True)), Fraction(0))
    return int(min(range(len(at)), key=exact))  # min keeps the first of equal keys


def _nearest(vox: np.ndarray, start: Sequence[int], total: Sequence[float], count: int,
             voxel_size: Sequence[float]) -> int:
    """The row of ``vox`` (C order; plus ``start``) nearest the centroid ``total / count`` in
    nm, ties to the first: floats find the candidates, exact fractions decide among them."""
    at = vox + np.asarray(start, np.int64)
    d2 = (((at - np.asarray(total) / count) * voxel_size) ** 2).sum(axis=1)
    near = np.flatnonzero(d2 <= _tolerance(float(d2.min()), voxel_size))
    if len(near) == 1:
        return int(near[0])
    return int(near[_exact_nearest(at[near], total, count, voxel_size)])


def _nearest_by_blocks(read_lab: Any, label: int, boxes: Iterable[Box], total: Sequence[float],
                       count: int, voxel_size: Sequence[float]) -> np.ndarray:
    """:func:`_nearest`'s voxel of component ``label`` (its index), found one box of ``boxes``
    (which cover the component) at a time: never all its voxels at once.

    Each box keeps the voxels within :func:`_tolerance` of its own best; as the tolerance grows
    with the best, those hold every voxel within the tolerance of the component's best, the
    candidates :func:`_nearest` takes (its squared distances are computed here the same way,
    to the bit)."""
    centre = np.asarray(total, np.float64) / count
    best = math.inf
    coords: list[np.ndarray] = []
    dists: list[np.ndarray] = []
    for box in boxes:
        det = read_lab(box) == label
        if not det.any():
            continue
        axes = [((np.arange(a, b, dtype=np.int64) - c) * v) ** 2 for a, b, c, v in zip(
            box.start, box.stop, centre, voxel_size, strict=True)]
        d2 = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
        d2[~det] = np.inf
        del det
        here = float(d2.min())
        cand = np.flatnonzero(d2 <= _tolerance(here, voxel_size))
        coords.append(np.stack(np.unravel_index(cand, d2.shape), axis=1)
                      + np.asarray(tuple(box.start), np.int64))
        dists.append(d2.ravel()[cand])
        del d2
        best = min(best, here)
        keep = [d <= _tolerance(best, voxel_size) for d in dists]  # the list stays short
        coords = [c[k] for c, k in zip(coords, keep, strict=True)]
        dists = [d[k] for d, k in zip(dists, keep, strict=True)]
    at = np.concatenate(coords)
    at = at[np.lexsort(at.T[::-1])]  # C order: ties go to the first
    if len(at) == 1:
        return at[0]
    return at[_exact_nearest(at, total, count, voxel_size)]


def _add_counts(counts: dict[int, int], values: np.ndarray) -> None:
    ids, n = np.unique(values, return_counts=True)
    for i, k in zip(ids.tolist(), n.tolist(), strict=True):
        counts[i] = counts.get(i, 0) + k


def _mode_of(counts: dict[int, int], exclude: Sequence[int] = ()) -> int:
    """:func:`_mode` of values given by their counts: the most frequent non-zero id not in
    ``exclude``, ties to the smaller; 0 where there is none."""
    items = [(i, k) for i, k in counts.items() if i != 0 and i not in exclude]
    return int(min(items, key=lambda ik: (-ik[1], ik[0]))[0]) if items else 0


def _segments_by_blocks(read_lab: Any, read_seg: Any, label: int, window: Box, step: Vec,
                        pad: Sequence[int], voxel_size: Sequence[float],
                        shell: float) -> tuple[int, int]:
    """:func:`synapse_segments` of component ``label`` over ``window`` (its bounding box
    grown by ``pad`` voxels, within the volume), a block of ``window`` at a time: the
    segments' voxel counts in the component and in its shell add up over the blocks.  The
    distances of a block's voxels are taken within the block grown by ``pad`` (clipped to
    ``window``): every component voxel within ``shell`` nm of one lies there."""
    from scipy import ndimage

    inside: dict[int, int] = {}
    near: dict[int, int] = {}
    for core in block_boxes(window, step):
        grown = Box(core.start - Vec(*pad), core.stop + Vec(*pad)).intersect(window)
        det = read_lab(grown) == label
        if not det.any():
            continue  # no component voxel within the shell of this block's
        sl = core.slices(grown.start)
        seg = read_seg(core)
        here = det[sl]
        _add_counts(inside, seg[here])
        close = ndimage.distance_transform_edt(~det, sampling=tuple(voxel_size))[sl] <= shell
        del det
        _add_counts(near, seg[close & ~here])
    post = _mode_of(inside)
    return _mode_of(near, exclude=(post,)), post


def _smaller_block(step: Vec, voxels: int) -> Vec:
    """``step`` halved along its longest axis until it holds at most ``voxels``."""
    shape = list(step)
    while math.prod(shape) > voxels and max(shape) > 1:
        ax = shape.index(max(shape))
        shape[ax] = (shape[ax] + 1) // 2
    return Vec(*shape)


def _table(src: Volume, region: Box, prob_vol: Volume, lab_vol: Volume, n: int,
           seg: Volume | None, min_size: int, max_size: int | None, shell: float,
           block: Sequence[int] | None, workers: int | None,
           progress: bool) -> tuple[Any, np.ndarray]:
    """The detections table from the components ``lab_vol`` (numbered 1..n) and the
    probabilities, both read by blocks, and the sizes of the components dropped for being
    larger than ``max_size``.

    Memory is bounded by block terms whatever a component's size: the statistics pass takes
    a block's voxels :data:`_SLICE_VOXELS` at a time, and a detection whose window (its
    bounding box, grown by the shell with a segmentation) holds more than
    :data:`_PLACE_VOXELS` is placed and given its segments block by block."""
    import pandas as pd

    # one pass over blocks: per component voxel count, coordinate sums, grey-level sum, box
    shape = Vec(*region.shape)
    read_lab, read_prob = _local_reader(lab_vol), _local_reader(prob_vol)
    count = np.zeros(n + 1, np.int64)
    sums = np.zeros((n + 1, 3), np.float64)  # integers: exact below 2**53
    gsum = np.zeros(n + 1, np.float64)  # grey levels (integers): exact, in any order
    lo = np.full((n + 1, 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((n + 1, 3), -1, np.int64)
    lock = threading.Lock()
    # (an in-memory volume is one chunk: cut to blocks too)
    step = Vec.of(block, "block") if block is not None else _smaller_block(grow_block(
        lab_vol.chunks, 8, shape, 8 * _STATS_VOXELS), _STATS_VOXELS)
    whole = Box(Vec(0, 0, 0), shape)

    def stats(box: Box) -> None:
        lab = read_lab(box)
        fg = lab != 0
        if not fg.any():
            return
        first = int(lab.min(where=fg, initial=n))
        last = int(lab.max())
        del fg
        m = last - first + 1
        c, g = np.zeros(m, np.int64), np.zeros(m, np.float64)
        s = np.zeros((m, 3), np.float64)
        bl = np.full((m, 3), np.iinfo(np.int64).max, np.int64)
        bh = np.full((m, 3), -1, np.int64)
        flat, grey = lab.reshape(-1), read_prob(box).reshape(-1)
        origin = tuple(box.start)
        for a in range(0, flat.size, _SLICE_VOXELS):
            nz = np.flatnonzero(flat[a:a + _SLICE_VOXELS])
            if not nz.size:
                continue
            nz += a
            ids = flat[nz].astype(np.int64) - first
            g += np.bincount(ids, grey[nz].astype(np.float64), minlength=m)
            c += np.bincount(ids, minlength=m)
            for ax, at in enumerate(np.unravel_index(nz, lab.shape)):
                at = at.astype(np.int64) + origin[ax]
                s[:, ax] += np.bincount(ids, at.astype(np.float64), minlength=m)
                np.minimum.at(bl[:, ax], ids, at)
                np.maximum.at(bh[:, ax], ids, at)
        with lock:
            part = slice(first, last + 1)
            count[part] += c
            sums[part] += s
            gsum[part] += g
            np.minimum(lo[part], bl, out=lo[part])
            np.maximum(hi[part], bh, out=hi[part])

    run_blocks(stats, block_boxes(whole, step), name="synapse stats", workers=workers,
               progress=progress, total=count_blocks(whole, step))
    big = count[1:] > max_size if max_size is not None else np.zeros(n, bool)
    kept = np.nonzero((count[1:] >= min_size) & ~big)[0] + 1
    vs = src.voxel_size
    vs_zyx = (vs.z, vs.y, vs.x)
    pad = [math.ceil(shell / v) for v in vs_zyx]
    position = np.zeros((len(kept), 3), np.int64)
    pre = np.zeros(len(kept), np.uint64)
    post = np.zeros(len(kept), np.uint64)
    read_seg = _local_reader(seg) if seg is not None else None
    seg_origin = Vec(*(region.start - seg.bounds.start)) if seg is not None else Vec(0, 0, 0)
    place_step = _smaller_block(step, _PLACE_VOXELS)

    def seg_at(box: Box) -> np.ndarray:
        assert read_seg is not None
        return read_seg(Box(box.start + seg_origin, box.stop + seg_origin))

    def place(i: int) -> None:
        label = kept[i]
        grow = pad if seg is not None else [0, 0, 0]
        start = Vec(*(int(v) - g for v, g in zip(lo[label], grow, strict=True)))
        stop = Vec(*(int(v) + 1 + g for v, g in zip(hi[label], grow, strict=True)))
        box = Box(start, stop).intersect(whole)
        if box.size > _PLACE_VOXELS:  # block by block: a component may fill the volume
            around = Box(Vec(*(int(v) for v in lo[label])), Vec(*(int(v) + 1 for v in hi[label])))
            position[i] = _nearest_by_blocks(read_lab, label, block_boxes(around, place_step),
                                             sums[label], int(count[label]), vs_zyx)
            if read_seg is not None:
                pre[i], post[i] = _segments_by_blocks(read_lab, seg_at, label, box, place_step,
                                                      pad, vs_zyx, shell)
            return
        det = read_lab(box) == label
        vox = np.argwhere(det)
        near = _nearest(vox, tuple(box.start), sums[label], int(count[label]), vs_zyx)
        position[i] = vox[near] + np.asarray(tuple(box.start))
        if read_seg is not None:
            pre[i], post[i] = synapse_segments(det, seg_at(box), vs_zyx, shell)

    run_blocks(place, range(len(kept)), name="synapses", workers=workers, progress=progress)
    at = position + np.asarray(tuple(region.start), np.int64)
    table = pd.DataFrame({
        "id": np.arange(1, len(kept) + 1, dtype=np.uint64),
        "z": at[:, 0], "y": at[:, 1], "x": at[:, 2],
        # the voxel's centre in nm, the frame of voxgate.mesh and voxgate.skeletonize
        "x_nm": (at[:, 2] + 0.5) * vs.x, "y_nm": (at[:, 1] + 0.5) * vs.y,
        "z_nm": (at[:, 0] + 0.5) * vs.z,
        "size": count[kept].astype(np.int64),
        # the mean grey level / 255, rounded once
        "score": (gsum[kept] / (255.0 * np.maximum(count[kept], 1))).astype(np.float32),
    })
    if seg is not None:
        table["pre_id"] = pre
        table["post_id"] = post
    return table, count[1:][big]
