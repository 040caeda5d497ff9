"""Dtypes at the edges: signed ids, 64-bit values above 2**53, NaN / +-inf / -0.0 and fill
values other than 0, through copy, downsample, the relay's two dialects and the Services.

Each store is read back by its own library (zarr-python, h5py), the relay by CloudVolume,
tensorstore and the real intern client, and the kernels are checked against numpy brute force.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import voxgate
import voxgate.transfer
from voxgate.errors import InvalidRequestError
from voxgate.services.downsample import downsample_kernel

from .relay.conftest import RelayProcess, free_port, start_relay

# -- copy ---------------------------------------------------------------------------------------


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.mark.parametrize("dst", ["zarr", "hdf5"])
def test_copy_keeps_a_block_of_negative_zero(tmp_path: Path, dst: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A block holding only -0.0 compared equal to the fill value 0 (``==``), so a copy into a
    destination it created skipped it and the destination read +0.0 there."""
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 4 * 8 * 8 * 4)  # one chunk per block
    data = np.full((4, 16, 16), -0.0, np.float32)
    data[:, 8:, 8:] = 2.5  # one block of real values, three of -0.0
    src = voxgate.create(f"zarr://{tmp_path}/s.zarr", shape=data.shape, dtype="float32",
                         chunks=(4, 8, 8), voxel_size=(1, 1, 1))
    src[:] = data
    url = (f"zarr://{tmp_path}/d.zarr" if dst == "zarr" else f"hdf5://{tmp_path}/d.h5#/v")
    report = voxgate.copy(f"zarr://{tmp_path}/s.zarr", url, progress=False)
    assert report.blocks_total == 4
    assert report.blocks_empty == 0  # none of them is the fill value
    if dst == "zarr":
        theirs = np.asarray(zarr.open_array(f"{tmp_path}/d.zarr/0")[:])
    else:
        with h5py.File(tmp_path / "d.h5", "r") as f:
            theirs = np.asarray(f["v"][:])
    assert np.signbit(theirs[:, :8]).all()
    assert _bits(theirs) == _bits(data)
    assert _bits(voxgate.open(url).read()) == _bits(data)


def test_copy_leaves_blocks_of_a_nan_fill_absent(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN != NaN, so a block of a NaN fill value was never recognised as fill: every absent
    source chunk was written out in full.  It is now left absent, and reads as NaN."""
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 4 * 8 * 8 * 4)
    src = zarr.create_array(tmp_path / "s.zarr", shape=(4, 16, 16), chunks=(4, 8, 8),
                            dtype="float32", fill_value=float("nan"))
    src[:, :8, :8] = np.arange(256, dtype=np.float32).reshape(4, 8, 8)
    report = voxgate.copy(f"zarr://{tmp_path}/s.zarr", f"zarr://{tmp_path}/d.zarr",
                          progress=False)
    assert (report.blocks_total, report.blocks_empty) == (4, 3)
    theirs = zarr.open_array(tmp_path / "d.zarr" / "0")
    assert np.isnan(theirs.fill_value)
    got = np.asarray(theirs[:])
    assert _bits(got) == _bits(np.asarray(src[:]))
    assert np.isnan(got[:, 8:]).all()


@pytest.mark.parametrize(("dtype", "fill"), [("uint8", 255), ("int16", -1),
                                              ("uint64", 2**63 + 1), ("float64", -0.0)])
def test_copy_keeps_a_fill_value_other_than_0(tmp_path: Path, dtype: str, fill: float,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of the fill value stay absent, and the destination (zarr v2, HDF5) has the same
    fill value, bit for bit, as zarr-python and h5py read it; stores with no fill value refuse
    the copy before creating anything."""
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 4 * 8 * 8 * 8)
    src = zarr.create_array(tmp_path / "s.zarr", shape=(4, 16, 16), chunks=(4, 8, 8),
                            dtype=dtype, fill_value=fill)
    src[:, :8, :8] = np.arange(256).reshape(4, 8, 8).astype(dtype)
    want = np.asarray(src[:])
    fill_bits = _bits(np.array(fill, dtype))
    voxgate.copy(f"zarr://{tmp_path}/s.zarr", f"zarr://{tmp_path}/d.zarr", zarr_format=2,
                 progress=False)
    theirs = zarr.open_array(tmp_path / "d.zarr" / "0")
    assert _bits(np.asarray(theirs.fill_value, dtype)) == fill_bits
    assert _bits(np.asarray(theirs[:])) == _bits(want)
    voxgate.copy(f"zarr://{tmp_path}/s.zarr", f"hdf5://{tmp_path}/d.h5#/v", progress=False)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert _bits(np.asarray(f["v"].fillvalue, dtype)) == fill_bits
        assert _bits(np.asarray(f["v"][:])) == _bits(want)
    if fill != 0:
        with pytest.raises(InvalidRequestError, match="fill value"):
            voxgate.copy(f"zarr://{tmp_path}/s.zarr", f"n5://{tmp_path}/d.n5", progress=False)
        assert not (tmp_path / "d.n5").exists()


# -- downsample ---------------------------------------------------------------------------------


def _brute(a: np.ndarray, f: tuple[int, int, int], kind: str) -> np.ndarray:
    """The documented rule voxel by voxel, in Python integers (no float anywhere for ints)."""
    out = np.empty(tuple(-(-n // k) for n, k in zip(a.shape, f, strict=True)), a.dtype)
    for idx in np.ndindex(*out.shape):
        block = a[tuple(slice(i * k, (i + 1) * k) for i, k in zip(idx, f, strict=True))]
        if kind == "segmentation":
            vals = [int(v) for v in block.ravel()]
            out[idx] = max(vals, key=lambda v: (vals.count(v), -vals.index(v)))
        elif a.dtype.kind == "f":
            with np.errstate(invalid="ignore"):  # inf + -inf: NaN, the mean's own answer
                out[idx] = block.astype(np.float64).sum() / block.size
        else:
            out[idx] = sum(int(v) for v in block.ravel()) // block.size
    return out


def test_downsample_of_inf_and_minus_inf_in_one_edge_block_is_nan_without_a_warning() -> None:
    """Whole blocks (tinybrain) gave NaN quietly; a partial block at an odd edge (numpy) raised
    numpy's RuntimeWarning, so downsample failed under -W error (this suite's setting)."""
    a = np.ones((3, 4, 4), np.float32)
    a[0, 0, 0], a[0, 0, 1] = np.inf, -np.inf  # a whole block
    a[2, 0, 0], a[2, 0, 1] = np.inf, -np.inf  # the partial block at z = 2
    a[2, 2, 2] = np.nan
    a[2, 3, 3] = -0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = voxgate.downsample(a, factors=[(2, 2, 2)]).at_scale(1).read()
    want = _brute(a, (2, 2, 2), "image")
    assert np.isnan(got[0, 0, 0]) and np.isnan(got[1, 0, 0]) and np.isnan(got[1, 1, 1])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint64"])
def test_downsample_of_signed_and_huge_integers_is_the_brute_force_rule(dtype: str) -> None:
    """Floor of the mean (toward -inf for negative sums) and first-most-frequent mode, on odd
    extents, with each dtype's extremes and ids above 2**53."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(3)
    a = rng.integers(info.min, info.max, (3, 5, 7), dtype=dtype, endpoint=True)
    a.flat[:3] = [info.min, info.max, info.max - 1]
    pool = np.array([info.min, info.max, 0, 1, 2**53 + 1 if info.bits == 64 else -1
                     if info.min < 0 else 3], dtype=dtype)
    labels = pool[rng.integers(0, len(pool), a.shape)]
    for f in [(2, 2, 2), (1, 2, 2), (2, 3, 1)]:
        np.testing.assert_array_equal(downsample_kernel(a, [f], "image")[0],
                                      _brute(a, f, "image"), err_msg=str(f))
        np.testing.assert_array_equal(downsample_kernel(labels, [f], "segmentation")[0],
                                      _brute(labels, f, "segmentation"), err_msg=str(f))


# -- Services -----------------------------------------------------------------------------------


def test_mesh_and_skeletonize_refuse_negative_labels() -> None:
    """zmesh meshed an int16 label -5 as id 65531 (neither -5 nor the uint64 id the relay
    serves for it), and skeletonize failed after kimimaro's work with "skeleton id -5 is not
    a uint64 segment id"; both now refuse up front, as label_stats does."""
    labels = np.zeros((6, 12, 12), np.int16)
    labels[1:5, 2:6, 2:10] = -5
    labels[1:5, 7:11, 2:10] = 7
    for service in (voxgate.mesh, voxgate.skeletonize, voxgate.label_stats):
        with pytest.raises(InvalidRequestError, match=r"negative labels \(-5\) in int16"):
            service(labels)
    positive = np.where(labels < 0, 3, labels).astype(np.int16)
    assert sorted(voxgate.mesh(positive)) == [3, 7]


# -- the relay ----------------------------------------------------------------------------------

SHAPE = (5, 20, 24)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, Path,
                                                                      dict[str, np.ndarray]]]:
    d = tmp_path_factory.mktemp("dtypes")
    rng = np.random.default_rng(5)
    data: dict[str, np.ndarray] = {}
    lines = [f'[server]\nstate_path = "{d / "state.json"}"']
    for name, dtype, kind in [("seg_i16", "int16", "segmentation"),
                              ("seg_i64", "int64", "segmentation"),
                              ("img_i16", "int16", "image"), ("img_f32", "float32", "image"),
                              ("img_i64", "int64", "image"), ("img_f64", "float64", "image")]:
        if kind == "segmentation":
            a = rng.integers(-3, 3, SHAPE).astype(dtype)
        elif dtype.startswith("int"):
            info = np.iinfo(dtype)
            a = rng.integers(info.min, info.max, SHAPE, dtype=dtype, endpoint=True)
        else:
            a = (rng.standard_normal(SHAPE) * 100).astype(dtype)
            a.flat[:5] = [np.nan, np.inf, -np.inf, -0.0, np.finfo(dtype).max]
        if dtype.startswith("int"):
            a.flat[:2] = [np.iinfo(dtype).min, np.iinfo(dtype).max]
            if dtype == "int64":
                a.flat[2] = 2**53 + 1
        v = voxgate.create(f"zarr://{d}/{name}.zarr", shape=SHAPE, dtype=dtype,
                           chunks=(4, 16, 16), voxel_size=(1, 1, 1), kind=kind)
        v[:] = a
        data[name] = a
        lines.append(f'[[channel]]\nname = "lab/em/{name}"\nupstream = "zarr://{d}/{name}.zarr"')
    cfg = d / "relay.toml"
    cfg.write_text("\n".join(lines) + "\n")
    r = start_relay(cfg, free_port())
    yield r, d, data
    r.stop()


def _intern(r: RelayProcess):  # type: ignore[no-untyped-def]
    from intern.remote.boss import BossRemote

    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{r.port}", "token": "any"})


@pytest.mark.parametrize("name", ["seg_i16", "seg_i64"])
def test_a_signed_segmentation_read_through_intern_writes_back_unchanged(
        relay: tuple[RelayProcess, Path, dict[str, np.ndarray]], name: str) -> None:
    """Its ids are read as uint64 in two's complement (-1 as 2**64 - 1); writing that cutout
    back was refused ("ids above 32767 cannot be written"), though nothing changed."""
    r, d, data = relay
    rmt = _intern(r)
    ch = rmt.get_channel(name, "lab", "em")
    assert ch.datatype == "uint64"
    nz, ny, nx = SHAPE
    got = np.asarray(rmt.get_cutout(ch, 0, [0, nx], [0, ny], [0, nz]))
    assert got.dtype == np.uint64
    assert _bits(got) == _bits(data[name].astype(np.uint64))  # -1 -> 2**64 - 1
    rmt.create_cutout(ch, 0, [0, nx], [0, ny], [0, nz], np.ascontiguousarray(got))
    assert _bits(voxgate.open(f"zarr://{d}/{name}.zarr").read()) == _bits(data[name])
    if name == "seg_i16":
        # an id between the int16 range and its wrapped negatives is refused, nothing written
        bad = got[:1, :2, :2].copy()
        bad[0, 0, 0] = 40000
        with pytest.raises(Exception, match="2001"):
            rmt.create_cutout(ch, 0, [0, 2], [0, 2], [0, 1], bad)
        assert _bits(voxgate.open(f"zarr://{d}/{name}.zarr").read()) == _bits(data[name])


@pytest.mark.parametrize("name", ["img_i16", "img_f32", "img_i64", "img_f64", "seg_i64"])
def test_precomputed_dialect_serves_each_dtype_as_documented(
        relay: tuple[RelayProcess, Path, dict[str, np.ndarray]], name: str) -> None:
    """int16 and float32 (NaN, +-inf, -0.0) bit for bit; int64 as uint64 bit for bit, float64
    rounded to float32 (docs/relay.md), read by CloudVolume and by tensorstore."""
    import tensorstore as ts
    from cloudvolume import CloudVolume

    r, _, data = relay
    a = data[name]
    with np.errstate(over="ignore"):  # float64's largest value is +inf as float32
        want = {"int64": a.view(np.uint64), "float64": a.astype(np.float32)}.get(a.dtype.name,
                                                                                 a)
    base = f"{r.url}/precomputed/lab/em/{name}"
    cv = CloudVolume(f"precomputed://{base}", mip=0, progress=False, fill_missing=False,
                     bounded=True, cache=False)
    assert cv.info["data_type"] == want.dtype.name
    nz, ny, nx = SHAPE
    by_cv = np.asarray(cv[0:nx, 0:ny, 0:nz])[..., 0].transpose(2, 1, 0)
    store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": 0,
                     "kvstore": {"driver": "http", "base_url": base + "/"}}, read=True).result()
    by_ts = np.asarray(store.read().result())[..., 0].transpose(2, 1, 0)
    for who, got in (("CloudVolume", by_cv), ("tensorstore", by_ts)):
        assert got.dtype == want.dtype, who
        assert _bits(got) == _bits(want), who
