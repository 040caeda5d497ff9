"""The skeleton directories of Neuroglancer precomputed segmentation layers:
:func:`write_skeletons` and :func:`read_skeletons`, where Neuroglancer and CloudVolume read
them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ...errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
    check_flag,
)
from ...storage import Directory, join, json_object
from ...storage.sharding import ShardedStore, ShardingSpec
from .._common import segment_id
from ..layer import check_dir_name, open_layer, open_segmentation_layer, read_info
from ..precomputed_info import read_layer_info
from .core import (
    _ID_NAME,
    _IDENTITY,
    DIRECTORY_VERTEX_ATTRIBUTES,
    SKELETON_TYPE,
    Skeleton,
    _attribute_list,
)
from .spatial_index import spatial_grid, update_spatial_index

__all__ = ["read_skeletons", "write_skeletons"]


# -- skeleton directories ------------------------------------------------------------------------
def _check_skeleton_info(info: Mapping[str, Any], where: str) -> np.ndarray:
    """The info's transform as a 3x4 matrix, after checking the info is one voxgate handles."""
    kind = info.get("@type", SKELETON_TYPE)
    if kind != SKELETON_TYPE:
        raise CapabilityNotSupportedError(f"{where} describes {kind!r}, not {SKELETON_TYPE}")
    if info.get("sharding"):
        ShardingSpec.from_json(info["sharding"], where)
    transform = info.get("transform", _IDENTITY)
    try:
        return np.asarray(transform, dtype=np.float64).reshape(3, 4)
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"{where}: transform must be 12 numbers (3x4 row-major), got {transform!r}"
        ) from None


def check_skeleton_dir(info: Mapping[str, Any], where: str) -> None:
    """Raise what :func:`write_skeletons` raises adding to an existing skeleton directory
    whose info (at ``where``) is ``info``, before anything is written: another ``@type``
    (CapabilityNotSupportedError), a bad sharding spec, vertex attribute list or transform
    (InvalidRequestError).  (The edits' ``remesh=`` checks so before editing.)"""
    mat = _check_skeleton_info(info, where)
    _attribute_list(info.get("vertex_attributes", []), f"{where} vertex_attributes")
    if mat.reshape(-1).tolist() != _IDENTITY:
        try:
            np.linalg.inv(np.vstack([mat, [0.0, 0.0, 0.0, 1.0]]))
        except np.linalg.LinAlgError:
            raise InvalidRequestError(
                f"{where} has a transform that cannot be inverted") from None


def write_skeletons(
    url: str | os.PathLike[str],
    skeletons: Mapping[int, Skeleton],
    *,
    skel_dir: str | None = None,
    sharded: bool = False,
) -> None:
    """Write ``skeletons`` ({segment id: Skeleton}, vertices in nm) into a precomputed layer.

    ``url`` names an existing precomputed segmentation layer.  ``skel_dir`` defaults, as in
    :func:`read_skeletons`, to the directory the layer info's ``skeletons`` key names (else
    ``"skeletons"``), so skeletons added to a layer go beside the ones it has (Igneous names
    its directory ``skeletons_mip_<n>``).  The layer's info gets ``"skeletons": skel_dir``
    (every other key kept) and the directory an info with
    ``@type neuroglancer_skeletons``, the identity transform and the vertex attributes radius
    and vertex_types, both float32 (Neuroglancer draws no 8-bit attributes).  Into a
    directory that already has an info, its vertex attributes and transform are used
    (vertices are moved into its stored space) and its other keys kept.  One file per
    segment, ``<skel_dir>/<id>``, or with ``sharded=True`` ``neuroglancer_uint64_sharded_v1``
    shard files keyed by segment id (written through
    tensorstore's sharded kvstore; a new directory gets a spec sized for the number of
    skeletons, an existing sharded one keeps its own).  Existing skeletons of other ids stay;
    a directory of the other layout is refused rather than mixed.  An existing info without
    ``@type`` gets it.  A directory whose info has a CloudVolume ``spatial_index`` (Igneous
    writes one) gets the new skeletons entered in its ``.spatial`` files (see
    :mod:`.spatial_index`), so CloudVolume's ``skeleton.spatial_index`` queries find them;
    replacing a skeleton that was there reads every index file to drop its old entries.  An
    SQL copy of the index (CloudVolume's ``spatial_index_db``) is not updated.
    """
    sharded = check_flag(sharded, "sharded")
    if skel_dir is not None:
        skel_dir = check_dir_name(skel_dir, "skel_dir")
    if not isinstance(skeletons, Mapping):
        raise InvalidRequestError(
            f"skeletons must be a mapping {{segment id: Skeleton}}, got {type(skeletons).__name__}"
        )
    items: list[tuple[int, Skeleton]] = []
    for key, skel in skeletons.items():
        seg = segment_id(key, "segment id")
        if not isinstance(skel, Skeleton):
            raise InvalidRequestError(
                f"skeletons[{seg}] is a {type(skel).__name__}, not a Skeleton (convert kimimaro "
                "output with Skeleton.from_kimimaro)"
            )
        if skel.id is not None and skel.id != seg:
            raise InvalidRequestError(f"skeletons[{seg}] is the skeleton of segment {skel.id}")
        items.append((seg, skel))
    remote = open_segmentation_layer(url, "skeletons")
    if skel_dir is None:
        skel_dir = check_dir_name(remote.meta.extra.get("skeletons") or "skeletons",
                                  f"the skeletons key of {remote.url}'s info")
    directory = Directory(join(remote.location, skel_dir))
    info = _directory_info(directory, sharded, len(items))
    mat = _check_skeleton_info(info, directory.path("info"))
    attributes = info.get("vertex_attributes", [])
    inverse = None
    if mat.reshape(-1).tolist() != _IDENTITY:
        square = np.vstack([mat, [0.0, 0.0, 0.0, 1.0]])
        inverse = np.linalg.inv(square)[:3]
    grid = (spatial_grid(read_layer_info(remote.location, "r")[1], info, skel_dir,
                         directory.path("info")) if info.get("spatial_index") else None)
    parts = {}
    replaced: set[int] = set()
    if grid is not None:  # (in nm, before the move into the stored space)
        parts = {seg: grid.parts(skel.vertices, skel.edges) for seg, skel in items}
        replaced = _stored_ids(directory, info, [seg for seg, _ in items])
    files = []
    for seg, skel in items:
        if inverse is not None:
            stored = skel.vertices.astype(np.float64) @ inverse[:, :3].T + inverse[:, 3]
            skel = Skeleton(stored, skel.edges, skel.radius, skel.vertex_types, seg,
                            skel.attributes)
        files.append((str(seg), skel.to_precomputed(attributes)))
    if sharded:
        store = ShardedStore(directory.location,
                             ShardingSpec.from_json(info["sharding"], directory.path("info")))
        store.put_values({int(name): data for name, data in files})
    else:
        directory.put_many(files)
    if grid is not None:
        update_spatial_index(directory, grid, parts, replaced)
    if remote.meta.extra.get("skeletons") != skel_dir:
        remote.update_info({"skeletons": skel_dir})


#: reads and conditional writes of a skeleton directory's info before giving up
_INFO_ATTEMPTS = 20


def _directory_info(directory: Directory, sharded: bool, count: int) -> dict[str, Any]:
    """The info of the skeleton directory written to, as stored: an existing one (checked,
    and given ``@type`` if it lacks it), else a new one (sharded: a spec for ``count``
    skeletons), created only if the directory still has none.

    Both go through ``Directory.update`` (under the info's lock on local disks, a
    conditional write on object storage): two writers creating one sharded directory at
    once picked each a spec for its own count, the later info won and the other's shards
    were unreadable under it (written under other shard names or minishard counts); now
    the later one finds the info created and writes its shards with that spec."""
    where = directory.path("info")
    got: list[dict[str, Any]] = []

    def change(raw: bytes | None) -> bytes | None:
        if raw is None:
            info: dict[str, Any] = {
                "@type": SKELETON_TYPE,
                "transform": list(_IDENTITY),
                "vertex_attributes": [dict(a) for a in DIRECTORY_VERTEX_ATTRIBUTES],
            }
            if sharded:
                info["sharding"] = ShardingSpec.for_count(count).to_json()
            got[:] = [info]
            return json.dumps(info, indent=2).encode()
        info = json_object(raw, where)
        if bool(info.get("sharding")) != sharded:
            layout = "sharded" if info.get("sharding") else "unsharded"
            raise InvalidRequestError(
                f"{directory.location} holds {layout} skeletons; pass sharded={not sharded} "
                "to add to it, or choose another skel_dir"
            )
        check_skeleton_dir(info, where)
        if "@type" in info:
            got[:] = [info]
            return None
        info = {"@type": SKELETON_TYPE, **info}  # CloudVolume and Neuroglancer look for it
        got[:] = [info]
        return json.dumps(info, indent=2).encode()

    directory.update("info", change, attempts=_INFO_ATTEMPTS, plain=lambda d: False,
                     advice="too many writers create or change this skeleton directory's "
                     "info at once")
    return got[0]


def delete_skeletons(url: str | os.PathLike[str], ids: Iterable[int], *,
                     skel_dir: str | None = None) -> None:
    """Remove the skeletons of ``ids`` from a precomputed layer's skeleton directory
    (``skel_dir`` defaults to the layer info's ``skeletons`` key): the ``<id>`` files or the
    ids' entries in their shards, and their entries in a CloudVolume spatial index.  Ids
    without a skeleton are no error."""
    wanted = list(dict.fromkeys(segment_id(i, "segment id") for i in ids))
    remote = open_segmentation_layer(url, "skeletons")
    name = skel_dir if skel_dir is not None else remote.meta.extra.get("skeletons")
    if not wanted or not name:
        return
    name = check_dir_name(name, "skel_dir")
    directory = Directory(join(remote.location, name))
    info = read_info(directory)
    if info is None:
        return
    _check_skeleton_info(info, directory.path("info"))
    if info.get("sharding"):
        ShardedStore(directory.location,
                     ShardingSpec.from_json(info["sharding"], directory.path("info"))
                     ).remove(wanted)
    else:
        directory.delete_many([str(i) for i in wanted])
    if info.get("spatial_index"):
        grid = spatial_grid(read_layer_info(remote.location, "r")[1], info, name,
                            directory.path("info"))
        if grid is not None:
            update_spatial_index(directory, grid, {i: {} for i in wanted}, set(wanted))


def _stored_ids(directory: Directory, info: Mapping[str, Any], ids: list[int]) -> set[int]:
    """The ``ids`` that have a skeleton in ``directory`` already."""
    if not ids:
        return set()
    if info.get("sharding"):
        store = ShardedStore(directory.location,
                             ShardingSpec.from_json(info["sharding"], directory.path("info")))
        return {k for k, v in store.get_values(ids).items() if v is not None}
    if directory.local:
        return {i for i in ids if directory.exists(str(i))}
    got = directory.get_many([str(i) for i in ids], plain=lambda data: True)
    return {i for i in ids if got[str(i)] is not None}


def read_skeletons(
    url: str | os.PathLike[str],
    ids: Iterable[int] | int | None = None,
    *,
    skel_dir: str | None = None,
    strict: bool = False,
) -> dict[int, Skeleton]:
    """Read the skeletons of ``ids`` (every stored id when None) from a precomputed layer.

    ``skel_dir`` defaults to the layer info's ``skeletons`` key (else ``"skeletons"``).
    Attributes follow the directory info's ``vertex_attributes``; vertices are moved through
    its transform into nm.  An id without a skeleton is left out of the result, or raises
    RemoteNotFoundError when ``strict``.
    """
    check_flag(strict, "strict")
    remote = open_layer(url, "r")
    name = skel_dir if skel_dir is not None else remote.meta.extra.get("skeletons") or "skeletons"
    directory = Directory(join(remote.location, check_dir_name(name, "skel_dir")))
    info = read_info(directory)
    if info is None:
        if strict:
            raise RemoteNotFoundError(f"{directory.location} has no skeleton info")
        return {}
    where = directory.path("info")
    mat = _check_skeleton_info(info, where)
    attributes = info.get("vertex_attributes", [])
    _attribute_list(attributes, f"{where} vertex_attributes")
    store = (ShardedStore(directory.location, ShardingSpec.from_json(info["sharding"], where))
             if info.get("sharding") else None)
    if ids is None and store is not None:
        wanted = store.keys()
    elif ids is None:
        try:
            wanted = sorted(int(n) for n in directory.list() if _ID_NAME.match(n))
        except RemoteNotFoundError:
            wanted = []
    else:
        seq = [ids] if isinstance(ids, (int, np.integer)) else list(ids)
        wanted = list(dict.fromkeys(segment_id(i, "segment id") for i in seq))

    def plain(data: bytes) -> bool:
        try:
            Skeleton.from_precomputed(data, attributes)
        except CorruptChunkError:
            return False
        return True

    if store is not None:
        blobs = {str(k): v for k, v in store.get_values(wanted).items()}
    else:
        blobs = directory.get_many([str(i) for i in wanted], plain=plain)
    out: dict[int, Skeleton] = {}
    identity = mat.reshape(-1).tolist() == _IDENTITY
    for seg in wanted:
        data = blobs[str(seg)]
        if data is None:
            continue
        skel = Skeleton.from_precomputed(data, attributes, id=seg, name=directory.path(str(seg)))
        if not identity:
            nm = skel.vertices.astype(np.float64) @ mat[:, :3].T + mat[:, 3]
            skel = Skeleton(nm, skel.edges, skel.radius, skel.vertex_types, seg, skel.attributes)
        out[seg] = skel
    if strict:
        missing = [i for i in wanted if i not in out]
        if missing:
            raise RemoteNotFoundError(
                f"{directory.location} has no skeleton for segment(s) "
                f"{', '.join(map(str, missing[:20]))}{' ...' if len(missing) > 20 else ''}"
            )
    return out

