"""Every store keeps the voxel-size unit it is given (or converts it to nm), and refuses an
option it does not know by listing the ones it accepts, with the closest name for a typo."""

from __future__ import annotations

import json
from typing import Any

import pytest

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.geometry import VoxelSize
from voxgate.storage import UNITS_NM

STORES = {
    "zarr3": ("zarr://{d}/v.zarr", {}),
    "zarr2": ("zarr://{d}/v.zarr", {"zarr_format": 2}),
    "n5": ("n5://{d}/v.n5", {}),
    "hdf5": ("hdf5://{d}/v.h5", {}),
    "precomputed": ("precomputed://file://{d}/v", {}),
    "mem": ("mem://units-{name}", {}),
}


def _url(tmp_path: Any, store: str) -> tuple[str, dict[str, Any]]:
    pattern, options = STORES[store]
    return pattern.format(d=tmp_path, name=tmp_path.name), options


def _nm(vs: VoxelSize) -> tuple[float, ...]:
    return tuple(v * UNITS_NM[vs.unit] for v in vs.zyx())


@pytest.mark.parametrize("store", sorted(STORES))
def test_a_micrometre_voxel_size_reopens_as_the_same_length(tmp_path: Any, store: str) -> None:
    url, options = _url(tmp_path, store)
    voxgate.create(url, shape=(8, 16, 16), dtype="uint8", chunks=(4, 8, 8),
                   voxel_size=VoxelSize(4, 4, 40, "um"), num_scales=2, **options)
    again = voxgate.open(url)
    assert _nm(again.voxel_size) == pytest.approx((4000.0, 4000.0, 40000.0))
    coarse = again.at_scale(1).voxel_size
    assert _nm(coarse) == pytest.approx((8000.0, 8000.0, 40000.0))


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_axes_say_nanometer_and_hold_nanometres(tmp_path: Any, fmt: int) -> None:
    """OME-Zarr readers (napari, ome-zarr-py) see the real size: the numbers match the unit."""
    url = f"zarr://{tmp_path}/v.zarr"
    voxgate.create(url, shape=(8, 16, 16), dtype="uint8", chunks=(4, 8, 8),
                   voxel_size=VoxelSize(0.5, 0.25, 0.25, "um"), num_scales=2, zarr_format=fmt)
    if fmt == 3:
        ms = json.loads((tmp_path / "v.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    else:
        ms = json.loads((tmp_path / "v.zarr" / ".zattrs").read_text())
    multiscale = ms["multiscales"][0]
    assert {a["unit"] for a in multiscale["axes"]} == {"nanometer"}
    scale0, scale1 = (d["coordinateTransformations"] for d in multiscale["datasets"])
    assert scale0[0]["scale"] == [500.0, 250.0, 250.0]
    assert scale1[0]["scale"] == [500.0, 500.0, 500.0]
    assert scale1[1]["translation"] == [0.0, 125.0, 125.0]


def test_zarr_refuses_a_unit_it_does_not_know(tmp_path: Any) -> None:
    with pytest.raises(InvalidRequestError, match=r"'furlong'.*nm.*um"):
        voxgate.create(f"zarr://{tmp_path}/v.zarr", shape=(8, 8, 8), dtype="uint8",
                       chunks=(4, 4, 4), voxel_size=VoxelSize(1, 1, 1, "furlong"))
    assert not (tmp_path / "v.zarr").exists()


TYPOS = {
    "zarr3": ("compresion", "compression", ["zarr_format", "compression", "shards"]),
    "n5": ("compresion", "compression", ["compression"]),
    "hdf5": ("checksums", "checksum", ["compression", "compression_level", "checksum"]),
    "precomputed": ("shard", "sharded", ["sharded"]),
}


@pytest.mark.parametrize("store", sorted(TYPOS))
def test_a_misspelt_create_option_lists_the_accepted_ones(tmp_path: Any, store: str) -> None:
    url, _ = _url(tmp_path, store)
    typo, meant, accepted = TYPOS[store]
    with pytest.raises(InvalidRequestError) as info:
        voxgate.create(url, shape=(8, 8, 8), dtype="uint8", chunks=(4, 4, 4),
                       voxel_size=(1, 1, 1), **{typo: "zstd"})
    message = str(info.value)
    assert f"{typo!r} (did you mean {meant!r}?)" in message
    assert "accepts none" not in message
    for name in accepted:
        assert name in message.split("it accepts", 1)[1]
    assert not voxgate.registry.resolve_for_create(url)[0].exists(
        voxgate.registry.resolve_for_create(url)[1])


def test_an_option_of_create_given_to_open_says_what_open_takes(tmp_path: Any) -> None:
    url = f"zarr://{tmp_path}/v.zarr"
    voxgate.create(url, shape=(8, 8, 8), dtype="uint8", chunks=(4, 4, 4), voxel_size=(1, 1, 1))
    with pytest.raises(InvalidRequestError,
                       match=r"to open 'compression'.*accepts multiscale, time, mode, missing"):
        voxgate.open(url, compression="zstd")


def test_a_name_far_from_every_option_gets_no_guess(tmp_path: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        voxgate.create(f"n5://{tmp_path}/v.n5", shape=(8, 8, 8), dtype="uint8",
                       chunks=(4, 4, 4), voxel_size=(1, 1, 1), colour="red")
    assert "did you mean" not in str(info.value)
    assert "it accepts compression, exist_ok" in str(info.value)


def test_a_voxel_size_in_cloudvolume_order_warns(tmp_path: Any) -> None:
    from voxgate.errors import VoxelOrderWarning, VoxgateWarning

    with pytest.warns(VoxelOrderWarning) as record:
        vol = voxgate.create(f"zarr://{tmp_path}/v.zarr", shape=(8, 8, 8), dtype="uint8",
                             chunks=(4, 4, 4), voxel_size=(8, 8, 40))
    [warning] = record
    assert issubclass(VoxelOrderWarning, VoxgateWarning) and issubclass(VoxgateWarning,
                                                                        UserWarning)
    message = str(warning.message)
    assert "(z, y, x) = (8, 8, 40)" in message and "voxel_size=(40, 8, 8)" in message
    assert "VoxelSize(z=8, y=8, x=40)" in message
    assert warning.filename == __file__  # points at the caller's line
    # a warning only: the sizes are kept as given
    assert vol.voxel_size.zyx() == (8.0, 8.0, 40.0)


@pytest.mark.parametrize("voxel_size", [(40, 8, 8), (8, 8, 8), [4.0, 4.0, 4.0], (40, 4, 8),
                                        (8, 16, 40), VoxelSize(8, 8, 40)])
def test_other_voxel_sizes_do_not_warn(tmp_path: Any, voxel_size: Any) -> None:
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        voxgate.create(f"zarr://{tmp_path}/v.zarr", shape=(8, 8, 8), dtype="uint8",
                       chunks=(4, 4, 4), voxel_size=voxel_size)
    assert [str(w.message) for w in record] == []


@pytest.mark.parametrize("unit", ["micrometer", "um", "µm"])
def test_zarr_reads_axes_in_micrometres_as_nanometres(tmp_path: Any, unit: str) -> None:
    """A group written by another tool with its axes in micrometres (the OME name, or the
    short one some writers use) opens in nm."""
    url = f"zarr://{tmp_path}/v.zarr"
    voxgate.create(url, shape=(8, 8, 8), dtype="uint8", chunks=(4, 4, 4),
                   voxel_size=(40, 8, 8))
    path = tmp_path / "v.zarr" / "zarr.json"
    group = json.loads(path.read_text(encoding="utf-8"))
    multiscale = group["attributes"]["ome"]["multiscales"][0]
    for axis in multiscale["axes"]:
        axis["unit"] = unit
    multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] = [0.04, 0.008, 0.008]
    path.write_text(json.dumps(group), encoding="utf-8")
    assert voxgate.open(url).voxel_size.zyx() == pytest.approx((40.0, 8.0, 8.0))


def test_voxel_sizes_of_numpy_numbers_are_taken_and_bad_ones_refused(tmp_path: Any) -> None:
    """numpy's integer and float scalars are numbers (a voxel size read from an array or a
    file often is one); bools, strings, zero, negative, infinite and NaN sizes are refused."""
    import numpy as np

    from voxgate.errors import InvalidRequestError

    for vs in (np.array([40, 8, 4]), (np.int64(40), np.uint8(8), np.float32(4.0))):
        vol = voxgate.create(f"zarr://{tmp_path}/ok{len(list(tmp_path.iterdir()))}.zarr",
                             shape=(4, 4, 4), chunks=(4, 4, 4), dtype="uint8", voxel_size=vs)
        assert vol.voxel_size.zyx() == (40.0, 8.0, 4.0)
    for bad in ((0, 8, 4), (-1, 8, 4), (float("inf"), 8, 4), (float("nan"), 8, 4),
                (True, 8, 4), (np.True_, 8, 4), ("40", 8, 4)):
        with pytest.raises(InvalidRequestError, match="positive finite numbers"):
            voxgate.create(f"zarr://{tmp_path}/bad.zarr", shape=(4, 4, 4), chunks=(4, 4, 4),
                           dtype="uint8", voxel_size=bad)
        assert not (tmp_path / "bad.zarr").exists()  # refused before anything was made


def test_counts_and_indices_may_be_numpy_integers(tmp_path: Any) -> None:
    """A count or an index computed with numpy (np.int64) is an integer: scales, workers,
    retries, n; numpy's bool and floats are still refused."""
    import numpy as np

    from voxgate.errors import InvalidRequestError

    data = np.arange(8 * 16 * 16, dtype=np.uint8).reshape(8, 16, 16)
    vol = voxgate.create(f"zarr://{tmp_path}/a.zarr", shape=data.shape, chunks=(4, 8, 8),
                         dtype="uint8", voxel_size=(8, 8, 8), num_scales=np.int64(2))
    vol[:] = data
    voxgate.downsample(vol.url, np.int64(3), workers=np.int64(2))
    again = voxgate.open(vol.url)
    level = again.at_scale(np.int64(1))
    assert level.shape == (4, 8, 8) and type(level.scale) is int
    np.testing.assert_array_equal(
        voxgate.map_blocks(lambda a: a + 1, again, block=(4, 8, 8), workers=np.uint8(2)),
        data + 1)
    report = voxgate.copy(vol.url, f"zarr://{tmp_path}/b.zarr", retries=np.int64(1),
                          progress=False)
    assert report.scales == [0, 1, 2]
    for bad in (np.True_, np.float64(2.0), 2.5):
        with pytest.raises(InvalidRequestError, match="workers"):
            voxgate.map_blocks(lambda a: a, again, workers=bad)
    with pytest.raises(InvalidRequestError, match="scale must be an integer"):
        again.at_scale(np.float32(1))
    labels = (data // 64).astype(np.uint32)  # a few slabs of ids
    simple = voxgate.mesh(labels, voxel_size=np.array([8, 8, 8]), simplify=np.int64(4))
    assert sorted(simple) == [int(i) for i in np.unique(labels) if i]
