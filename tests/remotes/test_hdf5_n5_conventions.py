"""HDF5 and N5 volumes as the tools of connectomics labs write them (ilastik, funlib.persistence /
gunpowder, CREMI, BigDataViewer, n5-viewer, Paintera, COSEM / OpenOrganelle), made here with
h5py and tensorstore the way each tool's source writes them: voxgate reads each with the right
shape, axis order, voxel size (nm), offset (voxels) and dtype, and every voxel at odd boxes
equals numpy's, or refuses it with an error naming what it cannot read, never with wrong
geometry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tensorstore as ts

import voxgate
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError

from .test_n5_add_scales import as_older_voxgate_wrote_it
from .test_n5_neuroglancer import _merged, _rank

RNG = np.random.default_rng(11)
ZYX = (7, 10, 13)
#: odd boxes (z, y, x slices), some across chunk edges
BOXES = [
    (slice(None), slice(None), slice(None)),
    (slice(1, 6), slice(3, 10), slice(2, 11)),
    (slice(6, 7), slice(0, 1), slice(12, 13)),
    (slice(0, 3), slice(4, 9), slice(0, 13)),
]


def _same_voxels(vol: Any, ref: np.ndarray) -> None:
    assert vol.shape == ref.shape and vol.dtype == ref.dtype
    for box in BOXES:
        np.testing.assert_array_equal(vol[box].read(), ref[box], err_msg=str(box))


# -- HDF5 -----------------------------------------------------------------------------------------
def _axistags(keys: str) -> str:
    """vigra's ``AxisTags.toJSON()``, which ilastik writes to its exports' ``axistags``."""
    flags = {"t": 8, "c": 1, "z": 2, "y": 2, "x": 2}
    return json.dumps({"axes": [{"key": k, "typeFlags": flags[k], "resolution": 0,
                                 "description": ""} for k in keys]}, indent=2)


@pytest.mark.parametrize(
    ("shape", "attrs", "dims", "where"),
    [
        # ilastik's default export of a 3-D probability map / simple segmentation
        ((*ZYX, 1), {"axistags": _axistags("zyxc")}, None, "axistags"),
        ((*ZYX, 3), {"axistags": _axistags("zyxc")}, None, "axistags"),
        (ZYX, {"axistags": _axistags("xyz")}, None, "axistags"),
        # funlib.persistence: "axis_names", a channel axis ending in "^"
        ((*ZYX, 2), {"axis_names": ["z", "y", "x", "c^"]}, None, "axis_names"),
        # HDF5 dimension scales (h5py's ds.dims[i].label)
        ((*ZYX, 2), {}, "zyxc", "dimension-scale label"),
    ],
    ids=["ilastik-zyxc-1", "ilastik-zyxc-3", "ilastik-xyz", "funlib-channel-last", "dim-labels"],
)
def test_channel_last_or_xyz_datasets_are_refused(
        tmp_path: Path, shape: tuple[int, ...], attrs: dict[str, Any], dims: str | None,
        where: str) -> None:
    """Read as (c, z, y, x), ilastik's (z, y, x, 1) opened as 7 channels of a (10, 13, 1)
    volume; now each stated axis order other than voxgate's is refused, naming it."""
    path = tmp_path / "export.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("exported_data", data=RNG.random(shape, dtype=np.float32))
        for k, v in attrs.items():
            ds.attrs[k] = v
        for i, label in enumerate(dims or ""):
            ds.dims[i].label = label
    with pytest.raises(InvalidRequestError, match=f"has axes .*its {where} attribute"):
        voxgate.open(f"hdf5://{path}#/exported_data")


@pytest.mark.parametrize(
    "attrs",
    [{"axistags": _axistags("czyx")}, {"axis_names": ["c^", "z", "y", "x"]},
     # funlib.persistence's default names and its "types" (as the zarr store reads them);
     # read as axes c, d0, d1, d2 these were refused
     {"axis_names": ["c0^", "d0", "d1", "d2"]},
     {"types": ["channel", "space", "space", "space"]}],
    ids=["ilastik-czyx", "funlib-czyx", "funlib-default-names", "funlib-types"],
)
def test_channel_first_datasets_are_read(tmp_path: Path, attrs: dict[str, Any]) -> None:
    data = RNG.integers(0, 255, (2, *ZYX), dtype=np.uint8)
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", data=data, chunks=(1, 4, 4, 4))
        for k, v in attrs.items():
            ds.attrs[k] = v
    vol = voxgate.open(f"hdf5://{path}#/data")
    assert vol.meta.num_channels == 2
    np.testing.assert_array_equal(vol.read(), data)


def test_funlib_persistence_3d_default_names_and_ambiguous_ones(tmp_path: Path) -> None:
    """funlib.persistence names a 3-D array's axes d0, d1, d2 by default: z, y, x in dimension
    order, as the zarr store reads them; two unnamed space axes and a time axis are refused."""
    data = RNG.integers(0, 255, ZYX, dtype=np.uint8)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=data).attrs["axis_names"] = ["d0", "d1", "d2"]
        t = f.create_dataset("t", data=RNG.integers(0, 255, (2, *ZYX), dtype=np.uint8))
        t.attrs["axis_names"] = ["t", "d0", "d1", "d2"]
        t.attrs["types"] = ["time", "space", "space", "space"]
    vol = voxgate.open(f"hdf5://{path}#/d")
    np.testing.assert_array_equal(vol.read(), data)
    with pytest.raises(InvalidRequestError, match="none named z, y or x"):
        voxgate.open(f"hdf5://{path}#/t")


def test_funlib_persistence_units_list(tmp_path: Path) -> None:
    """funlib.persistence writes ``voxel_size``, ``offset`` (world units), ``axis_names`` and a
    per-axis ``units`` list; voxgate read no ``units``, taking micrometres as nanometres."""
    data = RNG.integers(0, 2**32, ZYX, dtype=np.uint32)
    path = tmp_path / "funlib.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("labels", data=data, chunks=(4, 4, 4))
        ds.attrs["voxel_size"] = [1.0, 0.5, 0.25]
        ds.attrs["offset"] = [2.0, 1.0, 1.5]
        ds.attrs["axis_names"] = ["z", "y", "x"]
        ds.attrs["units"] = ["um", "um", "um"]
    vol = voxgate.open(f"hdf5://{path}#/labels")
    assert vol.voxel_size.zyx() == pytest.approx((1000, 500, 250))
    assert tuple(vol.offset) == (2, 2, 6)
    _same_voxels(vol, data)


def test_cremi_file(tmp_path: Path) -> None:
    """CREMI: ``volumes/raw`` and ``volumes/labels/neuron_ids`` with ``resolution`` (z, y, x,
    nm) and the labels' ``offset`` in nm (the padded files' 37, 911, 911 voxels)."""
    raw = RNG.integers(0, 255, ZYX, dtype=np.uint8)
    ids = RNG.integers(0, 2**63, ZYX, dtype=np.uint64)
    path = tmp_path / "sample_A.hdf"
    with h5py.File(path, "w") as f:
        f.create_dataset("volumes/raw", data=raw, chunks=(4, 4, 4)).attrs["resolution"] = [
            40.0, 4.0, 4.0]
        ds = f.create_dataset("volumes/labels/neuron_ids", data=ids, compression="gzip")
        ds.attrs["resolution"] = np.array([40.0, 4.0, 4.0])
        ds.attrs["offset"] = np.array([1480.0, 3644.0, 3644.0])
    vol = voxgate.open(f"hdf5://{path}#/volumes/labels/neuron_ids")
    assert vol.voxel_size.zyx() == (40, 4, 4) and tuple(vol.offset) == (37, 911, 911)
    assert vol.meta.kind == "segmentation"
    _same_voxels(vol, ids)
    vol = voxgate.open(f"hdf5://{path}#/volumes/raw")
    assert vol.voxel_size.zyx() == (40, 4, 4) and tuple(vol.offset) == (0, 0, 0)
    _same_voxels(vol, raw)


def test_add_scales_to_a_group_with_a_flat_scales_list(tmp_path: Path) -> None:
    """A group whose ``scales`` another tool wrote flat (1, 1, 1, 2, 2, 2): add_scales failed
    with a TypeError (it iterated each number)."""
    s0 = RNG.integers(0, 255, (8, 16, 16), dtype=np.uint8)
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("vol")
        g.create_dataset("s0", data=s0, chunks=(4, 8, 8))
        g.create_dataset("s1", data=s0[::2, ::2, ::2], chunks=(4, 8, 8))
        g.attrs["scales"] = [1, 1, 1, 2, 2, 2]
        g.attrs["resolution"] = [40.0, 4.0, 4.0]
    url = f"hdf5://{path}#/vol"
    assert [s.voxel_size.zyx() for s in voxgate.open(url).scales] == [(40, 4, 4), (80, 8, 8)]
    voxgate.downsample(url, num_scales=3, factors=[(2, 2, 2), (2, 2, 2)])
    vol = voxgate.open(url)
    assert [s.voxel_size.zyx() for s in vol.scales] == [(40, 4, 4), (80, 8, 8), (160, 16, 16)]
    assert tuple(vol.scales[2].shape) == (2, 4, 4)
    np.testing.assert_array_equal(vol.read(), s0)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["vol"].attrs["scales"],
                                      [[1, 1, 1], [2, 2, 2], [4, 4, 4]])


def _bdv_file(path: Path, data: np.ndarray) -> None:
    """As BigDataViewer's WriteSequenceToHdf5 writes one setup: ``s00/resolutions`` and
    ``s00/subdivisions`` (x, y, z per level), ``t00000/s00/<level>/cells`` holding the uint16
    voxels as HDF5 int16."""
    with h5py.File(path, "w") as f:
        f["s00/resolutions"] = np.array([[1, 1, 1], [2, 2, 1]], dtype=np.float64)
        f["s00/subdivisions"] = np.array([[4, 4, 4], [4, 4, 4]], dtype=np.int32)
        f.create_dataset("t00000/s00/0/cells", data=data.view(np.int16), chunks=(4, 4, 4))
        f.create_dataset("t00000/s00/1/cells", data=data[:, ::2, ::2].view(np.int16),
                         chunks=(4, 4, 4))


def test_bigdataviewer_cells_are_uint16(tmp_path: Path) -> None:
    """BDV stores uint16 voxels as int16; read as int16 every voxel above 32767 was negative."""
    data = RNG.integers(0, 2**16, ZYX, dtype=np.uint16)
    data[0, 0, 0] = 65535
    path = tmp_path / "dataset.h5"
    _bdv_file(path, data)
    vol = voxgate.open(f"hdf5://{path}#/t00000/s00/0/cells")
    assert vol.dtype == np.uint16 and vol.voxel_size.zyx() == (1, 1, 1)
    _same_voxels(vol, data)
    level1 = voxgate.open(f"hdf5://{path}#/t00000/s00/1/cells")
    assert level1.voxel_size.zyx() == (1, 2, 2)  # resolutions row (2, 2, 1) is x, y, z
    np.testing.assert_array_equal(level1.read(), data[:, ::2, ::2])
    writable = voxgate.open(f"hdf5://{path}#/t00000/s00/0/cells", mode="r+")
    writable[1:3, 2:5, 3:9] = np.full((2, 3, 6), 40000, np.uint16)
    data[1:3, 2:5, 3:9] = 40000
    writable.remote.close()
    with h5py.File(path, "r") as f:  # the bytes BDV reads back as uint16
        np.testing.assert_array_equal(f["t00000/s00/0/cells"][()].view(np.uint16), data)


# -- N5 -------------------------------------------------------------------------------------------
def _n5(path: Path, xyz: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
    ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)},
             "metadata": {"dimensions": list(xyz.shape), "blockSize": [4] * xyz.ndim,
                          "dataType": xyz.dtype.name, "compression": {"type": "gzip"}}},
            create=True).result().write(xyz).result()
    if attrs:
        _add(path, attrs)


def _add(path: Path, attrs: dict[str, Any]) -> None:
    f = path / "attributes.json"
    old = json.loads(f.read_text()) if f.exists() else {}
    path.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({**old, **attrs}))


def test_paintera_label_multiset_is_refused(tmp_path: Path) -> None:
    """A Paintera label-multiset dataset says dataType uint8; opened as such its absent blocks
    read as zeros of an "image"; now it is refused at open."""
    root = tmp_path / "paintera.n5"
    _add(root, {"n5": "2.0.0"})
    for level in ("s0", "s1"):
        _n5(root / "labels/data" / level, np.zeros((4, 4, 4), np.uint8),
            {"isLabelMultiset": True})
    _add(root / "labels/data", {"multiScale": True, "isLabelMultiset": True,
                                "resolution": [4.0, 4.0, 40.0]})
    for where in ("labels/data", "labels/data/s0"):
        with pytest.raises(CapabilityNotSupportedError, match="label-multiset"):
            voxgate.open(f"n5://{root / where}")


@pytest.mark.parametrize("tool", ["n5-viewer", "paintera", "cosem"])
def test_n5_viewer_paintera_and_cosem_groups(tmp_path: Path, tool: str) -> None:
    """Voxel size (x, y, z in the file, in um for n5-viewer) and offset (Paintera's and COSEM's
    physical centre of the first voxel) of s0 and s1, and every voxel."""
    data = RNG.integers(0, 2**16, ZYX, dtype=np.uint16)
    s1 = data[::2, ::2, ::2]
    root = tmp_path / "c.n5"
    _add(root, {"n5": "2.0.0"})
    if tool == "cosem":
        tfs = [{"axes": ["z", "y", "x"], "order": "C", "scale": [40.0, 5.0, 4.0],
                "translate": [400.0, 50.0, 40.0], "units": ["nm"] * 3},
               {"axes": ["z", "y", "x"], "order": "C", "scale": [80.0, 10.0, 8.0],
                "translate": [420.0, 52.5, 42.0], "units": ["nm"] * 3}]
        _n5(root / "s0", data.T, {"transform": tfs[0]})
        _n5(root / "s1", s1.T, {"transform": tfs[1]})
        _add(root, {"multiscales": [{"datasets": [{"path": f"s{i}", "transform": tf}
                                                  for i, tf in enumerate(tfs)]}]})
    else:
        _n5(root / "s0", data.T)
        _n5(root / "s1", s1.T, {"downsamplingFactors": [2, 2, 2]})
        if tool == "n5-viewer":
            _add(root, {"multiScale": True, "scales": [[1, 1, 1], [2, 2, 2]],
                        "pixelResolution": {"dimensions": [0.004, 0.005, 0.04], "unit": "um"}})
        else:
            _add(root, {"multiScale": True, "resolution": [4.0, 5.0, 40.0],
                        "offset": [40.0, 50.0, 400.0]})
    vol = voxgate.open(f"n5://{root}")
    for s, want in zip(vol.scales, [(40, 5, 4), (80, 10, 8)], strict=True):
        assert s.voxel_size.zyx() == pytest.approx(want)
    offsets = [(0, 0, 0), (0, 0, 0)] if tool == "n5-viewer" else [(10, 10, 10), (5, 5, 5)]
    assert [tuple(s.offset) for s in vol.scales] == offsets
    _same_voxels(vol, data)
    np.testing.assert_array_equal(vol.at_scale(1).read(), s1)


def test_add_scales_completes_the_lists_of_an_old_multichannel_groups_scales(
        tmp_path: Path) -> None:
    """An older voxgate wrote x, y, z lists (3 entries) in each sN of x, y, z, c data; adding
    scales rewrote the group's lists with 4 entries but left s0's and s1's at 3, so Neuroglancer
    (which reads an sN's lists over the group's) saw a rank mismatch at them."""
    root = tmp_path / "old.n5"
    full = RNG.integers(0, 2**16, (2, 6, 12, 12), dtype=np.uint16)
    vol = voxgate.create(f"n5://{root}", shape=(6, 12, 12), chunks=(4, 8, 8), dtype="uint16",
                         voxel_size=(40, 4, 5), num_channels=2)
    vol[:] = full
    voxgate.downsample(f"n5://{root}", num_scales=2, factors=[(1, 2, 2)])
    as_older_voxgate_wrote_it(root)
    voxgate.downsample(f"n5://{root}", num_scales=3, factors=[(1, 2, 2), (2, 2, 2)])
    for i in range(3):
        assert _rank(_merged(tmp_path, root / f"s{i}"), f"s{i}") == 4
        attrs = json.loads((root / f"s{i}" / "attributes.json").read_text())
        assert attrs["downsamplingFactors"] == [[1, 1, 1, 1], [2, 2, 1, 1], [4, 4, 2, 1]][i]
        assert attrs["units"] == ["nm", "nm", "nm", ""]
    again = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in again.scales] == [(40, 4, 5), (40, 8, 10), (80, 16, 20)]
    np.testing.assert_array_equal(again.read(), full)
