"""Notebooks (issue 11 item 5): the Volume's HTML repr with a thumbnail, ``vol.preview()`` with
matplotlib, ``vol.to_xarray()``, and what refuses to read a whole volume behind the user's back
(arithmetic, ufuncs, ``xr.DataArray(vol)``).  Real mem:// volumes of synthetic data; reads are
counted by patching the memory Remote's ``read``."""

from __future__ import annotations

import base64
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from PIL import Image

import voxgate
from voxgate import notebook
from voxgate.errors import (
    InvalidRequestError,
    LazyOperationError,
    MissingDependencyError,
    RemoteUnavailableError,
    VoxgateError,
)
from voxgate.geometry import Box, VoxelSize
from voxgate.meta import centre_translation
from voxgate.remotes.memory import MemoryRemote
from voxgate.synthetic import synthetic_em

SHAPE = (32, 96, 80)
OFFSET = (2, 3, 4)


@pytest.fixture(scope="module")
def em() -> tuple[np.ndarray, np.ndarray]:
    img, seg = synthetic_em(SHAPE, cell=(8, 24, 24))
    seg[:, :10, :10] = 0  # background, drawn black / transparent
    return img, seg


@pytest.fixture
def image(em: tuple[np.ndarray, np.ndarray]) -> voxgate.Volume:
    v = voxgate.create("mem://nb/image", shape=SHAPE, dtype="uint8", chunks=(8, 32, 32),
                       voxel_size=(40, 8, 8), offset=OFFSET)
    v[:] = em[0]
    return voxgate.open("mem://nb/image")


@pytest.fixture
def seg(em: tuple[np.ndarray, np.ndarray]) -> voxgate.Volume:
    v = voxgate.create("mem://nb/seg", shape=SHAPE, dtype="uint64", chunks=(8, 32, 32),
                       voxel_size=(40, 8, 8), offset=OFFSET, kind="segmentation")
    v[:] = em[1]
    return voxgate.open("mem://nb/seg")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Box, int]]:
    """Every read that reaches a mem:// store from now on, as (box, scale)."""
    seen: list[tuple[Box, int]] = []
    real = MemoryRemote.read

    def counting(self: MemoryRemote, box: Box, scale: int = 0) -> np.ndarray:
        seen.append((box, scale))
        return real(self, box, scale)

    monkeypatch.setattr(MemoryRemote, "read", counting)
    return seen


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def _thumbnail(html: str) -> np.ndarray:
    found = re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(found) == 1, html
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(found[0]))))


# -- the HTML repr ------------------------------------------------------------------------------
def test_repr_html_shows_metadata_and_the_middle_slice(image: voxgate.Volume,
                                                       em: tuple[np.ndarray, np.ndarray]) -> None:
    html = image._repr_html_()
    for text in ("mem://nb/image", "(32, 96, 80) (z, y, x)", "uint8, image", "(40, 8, 8) nm",
                 "(2, 3, 4) voxels", "0: (32, 96, 80) at (40, 8, 8) nm", "z = 16 (middle)"):
        assert text in html
    png = _thumbnail(html)
    assert png.shape == (96, 80)  # grey, the whole plane: it is smaller than the thumbnail
    np.testing.assert_array_equal(png, em[0][16])
    assert len(np.unique(png)) > 10


def test_repr_html_of_a_segmentation_colours_labels(seg: voxgate.Volume,
                                                   em: tuple[np.ndarray, np.ndarray]) -> None:
    png = _thumbnail(seg._repr_html_())
    labels = em[1][16]
    assert png.shape == (96, 80, 3)
    assert (png[labels == 0] == 0).all()  # background is black
    assert (png[labels != 0].max(axis=-1) >= 64).all()  # labels never are
    # one colour per id, the same wherever the id is, and distinct ids look distinct
    colours = {}
    for i in np.unique(labels[labels != 0]):
        c = np.unique(png[labels == i], axis=0)
        assert len(c) == 1
        colours[int(i)] = tuple(c[0])
    assert len(set(colours.values())) == len(colours) >= 5
    np.testing.assert_array_equal(notebook.label_rgb(labels), png)


def test_thumbnail_reads_one_strided_slice(reads: list[tuple[Box, int]]) -> None:
    data = np.random.default_rng(0).integers(0, 255, size=(6, 600, 520), dtype=np.uint8)
    v = voxgate.create("mem://nb/big", shape=data.shape, dtype="uint8", chunks=(2, 64, 64),
                       voxel_size=(8, 8, 8))
    v[:] = data
    reads.clear()
    png = _thumbnail(v._repr_html_())
    # a long side of 600 is read every 3rd voxel: at most 256 pixels
    assert png.shape == (200, 174)
    np.testing.assert_array_equal(png, data[3, ::3, ::3])
    assert reads
    assert all(b.start.z == 3 and b.stop.z == 4 and s == 0 for b, s in reads)
    assert sum(b.size for b, _ in reads) <= 600 * 520  # never more than the one slice


def test_thumbnail_of_a_pyramid_reads_the_coarsest_large_enough_scale(
        reads: list[tuple[Box, int]]) -> None:
    v = voxgate.create("mem://nb/pyramid", shape=(8, 1100, 1030), dtype="uint8",
                       chunks=(4, 128, 128), voxel_size=(8, 8, 8), num_scales=4)
    # scales: 1100 -> 550 -> 275 -> 138 on y; the thumbnail comes from scale 2 (275 >= 256)
    s2 = v.at_scale(2)
    s2[:] = np.arange(s2.size, dtype=np.uint64).reshape(s2.shape).astype(np.uint8)
    reads.clear()
    html = v._repr_html_()
    assert "scale 2, one voxel in 2 along y and x" in html
    assert {s for _, s in reads} == {2}
    assert all(b.shape.z == 1 for b, _ in reads)
    png = _thumbnail(html)
    assert max(png.shape) <= 256


def test_repr_html_never_raises(image: voxgate.Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(self: MemoryRemote, box: Box, scale: int = 0) -> np.ndarray:
        raise RemoteUnavailableError("storage\nunreachable after 3 retries")

    monkeypatch.setattr(MemoryRemote, "read", down)
    html = image._repr_html_()
    assert "mem://nb/image" in html and "(32, 96, 80)" in html
    assert "<img" not in html
    assert "no thumbnail: RemoteUnavailableError: storage unreachable after 3 retries" in html


def test_repr_html_of_views(image: voxgate.Volume, em: tuple[np.ndarray, np.ndarray]) -> None:
    # a plane (z dropped) is drawn as it is; a line has no picture but still has a repr
    png = _thumbnail(image[5, 10:50, ::2]._repr_html_())
    np.testing.assert_array_equal(png, em[0][5, 10:50, ::2])
    html = image[5, 7]._repr_html_()
    assert "no thumbnail: the view has fewer than two spatial axes" in html
    assert "(80,) (x)" in html


def test_repr_html_needs_neither_matplotlib_nor_pillow(image: voxgate.Volume,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("matplotlib", "matplotlib.pyplot", "PIL", "PIL.Image"):
        monkeypatch.setitem(sys.modules, name, None)  # importing them now fails
    assert "data:image/png;base64," in image._repr_html_()


def test_png_bytes_round_trip() -> None:
    rng = np.random.default_rng(1)
    for shape in [(7, 5), (7, 5, 3), (7, 5, 4)]:
        px = rng.integers(0, 256, size=shape, dtype=np.uint8)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(notebook.png_bytes(px)))),
                                      px)
    with pytest.raises(InvalidRequestError, match="non-empty"):
        notebook.png_bytes(np.zeros((0, 4), dtype=np.uint8))


def test_gray_image_stretches_other_dtypes() -> None:
    a = np.linspace(-1.0, 1.0, 200).reshape(10, 20)
    a[0, 0] = np.nan
    g = notebook.gray_image(a)
    assert g.dtype == np.uint8 and g[0, 0] == 0 and g.max() == 255
    assert (np.diff(g.ravel()[1:].astype(int)) >= 0).all()  # order kept


# -- matplotlib ---------------------------------------------------------------------------------
def test_preview_draws_the_slice_in_nm(image: voxgate.Volume,
                                       em: tuple[np.ndarray, np.ndarray]) -> None:
    ax = image.preview(z=5)
    assert isinstance(ax, matplotlib.axes.Axes)
    (im,) = ax.get_images()
    np.testing.assert_array_equal(np.asarray(im.get_array()), em[0][5])
    # voxel centres of x 4..83 and y 3..98 at 8 nm, so edges half a voxel out
    assert im.get_extent() == pytest.approx([4 * 8 - 4, 84 * 8 - 4, 99 * 8 - 4, 3 * 8 - 4])
    assert ax.get_xlabel() == "x (nm)" and ax.get_ylabel() == "y (nm)"
    assert "z = 7 (280 nm)" in ax.get_title()


def test_preview_labels_over_an_image(image: voxgate.Volume, seg: voxgate.Volume,
                                      em: tuple[np.ndarray, np.ndarray]) -> None:
    fig, ax = plt.subplots()
    assert image.preview(ax=ax, labels=seg, alpha=0.5) is ax
    base, over = ax.get_images()
    np.testing.assert_array_equal(np.asarray(base.get_array()), em[0][16])
    rgba = np.asarray(over.get_array())
    labels = em[1][16]
    assert rgba.shape == (96, 80, 4)
    assert (rgba[..., 3][labels == 0] == 0).all()  # background transparent
    assert (rgba[..., 3][labels != 0] == 128).all()
    np.testing.assert_array_equal(rgba[..., :3], notebook.label_rgb(labels))
    fig.canvas.draw()  # it renders


def test_preview_of_a_segmentation_and_a_stride(seg: voxgate.Volume,
                                                em: tuple[np.ndarray, np.ndarray]) -> None:
    ax = seg.preview(z=-1, max_px=40)
    (im,) = ax.get_images()
    np.testing.assert_array_equal(np.asarray(im.get_array()),
                                  notebook.label_rgb(em[1][-1, ::3, ::3]))


def test_preview_refuses_what_it_cannot_draw(image: voxgate.Volume, seg: voxgate.Volume) -> None:
    with pytest.raises(InvalidRequestError, match="outside the view's 0:32"):
        image.preview(z=32)
    with pytest.raises(InvalidRequestError, match="already a plane"):
        image[3].preview(z=1)
    with pytest.raises(InvalidRequestError, match="does not match"):
        image.preview(labels=seg[:, :50])
    with pytest.raises(InvalidRequestError, match="must be a segmentation"):
        image.preview(labels=image)
    with pytest.raises(InvalidRequestError, match="1 spatial axes"):
        image[3, 4].preview()


def test_preview_without_matplotlib_names_the_extra(image: voxgate.Volume,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'voxgate\[notebook\]'") as e:
        image.preview()
    assert isinstance(e.value, ImportError)


# -- xarray -------------------------------------------------------------------------------------
def test_to_xarray_coordinates_are_voxel_centres_in_nm(image: voxgate.Volume,
                                                       em: tuple[np.ndarray, np.ndarray],
                                                       reads: list[tuple[Box, int]]) -> None:
    x = image.to_xarray()
    assert reads == []  # lazy
    assert x.dims == ("z", "y", "x") and x.name == "image"
    for d, o, vs, n in zip("zyx", OFFSET, (40, 8, 8), SHAPE, strict=True):
        np.testing.assert_array_equal(x[d].values, (o + np.arange(n)) * vs)
        assert x[d].attrs["units"] == "nm"
    assert x.attrs["voxel_size"] == (40.0, 8.0, 8.0) and x.attrs["coordinates"] == "voxel centres"
    np.testing.assert_array_equal(x.values, em[0])
    # label-based selection in nm
    np.testing.assert_array_equal(x.sel(z=280, y=slice(24, 48)).values, em[0][5, 0:4])


def test_to_xarray_slices_read_only_their_chunks(image: voxgate.Volume,
                                                 em: tuple[np.ndarray, np.ndarray],
                                                 reads: list[tuple[Box, int]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    x = image.to_xarray(chunks=(8, 32, 32))
    np.testing.assert_array_equal(x.isel(z=slice(8, 16), y=slice(0, 32), x=slice(0, 32)).values,
                                  em[0][8:16, :32, :32])
    assert [b for b, _ in reads] == [Box((10, 3, 4), (18, 35, 36))]
    # "auto" blocks are whole storage chunks up to XARRAY_BLOCK_BYTES
    monkeypatch.setattr(notebook, "XARRAY_BLOCK_BYTES", 16 * 1024)
    reads.clear()
    x = image.to_xarray()
    assert all(c % 8 == 0 for c in x.chunks[0][:-1]) and max(x.chunks[1]) <= 64
    assert x.isel(z=9, y=slice(40, 50), x=slice(40, 50)).values.shape == (10, 10)
    assert sum(b.size for b, _ in reads) <= 2 * 8 * 32 * 32 * 2  # a block or two, not 32x96x80
    assert all(b.start.z <= 11 < b.stop.z for b, _ in reads)


def test_to_xarray_of_views_channels_and_scales() -> None:
    v = voxgate.create("mem://nb/rgb", shape=(8, 16, 16), dtype="uint8", chunks=(4, 8, 8),
                       voxel_size=VoxelSize(0.04, 0.008, 0.008, "um"), num_channels=3,
                       num_scales=2)
    x = v.to_xarray()
    assert x.dims == ("c", "z", "y", "x") and x.shape == (3, 8, 16, 16)
    np.testing.assert_allclose(x["y"].values, np.arange(16) * 8.0)  # um -> nm
    plane = v[1, 2, :, 4:12:2].to_xarray()
    assert plane.dims == ("y", "x")
    assert float(plane["z"]) == pytest.approx(80.0)  # a scalar coordinate for the dropped axis
    np.testing.assert_allclose(plane["x"].values, [32, 48, 64, 80])
    # a downsampled scale: the OME-Zarr pixel-centre convention of meta.centre_translation
    s1 = v.at_scale(1)
    x1 = s1.to_xarray()
    t = centre_translation(v.scales[0], v.scales[1])
    np.testing.assert_allclose(x1["x"].values,
                               (t[2] + np.arange(s1.shape[-1]) * s1.voxel_size.x) * 1000)
    np.testing.assert_allclose(x1["x"].values[:2], [4.0, 20.0])


def test_xarray_coordinates_of_mags_on_the_grid_through_zero(tmp_path: Path) -> None:
    """A WEBKNOSSOS mag's voxel i covers mag 1's [i * F, (i + 1) * F) (not blocks from the
    layer's first voxel): its coordinates are the centres of those blocks.  At offset x=45
    mag 2's first voxel covers x 44 and 45 (centres 352 and 360 nm), where the first-voxel
    rule put it at 364 nm."""
    v = voxgate.create(f"webknossos://{tmp_path}/ds", layer="color", shape=(2, 10, 12),
                       chunks=(2, 8, 8), dtype="uint8", voxel_size=(40, 8, 8),
                       offset=(3, 7, 45), num_scales=2)
    x1 = v.at_scale(1).to_xarray()
    assert v.scales[1].offset.x == 22
    np.testing.assert_allclose(x1["x"].values[:2], [356.0, 372.0])
    np.testing.assert_allclose(x1["y"].values[:2], [52.0, 68.0])  # y 6 and 7, then 8 and 9
    np.testing.assert_allclose(x1["z"].values[:1], [120.0])  # z is not downsampled


def test_to_xarray_without_xarray_names_the_extra(image: voxgate.Volume,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(MissingDependencyError, match=r"voxgate\[notebook\]"):
        image.to_xarray()


def test_xarray_dataarray_of_a_volume_refuses_to_load_it(image: voxgate.Volume,
                                                         em: tuple[np.ndarray, np.ndarray],
                                                         reads: list[tuple[Box, int]]) -> None:
    with pytest.raises(LazyOperationError, match=r"vol\.to_xarray\(\)") as e:
        xr.DataArray(image)
    assert isinstance(e.value, TypeError)
    with pytest.raises(LazyOperationError):
        xr.Variable(("z", "y", "x"), image)
    assert reads == []
    # the explicit ways still work
    np.testing.assert_array_equal(xr.DataArray(image.read()).values, em[0])
    np.testing.assert_array_equal(np.asarray(image[3]), em[0][3])


# -- arithmetic ---------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [
    lambda v: v + 1, lambda v: 1 + v, lambda v: v * v, lambda v: v - 2, lambda v: 2 / v,
    lambda v: v // 2, lambda v: v % 3, lambda v: v**2, lambda v: -v, lambda v: abs(v),
    lambda v: ~v, lambda v: v & 1, lambda v: v > 5, lambda v: v <= 5,
    lambda v: np.sqrt(v), lambda v: np.sum(v), lambda v: np.maximum(v, 3),
    lambda v: np.uint8(1) + v, lambda v: np.ones((32, 96, 80), dtype=np.uint8) + v,
    lambda v: divmod(v, 2), lambda v: divmod(7, v), lambda v: divmod(v[1, 2, 3], 2),
])
def test_arithmetic_refuses_and_names_to_dask(image: voxgate.Volume, op: object,
                                              reads: list[tuple[Box, int]]) -> None:
    with pytest.raises(LazyOperationError, match=r"vol\.to_dask\(\)") as e:
        op(image)  # type: ignore[operator]
    assert isinstance(e.value, TypeError) and isinstance(e.value, VoxgateError)
    assert reads == []  # nothing was read


def test_in_place_arithmetic_refuses(image: voxgate.Volume) -> None:
    v = image
    with pytest.raises(LazyOperationError):
        v += 1
    assert v is image


def test_the_lazy_way_works(image: voxgate.Volume, em: tuple[np.ndarray, np.ndarray]) -> None:
    d = image.to_dask()
    np.testing.assert_array_equal((d.astype(np.int16) * 2 - 1)[3].compute(),
                                  em[0][3].astype(np.int16) * 2 - 1)
    assert image == image and image != image[1:]  # equality stays identity, not elementwise


def test_numpy_method_names_say_what_to_do(seg: voxgate.Volume,
                                           reads: list[tuple[Box, int]]) -> None:
    """``vol.max()``, ``vol.astype(...)``, ``vol.T``: an AttributeError still (hasattr says
    False to dask, xarray and numpy, whose np.max(vol) then refuses as a ufunc), but one that
    says to read the view or use to_dask() (fails on the code before: the bare "'Volume'
    object has no attribute 'max'"); other names keep Python's message and its suggestion."""
    for name in ("max", "astype", "T", "sum", "item", "reshape"):
        with pytest.raises(AttributeError, match=rf"lazy view.*vol\.read\(\)\.{name}.*"
                                                 rf"vol\.to_dask\(\)\.{name}") as info:
            getattr(seg, name)
        assert info.value.name == name and info.value.obj is seg
        assert not hasattr(seg, name)
    with pytest.raises(AttributeError, match=r"^'Volume' object has no attribute 'chunk'$") as err:
        seg.chunk  # noqa: B018
    assert err.value.name == "chunk"  # (Python's "Did you mean: 'chunks'?" needs it)
    with pytest.raises(LazyOperationError):
        np.max(seg)
    assert reads == []
    assert np.array_equal(seg.read().max(), seg.to_dask().max().compute())
