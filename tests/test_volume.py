"""The Volume's numpy semantics, checked against numpy itself on mem://."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import voxgate
from voxgate.errors import (
    DtypeError,
    IndexingError,
    InvalidRequestError,
    OutOfBoundsError,
    ReadOnlyError,
)
from voxgate.geometry import Box

SHAPE = (6, 10, 14)


@pytest.fixture
def ref() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=np.uint32).reshape(SHAPE)


@pytest.fixture
def vol(ref: np.ndarray) -> voxgate.Volume:
    v = voxgate.create("mem://vol", shape=SHAPE, chunks=(2, 4, 4), dtype="uint32",
                       voxel_size=(40, 8, 8))
    v[:] = ref
    return v


def test_lazy_views_do_no_io(vol: voxgate.Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = type(vol.remote).read

    def counting(self, box, scale=0):  # type: ignore[no-untyped-def]
        calls.append(box)
        return real(self, box, scale)

    monkeypatch.setattr(type(vol.remote), "read", counting)
    sub = vol[1:5, ::2, -3:][1:, 2]
    assert calls == []
    assert sub.shape == (3, 3)
    np.asarray(sub)
    assert len(calls) == 1


def test_issue_example_indexing(vol: voxgate.Volume, ref: np.ndarray) -> None:
    sub = vol[1:4, ::2, -5:]
    assert sub.shape == ref[1:4, ::2, -5:].shape
    np.testing.assert_array_equal(np.asarray(sub), ref[1:4, ::2, -5:])
    assert sub.voxel_size.zyx() == (40.0, 16.0, 8.0)
    assert tuple(sub.offset) == (1, 0, 9)


@pytest.mark.parametrize(
    "key",
    [
        (0,),
        (-1,),
        (slice(None), 3),
        (Ellipsis, -2),
        (2, Ellipsis, 5),
        (slice(1, 5, 2), slice(None, None, 3), slice(-4, -1)),
        (np.int64(3), slice(2, 8), np.uint8(1)),
        (Ellipsis,),
        (slice(2, 2),),
        (1, 2, 3),
    ],
)
def test_indexing_matches_numpy(vol: voxgate.Volume, ref: np.ndarray, key: tuple) -> None:
    expected = ref[key]
    got = vol[key]
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got.read(), expected)


def test_open_slices_use_the_right_axis_length(vol: voxgate.Volume, ref: np.ndarray) -> None:
    # intern's array used the wrong axis length for open slices (specs/intern-pitfalls.md)
    assert vol[0:2, :, :].shape == (2, 10, 14)
    np.testing.assert_array_equal(vol[:, 0:5, 0:6].read(), ref[:, 0:5, 0:6])


def test_length_one_axes_are_kept(vol: voxgate.Volume) -> None:
    assert vol[0:1, 0:1, 0:1].shape == (1, 1, 1)


@st.composite
def _keys(draw: st.DrawFn) -> tuple:
    key = []
    for n in SHAPE:
        if draw(st.booleans()):
            key.append(draw(st.integers(-n, n - 1)))
        else:
            start = draw(st.none() | st.integers(-2 * n, 2 * n))
            stop = draw(st.none() | st.integers(-2 * n, 2 * n))
            step = draw(st.none() | st.integers(1, 4))
            key.append(slice(start, stop, step))
    cut = draw(st.integers(0, 3))
    return tuple(key[:cut])


@settings(max_examples=200, deadline=None)
@given(first=_keys(), second=_keys())
def test_clip_mode_is_numpy(first: tuple, second: tuple) -> None:
    ref = np.arange(np.prod(SHAPE), dtype=np.uint32).reshape(SHAPE)
    name = "hyp-clip"
    if not voxgate.remotes.memory.MemoryRemote.exists(name):
        v = voxgate.create(f"mem://{name}", shape=SHAPE, chunks=(2, 4, 4), dtype="uint32",
                           voxel_size=(1, 1, 1))
        v[:] = ref
    vol = voxgate.open(f"mem://{name}", bounds="clip")
    a = ref[first]
    v1 = vol[first]
    assert v1.shape == a.shape
    if a.ndim >= len(second):
        try:
            b = a[second]
        except IndexError:
            with pytest.raises(IndexError):
                v1[second]
            return
        v2 = v1[second]
        assert v2.shape == b.shape
        np.testing.assert_array_equal(v2.read(), b)


def test_error_mode_refuses_out_of_bounds(vol: voxgate.Volume) -> None:
    with pytest.raises(OutOfBoundsError, match="outside 0:6"):
        vol[0:7]
    with pytest.raises(OutOfBoundsError):
        vol[-7:]
    with pytest.raises(OutOfBoundsError):
        vol[6]
    with pytest.raises(IndexError):  # builtin still catches it
        vol[:, :, 100]
    with pytest.raises(OutOfBoundsError):
        vol.read(Box((0, 0, 0), (7, 1, 1)))


def test_fill_mode_reads_outside_as_fill(vol: voxgate.Volume, ref: np.ndarray) -> None:
    f = vol.with_bounds("fill")
    out = f[4:9, 8:12, 12:20].read()
    assert out.shape == (5, 4, 8)
    np.testing.assert_array_equal(out[:2, :2, :2], ref[4:6, 8:10, 12:14])
    assert not out[2:].any() and not out[:, 2:].any() and not out[:, :, 2:].any()
    box = f.read(Box((-2, -2, -2), (1, 1, 1)))
    assert box.shape == (3, 3, 3)
    assert box[2, 2, 2] == ref[0, 0, 0]
    assert box.sum() == ref[0, 0, 0]


def test_bad_indices(vol: voxgate.Volume) -> None:
    with pytest.raises(IndexingError, match="too many indices"):
        vol[0, 0, 0, 0]
    with pytest.raises(IndexingError):
        vol[..., 0, ...]
    with pytest.raises(IndexingError):
        vol[None]
    with pytest.raises(IndexingError):
        vol[[1, 2]]
    with pytest.raises(IndexingError):
        vol["a"]
    with pytest.raises(InvalidRequestError, match="positive"):
        vol[::0]
    with pytest.raises(InvalidRequestError):
        vol[::-1]
    with pytest.raises(InvalidRequestError):
        voxgate.open("mem://vol", bounds="wrap")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        voxgate.open("mem://vol", mode="w")
    with pytest.raises(InvalidRequestError, match="scale 3 does not exist"):
        voxgate.open("mem://vol", scale=3)


def test_writes(vol: voxgate.Volume, ref: np.ndarray) -> None:
    vol[0, 1:3, ::5] = 7
    ref[0, 1:3, ::5] = 7
    vol[..., -1] = np.arange(60, dtype=np.uint8).reshape(6, 10)  # safe cast uint8 -> uint32
    ref[..., -1] = np.arange(60).reshape(6, 10)
    vol[2:4] = np.full((1, 14), 9, dtype=np.uint16)  # numpy broadcasting
    ref[2:4] = 9
    np.testing.assert_array_equal(vol.read(), ref)
    with pytest.raises(InvalidRequestError, match=r"shape \(3,\)"):
        vol[0, 0, 0:2] = np.zeros(3, dtype=np.uint32)
    with pytest.raises(DtypeError, match="int64"):
        vol[0] = np.zeros((10, 14), dtype=np.int64)
    with pytest.raises(DtypeError):
        vol[0] = -1
    with pytest.raises(DtypeError):
        vol[0] = 2**32
    with pytest.raises(TypeError):
        vol[0] = np.zeros((10, 14), dtype=np.float32)
    with pytest.raises(DtypeError):
        vol[0] = np.array(["a"] * 14, dtype=object)
    np.testing.assert_array_equal(vol.read(), ref)


def test_read_only(vol: voxgate.Volume, ref: np.ndarray) -> None:
    ro = voxgate.open("mem://vol")
    with pytest.raises(ReadOnlyError):
        ro[0] = 1
    np.testing.assert_array_equal(ro.read(), ref)


def test_non_contiguous_write(vol: voxgate.Volume) -> None:
    data = np.asfortranarray(np.arange(6 * 10 * 14, dtype=np.uint32).reshape(SHAPE))
    vol[:] = data[:, :, :]
    np.testing.assert_array_equal(vol.read(), data)
    vol[:, :, 0:7] = data[:, :, ::2]
    np.testing.assert_array_equal(vol[:, :, 0:7].read(), data[:, :, ::2])


def test_to_dask(vol: voxgate.Volume, ref: np.ndarray) -> None:
    d = vol[1:, ::2].to_dask()
    assert d.shape == ref[1:, ::2].shape
    assert d.dtype == np.uint32
    np.testing.assert_array_equal(d.compute(), ref[1:, ::2])
    assert int(vol.to_dask().sum().compute()) == int(ref.sum())


def test_multichannel() -> None:
    v = voxgate.create("mem://rgb", shape=(4, 5, 6), chunks=(2, 2, 2), dtype="uint8",
                       voxel_size=(1, 1, 1), num_channels=3)
    assert v.shape == (3, 4, 5, 6)
    data = np.arange(3 * 4 * 5 * 6, dtype=np.uint8).reshape(3, 4, 5, 6)
    v[:] = data
    np.testing.assert_array_equal(v[1, 2:4, ..., 3].read(), data[1, 2:4, ..., 3])
    np.testing.assert_array_equal(v[:, 0].read(), data[:, 0])
    with pytest.raises(InvalidRequestError, match="every channel"):
        v[0] = 1


def test_repr_and_props(vol: voxgate.Volume) -> None:
    text = repr(vol)
    assert "mem://vol" in text and "(6, 10, 14)" in text and "uint32" in text
    assert vol.ndim == 3 and vol.size == 840 and vol.nbytes == 3360 and len(vol) == 6
    assert vol.kind == "image"
    assert vol.meta.dtype == np.uint32
    assert vol.url == "mem://vol"


def test_pickle_of_mem_volume_reopens_in_process(vol: voxgate.Volume, ref: np.ndarray) -> None:
    clone = pickle.loads(pickle.dumps(vol[1:3]))
    np.testing.assert_array_equal(clone.read(), ref[1:3])


def test_partial_write_says_what_was_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    from voxgate.errors import PartialWriteError
    from voxgate.remotes.memory import MemoryRemote
    from voxgate.volume import writing as volume_module

    v = voxgate.create("mem://pw", shape=(16, 8, 8), chunks=(4, 8, 8), dtype="uint8",
                       voxel_size=(1, 1, 1))
    monkeypatch.setattr(volume_module, "WRITE_BLOCK_BYTES", 4 * 8 * 8)  # one chunk per block
    real = MemoryRemote.write

    def flaky(self, box, array, scale=0):  # type: ignore[no-untyped-def]
        if box.start.z == 8:
            raise OSError("disk full")
        real(self, box, array, scale)

    monkeypatch.setattr(MemoryRemote, "write", flaky)
    with pytest.raises(PartialWriteError) as info:
        v.write(np.full((16, 8, 8), 5, dtype=np.uint8), workers=1)
    err = info.value
    assert Box((8, 0, 0), (12, 8, 8)) in err.failed
    assert err.written and all(isinstance(b, Box) for b in err.written)
    out = v.read()
    for b in err.written:
        assert (out[b.slices()] == 5).all()
    for b in err.failed:
        assert not out[b.slices()].any()
    assert "disk full" in str(err)


@pytest.mark.parametrize("kind", ["scalar", "fortran", "uint8 into uint16", "c-order"])
def test_writes_convert_block_by_block(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scalar, an array not in C order or of another dtype becomes C-order arrays of the
    volume's dtype one block at a time (never the whole region at once); a C-order array of
    the volume's dtype is handed over in views of itself, as before."""
    from voxgate.remotes.memory import MemoryRemote
    from voxgate.volume import writing

    v = voxgate.create(f"mem://conv-{kind}", shape=(16, 8, 8), chunks=(4, 8, 8),
                       dtype="uint16", voxel_size=(1, 1, 1))
    monkeypatch.setattr(writing, "WRITE_BLOCK_BYTES", 2 * 4 * 8 * 8)  # one chunk per block
    values = np.arange(16 * 8 * 8, dtype=np.uint16).reshape(16, 8, 8)
    value: object = {
        "scalar": 7,
        "fortran": np.asfortranarray(values),
        "uint8 into uint16": (values % 200).astype(np.uint8),
        "c-order": values,
    }[kind]
    received: list[np.ndarray] = []
    real = MemoryRemote.write

    def spy(self, box, array, scale=0):  # type: ignore[no-untyped-def]
        received.append(array)
        real(self, box, array, scale)

    monkeypatch.setattr(MemoryRemote, "write", spy)
    v[:] = value
    expected = np.broadcast_to(np.asarray(value, dtype=np.uint16), (16, 8, 8))
    np.testing.assert_array_equal(v.read(), expected)
    assert len(received) == 4
    assert all(a.dtype == np.uint16 and a.shape == (4, 8, 8) for a in received)
    if kind == "c-order":
        assert all(np.shares_memory(a, values) for a in received)
    else:
        # each block its own C-order array, none a view of a whole converted region
        assert all(a.flags.c_contiguous and (a.base is None or a.base.nbytes == a.nbytes)
                   for a in received)


def test_scalar_index_reads_as_0d_array(vol: voxgate.Volume, ref: np.ndarray) -> None:
    point = vol[1, 2, 3]
    arr = np.asarray(point)  # numpy 2 refuses a numpy scalar from __array__
    assert isinstance(arr, np.ndarray) and arr.shape == () and arr.dtype == ref.dtype
    assert arr == ref[1, 2, 3]
    got = point.read()
    assert isinstance(got, np.ndarray) and got.shape == () and int(got) == ref[1, 2, 3]
    assert np.asarray(vol[1, 2, 3], dtype=np.float64).dtype == np.float64
    assert np.asarray(vol[-1, -1, -1]) == ref[-1, -1, -1]


@pytest.mark.parametrize(
    "key",
    [True, False, np.bool_(True), (0, True), (slice(None), np.bool_(False)),
     np.array([True, False, True, False, True, False]), (0, [True] * 10)],
)
def test_boolean_keys_are_refused(vol: voxgate.Volume, key: object) -> None:
    with pytest.raises(IndexingError) as info:
        vol[key]
    assert isinstance(info.value, IndexError)
    assert "bool" in str(info.value)


def test_boolean_slice_bounds_are_refused(vol: voxgate.Volume) -> None:
    with pytest.raises(IndexingError, match="boolean"):
        vol[True:3]
    with pytest.raises(IndexingError, match="boolean"):
        vol[0:3:np.bool_(True)]


def test_fill_mode_negative_start(vol: voxgate.Volume, ref: np.ndarray) -> None:
    f = vol.with_bounds("fill")
    n = SHAPE[2]
    # numpy's rule first: -3 is n - 3, so this is the last three voxels, no fill
    np.testing.assert_array_equal(f[0, 0, -3:].read(), ref[0, 0, -3:])
    # a start still negative after that rule reaches before the first voxel, as fill
    out = f[0, 0, -(n + 2):3].read()
    np.testing.assert_array_equal(out, np.r_[[0, 0], ref[0, 0, :3]])
    assert f[0, 0, -(n + 2)].read() == 0
    assert f[0, 0, -1].read() == ref[0, 0, -1]
    # a Box is never counted from the end: its negative start is before the first voxel
    box = f.read(Box((0, 0, -2), (1, 1, 3)))
    np.testing.assert_array_equal(box[0, 0], np.r_[[0, 0], ref[0, 0, :3]])
    # past the end is fill too
    np.testing.assert_array_equal(f[0, 0, n - 2 : n + 2].read(), np.r_[ref[0, 0, -2:], [0, 0]])



def test_a_volume_written_into_a_volume_is_read_block_by_block(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``dst[...] = src`` reads each block of ``src`` as that block of ``dst`` is written (the
    whole source was read first), with numpy's results: across block edges, into a plane
    (dropped axis), with a dtype widened; a narrowing dtype refused before anything is read."""
    from voxgate.volume import writing

    monkeypatch.setattr(writing, "WRITE_BLOCK_BYTES", 2 * 4 * 8 * 8)  # one chunk per block
    data = np.random.default_rng(3).integers(0, 200, (9, 13, 11), dtype=np.uint8)
    src = voxgate.create("mem://v2v-src", shape=(9, 13, 11), chunks=(3, 4, 4), dtype="uint8",
                         voxel_size=(1, 1, 1))
    src[:] = data
    dst = voxgate.create("mem://v2v-dst", shape=(16, 8, 8), chunks=(4, 8, 8), dtype="uint16",
                         voxel_size=(1, 1, 1))
    reads: list[tuple[int, ...]] = []
    real = type(src.remote).read

    def spy(self, box, scale=0):  # type: ignore[no-untyped-def]
        if self is src.remote:
            reads.append(tuple(box.shape))
        return real(self, box, scale)

    monkeypatch.setattr(type(src.remote), "read", spy)
    dst[2:11, 1:8, 0:7] = src[:, 3:10, 4:11]
    want = np.zeros((16, 8, 8), np.uint16)
    want[2:11, 1:8, 0:7] = data[:, 3:10, 4:11]
    np.testing.assert_array_equal(dst.read(), want)
    # blocks of dst's chunks (4 planes): the source is read in parts of at most 4 planes
    assert len(reads) == 3 and all(r[0] <= 4 for r in reads), reads
    reads.clear()
    dst[5, 0:8, 1:8] = src[4, 2:10, 0:7]  # a plane into a plane
    want[5, 0:8, 1:8] = data[4, 2:10, 0:7]
    np.testing.assert_array_equal(dst.read(), want)
    assert reads == [(1, 8, 7)]
    with pytest.raises(DtypeError, match="uint16 data into a uint8"):
        src[0:4, 0:8, 0:8] = dst[0:4]
    np.testing.assert_array_equal(src.read(), data)
    with pytest.raises(InvalidRequestError, match="shape"):
        dst[0:4] = src[0:3, 0:8, 0:8]


def test_a_volume_written_into_itself_overlapping_is_numpy(ref: np.ndarray,
                                                           vol: voxgate.Volume) -> None:
    """An overlapping source in the same store is read whole before the write (as numpy
    copies): read block by block, the blocks written first would feed the later ones."""
    from voxgate.volume import writing

    old = writing.WRITE_BLOCK_BYTES
    writing.WRITE_BLOCK_BYTES = 4 * 2 * 4 * 4
    try:
        vol[1:6] = vol[0:5]
        want = ref.copy()
        want[1:6] = ref[0:5]
        np.testing.assert_array_equal(vol.read(), want)
        vol[0:5] = vol[1:6]  # the other way round
        want[0:5] = want[1:6].copy()
        np.testing.assert_array_equal(vol.read(), want)
        vol.at_scale(0)[:, 0:5, :] = vol[:, 5:10, :]  # same store, disjoint: streamed
        want[:, 0:5] = want[:, 5:10]
        np.testing.assert_array_equal(vol.read(), want)
    finally:
        writing.WRITE_BLOCK_BYTES = old
