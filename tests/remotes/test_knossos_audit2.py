"""A second audit of knossos:// against the KNOSSOS program (dataset.cpp: fromLegacyConf,
parseToml, knossosCubeUrl) and knossos_utils (knossosdataset.py: parse_knossos_conf,
_initialize_from_dict): .k.toml edits that keep the file's comments, classic confs whose cubes
are on a server, experiment names KNOSSOS cuts, writes that fail before any cube is written."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.errors import CapabilityNotSupportedError, CorruptChunkError, InvalidRequestError


def cube_file(root: Path, name: str, mag: int, x: int, y: int, z: int) -> Path:
    # dataset.cpp knossosCubeUrl: /mag%1/x%2/y%3/z%4/NAME_mag%1_x%2_y%3_z%4.raw, 4-digit indices
    return (root / f"mag{mag}" / f"x{x:04d}" / f"y{y:04d}" / f"z{z:04d}" /
            f"{name}_mag{mag}_x{x:04d}_y{y:04d}_z{z:04d}.raw")


# a .k.toml as a person keeps it: comments, a multi-line array, CRLF-free, a second layer
COMMENTED = '''# lab dataset: keep these notes
Version = 1  # top-level key

[[Layer]]  # the image layer
Name = "ds"   # the cubes' name
Description = "EM # not a comment"
FileExtension = [".raw"]
Extent_px = [40, 30, 20]
VoxelSize_nm = [
    [10, 10, 20],
]  # one triple per mag
CubeShape_px = [8, 8, 8]

# the segmentation overlay
[[Layer]]
Name = "seg"
Description = ""
FileExtension = [".seg.sz.zip"]
Extent_px = [40, 30, 20]
VoxelSize_nm = [[10, 10, 20]]
CubeShape_px = [8, 8, 8]
'''


def test_add_scales_keeps_the_tomls_comments(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    conf = root / "ds.k.toml"
    conf.write_text(COMMENTED)
    before = tomllib.loads(COMMENTED)
    vol = voxgate.open(f"knossos://{root}", mode="r+")
    data = np.random.default_rng(3).integers(0, 255, (20, 30, 40), dtype=np.uint8)
    vol.write(data)
    voxgate.downsample(vol, 2)  # one add_scales
    voxgate.downsample(voxgate.open(f"knossos://{root}", mode="r+"), 3)  # and another
    text = conf.read_text()
    for comment in ("# lab dataset: keep these notes", "# top-level key", "# the image layer",
                    "# the cubes' name", "# one triple per mag", "# the segmentation overlay"):
        assert comment in text
    after = tomllib.loads(text)
    # only VoxelSize_nm of the first layer changed; everything else reads as it did
    assert after["Layer"][0].pop("VoxelSize_nm") == [[10, 10, 20], [20, 20, 20], [40, 40, 40]]
    before["Layer"][0].pop("VoxelSize_nm")
    assert after == before
    again = voxgate.open(f"knossos://{root}")
    assert [tuple(s.shape) for s in again.scales] == [(20, 30, 40), (20, 15, 20), (10, 8, 10)]
    np.testing.assert_array_equal(again.read(), data)
    assert (root / "mag3").is_dir()  # ordinal mag folders (no ServerFormat)


def test_add_scales_adds_the_description_knossos_requires_in_place(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    conf = root / "ds.k.toml"
    conf.write_bytes(b'[[Layer]]\r\n# mine\r\nName = "ds"\r\nExtent_px = [16, 8, 8]\r\n'
                     b'VoxelSize_nm = [10, 10, 10]\r\nCubeShape_px = [8, 8, 8] # small\r\n'
                     b'FileExtension = [".raw"]')
    voxgate.downsample(voxgate.open(f"knossos://{root}", mode="r+"), 2)
    assert conf.read_bytes() == (
        b'[[Layer]]\r\n# mine\r\nName = "ds"\r\nExtent_px = [16, 8, 8]\r\n'
        b'VoxelSize_nm = [[10, 10, 10], [20, 20, 20]]\r\nCubeShape_px = [8, 8, 8] # small\r\n'
        b'FileExtension = [".raw"]\r\nDescription = ""\r\n')


def test_classic_conf_with_ftp_mode_is_refused_not_zeros(tmp_path: Path) -> None:
    # fromLegacyConf / parse_knossos_conf: "ftp_mode HOST PATH USER PASSWORD TIMEOUT" puts the
    # cubes on that server; read locally every cube would be absent (zeros)
    root = tmp_path / "remote"
    root.mkdir()
    (root / "knossos.conf").write_text(
        'experiment name "e";\nboundary x 256;\nboundary y 256;\nboundary z 256;\n'
        "scale x 10;\nscale y 10;\nscale z 20;\n"
        "ftp_mode knossos.example.org /e/ user s3cret 30;\n")
    with pytest.raises(CapabilityNotSupportedError, match=r"knossos\.example\.org") as err:
        voxgate.open(f"knossos://{root}")
    assert "s3cret" not in str(err.value) and "ftp_mode" in str(err.value)


def test_create_refuses_a_name_knossos_cuts_at_mag(tmp_path: Path) -> None:
    kw = {"shape": (8, 8, 8), "dtype": "uint8", "chunks": (8, 8, 8), "voxel_size": (10, 10, 10)}
    with pytest.raises(InvalidRequestError, match="_mag"):
        voxgate.create(f"knossos://{tmp_path}/brain_mag", **kw)
    with pytest.raises(InvalidRequestError, match="_mag"):
        voxgate.create(f"knossos://{tmp_path}/b", experiment="x_magnified", **kw)
    assert not (tmp_path / "brain_mag").exists() and not (tmp_path / "b").exists()
    vol = voxgate.create(f"knossos://{tmp_path}/brain_mag", experiment="brain", **kw)
    vol.write(np.full((8, 8, 8), 5, np.uint8))
    # the file KNOSSOS asks for: the name before its first "_mag" (here the whole name)
    name = "brain".split("_mag")[0]
    assert (np.frombuffer(cube_file(tmp_path / "brain_mag", name, 1, 0, 0, 0).read_bytes(),
                          np.uint8) == 5).all()


def test_a_write_that_meets_a_truncated_cube_writes_nothing(tmp_path: Path) -> None:
    vol = voxgate.create(f"knossos://{tmp_path}/w", shape=(20, 30, 40), dtype="uint8",
                         chunks=(8, 8, 8), voxel_size=(10, 10, 10))
    vol.write(np.full((20, 30, 40), 3, np.uint8))
    bad = cube_file(tmp_path / "w", "w", 1, 4, 3, 2)  # the last cube the write visits
    bad.write_bytes(bad.read_bytes()[:-5])
    files = sorted((tmp_path / "w" / "mag1").rglob("*.raw"))
    before = {f: f.read_bytes() for f in files}
    with pytest.raises(CorruptChunkError, match="507 bytes"):
        vol[1:19, 1:29, 1:39].write(np.full((18, 28, 38), 7, np.uint8))
    assert sorted((tmp_path / "w" / "mag1").rglob("*.raw")) == files
    assert all(f.read_bytes() == before[f] for f in files)
    # a write that covers the bad cube whole replaces it
    vol[16:20, 24:30, 32:40].write(np.full((4, 6, 8), 9, np.uint8))
    assert (vol[16:20, 24:30, 32:40].read() == 9).all()
    assert (vol[0:16].read() == 3).all()
