"""Neuroglancer precomputed mesh directories: :func:`write_meshes` and :func:`read_meshes`
in the legacy format (a ``<id>:0`` JSON manifest naming fragment files) and the
multi-resolution format (an ``<id>.index`` manifest and an ``<id>`` file of Draco fragments,
or, sharded, the manifest keyed by id in ``<shard>.shard`` files with the fragments just
before it)."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from ...errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
    check_flag,
    refuses_unknown_keywords,
)
from ...geometry import whole, whole_at_least
from ...progress import progress_bar
from ...storage import Directory, join, json_object, length_unit_nm
from ...storage.sharding import ShardedStore, ShardingSpec
from .._common import segment_id
from ..layer import check_dir_name, open_layer, open_segmentation_layer, read_info
from ..precomputed_info import read_layer_info
from ..skeleton.spatial_index import SpatialGrid, spatial_grid, update_spatial_index
from .core import Mesh, _decode_legacy, _legacy_plain
from .multires import (
    _IDENTITY,
    _apply_transform,
    _Manifest,
    _manifest_plain,
    _transform_matrix,
    decode_multires,
    encode_multires,
    manifest_fragment_bytes,
)

LEGACY_MESH_TYPE = "neuroglancer_legacy_mesh"
MULTIRES_MESH_TYPE = "neuroglancer_multilod_draco"
_LEGACY_MANIFEST = re.compile(r"^(\d+):0$")
_MULTIRES_MANIFEST = re.compile(r"^(\d+)\.index$")
#: segments encoded and written together by write_meshes
_WRITE_BATCH = 64


def _legacy_fragment_name(seg: int, mesh: Mesh, resolution: np.ndarray) -> str:
    """``<id>:0:<x0>-<x1>_<y0>-<y1>_<z0>-<z1>:<token>``: the mesh's bounding box in voxels
    (Igneous' convention; Neuroglancer and CloudVolume only follow the manifest) and a token
    new at every write.  A rewrite deletes superseded fragments by name
    (:func:`_replace_legacy_manifests`), so a name must never come back: the same box
    written again (an edit undone) got the old name, and a writer still deleting the old
    file deleted the one the newest manifest names."""
    if mesh.num_vertices:
        lo, hi = mesh.bounds()
        a = np.floor(lo / resolution).astype(np.int64)
        b = np.ceil(hi / resolution).astype(np.int64)
    else:
        a = b = np.zeros(3, np.int64)
    return f"{seg}:0:{a[0]}-{b[0]}_{a[1]}-{b[1]}_{a[2]}-{b[2]}:{secrets.token_hex(6)}"


@refuses_unknown_keywords
def write_meshes(
    url: str | os.PathLike[str],
    meshes: Mapping[int, Mesh],
    *,
    format: Literal["legacy", "multires"] | str = "legacy",
    mesh_dir: str = "mesh",
    lods: int = 1,
    vertex_quantization_bits: int = 16,
    sharded: bool = False,
    progress: bool = False,
) -> None:
    """Write ``meshes`` ({segment id: Mesh}, vertices in nm) into a precomputed layer.

    ``url`` names an existing precomputed segmentation layer (``precomputed://<location>``
    or a bare path, file://, gs:// or s3:// location).  The layer's info gets
    ``"mesh": mesh_dir`` (every other key is kept) and the mesh directory gets its ``info``.

    ``format="legacy"``: per segment a manifest ``<id>:0`` naming one fragment file
    ``<id>:0:<bbox>:<token>`` (a new name at every write).  A rewrite keeps the fragments of
    the manifest it replaces (listed in the manifest under ``voxgate_superseded``, which
    readers ignore) for readers that read that manifest a moment before, and deletes those
    the rewrite before it superseded; the manifest is replaced conditionally (a lock on
    local disks, ``If-Match`` on object storage), so concurrent writers of one segment never
    delete a fragment the newest manifest names.  The trade-off: up to one superseded
    version per segment stays stored until the segment is rewritten or deleted, and a reader
    two rewrites behind still misses a fragment (voxgate's reader then reads the manifest
    again).  ``format="multires"``: per segment the manifest ``<id>.index`` and the
    Draco fragment file ``<id>`` (``neuroglancer_multilod_draco``), with ``lods`` levels of
    detail (each coarser level simplified with zmesh) and vertex positions quantized to
    ``vertex_quantization_bits`` (10 or 16) per octree node.

    ``sharded=True`` (multires only, as in Neuroglancer) stores the meshes in
    ``neuroglancer_uint64_sharded_v1`` shard files instead of two files per segment: the
    manifest under the segment id, its fragments just before it.  A new directory gets a
    spec sized for the number of meshes (hashed ids, about 4096 segments per shard); an
    existing sharded directory keeps its spec.  Each shard is merged and written by one
    task, with a conditional write, so concurrent writers lose nothing.

    Existing meshes of other ids stay; a mesh directory that already holds the other format,
    the other layout (sharded or not) or multires meshes with other settings is refused
    rather than mixed.  A directory voxgate creates stores nm (the identity transform); an
    existing one whose info has another invertible affine ``transform`` (CloudVolume's
    ``to_multi_resolution`` and Igneous store voxel units, scaled by the voxel size) gets
    the vertices moved into its stored frame through the inverse transform before they are
    encoded (multires: before quantization, so the octree is in that frame too), and keeps
    its transform; a transform that cannot be inverted is refused.  A directory whose info
    has a CloudVolume ``spatial_index`` (Igneous') gets the ids' entries in its ``.spatial``
    files replaced by their new boxes, and an unsharded multires one loses the legacy
    ``<id>:0`` files Igneous' forge step left for them (only the index files where the
    replaced meshes were are read, when their manifests tell).  In an unsharded multires
    directory that existed before, each id's fragment file, manifest and leftovers are
    written under the manifest's lock (conditionally on object storage), so concurrent
    writers of an id end with one's whole mesh.  ``progress`` draws a bar
    over the segments written (sharded: over the shards, each encoded and merged in turn, so
    memory holds one shard's meshes).
    """
    if format not in ("legacy", "multires"):
        raise InvalidRequestError(f"format must be 'legacy' or 'multires', got {format!r}")
    sharded = check_flag(sharded, "sharded")
    progress = check_flag(progress, "progress")
    if sharded and format != "multires":
        raise InvalidRequestError(
            "Neuroglancer shards multi-resolution meshes only: pass format='multires' with "
            "sharded=True"
        )
    mesh_dir = check_dir_name(mesh_dir, "mesh_dir")
    n = whole(lods)
    if n is None or not 1 <= n <= 10:
        raise InvalidRequestError(f"lods must be an integer from 1 to 10, got {lods!r}")
    lods = n
    if vertex_quantization_bits not in (10, 16) or not isinstance(
            vertex_quantization_bits, (int, np.integer)) or isinstance(
            vertex_quantization_bits, bool):  # (16.0 is "in (10, 16)")
        raise InvalidRequestError(
            f"vertex_quantization_bits must be 10 or 16, got {vertex_quantization_bits!r}"
        )
    if not isinstance(meshes, Mapping):
        raise InvalidRequestError(
            f"meshes must be a mapping {{segment id: Mesh}}, got {type(meshes).__name__}"
        )
    items: list[tuple[int, Mesh]] = []
    for key, mesh in meshes.items():
        seg = segment_id(key, "segment id")
        if not isinstance(mesh, Mesh):
            raise InvalidRequestError(f"meshes[{seg}] is a {type(mesh).__name__}, not a Mesh")
        if mesh.id is not None and mesh.id != seg:
            raise InvalidRequestError(f"meshes[{seg}] is the mesh of segment {mesh.id}")
        items.append((seg, mesh))

    remote = open_segmentation_layer(url, "meshes")
    directory = Directory(join(remote.location, mesh_dir))
    wanted_type = LEGACY_MESH_TYPE if format == "legacy" else MULTIRES_MESH_TYPE
    info, created = _mesh_dir_info(directory, wanted_type, format, vertex_quantization_bits,
                                   sharded, len(items))
    vs = remote.meta.scales[0].voxel_size
    resolution = np.asarray(vs.xyz(), dtype=np.float64) * _unit_nm(vs.unit)
    # Igneous' spatial index (CloudVolume's ``mesh.spatial_index``), in nm: the written ids'
    # entries are replaced (computed here, before the meshes move into the stored frame)
    grid = _mesh_spatial_grid(remote.location, directory, info, mesh_dir)
    # an existing unsharded multires directory Igneous (or CloudVolume) made, by the keys
    # its info has and voxgate's lacks: the legacy files its forge step left for the ids
    # written go (one more read per id, paid only there)
    igneous = format == "multires" and not created and not sharded and any(
        k in info for k in ("mip", "chunk_size", "spatial_index"))
    parts = ({seg: grid.parts(mesh.vertices, _mesh_edges(mesh)) for seg, mesh in items}
             if grid is not None else {})
    # where the replaced meshes were (from the manifests replaced), so the spatial index
    # update reads only the files there; an id missing here is looked for in every file
    boxes = _OldBoxes(remote.meta, info) if grid is not None else None
    old: dict[int, _Boxes | None] = {}

    # vertices are stored in the directory's frame: nm under the identity transform (every
    # directory voxgate creates), else moved there through the inverse of its transform (as
    # CloudVolume's to_multi_resolution and Igneous store voxel units under a transform that
    # scales by the voxel size), so every reader shows them where the directory's other
    # meshes are.  The level-0 scale is then the finest voxel size measured in that frame.
    inverse = _inverse_transform(info, directory)
    lod_scale = float(resolution.min() if inverse is None else min(
        np.linalg.norm(inverse[:, :3] @ (resolution * np.eye(3)), axis=0)))

    def encode(item: tuple[int, Mesh]) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
        """(fragment data file, manifest file) of one segment."""
        seg, mesh = item
        if format == "legacy":
            frag = _legacy_fragment_name(seg, mesh, resolution)
            return (frag, _to_stored(mesh, inverse).to_precomputed()), (
                f"{seg}:0", json.dumps({"fragments": [frag]}).encode())
        manifest, data = encode_multires(
            _to_stored(mesh, inverse), lods=lods, vertex_quantization_bits=vertex_quantization_bits,
            lod_scale=lod_scale,
        )
        return (str(seg), data), (f"{seg}.index", manifest)

    if sharded:
        store = ShardedStore(directory.location,
                             ShardingSpec.from_json(info["sharding"], directory.path("info")))
        keys = np.fromiter((seg for seg, _ in items), dtype=np.uint64, count=len(items))
        shard_of, _ = store.spec.locate(keys)
        groups = [[items[k] for k in np.flatnonzero(shard_of == sh).tolist()]
                  for sh in np.unique(shard_of).tolist()]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
                progress_bar(progress, len(groups), "mesh shards") as bar:
            for group in groups:
                entries = {seg: (data, manifest)
                           for (seg, _), ((_, data), (_, manifest)) in zip(
                               group, pool.map(encode, group), strict=True)}
                store.update(entries, _fragment_bytes)
                bar.advance()
    # a batch at a time, so memory holds a few encoded meshes, not all of them; numpy and
    # Draco release the GIL for much of the encoding
    workers = 1 if format == "legacy" else min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            progress_bar(progress and not sharded, len(items), "mesh write") as bar:
        for at in range(0, 0 if sharded else len(items), _WRITE_BATCH):
            batch = items[at:at + _WRITE_BATCH]
            encoded = list(pool.map(encode, batch))
            if format == "multires" and not created:
                # each id's fragment file, manifest and Igneous' legacy leftovers under the
                # lock of its manifest (conditionally on object storage)
                named = _replace_multires(directory, [
                    (seg, data[1], manifest[1])
                    for (seg, _), (data, manifest) in zip(batch, encoded, strict=True)], igneous)
                if boxes is not None:
                    old.update({seg: boxes.multires(seg, *got) for seg, got in named.items()})
                bar.advance(len(encoded))
                continue
            # the fragments first, then the manifests that point at them
            directory.put_many([data for data, _ in encoded])
            if format == "legacy" and not created:
                replaced = _replace_legacy_manifests(
                    directory, [(seg, [data[0]]) for (seg, _), (data, _)
                                in zip(batch, encoded, strict=True)])
                if boxes is not None:
                    old.update({seg: boxes.legacy(seg, names)
                                for seg, names in replaced.items()})
            else:
                # (a directory this call made held no manifest to replace: written in one
                # batch, 1.5 s for 2000 ids against 2.0 s one conditional update at a time;
                # a writer racing the first one into it can at worst leave fragments no
                # manifest names, never a manifest naming a missing fragment)
                directory.put_many([manifest for _, manifest in encoded])
            bar.advance(len(encoded))
    if grid is not None:
        # (the files where the replaced meshes were are read for ids that may have entries
        # elsewhere, every file when that is unknown; a new directory has none)
        update_spatial_index(directory, grid, parts, set() if created else set(parts),
                             {seg: b for seg, b in old.items() if b is not None})
    if remote.meta.extra.get("mesh") != mesh_dir:
        remote.update_info({"mesh": mesh_dir})


def _mesh_spatial_grid(location: str, directory: Directory, info: Mapping[str, Any],
                       mesh_dir: str) -> SpatialGrid | None:
    """The grid of the CloudVolume spatial index a mesh directory's info declares
    (``spatial_index``: Igneous' ``<box>.spatial`` files, nm boxes per id), else None."""
    if not info.get("spatial_index"):
        return None
    return spatial_grid(read_layer_info(location, "r")[1], info, mesh_dir,
                        directory.path("info"))


def _mesh_edges(mesh: Mesh) -> np.ndarray:
    """The edges of ``mesh``'s triangles (each triangle's three, as vertex index pairs)."""
    faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    return faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)


def delete_meshes(url: str | os.PathLike[str], ids: Iterable[int], *,
                  mesh_dir: str | None = None) -> None:
    """Remove the meshes of ``ids`` from a precomputed layer's mesh directory (``mesh_dir``
    defaults to the layer info's ``mesh`` key): a legacy manifest and the fragments it names
    (those kept for the readers of the manifest it replaced too), a multi-resolution
    ``<id>.index`` and ``<id>`` (and the legacy ``<id>:0`` files Igneous left beside them),
    or the ids' entries in their shards; and their entries in a CloudVolume spatial index.
    Ids without a mesh are no error.  Proofreading removes the meshes of the ids an edit
    made vanish (a merged-away segment's mesh was served as if it were still there)."""
    wanted = list(dict.fromkeys(segment_id(i, "segment id") for i in ids))
    remote = open_segmentation_layer(url, "meshes")
    name = mesh_dir if mesh_dir is not None else remote.meta.extra.get("mesh")
    if not wanted or not name:
        return
    directory = Directory(join(remote.location, check_dir_name(name, "mesh_dir")))
    info = read_info(directory)
    if info is None:
        return
    # (the spatial index grid checked before anything is deleted)
    grid = _mesh_spatial_grid(remote.location, directory, info, name)
    boxes = _OldBoxes(remote.meta, info) if grid is not None else None
    old: dict[int, _Boxes | None] = {}
    if info.get("sharding"):
        ShardedStore(directory.location,
                     ShardingSpec.from_json(info["sharding"], directory.path("info"))
                     ).remove(wanted, _fragment_bytes)
    elif info.get("@type", LEGACY_MESH_TYPE) == LEGACY_MESH_TYPE:
        fragments = _legacy_manifests(directory, wanted, strict=False)
        # the manifests first: a reader never follows one to a missing fragment
        directory.delete_many([f"{i}:0" for i in fragments])
        directory.delete_many(sorted(n for names in fragments.values() for n in names))
        if boxes is not None:
            old = {seg: boxes.legacy(seg, names) for seg, names in fragments.items()}
    else:
        gone = _delete_multires(directory, wanted)
        if boxes is not None:
            old = {seg: boxes.multires(seg, *got) for seg, got in gone.items()}
    if grid is not None:
        update_spatial_index(directory, grid, {i: {} for i in wanted}, set(wanted),
                             {seg: b for seg, b in old.items() if b is not None})


def _drop_legacy_leftovers(directory: Directory, ids: list[int]) -> dict[int, list[str]]:
    """Remove the legacy meshes Igneous leaves beside the multi-resolution ones of ``ids``
    in an unsharded multi-resolution directory (after voxgate rewrote or deleted those):
    the ``<id>:0`` manifest, then the fragments it names of the id's ``<id>:0:`` form.

    Igneous' forge step writes them, its ``create_unsharded_multires_mesh_tasks`` builds
    ``<id>.index`` and ``<id>`` from every ``<id>:0:...`` fragment file it lists, and its
    ``create_sharded_multires_mesh_from_unsharded_tasks`` takes the ids to convert from the
    ``<id>:0`` and ``<id>.index`` names: left there, a re-run brought back a rewritten id's
    old geometry and a merged-away id's mesh, and a conversion failed on an id with a
    ``<id>:0`` but no ``<id>.index``.  (No reader of the multi-resolution format reads
    them.)  Returns {id: the fragment names its manifest listed} for the ids that had one."""
    fragments = _legacy_manifests(directory, ids, strict=False)
    if not fragments:
        return fragments
    directory.delete_many([f"{i}:0" for i in fragments])
    directory.delete_many(sorted(n for seg, names in fragments.items() for n in names
                                 if n.startswith(f"{seg}:0:")))
    return fragments


def _replace_multires(directory: Directory, new: list[tuple[int, bytes, bytes]],
                      igneous: bool) -> dict[int, tuple[bytes | None, list[str] | None]]:
    """Write the multi-resolution meshes ``new`` ([(id, fragment data, manifest)]) into an
    unsharded directory that existed before, each id's fragment file ``<id>``, manifest
    ``<id>.index`` and (``igneous``) the removal of Igneous' legacy leftovers
    (:func:`_drop_legacy_leftovers`) under the manifest's lock on local disks (a write
    conditional on the manifest read on object storage, the fragment file written again
    when another writer got there first).  Two writers of one id wrote both files without
    one: a writer's fragment file could end under the other's manifest (a mesh that failed
    to decode, or the wrong geometry), and a delete between the two files left a manifest
    whose fragment file was gone.  Returns {id: (the manifest replaced, or None; the
    legacy fragment names removed, None without a legacy manifest)}."""
    files = {seg: (data, manifest) for seg, data, manifest in new}

    def write(seg: int) -> tuple[bytes, list[str] | None]:
        data, manifest = files[seg]
        directory.put_many([(str(seg), data)])
        return manifest, _drop_legacy_leftovers(directory, [seg]).get(seg) if igneous else None

    return _each_locked(directory, list(files), write)


def _delete_multires(directory: Directory, ids: list[int]
                     ) -> dict[int, tuple[bytes | None, list[str] | None]]:
    """Remove the unsharded multi-resolution meshes of ``ids`` (``<id>.index``, ``<id>``
    and Igneous' legacy leftovers), each id under its manifest's lock on local disks, as
    :func:`_replace_multires` writes them, so a delete racing a rewrite of the id ends with
    the one or the other, not a manifest without its fragment file.  (On object storage,
    which has no lock, the fragment file goes first: a rewrite in between at worst leaves
    a fragment file no manifest names.)  Returns what :func:`_replace_multires` does."""
    def drop(seg: int) -> tuple[None, list[str] | None]:
        # (locally the manifest first: a reader never finds it without its fragments)
        names = [f"{seg}.index", str(seg)]
        directory.delete_many(names if directory.local else names[::-1])
        return None, _drop_legacy_leftovers(directory, [seg]).get(seg)

    return _each_locked(directory, ids, drop)


def _each_locked(directory: Directory, ids: list[int],
                 change: Callable[[int], tuple[bytes | None, list[str] | None]]
                 ) -> dict[int, tuple[bytes | None, list[str] | None]]:
    """``change(id)`` (which writes or deletes the id's files and returns its new manifest,
    None to delete it, and the legacy fragment names it removed) for each of ``ids``, under
    the lock of the id's manifest ``<id>.index`` (a write conditional on the manifest read,
    on object storage: ``change`` then runs again when another writer got there first),
    8 ids at once.  Returns {id: (the manifest replaced, or None; the legacy names)}."""
    def one(seg: int) -> tuple[int, tuple[bytes | None, list[str] | None]]:
        seen: list[tuple[bytes | None, list[str] | None]] = []

        def update(raw: bytes | None) -> bytes | None:
            manifest, left = change(seg)
            seen[:] = [(raw, left)]
            return manifest

        directory.update(f"{seg}.index", update, attempts=_MANIFEST_ATTEMPTS,
                         plain=_manifest_plain,
                         advice=f"too many writers rewrite the mesh of segment {seg} at once")
        return seg, seen[0]

    if not ids:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(ids))) as pool:
        return dict(pool.map(one, ids))


#: physical boxes (lo, hi: x, y, z nm) a mesh's spatial index entries can be in
_Boxes = list[tuple[np.ndarray, np.ndarray]]
#: a legacy fragment name with a box in voxels: Igneous' ``<id>:0:<x0>-<x1>_<y0>-<y1>_<z0>-
#: <z1>`` (its forge task's box) and voxgate's (the mesh's box, then ``:<token>``)
_BOX_NAME = re.compile(r"^(\d+):0:(-?\d+)-(-?\d+)_(-?\d+)-(-?\d+)_(-?\d+)-(-?\d+)"
                       r"(:[0-9a-f]+)?$")


class _OldBoxes:
    """Where the spatial index entries of a mesh being replaced or deleted can be, from what
    the replaced files say: a multi-resolution manifest's octree nodes with fragments (in
    the directory's stored frame, moved to nm by its transform), the boxes legacy fragment
    names carry (voxels of the layer's finest scale, voxgate's names, or of the mesh info's
    ``mip``, Igneous': its forge task's box, the box of the ``.spatial`` file the entry
    is in), the octree widened by a voxel past Igneous' forge padding.  None when unknown
    (no manifest, one that cannot be parsed, a fragment name without a box): the index
    update then reads every file of the grid for the id."""

    def __init__(self, meta: Any, info: Mapping[str, Any]) -> None:
        mip = info.get("mip", 0)
        scales = [0] + ([mip] if isinstance(mip, int) and not isinstance(mip, bool)
                        and 0 < mip < len(meta.scales) else [])
        self.voxels = [np.asarray(meta.scales[k].voxel_size.xyz(), np.float64)
                       * _unit_nm(meta.scales[k].voxel_size.unit) for k in scales]
        self.voxel = np.max(self.voxels, axis=0)
        self.transform = info.get("transform")

    def legacy(self, seg: int, names: list[str] | None) -> _Boxes | None:
        if names is None:
            return None
        out: _Boxes = []
        for n in names:
            found = _BOX_NAME.match(n)
            if found is None or int(found.group(1)) != seg:
                return None
            v = np.array([int(g) for g in found.groups()[1:7]], np.float64)
            lo, hi = np.minimum(v[0::2], v[1::2]), np.maximum(v[0::2], v[1::2])
            # Igneous' (no token): its task's box, the file its entry is in, exactly;
            # voxgate's: the mesh's box, a vertex on its upper side counting in the chunk
            # above
            up = self.voxel if found.group(8) else 0.0
            out += [(lo * res, hi * res + up) for res in self.voxels]
        return out

    def multires(self, seg: int, raw: bytes | None, names: list[str] | None
                 ) -> _Boxes | None:
        if raw is None and names is None:
            return None  # (no mesh was there: nothing says where stale entries may be)
        out = self.legacy(seg, names) if names is not None else []
        if out is None or raw is None:
            return out
        try:
            m = _Manifest.from_bytes(raw, f"the manifest of segment {seg}")
        except CorruptChunkError:
            return None
        los, his = [], []
        for lod, (pos, size) in enumerate(zip(m.positions, m.sizes, strict=True)):
            keys = np.asarray(pos, np.float64)[np.asarray(size) > 0]
            if len(keys):
                node = m.chunk_shape * 2**lod
                base = m.grid_origin + m.vertex_offsets[lod]
                los.append(base + node * keys.min(axis=0))
                his.append(base + node * (keys.max(axis=0) + 1))
        if not los:
            return out  # (an empty mesh: no entry)
        lo, hi = np.min(los, axis=0), np.max(his, axis=0)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                            for z in (lo[2], hi[2])])
        if self.transform is not None:
            corners = _apply_transform(corners, self.transform)
        # Igneous' forge meshes a voxel past its task's upper side (its default padding),
        # so an entry can be in the file below: two voxels down, one up (the upper side
        # is excluded)
        return [*out, (corners.min(axis=0) - 2 * self.voxel, corners.max(axis=0) + self.voxel)]


def _legacy_manifests(directory: Directory, ids: list[int], *, strict: bool
                      ) -> dict[int, list[str]]:
    """{id: the fragment names its legacy manifest ``{"fragments": [...]}`` lists} for the ids
    that have a manifest.

    ``strict`` (reading meshes): a manifest of another shape is a CorruptChunkError naming
    it.  Lenient (deleting meshes and the fragments a rewrite leaves behind: what cannot be
    parsed is skipped): such a manifest names no fragment, and of a list only the names that
    stay in the directory are kept (not a non-string, "", ".", "..", nor one with a "/"),
    each once."""
    manifests = directory.get_many([f"{i}:0" for i in ids], plain=lambda d: False)
    out: dict[int, list[str]] = {}
    for seg in ids:
        raw = manifests[f"{seg}:0"]
        if raw is None:
            continue
        try:
            names = json.loads(raw)["fragments"]
            if not isinstance(names, list) or (
                    strict and not all(isinstance(n, str) for n in names)):
                raise TypeError("fragments is not a list of names")
        except (ValueError, KeyError, TypeError) as exc:
            if strict:
                where = directory.path(f"{seg}:0")
                raise CorruptChunkError(f"mesh manifest {where} is not a legacy manifest "
                                        f"({{\"fragments\": [...]}}): {exc}",
                                        chunk=where) from None
            names = []
        if not strict:
            named, superseded = _legacy_names(raw, seg)
            names = list(dict.fromkeys([*named, *superseded]))
        out[seg] = names
    return out


#: conditional writes of one legacy manifest (and reads of a legacy mesh) before giving up
_MANIFEST_ATTEMPTS = 20
#: the key of a legacy manifest that lists the fragments of the manifest it replaced,
#: kept for that manifest's readers (Neuroglancer and CloudVolume read ``fragments`` only)
_SUPERSEDED = "voxgate_superseded"


def _legacy_names(raw: bytes | None, seg: int) -> tuple[list[str], list[str]]:
    """(the fragments, the superseded fragments) of a legacy manifest, read leniently: what
    cannot be parsed names nothing; only names that stay in the directory are kept (not a
    non-string, "", ".", "..", nor one with a "/"), each once; superseded ones only of
    segment ``seg``'s ``<id>:0:`` form."""
    def names(value: Any) -> list[str]:
        if not isinstance(value, list):
            return []
        return list(dict.fromkeys(n for n in value if isinstance(n, str)
                                  and "/" not in n and n not in ("", ".", "..")))

    try:
        manifest = json.loads(raw) if raw is not None else {}
    except ValueError:
        manifest = {}
    if not isinstance(manifest, dict):
        manifest = {}
    return names(manifest.get("fragments")), [
        n for n in names(manifest.get(_SUPERSEDED)) if n.startswith(f"{seg}:0:")]


def _replace_legacy_manifests(directory: Directory, new: list[tuple[int, list[str]]]
                              ) -> dict[int, list[str] | None]:
    """Point the legacy manifests of ``new`` ([(id, its new fragment names)], the fragments
    already written) at their new fragments, and delete what no reader should need.

    Deferred deletion: a rewrite keeps the fragments the replaced manifest named (listed
    under ``voxgate_superseded``) and deletes those the replaced manifest kept, i.e. the ones
    superseded by the rewrite before.  A reader that fetched the manifest just before the
    rewrite (Neuroglancer, CloudVolume, the relay's clients) thus still finds its fragments,
    until the next rewrite of the id.  Each manifest is replaced by ``Directory.update``
    (the manifest's lock on local disks, a conditional write on object storage), so what a
    writer deletes is exactly what the manifest it replaced kept, never a fragment of a
    newer writer (fragment names are never reused: ``_legacy_fragment_name``), and two
    writers at once each keep the other's fragments in a superseded list, none left behind
    for good.  Only names of the segment's ``<id>:0:`` form are kept or deleted (a fragment
    named otherwise may be another writer's, shared)."""
    def replace(seg: int, names: list[str]) -> list[str]:
        doomed: list[str] = []

        def change(raw: bytes | None) -> bytes:
            named, superseded = _legacy_names(raw, seg)
            replaced[seg] = None if raw is None else named
            kept = [n for n in named if n not in names and n.startswith(f"{seg}:0:")]
            doomed[:] = [n for n in superseded if n not in names and n not in named]
            manifest: dict[str, Any] = {"fragments": names}
            if kept:
                manifest[_SUPERSEDED] = kept
            return json.dumps(manifest).encode()

        directory.update(f"{seg}:0", change, attempts=_MANIFEST_ATTEMPTS, plain=lambda d: False,
                         advice=f"too many writers rewrite the mesh of segment {seg} at once")
        return doomed

    replaced: dict[int, list[str] | None] = {}
    if not new:
        return replaced
    with ThreadPoolExecutor(max_workers=min(8, len(new))) as pool:
        futures = [pool.submit(replace, *item) for item in new]
    # what the replaced manifests doomed goes also when one of them failed: those manifests
    # no longer name it, so no later write would delete it
    doomed, failed = set(), None
    for future in futures:
        try:
            doomed.update(future.result())
        except BaseException as exc:  # (raised once the others' leftovers are deleted)
            failed = failed or exc
    directory.delete_many(sorted(doomed))
    if failed is not None:
        raise failed
    return replaced


def _unit_nm(unit: str) -> float:
    factor = length_unit_nm(unit)
    if factor is None:
        raise InvalidRequestError(f"voxel size unit {unit!r} cannot be converted to nm")
    return factor


def _fragment_bytes(key: int, manifest: bytes) -> int:
    return manifest_fragment_bytes(manifest, f"the manifest of segment {key}")


#: reads and conditional writes of a mesh directory's info before giving up
_INFO_ATTEMPTS = 20


def _mesh_dir_info(directory: Directory, wanted_type: str, format: str, bits: int,
                   sharded: bool, count: int) -> tuple[dict[str, Any], bool]:
    """The info of the mesh directory written to, as stored, and whether this call created
    it: an existing one (checked, and given the keys written here), else a new one
    (sharded: a spec for ``count`` meshes), created only if the directory still has none.

    Both go through ``Directory.update`` (under the info's lock on local disks, a
    conditional write on object storage): two writers creating one sharded directory at
    once picked each a spec for its own count, the later info won and the other's shards
    were unreadable under it (other shard names or minishard counts); now the later one
    finds the info created and writes its shards with that spec."""
    where = directory.path("info")
    got: list[tuple[dict[str, Any], bool]] = []
    ours: dict[str, Any] = {"@type": wanted_type}
    if format == "multires":
        ours.update(vertex_quantization_bits=bits, transform=list(_IDENTITY),
                    lod_scale_multiplier=1.0)

    def change(raw: bytes | None) -> bytes | None:
        if raw is None:
            info = dict(ours)
            if sharded:
                info["sharding"] = ShardingSpec.for_count(count).to_json()
            got[:] = [(info, True)]
            return json.dumps(info, indent=2).encode()
        existing = json_object(raw, where)
        info = _merged_info(directory, existing, ours, wanted_type, format, bits, sharded)
        got[:] = [(info, False)]
        return None if info == existing else json.dumps(info, indent=2).encode()

    directory.update("info", change, attempts=_INFO_ATTEMPTS, plain=lambda d: False,
                     advice="too many writers create or change this mesh directory's info "
                     "at once")
    return got[0]


def check_mesh_dir(directory: Directory, existing: dict[str, Any], format: str, bits: int,
                   sharded: bool) -> None:
    """Raise what :func:`write_meshes` (``format``, ``vertex_quantization_bits=bits``,
    ``sharded``) raises adding to the existing mesh ``directory`` whose info is ``existing``
    (InvalidRequestError: another type or layout, a transform that cannot be inverted),
    before anything is written.  (The edits' ``remesh=`` checks so before editing.)"""
    wanted = MULTIRES_MESH_TYPE if format == "multires" else LEGACY_MESH_TYPE
    _merged_info(directory, existing, {}, wanted, format, bits, sharded)


def _merged_info(directory: Directory, existing: dict[str, Any], ours: dict[str, Any],
                 wanted_type: str, format: str, bits: int, sharded: bool) -> dict[str, Any]:
    """An existing mesh directory's info with the keys written here, after checking that
    the meshes written here may join it."""
    have = existing.get("@type", LEGACY_MESH_TYPE)
    if bool(existing.get("sharding")) != sharded:
        layout = "sharded" if existing.get("sharding") else "unsharded"
        raise InvalidRequestError(
            f"{directory.location} holds {layout} meshes; pass sharded="
            f"{not sharded} to add to it, or choose another mesh_dir"
        )
    if sharded:
        ShardingSpec.from_json(existing["sharding"], directory.path("info"))
    if have != wanted_type:
        other = "multires" if have == MULTIRES_MESH_TYPE else "legacy"
        raise InvalidRequestError(
            f"{directory.location} already holds {have} meshes; writing {format} meshes there "
            f"would leave a directory no reader understands. Write format={other!r} or choose "
            "another mesh_dir"
        )
    _inverse_transform(existing, directory)
    if format == "multires" and int(existing.get("vertex_quantization_bits", bits)) != bits:
        raise InvalidRequestError(
            f"{directory.location} stores meshes with vertex_quantization_bits="
            f"{existing['vertex_quantization_bits']}; pass that value or choose another mesh_dir"
        )
    # (the directory's transform and lod_scale_multiplier stay: its meshes are stored so)
    return {**existing, **ours, **{k: existing[k] for k in ("transform", "lod_scale_multiplier")
                                   if k in existing}}


def _inverse_transform(info: Mapping[str, Any], directory: Directory) -> np.ndarray | None:
    """The inverse (3x4) of a mesh directory info's ``transform`` (stored coordinates to nm),
    which moves nm into the directory's stored frame; None for the identity (or none).
    A transform that is not 12 finite numbers or cannot be inverted is an
    InvalidRequestError: no stored coordinates would show a mesh where it is."""
    transform = info.get("transform", _IDENTITY)
    where = f"{directory.path('info')} transform"
    mat = _transform_matrix(transform, where)
    if mat.reshape(-1).tolist() == _IDENTITY:
        return None
    square = np.vstack([mat, [0.0, 0.0, 0.0, 1.0]])
    try:
        if not np.isfinite(square).all():
            raise np.linalg.LinAlgError
        # (singular but for rounding, too: an inverse of entries ~1e13 moves vertices far
        # from where the transform then puts them)
        # (of the linear part: a translation of a large volume's offset is no rounding)
        if np.linalg.cond(square[:3, :3]) > 1e8:
            raise np.linalg.LinAlgError
        inverse = np.linalg.inv(square)
        if not np.isfinite(inverse).all():
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        raise InvalidRequestError(
            f"{directory.location} stores meshes under the transform {transform}, which cannot "
            "be inverted, so voxgate cannot move nm vertices into its stored frame: choose "
            "another mesh_dir"
        ) from None
    return inverse[:3]


def _to_stored(mesh: Mesh, inverse: np.ndarray | None) -> Mesh:
    """``mesh`` (nm) in the stored frame of a mesh directory whose transform ``inverse``
    undoes (unchanged for the identity)."""
    if inverse is None or not mesh.num_vertices:
        return mesh
    stored = mesh.vertices.astype(np.float64) @ inverse[:, :3].T + inverse[:, 3]
    return Mesh(stored, mesh.faces, mesh.id)


def read_meshes(
    url: str | os.PathLike[str],
    ids: Iterable[int] | int | None = None,
    *,
    mesh_dir: str | None = None,
    lod: int = 0,
    strict: bool = False,
) -> dict[int, Mesh]:
    """Read the meshes of ``ids`` (every stored id when None) from a precomputed layer.

    Reads legacy meshes (all fragments of a segment concatenated) and multi-resolution
    Draco meshes (level of detail ``lod``, dequantized), as voxgate, CloudVolume and Igneous
    write them, applying the mesh info's transform, so vertices are in nm.  ``mesh_dir``
    defaults to the layer info's ``mesh`` key (else ``"mesh"``).  An id without a mesh is
    left out of the result, or raises RemoteNotFoundError when ``strict``.
    """
    check_flag(strict, "strict")
    remote = open_layer(url, "r")
    name = mesh_dir if mesh_dir is not None else remote.meta.extra.get("mesh") or "mesh"
    name = check_dir_name(name, "mesh_dir")
    directory = Directory(join(remote.location, name))
    info = read_info(directory) or {"@type": LEGACY_MESH_TYPE}
    kind = info.get("@type", LEGACY_MESH_TYPE)
    if kind not in (LEGACY_MESH_TYPE, MULTIRES_MESH_TYPE):
        raise CapabilityNotSupportedError(
            f"{directory.location} holds {kind!r} meshes; voxgate reads {LEGACY_MESH_TYPE} and "
            f"{MULTIRES_MESH_TYPE}"
        )
    sharding = info.get("sharding")
    if sharding and kind != MULTIRES_MESH_TYPE:
        raise CorruptChunkError(
            f"{directory.path('info')} declares sharded {kind} meshes; Neuroglancer shards "
            f"{MULTIRES_MESH_TYPE} meshes only", chunk=directory.path("info"),
        )
    store = (ShardedStore(directory.location,
                          ShardingSpec.from_json(sharding, directory.path("info")))
             if sharding else None)
    transform = info.get("transform")
    if transform is not None:
        _transform_matrix(transform, f"{directory.path('info')} transform")
    lod = whole_at_least(lod, 0, "lod")
    pattern = _LEGACY_MANIFEST if kind == LEGACY_MESH_TYPE else _MULTIRES_MANIFEST
    if ids is None and store is not None:
        wanted = store.keys()
    elif ids is None:
        try:
            names = directory.list()
        except RemoteNotFoundError:
            names = []
        wanted = sorted(int(m.group(1)) for n in names if (m := pattern.match(n)))
    else:
        seq = [ids] if isinstance(ids, (int, np.integer)) else list(ids)
        wanted = list(dict.fromkeys(segment_id(i, "segment id") for i in seq))
    if kind == LEGACY_MESH_TYPE:
        out = _read_legacy(directory, wanted, transform)
    else:
        bits = int(info.get("vertex_quantization_bits", 0))
        if bits not in (10, 16):
            raise CorruptChunkError(
                f"{directory.path('info')} has vertex_quantization_bits={bits}; it must be 10 "
                "or 16", chunk=directory.path("info"),
            )
        out = (_read_sharded(store, wanted, transform, bits, lod) if store is not None
               else _read_multires(directory, wanted, transform, bits, lod))
    if strict:
        missing = [i for i in wanted if i not in out]
        if missing:
            raise RemoteNotFoundError(
                f"{directory.location} has no mesh for segment(s) "
                f"{', '.join(map(str, missing[:20]))}{' ...' if len(missing) > 20 else ''}"
            )
    return out


def _read_legacy(directory: Directory, ids: list[int], transform: Sequence[float] | None
                 ) -> dict[int, Mesh]:
    fragments = _legacy_manifests(directory, ids, strict=True)
    blobs = directory.get_many([n for names in fragments.values() for n in names],
                               plain=_legacy_plain)
    for _ in range(_MANIFEST_ATTEMPTS):
        # a fragment missing because a rewrite replaced the manifest after it was read (and
        # the rewrite after that deleted the fragment): read those manifests again
        stale = [seg for seg, names in fragments.items() if any(blobs[n] is None for n in names)]
        again = _legacy_manifests(directory, stale, strict=True) if stale else {}
        if all(again.get(seg) == fragments[seg] for seg in stale):
            break  # (a manifest that still names a missing fragment is an error below)
        for seg in stale:
            if seg in again:
                fragments[seg] = again[seg]
            else:
                del fragments[seg]  # deleted meanwhile: no mesh
        blobs.update(directory.get_many([n for names in again.values() for n in names
                                         if n not in blobs or blobs[n] is None],
                                        plain=_legacy_plain))
    out: dict[int, Mesh] = {}
    for seg, names in fragments.items():
        parts = []
        for n in names:
            data = blobs[n]
            if data is None:
                raise RemoteNotFoundError(
                    f"mesh manifest {directory.path(f'{seg}:0')} names fragment "
                    f"{directory.path(n)}, which does not exist"
                )
            parts.append(_decode_legacy(data, seg, directory.path(n)))
        mesh = Mesh.concatenate(parts, id=seg)
        if transform is not None and list(transform) != _IDENTITY:
            mesh = Mesh(_apply_transform(mesh.vertices.astype(np.float64), transform),
                        mesh.faces, seg)
        out[seg] = mesh
    return out


def _read_multires(directory: Directory, ids: list[int], transform: Sequence[float] | None,
                   bits: int, lod: int) -> dict[int, Mesh]:
    manifests = directory.get_many([f"{i}.index" for i in ids], plain=_manifest_plain)
    present = [i for i in ids if manifests[f"{i}.index"] is not None]
    # Draco data starts with "DRACO", never with the gzip magic
    datas = directory.get_many([str(i) for i in present], plain=lambda d: False)
    out: dict[int, Mesh] = {}
    for seg in present:
        data = datas[str(seg)]
        if data is None:
            raise RemoteNotFoundError(
                f"{directory.path(f'{seg}.index')} exists but its fragment file "
                f"{directory.path(str(seg))} does not"
            )
        out[seg] = decode_multires(
            manifests[f"{seg}.index"] or b"", data, lod=lod, vertex_quantization_bits=bits,
            transform=transform, id=seg, name=directory.path(str(seg)),
        )
    return out


def _read_sharded(store: ShardedStore, ids: list[int], transform: Sequence[float] | None,
                  bits: int, lod: int) -> dict[int, Mesh]:
    got = store.get_many(ids, _fragment_bytes)
    out: dict[int, Mesh] = {}
    for seg in ids:
        entry = got.get(seg)
        if entry is None:
            continue
        data, manifest = entry
        out[seg] = decode_multires(
            manifest, data, lod=lod, vertex_quantization_bits=bits, transform=transform,
            id=seg, name=f"{store.location} (segment {seg})",
        )
    return out
