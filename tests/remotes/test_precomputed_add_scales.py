"""``voxgate.downsample`` adding scales to precomputed layers that CloudVolume wrote with what
voxgate does not write itself: sharded scale 0 (murmur and identity hashes, several preshift /
minishard bits), compressed_segmentation with a block size other than 8x8x8, jpeg, more than one
``chunk_sizes`` entry, CloudVolume's ``.gz`` chunk files, odd voxel offsets, anisotropic
non-integer resolutions, a scale key that is not the resolution (and is the one the new scale
would take), and ``mesh`` / ``skeletons`` / ``segment_properties`` keys.

Every new scale read by voxgate equals the numpy reference (anchored at the offset, as Igneous
makes pyramids), CloudVolume and tensorstore opened directly read the same voxels, the info
keeps its other keys, and the new scales are what CloudVolume's ``add_scale`` makes (scale 0's
encoding and compressed_segmentation block size, offsets rounded down, sizes up)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
from cloudvolume import CloudVolume

import voxgate

from ..services.numpy_reference import downsample_scales
from .test_precomputed_cloudvolume_audit import cv_read, cv_write_sharded

pytestmark = pytest.mark.filterwarnings("ignore")

FACTORS = [(1, 2, 2), (2, 2, 2)]  # z, y, x
RES = [4.5, 6, 40]  # x, y, z nm
EXTRA = {"mesh": "mesh", "skeletons": "skeletons", "segment_properties": "props",
         "lab": {"id": 2**60 + 1}}


def ts_read(path: Path, scale: int) -> np.ndarray:
    store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": scale,
                     "kvstore": {"driver": "file", "path": f"{path}/"}}).result()
    czyx = np.asarray(store.read().result()).transpose(3, 2, 1, 0)
    return czyx[0] if czyx.shape[0] == 1 else czyx


def layer(path: Path, *, dtype: str, kind: str, encoding: str, size: tuple[int, int, int],
          offset: tuple[int, int, int], chunk: tuple[int, int, int],
          block: tuple[int, int, int] = (8, 8, 8), sharding: dict[str, Any] | None = None,
          key: str | None = None, more_chunks: tuple[int, int, int] | None = None,
          compress: bool | None = None) -> np.ndarray:
    """A one-scale layer made by CloudVolume; returns its voxels, z y x."""
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type=kind, data_type=dtype, encoding=encoding, resolution=RES,
        voxel_offset=list(offset), volume_size=list(size), chunk_size=list(chunk),
        compressed_segmentation_block_size=list(block))
    info.update(EXTRA)
    s0 = info["scales"][0]
    if key:
        s0["key"] = key
    if more_chunks:
        s0["chunk_sizes"].append(list(more_chunks))
    if sharding:
        s0["sharding"] = {"@type": "neuroglancer_uint64_sharded_v1", **sharding}
    CloudVolume(f"file://{path}", info=info, progress=False).commit_info()
    rng = np.random.default_rng(11)
    zyx = size[::-1]
    if kind == "segmentation":
        ids = np.array([0, 3, 2**32 - 1, 2**53 + 1, 2**63 + 5], dtype=np.uint64)
        data = ids[rng.integers(0, len(ids), zyx)].astype(dtype)
    elif encoding == "jpeg":
        z, y, x = np.indices(zyx)
        smooth = 128 + 60 * np.sin(x / 6) * np.cos(y / 7) + 20 * np.sin(z / 3)
        data = np.round(smooth).astype(dtype)
    else:
        data = rng.integers(0, 256, zyx).astype(dtype)
    if sharding:
        cv_write_sharded(path, data)
    else:
        cv = CloudVolume(f"file://{path}", progress=False, compress=compress)
        cv[:, :, :] = np.asfortranarray(data.transpose(2, 1, 0))[..., None]
    return data


LAYERS = {
    "cseg-block-4-4-2-murmur": dict(
        dtype="uint64", kind="segmentation", encoding="compressed_segmentation",
        size=(40, 36, 12), offset=(-3, 5, 1), chunk=(8, 8, 4), block=(4, 4, 2),
        sharding={"hash": "murmurhash3_x86_128", "preshift_bits": 1, "minishard_bits": 2,
                  "shard_bits": 3, "minishard_index_encoding": "gzip",
                  "data_encoding": "gzip"}),
    "cseg-block-16-16-1-identity": dict(
        dtype="uint32", kind="segmentation", encoding="compressed_segmentation",
        size=(41, 35, 7), offset=(7, 0, 3), chunk=(16, 16, 2), block=(16, 16, 1),
        sharding={"hash": "identity", "preshift_bits": 2, "minishard_bits": 1,
                  "shard_bits": 1}),
    "jpeg-identity-one-shard": dict(
        dtype="uint8", kind="image", encoding="jpeg", size=(45, 37, 9), offset=(1, 3, 5),
        chunk=(16, 16, 4), sharding={"hash": "identity", "preshift_bits": 0,
                                     "minishard_bits": 0, "shard_bits": 2}),
    # scale 0's key is the one the first new scale would take by its resolution
    "raw-gz-two-chunk-sizes-taken-key": dict(
        dtype="uint8", kind="image", encoding="raw", size=(37, 29, 13), offset=(3, 5, 1),
        chunk=(7, 11, 5), more_chunks=(16, 16, 8), key="9_12_40", compress=True),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_downsample_cloudvolume_layer(tmp_path: Path, name: str) -> None:
    kw = LAYERS[name]
    path = tmp_path / "layer"
    data = layer(path, **kw)
    url = f"precomputed://{path}"
    lossy = kw["encoding"] == "jpeg"
    s0 = voxgate.open(url).read()
    if not lossy:
        np.testing.assert_array_equal(s0, data)
    voxgate.downsample(url, num_scales=3, factors=FACTORS)

    info = json.loads((path / "info").read_text())
    assert {k: info[k] for k in EXTRA} == EXTRA
    keys = [s["key"] for s in info["scales"]]
    assert len(set(keys)) == 3, keys
    base = info["scales"][0]
    for s in info["scales"][1:]:
        assert s["encoding"] == base["encoding"]
        # CloudVolume's and Igneous's add_scale copy scale 0's block size (voxgate wrote 8x8x8)
        assert s.get("compressed_segmentation_block_size") == \
            base.get("compressed_segmentation_block_size")
        assert (s.get("sharding") is None) == (base.get("sharding") is None)
    sizes, offsets = [base["size"]], [base["voxel_offset"]]
    for f in FACTORS:
        xyz = f[::-1]
        sizes.append([-(-n // k) for n, k in zip(sizes[-1], xyz, strict=True)])
        offsets.append([o // k for o, k in zip(offsets[-1], xyz, strict=True)])
    assert [s["size"] for s in info["scales"]] == sizes
    assert [s["voxel_offset"] for s in info["scales"]] == offsets
    assert [s["resolution"] for s in info["scales"]][1:] == [[9, 12, 40], [18, 24, 80]]

    previous = s0
    for k, f in enumerate(FACTORS, start=1):
        ours = voxgate.open(url, scale=k).read()
        # each scale is made from the one stored before it (for jpeg: after its loss)
        ref = downsample_scales(previous, [f], kw["kind"])[0]
        if lossy:
            assert ours.shape == ref.shape
            diff = np.abs(ours.astype(int) - ref.astype(int))
            assert diff.mean() < 3 and diff.max() < 40  # jpeg's loss on writing scale k
        else:
            np.testing.assert_array_equal(ours, ref)
        np.testing.assert_array_equal(cv_read(path, k), ours)
        np.testing.assert_array_equal(ts_read(path, k), ours)
        previous = ours
    if not lossy:
        chain = downsample_scales(s0, FACTORS, kw["kind"])
        np.testing.assert_array_equal(voxgate.open(url, scale=2).read(), chain[1])
