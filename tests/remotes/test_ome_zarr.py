"""OME-Zarr scale translations against ome-zarr-py (reader and writer) and ome-zarr-models.

NGFF places a dataset's translation at the centre of its first voxel, so a downsampled scale's
translation is half a block in from scale 0's: ``t_k = t_0 + (factor - 1) / 2 * voxel_0``
(ome-zarr-py writes exactly that).  voxgate wrote 0 there, and read sub-voxel translations as
0 (issue 9, item 4).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr_models.v04.image import Image as Image04
from ome_zarr_models.v05.image import Image as Image05

import voxgate

from ..services.numpy_reference import downsample_scales

with warnings.catch_warnings():
    # ome_zarr.writer builds a default deprecated Scaler() at import time (ome-zarr 0.14+);
    # nothing here uses it
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image


def validate(path: Path, fmt: int) -> None:
    """ome-zarr-models' validator: raises on a group that breaks the NGFF schema."""
    model = Image05 if fmt == 3 else Image04
    model.from_zarr(zarr.open_group(str(path), mode="r"))


def transforms_read_by_ome_zarr_py(path: Path) -> tuple[list[list[dict]], list[np.ndarray]]:
    node = next(iter(Reader(parse_url(str(path)))()))
    return node.metadata["coordinateTransformations"], [np.asarray(a) for a in node.data]


@pytest.mark.parametrize("fmt", [2, 3])
def test_voxgate_pyramid_as_ome_zarr_py_reads_it(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "em.zarr"
    url = f"zarr://{path}"
    data = np.random.default_rng(5).integers(0, 255, (9, 30, 22), dtype=np.uint8)
    vol = voxgate.create(url, shape=data.shape, chunks=(4, 8, 8), dtype="uint8",
                         voxel_size=(40, 8, 8), offset=(2, 4, 6), zarr_format=fmt)
    vol[:] = data
    voxgate.downsample(url, 2, factors=[(1, 2, 2)])
    # a second call adds a scale to the reopened group: its translation comes from the one read
    voxgate.downsample(url, 3, factors=[(1, 2, 2), (2, 2, 2)])
    validate(path, fmt)

    # scale 0: offset * voxel size; scale k: that + (voxel_k - voxel_0) / 2
    want = [(80.0, 32.0, 48.0), (80.0, 36.0, 52.0), (100.0, 44.0, 60.0)]
    scales = [[40.0, 8.0, 8.0], [40.0, 16.0, 16.0], [80.0, 32.0, 32.0]]
    transforms, arrays = transforms_read_by_ome_zarr_py(path)
    assert [t[0] for t in transforms] == [{"type": "scale", "scale": s} for s in scales]
    assert [t[1] for t in transforms] == [{"type": "translation", "translation": list(w)}
                                          for w in want]
    again = voxgate.open(url)
    # and what ome-zarr-py reads is the numpy pyramid (odd extents: partial blocks at the edges)
    pyramid = [data, *downsample_scales(data, [(1, 2, 2), (2, 2, 2)], "image")]
    for k, scale in enumerate(again.scales):
        np.testing.assert_array_equal(arrays[k], pyramid[k], err_msg=f"scale {k}")
        np.testing.assert_array_equal(arrays[k], again.at_scale(k).read())
        assert scale.translation == want[k]
    # the integer offsets are still next_scales' (offset // factor), exact after the round trip
    assert [tuple(s.offset) for s in again.scales] == [(2, 4, 6), (2, 2, 3), (1, 1, 1)]


@pytest.mark.parametrize("fmt", [FormatV04(), FormatV05()], ids=["0.4", "0.5"])
def test_ome_zarr_py_pyramid_as_voxgate_reads_it(tmp_path: Path, fmt: FormatV04) -> None:
    path = tmp_path / "written.zarr"
    data = np.random.default_rng(6).integers(0, 255, (8, 32, 24), dtype=np.uint8)
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_image(data, root, axes="zyx", scale_factors=(2, 4), fmt=fmt,
                scale={"z": 0.04, "y": 0.008, "x": 0.008},
                axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"})
    validate(path, fmt.zarr_format)
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    datasets = attrs.get("ome", attrs)["multiscales"][0]["datasets"]
    vol = voxgate.open(f"zarr://{path}")
    assert len(vol.scales) == len(datasets) == 3
    for k, (scale, ds) in enumerate(zip(vol.scales, datasets, strict=True)):
        stored = next(t for t in ds["coordinateTransformations"] if t["type"] == "translation")
        # micrometres in the file, nanometres in voxgate
        assert scale.translation == pytest.approx([v * 1000 for v in stored["translation"]])
        assert tuple(scale.offset) == (0, 0, 0)
        np.testing.assert_array_equal(vol.at_scale(k).read(),
                                      zarr.open_array(str(path / ds["path"]), mode="r")[:])
    assert vol.scales[1].translation == pytest.approx((0.0, 4.0, 4.0))  # (16 - 8) / 2 nm
    assert vol.scales[2].translation == pytest.approx((0.0, 12.0, 12.0))


def test_sub_voxel_translation_is_kept_and_copied(tmp_path: Path) -> None:
    """A translation that is not a whole number of voxels reads as such (not rounded to 0) and
    survives a copy into a new OME-Zarr group."""
    src = tmp_path / "shifted.zarr"
    data = np.random.default_rng(7).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    root = zarr.open_group(str(src), mode="w", zarr_format=2)
    root.create_array("0", shape=data.shape, chunks=(4, 8, 8), dtype="uint8")[:] = data
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [40, 8, 8]},
            {"type": "translation", "translation": [0, 3.2, 82.0]}]}],
    }]
    vol = voxgate.open(f"zarr://{src}")
    assert vol.scale_meta.translation == pytest.approx((0.0, 3.2, 82.0))
    assert tuple(vol.scale_meta.offset) == (0, 0, 10)  # 82 / 8 = 10.25: the whole voxels

    dst = tmp_path / "copy.zarr"
    voxgate.copy(f"zarr://{src}", f"zarr://{dst}", progress=False)
    validate(dst, 3)
    copied = voxgate.open(f"zarr://{dst}")
    assert copied.scale_meta.translation == pytest.approx((0.0, 3.2, 82.0))
    np.testing.assert_array_equal(copied.read(), data)
    # a scale added to the copy is placed half a block in from that translation
    voxgate.downsample(f"zarr://{dst}", 2, factors=[(1, 2, 2)])
    _, y, x = voxgate.open(f"zarr://{dst}").scales[1].translation  # type: ignore[misc]
    assert (y, x) == pytest.approx((3.2 + 4.0, 82.0 + 4.0))
