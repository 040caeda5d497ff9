"""mesh: triangle meshes of segments, from the store's own meshes or by marching cubes (zmesh).

Vertices are float32 nanometres in (x, y, z), as every mesh format expects, in the dataset's
world frame: (voxel offset + index + 0.5) * voxel size, anisotropic voxels included (the +0.5
puts surfaces on voxel faces, where Neuroglancer draws the segmentation).  Every requested id
comes back (an id with no voxels gives an empty mesh, or an error with ``strict=True``).

Volumes larger than one block are meshed block by block: each block is read with one extra
voxel on its upper faces, so marching cubes sees every pair of neighbouring voxels exactly
once, and the pieces of each segment are stitched by merging the vertices they share on
block faces.  The result has no cracks and no duplicate faces at block borders, and equals the
whole-volume mesh.  Simplification, when asked for, runs on the stitched mesh.  Blocks run on
a ``dask.distributed`` Client when one is given (zmesh holds the GIL, so threads would not
help), otherwise one after another.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidRequestError, RemoteNotFoundError
from ..formats.mesh import Mesh
from ..geometry import Box, Vec, grow_block
from ..remotes.base import Capability
from ._common import Prefer, Provenance, as_volume, block_boxes, choose_path, progress_bar

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
    if isinstance(simplify, (int, float)) and not isinstance(simplify, bool):
        factor, error = float(simplify), None
    elif isinstance(simplify, Sequence) and len(simplify) == 2:
        factor, error = float(simplify[0]), (None if simplify[1] is None else float(simplify[1]))
    elif isinstance(simplify, Mapping):
        factor = float(simplify.get("reduction_factor", 0))
        error = simplify.get("max_error")
        error = None if error is None else float(error)
    else:
        raise InvalidRequestError(
            "simplify is None, a reduction factor, or (reduction_factor, max_error_nm), got "
            f"{simplify!r}")
    if factor < 1:
        raise InvalidRequestError(f"the reduction factor must be >= 1, got {factor}")
    return factor, error


def mesh_kernel(labels: np.ndarray, voxel_size: Sequence[float], origin: Sequence[int],
                ids: Iterable[int] | None = None,
                simplify: tuple[float, float | None] | None = None) -> dict[int, Mesh]:
    """Marching cubes on a C-order (z, y, x) label array; ``origin`` is its first voxel's
    dataset coordinate (z, y, x), ``voxel_size`` (z, y, x) in nm."""
    import zmesh

    vz, vy, vx = (float(v) for v in voxel_size)
    mesher = zmesh.Mesher((vx, vy, vz))
    mesher.mesh(np.ascontiguousarray(labels).T)  # Fortran-order (x, y, z): the same memory
    shift = np.array([origin[2] * vx, origin[1] * vy, origin[0] * vz], dtype=np.float32)
    present_ids = [int(i) for i in mesher.ids()]
    wanted = present_ids if ids is None else [int(i) for i in ids]
    present = set(present_ids)
    out: dict[int, Mesh] = {}
    for i in wanted:
        if i not in present:
            continue
        kwargs: dict[str, Any] = {"normals": False, "voxel_centered": True}
        if simplify is not None:
            kwargs["reduction_factor"] = simplify[0]
            kwargs["max_error"] = simplify[1] if simplify[1] is not None else 1e9
        m = mesher.get(i, **kwargs)
        mesher.erase(i)
        vertices = np.asarray(m.vertices, dtype=np.float32)
        vertices += shift  # zmesh hands over a fresh array: shifted in place, no copy
        out[i] = Mesh(vertices, np.asarray(m.faces, dtype=np.uint32).reshape(-1, 3), id=i)
    return out


def _block_pieces(vol_url_or_remote: Any, scale: int, block: Box, region: Box,
                  voxel_size: Sequence[float], ids: list[int] | None) -> dict[int, Mesh]:
    """One block's pieces: the block plus one voxel on its upper faces (clipped)."""
    remote = vol_url_or_remote
    if isinstance(remote, str):
        from ..api import open_remote

        remote = open_remote(remote)
    ext = Box(block.start, block.stop + _ONE).intersect(region)
    labels = remote.read(ext, scale)
    return mesh_kernel(labels, voxel_size, tuple(ext.start), ids)


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
) -> MeshResult:
    """Meshes of ``ids`` (all ids present when None) in ``source``, as ``{id: Mesh}``.

    ``source``: a segmentation Volume or URL (or a view of one: only that region is meshed),
    or a 3-D numpy array (with ``voxel_size`` (z, y, x) nm).  ``simplify``: None (no
    simplification), a reduction factor, or (reduction_factor, max_error_nm).  ``prefer``:
    "server" uses meshes the store already holds (precomputed mesh directory, DVID
    ``_meshes`` keyvalue; with ids=None, every stored mesh), "local" runs marching cubes,
    "auto" the first when offered.
    """
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
    id_list = None if ids is None else [int(i) for i in ids]
    remote = vol.remote
    path = choose_path(prefer, remote, Capability.SERVER_MESH, "mesh")
    result = MeshResult()
    if path == "server":
        stored = remote.meshes(id_list)  # type: ignore[attr-defined]
        for i, m in stored.items():
            result[int(i)] = m
        details: dict[str, Any] = {}
    else:
        region = vol.bounds
        vs = vol.scale_meta.voxel_size.zyx()
        if block is None and region.size * vol.dtype.itemsize <= WHOLE_BYTES:
            # a numpy array is meshed as it is; a store's volume is read once
            labels = source if isinstance(source, np.ndarray) else vol.read()
            result.update(mesh_kernel(labels, vs, tuple(region.start), id_list, simp))
            details = {"blocks": 1}
        else:
            base = Vec.of(block) if block is not None else grow_block(
                vol.chunks, vol.dtype.itemsize, region.shape, WHOLE_BYTES // 4)
            blocks = list(block_boxes(region, base))
            pieces: dict[int, list[Mesh]] = {}
            with progress_bar(progress, len(blocks), "mesh") as bar:
                if client is not None:
                    if vol.url.startswith("mem://"):
                        raise InvalidRequestError(
                            f"{vol.url} lives in this process only; a dask.distributed cluster "
                            "needs a volume its workers can open by URL")
                    from distributed import as_completed

                    futs = client.map(_block_pieces, [vol.url] * len(blocks),
                                      [vol.scale] * len(blocks), blocks,
                                      [region] * len(blocks), [vs] * len(blocks),
                                      [id_list] * len(blocks), pure=False, retries=2)
                    for fut in as_completed(futs):
                        for i, m in fut.result().items():
                            pieces.setdefault(i, []).append(m)
                        bar.advance()
                else:
                    for bx in blocks:
                        for i, m in _block_pieces(remote, vol.scale, bx, region, vs,
                                                  id_list).items():
                            pieces.setdefault(i, []).append(m)
                        bar.advance()
            for i, parts in pieces.items():
                stitched = parts[0] if len(parts) == 1 else _stitch(parts, vs, i)
                if simp is not None:
                    stitched = _simplify(stitched, vs, simp)
                result[i] = stitched
            details = {"blocks": len(blocks)}
    missing = [] if id_list is None else [i for i in id_list if i not in result]
    if missing and strict:
        raise RemoteNotFoundError(f"no voxels (or stored meshes) for ids {missing[:10]}")
    for i in missing:
        result[i] = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32), id=i)
    result.provenance = Provenance("mesh", path, vol.url, {
        **details, "ids": len(result), "simplify": simp,
        "seconds": round(time.perf_counter() - t0, 3)})
    return result


def _stitch(parts: list[Mesh], voxel_size: Sequence[float], ident: int) -> Mesh:
    """Join one segment's block pieces, merging the vertices they share on block faces.

    Marching cubes puts every vertex on a multiple of half a voxel, so positions quantized to
    half voxels are exact integers: one integer key per vertex, and a 1-D integer unique
    (much faster than comparing float rows) finds the shared ones.
    """
    vertices = np.concatenate([p.vertices for p in parts])
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    faces = np.concatenate([p.faces + np.uint32(o) for p, o in zip(parts, offsets, strict=True)])
    half = np.array([voxel_size[2], voxel_size[1], voxel_size[0]], dtype=np.float64) / 2
    q = np.rint(vertices / half).astype(np.int64)
    q -= q.min(axis=0)
    span = q.max(axis=0) + 1
    keys = (q[:, 2] * span[1] + q[:, 1]) * span[0] + q[:, 0]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    new_faces = inverse.astype(np.uint32)[faces]
    # pieces share vertices, never triangles (each cube belongs to one block); drop any face
    # that merging made degenerate, should rounding ever collapse one
    ok = ((new_faces[:, 0] != new_faces[:, 1]) & (new_faces[:, 1] != new_faces[:, 2])
          & (new_faces[:, 0] != new_faces[:, 2]))
    return Mesh(vertices[first], new_faces[ok], id=ident)


def _simplify(m: Mesh, voxel_size: Sequence[float], simp: tuple[float, float | None]) -> Mesh:
    import zmesh

    vz, vy, vx = voxel_size
    mesher = zmesh.Mesher((vx, vy, vz))
    zm = zmesh.Mesh(m.vertices, m.faces, None, id=m.id)
    out = mesher.simplify(zm, reduction_factor=simp[0],
                          max_error=simp[1] if simp[1] is not None else 1e9)
    return Mesh(np.asarray(out.vertices, np.float32), np.asarray(out.faces, np.uint32), id=m.id)


def write_meshes(url: str, meshes: Mapping[int, Mesh], *, format: str = "multires",
                 **options: Any) -> None:
    """Store meshes with a precomputed segmentation layer ("multires" Draco or "legacy")."""
    from ..formats.mesh import write_meshes as _write

    _write(url, meshes, format=format, **options)
