"""Fidelity of three file formats against the readers that define them.

- KNOSSOS configurations as KNOSSOS (dataset.cpp ``fromLegacyConf``, ``parsePyKnossosConf``),
  knossos_utils and PyKNOSSOS (ConfigObj) read them: comments, trailing comments, values that
  are not one (refused with the file and line), comments inside a .k.toml's multi-line arrays
  kept when voxgate edits the file.
- TIFF past 4 GiB: BigTIFF written by tifffile whose data lies past 32-bit offsets (a sparse
  file), many pages, tiles appended past 4 GiB, 64-bit offsets, and slices that voxgate writes
  as BigTIFF once they are large (the threshold patched down to keep the test small).
- HDF5 written by saalfeldlab's N5HDF5Writer (n5-viewer, BigStitcher, Paintera on .h5): every
  per-axis attribute x, y, z as in N5, datasets' dimensions reversed into HDF5's z, y, x.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorstore as ts
import tifffile

import voxgate
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError
from voxgate.remotes.tiff import pages as tiff_pages

GiB4 = 2**32


def _cube(root: Path, name: str, ext: str = "raw", mag: int = 1) -> Path:
    p = (root / f"mag{mag}" / "x0000" / "y0000" / "z0000" /
         f"{name}_mag{mag}_x0000_y0000_z0000.{ext}")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


# -- KNOSSOS --------------------------------------------------------------------------------------
def test_classic_conf_comments_and_trailing_comments(tmp_path: Path) -> None:
    """KNOSSOS skips a line whose first word is no key and ignores what follows a value: a
    ``scale x 10.0 # nm`` (no ';') was skipped by voxgate (no 'scale x'), a ``png  # ...``
    flag too (the PNG cubes then read as zeros)."""
    root = tmp_path / "ds"
    root.mkdir()
    (root / "knossos.conf").write_text(
        "# acquired 2012, block face\n"
        "; exported by hand\n"
        "// another note\n"
        'experiment name "ds"; # the cubes\' name\n'
        "boundary x 16; boundary of mag 1\n"
        "boundary y 8 # rows\n"
        "boundary z 8;\n"
        "scale x 10.0 # nm\n"
        "scale y 11.0;// nm\n"
        "scale z 25.0 ;\n"
        "# boundary z 999;\n"
        "cube_edge_length 8;\n"
        "png  # cubes are png images\n"
    )
    from PIL import Image

    data = np.random.default_rng(0).integers(0, 255, (8, 8, 8), dtype=np.uint8)
    Image.fromarray(data.reshape(64, 8)).save(_cube(root, "ds", "png"))
    vol = voxgate.open(f"knossos://{root}")
    assert vol.shape == (8, 8, 16)
    assert vol.voxel_size.zyx() == (25.0, 11.0, 10.0)
    np.testing.assert_array_equal(vol[:, :, :8].read(), data)


@pytest.mark.parametrize(
    ("line", "number"),
    [
        ("magnification 2x;", 6),  # was skipped: a mag-2 conf read as mag 1
        ("boundary z 1O24;", 6),  # letter O: was skipped ("no 'boundary z' entry")
        ("boundary z\n8;", 6),  # a value on the next line: no reader joins lines
        # (words after a value, "png yes;" or 'experiment name "ds" extra;', are ignored as
        # KNOSSOS's own parser ignores them: tests/remotes/test_store_followups_audit.py)
    ],
)
def test_classic_conf_malformed_line_is_refused_with_file_and_line(
        tmp_path: Path, line: str, number: int) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    conf = root / "knossos.conf"
    conf.write_text('experiment name "ds";\nboundary x 8;\nboundary y 8;\nscale x 1;\n'
                    f"scale y 1;\n{line}\nboundary z 8;\nscale z 1;\n")
    with pytest.raises(InvalidRequestError, match=rf"knossos\.conf, line {number}: "):
        voxgate.open(f"knossos://{root}")


PYK = """[Dataset]
# PyKNOSSOS reads this file with ConfigObj: full-line and inline '#' comments
; KNOSSOS and knossos_utils skip lines that are no key they know
_BaseName = ds   # the cubes' name
_BaseExt = .raw
_DataScale = 10,11,25,20,22,50,   # two mags, x,y,z each
_Extent = 16,8,8,
_CubeSize = 8,8,8
"""


def test_pyk_conf_comments(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "ds.pyk.conf").write_text(PYK + "\n[Dataset]\n_BaseName = seg # overlay\n")
    data = np.arange(512, dtype=np.uint8).reshape(8, 8, 8)
    _cube(root, "ds").write_bytes(data.tobytes())
    vol = voxgate.open(f"knossos://{root}")
    assert vol.shape == (8, 8, 16)
    assert [s.voxel_size.zyx() for s in vol.scales] == [(25, 11, 10), (50, 22, 20)]
    np.testing.assert_array_equal(vol[:, :, :8].read(), data)


def test_pyk_conf_value_continued_on_next_line_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "ds.pyk.conf").write_text(PYK.replace("20,22,50,   # two mags, x,y,z each",
                                                  "\n    20,22,50,"))
    # KNOSSOS would read one mag of the two; voxgate says where the file is wrong
    with pytest.raises(InvalidRequestError, match=r"ds\.pyk\.conf, line 7: '20,22,50,'"):
        voxgate.open(f"knossos://{root}")
    (root / "ds.pyk.conf").write_text(PYK.replace("_Extent = 16,8,8,", "_Extent = 16,8,x"))
    with pytest.raises(InvalidRequestError, match=r"ds\.pyk\.conf, line 7: _Extent"):
        voxgate.open(f"knossos://{root}")


TOML = """[[Layer]]
Name = "ds"
Description = ""
FileExtension = [".raw"]
Extent_px = [
    16, # x
    8,  # y ] not the end of the array
    8,  # z
]
VoxelSize_nm = [ # one x, y, z per mag
    [10, 10, 20], # mag1: as acquired
    # [15, 15, 30], a mag that was dropped
]
CubeShape_px = [8, 8, 8]
"""


def test_k_toml_add_scales_keeps_comments_inside_multiline_arrays(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    conf = root / "ds.k.toml"
    conf.write_text(TOML)
    vol = voxgate.open(f"knossos://{root}", mode="r+")
    data = np.random.default_rng(1).integers(0, 255, (8, 8, 16), dtype=np.uint8)
    vol.write(data)
    voxgate.downsample(vol, 2)
    text = conf.read_text()
    for comment in ("# one x, y, z per mag", "# mag1: as acquired",
                    "# [15, 15, 30], a mag that was dropped", "# y ] not the end of the array"):
        assert comment in text, text
    doc = tomllib.loads(text)
    assert doc["Layer"][0]["VoxelSize_nm"] == [[10, 10, 20], [20, 20, 20]]
    again = voxgate.open(f"knossos://{root}")
    assert [s.voxel_size.zyx() for s in again.scales] == [(20, 10, 10), (20, 20, 20)]
    np.testing.assert_array_equal(again.read(), data)


def test_k_toml_malformed_array_is_refused_with_line(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "ds.k.toml").write_text(TOML.replace("    8,  # z\n", "    8  # z\n    8\n"))
    with pytest.raises(InvalidRequestError, match=r"ds\.k\.toml is not valid TOML: .*line 9"):
        voxgate.open(f"knossos://{root}")


# -- TIFF -----------------------------------------------------------------------------------------
def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(1 << 16)


def test_tifffile_bigtiff_with_data_past_4gib(tmp_path: Path) -> None:
    """A BigTIFF by tifffile whose last pages start past 4 GiB (a sparse file: 6 GiB long,
    a few KiB on disk)."""
    path = tmp_path / "big.tif"
    shape = (4, 49152, 32768)  # 1.5 GiB a page
    tifffile.imwrite(path, shape=shape, dtype="uint8", bigtiff=True, photometric="minisblack")
    m = tifffile.memmap(path, mode="r+")
    m[3, -3:, -4:] = np.arange(1, 13, dtype=np.uint8).reshape(3, 4)
    m[2, 7, 9] = 200
    m.flush()
    del m
    with tifffile.TiffFile(path) as tf:
        assert tf.is_bigtiff and int(tf.pages[3].dataoffsets[0]) > GiB4
    vol = voxgate.open(f"tiff://{path}")
    assert vol.shape == shape
    np.testing.assert_array_equal(vol[3, -3:, -4:].read(),
                                  np.arange(1, 13, dtype=np.uint8).reshape(3, 4))
    assert vol[2, 7, 9].read() == 200 and vol[3, -4, -1].read() == 0


def test_tifffile_bigtiff_with_many_pages(tmp_path: Path) -> None:
    n = 3000
    data = np.zeros((n, 2, 3), np.uint16)
    data[:, 0, 0] = np.arange(n)
    data[-1, 1, 2] = 65535
    tifffile.imwrite(tmp_path / "pages.tif", data, bigtiff=True, photometric="minisblack")
    vol = voxgate.open(f"tiff://{tmp_path}/pages.tif")
    assert vol.shape == (n, 2, 3)
    np.testing.assert_array_equal(vol[n - 5:].read(), data[n - 5:])


def test_compressed_tile_appended_past_4gib(tmp_path: Path) -> None:
    """A rewritten compressed tile goes to the file's end: past 4 GiB its offset needs the
    BigTIFF's 64-bit entries (voxgate's files), and a classic TIFF refuses it unchanged."""
    path = tmp_path / "z.tif"
    vol = voxgate.create(f"tiff://{path}", shape=(2, 32, 32), chunks=(1, 16, 16),
                         dtype="uint8", voxel_size=(30, 4, 4), compression="zlib",
                         offset=(2**33, 2**40, 5))
    os.truncate(path, GiB4 + 1000)  # sparse: the file now ends past 4 GiB
    data = np.random.default_rng(2).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    vol[:] = data
    with tifffile.TiffFile(path) as tf:
        assert tf.is_bigtiff and tf.series[0].shape == (2, 32, 32)
        assert max(int(o) for p in tf.pages for o in p.dataoffsets) > GiB4
        np.testing.assert_array_equal(tf.asarray(), data)
        assert json.loads(tf.pages[0].tags[65000].value)["offset"] == [2**33, 2**40, 5]
    again = voxgate.open(f"tiff://{path}")
    assert tuple(again.offset) == (2**33, 2**40, 5)
    np.testing.assert_array_equal(again.read(), data)

    classic = tmp_path / "classic.tif"
    tifffile.imwrite(classic, np.zeros((2, 32, 32), np.uint8), tile=(16, 16),
                     compression="zlib", photometric="minisblack", bigtiff=False)
    os.truncate(classic, GiB4 - 10)
    before = _head(classic)
    c = voxgate.open(f"tiff://{classic}", mode="r+")
    with pytest.raises(CapabilityNotSupportedError, match="offsets reach"):
        c[0, :16, :16] = np.ones((16, 16), np.uint8)
    assert _head(classic) == before and os.path.getsize(classic) == GiB4 - 10


@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_large_slices_are_written_as_bigtiff(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str) -> None:
    """Slices of more than the threshold (4 GiB less 32 MiB; patched to 1000 bytes) are
    BigTIFF, compressed ones too (tifffile decides so for uncompressed data only)."""
    monkeypatch.setattr(tiff_pages, "BIGTIFF_ABOVE", 1000)
    data = np.random.default_rng(3).integers(0, 2**16, (3, 40, 50), dtype=np.uint16)
    vol = voxgate.create(f"tiff://{tmp_path}/slices", shape=data.shape, chunks=(1, 16, 16),
                         dtype="uint16", voxel_size=(30, 4, 4), compression=compression)
    vol[:] = data
    vol[1, 3:7, 5:9] = np.full((4, 4), 7, np.uint16)  # a partial rewrite of one slice
    data[1, 3:7, 5:9] = 7
    files = sorted((tmp_path / "slices").glob("*.tif"))
    assert len(files) == 3
    for z, f in enumerate(files):
        with tifffile.TiffFile(f) as tf:
            assert tf.is_bigtiff, f
            np.testing.assert_array_equal(tf.asarray(), data[z])
    np.testing.assert_array_equal(voxgate.open(f"tiff://{tmp_path}/slices").read(), data)
    monkeypatch.setattr(tiff_pages, "BIGTIFF_ABOVE", 10**9)  # small slices stay classic
    voxgate.open(f"tiff://{tmp_path}/slices", mode="r+")[0] = data[0]
    with tifffile.TiffFile(files[0]) as tf:
        assert not tf.is_bigtiff


# -- HDF5 (n5-hdf5) -------------------------------------------------------------------------------
def _n5_hdf5_attr(obj: h5py.HLObject, key: str, value: str) -> None:
    """A string attribute as JHDF5 (N5HDF5Writer) writes it: fixed-length, not h5py's vlen."""
    obj.attrs.create(key, np.bytes_(value))


def _n5_hdf5_group(path: Path, data: np.ndarray) -> None:
    """What n5-viewer's / BigStitcher's export does through N5HDF5Writer: the root's ``n5``
    version; a group with ``multiScale``, ``scales`` (double[][], x, y, z per scale) and
    ``pixelResolution`` (an object: N5_JSON_ROOT JSON); each ``sN`` with its own
    ``downsamplingFactors`` (x, y, z) and ``pixelResolution``; dimensions reversed, so the
    HDF5 dataset is (z, y, x)."""
    pr = {"unit": "um", "dimensions": [0.004, 0.005, 0.04]}  # x, y, z
    with h5py.File(path, "w") as f:
        _n5_hdf5_attr(f, "n5", "4.0.0")
        g = f.create_group("volumes/raw")
        g.attrs["multiScale"] = np.int8(1)
        g.attrs["scales"] = np.array([[1, 1, 1], [2, 2, 1]], np.float64)
        _n5_hdf5_attr(g, "N5_JSON_ROOT", json.dumps({"pixelResolution": pr}))
        for i, (fac, arr) in enumerate([([1, 1, 1], data), ([2, 2, 1], data[:, ::2, ::2])]):
            ds = g.create_dataset(f"s{i}", data=arr, chunks=(4, 4, 4), compression="gzip")
            ds.attrs["downsamplingFactors"] = np.array(fac, np.float64)
            _n5_hdf5_attr(ds, "N5_JSON_ROOT", json.dumps({"pixelResolution": pr}))


def test_n5_hdf5_multiscale_group_geometry(tmp_path: Path) -> None:
    data = np.random.default_rng(4).integers(0, 255, (7, 10, 13), dtype=np.uint8)
    path = tmp_path / "export.h5"
    _n5_hdf5_group(path, data)
    vol = voxgate.open(f"hdf5://{path}#/volumes/raw")
    assert vol.shape == (7, 10, 13)
    assert [s.voxel_size.zyx() for s in vol.scales] == [(40, 5, 4), (40, 10, 8)]
    assert [tuple(s.shape) for s in vol.scales] == [(7, 10, 13), (7, 5, 7)]
    np.testing.assert_array_equal(vol.read(), data)
    np.testing.assert_array_equal(vol.at_scale(1).read(), data[:, ::2, ::2])

    # the same attributes in an N5 container, read by n5://: the same geometry
    n5 = tmp_path / "export.n5"
    for i, arr in enumerate([data, data[:, ::2, ::2]]):
        ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(n5 / f"s{i}")},
                 "metadata": {"dimensions": list(arr.shape[::-1]), "blockSize": [4, 4, 4],
                              "dataType": "uint8", "compression": {"type": "gzip"}}},
                create=True).result().write(arr.T).result()
        attrs = json.loads((n5 / f"s{i}" / "attributes.json").read_text())
        attrs.update(downsamplingFactors=[[1, 1, 1], [2, 2, 1]][i],
                     pixelResolution={"unit": "um", "dimensions": [0.004, 0.005, 0.04]})
        (n5 / f"s{i}" / "attributes.json").write_text(json.dumps(attrs))
    (n5 / "attributes.json").write_text(json.dumps({"multiScale": True, "n5": "4.0.0"}))
    ref = voxgate.open(f"n5://{n5}")
    assert [s.voxel_size.zyx() for s in ref.scales] == [s.voxel_size.zyx() for s in vol.scales]


def test_n5_hdf5_dataset_resolution_offset_and_axes(tmp_path: Path) -> None:
    """Paintera / tensorstore attributes through N5HDF5Writer: ``resolution`` and a physical
    ``offset``, x, y, z, and N5 ``axes`` (x, y, z: the reverse of HDF5's dimensions)."""
    data = np.arange(7 * 10 * 13, dtype=np.uint32).reshape(7, 10, 13)
    path = tmp_path / "paintera.h5"
    with h5py.File(path, "w") as f:
        _n5_hdf5_attr(f, "n5", "4.0.0")
        ds = f.create_dataset("raw", data=data, chunks=(4, 4, 4))
        ds.attrs["resolution"] = np.array([4.0, 5.0, 40.0])
        ds.attrs["offset"] = np.array([8.0, 15.0, 80.0])
        ds.attrs["axes"] = np.array(["x", "y", "z"], dtype=h5py.string_dtype())
    vol = voxgate.open(f"hdf5://{path}#/raw")
    assert vol.voxel_size.zyx() == (40, 5, 4)
    assert tuple(vol.offset) == (2, 3, 2)
    np.testing.assert_array_equal(vol.read(), data)


def test_hdf5_without_n5_attribute_stays_zyx(tmp_path: Path) -> None:
    """The x, y, z reading is for N5HDF5Writer's files only: CREMI's ``resolution`` is z, y,
    x, and a voxgate volume in an n5-hdf5 file keeps its own (z, y, x) attributes."""
    data = np.zeros((7, 10, 13), np.uint8)
    cremi = tmp_path / "cremi.h5"
    with h5py.File(cremi, "w") as f:
        f.create_dataset("volumes/raw", data=data).attrs["resolution"] = [40.0, 4.0, 4.0]
    assert voxgate.open(f"hdf5://{cremi}#/volumes/raw").voxel_size.zyx() == (40, 4, 4)
    mixed = tmp_path / "mixed.h5"
    _n5_hdf5_group(mixed, data)
    v = voxgate.create(f"hdf5://{mixed}#/mine", shape=(7, 10, 13), chunks=(4, 4, 4),
                       dtype="uint8", voxel_size=(30, 6, 5), offset=(1, 2, 3), num_scales=2)
    v.remote.close()
    again = voxgate.open(f"hdf5://{mixed}#/mine")
    assert [s.voxel_size.zyx() for s in again.scales] == [(30, 6, 5), (30, 12, 10)]
    assert tuple(again.offset) == (1, 2, 3)
