"""mesh: triangle meshes of segments, from the store's own meshes or by marching cubes (zmesh).

Vertices are float32 nanometres in (x, y, z), as every mesh format expects, in the dataset's
world frame: (voxel offset + index + 0.5) * voxel size, anisotropic voxels included (the +0.5
puts surfaces on voxel faces, where Neuroglancer draws the segmentation).  Every requested id
comes back (an id with no voxels gives an empty mesh, or an error with ``strict=True``).

Volumes larger than one block are meshed block by block: each block is read with one extra
voxel on its upper faces, so marching cubes sees every pair of neighbouring voxels exactly
once, and the pieces of each segment are stitched by merging the vertices they share on
block faces.  The result has no cracks and no duplicate faces at block borders, and equals the
whole-volume mesh.  Segments cut by the edge of the region meshed are closed there (a layer
of background is added on the region's sides before marching cubes; block-wise, on the
blocks' sides that are the region's), unless ``close=False``.  Simplification, when asked for,
runs on the stitched mesh.  Blocks run on
a ``dask.distributed`` Client when one is given (zmesh holds the GIL, so threads would not
help), otherwise one after another.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..absence import StoredGroups, background_groups, chunk_blocks, holds_nothing, read_stored
from ..blockwise import (
    Block,
    block_shape,
    blocks_at_once,
    check_block,
    check_for_cluster,
    iter_blocks,
    plan_blocks,
    run_blocks,
    scheduler_name,
)
from ..errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    RemoteNotFoundError,
    check_flag,
    refuses_unknown_keywords,
)
from ..formats.mesh import Mesh
from ..geometry import Box, Vec
from ..meta import check_ids
from ..remotes.base import Capability
from ..volume import Volume
from ._common import (
    Prefer,
    Provenance,
    as_volume,
    choose_path,
    refuse_negative_labels,
    whole_segment_path,
)
from ._mesh_stitch import Stitcher, touches

__all__ = ["MeshResult", "mesh", "mesh_kernel", "write_meshes"]

#: a volume up to this many bytes is meshed in one piece
WHOLE_BYTES = 512 * 2**20
_ONE = Vec(1, 1, 1)


class MeshResult(dict[int, Mesh]):
    """``{id: Mesh}`` plus ``provenance`` (which path produced it)."""

    provenance: Provenance


def _simplify_args(simplify: Any) -> tuple[float, float | None] | None:
    if simplify is None:
        return None
    def real(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):  # numpy's too
            raise InvalidRequestError(
                "simplify is None, a reduction factor, or (reduction_factor, max_error_nm) of "
                f"numbers, got {simplify!r}")
        return float(v)

    if isinstance(simplify, numbers.Real) and not isinstance(simplify, bool):
        factor, error = float(simplify), None
    elif isinstance(simplify, Sequence) and not isinstance(simplify, str) and len(simplify) == 2:
        factor, error = real(simplify[0]), (None if simplify[1] is None else real(simplify[1]))
    elif isinstance(simplify, Mapping):
        factor = real(simplify.get("reduction_factor", 0))
        error = simplify.get("max_error")
        error = None if error is None else real(error)
    else:
        raise InvalidRequestError(
            "simplify is None, a reduction factor, or (reduction_factor, max_error_nm), got "
            f"{simplify!r}")
    if not (math.isfinite(factor) and factor >= 1 and factor.is_integer()):
        # (zmesh takes a whole factor: it truncated 2.5 to 2)
        raise InvalidRequestError(f"the reduction factor must be a whole number >= 1, got "
                                  f"{factor}")
    if error is not None and not (math.isfinite(error) and error >= 0):
        raise InvalidRequestError(f"max_error must be a finite distance >= 0 nm (or None), got "
                                  f"{error}")
    return factor, error


def _closed(labels: np.ndarray, origin: Sequence[int], close: Sequence[bool]
            ) -> tuple[np.ndarray, tuple[int, ...]]:
    """``labels`` with a layer of background on the sides ``close`` names (lower z, y, x, then
    upper z, y, x), and the dataset coordinate of its first voxel then."""
    lo, hi = [int(bool(c)) for c in close[:3]], [int(bool(c)) for c in close[3:]]
    if not any(lo) and not any(hi):
        return labels, tuple(origin)
    out = np.zeros(tuple(n + a + b for n, a, b in zip(labels.shape, lo, hi, strict=True)),
                   dtype=labels.dtype)
    out[tuple(slice(a, a + n) for a, n in zip(lo, labels.shape, strict=True))] = labels
    return out, tuple(o - a for o, a in zip(origin, lo, strict=True))


#: the one-piece path reads a store's volume in blocks of whole chunks of about this many bytes
_BLOCK_READ_BYTES = 16 * 2**20


def _read_closed(vol: Volume, close: bool) -> tuple[np.ndarray, tuple[int, ...]]:
    """A store's region for the one-piece path, and the dataset coordinate of its first
    voxel: with ``close``, inside a layer of background on every side (what
    :func:`_closed` makes), read block by block (whole chunks) straight into that array.
    Read whole and then copied into the padded array, the volume was held twice at once:
    meshing a 20^3 object of a 512 MiB volume peaked at 1 GiB.  Of a store that tells which
    chunks it holds, only those are read (absent ones are background: no surface)."""
    region = vol.bounds
    stored = background_groups(vol.remote, region, vol.scale, vol.chunks)
    if not close:
        if stored is None:
            return vol.read(), tuple(region.start)
        return read_stored(vol.remote, region, vol.scale, stored), tuple(region.start)
    out = np.zeros(tuple(n + 2 for n in region.shape), dtype=vol.dtype)
    if stored is not None:
        return (read_stored(vol.remote, region, vol.scale, stored, out, _ONE),
                tuple(o - 1 for o in region.start))
    base = block_shape(vol.chunks, vol.dtype.itemsize, region.shape, budget=_BLOCK_READ_BYTES)
    for b in iter_blocks(region, base, vol.scale_meta.bounds):
        out[b.box.slices(region.start - _ONE)] = vol.read(b.box)
    return out, tuple(o - 1 for o in region.start)


def mesh_kernel(labels: np.ndarray, voxel_size: Sequence[float], origin: Sequence[int],
                ids: Iterable[int] | None = None,
                simplify: tuple[float, float | None] | None = None,
                close: bool | Sequence[bool] = False) -> dict[int, Mesh]:
    """Marching cubes on a C-order (z, y, x) label array; ``origin`` is its first voxel's
    dataset coordinate (z, y, x), ``voxel_size`` (z, y, x) in nm.

    ``close``: segments that reach the array's edge are left open there (False, zmesh's own
    behaviour), closed on every side (True), or on the sides named by six flags (lower z, y,
    x, upper z, y, x): the array is meshed with a layer of background (0) added there, as
    Igneous does at a dataset's edges (``closed_dataset_edges``), at the cost of a copy."""
    import zmesh

    if isinstance(close, (bool, np.bool_)):
        flags = [bool(close)] * 6
    elif isinstance(close, (str, bytes)) or not isinstance(close, (Sequence, np.ndarray)) \
            or len(close) != 6:
        raise InvalidRequestError(f"close is a bool or six bools, got {close!r}")
    else:  # "no" or 1 is no way to say a side (taken as truthy, "no" closed it)
        flags = [check_flag(c, f"close[{k}]") for k, c in enumerate(close)]
    refuse_negative_labels(labels, "mesh")
    labels, origin = _closed(labels, origin, flags)
    vz, vy, vx = (float(v) for v in voxel_size)
    mesher = zmesh.Mesher((vx, vy, vz))
    mesher.mesh(np.ascontiguousarray(labels).T)  # Fortran-order (x, y, z): the same memory
    shift = np.array([origin[2] * vx, origin[1] * vy, origin[0] * vz], dtype=np.float32)
    shifted = bool(shift.any())
    present = mesher.ids()
    if ids is None:
        wanted = present
    else:
        have = set(present)
        wanted = list(dict.fromkeys(int(i) for i in ids if int(i) in have))  # once each
    kwargs: dict[str, Any] = {"normals": False, "voxel_centered": True}
    if simplify is not None:
        kwargs["reduction_factor"] = int(simplify[0])
        kwargs["max_error"] = simplify[1] if simplify[1] is not None else 1e9
    out: dict[int, Mesh] = {}
    for i in wanted:
        m = mesher.get(i, **kwargs)
        mesher.erase(i)
        vertices, faces = m.vertices, m.faces
        if shifted:
            vertices += shift  # zmesh hands over a fresh array: shifted in place, no copy
        if (vertices.dtype == np.float32 and faces.dtype == np.uint32 and vertices.ndim == 2
                and faces.ndim == 2 and vertices.flags.c_contiguous
                and faces.flags.c_contiguous):
            # zmesh's own arrays, as a Mesh holds them: no checking pass, no copy
            out[int(i)] = Mesh._trusted(vertices, faces, int(i))
        else:
            out[int(i)] = Mesh(vertices, np.asarray(faces).reshape(-1, 3), id=int(i))
    return out


def _block_pieces(vol: Volume, region: Box, voxel_size: Sequence[float],
                  ids: list[int] | None, pack: bool, block: Block, close: bool = False,
                  stored: StoredGroups | None = None) -> Any:
    """One block's pieces: the block plus one voxel on its upper faces (clipped), with the
    inner faces each piece reaches (:func:`touches`); packed (:func:`_pack`) for a trip from
    a cluster's worker.  With ``close``, closed on the sides that are the region's edges.
    Where ``stored`` says the store holds no chunk of that, it is background only: no piece,
    nothing read."""
    ext = Box(block.box.start, block.box.stop + _ONE).intersect(region)
    if holds_nothing(stored, ext):
        nothing: dict[int, Mesh] = {}
        return (*_pack(nothing), np.zeros(0, np.uint8)) if pack else (nothing,
                                                                       np.zeros(0, np.uint8))
    labels = read_stored(vol.remote, ext, vol.scale, stored)  # (what is stored of it)
    # (the upper side by the block's own box: a block whose extra voxel is the region's last
    # leaves the cap to the block of that voxel, which meshes the cubes past it)
    sides = [close and a == b for a, b in zip(block.box.start, region.start, strict=True)]
    sides += [close and a == b for a, b in zip(block.box.stop, region.stop, strict=True)]
    pieces = mesh_kernel(labels, voxel_size, tuple(ext.start), ids, close=sides)
    bits = touches(labels, ext, block.box, region, list(pieces))
    return (*_pack(pieces), bits) if pack else (pieces, bits)


def _pack(meshes: dict[int, Mesh]) -> tuple[np.ndarray, ...]:
    """Meshes as five arrays (ids, vertex counts, face counts, all vertices, all faces).

    A block's few hundred meshes as a dict cost the client thousands of small frames to
    receive and unpickle; five large buffers cost it one copy each.
    """
    ms = list(meshes.values())
    return (np.fromiter(meshes, dtype=np.uint64, count=len(ms)),
            np.fromiter((len(m.vertices) for m in ms), dtype=np.int64, count=len(ms)),
            np.fromiter((len(m.faces) for m in ms), dtype=np.int64, count=len(ms)),
            np.concatenate([m.vertices for m in ms]) if ms else np.zeros((0, 3), np.float32),
            np.concatenate([m.faces for m in ms]) if ms else np.zeros((0, 3), np.uint32))


def _unpack(packed: Any) -> tuple[dict[int, Mesh], np.ndarray]:
    """:func:`_block_pieces`'s meshes again (as views of :func:`_pack`'s arrays: no copy),
    and their :func:`touches` bits."""
    if len(packed) == 2:
        return packed[0], packed[1]
    ids, nv, nf, vertices, faces, bits = packed
    vo = np.concatenate([[0], np.cumsum(nv)]).tolist()
    fo = np.concatenate([[0], np.cumsum(nf)]).tolist()
    return {i: Mesh._trusted(vertices[vo[k]:vo[k + 1]], faces[fo[k]:fo[k + 1]], i)
            for k, i in enumerate(ids.tolist())}, bits


@refuses_unknown_keywords
def mesh(
    source: Any,
    ids: Iterable[int] | None = None,
    *,
    simplify: Any = None,
    prefer: Prefer = "auto",
    block: Sequence[int] | None = None,
    strict: bool = False,
    client: Any = None,
    progress: bool = False,
    voxel_size: Any = None,
    close: bool = True,
) -> MeshResult:
    """Meshes of ``ids`` (all ids present when None) in ``source``, as ``{id: Mesh}``.

    ``source``: a segmentation Volume or URL (or a view of one: only that region is meshed),
    or a 3-D numpy array (with ``voxel_size`` (z, y, x) nm).  ``simplify``: None (no
    simplification), a reduction factor, or (reduction_factor, max_error_nm).  ``prefer``:
    "server" uses meshes the store already holds (precomputed mesh directory, DVID
    ``_meshes`` keyvalue; with ids=None, every stored mesh), "local" runs marching cubes,
    "auto" the first when offered.  ``close``: a segment cut by the edge of the region meshed
    gets a surface there too, so every mesh is closed (watertight), as Igneous makes them
    (its ``closed_dataset_edges``); False leaves them open there (zmesh's default) and meshes
    a numpy array without the padded copy that closing needs.
    """
    close = check_flag(close, "close")
    strict = check_flag(strict, "strict")
    progress = check_flag(progress, "progress")
    t0 = time.perf_counter()
    vol = as_volume(source, voxel_size=voxel_size, kind="segmentation"
                    if isinstance(source, np.ndarray) else None)
    if vol.kind != "segmentation":
        raise InvalidRequestError(
            f"mesh needs a segmentation; {vol.url} is an image (kind='image'). Mesh its "
            "segmentation, or threshold the image into labels first")
    if vol.ndim != 3 or any(a.step != 1 for a in vol._axes):
        raise InvalidRequestError("mesh needs a 3-D view with step 1")
    simp = _simplify_args(simplify)
    id_list = check_ids(ids)
    block = check_block(block)
    remote = vol.remote
    path = choose_path(prefer, remote, Capability.SERVER_MESH, "mesh")
    path = whole_segment_path(path, prefer, vol, "meshes", "mesh")
    result = MeshResult()
    stored = None
    if path == "server":
        try:
            stored = remote.meshes(id_list)  # type: ignore[attr-defined]
        except CapabilityNotSupportedError:
            # the stored ids cannot be listed (a layer over HTTP, with ids=None): "auto"
            # meshes the labels instead, as it does wherever no meshes are stored
            if prefer == "server" or id_list is not None:
                raise
            path = "local"
    if stored is not None:
        for i, m in stored.items():
            result[int(i)] = m
        details: dict[str, Any] = {}
    else:
        region = vol.bounds
        vs = vol.scale_meta.voxel_size.zyx()
        if block is None and (isinstance(source, np.ndarray)
                              or region.size * vol.dtype.itemsize <= WHOLE_BYTES):
            # a numpy array is meshed as it is, whatever its size (it is in memory already:
            # cutting it into blocks would copy it); a store's volume is read once, into the
            # array that closing meshes (with its layer of background already around it)
            if isinstance(source, np.ndarray):
                result.update(mesh_kernel(source, vs, tuple(region.start), id_list, simp,
                                          close=close))
            else:
                labels, origin = _read_closed(vol, close)
                result.update(mesh_kernel(labels, vs, origin, id_list, simp, close=False))
            details = {"blocks": 1}
        else:
            # the user's block as given; else whole chunks of the source, on its chunk grid
            base = Vec.of(block) if block is not None else block_shape(
                vol.chunks, vol.dtype.itemsize, region.shape, budget=WHOLE_BYTES // 4,
                at_once=blocks_at_once(1, client))
            anchor = region if block is not None else vol.scale_meta.bounds
            blocks = plan_blocks(region, base, anchor)
            if client is not None:
                check_for_cluster(vol.url, "source", "mesh")
            # each segment is stitched (and simplified) here as soon as every block it may
            # reach has arrived, while the workers go on with the others
            stitcher = Stitcher({b.index: n for n, b in enumerate(blocks)}, region, vs,
                                None if simp is None
                                else functools.partial(_simplify, voxel_size=vs, simp=simp))

            def collect(b: Block, got: object) -> None:
                stitcher.add(b.index, b.box, *_unpack(got))

            # zmesh holds the GIL: here the blocks run one by one (workers=1); a client's
            # worker processes run them side by side
            # (a bit per chunk where the scale has few enough: a block reads only its stored
            # chunks)
            stored = background_groups(vol.remote, region, vol.scale,
                                       chunk_blocks(vol.remote, vol.scale, base), anchor.start)
            run_blocks(functools.partial(_block_pieces, vol, region, vs, id_list,
                                         client is not None, close=close, stored=stored),
                       blocks,
                       name="mesh", client=client, workers=1, progress=progress,
                       nbytes=lambda b: b.box.size * vol.dtype.itemsize, on_done=collect)
            result.update(stitcher.finish())
            details = {"blocks": len(blocks), "scheduler": scheduler_name(client)}
    missing = [] if id_list is None else [i for i in id_list if i not in result]
    if missing and strict:
        raise RemoteNotFoundError(f"no voxels (or stored meshes) for ids {missing[:10]}")
    for i in missing:
        result[i] = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32), id=i)
    result.provenance = Provenance("mesh", path, vol.url, {
        **details, "ids": len(result), "simplify": simp, "closed": close and path == "local",
        "seconds": round(time.perf_counter() - t0, 3)})
    return result


def _simplify(m: Mesh, voxel_size: Sequence[float], simp: tuple[float, float | None]) -> Mesh:
    """``m`` simplified as the whole-volume path simplifies (zmesh ``Mesher.get``): the same
    quadric simplifier, on positions in the same units (2 x nm), with the same max_error.

    zmesh's ``Mesher.simplify`` (the one that takes a mesh) measures positions in half voxels
    of each axis and floors max_error divided by the voxel diagonal: on (40, 8, 4) nm voxels
    max_error=40 became 0, and anisotropic voxels weighed the axes differently, so a volume
    meshed block by block (one over 512 MiB) was simplified otherwise than a small one.  Given
    a unit voxel and nm positions it works in 2 x nm, as ``get`` does: the mesh is moved to
    a frame whole nanometres from its corner (zmesh packs positions below 2**20 half units),
    rounded to half nm (exact for whole-nm voxel sizes), and a mesh spanning more than
    0.5 mm is scaled down by powers of 2 (positions to 1 nm, 2 nm, ...; the quadric error,
    squared distances, scaled with them), then moved back."""
    import zmesh

    if not m.num_faces:
        return m
    v = m.vertices.astype(np.float64)
    base = np.floor(v.min(axis=0))
    local = v - base
    k = 1.0
    while 2 * float(local.max()) * k > 2**20 - 2:
        k /= 2
    pos = np.round(local * 2 * k) / 2  # halves: zmesh truncates 2 x position to an integer
    error = simp[1] if simp[1] is not None else 1e9
    # (zmesh divides max_error by the unit voxel's diagonal, sqrt(3), and floors it)
    passed = error * k * k * math.sqrt(3) * (1 + 1e-9)
    out = zmesh.Mesher((1, 1, 1)).simplify(
        zmesh.Mesh(pos.astype(np.float32), m.faces, None, id=m.id),
        reduction_factor=int(simp[0]), max_error=passed)
    vertices = np.asarray(out.vertices, np.float64) / k + base
    return Mesh(vertices.astype(np.float32), np.asarray(out.faces, np.uint32), id=m.id)


def write_meshes(url: str, meshes: Mapping[int, Mesh], *, format: str = "multires",
                 **options: Any) -> None:
    """Store meshes with a precomputed segmentation layer ("multires" Draco or "legacy")."""
    from ..formats.mesh import write_meshes as _write

    _write(url, meshes, format=format, **options)
