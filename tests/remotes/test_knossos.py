from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule
from PIL import Image

import voxgate
from voxgate.cli import main
from voxgate.errors import CapabilityNotSupportedError, CorruptChunkError, InvalidRequestError
from voxgate.geometry import Box
from voxgate.registry import detect_format
from voxgate.testing import RemoteTests, remote_state_machine
from voxgate.testing.state_machine import _boxes

from .scratch import scratch_dir


class TestKnossos(RemoteTests):
    dtypes = ("uint8",)
    dtype = "uint8"

    def url(self, tmp_path: Path, name: str) -> str:
        return f"knossos://{tmp_path}/{name}"

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        path = tmp_path / "vol" / "mag1" / "x0000" / "y0000" / "z0000" / \
            "vol_mag1_x0000_y0000_z0000.raw"
        data = path.read_bytes()
        path.write_bytes(data[:-100])  # a truncated cube
        return str(path)

    def test_metadata(self, tmp_path: Path) -> None:
        """KNOSSOS raw cubes are uint8: uint64 is refused, the rest of the metadata kept."""
        with pytest.raises(CapabilityNotSupportedError, match="uint8"):
            self.make(tmp_path, "seg", kind="segmentation", dtype="uint64")
        vol = self.make(tmp_path, kind="segmentation", dtype="uint8")
        again = voxgate.open(self.url(tmp_path, "vol"))
        assert again.shape == (20, 40, 50) and again.dtype == np.uint8
        assert tuple(again.chunks) == (8, 16, 16)
        assert again.voxel_size.zyx() == (40.0, 8.0, 8.0)
        assert again.kind == "segmentation" and tuple(again.offset) == (0, 0, 0)
        assert vol.url == again.url


_Machine = remote_state_machine(lambda name: f"knossos://{scratch_dir()}/kn-{name}", dtype="uint8")


class KnossosMachine(_Machine):  # type: ignore[misc,valid-type]
    """The shipped machine, with scalars that fit uint8 (KNOSSOS cubes hold nothing else)."""

    @rule(box=_boxes(), value=st.integers(0, 255))
    def write_scalar(self, box: Box, value: int) -> None:
        self.vol.write(value, box)
        self.ref[box.slices()] = value


TestKnossosStateMachine = KnossosMachine.TestCase
TestKnossosStateMachine.settings = settings(max_examples=10, stateful_step_count=10,
                                            deadline=None)


# -- the layout, checked against the format as KNOSSOS documents it ----------------------------
def cube_file(root: Path, name: str, mag: int, x: int, y: int, z: int, ext: str = "raw") -> Path:
    return (root / f"mag{mag}" / f"x{x:04d}" / f"y{y:04d}" / f"z{z:04d}" /
            f"{name}_mag{mag}_x{x:04d}_y{y:04d}_z{z:04d}.{ext}")


def write_classic(root: Path, name: str, data_xyz_by_mag: dict[int, np.ndarray],
                  scale: tuple[float, float, float], extra: str = "") -> None:
    """A classic dataset written by hand: knossos.conf and 128^3 raw cubes, x fastest."""
    root.mkdir(parents=True, exist_ok=True)
    bx, by, bz = data_xyz_by_mag[1].shape
    (root / "knossos.conf").write_text(
        f'experiment name "{name}";\nboundary x {bx};\nboundary y {by};\nboundary z {bz};\n'
        f"scale x {scale[0]};\nscale y {scale[1]};\nscale z {scale[2]};\nmagnification 1;\n"
        + extra
    )
    for mag, data in data_xyz_by_mag.items():
        gx, gy, gz = (-(-n // 128) for n in data.shape)
        for x in range(gx):
            for y in range(gy):
                for z in range(gz):
                    cube = np.zeros((128, 128, 128), np.uint8)  # x, y, z
                    part = data[x * 128:(x + 1) * 128, y * 128:(y + 1) * 128,
                                z * 128:(z + 1) * 128]
                    cube[: part.shape[0], : part.shape[1], : part.shape[2]] = part
                    f = cube_file(root, name, mag, x, y, z)
                    f.parent.mkdir(parents=True)
                    f.write_bytes(cube.tobytes(order="F"))  # x fastest


def test_classic_dataset_written_by_hand(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    full = rng.integers(0, 255, (200, 150, 130), dtype=np.uint8)  # x, y, z
    half = full[::2, ::2, ::2]
    write_classic(tmp_path / "ds", "exp1", {1: full, 2: half}, (10.0, 10.0, 25.0))
    vol = voxgate.open(str(tmp_path / "ds"))  # detected from knossos.conf
    assert vol.url == f"knossos://{tmp_path}/ds"
    assert vol.shape == (130, 150, 200) and tuple(vol.chunks) == (128, 128, 128)
    assert vol.voxel_size.zyx() == (25.0, 10.0, 10.0)
    assert [tuple(s.shape) for s in vol.scales] == [(130, 150, 200), (65, 75, 100)]
    assert vol.scales[1].voxel_size.zyx() == (50.0, 20.0, 20.0)
    zyx = full.transpose(2, 1, 0)
    np.testing.assert_array_equal(vol.read(), zyx)
    np.testing.assert_array_equal(vol[100:130, 120:150, 90:140].read(), zyx[100:130, 120:150,
                                                                               90:140])
    np.testing.assert_array_equal(vol.at_scale(1).read(), half.transpose(2, 1, 0))
    # absent cubes: fill, and listed
    cube_file(tmp_path / "ds", "exp1", 1, 1, 0, 1).unlink()
    again = voxgate.open(f"knossos://{tmp_path}/ds")
    assert again.missing_chunks() == [(1, 0, 1)]
    assert not again[128:130, 0:128, 128:200].read().any()


def test_mag1_knossos_conf_and_conf_path(tmp_path: Path) -> None:
    data = np.arange(60 * 50 * 40, dtype=np.uint32).astype(np.uint8).reshape(60, 50, 40)
    write_classic(tmp_path / "ds", "e2", {1: data}, (5, 5, 5))
    os.replace(tmp_path / "ds" / "knossos.conf", tmp_path / "ds" / "mag1" / "knossos.conf")
    assert detect_format(str(tmp_path / "ds")) == "knossos"
    for url in (f"knossos://{tmp_path}/ds", f"knossos://{tmp_path}/ds/mag1/knossos.conf"):
        np.testing.assert_array_equal(voxgate.open(url).read(), data.transpose(2, 1, 0))


def test_voxgate_cubes_are_knossos_cubes(tmp_path: Path) -> None:
    """voxgate's cubes decode by the documented rule: x fastest, 128^3, one file per cube."""
    vol = voxgate.create(f"knossos://{tmp_path}/out", shape=(130, 140, 150),
                         chunks=(128, 128, 128), dtype="uint8", voxel_size=(25, 10, 10),
                         conf="knossos.conf", experiment="myexp")
    data = np.random.default_rng(2).integers(0, 255, (130, 140, 150), dtype=np.uint8)
    vol[:] = data
    conf = (tmp_path / "out" / "knossos.conf").read_text()
    assert 'experiment name "myexp";' in conf and "boundary x 150;" in conf
    assert "scale z 25.0;" in conf
    f = cube_file(tmp_path / "out", "myexp", 1, 1, 0, 1)
    cube = np.frombuffer(f.read_bytes(), np.uint8).reshape(128, 128, 128, order="F")  # x, y, z
    np.testing.assert_array_equal(cube[:22, :128, :2], data[128:130, 0:128, 128:150].T)
    assert len(list((tmp_path / "out").rglob("*.raw"))) == 8


def test_toml_dataset(tmp_path: Path) -> None:
    vol = voxgate.create(f"knossos://{tmp_path}/t", shape=(40, 70, 90), chunks=(32, 64, 64),
                         dtype="uint8", voxel_size=(30, 6, 6), num_scales=2, offset=(1, 2, 3))
    data = np.random.default_rng(3).integers(0, 255, (40, 70, 90), dtype=np.uint8)
    vol[:] = data
    toml = (tmp_path / "t" / "t.k.toml").read_text()
    assert "[[Layer]]" in toml and 'Name = "t"' in toml
    assert "Extent_px = [90, 70, 40]" in toml and "CubeShape_px = [64, 64, 32]" in toml
    assert "VoxelSize_nm = [[6, 6, 30], [12, 12, 30]]" in toml
    again = voxgate.open(f"knossos://{tmp_path}/t/t.k.toml")
    assert tuple(again.offset) == (1, 2, 3)
    np.testing.assert_array_equal(again.read(), data)
    assert (tmp_path / "t" / "mag1" / "x0001" / "y0001" / "z0000" /
            "t_mag1_x0001_y0001_z0000.raw").stat().st_size == 64 * 64 * 32


def test_pyknossos_conf_and_image_cubes(tmp_path: Path) -> None:
    """A PyKNOSSOS dataset of PNG and JPEG cubes (read only): 2-D images of the cube's voxels."""
    root = tmp_path / "pyk"
    root.mkdir()
    (root / "ds.pyk.conf").write_text(
        "[Dataset]\n_BaseName = pk\n_DataScale = 9,9,20, 18,18,40\n_Extent = 100,90,80\n"
        "_CubeSize = 64,64,64\n_BaseExt = .png\n"
    )
    rng = np.random.default_rng(4)
    cube = rng.integers(0, 255, (64, 64, 64), dtype=np.uint8)  # z, y, x
    f = cube_file(root, "pk", 1, 1, 0, 0, "png")
    f.parent.mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(cube.reshape(64 * 64, 64)).save(buf, format="PNG")
    f.write_bytes(buf.getvalue())
    vol = voxgate.open(f"knossos://{root}")
    assert vol.shape == (80, 90, 100) and vol.voxel_size.zyx() == (20.0, 9.0, 9.0)
    assert [tuple(s.shape) for s in vol.scales] == [(80, 90, 100), (40, 45, 50)]
    np.testing.assert_array_equal(vol[0:64, 0:64, 64:100].read(), cube[:, :, :36])
    assert not vol[0:64, 0:64, 0:64].read().any()
    # a JPEG cube: lossy, so compared loosely
    (root / "ds.pyk.conf").write_text(
        "[Dataset]\n_BaseName = pk\n_DataScale = 9,9,20\n_Extent = 100,90,80\n"
        "_CubeSize = 64,64,64\n_FileType = 3\n"
    )
    smooth = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, None, :] * 3,
                             (64, 64, 64)).copy()
    j = cube_file(root, "pk", 1, 0, 0, 0, "jpg")
    j.parent.mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(smooth.reshape(64 * 64, 64)).save(buf, format="JPEG", quality=95)
    j.write_bytes(buf.getvalue())
    got = voxgate.open(f"knossos://{root}")[0:64, 0:64, 0:64].read().astype(int)
    assert np.abs(got - smooth).max() <= 8


# -- bad input --------------------------------------------------------------------------------
def test_truncated_cube_is_an_error(tmp_path: Path) -> None:
    data = np.ones((130, 20, 20), np.uint8)
    write_classic(tmp_path / "ds", "e", {1: data}, (1, 1, 1))
    f = cube_file(tmp_path / "ds", "e", 1, 0, 0, 0)
    f.write_bytes(f.read_bytes()[: 128 * 128 * 100])
    vol = voxgate.open(f"knossos://{tmp_path}/ds")
    with pytest.raises(CorruptChunkError, match="truncated") as info:
        vol[0:5, 0:5, 0:5].read()
    assert info.value.chunk == str(f)
    assert (vol[0:5, 0:5, 129:130].read() == 1).all()  # the other cube still reads


def test_bad_configurations(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "knossos.conf").write_text('experiment name "x";\nboundary x 10;\n')
    with pytest.raises(InvalidRequestError, match="boundary y"):
        voxgate.open(f"knossos://{tmp_path}/a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "b.k.toml").write_text("[[Layer]]\nName = 'b'\nExtent_px = [1, 2]\n"
                                             "VoxelSize_nm = [[1, 1, 1]]\n")
    with pytest.raises(InvalidRequestError, match="Extent_px must be 3"):
        voxgate.open(f"knossos://{tmp_path}/b")
    with pytest.raises(InvalidRequestError, match="128"):
        voxgate.create(f"knossos://{tmp_path}/c", shape=(4, 4, 4), chunks=(2, 2, 2),
                       dtype="uint8", voxel_size=(1, 1, 1), conf="knossos.conf")
    with pytest.raises(InvalidRequestError, match="power-of-two"):
        voxgate.create(f"knossos://{tmp_path}/d", shape=(4, 256, 256), chunks=(128, 128, 128),
                       dtype="uint8", voxel_size=(40, 4, 4), num_scales=2,
                       conf="knossos.conf")


def test_cli_info_and_copy_to_zarr(tmp_path: Path) -> None:
    data = np.random.default_rng(5).integers(0, 255, (140, 60, 50), dtype=np.uint8)  # x, y, z
    write_classic(tmp_path / "ds", "e", {1: data}, (8, 8, 30))
    res = CliRunner().invoke(main, ["info", "--json", str(tmp_path / "ds")])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["scales"][0]["voxel_size_zyx"] == [30.0, 8.0, 8.0]
    voxgate.copy(f"knossos://{tmp_path}/ds", f"zarr://{tmp_path}/k.zarr", progress=False)
    np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path}/k.zarr").read(),
                                  data.transpose(2, 1, 0))
