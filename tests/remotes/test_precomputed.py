"""precomputed://: the conformance suite in several layouts, plus CloudVolume and tensorstore as
oracles for what voxgate writes and as writers of what voxgate reads."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import tensorstore as ts
from cloudvolume import CloudVolume
from hypothesis import settings

import voxgate
from voxgate.errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    ReadOnlyError,
    RemoteExistsError,
    RemoteNotFoundError,
)
from voxgate.geometry import Box
from voxgate.remotes.precomputed import PrecomputedRemote
from voxgate.testing import RemoteTests, remote_state_machine

from .scratch import scratch_dir

#: a small multi-shard layout: shards of 2x2x1 chunks (x, y, z), many shard files
SMALL_SHARDS = {
    "hash": "identity",
    "preshift_bits": 1,
    "minishard_bits": 1,
    "shard_bits": 4,
    "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}


def url(path: Path) -> str:
    return f"precomputed://{path}"


def cv_read(path: Path, mip: int = 0) -> np.ndarray:
    """CloudVolume's view of a whole scale as voxgate's (c,) z, y, x."""
    cv = CloudVolume(f"file://{path}", mip=mip, progress=False)
    xyzc = np.asarray(cv[:, :, :])
    czyx = xyzc.transpose(3, 2, 1, 0)
    return czyx[0] if czyx.shape[0] == 1 else czyx


def ts_read(path: Path, scale: int = 0) -> np.ndarray:
    """tensorstore's view of a whole scale (plain files only) as voxgate's (c,) z, y, x."""
    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{path}/",
                     "scale_index": scale}).result()
    czyx = store.read(order="F").result().T
    return czyx[0] if czyx.shape[0] == 1 else czyx


def oracle_read(path: Path, scale: int, encoding: str | None, channels: int) -> np.ndarray:
    """CloudVolume's reading, except for RGB jpeg: CloudVolume 12.15 decodes the interleaved
    pixels as if they were planar, so it cannot read back even its own RGB jpeg chunks
    (its encoder interleaves, as Neuroglancer and tensorstore do); tensorstore reads those."""
    if encoding == "jpeg" and channels > 1:
        return ts_read(path, scale)
    return cv_read(path, scale)


def cv_write(path: Path, data: np.ndarray, mip: int = 0) -> None:
    """Write a whole scale with CloudVolume (its defaults: gzip ``.gz`` files for raw/cseg)."""
    cv = CloudVolume(f"file://{path}", mip=mip, progress=False)
    czyx = data if data.ndim == 4 else data[np.newaxis]
    cv[:, :, :] = np.asfortranarray(czyx.transpose(3, 2, 1, 0))


def random(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    return RemoteTests.random(shape, dtype, seed)


def scale_dir(path: Path, scale: int = 0) -> Path:
    info = json.loads((path / "info").read_text())
    return path / info["scales"][scale]["key"]


# -- the conformance suite ------------------------------------------------------------------------
class TestPrecomputedRaw(RemoteTests):
    dtypes: ClassVar[tuple[str, ...]] = (
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"
    )

    def url(self, tmp_path: Path, name: str) -> str:
        return f"precomputed://{tmp_path}/{name}"

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        path = tmp_path / "vol" / "8_8_40" / "0-16_0-16_0-8"
        path.write_bytes(path.read_bytes()[:100])  # truncated
        return str(path)


class TestPrecomputedCompressedSegmentation(TestPrecomputedRaw):
    dtypes: ClassVar[tuple[str, ...]] = ("uint32", "uint64")
    dtype: ClassVar[str] = "uint32"
    create_options: ClassVar[dict[str, Any]] = {"encoding": "compressed_segmentation"}

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        path = tmp_path / "vol" / "8_8_40" / "0-16_0-16_0-8"
        path.write_bytes(b"\x01\x00\x00\x00 not compressed_segmentation")
        return str(path)


class TestPrecomputedSharded(TestPrecomputedRaw):
    create_options: ClassVar[dict[str, Any]] = {"sharded": SMALL_SHARDS}

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        path = tmp_path / "vol" / "8_8_40" / "0.shard"
        data = bytearray(path.read_bytes())
        data[40:60] = b"\xff" * 20  # inside the first chunk's gzip stream
        path.write_bytes(bytes(data))
        return str(path)


class TestPrecomputedCloudVolumeGzip(TestPrecomputedRaw):
    """Layers whose chunks CloudVolume wrote as ``<name>.gz``, then read and rewritten here."""

    def make(self, tmp_path: Path, name: str = "vol", **kw: Any) -> voxgate.Volume:
        vol = super().make(tmp_path, name, **kw)
        if kw.get("exist_ok"):
            return vol
        for k, sc in enumerate(vol.scales):
            cv_write(tmp_path / name, np.zeros(tuple(sc.shape), dtype=vol.dtype), mip=k)
        assert any(p.suffix == ".gz" for p in scale_dir(tmp_path / name).iterdir())
        return voxgate.open(self.url(tmp_path, name), mode="r+")

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        path = tmp_path / "vol" / "8_8_40" / "0-16_0-16_0-8.gz"
        path.write_bytes(path.read_bytes()[:30])  # a truncated gzip stream
        return str(path)


def _gzip_layer_url(name: str) -> str:
    # a .gz file in the scale directory makes the layer a CloudVolume-style gzip layer, so the
    # machine drives voxgate's own chunk path (4_4_4 is the state machine's scale key)
    marker = scratch_dir() / f"{name}-gz" / "4_4_4" / "written-by-cloudvolume.gz"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(gzip.compress(b""))
    return f"precomputed://{marker.parent.parent}"


def _machine(make_url: Any, **kw: Any) -> Any:
    case = remote_state_machine(make_url, **kw).TestCase
    case.settings = settings(max_examples=8, stateful_step_count=8, deadline=None)
    return case


TestRawStateMachine = _machine(lambda n: f"precomputed://{scratch_dir()}/{n}")
TestCompressedSegmentationStateMachine = _machine(
    lambda n: f"precomputed://{scratch_dir()}/{n}-cseg", dtype="uint32", kind="segmentation"
)
TestShardedStateMachine = _machine(
    lambda n: f"precomputed://{scratch_dir()}/{n}-sharded", sharded=SMALL_SHARDS
)
TestGzipStateMachine = _machine(_gzip_layer_url, dtype="uint64", kind="segmentation")


# -- CloudVolume reads what voxgate writes --------------------------------------------------------
CASES = [
    # (id, dtype, kind, encoding, channels, sharded)
    ("raw-uint8", "uint8", "image", None, 1, False),
    ("raw-float32-2ch", "float32", "image", "raw", 2, False),
    ("jpeg-uint8", "uint8", "image", "jpeg", 1, False),
    ("jpeg-rgb", "uint8", "image", "jpeg", 3, False),
    ("cseg-uint64", "uint64", "segmentation", None, 1, False),
    ("cseg-uint32", "uint32", "segmentation", None, 1, False),
    ("raw-seg-uint64", "uint64", "segmentation", "raw", 1, False),
    ("sharded-raw-uint16", "uint16", "image", None, 1, True),
    ("sharded-cseg-uint64", "uint64", "segmentation", None, 1, True),
    ("sharded-jpeg", "uint8", "image", "jpeg", 1, True),
]


def _data(
    shape: tuple[int, ...], dtype: str, kind: str, encoding: str | None, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if encoding == "jpeg":
        # smooth data, so the lossy codec's error stays small and a tolerance means something
        grid = np.indices(shape[-3:]).sum(axis=0)
        base = (grid * 3 + seed * 11) % 200 + 20
        return np.broadcast_to(base, shape).astype(dtype)
    if kind == "segmentation":
        ids = np.array([0, 1, 2**53 + 1, 2**63 + 5, 2**64 - 1], dtype=np.uint64)
        if dtype == "uint32":
            ids = np.array([0, 1, 7, 2**31 + 3, 2**32 - 1], dtype=np.uint64)
        return ids[rng.integers(0, len(ids), size=shape)].astype(dtype)
    return random(shape, dtype, seed)


def _compare(actual: np.ndarray, expected: np.ndarray, encoding: str | None) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    if encoding == "jpeg":
        assert np.abs(actual.astype(int) - expected.astype(int)).mean() < 3
        assert np.abs(actual.astype(int) - expected.astype(int)).max() < 40
    else:
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize(
    ("dtype", "kind", "encoding", "channels", "sharded"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_cloudvolume_reads_voxgate(
    tmp_path: Path, dtype: str, kind: str, encoding: str | None, channels: int, sharded: bool
) -> None:
    path = tmp_path / "layer"
    vol = voxgate.create(
        url(path), shape=(20, 40, 52), chunks=(8, 16, 16), dtype=dtype, kind=kind,
        encoding=encoding, voxel_size=(40, 8, 8), offset=(3, 17, -5), num_scales=3,
        num_channels=channels, sharded=sharded,
    )
    lead = (channels,) if channels > 1 else ()
    written = []
    for k, sc in enumerate(vol.scales):
        data = _data(lead + tuple(sc.shape), dtype, kind, encoding, seed=k)
        vol.at_scale(k)[...] = data
        written.append(data)
    info = json.loads((path / "info").read_text())
    assert info["@type"] == "neuroglancer_multiscale_volume"
    assert all(("sharding" in s) == sharded for s in info["scales"])
    for k, data in enumerate(written):
        _compare(oracle_read(path, k, encoding, channels), data, encoding)
        _compare(ts_read(path, k), data, encoding)
        _compare(voxgate.open(url(path), scale=k).read(), data, encoding)


def test_png_through_tensorstore(tmp_path: Path) -> None:
    # CloudVolume needs pyspng for png, which is not installed; tensorstore is the oracle
    path = tmp_path / "png"
    vol = voxgate.create(url(path), shape=(8, 20, 24), chunks=(8, 16, 16), dtype="uint16",
                         encoding="png", num_channels=2, voxel_size=(8, 8, 8))
    data = random((2, 8, 20, 24), "uint16", seed=1)
    vol[...] = data
    np.testing.assert_array_equal(ts_read(path), data)
    np.testing.assert_array_equal(voxgate.open(url(path)).read(), data)


def test_info_is_what_cloudvolume_and_neuroglancer_expect(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    voxgate.create(url(path), shape=(20, 40, 50), chunks=(8, 16, 16), dtype="uint64",
                   kind="segmentation", voxel_size=(40, 8, 8), offset=(1, 2, 3), num_scales=2)
    info = json.loads((path / "info").read_text())
    assert info == {
        "@type": "neuroglancer_multiscale_volume",
        "type": "segmentation",
        "data_type": "uint64",
        "num_channels": 1,
        "scales": [
            {"key": "8_8_40", "size": [50, 40, 20], "resolution": [8, 8, 40],
             "voxel_offset": [3, 2, 1], "chunk_sizes": [[16, 16, 8]],
             "encoding": "compressed_segmentation",
             "compressed_segmentation_block_size": [8, 8, 8]},
            {"key": "16_16_40", "size": [25, 20, 20], "resolution": [16, 16, 40],
             "voxel_offset": [1, 1, 1], "chunk_sizes": [[16, 16, 8]],
             "encoding": "compressed_segmentation",
             "compressed_segmentation_block_size": [8, 8, 8]},
        ],
    }
    cv = CloudVolume(f"file://{path}", mip=1, progress=False)
    assert tuple(cv.bounds.minpt) == (1, 1, 1) and tuple(cv.shape) == (25, 20, 20, 1)
    assert cv.layer_type == "segmentation"


# -- voxgate reads what CloudVolume writes --------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "kind", "encoding", "channels"),
    [
        ("uint8", "image", "raw", 1),
        ("uint16", "image", "raw", 3),
        ("uint8", "image", "jpeg", 1),
        ("uint8", "image", "jpeg", 3),
        ("uint64", "segmentation", "compressed_segmentation", 1),
        ("uint32", "segmentation", "compressed_segmentation", 1),
    ],
)
def test_voxgate_reads_and_writes_cloudvolume(
    tmp_path: Path, dtype: str, kind: str, encoding: str, channels: int
) -> None:
    path = tmp_path / "cv"
    info = CloudVolume.create_new_info(
        num_channels=channels, layer_type=kind, data_type=dtype, encoding=encoding,
        resolution=[8, 8, 40], voxel_offset=[10, 20, 3], volume_size=[50, 40, 20],
        chunk_size=[16, 16, 8],
    )
    info["mesh"] = "mesh"  # unknown to voxgate, must survive
    cv = CloudVolume(f"file://{path}", info=info, progress=False)
    cv.add_scale((2, 2, 1))
    cv.commit_info()
    lead = (channels,) if channels > 1 else ()
    written = []
    for k in range(2):
        shape = tuple(int(v) for v in CloudVolume(f"file://{path}", mip=k).shape[2::-1])
        data = _data(lead + shape, dtype, kind, encoding, seed=k)
        cv_write(path, data, mip=k)
        written.append(data)
    suffixes = {p.suffix for p in scale_dir(path).iterdir()}
    assert suffixes == ({""} if encoding == "jpeg" else {".gz"})

    vol = voxgate.open(url(path), mode="r+")
    assert vol.kind == kind and vol.dtype == np.dtype(dtype)
    assert tuple(vol.offset) == (3, 20, 10)
    assert [tuple(s.shape) for s in vol.scales] == [(20, 40, 50), (20, 20, 25)]
    assert vol.meta.extra == {"mesh": "mesh"}
    for k, data in enumerate(written):
        _compare(voxgate.open(url(path), scale=k).read(), data, encoding)

    # an unaligned write (read-modify-write of edge chunks), read back by CloudVolume
    patch = _data((*lead, 5, 9, 21), dtype, kind, encoding, seed=9)
    vol[..., 2:7, 11:20, 13:34] = patch
    expected = written[0].copy()
    expected[..., 2:7, 11:20, 13:34] = patch
    _compare(oracle_read(path, 0, encoding, channels), expected, encoding)
    _compare(voxgate.open(url(path)).read(), expected, encoding)
    # the layer keeps CloudVolume's convention, one variant per chunk
    names = [p.name for p in scale_dir(path).iterdir()]
    assert all(n.endswith(".gz") for n in names) == (encoding != "jpeg")
    stems = [n.removesuffix(".gz") for n in names]
    assert len(stems) == len(set(stems))


def test_voxgate_reads_cloudvolume_sharded(tmp_path: Path) -> None:
    from cloudvolume.datasource.precomputed.sharding import (
        compute_shard_params_for_image,
        image_shard_shape_from_spec,
    )

    path = tmp_path / "cvsharded"
    size, chunk = [64, 64, 16], [16, 16, 8]
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="segmentation", data_type="uint64",
        encoding="compressed_segmentation", resolution=[8, 8, 40], voxel_offset=[10, 20, 3],
        volume_size=size, chunk_size=chunk,
    )
    spec = compute_shard_params_for_image(size, chunk, "compressed_segmentation", "uint64",
                                          uncompressed_shard_bytesize=16 * 16 * 8 * 8 * 8)
    info["scales"][0]["sharding"] = {k: (int(v) if isinstance(v, np.integer) else v)
                                     for k, v in spec.to_dict().items()}
    cv = CloudVolume(f"file://{path}", info=info, progress=False)
    cv.commit_info()
    data = _data((16, 64, 64), "uint64", "segmentation", None, seed=3)
    sx, sy, sz = (int(v) for v in image_shard_shape_from_spec(info["scales"][0]["sharding"],
                                                               size, chunk))
    xyz = data.T
    for x in range(0, 64, sx):  # CloudVolume writes one whole shard at a time
        for y in range(0, 64, sy):
            for z in range(0, 16, sz):
                cv[10 + x:10 + x + sx, 20 + y:20 + y + sy, 3 + z:3 + z + sz] = (
                    xyz[x:x + sx, y:y + sy, z:z + sz, np.newaxis]
                )
    assert all(p.suffix == ".shard" for p in scale_dir(path).iterdir())
    vol = voxgate.open(url(path))
    np.testing.assert_array_equal(vol.read(), data)
    np.testing.assert_array_equal(vol[3:9, 10:50, 7:60].read(), data[3:9, 10:50, 7:60])
    assert tuple(vol.remote.write_grid(0)) == (sz, sy, sx)


def test_stale_sibling_never_shadows_new_data(tmp_path: Path) -> None:
    path = tmp_path / "cv"
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type="uint8", encoding="raw",
        resolution=[8, 8, 8], voxel_offset=[0, 0, 0], volume_size=[32, 32, 16],
        chunk_size=[16, 16, 16],
    )
    CloudVolume(f"file://{path}", info=info, progress=False).commit_info()
    cv_write(path, np.ones((16, 32, 32), np.uint8))
    chunk = scale_dir(path) / "0-16_0-16_0-16"
    chunk.write_bytes(np.full(16**3, 7, np.uint8).tobytes())  # a stale plain sibling
    vol = voxgate.open(url(path), mode="r+")
    assert (vol[:, :16, :16].read() == 1).all()  # .gz is read first, as CloudFiles does
    vol[0:16, 0:16, 0:16] = 9
    assert not chunk.exists() and chunk.with_suffix(".gz").exists()
    assert (cv_read(path)[:, :16, :16] == 9).all()
    assert not [p for p in scale_dir(path).iterdir() if p.name.endswith(".tmp")]


# -- sharding -------------------------------------------------------------------------------------
def test_sharded_true_picks_bits_and_aligns_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1 MiB shards instead of 64 MiB, so a small volume spans several shards
    monkeypatch.setattr("voxgate.remotes.precomputed.sharding._SHARD_TARGET_BYTES", 2**20)
    path = tmp_path / "sh"
    vol = voxgate.create(url(path), shape=(40, 96, 96), chunks=(16, 32, 32), dtype="uint64",
                         kind="segmentation", voxel_size=(8, 8, 8), sharded=True, num_scales=2,
                         offset=(8, 0, 32))
    info = json.loads((path / "info").read_text())
    for k, s in enumerate(info["scales"]):
        sh = s["sharding"]
        assert sh["hash"] == "identity" and sh["@type"] == "neuroglancer_uint64_sharded_v1"
        grid_bits = sum((-(-n // c) - 1).bit_length()
                        for n, c in zip(s["size"], s["chunk_sizes"][0], strict=True))
        assert sh["preshift_bits"] + sh["minishard_bits"] + sh["shard_bits"] == grid_bits
        # write_grid is the shard tensorstore sees, and holds at most the target's voxels
        store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{path}/",
                         "scale_index": k}).result()
        shard_xyz = tuple(int(v or 0) for v in store.chunk_layout.write_chunk.shape or ())[:3]
        assert tuple(vol.remote.write_grid(k)) == shard_xyz[::-1]
        assert np.prod(shard_xyz) * 8 <= 2**20
    assert tuple(vol.remote.write_grid(0)) == (32, 64, 64)  # 2x2x2 chunks of 128 KiB
    for k, sc in enumerate(vol.scales):
        data = _data(tuple(sc.shape), "uint64", "segmentation", None, seed=k)
        vol.at_scale(k)[...] = data
        np.testing.assert_array_equal(cv_read(path, k), data)
    assert len(list(scale_dir(path, 0).glob("*.shard"))) == 8


@pytest.mark.parametrize("hash_", ["identity", "murmurhash3_x86_128"])
def test_sharded_layouts_round_trip_through_cloudvolume(tmp_path: Path, hash_: str) -> None:
    path = tmp_path / "sh"
    spec = {**SMALL_SHARDS, "hash": hash_, "shard_bits": 2, "data_encoding": "raw",
            "minishard_index_encoding": "gzip"}
    vol = voxgate.create(url(path), shape=(20, 40, 50), chunks=(8, 16, 16), dtype="uint16",
                         voxel_size=(40, 8, 8), sharded=spec, offset=(0, 0, 100))
    grid = vol.remote.write_grid(0)
    assert tuple(grid) == ((8, 32, 32) if hash_ == "identity" else (8, 16, 16))
    data = random((20, 40, 50), "uint16", seed=2)
    vol[:] = data
    vol[3:5, 7:9, 11:13] = 1  # a partial shard: tensorstore rewrites it whole
    data[3:5, 7:9, 11:13] = 1
    np.testing.assert_array_equal(cv_read(path), data)
    np.testing.assert_array_equal(voxgate.open(url(path)).read(), data)
    assert len(list(scale_dir(path).glob("*.shard"))) == 4


def test_truncated_shard_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "sh"
    vol = voxgate.create(url(path), shape=(20, 40, 50), chunks=(8, 16, 16), dtype="uint8",
                         voxel_size=(40, 8, 8), sharded=SMALL_SHARDS)
    vol[:] = 4
    shard = scale_dir(path) / "0.shard"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(CorruptChunkError, match=r"0\.shard") as info:
        voxgate.open(url(path)).read()
    assert info.value.chunk is not None and info.value.chunk.endswith("0.shard")
    assert (voxgate.open(url(path))[:, 32:, :].read() == 4).all()  # other shards still read


# -- damaged, absent and odd chunks ----------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["raw", "compressed_segmentation", "jpeg"])
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gz"])
def test_damaged_chunks_raise(tmp_path: Path, encoding: str, gzipped: bool) -> None:
    path = tmp_path / "layer"
    dtype = "uint32" if encoding == "compressed_segmentation" else "uint8"
    vol = voxgate.create(url(path), shape=(16, 32, 32), chunks=(16, 16, 16), dtype=dtype,
                         voxel_size=(8, 8, 8), encoding=encoding)
    data = _data((16, 32, 32), dtype, "image", encoding, seed=0)
    vol[:] = data
    undamaged = vol.read()  # (jpeg is lossy: what the store holds, read before any damage)
    if encoding != "jpeg":
        np.testing.assert_array_equal(undamaged, data)
    chunk = scale_dir(path) / "0-16_0-16_0-16"  # x 0-16, y 0-16: the damaged one
    good = chunk.read_bytes()
    for damaged in (good[: len(good) // 2], good[:3], b"", b"\x00" * 7 + good[7:40]):
        if gzipped:
            chunk.unlink(missing_ok=True)
            target = chunk.with_name(chunk.name + ".gz")
            target.write_bytes(gzip.compress(damaged))
        else:
            target = chunk
            target.write_bytes(damaged)
        with pytest.raises(CorruptChunkError) as info:
            voxgate.open(url(path)).read()
        assert info.value.chunk == str(target)
        assert str(target) in str(info.value)
        # the undamaged chunks (y 16-32, and x 16-32) read exactly
        again = voxgate.open(url(path))
        np.testing.assert_array_equal(again[:, 16:32, :].read(), undamaged[:, 16:32, :])
        np.testing.assert_array_equal(again[:, :, 16:32].read(), undamaged[:, :, 16:32])
    if gzipped:  # a gzip stream that is itself cut short
        target.write_bytes(gzip.compress(good)[:-9])
        with pytest.raises(CorruptChunkError, match="does not decompress"):
            voxgate.open(url(path)).read()


def test_absent_chunks_and_layers(tmp_path: Path) -> None:
    with pytest.raises(RemoteNotFoundError, match="no info"):
        voxgate.open(url(tmp_path / "nothing"))
    with pytest.raises(RemoteNotFoundError):
        voxgate.open(str(tmp_path / "nothing"))
    path = tmp_path / "layer"
    vol = voxgate.create(url(path), shape=(16, 32, 32), chunks=(16, 16, 16), dtype="uint64",
                         kind="segmentation", voxel_size=(8, 8, 8))
    vol[:, :16, :16] = 2**60
    assert not (scale_dir(path) / "0-16_16-32_0-16").exists()
    out = voxgate.open(str(path)).read()  # a bare path: detected from its info file
    assert (out[:, :16, :16] == 2**60).all() and not out[:, 16:].any()


def test_tensorstore_refused_encoding_falls_back_to_own_codecs(tmp_path: Path) -> None:
    path = tmp_path / "layer"
    vol = voxgate.create(url(path), shape=(16, 32, 32), chunks=(16, 16, 16), dtype="uint32",
                         kind="segmentation", voxel_size=(8, 8, 8))
    data = _data((16, 32, 32), "uint32", "segmentation", None, seed=4)
    vol[:] = data
    info = json.loads((path / "info").read_text())
    info["scales"].append({**info["scales"][0], "key": "16_16_16", "resolution": [16, 16, 16],
                           "size": [16, 16, 8], "encoding": "compresso"})
    (path / "info").write_text(json.dumps(info))
    again = voxgate.open(url(path), mode="r+")
    np.testing.assert_array_equal(again.read(), data)
    again[0:3, 0:5, 0:7] = 5
    data[0:3, 0:5, 0:7] = 5
    np.testing.assert_array_equal(voxgate.open(url(path)).read(), data)
    with pytest.raises(CapabilityNotSupportedError, match="compresso"):
        again.at_scale(1).read()


# -- http(s): read only, and gzip bodies stored without a Content-Encoding -------------------------
@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_is_read_only(http_root: tuple[Path, str]) -> None:
    root, base = http_root
    vol = voxgate.create(url(root / "img"), shape=(20, 40, 50), chunks=(8, 16, 16),
                         dtype="uint16", voxel_size=(40, 8, 8), offset=(1, 2, 3))
    data = random((20, 40, 50), "uint16", seed=5)
    vol[:] = data
    remote = voxgate.open(f"precomputed://{base}/img")
    np.testing.assert_array_equal(remote.read(), data)
    np.testing.assert_array_equal(remote.read(Box((2, 3, 4), (9, 30, 41))),
                                  data[1:8, 1:28, 1:38])
    assert voxgate.open(f"{base}/img").shape == (20, 40, 50)  # detected from its info
    with pytest.raises(ReadOnlyError):
        voxgate.open(f"precomputed://{base}/img", mode="r+")
    with pytest.raises(ReadOnlyError):
        voxgate.create(f"precomputed://{base}/new", shape=(4, 4, 4), chunks=(4, 4, 4),
                       dtype="uint8", voxel_size=(1, 1, 1))
    with pytest.raises(RemoteNotFoundError):
        voxgate.open(f"precomputed://{base}/missing")


@pytest.mark.parametrize("encoding", ["raw", "compressed_segmentation"])
def test_http_gzip_bodies_without_content_encoding(
    http_root: tuple[Path, str], encoding: str
) -> None:
    root, base = http_root
    dtype = "uint64" if encoding == "compressed_segmentation" else "uint16"
    vol = voxgate.create(url(root / "gz"), shape=(20, 40, 50), chunks=(8, 16, 16), dtype=dtype,
                         voxel_size=(40, 8, 8), encoding=encoding)
    data = _data((20, 40, 50), dtype, "segmentation" if dtype == "uint64" else "image", None, 6)
    vol[:] = data
    # what an object store holds when CloudVolume uploaded gzip with Content-Encoding metadata
    # that the server does not apply
    for chunk in scale_dir(root / "gz").iterdir():
        chunk.write_bytes(gzip.compress(chunk.read_bytes()))
    np.testing.assert_array_equal(voxgate.open(f"precomputed://{base}/gz").read(), data)
    # damage is still damage
    first = scale_dir(root / "gz") / "0-16_0-16_0-8"
    first.write_bytes(gzip.compress(first.read_bytes())[:-12])
    with pytest.raises(CorruptChunkError, match="0-16_0-16_0-8"):
        voxgate.open(f"precomputed://{base}/gz").read()


# -- object storage: an S3 API server on 127.0.0.1 (moto) ----------------------------------------
@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_s3_round_trip(s3_bucket: str, s3_server: str, sharded: bool) -> None:
    import boto3

    layer = f"precomputed://s3://{s3_bucket}/seg"
    vol = voxgate.create(layer, shape=(20, 40, 50), chunks=(8, 16, 16), dtype="uint64",
                         kind="segmentation", voxel_size=(40, 8, 8), num_scales=2,
                         sharded=SMALL_SHARDS if sharded else False, offset=(2, 4, 6))
    data = _data((20, 40, 50), "uint64", "segmentation", None, seed=8)
    vol[:] = data
    vol[3:5, 7:9, 11:13] = 2**64 - 2
    data[3:5, 7:9, 11:13] = 2**64 - 2
    again = voxgate.open(f"s3://{s3_bucket}/seg")  # detected from the info on S3
    assert again.url == layer and len(again.scales) == 2
    np.testing.assert_array_equal(again.read(), data)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert "seg/info" in keys
    assert any(k.endswith(".shard") for k in keys) == sharded


def test_s3_gzip_objects(s3_bucket: str, s3_server: str) -> None:
    import boto3

    layer = f"precomputed://s3://{s3_bucket}/img"
    vol = voxgate.create(layer, shape=(8, 32, 16), chunks=(8, 16, 16), dtype="uint16",
                         voxel_size=(8, 8, 8))
    data = random((8, 32, 16), "uint16", seed=3)
    vol[:] = data
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for key, encoding in (("img/8_8_8/0-16_0-16_0-8", "gzip"), ("img/8_8_8/0-16_16-32_0-8", None)):
        body = gzip.compress(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
        extra = {"ContentEncoding": encoding} if encoding else {}
        s3.put_object(Bucket=s3_bucket, Key=key, Body=body, **extra)
    # CloudVolume's uploads (Content-Encoding: gzip) are decoded in transit; a gzip body
    # without that header is recognised by its magic bytes
    np.testing.assert_array_equal(voxgate.open(layer).read(), data)


# -- create: options, validation, existing layers --------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dtype": "uint16", "encoding": "jpeg"}, "jpeg holds uint8"),
        ({"dtype": "uint16", "encoding": "compressed_segmentation"}, "uint32 or uint64"),
        ({"dtype": "uint16", "kind": "segmentation"}, "segmentation holds uint32 or uint64"),
        ({"dtype": "int64"}, "not int64"),
        ({"dtype": "uint8", "encoding": "compresso"}, "not 'compresso'"),
        ({"dtype": "uint8", "colour": "red"}, "unknown option"),
        ({"dtype": "uint8", "sharded": "yes"}, "sharded must be"),
        ({"dtype": "uint8", "sharded": {"hash": "md5", "preshift_bits": 0, "minishard_bits": 0,
                                         "shard_bits": 0}}, "hash must be"),
        ({"dtype": "uint8", "sharded": {"hash": "identity", "preshift_bits": -1,
                                         "minishard_bits": 0, "shard_bits": 0}}, "integers >= 0"),
    ],
)
def test_create_rejects(tmp_path: Path, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        voxgate.create(url(tmp_path / "bad"), shape=(8, 8, 8), chunks=(8, 8, 8),
                       voxel_size=(1, 1, 1), **kw)
    assert not (tmp_path / "bad" / "info").exists()


def test_create_existing_checks_and_extends(tmp_path: Path) -> None:
    path = tmp_path / "layer"
    voxgate.create(url(path), shape=(16, 32, 32), chunks=(8, 16, 16), dtype="uint8",
                   voxel_size=(8, 8, 8))
    remote = voxgate.open(url(path), mode="r+").remote
    assert isinstance(remote, PrecomputedRemote)
    remote.update_info({"mesh": "mesh", "skeletons": "skel"})
    with pytest.raises(InvalidRequestError, match="data_type"):
        remote.update_info({"data_type": "uint16"})
    with pytest.raises(RemoteExistsError, match="uint8"):
        voxgate.create(url(path), shape=(16, 32, 32), chunks=(8, 16, 16), dtype="uint16",
                       voxel_size=(8, 8, 8), exist_ok=True)
    again = voxgate.create(url(path), shape=(16, 32, 32), chunks=(8, 16, 16), dtype="uint8",
                           voxel_size=(8, 8, 8), exist_ok=True, num_scales=2)
    assert len(again.scales) == 2
    info = json.loads((path / "info").read_text())
    assert info["mesh"] == "mesh" and info["skeletons"] == "skel"
    assert [s["key"] for s in info["scales"]] == ["8_8_8", "16_16_16"]
    again.at_scale(1)[...] = 3
    assert (cv_read(path, 1) == 3).all()


def test_reopen_keeps_absolute_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    vol = voxgate.create("precomputed://rel/layer", shape=(4, 4, 4), chunks=(4, 4, 4),
                         dtype="uint8", voxel_size=(1, 1, 1))
    assert vol.url == f"precomputed://{tmp_path}/rel/layer"
    file_url = voxgate.open(f"precomputed://file://{tmp_path}/rel/layer")
    assert file_url.shape == (4, 4, 4)
