"""RemoteTests: the conformance suite every Remote's tests subclass."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import voxgate
from voxgate.errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    DtypeError,
    IndexingError,
    InvalidRequestError,
    MissingChunkError,
    OutOfBoundsError,
    ReadOnlyError,
    RemoteExistsError,
    RemoteNotFoundError,
)
from voxgate.geometry import Box

__all__ = ["RemoteTests"]


class RemoteTests:
    """Subclass, implement :meth:`url`, and adjust the class attributes to the Remote."""

    #: dtypes the Remote must round-trip exactly
    dtypes: ClassVar[tuple[str, ...]] = ("uint8", "uint16", "uint32", "uint64", "float32")
    #: the dtype the other tests create and write (an encoding that holds only some dtypes,
    #: e.g. precomputed's compressed_segmentation, sets it)
    dtype: ClassVar[str] = "uint16"
    #: options passed to every ``voxgate.create`` of this suite
    create_options: ClassVar[dict[str, Any]] = {}
    #: whether chunks are files that :meth:`corrupt_chunk` can damage
    has_chunk_files: ClassVar[bool] = True
    #: whether the store can hold several scales
    multiscale: ClassVar[bool] = True
    #: whether a second process can reopen the volume from its spec (mem:// cannot)
    reopenable: ClassVar[bool] = True
    #: whether the store keeps the chunk shape given to create (bossDB has fixed cuboids)
    keeps_chunks: ClassVar[bool] = True

    def url(self, tmp_path: Path, name: str) -> str:
        raise NotImplementedError

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        """Damage one stored chunk of ``vol`` (written by the test) and return its name."""
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------------
    def make(
        self,
        tmp_path: Path,
        name: str = "vol",
        *,
        shape: tuple[int, int, int] = (20, 40, 50),
        chunks: tuple[int, int, int] = (8, 16, 16),
        dtype: str | None = None,
        **kw: Any,
    ) -> voxgate.Volume:
        kw.setdefault("voxel_size", (40, 8, 8))
        return voxgate.create(
            self.url(tmp_path, name),
            shape=shape,
            chunks=chunks,
            dtype=dtype or self.dtype,
            **{**self.create_options, **kw},
        )

    @staticmethod
    def random(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        dt = np.dtype(dtype)
        if dt.kind == "f":
            return rng.standard_normal(shape).astype(dt)
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)

    # -- the suite ------------------------------------------------------------------------------
    def test_round_trip_unaligned(self, tmp_path: Path) -> None:
        vol = self.make(tmp_path)
        ref = np.zeros(vol.shape, dtype=vol.dtype)
        data = self.random((9, 23, 31), self.dtype)
        vol[3:12, 5:28, 7:38] = data
        ref[3:12, 5:28, 7:38] = data
        np.testing.assert_array_equal(vol[3:12, 5:28, 7:38].read(), data)
        np.testing.assert_array_equal(np.asarray(vol), ref)
        reopened = voxgate.open(self.url(tmp_path, "vol"))
        np.testing.assert_array_equal(reopened.read(), ref)

    def test_unaligned_write_keeps_neighbours(self, tmp_path: Path) -> None:
        vol = self.make(tmp_path)
        vol[:] = 5
        vol[1:2, 1:2, 1:2] = 9
        out = vol.read()
        assert out[1, 1, 1] == 9
        out[1, 1, 1] = 5
        assert (out == 5).all()

    def test_absent_chunks_read_as_fill(self, tmp_path: Path) -> None:
        vol = self.make(tmp_path)
        out = vol.read()
        assert out.shape == (20, 40, 50)
        assert out.dtype == np.dtype(self.dtype)
        assert not out.any()
        vol[0:8, 0:16, 0:16] = 3
        out = vol[0:20, 0:40, 0:50].read()
        assert (out[0:8, 0:16, 0:16] == 3).all()
        assert not out[8:].any()

    def test_missing_chunks(self, tmp_path: Path) -> None:
        """Capability.CHUNK_PRESENCE: absent chunks listed, missing="error" honoured; a Remote
        without it refuses missing="error" clearly."""
        vol = self.make(tmp_path)  # (20, 40, 50) in (8, 16, 16) chunks: a 3 x 3 x 4 grid
        remote = vol.remote
        if not voxgate.has_capability(remote, "chunk_presence"):
            with pytest.raises(CapabilityNotSupportedError, match="missing='error'"):
                remote.set_missing("error")
            with pytest.raises(CapabilityNotSupportedError):
                vol.missing_chunks()
            return
        with pytest.raises(InvalidRequestError):
            remote.set_missing("zeros")
        # a fresh volume has every chunk absent, unless the suite's make() fills it (e.g. a
        # layer CloudVolume wrote whole)
        before = vol.missing_chunks()
        grid = {(z, y, x) for z in range(3) for y in range(3) for x in range(4)}
        assert set(before) <= grid and before == sorted(before)
        vol[0:8, 0:16, 0:16] = 3
        vol[8:16, 16:20, 34:40] = 1  # part of one chunk: the chunk is stored
        absent = vol.missing_chunks()
        assert absent == sorted(set(before) - {(0, 0, 0), (1, 1, 2)})
        assert vol.missing_chunks(Box((0, 0, 0), (8, 16, 16))) == []
        remote.set_missing("error")
        try:
            strict = voxgate.Volume(remote)
            assert (strict[0:8, 0:16, 0:16].read() == 3).all()
            if (1, 0, 0) in absent:
                with pytest.raises(MissingChunkError) as info:
                    strict[4:12, 0:16, 0:16].read()
                assert info.value.chunks == [(1, 0, 0)] and info.value.scale == 0
            else:
                strict[4:12, 0:16, 0:16].read()
            assert remote.spec()["options"]["missing"] == "error"
        finally:
            remote.set_missing("fill")
        assert not vol[4:12, 0:16, 0:16].read()[4:].any()

    def test_metadata(self, tmp_path: Path) -> None:
        vol = self.make(tmp_path, kind="segmentation", dtype="uint64")
        again = voxgate.open(self.url(tmp_path, "vol"))
        assert again.shape == (20, 40, 50)
        assert again.dtype == np.uint64
        if self.keeps_chunks:
            assert tuple(again.chunks) == (8, 16, 16)
        assert again.voxel_size.zyx() == (40.0, 8.0, 8.0)
        assert again.voxel_size.unit == "nm"
        assert again.kind == "segmentation"
        assert tuple(again.offset) == (0, 0, 0)
        assert len(again.scales) == 1
        assert vol.url == again.url

    def test_dtypes(self, tmp_path: Path) -> None:
        for i, dtype in enumerate(self.dtypes):
            vol = self.make(tmp_path, f"dt-{dtype}", dtype=dtype, kind="image")
            data = self.random((20, 40, 50), dtype, seed=i)
            if np.dtype(dtype) == np.uint64:
                data[0, 0, :3] = [2**53 + 1, 2**64 - 1, 2**63 + 12345]
            vol[:] = data
            back = voxgate.open(self.url(tmp_path, f"dt-{dtype}")).read()
            assert back.dtype == np.dtype(dtype), dtype
            np.testing.assert_array_equal(back, data, err_msg=dtype)

    def test_scales(self, tmp_path: Path) -> None:
        if not self.multiscale:
            pytest.skip(f"{type(self).__name__} holds one scale")
        vol = self.make(tmp_path, num_scales=3, voxel_size=(8, 8, 8), shape=(20, 40, 50))
        again = voxgate.open(self.url(tmp_path, "vol"))
        assert len(again.scales) == 3
        assert [tuple(s.shape) for s in again.scales] == [(20, 40, 50), (10, 20, 25), (5, 10, 13)]
        assert [s.voxel_size.zyx() for s in again.scales] == [
            (8.0, 8.0, 8.0),
            (16.0, 16.0, 16.0),
            (32.0, 32.0, 32.0),
        ]
        s2 = vol.at_scale(2)
        data = self.random((5, 10, 13), self.dtype, seed=4)
        s2[:] = data
        np.testing.assert_array_equal(voxgate.open(self.url(tmp_path, "vol"), scale=2).read(), data)
        assert not vol.read().any()

    def test_add_scales(self, tmp_path: Path) -> None:
        from voxgate.errors import CapabilityNotSupportedError
        from voxgate.meta import next_scales

        vol = self.make(tmp_path, voxel_size=(40, 8, 8))
        data = self.random((20, 40, 50), self.dtype)
        vol[:] = data
        remote = vol.remote
        new = next_scales(remote.meta, 2)
        if not voxgate.has_capability(remote, "add_scales"):
            with pytest.raises(CapabilityNotSupportedError):
                remote.add_scales(new)
            return
        remote.add_scales(new)
        assert len(remote.meta.scales) == 3
        again = voxgate.open(self.url(tmp_path, "vol"), mode="r+")
        assert [tuple(s.shape) for s in again.scales] == [(20, 40, 50), (20, 20, 25),
                                                          (20, 10, 13)]
        assert again.scales[2].voxel_size.zyx() == (40.0, 32.0, 32.0)
        assert not again.at_scale(2).read().any()
        coarse = self.random((20, 10, 13), self.dtype, seed=9)
        again.at_scale(2)[:] = coarse
        np.testing.assert_array_equal(voxgate.open(self.url(tmp_path, "vol"), scale=2).read(),
                                      coarse)
        np.testing.assert_array_equal(voxgate.open(self.url(tmp_path, "vol")).read(), data)
        with pytest.raises(InvalidRequestError):
            again.remote.add_scales(new)  # indices must continue the existing ones

    def test_offset_and_boxes(self, tmp_path: Path) -> None:
        vol = self.make(tmp_path, offset=(4, 100, 200))
        assert tuple(vol.offset) == (4, 100, 200)
        assert vol.bounds == Box((4, 100, 200), (24, 140, 250))
        data = self.random((2, 3, 4), self.dtype)
        vol.write(data, Box((5, 101, 201), (7, 104, 205)))
        again = voxgate.open(self.url(tmp_path, "vol"))
        assert tuple(again.offset) == (4, 100, 200)
        np.testing.assert_array_equal(again[1:3, 1:4, 1:5].read(), data)
        np.testing.assert_array_equal(again.read(Box((5, 101, 201), (7, 104, 205))), data)
        with pytest.raises(OutOfBoundsError):
            again.read(Box((0, 0, 0), (2, 2, 2)))

    def test_bounds_modes(self, tmp_path: Path) -> None:
        vol = self.make(tmp_path)
        vol[:] = 1
        with pytest.raises(OutOfBoundsError):
            vol[0:21]
        with pytest.raises(OutOfBoundsError):
            vol[:, 40]
        url = self.url(tmp_path, "vol")
        clipped = voxgate.open(url, bounds="clip")[15:100, -5:, 45:60]
        assert clipped.shape == (5, 5, 5)
        assert (clipped.read() == 1).all()
        filled = voxgate.open(url, bounds="fill")[18:22, 38:42, 48:52].read()
        assert filled.shape == (4, 4, 4)
        assert (filled[:2, :2, :2] == 1).all()
        assert filled.sum() == 8
        with pytest.raises(OutOfBoundsError):
            voxgate.open(url, bounds="fill", mode="r+")[18:22] = 0

    def test_reopen_from_spec(self, tmp_path: Path) -> None:
        if not self.reopenable:
            pytest.skip("this Remote lives in one process only")
        vol = self.make(tmp_path)
        vol[0:4, 0:4, 0:4] = 7
        spec = vol.spec()
        again = voxgate.open(spec["url"], mode=spec["mode"], scale=spec["scale"],
                             **spec.get("options", {}))
        assert again.mode == "r+"
        np.testing.assert_array_equal(again.read(), vol.read())
        import pickle

        clone = pickle.loads(pickle.dumps(vol[0:4, 0:4, 0:4]))
        assert (clone.read() == 7).all()

    def test_read_only(self, tmp_path: Path) -> None:
        vol = self.make(tmp_path)
        vol[:] = 2
        ro = voxgate.open(self.url(tmp_path, "vol"))
        assert ro.mode == "r"
        with pytest.raises(ReadOnlyError):
            ro[0:2, 0:2, 0:2] = 1
        with pytest.raises(PermissionError):
            ro.write(np.ones((20, 40, 50), dtype=self.dtype))
        assert (ro.read() == 2).all()

    def test_create_existing(self, tmp_path: Path) -> None:
        self.make(tmp_path)
        with pytest.raises(RemoteExistsError):
            self.make(tmp_path)
        again = self.make(tmp_path, exist_ok=True)
        assert again.shape == (20, 40, 50)

    def test_open_missing(self, tmp_path: Path) -> None:
        with pytest.raises(RemoteNotFoundError):
            voxgate.open(self.url(tmp_path, "never-made"))

    def test_bad_writes(self, tmp_path: Path) -> None:
        small = "uint8" if "uint8" in self.dtypes else self.dtype
        vol = self.make(tmp_path, dtype=small)
        vol[:] = 3
        with pytest.raises(InvalidRequestError):
            vol[0:2, 0:2, 0:2] = np.ones((3, 3, 3), dtype=small)
        with pytest.raises(DtypeError):
            vol[0:2, 0:2, 0:2] = np.ones((2, 2, 2), dtype="int64")
        with pytest.raises(DtypeError):
            vol[0:2, 0:2, 0:2] = int(np.iinfo(small).max) + 1
        with pytest.raises(DtypeError):
            vol[0:2, 0:2, 0:2] = 1.5
        with pytest.raises(InvalidRequestError):
            vol[0:2:0]
        with pytest.raises(InvalidRequestError):
            vol[0:2:-1]
        with pytest.raises(IndexingError):
            vol[0, 0, 0, 0]
        assert (vol.read() == 3).all()

    def test_corrupt_chunk(self, tmp_path: Path) -> None:
        if not self.has_chunk_files:
            pytest.skip("this Remote keeps no chunk files")
        vol = self.make(tmp_path)
        vol[:] = self.random((20, 40, 50), self.dtype)
        name = self.corrupt_chunk(vol, tmp_path)
        with pytest.raises(CorruptChunkError) as info:
            voxgate.open(self.url(tmp_path, "vol")).read()
        assert info.value.chunk is not None
        assert name in str(info.value)
