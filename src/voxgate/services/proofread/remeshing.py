"""``remesh=``: mesh and / or skeletonize the edited ids again and store the results where
the layer keeps them (a precomputed layer's directories or a DVID labelmap's keyvalues)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from ...errors import CapabilityNotSupportedError, InvalidRequestError, RemoteNotFoundError
from ...geometry import Box
from ...remotes.base import Capability, has_capability
from ...volume import Volume
from .core import _find_boxes, _union

#: what ``remesh=`` asks for: True / "meshes", "skeletons", or "both"
REMESH_CHOICES = (False, True, "meshes", "skeletons", "both")


def _remesh_kinds(remesh: Any) -> tuple[bool, bool]:
    """(meshes, skeletons) that ``remesh`` asks for."""
    if isinstance(remesh, np.bool_):
        remesh = bool(remesh)
    if remesh not in REMESH_CHOICES or (remesh is not True and remesh is not False
                                        and not isinstance(remesh, str)):
        raise InvalidRequestError(f"remesh must be True, False, 'meshes', 'skeletons' or 'both', "
                                  f"got {remesh!r}")
    return remesh in (True, "meshes", "both"), remesh in ("skeletons", "both")


def _recorded_remesh(remesh: Any) -> dict[str, str]:
    """What the history records of ``remesh`` (nothing when it is off): undo meshes the
    edit's ids again when the edit did."""
    meshes, skels = _remesh_kinds(remesh)
    if not (meshes or skels):
        return {}
    return {"remesh": "both" if meshes and skels else "meshes" if meshes else "skeletons"}


def _layer_dir(vol: Volume, key: str) -> str | None:
    """A precomputed layer's ``mesh`` / ``skeletons`` directory named in its info."""
    from ...storage import read_json

    remote: Any = vol.remote
    if remote.scheme != "precomputed":
        return None
    name = read_json(remote.location, "info").get(key)
    return str(name) if name else None


def _dir_info(vol: Volume, name: str) -> dict[str, Any]:
    """The ``info`` of the layer's directory ``name`` (``{}`` when it has none yet, as in a
    layer CloudVolume made with ``mesh="mesh"``: read as Neuroglancer and CloudVolume read
    it, legacy meshes / unsharded skeletons).  Before, a missing one raised
    RemoteNotFoundError after the edit was written, and no mesh was stored."""
    from ...formats.layer import read_info
    from ...storage import Directory, join

    remote: Any = vol.remote
    return read_info(Directory(join(remote.location, name))) or {}


def _check_remesh(vol: Volume, remesh: Any) -> None:
    """Refuse ``remesh`` before editing where there is nowhere to put the meshes / skeletons."""
    meshes, skels = _remesh_kinds(remesh)
    dvid = has_capability(vol.remote, Capability.SERVER_PROOFREAD)
    for wanted, key, kv, what, writer in (
            (meshes, "mesh", "_meshes", "meshes", "voxgate.write_meshes"),
            (skels, "skeletons", "_skeletons", "skeletons", "voxgate.formats.skeleton."
                                                            "write_skeletons")):
        if not wanted or dvid:
            continue
        name = _layer_dir(vol, key)
        if name is None:
            # (a bossdb:// volume, a voxgate relay's channel included, has no directory to
            # write into: its upstream layer's meshes are written on the layer's own URL)
            fix = (f"edit without remesh, then write the {what} of the edited ids with "
                   f"{writer} on the upstream layer's own precomputed:// URL, where the "
                   f"relay serves them from" if vol.remote.scheme == "bossdb" else
                   f"write {what} with {writer} first, or edit without remesh")
            raise CapabilityNotSupportedError(
                f"remesh={remesh!r} writes {what} into a precomputed layer's {what} directory "
                f"(the {key!r} key of its info) or a DVID labelmap's <name>{kv} keyvalue; "
                f"{vol.url} has neither ({fix})")
        _check_dir(vol, key, name, remesh)  # (refused here, before the edit)


def _mesh_options(dinfo: dict[str, Any]) -> dict[str, Any]:
    """``write_meshes``' options for a mesh directory whose info is ``dinfo`` (its format and
    layout kept: legacy when it has no ``@type``, as CloudVolume reads it)."""
    from ...formats.mesh.precomputed import LEGACY_MESH_TYPE

    legacy = dinfo.get("@type", LEGACY_MESH_TYPE) == LEGACY_MESH_TYPE
    opts: dict[str, Any] = {"format": "legacy" if legacy else "multires"}
    if not legacy:
        opts["sharded"] = bool(dinfo.get("sharding"))
        opts["vertex_quantization_bits"] = int(dinfo.get("vertex_quantization_bits", 16))
    return opts


def _check_dir(vol: Volume, key: str, name: str, remesh: Any) -> None:
    """Refuse, before the edit, a mesh / skeleton directory the writer would refuse after
    it: a corrupt info (CorruptChunkError), or one voxgate cannot add to, such as a mesh
    directory whose transform cannot be inverted (before, the edit was written and recorded
    done, then remeshing raised and no mesh was written).  The multi-resolution directory
    CloudVolume and Igneous make, whose transform scales by the voxel size, is accepted: the
    writer stores into its frame."""
    from ...formats.mesh.precomputed import check_mesh_dir
    from ...formats.skeleton.precomputed import check_skeleton_dir
    from ...storage import Directory, join

    dinfo = _dir_info(vol, name)
    if not dinfo:
        return  # (none yet: the writer makes one)
    remote: Any = vol.remote
    directory = Directory(join(remote.location, name))
    what = "meshes" if key == "mesh" else "skeletons"
    try:
        if key == "mesh":
            opts = _mesh_options(dinfo)
            check_mesh_dir(directory, dinfo, opts["format"],
                           opts.get("vertex_quantization_bits", 16), opts.get("sharded", False))
        else:
            check_skeleton_dir(dinfo, directory.path("info"))
    except (InvalidRequestError, CapabilityNotSupportedError) as exc:
        raise CapabilityNotSupportedError(
            f"remesh={remesh!r} cannot add {what} to {directory.location}: {exc}.  Nothing "
            f"was edited; edit without remesh (and write the edited ids' {what} elsewhere)"
        ) from exc


def _remesh(vol: Volume, ids: Iterable[int], remesh: Any) -> int:
    """Mesh (and / or skeletonize) ``ids`` again, each whole, and store the results where the
    layer keeps them: a precomputed layer's mesh / skeleton directory (format and layout
    kept), or a DVID labelmap's ``<name>_meshes`` / ``<name>_skeletons`` keyvalue.  Ids left
    with no voxel (merged away, a split undone) lose their stored mesh / skeleton.  Returns
    how many meshes and skeletons were written or removed.

    Each id is meshed over its box in the whole scale as it is after the edit (plus a voxel
    on every side), not over the edit's boxes: a merge's boxes are those of the ids merged
    away, and the mesh of the id they joined covered only their part of it."""
    meshes_wanted, skels_wanted = _remesh_kinds(remesh)
    if not (meshes_wanted or skels_wanted):
        return 0
    wanted = sorted({int(i) for i in ids})
    full = vol.at_scale(vol.scale)
    now = _find_boxes(full, wanted, full.bounds)
    present = sorted(now)
    gone = [i for i in wanted if i not in now]
    view = None
    if present:
        u = _union(list(now.values()))
        region = Box(tuple(a - 1 for a in u.start), tuple(b + 1 for b in u.stop)).intersect(
            full.bounds)
        lo = region.start - full.bounds.start
        hi = region.stop - full.bounds.start
        view = full[lo.z:hi.z, lo.y:hi.y, lo.x:hi.x]
    remote: Any = vol.remote
    written = 0
    if meshes_wanted:
        from ..mesh import mesh as mesh_service

        meshes = dict(mesh_service(view, ids=present, prefer="local")) if view is not None else {}
        mesh_dir = _layer_dir(vol, "mesh")
        if mesh_dir is not None:
            from ...formats.mesh import write_meshes
            from ...formats.mesh.precomputed import delete_meshes

            opts = {**_mesh_options(_dir_info(vol, mesh_dir)), "mesh_dir": mesh_dir}
            if meshes:
                write_meshes(remote.spec()["url"], meshes, **opts)
            delete_meshes(remote.spec()["url"], gone, mesh_dir=mesh_dir)
        else:
            for i, m in meshes.items():
                remote.put_mesh(i, m)
            for i in gone:
                with contextlib.suppress(RemoteNotFoundError):
                    remote.delete_mesh(i)
        written += len(meshes) + len(gone)
    if skels_wanted:
        from ..skeletonize import skeletonize

        skels = (dict(skeletonize(view, ids=present, prefer="local", dust_threshold=0))
                 if view is not None else {})
        skel_dir = _layer_dir(vol, "skeletons")
        if skel_dir is not None:
            from ...formats.skeleton import write_skeletons
            from ...formats.skeleton.precomputed import delete_skeletons

            sinfo = _dir_info(vol, skel_dir)
            if skels:
                write_skeletons(remote.spec()["url"], skels, skel_dir=skel_dir,
                                sharded=bool(sinfo.get("sharding")))
            delete_skeletons(remote.spec()["url"], gone, skel_dir=skel_dir)
        else:
            for i, sk in skels.items():
                remote.put_skeleton(i, sk)
            for i in gone:
                with contextlib.suppress(RemoteNotFoundError):
                    remote.delete_skeleton(i)
        written += len(skels) + len(gone)
    return written
