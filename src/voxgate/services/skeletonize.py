"""skeletonize: TEASAR skeletons of segments (kimimaro), or the ones the store already has.

Vertices are float32 nanometres (x, y, z) in the dataset's world frame at voxel centres:
(voxel offset + index + 0.5) * voxel size, the frame :func:`voxgate.mesh` uses, so a skeleton
sits inside its mesh.  The region is read into memory: skeletonize a view (``seg[box]``) to
bound it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import InvalidRequestError, RemoteNotFoundError
from ..formats.skeleton import Skeleton
from ..remotes.base import Capability
from ._common import Prefer, Provenance, as_volume, choose_path

__all__ = ["SkeletonResult", "skeletonize", "skeletonize_kernel"]


class SkeletonResult(dict[int, Skeleton]):
    """``{id: Skeleton}`` plus ``provenance``."""

    provenance: Provenance


def skeletonize_kernel(labels: np.ndarray, voxel_size: Any, origin: Any,
                       ids: list[int] | None = None, *, dust_threshold: int = 100,
                       teasar_params: Mapping[str, Any] | None = None,
                       parallel: int = 1) -> dict[int, Skeleton]:
    """kimimaro on a C-order (z, y, x) array; ``origin`` and ``voxel_size`` are (z, y, x)."""
    import kimimaro

    vz, vy, vx = (float(v) for v in voxel_size)
    kwargs: dict[str, Any] = {
        "anisotropy": (vx, vy, vz), "dust_threshold": dust_threshold, "progress": False,
        "parallel": parallel, "fix_branching": True, "fix_borders": True,
    }
    if teasar_params is not None:
        kwargs["teasar_params"] = dict(teasar_params)
    if ids is not None:
        kwargs["object_ids"] = list(ids)
    skels = kimimaro.skeletonize(np.ascontiguousarray(labels).T, **kwargs)
    shift = np.array([(origin[2] + 0.5) * vx, (origin[1] + 0.5) * vy, (origin[0] + 0.5) * vz],
                     dtype=np.float32)
    out: dict[int, Skeleton] = {}
    for i, sk in skels.items():
        s = Skeleton.from_osteoid(sk, id=int(i))
        s.vertices = (s.vertices + shift).astype(np.float32)
        out[int(i)] = s
    return out


def skeletonize(
    source: Any,
    ids: Iterable[int] | None = None,
    *,
    prefer: Prefer = "auto",
    dust_threshold: int = 100,
    teasar_params: Mapping[str, Any] | None = None,
    strict: bool = False,
    parallel: int = 1,
    voxel_size: Any = None,
) -> SkeletonResult:
    """Skeletons of ``ids`` (every id with at least ``dust_threshold`` voxels when None).

    ``prefer``: "server" reads skeletons the store holds (precomputed skeleton directory,
    DVID ``_skeletons`` keyvalue; with ids=None, every stored one), "local" runs kimimaro,
    "auto" the first when offered.  Missing ids give empty skeletons, or RemoteNotFoundError
    with ``strict``.
    """
    t0 = time.perf_counter()
    vol = as_volume(source, voxel_size=voxel_size,
                    kind="segmentation" if isinstance(source, np.ndarray) else None)
    if vol.kind != "segmentation":
        raise InvalidRequestError(f"skeletonize needs a segmentation; {vol.url} is an image")
    if vol.ndim != 3 or any(a.step != 1 for a in vol._axes):
        raise InvalidRequestError("skeletonize needs a 3-D view with step 1")
    id_list = None if ids is None else [int(i) for i in ids]
    path = choose_path(prefer, vol.remote, Capability.SERVER_SKELETON, "skeletonize")
    result = SkeletonResult()
    if path == "server":
        result.update(vol.remote.skeletons(id_list))  # type: ignore[attr-defined]
    else:
        labels = source if isinstance(source, np.ndarray) else vol.read()
        result.update(skeletonize_kernel(labels, vol.scale_meta.voxel_size.zyx(),
                                         tuple(vol.bounds.start), id_list,
                                         dust_threshold=dust_threshold,
                                         teasar_params=teasar_params, parallel=parallel))
    missing = [] if id_list is None else [i for i in id_list if i not in result]
    if missing and strict:
        raise RemoteNotFoundError(f"no skeleton for ids {missing[:10]}")
    for i in missing:
        result[i] = Skeleton(np.zeros((0, 3), np.float32), np.zeros((0, 2), np.uint32), id=i)
    result.provenance = Provenance("skeletonize", path, vol.url, {
        "ids": len(result), "seconds": round(time.perf_counter() - t0, 3)})
    return result
