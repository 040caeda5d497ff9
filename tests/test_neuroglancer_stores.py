"""Neuroglancer opens what voxgate writes, with its own data sources (not through the relay).

A scientist writes a volume to N5 or OME-Zarr (Zarr v3 + NGFF 0.5 by default, Zarr v2 + NGFF
0.4 with ``zarr_format=2``), runs ``voxgate.downsample``, serves the directory with a static
HTTP server and opens it as ``n5://``, ``zarr://``, ``zarr2://`` or ``zarr3://`` in Neuroglancer
(its PyPI client in headless Chromium, tests/relay/browser.py).  For each store: the data source
loads with no error, Neuroglancer's coordinate space (names, voxel size, bounds) is voxgate's,
every scale is requested as the view zooms out, and the pixels drawn are voxgate's voxels at the
place voxgate says they are.

Where Neuroglancer and voxgate differ by the format's definition, the test says so:

- Neuroglancer's N5 source reads no offset (src/datasource/n5/frontend.ts has none): an N5
  volume is drawn from the origin, whatever voxgate's own ``offset`` attribute says.
- OME-Zarr translations are the *centre* of the first voxel (NGFF), and Neuroglancer follows
  that (src/datasource/zarr/ome.ts subtracts half a voxel): voxel ``i`` of scale 0 is centred at
  Neuroglancer coordinate ``offset + i``, so its bounds start at ``offset - 0.5``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate import VoxelSize

from .relay.browser import Browser, neuroglancer_browser
from .static_http import serve_directory

SHAPE = (21, 45, 67)  # z, y, x: odd, and not a multiple of the chunks
CHUNKS = (8, 16, 16)
OFFSET = (3, 17, 29)
VOXEL = VoxelSize(z=40, y=8, x=8)
STRIPE = slice(10, 14)  # rows (y) of value 255 in the image
BASE_ID = 2**60  # segment ids above 2**53: a float on the way would merge neighbours
GREY = "void main() { emitGrayscale(toNormalized(getDataValue())); }"


def _image() -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    img = ((x * 3 + y * 5 + z * 7) % 200 + 20).astype(np.uint8)
    img[:, STRIPE, :] = 255
    return img


def _labels() -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    return (BASE_ID + x // 6 + 100 * (y // 7) + 10_000 * (z // 4)).astype(np.uint64)


@dataclass(frozen=True)
class Store:
    name: str
    path: str  # under the served directory
    scheme: str  # voxgate's
    ng: str  # Neuroglancer's data source scheme
    kind: str = "image"  # image | segmentation | rgb
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def n5(self) -> bool:
        return self.scheme == "n5"


STORES = [
    Store("n5", "img.n5", "n5", "n5"),
    Store("n5-blosc", "blosc.n5", "n5", "n5", options=(("compression", "blosc"),)),
    Store("n5-zstd", "zstd.n5", "n5", "n5", options=(("compression", "zstd"),)),
    Store("n5-raw", "raw.n5", "n5", "n5", options=(("compression", "raw"),)),
    Store("zarr3", "img3.zarr", "zarr", "zarr"),
    Store("zarr3-shards", "shards.zarr", "zarr", "zarr3",
          options=(("shards", (16, 32, 32)), ("compression", "zstd"))),
    Store("zarr3-gzip", "gzip3.zarr", "zarr", "zarr3", options=(("compression", "gzip"),)),
    Store("zarr2", "img2.zarr", "zarr", "zarr", options=(("zarr_format", 2),)),
    Store("zarr2-none", "none2.zarr", "zarr", "zarr2",
          options=(("zarr_format", 2), ("compression", "none"))),
    Store("n5-seg", "seg.n5", "n5", "n5", "segmentation"),
    Store("zarr3-seg", "seg3.zarr", "zarr", "zarr", "segmentation"),
    Store("zarr2-seg", "seg2.zarr", "zarr", "zarr2", "segmentation", (("zarr_format", 2),)),
    Store("n5-rgb", "rgb.n5", "n5", "n5", "rgb"),
    Store("zarr3-rgb", "rgb3.zarr", "zarr", "zarr", "rgb"),
    Store("zarr2-rgb", "rgb2.zarr", "zarr", "zarr", "rgb", (("zarr_format", 2),)),
]
NUM_SCALES = 3  # scale k is 2**k in x and y, 1 in z (toward isotropy from 40 x 8 x 8)


@dataclass
class Served:
    base: str
    root: str
    browser: Browser


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("ng-stores")
    img, labels = _image(), _labels()
    for st in STORES:
        data: np.ndarray = {"image": img, "segmentation": labels,
                            "rgb": np.stack([img, 255 - img, img // 2])}[st.kind]
        url = f"{st.scheme}://{root}/{st.path}"
        vol = voxgate.create(
            url, shape=SHAPE, dtype=data.dtype.name, chunks=CHUNKS, voxel_size=VOXEL,
            offset=OFFSET, kind="segmentation" if st.kind == "segmentation" else "image",
            num_channels=3 if st.kind == "rgb" else 1, **dict(st.options))
        vol[:] = data
        voxgate.downsample(url, NUM_SCALES)
    with serve_directory(root) as base, neuroglancer_browser() as browser:
        yield Served(base, str(root), browser)


# -- what Neuroglancer resolved ---------------------------------------------------------------
_LOADED = """(name) => {
  const ml = viewer.layerManager.managedLayers.find(m => m.name === name);
  if (!ml || !ml.layer) return null;
  return ml.layer.dataSources.map(ds => {
    const s = ds.loadState;
    if (s === undefined) return {pending: true};
    if (s.error !== undefined) return {error: String(s.error.message || s.error)};
    const t = s.transform.value, o = t.outputSpace, i = t.inputSpace;
    return {names: o.names, scales: Array.from(o.scales), units: o.units,
            lower: Array.from(i.bounds.lowerBounds), upper: Array.from(i.bounds.upperBounds),
            matrix: Array.from(t.transform)};
  });
}"""


def _load(browser: Browser, st: Store, layer: Any, css: float,
          channel: int | None) -> dict[str, Any]:
    """Show only ``layer``, centred on voxel CENTRE at ``css`` Neuroglancer units per pixel (the
    whole view set before anything is drawn, so that what is fetched is what that view needs);
    return its data source as Neuroglancer resolved it."""
    import neuroglancer

    lo = _origin(st)
    names, scales, where = ["x", "y", "z"], [VOXEL.x, VOXEL.y, VOXEL.z], list(
        lo + np.array(CENTRE[::-1]) + 0.5)
    if channel is not None and st.n5:  # a global axis (a local one on OME-Zarr)
        names, scales, where = [*names, "c"], [*scales, 1], [*where, channel + 0.5]
    state = neuroglancer.ViewerState()
    state.dimensions = neuroglancer.CoordinateSpace(
        names=names, units=["nm", "nm", "nm", ""][:len(names)], scales=scales)
    state.position = where
    state.cross_section_scale = css
    state.layers[st.name] = layer
    if channel is not None and not st.n5:
        state.layers[st.name].local_position = [channel]
    state.layout = "xy"
    state.show_axis_lines = False
    state.show_scale_bar = False
    state.show_default_annotations = False  # the volume's outline, drawn over its edge voxels
    browser.viewer.set_state(state)
    deadline = time.monotonic() + 30
    while True:
        got = browser.page.evaluate(_LOADED, st.name)
        if got and not any(s.get("pending") for s in got):
            break
        assert time.monotonic() < deadline, f"{st.name} did not load: {got}"
        time.sleep(0.05)
    assert len(got) == 1, got
    assert "error" not in got[0], got[0]["error"]
    return dict(got[0])


def _layer(st: Store, url: str) -> Any:
    import neuroglancer

    if st.kind == "segmentation":
        return neuroglancer.SegmentationLayer(source=url)
    return neuroglancer.ImageLayer(source=url, shader=GREY)


def _origin(st: Store) -> np.ndarray:
    """Neuroglancer coordinate of the low corner of voxel 0 of scale 0, (x, y, z)."""
    if st.n5:
        return np.zeros(3)
    return np.array(OFFSET[::-1], dtype=float) - 0.5


def _check_space(st: Store, got: dict[str, Any]) -> None:
    nm = [v * 1e9 if u == "m" else v for v, u in zip(got["scales"], got["units"], strict=True)]
    by_name = dict(zip(got["names"], zip(nm, got["lower"], got["upper"], strict=True),
                       strict=True))
    lo = _origin(st)
    for i, (axis, size) in enumerate(zip("xyz", SHAPE[::-1], strict=True)):
        voxel, lower, upper = by_name[axis]
        assert voxel == pytest.approx(getattr(VOXEL, axis)), (axis, got)
        assert (lower, upper) == pytest.approx((lo[i], lo[i] + size)), (axis, got)
    assert {u for n, u in zip(got["names"], got["units"], strict=True) if n in "xyz"} == {"m"}
    extra = [n for n in got["names"] if n not in ("x", "y", "z")]
    if st.kind == "rgb":
        # N5 has no channel axis type: a global "c"; NGFF's channel axis is local ("c'")
        assert extra == (["c"] if st.n5 else ["c'"]), got
        c = got["names"].index(extra[0])
        assert got["upper"][c] - got["lower"][c] == 3, got
    else:
        assert extra == [], got


# -- what Neuroglancer drew -------------------------------------------------------------------
CENTRE = (10, 30, 41)  # z, y, x voxel (of scale 0) at the centre of the view


def _expected(st: Store, scales: list[np.ndarray], scale: int, css: float,
              size: int) -> tuple[np.ndarray, np.ndarray]:
    """The voxel of ``scale`` under each pixel centre, and where that is inside the volume and
    not within a tenth of a pixel of a voxel's edge (where rounding may pick either)."""
    lo = _origin(st)
    f = np.array([2**scale, 2**scale])  # x, y
    centre = lo[:2] + np.array(CENTRE[:0:-1]) + 0.5  # the centre of the view, x, y
    pix = (np.arange(size) + 0.5 - size / 2) * css
    gx, gy = centre[0] + pix - lo[0], centre[1] + pix - lo[1]  # scale-0 voxels from voxel 0
    ix, iy = np.floor(gx / f[0]).astype(int), np.floor(gy / f[1]).astype(int)
    margin = 0.1 * css
    ok_x = ((gx - ix * f[0]) > margin) & ((ix + 1) * f[0] - gx > margin)
    ok_y = ((gy - iy * f[1]) > margin) & ((iy + 1) * f[1] - gy > margin)
    arr = scales[scale]
    inside_x = (ix >= 0) & (ix < arr.shape[-1])
    inside_y = (iy >= 0) & (iy < arr.shape[-2])
    plane = arr[..., CENTRE[0], :, :]
    want = plane[..., np.clip(iy, 0, arr.shape[-2] - 1)[:, None],
                 np.clip(ix, 0, arr.shape[-1] - 1)[None, :]]
    ok = (ok_y & inside_y)[:, None] & (ok_x & inside_x)[None, :]
    return want, ok


def _view(st: Store, served: Served, css: float) -> np.ndarray:
    with served.browser.viewer.txn() as s:
        s.cross_section_scale = css
    return served.browser.screenshot(save_as=f"ng-{st.name}-{css}.png")


def _scale_requests(st: Store, mine: list[tuple[str, int]]) -> set[int]:
    """The scales whose chunks were requested."""
    out = set()
    for url, _ in mine:
        rest = url.split(f"/{st.path}/", 1)[-1].split("/")
        name = rest[0]
        if len(rest) > 1 and rest[-1] not in ("attributes.json", "zarr.json", ".zarray",
                                               ".zattrs", ".zgroup"):
            out.add(int(name.removeprefix("s")))
    return out


def _check_responses(st: Store, served: Served, start: int) -> list[tuple[str, int]]:
    mine = served.browser.responses_since(start, served.base)
    # Neuroglancer probes for metadata that need not exist: the N5 source reads the
    # attributes.json of every parent, the zarr source tries each version's documents
    probes = ("/attributes.json", "/.zarray", "/.zattrs", "/.zgroup", "/zarr.json")
    # and a shard's inner chunks are byte ranges (206)
    bad = [(u, c) for u, c in mine
           if not (c == 200 or (c == 206 and "shards" in st.path)
                   or (c == 404 and u.endswith(probes)))]
    assert not bad, bad
    assert not served.browser.errors, served.browser.errors
    return mine


@pytest.mark.parametrize("st", [s for s in STORES if s.kind != "segmentation"],
                         ids=lambda s: s.name)
def test_neuroglancer_draws_the_image(served: Served, st: Store) -> None:
    url = f"{st.ng}://{served.base}/{st.path}"
    start = len(served.browser.responses)
    channel = 1 if st.kind == "rgb" else None
    _check_space(st, _load(served.browser, st, _layer(st, url), 4.0, channel))
    vols = [voxgate.open(f"{st.scheme}://{served.root}/{st.path}", scale=k)
            for k in range(NUM_SCALES)]
    scales = [v.read() for v in vols]
    seen: set[int] = set()
    before = start
    # zoomed out first: each level is asked for when its voxels are a pixel (4 x, 2 x, 1/4 x
    # the x voxel of scale 0), and what is drawn there is that level's voxels
    for scale, css in ((2, 4.0), (1, 2.0), (0, 0.25)):
        drawn = _view(st, served, css)
        asked = _scale_requests(st, _check_responses(st, served, before))
        before = len(served.browser.responses)
        assert scale in asked | seen, (scale, asked, seen)
        assert not asked & set(range(scale)), (scale, asked)  # no finer level than needed
        seen |= asked
        want, ok = _expected(st, scales, scale, css, drawn.shape[0])
        if channel is not None:
            want = want[channel]
        assert ok.sum() > 20, ok.sum()
        close = np.abs(drawn[..., 0] - want.astype(int)) <= 2
        assert close[ok].mean() > 0.98, (scale, close[ok].mean())
    assert seen == set(range(NUM_SCALES)), seen
    _check_responses(st, served, start)


@pytest.mark.parametrize("st", [s for s in STORES if s.kind == "segmentation"],
                         ids=lambda s: s.name)
def test_neuroglancer_draws_the_segmentation(served: Served, st: Store) -> None:
    url = f"{st.ng}://{served.base}/{st.path}"
    start = len(served.browser.responses)
    labels = voxgate.open(f"{st.scheme}://{served.root}/{st.path}").read()
    seg_id = int(labels[CENTRE])
    assert seg_id > 2**53
    layer = _layer(st, url)
    layer.segments = [seg_id]
    layer.segment_colors = {seg_id: "#ff0000"}
    layer.selected_alpha = 1.0
    _check_space(st, _load(served.browser, st, layer, 0.25, None))
    drawn = served.browser.screenshot(save_as=f"ng-{st.name}.png")
    want, ok = _expected(st, [labels], 0, 0.25, drawn.shape[0])
    red = (drawn[..., 0] > 200) & (drawn[..., 1] < 60) & (drawn[..., 2] < 60)
    assert (want[ok] == seg_id).sum() > 100
    np.testing.assert_array_equal(red[ok], want[ok] == seg_id)
    _check_responses(st, served, start)
