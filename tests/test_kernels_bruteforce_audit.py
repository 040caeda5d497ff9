"""Every compute or codec kernel voxgate did not write, against a brute-force numpy answer on
odd shapes, through the public entry point that uses it (an outside check once found a pyramid
level silently wrong at odd edges).

Inventory: third-party kernel -> where voxgate calls it -> what exposes it -> the test that
compares it with brute force on odd (non-power-of-2, non-chunk-multiple, 1-voxel-thick) shapes.
Rows marked (here) are added by this module; the others existed.

==========================  ==========================================  ==========================
kernel                      called at (exposed by)                      brute-force check
==========================  ==========================================  ==========================
tinybrain mean / mode       services/downsample.py:206,283              services/test_downsample_
                            (voxgate.downsample)                        reference (hypothesis,
                                                                        shapes 1..10); (here):
                                                                        (3,3,3), (3,1,1) factors,
                                                                        1-thick and (13,1,1)
cc3d connected_components   services/connected_components.py:146        services/test_kernels_
                            (voxgate.connected_components)              reference (flood fill);
                                                                        (here): 1-thick public
cc3d.statistics, fastremap  services/label_stats.py:58-59               test_kernels_reference;
                            (voxgate.label_stats)                       (here): np.argwhere loop
                                                                        on 1-thick shapes, store
fastremap.remap/renumber    services/connected_components.py:97,        test_kernels_reference
                            skeletonize.py:359, relay/stats.py:278      (test_remap_kernel)
zmesh (marching cubes,      services/mesh.py:153,362,                   services/test_mesh_cc_
simplification)             formats/mesh/multires.py:243 (voxgate.mesh) kernels (closed, volume);
                                                                        (here): one voxel in each
                                                                        corner, 1-thick slabs and
                                                                        volumes: closed, genus 0,
                                                                        every vertex on a face of
                                                                        the label
kimimaro (+cc3d, fastremap) services/skeletonize.py:132,358-360         test_label_stats_skeleton_
                            (voxgate.skeletonize)                       audit (inside); (here):
                                                                        1-thick volumes, rods on
                                                                        the volume's edge
scipy.sparse.csgraph        services/skeletonize.py:450,572             same as kimimaro
compressed_segmentation     formats/precomputed_chunks.py:126           formats/test_codecs_
(encoder; decoder is ours)  (precomputed layers with .gz chunks, relay) reference (brute decoder);
                                                                        (here): tensorstore's
                                                                        encoder -> our decoder,
                                                                        our encoder -> CloudVolume
                                                                        and tensorstore, 32-bit
                                                                        blocks
tensorstore (cseg, jpeg,    remotes/precomputed, zarr, n5 (every        remotes/test_precomputed_
png, raw, gzip, blosc,      ts read/write)                              cloudvolume_audit (cseg,
zstd codecs)                                                            jpeg, CloudVolume-made
                                                                        png); (here): png and jpeg
                                                                        written by voxgate read by
                                                                        CloudVolume, png written
                                                                        by CloudVolume read back
simplejpeg                  formats/precomputed_chunks.py:97,115,       formats/test_codecs_
                            remotes/knossos.py:660                      reference (Pillow oracle)
PIL (png, jpeg)             remotes/knossos.py:668                      remotes/test_knossos*
DracoPy                     formats/mesh/draco.py:14,42                 formats/test_mesh (decode
                                                                        of Igneous-made blobs)
blosc                       remotes/boss/remote.py:13, relay/boss/      relay/test_boss_stored_
                            codecs.py:13, relay/cache/tiers.py:17       body, remotes/test_boss
lz4.block                   remotes/dvid/remote.py:13                   formats/test_dvid_golden,
                                                                        test_codecs_reference
zstandard, brotli, gzip     storage/compression.py:30,34                test_object_storage*
scipy.ndimage               services/synapses.py:99,                    test_kernels_reference
                            proofread/splitting.py:71,79                (synapse_table, split)
skimage watershed           proofread/splitting.py:75                   test_kernels_reference
                                                                        (seeded split rules)
onnxruntime                 services/predict.py:189, models:111         test_kernels_reference
                                                                        (windowed mean model)
cc3d (model evaluation)     models/evaluate.py:67                       test_kernels_reference
wkw                         remotes/webknossos.py:352                   remotes/test_webknossos_
                                                                        peer
tifffile                    remotes/tiff/pages.py:37                    remotes/test_tiff*
edt, numba, fpzip           not called by voxgate (edt only inside      -
                            kimimaro)
==========================  ==========================================  ==========================
"""

from __future__ import annotations

import gzip
import itertools
import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts

import voxgate
from voxgate.formats.precomputed_chunks import decode_chunk

from .services.brute_reference import components
from .services.numpy_reference import downsample_scales

BIG = 2**64 - 3


def odd_labels(shape: Sequence[int], seed: int, values: int = 3, density: float = 0.6,
               dtype: str = "uint64") -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.array([0, 1, 2**40 + 7, BIG][: values + 1], dtype=np.uint64)
    lab = ids[1:][rng.integers(0, values, tuple(shape))]
    lab[rng.random(tuple(shape)) >= density] = 0
    return lab.astype(dtype)


# -- downsampling (tinybrain and our own numpy kernels) ----------------------------------------

DS_SHAPES = [(7, 5, 3), (1, 9, 4), (13, 1, 1), (3, 1, 7), (2, 2, 1)]
#: (z, y, x); (1, 2, 2) is CloudVolume's (2, 2, 1)
DS_FACTORS = [(1, 2, 2), (2, 2, 1), (2, 2, 2), (3, 3, 3), (1, 3, 3), (3, 1, 1)]
DS_KINDS = [("image", "uint8"), ("image", "uint16"), ("image", "float32"), ("image", "int16"),
            ("segmentation", "uint64"), ("segmentation", "uint32")]


def ds_data(kind: str, dtype: str, shape: Sequence[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if kind == "segmentation":
        ids = np.array([0, 1, 2, np.iinfo(dt).max], dtype=dt)
        return ids[rng.integers(0, 4, tuple(shape))]
    if dt.kind == "f":
        return (rng.standard_normal(tuple(shape)) * 100).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, tuple(shape), dtype=dt, endpoint=True)


@pytest.mark.parametrize(("kind", "dtype"), DS_KINDS)
def test_downsample_numpy_input_every_factor_odd_shapes(kind: str, dtype: str) -> None:
    """Two levels of each factor on each odd shape: mean (floor) / first most frequent of the
    voxels each output voxel covers, partial blocks at the far edges counting what they cover
    (tests/services/numpy_reference.py, one Python step per output voxel)."""
    for shape, f in itertools.product(DS_SHAPES, DS_FACTORS):
        data = ds_data(kind, dtype, shape, zlib.crc32(repr((shape, f)).encode()))
        # two levels, or one where the first is a single voxel already (refused, by design)
        levels = 1 if all(-(-s // k) == 1 for s, k in zip(shape, f, strict=True)) else 2
        want = downsample_scales(data, [f] * levels, kind)
        vol = voxgate.downsample(data, levels + 1, factors=[f] * levels)
        assert vol.meta.kind == kind, dtype  # numpy input: 32/64-bit integers are labels
        for k, w in enumerate(want, start=1):
            got = vol.at_scale(k).read()
            assert got.shape == w.shape and got.dtype == w.dtype, (shape, f, k)
            if w.dtype.kind == "f":
                np.testing.assert_allclose(got, w, rtol=1e-6, err_msg=str((shape, f, k)))
            else:
                np.testing.assert_array_equal(got, w, err_msg=str((shape, f, k)))


@pytest.mark.parametrize(("kind", "dtype"), [("image", "uint8"), ("image", "float32"),
                                             ("segmentation", "uint8"),
                                             ("segmentation", "uint64")])
@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 9, 4), (13, 1, 1)])
def test_downsample_stored_blockwise_odd_chunks(tmp_path: Path, kind: str, dtype: str,
                                                shape: tuple[int, int, int]) -> None:
    """A zarr store in chunks that divide nothing, block by block (the smallest blocks), each
    factor kind; the stored pyramid equals the brute-force one."""
    factors = [(1, 2, 2), (3, 3, 3), (2, 1, 1)]
    data = ds_data(kind, dtype, shape, 5)
    want = downsample_scales(data, factors, kind)
    url = f"zarr://{tmp_path}/v.zarr"
    vol = voxgate.create(url, shape=shape, chunks=(2, 3, 2), dtype=dtype,
                         voxel_size=(40, 8, 8), kind=kind)
    vol[:] = data
    voxgate.downsample(url, len(factors) + 1, factors=factors, block=(1, 1, 1), workers=1)
    again = voxgate.open(url)
    for k, w in enumerate(want, start=1):
        got = again.at_scale(k).read()
        assert got.shape == w.shape, (k, got.shape, w.shape)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(got, w, rtol=1e-6)
        else:
            np.testing.assert_array_equal(got, w, err_msg=f"scale {k}")


# -- label_stats (cc3d.statistics, fastremap) ---------------------------------------------------

def stats_by_argwhere(lab: np.ndarray, origin: Sequence[int]) -> dict[int, tuple[Any, ...]]:
    """{id: (count, lo, hi, centroid)} from np.unique and np.argwhere, one id at a time."""
    out = {}
    for i in np.unique(lab).tolist():
        if i == 0:
            continue
        where = np.argwhere(lab == np.asarray(i, lab.dtype)) + np.asarray(origin)
        out[int(i)] = (len(where), tuple(where.min(axis=0).tolist()),
                       tuple((where.max(axis=0) + 1).tolist()),
                       tuple(where.mean(axis=0).tolist()))
    return out


def check_stats(df: Any, lab: np.ndarray, origin: Sequence[int]) -> None:
    want = stats_by_argwhere(lab, origin)
    got = df.set_index("id")
    assert sorted(int(i) for i in got.index) == sorted(want)
    for i, (count, lo, hi, centroid) in want.items():
        row = got.loc[i]
        assert int(row.voxel_count) == count, i
        assert (int(row.z0), int(row.y0), int(row.x0)) == lo, i
        assert (int(row.z1), int(row.y1), int(row.x1)) == hi, i
        np.testing.assert_allclose([row.centroid_z, row.centroid_y, row.centroid_x], centroid,
                                   rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("shape", [(1, 9, 4), (13, 1, 1), (1, 1, 1), (7, 5, 3), (2, 1, 11)])
@pytest.mark.parametrize("dtype", ["uint8", "uint32", "uint64"])
def test_label_stats_numpy_input_thin_shapes(shape: tuple[int, int, int], dtype: str) -> None:
    values = 3 if dtype != "uint8" else 2
    lab = odd_labels(shape, sum(shape), values=values, dtype="uint64")
    lab = lab if dtype == "uint64" else np.where(lab > 0, lab % 200 + 1, 0).astype(dtype)
    check_stats(voxgate.label_stats(lab), lab, (0, 0, 0))
    full = np.full(shape, np.iinfo(dtype).max, dtype)  # one id filling the volume
    check_stats(voxgate.label_stats(full), full, (0, 0, 0))


def test_label_stats_store_with_offset_blockwise(tmp_path: Path) -> None:
    shape, offset = (5, 1, 13), (-3, 7, 2)
    lab = odd_labels(shape, 3)
    vol = voxgate.create(f"zarr://{tmp_path}/s.zarr", shape=shape, chunks=(2, 1, 3),
                         dtype="uint64", voxel_size=(40, 8, 8), kind="segmentation",
                         offset=offset)
    vol[:] = lab
    for block in (None, (1, 1, 1), (3, 1, 5)):
        check_stats(voxgate.label_stats(vol.url, block=block, workers=1), lab, offset)


# -- connected components (cc3d) vs a pure-Python flood fill -----------------------------------

@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize(("shape", "block"), [((1, 7, 9), (1, 2, 3)), ((9, 1, 1), (2, 1, 1)),
                                              ((1, 1, 1), None), ((3, 5, 1), (1, 1, 1)),
                                              ((4, 3, 5), (3, 2, 4))])
def test_connected_components_thin_volumes(connectivity: int, shape: tuple[int, int, int],
                                           block: tuple[int, int, int] | None) -> None:
    for seed in range(3):
        lab = odd_labels(shape, seed * 7 + connectivity, values=2, density=0.55)
        want = components(lab, connectivity)
        got = voxgate.connected_components(lab, connectivity=connectivity)
        np.testing.assert_array_equal(np.asarray(got.read() if hasattr(got, "read") else got),
                                      want)
        if block is not None:
            got = voxgate.connected_components(lab, connectivity=connectivity, block=block,
                                               workers=1)
            np.testing.assert_array_equal(
                np.asarray(got.read() if hasattr(got, "read") else got), want)


# -- compressed_segmentation: peer encoders and decoders, both directions ----------------------

#: (chunk z, y, x), (block z, y, x), (volume z, y, x), labels; the last has 41**3 distinct
#: labels in one block: 32-bit encoded values
CSEG_CASES = [((3, 5, 7), (1, 2, 3), (4, 9, 13), 300), ((1, 1, 9), (1, 1, 4), (1, 3, 17), 9),
              ((5, 3, 1), (5, 3, 1), (7, 3, 2), 2), ((2, 6, 5), (8, 8, 8), (3, 7, 9), 1),
              ((13, 1, 41), (13, 1, 41), (13, 1, 41), 600)]


def cseg_info(dtype: str, chunk: Sequence[int], block: Sequence[int],
              size: Sequence[int]) -> dict[str, Any]:
    return {"@type": "neuroglancer_multiscale_volume", "type": "segmentation",
            "data_type": dtype, "num_channels": 1,
            "scales": [{"key": "s0", "size": list(size[::-1]), "resolution": [4, 4, 40],
                        "voxel_offset": [0, 0, 0], "chunk_sizes": [list(chunk[::-1])],
                        "encoding": "compressed_segmentation",
                        "compressed_segmentation_block_size": list(block[::-1])}]}


def many_labels(shape: Sequence[int], dtype: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.asarray(np.iinfo(dtype).max, dtype)
    pool = top - rng.choice(2**31, n, replace=False).astype(dtype)
    return pool[rng.integers(0, n, tuple(shape))]


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize(("chunk", "block", "size", "n"), CSEG_CASES)
def test_cseg_tensorstore_encoded_decoded_by_voxgate(tmp_path: Path, dtype: str,
                                                     chunk: tuple[int, ...],
                                                     block: tuple[int, ...],
                                                     size: tuple[int, ...], n: int) -> None:
    """tensorstore's own encoder (not the package voxgate encodes with) writes a layer; its
    chunk files, gzipped under CloudVolume's .gz names, are read through voxgate's decoder."""
    data = many_labels(size, dtype, n, sum(size))
    if n == 600:
        # every voxel its own label in the one block: 32-bit encoded values
        data = (np.iinfo(dtype).max - np.arange(data.size, dtype=dtype)).reshape(size)
    layer = tmp_path / "ts"
    layer.mkdir()
    (layer / "info").write_text(json.dumps(cseg_info(dtype, chunk, block, size)))
    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{layer}/"}).result()
    store[..., 0].write(data.T).result()
    files = [p for p in (layer / "s0").iterdir() if p.is_file()]
    assert files
    for p in files:  # each chunk file alone, by our decoder
        (x0, x1), (y0, y1), (z0, z1) = (tuple(int(v) for v in r.split("-"))
                                        for r in p.name.split("_"))
        got = decode_chunk(p.read_bytes(), "compressed_segmentation",
                           (1, z1 - z0, y1 - y0, x1 - x0), np.dtype(dtype), block_size=block,
                           name=p.name)
        np.testing.assert_array_equal(got[0], data[z0:z1, y0:y1, x0:x1], err_msg=p.name)
        p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes()))
        p.unlink()
    np.testing.assert_array_equal(voxgate.open(f"precomputed://{layer}").read(), data)


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize(("chunk", "block", "size", "n"), CSEG_CASES[:4])
def test_cseg_written_by_voxgate_read_by_cloudvolume_and_tensorstore(
        tmp_path: Path, dtype: str, chunk: tuple[int, ...], block: tuple[int, ...],
        size: tuple[int, ...], n: int) -> None:
    """voxgate's encoder (a .gz layer: CloudVolume's compress=True) and tensorstore's (a
    plain layer, through voxgate.create), each read by CloudVolume; unaligned writes."""
    from cloudvolume import CloudVolume

    data = many_labels(size, dtype, n, 7)
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "info").write_text(json.dumps(cseg_info(dtype, chunk, block, size)))
    (gz / "s0").mkdir()
    (gz / "s0" / "placeholder.gz").write_bytes(gzip.compress(b""))  # marks the .gz layout
    vol = voxgate.open(f"precomputed://{gz}", mode="r+")
    vol[:] = data
    z, y, x = (s // 2 for s in size)
    where = np.s_[z:z + 1, y:min(y + 2, size[1]), x:min(x + 3, size[2])]  # an unaligned patch
    patch = many_labels(data[where].shape, dtype, 5, 8)
    vol[where] = patch
    data[where] = patch
    (gz / "s0" / "placeholder.gz").unlink()
    assert all(p.suffix == ".gz" for p in (gz / "s0").iterdir())
    cv = CloudVolume(f"file://{gz}", progress=False, fill_missing=False)
    np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0].T, data)

    plain = voxgate.create(f"precomputed://{tmp_path}/plain", shape=size, chunks=chunk,
                           dtype=dtype, voxel_size=(40, 4, 4), kind="segmentation",
                           encoding="compressed_segmentation")  # (8, 8, 8) blocks
    plain[:] = data
    cv = CloudVolume(f"file://{tmp_path}/plain", progress=False, fill_missing=False)
    np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0].T, data)


def test_cseg_gz_layer_takes_a_write_of_one_whole_chunk(tmp_path: Path) -> None:
    """A write of exactly one chunk into a CloudVolume layer of .gz chunks: the piece the
    volume hands on is a view of a read-only (broadcast) array, which the compressed_segmentation
    package refused ("buffer source array is read-only"), so the write failed.  A frozen
    array given by the caller likewise."""
    from cloudvolume import CloudVolume

    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="segmentation", data_type="uint64",
        encoding="compressed_segmentation", resolution=[4, 4, 40], voxel_offset=[0, 0, 0],
        volume_size=[7, 5, 3], chunk_size=[4, 5, 2], compressed_segmentation_block_size=[3, 2, 1])
    cv = CloudVolume(f"file://{tmp_path}", info=info, progress=False, compress=True)
    cv.commit_info()
    cv[:, :, :] = np.zeros((7, 5, 3, 1), np.uint64)
    vol = voxgate.open(f"precomputed://{tmp_path}", mode="r+")
    data = many_labels((3, 5, 7), "uint64", 6, 3)
    vol[0:2, 0:5, 0:4] = data[0:2, 0:5, 0:4].copy()  # one whole chunk, a C-order array
    frozen = data[2:3, :, 4:7].copy()
    frozen.setflags(write=False)
    vol[2:3, :, 4:7] = frozen  # the far corner chunk: cut by the volume's edge
    want = np.zeros_like(data)
    want[0:2, 0:5, 0:4] = data[0:2, 0:5, 0:4]
    want[2:3, :, 4:7] = frozen
    cv = CloudVolume(f"file://{tmp_path}", progress=False, fill_missing=False)
    np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0].T, want)
    np.testing.assert_array_equal(vol.read(), want)


# -- png and jpeg chunks written by voxgate, decoded by Pillow and CloudVolume -----------------

def pillow_layer(layer: Path, key: str, shape: Sequence[int], channels: int,
                 dtype: str) -> np.ndarray:
    """Every chunk file of a scale decoded by Pillow as the spec lays it out (an image x wide
    and y * z high, channels interleaved), put together voxel by voxel."""
    from PIL import Image

    out = np.zeros((channels, *shape), dtype)
    for p in (layer / key).iterdir():
        (x0, x1), (y0, y1), (z0, z1) = (tuple(int(v) for v in r.split("-"))
                                        for r in p.name.split("_"))
        img = np.asarray(Image.open(p))
        img = img.reshape(img.shape[0], img.shape[1], -1)
        assert img.shape == ((z1 - z0) * (y1 - y0), x1 - x0, channels), p.name
        for c, z, y, x in itertools.product(range(channels), range(z1 - z0), range(y1 - y0),
                                            range(x1 - x0)):
            out[c, z0 + z, y0 + y, x0 + x] = img[z * (y1 - y0) + y, x, c]
    return out if channels > 1 else out[0]


@pytest.mark.parametrize(("encoding", "dtype", "channels"), [
    ("png", "uint8", 1), ("png", "uint16", 1), ("jpeg", "uint8", 1), ("jpeg", "uint8", 3)])
def test_png_jpeg_written_by_voxgate_decoded_by_pillow(tmp_path: Path, encoding: str,
                                                       dtype: str, channels: int) -> None:
    """(CloudVolume reads 1-channel jpeg here too; it cannot be the oracle of 3-channel jpeg,
    whose pixels it reads as planes though it writes them interleaved, nor of png, for which
    it needs pyspng, not installed.)"""
    shape, chunks = (5, 13, 11), (2, 5, 4)  # z, y, x: nothing divides
    lead = (channels,) if channels > 1 else ()
    z, y, x = np.indices(shape)
    smooth = 128 + 60 * np.sin(x / 4) * np.cos(y / 5) + 20 * np.sin(z / 2)
    data = np.broadcast_to(np.round(smooth), lead + shape).astype(dtype)
    if encoding == "png":
        data = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, lead + shape,
                                                 dtype=dtype, endpoint=True)
    url = f"precomputed://{tmp_path}/l"
    vol = voxgate.create(url, shape=shape, chunks=chunks, dtype=dtype, voxel_size=(40, 4, 4),
                         encoding=encoding, num_channels=channels)
    vol[:] = data
    key = json.loads((tmp_path / "l" / "info").read_text())["scales"][0]["key"]
    theirs = pillow_layer(tmp_path / "l", key, shape, channels, dtype)
    ours = voxgate.open(url).read()
    if encoding == "png":
        np.testing.assert_array_equal(theirs, data)
        np.testing.assert_array_equal(ours, data)
        return
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2  # two jpeg decoders
    diff = np.abs(theirs.astype(int) - data.astype(int))
    assert diff.mean() < 8 and diff.max() < 48, (diff.mean(), diff.max())
    if channels == 1:
        from cloudvolume import CloudVolume

        cv = CloudVolume(f"file://{tmp_path}/l", progress=False, fill_missing=False)
        np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0].T, ours)


# -- meshes (zmesh): closed, genus 0, vertices on the label's faces ----------------------------

def check_surface(m: Any, mask: np.ndarray, vs: Sequence[float], offset: Sequence[int],
                  what: str) -> None:
    """Every edge in exactly two faces; V - E + F = 2 per connected piece (a sphere each);
    every vertex (x, y, z nm) on a voxel face between a voxel of ``mask`` and one outside it
    (or outside the volume): one coordinate on a voxel boundary, the other two at voxel
    centres."""
    import trimesh

    f = np.asarray(m.faces, np.int64)
    v = np.asarray(m.vertices, np.float64)
    assert len(f), what
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, count = np.unique(edges, axis=0, return_counts=True)
    assert (count == 2).all(), f"{what}: {int((count != 2).sum())} open edges"
    t = trimesh.Trimesh(v, f, process=False)
    assert t.is_watertight and t.volume > 0, what
    pieces = len(t.split(only_watertight=False))
    used = len(np.unique(f))
    assert used - len(uniq) + len(f) == 2 * pieces, f"{what}: not {pieces} sphere(s)"
    zyx = v[:, ::-1] / np.asarray(vs, float) - np.asarray(offset, float)
    pad = np.pad(mask, 1)
    for p in zyx:
        on_plane = np.isclose(p, np.rint(p), atol=1e-4)
        at_centre = np.isclose(p - 0.5, np.rint(p - 0.5), atol=1e-4)
        assert on_plane.sum() == 1 and at_centre.sum() == 2, f"{what}: vertex {p}"
        a = int(np.flatnonzero(on_plane)[0])
        idx = [int(np.rint(c - 0.5)) + 1 for c in p]  # +1: the padding
        lo, hi = list(idx), list(idx)
        lo[a] = int(np.rint(p[a]))  # the voxels on either side of the plane (padded index)
        hi[a] = lo[a] + 1
        assert pad[tuple(lo)] != pad[tuple(hi)], f"{what}: vertex {p} is not on a face"


def mesh_cases() -> list[tuple[str, np.ndarray]]:
    cases = []
    shape = (5, 7, 3)
    for corner in itertools.product(*((0, s - 1) for s in shape)):
        lab = np.zeros(shape, np.uint64)
        lab[corner] = BIG
        cases.append((f"voxel at {corner}", lab))
    for ax, end in itertools.product(range(3), (0, -1)):
        lab = np.zeros(shape, np.uint64)
        sl: list[Any] = [slice(None)] * 3
        sl[ax] = end
        lab[tuple(sl)] = 7
        cases.append((f"slab axis {ax} end {end}", lab))
    cases.append(("1-thick volume, filled", np.full((1, 5, 4), 3, np.uint64)))
    cases.append(("rod filling a (9, 1, 1) volume", np.full((9, 1, 1), 3, np.uint64)))
    lab = np.zeros((1, 6, 7), np.uint64)
    lab[0, 1:5, 2:6] = 5
    lab[0, 0, :] = 9  # a row along the volume's edge
    cases.append(("1-thick volume, two ids", lab))
    return cases


@pytest.mark.parametrize("block", [None, (2, 3, 2)])
def test_meshes_of_thin_segments_at_the_volume_edge_are_closed(block: Any) -> None:
    for what, lab in mesh_cases():
        got = voxgate.mesh(lab, voxel_size=(1, 1, 1), block=block)
        ids = [int(i) for i in np.unique(lab) if i]
        assert sorted(got) == ids, what
        for i in ids:
            check_surface(got[i], lab == np.uint64(i), (1, 1, 1), (0, 0, 0), f"{what}, id {i}")


def test_mesh_of_a_store_with_offset_and_anisotropic_voxels(tmp_path: Path) -> None:
    lab = np.zeros((3, 1, 5), np.uint64)
    lab[:, 0, 4] = 11  # a rod on the volume's far x edge, one voxel thick in y
    lab[0, 0, 0] = 12
    offset, vs = (-2, 5, 3), (40.0, 8.0, 4.0)
    vol = voxgate.create(f"zarr://{tmp_path}/m.zarr", shape=lab.shape, chunks=(2, 1, 2),
                         dtype="uint64", voxel_size=vs, kind="segmentation", offset=offset)
    vol[:] = lab
    got = voxgate.mesh(vol)
    for i in (11, 12):
        check_surface(got[i], lab == i, vs, offset, f"id {i}")


# -- skeletons (kimimaro): every vertex in its label --------------------------------------------

def test_skeletons_of_thin_segments_stay_inside() -> None:
    lab = np.zeros((1, 7, 23), np.uint64)
    lab[0, 2:5, :] = BIG  # a 1-thick plate across the whole volume
    lab[0, 6, 1:22] = 4  # a 1x1 rod on the volume's edge
    rod = np.full((1, 1, 19), 9, np.uint64)
    for what, labels in (("plate", lab), ("rod volume", rod)):
        for block in (None, (1, 4, 8)):
            got = voxgate.skeletonize(labels, voxel_size=(1, 1, 1), dust_threshold=0,
                                      block=block)
            for i in (int(v) for v in np.unique(labels) if v):
                s = got[i]
                idx = np.asarray(s.vertices, np.float64)[:, ::-1] - 0.5
                r = np.rint(idx).astype(np.int64)
                np.testing.assert_allclose(idx, r, atol=1e-3, err_msg=f"{what} {i}")
                assert ((r >= 0) & (r < labels.shape)).all(), (what, i, block)
                assert (labels[r[:, 0], r[:, 1], r[:, 2]] == np.uint64(i)).all(), (what, i)
                assert len(s.vertices) >= 2 and len(s.edges) == len(s.vertices) - 1, (what, i)
