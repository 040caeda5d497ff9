"""precomputed:// against CloudVolume as the oracle, on layers made the way labs' pipelines make
them: infos from ``CloudVolume.create_new_info`` + ``commit_info`` with several scales of
non-power-of-two and anisotropic factors, non-integer resolutions, negative voxel offsets,
chunk sizes that divide nothing, more than one ``chunk_sizes`` entry, every encoding and
several dtypes and channel counts, unknown info keys; sharded scales written with CloudVolume's
own shard builder (both hashes, raw and gzip indexes and data); chunks never written; writes at
unaligned boxes and at the far edge; failed writes; and bad info files.

Everything is compared voxel for voxel with what CloudVolume reads (jpeg with a tolerance: it
is lossy; png through tensorstore and Pillow, as CloudVolume's png codec is an optional extra).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
from cloudvolume import CloudVolume
from cloudvolume import chunks as cv_chunks
from cloudvolume.datasource.precomputed.sharding import (
    ShardingSpecification,
    image_shard_shape_from_spec,
)
from PIL import Image

import voxgate
from voxgate.errors import (
    DtypeError,
    InvalidRequestError,
    MissingChunkError,
    OutOfBoundsError,
    VoxgateError,
)
from voxgate.formats.layer import open_layer
from voxgate.geometry import Box, Vec, VoxelSize, chunk_boxes
from voxgate.meta import Scale
from voxgate.remotes.precomputed.sharding import _compressed_morton, _shard_shape

pytestmark = pytest.mark.filterwarnings("ignore")

#: (x, y, z) like the info; 37 x 29 x 13 voxels in chunks of 7 x 11 x 5 divide nothing
SIZE, CHUNK, OFFSET, RES = (37, 29, 13), (7, 11, 5), (-5, 3, -7), (4.5, 4.5, 40)
IDS = np.array([0, 1, 77, 2**32 - 1, 2**53 + 1, 2**63 + 5], dtype=np.uint64)


def url(path: Path) -> str:
    return f"precomputed://{path}"


def cv_read(path: Path, mip: int = 0) -> np.ndarray:
    """CloudVolume's view of a whole scale (absent chunks as 0) as voxgate's (c,) z, y, x."""
    cv = CloudVolume(f"file://{path}", mip=mip, progress=False, fill_missing=True)
    czyx = np.asarray(cv[:, :, :]).transpose(3, 2, 1, 0)
    return czyx[0] if czyx.shape[0] == 1 else czyx


def data_for(shape: tuple[int, ...], dtype: str, kind: str, encoding: str, seed: int) -> np.ndarray:
    """(c,) z, y, x test data: ids above 2**53 for segmentations, smooth values for jpeg."""
    rng = np.random.default_rng(seed)
    if kind == "segmentation":
        ids = IDS if dtype == "uint64" else IDS[:4]
        return ids[rng.integers(0, len(ids), size=shape)].astype(dtype)
    if encoding == "jpeg":
        z, y, x = np.indices(shape[-3:])
        smooth = 128 + 60 * np.sin(x / 6 + seed) * np.cos(y / 7) + 20 * np.sin(z / 3)
        return np.broadcast_to(np.round(smooth), shape).astype(dtype)
    if dtype == "float32":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)


def cv_write(path: Path, data: np.ndarray, mip: int, compress: bool | None) -> None:
    cv = CloudVolume(f"file://{path}", mip=mip, progress=False, compress=compress)
    czyx = data if data.ndim == 4 else data[np.newaxis]
    cv[:, :, :] = np.asfortranarray(czyx.transpose(3, 2, 1, 0))


def same(actual: np.ndarray, expected: np.ndarray, encoding: str) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if encoding == "jpeg":
        diff = np.abs(actual.astype(int) - expected.astype(int))
        assert diff.mean() < 3 and diff.max() < 40
    else:
        np.testing.assert_array_equal(actual, expected)


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with the hash of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def cv_layer(
    path: Path, *, dtype: str = "uint16", kind: str = "image", encoding: str = "raw",
    channels: int = 1, block: tuple[int, int, int] = (8, 8, 8),
    factors: tuple[tuple[int, int, int], ...] = (), chunk: tuple[int, int, int] = CHUNK,
    size: tuple[int, int, int] = SIZE, offset: tuple[int, int, int] = OFFSET,
    compress: bool | None = None, edit: Any = None, seed: int = 0,
) -> list[np.ndarray]:
    """A layer made by CloudVolume (create_new_info, add_scale, commit_info, then each scale
    written whole); returns what CloudVolume reads back per scale."""
    info = CloudVolume.create_new_info(
        num_channels=channels, layer_type=kind, data_type=dtype, encoding=encoding,
        resolution=list(RES), voxel_offset=list(offset), volume_size=list(size),
        chunk_size=list(chunk), compressed_segmentation_block_size=list(block),
    )
    if edit is not None:
        edit(info)
    cv = CloudVolume(f"file://{path}", info=info, progress=False)
    for f in factors:
        cv.add_scale(f)
    cv.commit_info()
    out = []
    for mip in range(len(cv.info["scales"])):
        shape = tuple(int(v) for v in CloudVolume(f"file://{path}", mip=mip).shape[2::-1])
        lead = (channels,) if channels > 1 else ()
        cv_write(path, data_for(lead + shape, dtype, kind, encoding, seed + mip), mip, compress)
        out.append(cv_read(path, mip))
    return out


# -- info variants: every scale read, then unaligned and far-edge writes read by CloudVolume -----
VARIANTS = [
    # id, cv_layer keywords
    ("raw-uint16-gz", {}),
    ("raw-uint16-plain", {"compress": False}),
    ("raw-uint64-seg", {"dtype": "uint64", "kind": "segmentation"}),
    ("cseg-uint32-4x4x2-gz", {"dtype": "uint32", "kind": "segmentation",
                              "encoding": "compressed_segmentation", "block": (4, 4, 2)}),
    ("cseg-uint32-4x4x2-plain", {"dtype": "uint32", "kind": "segmentation", "compress": False,
                                 "encoding": "compressed_segmentation", "block": (4, 4, 2)}),
    ("cseg-uint64-8x8x8-plain", {"dtype": "uint64", "kind": "segmentation", "compress": False,
                                 "encoding": "compressed_segmentation"}),
    ("raw-float32-2ch-gz", {"dtype": "float32", "channels": 2}),
    ("raw-uint8-3ch-plain", {"dtype": "uint8", "channels": 3, "compress": False}),
    ("raw-uint32-image-plain", {"dtype": "uint32", "compress": False}),
    ("jpeg-uint8", {"dtype": "uint8", "encoding": "jpeg", "chunk": (16, 16, 4)}),
]


@pytest.mark.parametrize("kw", [v[1] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_cloudvolume_layers_read_and_write(tmp_path: Path, kw: dict[str, Any]) -> None:
    path = tmp_path / "cv"
    encoding = kw.get("encoding", "raw")
    truth = cv_layer(path, factors=((3, 2, 1), (2, 3, 2)), **kw)
    info = json.loads((path / "info").read_text())
    for mip, expected in enumerate(truth):
        vol = voxgate.open(url(path), scale=mip)
        s = info["scales"][mip]
        assert tuple(vol.offset) == tuple(s["voxel_offset"][::-1])
        assert tuple(vol.scales[mip].chunks) == tuple(s["chunk_sizes"][0][::-1])
        assert vol.scales[mip].voxel_size.x == s["resolution"][0]
        same(vol.read(), expected, "raw")  # what CloudVolume decoded, jpeg included

    vol = voxgate.open(url(path), mode="r+")
    dtype, kind = kw.get("dtype", "uint16"), kw.get("kind", "image")
    lead = (kw["channels"],) if kw.get("channels", 1) > 1 else ()
    (z0, y0, x0), (z1, y1, x1) = vol.bounds.start, vol.bounds.stop
    expected = truth[0].copy()
    for k, box in enumerate([
        Box((z0 + 1, y0 + 5, x0 + 3), (z0 + 8, y0 + 20, x0 + 17)),  # crosses chunk borders
        Box((z1 - 4, y1 - 13, x1 - 9), (z1, y1, x1)),  # the far edge: truncated edge chunks
    ]):
        patch = data_for(lead + tuple(box.shape), dtype, kind, encoding, 10 + k)
        vol.write(patch, box)
        expected[(..., *box.slices(vol.bounds.start))] = patch
    theirs = cv_read(path)
    same(theirs, expected, encoding)
    np.testing.assert_array_equal(voxgate.open(url(path)).read(), theirs)  # the same decode


def test_several_chunk_sizes_use_the_first(tmp_path: Path) -> None:
    """CloudVolume reads and writes ``chunk_sizes[0]``; so does voxgate, on both paths."""
    for compress in (None, False):
        path = tmp_path / f"cv-{compress}"
        truth = cv_layer(path, compress=compress, edit=lambda i: i["scales"][0][
            "chunk_sizes"].append([16, 16, 16]))
        vol = voxgate.open(url(path), mode="r+")
        assert tuple(vol.scales[0].chunks) == CHUNK[::-1]
        np.testing.assert_array_equal(vol.read(), truth[0])
        box = Box((-6, 4, -4), (2, 30, 20))
        patch = data_for(tuple(box.shape), "uint16", "image", "raw", 5)
        vol.write(patch, box)
        expected = truth[0].copy()
        expected[box.slices(vol.bounds.start)] = patch
        np.testing.assert_array_equal(cv_read(path), expected)
        stems = {p.name.removesuffix(".gz") for p in (path / "4.5_4.5_40.0").iterdir()}
        assert "-5-2_3-14_-7--2" in stems and len(stems) == 6 * 3 * 3


def test_sharding_null_is_unsharded(tmp_path: Path) -> None:
    """``"sharding": null`` is an unsharded scale to CloudVolume (``is_sharded``) and
    tensorstore; voxgate took any ``sharding`` key for a sharded scale and refused CloudVolume's
    ``.gz`` chunks of such a layer as "compressed shard files"."""
    for compress in (None, False):
        path = tmp_path / f"cv-{compress}"
        truth = cv_layer(path, compress=compress, factors=((2, 2, 1),),
                         edit=lambda i: i["scales"][0].update(sharding=None))
        for mip in (0, 1):
            np.testing.assert_array_equal(voxgate.open(url(path), scale=mip).read(), truth[mip])
        vol = voxgate.open(url(path), mode="r+")
        assert tuple(vol.remote.write_grid(0)) == CHUNK[::-1]
        box = Box((-3, 10, 0), (6, 32, 32))
        patch = data_for(tuple(box.shape), "uint16", "image", "raw", 3)
        vol.write(patch, box)
        expected = truth[0].copy()
        expected[box.slices(vol.bounds.start)] = patch
        np.testing.assert_array_equal(cv_read(path), expected)
        assert vol.missing_chunks() == []


def test_png_made_by_hand(tmp_path: Path) -> None:
    """png chunks written from the spec with Pillow (width x, height y*z); voxgate reads them
    and tensorstore reads voxgate's unaligned writes back."""
    for dtype in ("uint8", "uint16"):
        path = tmp_path / dtype
        (path / "s0").mkdir(parents=True)
        size, chunk, off = (19, 13, 6), (8, 5, 4), (-3, 2, 1)
        info = {"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": dtype,
                "num_channels": 1, "scales": [{
                    "key": "s0", "size": list(size), "resolution": [4.5, 4.5, 30],
                    "voxel_offset": list(off), "chunk_sizes": [list(chunk)], "encoding": "png"}]}
        (path / "info").write_text(json.dumps(info))
        data = data_for(size[::-1], dtype, "image", "png", 1)
        bounds = Box(off[::-1], tuple(o + s for o, s in zip(off[::-1], size[::-1], strict=True)))
        vol = voxgate.open(url(path), mode="r+")
        for _, cell in chunk_boxes(bounds, Vec.from_xyz(chunk), bounds):
            part = data[cell.slices(bounds.start)]
            nz, ny, nx = part.shape
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(part.reshape(nz * ny, nx))).save(buf, "PNG")
            (z0, y0, x0), (z1, y1, x1) = cell.start, cell.stop
            (path / "s0" / f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}").write_bytes(buf.getvalue())
        np.testing.assert_array_equal(vol.read(), data)
        box = Box((off[2] + 2, off[1] + 3, off[0] + 6), (off[2] + 6, off[1] + 13, off[0] + 19))
        patch = data_for(tuple(box.shape), dtype, "image", "png", 2)
        vol.write(patch, box)
        data[box.slices(bounds.start)] = patch
        store = ts.open({"driver": "neuroglancer_precomputed",
                         "kvstore": f"file://{path}/"}).result()
        np.testing.assert_array_equal(store.read().result()[..., 0].T, data)


# -- sharded scales written by CloudVolume's shard builder --------------------------------------
def cv_write_sharded(path: Path, data: np.ndarray, mip: int = 0, skip_zero: bool = False) -> None:
    """Shard files as CloudVolume builds them (``make_shard_chunks``' encoding,
    ``ShardingSpecification.synthesize_shards``) from a whole (c,) z, y, x scale; chunks that
    are all 0 are left out when ``skip_zero`` (CloudVolume's ``delete_black_uploads``)."""
    cv = CloudVolume(f"file://{path}", mip=mip, progress=False)
    spec = cv.image.shard_spec(mip)
    gpts, codes = cv.image.morton_codes(cv.meta.bounds(mip), mip=mip, same_shard=False)
    xyzc = (data if data.ndim == 4 else data[np.newaxis]).transpose(3, 2, 1, 0)
    cs, size = np.asarray(cv.meta.chunk_size(mip)), np.asarray(cv.meta.volume_size(mip))
    labels = {}
    for g, code in zip(gpts, codes, strict=True):
        lo = np.asarray(g) * cs
        hi = np.minimum(lo + cs, size)
        part = xyzc[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if skip_zero and not part.any():
            continue
        labels[int(code)] = cv_chunks.encode(
            part, cv.meta.encoding(mip),
            block_size=cv.meta.compressed_segmentation_block_size(mip))
    directory = path / cv.meta.key(mip)
    directory.mkdir(parents=True, exist_ok=True)
    for name, blob in spec.synthesize_shards(labels).items():
        (directory / name).write_bytes(blob)


def sharded_layer(
    path: Path, spec: dict[str, Any], *, dtype: str = "uint64", kind: str = "segmentation",
    encoding: str = "compressed_segmentation", channels: int = 1,
    size: tuple[int, int, int] = (40, 36, 12), chunk: tuple[int, int, int] = (8, 8, 4),
    skip_zero: bool = False, data: np.ndarray | None = None,
) -> np.ndarray:
    info = CloudVolume.create_new_info(
        num_channels=channels, layer_type=kind, data_type=dtype, encoding=encoding,
        resolution=list(RES), voxel_offset=[-3, 5, 2], volume_size=list(size),
        chunk_size=list(chunk),
    )
    info["scales"][0]["sharding"] = {"@type": "neuroglancer_uint64_sharded_v1", **spec}
    CloudVolume(f"file://{path}", info=info, progress=False).commit_info()
    if data is None:
        lead = (channels,) if channels > 1 else ()
        data = data_for(lead + size[::-1], dtype, kind, encoding, 1)
    cv_write_sharded(path, data, skip_zero=skip_zero)
    assert all(p.suffix == ".shard" for p in (path / info["scales"][0]["key"]).iterdir())
    return cv_read(path)


SHARDED = [
    # id, spec, layer keywords
    ("identity-gzip-gzip", {"hash": "identity", "minishard_index_encoding": "gzip",
                            "data_encoding": "gzip"}, {}),
    ("identity-raw-raw", {"hash": "identity"}, {}),
    ("murmur-gzip-raw", {"hash": "murmurhash3_x86_128", "minishard_index_encoding": "gzip",
                         "data_encoding": "raw"}, {}),
    ("murmur-raw-gzip", {"hash": "murmurhash3_x86_128", "minishard_index_encoding": "raw",
                         "data_encoding": "gzip"}, {}),
    ("murmur-raw-uint16-image", {"hash": "murmurhash3_x86_128", "data_encoding": "gzip"},
     {"dtype": "uint16", "kind": "image", "encoding": "raw"}),
    ("identity-float32-2ch", {"hash": "identity", "data_encoding": "gzip"},
     {"dtype": "float32", "kind": "image", "encoding": "raw", "channels": 2}),
    ("identity-jpeg", {"hash": "identity"}, {"dtype": "uint8", "kind": "image",
                                             "encoding": "jpeg"}),
    ("identity-odd-chunks-one-shard", {"hash": "identity", "preshift_bits": 0,
                                       "minishard_bits": 0, "shard_bits": 0},
     {"chunk": (7, 11, 5)}),
]


@pytest.mark.parametrize(("spec", "kw"), [s[1:] for s in SHARDED], ids=[s[0] for s in SHARDED])
def test_cloudvolume_sharded_read_and_write(
    tmp_path: Path, spec: dict[str, Any], kw: dict[str, Any]
) -> None:
    path = tmp_path / "cv"
    bits = {"preshift_bits": 1, "minishard_bits": 2, "shard_bits": 3}
    truth = sharded_layer(path, {**bits, **spec}, **kw)
    encoding = kw.get("encoding", "compressed_segmentation")
    vol = voxgate.open(url(path), mode="r+")
    same(vol.read(), truth, "raw")
    assert vol.missing_chunks() == []
    dtype, kind = kw.get("dtype", "uint64"), kw.get("kind", "segmentation")
    lead = (kw["channels"],) if kw.get("channels", 1) > 1 else ()
    box = Box(vol.bounds.start + Vec(1, 3, 5), vol.bounds.stop - Vec(0, 2, 0))  # far x edge
    patch = data_for(lead + tuple(box.shape), dtype, kind, encoding, 9)
    vol.write(patch, box)
    expected = truth.copy()
    expected[(..., *box.slices(vol.bounds.start))] = patch
    theirs = cv_read(path)
    same(theirs, expected, encoding)
    np.testing.assert_array_equal(voxgate.open(url(path)).read(), theirs)  # the same decode


@pytest.mark.parametrize("hash_", ["identity", "murmurhash3_x86_128"])
def test_sharded_absent_chunks(tmp_path: Path, hash_: str) -> None:
    """Chunks CloudVolume left out of its shards read as 0 and are named as absent, whether a
    few chunks are looked up or the shard indexes are listed (more than 64 chunks)."""
    path = tmp_path / "cv"
    size = (48, 40, 20)
    data = data_for(size[::-1], "uint32", "segmentation", "raw", 4)
    data[data == 0] = 5
    data[0:4, 0:4, 0:8] = 0  # chunks (0, 0, 0) and (0, 0, 1): left out
    spec = {"hash": hash_, "preshift_bits": 2, "minishard_bits": 2,
            "shard_bits": 1 if hash_ == "identity" else 3,  # identity: shards wrap around
            "minishard_index_encoding": "gzip", "data_encoding": "raw"}
    truth = sharded_layer(path, spec, dtype="uint32", encoding="raw", size=size,
                          chunk=(4, 4, 4), skip_zero=True, data=data)
    np.testing.assert_array_equal(truth, data)
    vol = voxgate.open(url(path))
    np.testing.assert_array_equal(vol.read(), data)
    absent = [Vec(0, 0, 0), Vec(0, 0, 1)]
    assert vol.missing_chunks() == absent  # 300 chunks: one listing
    assert vol.missing_chunks(Box((2, 5, -3), (7, 10, 6))) == absent  # 12 chunks: lookups
    strict = voxgate.open(url(path), missing="error")
    with pytest.raises(MissingChunkError, match=r"\(0, 0, 0\), \(0, 0, 1\)") as info:
        strict.read()
    assert info.value.chunks == absent
    np.testing.assert_array_equal(strict.read(Box((6, 9, 5), (22, 45, 45))), data[4:, 4:, 8:])


@pytest.mark.parametrize("compress", [None, False], ids=["gz", "plain"])
def test_unsharded_absent_chunks(tmp_path: Path, compress: bool | None) -> None:
    path = tmp_path / "cv"
    cv_layer(path, compress=compress)
    directory = path / "4.5_4.5_40.0"
    for stem in ("2-9_14-25_-2-3", "30-32_25-32_3-6"):  # grid (1, 1, 1) and the far corner
        (directory / (stem + (".gz" if compress is None else ""))).unlink()
    truth = cv_read(path)
    vol = voxgate.open(url(path))
    np.testing.assert_array_equal(vol.read(), truth)
    assert not truth[5:10, 11:22, 7:14].any()
    absent = [Vec(1, 1, 1), Vec(2, 2, 5)]
    assert vol.missing_chunks() == absent
    strict = voxgate.open(url(path), missing="error")
    with pytest.raises(MissingChunkError, match=r"\(1, 1, 1\), \(2, 2, 5\)"):
        strict.read()
    np.testing.assert_array_equal(strict.read(Box((-7, 3, -5), (-2, 14, 2))), truth[:5, :11, :7])


def test_failed_writes_leave_every_file(tmp_path: Path) -> None:
    layers = {}
    for name, compress in (("gz", None), ("plain", False)):
        cv_layer(tmp_path / name, compress=compress)
        layers[name] = tmp_path / name
    sharded_layer(tmp_path / "sharded", {"hash": "identity", "preshift_bits": 1,
                                         "minishard_bits": 1, "shard_bits": 4},
                  dtype="uint16", kind="image", encoding="raw")
    layers["sharded"] = tmp_path / "sharded"
    for path in layers.values():
        vol = voxgate.open(url(path), mode="r+")
        start = vol.bounds.start
        box = Box(start + Vec(1, 2, 3), start + Vec(4, 6, 8))
        before = tree(path)
        stop = vol.bounds.stop
        attempts = [
            (DtypeError, np.full((3, 4, 5), 1.5), box),
            (DtypeError, np.full((3, 4, 5), 2**40), box),
            (DtypeError, np.ones((3, 4, 5), np.uint32), box),
            (InvalidRequestError, np.ones((3, 4, 6), np.uint16), box),
            (OutOfBoundsError, np.ones((3, 4, 5), np.uint16),
             Box(start - Vec(2, 0, 0), start + Vec(1, 4, 5))),  # before the first voxel
            (OutOfBoundsError, np.ones((3, 4, 5), np.uint16),
             Box(stop - Vec(3, 4, 4), stop + Vec(0, 0, 1))),  # past the far edge
        ]
        for error, array, where in attempts:
            with pytest.raises(error):
                vol.write(array, where)
            assert tree(path) == before, (error, where)


def test_downsample_keeps_unknown_info_keys(tmp_path: Path) -> None:
    path = tmp_path / "cv"
    lab = {"owner": "lab", "big": 2**60 + 1, "nested": [{"a": None}]}

    def edit(info: dict[str, Any]) -> None:
        info.update(mesh="mesh", skeletons="skeletons", lab_provenance=lab)
        info["scales"][0]["lab_scale_note"] = "kept"

    cv_layer(path, dtype="uint64", kind="segmentation", encoding="compressed_segmentation",
             block=(4, 4, 2), edit=edit)
    voxgate.downsample(url(path), 3, factors=[(1, 2, 3), (2, 2, 2)])
    info = json.loads((path / "info").read_text())
    assert info["lab_provenance"] == lab and info["mesh"] == "mesh"
    assert info["skeletons"] == "skeletons"
    assert info["scales"][0]["lab_scale_note"] == "kept"
    assert info["scales"][0]["compressed_segmentation_block_size"] == [4, 4, 2]
    assert [s["resolution"] for s in info["scales"]] == [[4.5, 4.5, 40], [13.5, 9, 40],
                                                          [27, 18, 80]]
    for mip in range(3):
        np.testing.assert_array_equal(voxgate.open(url(path), scale=mip).read(),
                                      cv_read(path, mip))
    assert voxgate.open(url(path)).meta.extra["lab_provenance"] == lab


# -- chunk ids and shard boxes agree with CloudVolume -------------------------------------------
@pytest.mark.parametrize("grid", [(5, 5, 3), (1, 7, 2), (9, 1, 1), (3, 17, 6)])
def test_chunk_ids_and_shard_boxes_match_cloudvolume(grid: tuple[int, int, int]) -> None:
    from cloudvolume.datasource.precomputed.common import compressed_morton_code
    from cloudvolume.lib import Vec as CVVec

    chunk = (7, 11, 5)
    size = tuple(g * c - 1 for g, c in zip(grid, chunk, strict=True))  # a truncated edge
    sc = Scale(0, Vec.from_xyz(size), Vec.from_xyz(chunk), VoxelSize(1, 1, 1),
               Vec(0, 0, 0), "raw", "s")
    points = [(x, y, z) for x in range(grid[0]) for y in range(grid[1]) for z in range(grid[2])]
    codes = compressed_morton_code([CVVec(*p) for p in points], CVVec(*grid))
    ours = [_compressed_morton(Vec.from_xyz(p), sc) for p in points]
    assert ours == [int(c) for c in codes]
    for low in range(0, 8):
        spec = ShardingSpecification("neuroglancer_uint64_sharded_v1", low // 2, "identity",
                                     low - low // 2, 64 - low).to_dict()
        theirs = image_shard_shape_from_spec(spec, size, chunk)
        assert tuple(_shard_shape(sc, spec).xyz()) == tuple(int(v) for v in theirs)


# -- bad info files -----------------------------------------------------------------------------
GOOD = {"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "uint8",
        "num_channels": 1, "scales": [{
            "key": "8_8_8", "size": [16, 16, 8], "resolution": [8, 8, 8],
            "voxel_offset": [0, 0, 0], "chunk_sizes": [[8, 8, 8]], "encoding": "raw"}]}


def _scale(**changes: Any) -> Any:
    return lambda info: info["scales"][0].update(changes)


def _drop(key: str) -> Any:
    return lambda info: info["scales"][0].pop(key)


BAD_INFOS = [
    # id, change, what the message says
    ("size-0", _scale(size=[16, 0, 8]), r"scale 0 \('8_8_8'\) size must be three integers >= 1"),
    ("size-negative", _scale(size=[16, -3, 8]), r"size must be three integers >= 1"),
    ("no-size", _drop("size"), r"size must be .* got None"),
    ("chunk-0", _scale(chunk_sizes=[[8, 0, 8]]), r"chunk_sizes must be a non-empty list"),
    ("chunk-sizes-empty", _scale(chunk_sizes=[]), r"chunk_sizes must be a non-empty list"),
    ("chunk-sizes-flat", _scale(chunk_sizes=[8, 8, 8]), r"chunk_sizes must be .* got \[8, 8"),
    ("no-key", _drop("key"), r"scale 0 key must be a non-empty string"),
    ("key-not-string", _scale(key=8), r"scale 0 key must be a non-empty string"),
    ("key-empty", _scale(key=""), r"scale 0 key must be a non-empty string"),
    ("resolution-0", _scale(resolution=[0, 8, 8]), r"resolution must be three numbers > 0"),
    ("resolution-text", _scale(resolution=["8nm", 8, 8]), r"resolution must be three numbers"),
    ("offset-float", _scale(voxel_offset=[1.5, 0, 0]), r"voxel_offset must be three integers"),
    ("scales-empty", lambda i: i.update(scales=[]), r"scales must be a non-empty list"),
    ("scales-object", lambda i: i.update(scales={"0": {}}), r"scales must be a non-empty list"),
    ("scale-not-object", lambda i: i.update(scales=[5]), r"scale 0 must be a JSON object"),
    ("no-num-channels", lambda i: i.pop("num_channels"), r"num_channels must be an integer"),
    ("num-channels-float", lambda i: i.update(num_channels=2.5), r"num_channels .* got 2\.5"),
    ("num-channels-0", lambda i: i.update(num_channels=0), r"num_channels must be an integer"),
    ("no-type", lambda i: i.pop("type"), r"type must be 'image' or 'segmentation', got None"),
    ("data-type-number", lambda i: i.update(data_type=3), r"data_type must be one of .* got 3"),
    ("encoding-number", _scale(encoding=3), r"encoding must be a string, got 3"),
    ("cseg-without-block-size", lambda i: (i.update(type="segmentation", data_type="uint32"),
                                           _scale(encoding="compressed_segmentation")(i)),
     r"needs compressed_segmentation_block_size"),
    ("cseg-of-uint8", _scale(encoding="compressed_segmentation",
                             compressed_segmentation_block_size=[8, 8, 8]),
     r"compressed_segmentation, which holds uint32 or uint64, not 'uint8'"),
    ("jpeg-of-uint16", lambda i: (i.update(data_type="uint16"), _scale(encoding="jpeg")(i)),
     r"jpeg, which holds uint8 with 1 or 3 channels"),
    ("sharding-bad-hash", _scale(sharding={"@type": "neuroglancer_uint64_sharded_v1",
                                           "hash": "md5", "preshift_bits": 0,
                                           "minishard_bits": 0, "shard_bits": 0}),
     r"bad sharding spec .*hash must be"),
    ("sharded-two-chunk-sizes", _scale(chunk_sizes=[[8, 8, 8], [4, 4, 4]], sharding={
        "@type": "neuroglancer_uint64_sharded_v1", "hash": "identity", "preshift_bits": 0,
        "minishard_bits": 0, "shard_bits": 0}), r"exactly one entry in chunk_sizes"),
    ("upper-case-data-type", lambda i: i.update(data_type="UINT8"),
     r"tensorstore refuses the info .*data_type"),
]


@pytest.mark.parametrize(("change", "match"), [b[1:] for b in BAD_INFOS],
                         ids=[b[0] for b in BAD_INFOS])
def test_bad_info_is_a_clear_error(tmp_path: Path, change: Any, match: str) -> None:
    """Each a voxgate InvalidRequestError naming the key, at open (before, a scale of size 0
    opened and read as an empty array, and tensorstore's refusals surfaced at the first read
    as a CorruptChunkError about a chunk "neuroglancer_precomputed" that "could not be
    decoded").  tensorstore reads ``data_type`` in lower case only (so does CloudVolume); that
    one is refused at the first read."""
    info = copy.deepcopy(GOOD)
    change(info)
    (tmp_path / "info").write_text(json.dumps(info))
    with pytest.raises(InvalidRequestError, match=match) as caught:
        voxgate.open(url(tmp_path)).read()
    assert isinstance(caught.value, VoxgateError)
    assert "could not be decoded" not in str(caught.value)


@pytest.mark.parametrize(("change", "match"), [b[1:] for b in BAD_INFOS[:-1]],
                         ids=[b[0] for b in BAD_INFOS[:-1]])
def test_mesh_and_skeleton_layers_check_the_info_alike(tmp_path: Path, change: Any,
                                                       match: str) -> None:
    """The layer meshes and skeletons are read from and written into checks its info by the
    same rules as the volume (one check, formats.precomputed_info.check_layer_info): before,
    it had checks of its own, and read a num_channels of 2.5 as 2 and a missing one as 1."""
    info = copy.deepcopy(GOOD)
    change(info)
    (tmp_path / "info").write_text(json.dumps(info))
    for mode in ("r", "r+"):
        with pytest.raises(InvalidRequestError, match=match):
            open_layer(url(tmp_path), mode)
