"""What voxgate writes for Neuroglancer, served by the relay, read by the real clients.

One odd layer: anisotropic voxels (40, 8, 6 nm), a nonzero voxel offset, a shape that is no
multiple of its chunks, and segment ids above 2**53 (2**60 + 1 and 2**60 + 2 differ only
below float precision).  Its meshes are written multi-resolution (unsharded and sharded) and
legacy, its skeletons (with radius) unsharded and sharded, and beside it annotation layers of
points, lines, boxes and ellipsoids with properties of every width and a relationship to the
segments, sharded and unsharded.  A relay serves them, and a second relay chained to the first.
Neuroglancer (its PyPI client in headless Chromium) must load each one with no error and no
failed request and draw what was written (annotation colours come from an rgb property, so the
record layout is checked; the relationship index filters by segment); CloudVolume must read
the meshes and skeletons as voxgate wrote them.  An N5 volume in micrometres must be served
with its resolution in nanometres, the unit of a precomputed info.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cloudvolume import CloudVolume

import voxgate
from voxgate.formats.annotation import write_annotations
from voxgate.formats.mesh import read_meshes, write_meshes
from voxgate.formats.skeleton import read_skeletons, write_skeletons
from voxgate.geometry import VoxelSize

from .browser import Browser, neuroglancer_browser
from .conftest import RelayProcess, free_port, start_relay

SHAPE = (13, 45, 37)  # z, y, x: no multiple of the chunks
OFFSET = (5, 23, 17)
VOXEL = (40, 8, 6)
A, B, C, D = 2**60 + 1, 2**60 + 2, 2**53 + 1, 7
IDS = [A, B, C, D]
#: each segment's annotations are drawn in its own colour (an rgb property); none is the
#: colour of an axis (red, green, blue) or of a layer's outline (yellow) in the 3-D view
COLOURS = {A: (255, 128, 0), B: (0, 255, 255), C: (255, 0, 255), D: (128, 0, 255)}
LAYERS = ("multires", "sharded", "legacy")


@dataclass
class Served:
    root: Path
    relay: RelayProcess
    chained: RelayProcess

    def url(self, name: str, far: bool = False) -> str:
        if far:
            return f"{self.chained.url}/precomputed/far/em/{name}"
        return f"{self.relay.url}/precomputed/lab/em/{name}"


def _labels() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint64)
    lab[1:7, 3:20, 2:15] = A
    lab[6:12, 22:42, 18:35] = B
    lab[2:11, 25:40, 3:12] = C
    lab[8:12, 5:15, 20:33] = D
    return lab


def _annotations() -> pd.DataFrame:
    """One annotation per segment, at its blob's centre (absolute voxels, offset included)."""
    centres = {A: (3.5, 11, 8), B: (9, 32, 26), C: (6.5, 32, 7), D: (10, 10, 26)}
    rows = [{"id": 2**62 + k, "z": z + OFFSET[0], "y": y + OFFSET[1], "x": x + OFFSET[2],
             "score": k + 0.5, "count": k * 1000, "flag": k,
             "color": "#" + bytes(COLOURS[seg]).hex(), "seg_id": seg}
            for k, (seg, (z, y, x)) in enumerate(centres.items())]
    t = pd.DataFrame(rows)
    return t.astype({"id": np.uint64, "seg_id": np.uint64, "score": np.float32,
                     "count": np.uint16, "flag": np.uint8})


def _write(root: Path) -> None:
    labels = _labels()
    meshes = skeletons = None
    for name in LAYERS:
        seg = voxgate.create(f"precomputed://file://{root}/{name}", shape=SHAPE,
                             chunks=(8, 16, 16), dtype="uint64", voxel_size=VOXEL,
                             kind="segmentation", offset=OFFSET)
        seg[:] = labels
        if meshes is None:
            meshes = voxgate.mesh(seg, ids=IDS)
            skeletons = voxgate.skeletonize(seg, ids=IDS, dust_threshold=0)
        assert skeletons is not None
        sharded = name == "sharded"
        write_meshes(seg.url, meshes, format="legacy" if name == "legacy" else "multires",
                     lods=2, sharded=sharded)
        if name != "legacy":
            write_skeletons(seg.url, skeletons, sharded=sharded)
            table = _annotations()
            extended = table.assign(z2=table.z + 1, y2=table.y + 3, x2=table.x + 4)
            for kind, t in (("point", table), ("line", extended), ("box", extended),
                            ("ellipsoid", table.assign(rz=1.0, ry=3.0, rx=4.0))):
                write_annotations(root / name / kind, t, voxel_size=VOXEL, kind=kind,
                                  sharded=sharded, limit=2, relationships=["seg_id"])
    um = voxgate.create(f"n5://{root}/um.n5", shape=SHAPE, chunks=(8, 16, 16), dtype="uint8",
                        voxel_size=VoxelSize(0.04, 0.008, 0.006, "um"))
    um[:] = (labels % 200).astype(np.uint8) + 20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("viewing")
    _write(root)
    head = '[server]\nhost = "127.0.0.1"\nupstream_timeout = 10\nstate_path = "{}"\n' \
           '[cache]\nmemory_bytes = "16 MiB"\n'
    near = root / "relay.toml"
    text = head.format(root / "state.json")
    for name in LAYERS:
        text += f'[[channel]]\nname = "lab/em/{name}"\n' \
                f'upstream = "precomputed://file://{root}/{name}"\n'
    text += f'[[channel]]\nname = "lab/em/um"\nupstream = "n5://{root}/um.n5"\n'
    near.write_text(text)
    relay = start_relay(near, free_port())
    try:
        far = root / "chained.toml"
        text = head.format(root / "state2.json")
        for name in (*LAYERS, "um"):
            text += f'[[channel]]\nname = "far/em/{name}"\n' \
                    f'upstream = "precomputed://{relay.url}/precomputed/lab/em/{name}"\n'
        far.write_text(text)
        chained = start_relay(far, free_port())
        try:
            yield Served(root, relay, chained)
        finally:
            chained.stop()
    finally:
        relay.stop()


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Browser]:
    with neuroglancer_browser() as b:
        yield b


def _view(browser: Browser, layers: dict[str, Any], save_as: str,
          hidden: tuple[str, ...] = ()) -> np.ndarray:
    import neuroglancer

    with browser.viewer.txn() as s:
        s.layers.clear()
        for name, layer in layers.items():
            s.layers[name] = layer
            s.layers[name].visible = name not in hidden
        s.layout = "3d"
        s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                    scales=list(VOXEL[::-1]))
        s.position = [o + n / 2 for o, n in zip(OFFSET[::-1], SHAPE[::-1], strict=True)]
        s.projection_scale = 300
    return browser.screenshot(save_as=save_as)


# -- the resolution of a precomputed info is in nanometres -------------------------------------
@pytest.mark.parametrize("far", [False, True], ids=["relay", "chained"])
def test_a_micrometre_volume_is_served_in_nanometres(served: Served, far: bool) -> None:
    import httpx

    info = httpx.get(served.url("um", far) + "/info").json()
    assert info["scales"][0]["resolution"] == pytest.approx([6.0, 8.0, 40.0]), info
    cv = CloudVolume(f"precomputed://{served.url('um', far)}", progress=False)
    assert list(cv.resolution) == pytest.approx([6.0, 8.0, 40.0])
    assert np.array_equal(np.asarray(cv[:])[..., 0].T, (_labels() % 200).astype(np.uint8) + 20)


def test_neuroglancer_places_a_micrometre_volume_beside_a_nanometre_one(
        served: Served, browser: Browser) -> None:
    """The two layers cover the same voxels at the same voxel size: Neuroglancer must take the
    same coordinate space from both (before the fix the N5 one came out 1000 times smaller)."""
    import neuroglancer

    before = len(browser.responses)
    with browser.viewer.txn() as s:
        s.layers.clear()
        s.dimensions = neuroglancer.CoordinateSpace()  # to be taken from the layer
        s.layers["um"] = neuroglancer.ImageLayer(source=f"precomputed://{served.url('um')}")
        s.layout = "xy"
    browser.screenshot(save_as="viewing-um.png")
    mine = browser.responses_since(before, served.url("um"))
    assert mine and all(st == 200 for _, st in mine), mine
    # (the client sends the dimensions it took from the layer back to Python on its own
    # schedule: on a loaded machine the screenshot can be taken before they arrive)
    deadline = time.monotonic() + 60
    dims = browser.viewer.state.dimensions
    while not (dims is not None and list(dims.names)) and time.monotonic() < deadline:
        time.sleep(0.1)
        dims = browser.viewer.state.dimensions
    assert dims is not None and list(dims.names) == ["x", "y", "z"]
    assert [s * 1e9 for s in dims.scales] == pytest.approx([6.0, 8.0, 40.0]), dims.to_json()
    assert list(dims.units) == ["m", "m", "m"]
    assert not browser.errors, browser.errors


# -- meshes and skeletons ---------------------------------------------------------------------
@pytest.mark.parametrize("far", [False, True], ids=["relay", "chained"])
@pytest.mark.parametrize("name", LAYERS)
def test_cloudvolume_reads_meshes_and_skeletons_as_written(served: Served, name: str,
                                                           far: bool) -> None:
    files = read_meshes(f"precomputed://file://{served.root}/{name}", IDS, strict=True)
    cv = CloudVolume(f"precomputed://{served.url(name, far)}", progress=False)
    got = cv.mesh.get(IDS, **({"fuse": False} if name == "legacy" else {}))
    for i in IDS:  # ids above 2**53 come back as they went in, each with its own mesh
        v = np.asarray(got[i].vertices)
        assert v.shape == files[i].vertices.shape, i
        assert np.allclose(np.sort(v, axis=0), np.sort(files[i].vertices, axis=0), atol=1e-3)
    # the meshes lie where their voxels are: offset and anisotropy applied once
    lo = (np.array([1, 3, 2]) + OFFSET)[::-1] * np.array(VOXEL[::-1])
    assert np.allclose(np.asarray(got[A].vertices).min(axis=0), lo, atol=1e-3)
    if name == "legacy":
        return
    skeletons = read_skeletons(f"precomputed://file://{served.root}/{name}", IDS, strict=True)
    for i in IDS:
        sk = cv.skeleton.get(i)
        assert int(sk.id) == i
        assert np.array_equal(sk.vertices, skeletons[i].vertices)
        assert np.array_equal(sk.edges, skeletons[i].edges)
        assert np.array_equal(sk.radius, skeletons[i].radius) and sk.radius.max() > 0


@pytest.mark.parametrize("far", [False, True], ids=["relay", "chained"])
def test_neuroglancer_loads_meshes_and_skeletons_of_ids_above_2_53(
        served: Served, browser: Browser, far: bool) -> None:
    import neuroglancer

    for name in LAYERS:
        base = served.url(name, far)
        drawn = {}
        for ids in ([A], [B]):
            before = len(browser.responses)
            img = _view(browser, {"seg": neuroglancer.SegmentationLayer(
                source=f"precomputed://{base}", segments=ids)}, f"viewing-{name}-{far}.png")
            mine = browser.responses_since(before, base + "/")
            assert all(st in (200, 206) for _, st in mine), mine
            files = [u[len(base) + 1:] for u, _ in mine]
            if name == "multires":  # exactly the selected id, never a float's neighbour
                assert f"mesh/{ids[0]}.index" in files and f"mesh/{ids[0]}" in files, files
                assert f"skeletons/{ids[0]}" in files, files
                named = {f.split("/")[-1].split(".")[0] for f in files}
                assert named - {"info"} == {str(ids[0])}, files
            elif name == "sharded":
                assert any(f.startswith("mesh/") and f.endswith(".shard") for f in files), files
                assert any(f.startswith("skeletons/") and f.endswith(".shard")
                           for f in files), files
            else:
                assert f"mesh/{ids[0]}:0" in files, files
            yellow = (img[..., 0] > 150) & (img[..., 1] > 150) & (img[..., 2] < 100)
            drawn[ids[0]] = (img.sum(-1) > 30) & ~yellow
            assert drawn[ids[0]].mean() > 0.003, (name, drawn[ids[0]].mean())
        # two different segments, drawn in two different places
        assert (drawn[A] != drawn[B]).mean() > 0.003, name
    assert not browser.errors, browser.errors


# -- annotations ------------------------------------------------------------------------------
SHADER = "void main() { setColor(prop_color()); setPointMarkerSize(14.0); setLineWidth(6.0); }"


@pytest.mark.parametrize(("name", "kinds", "far"), [
    ("multires", ("point", "ellipsoid"), False),
    ("sharded", ("line", "box"), False),
    ("sharded", ("point", "ellipsoid"), True),
    ("multires", ("line", "box"), True),
], ids=["unsharded-relay", "sharded-relay", "sharded-chained", "unsharded-chained"])
def test_neuroglancer_draws_annotations_by_property_and_relationship(
        served: Served, browser: Browser, name: str, kinds: tuple[str, ...], far: bool) -> None:
    import neuroglancer

    def pixels(img: np.ndarray, colour: tuple[int, int, int]) -> int:
        return int((np.abs(img - np.array(colour)).sum(-1) < 60).sum())

    for kind in kinds:
        source = f"{served.url(name, far)}/{kind}"
        for filtered in (False, True):
            before = len(browser.responses)
            seg = neuroglancer.SegmentationLayer(source=f"precomputed://{served.url(name, far)}",
                                                 segments=[A, C])
            link = ({"linked_segmentation_layer": {"seg_id": "seg"},
                     "filter_by_segmentation": ["seg_id"]} if filtered else {})
            ann = neuroglancer.AnnotationLayer(source=f"precomputed://{source}", shader=SHADER,
                                               **link)
            img = _view(browser, {"seg": seg, "ann": ann},
                        f"viewing-{name}-{kind}-{filtered}-{far}.png", hidden=("seg",))
            mine = browser.responses_since(before, source + "/")
            # an unsharded spatial level answers 404 for its empty cells, as a bucket does
            assert all(st in (200, 206) or (st == 404 and "/spatial" in u and name == "multires")
                       for u, st in mine), mine
            files = [u[len(source) + 1:] for u, _ in mine]
            if filtered:  # the relationship index of the selected segments, exact ids
                assert files and all(f.startswith("rel_seg_id/") for f in files), files
                if name == "multires":
                    assert sorted(files) == sorted(f"rel_seg_id/{i}" for i in (A, C)), files
            else:
                assert any(f.startswith("spatial0/") for f in files), files
            # the colours are those of the rgb property: the record layout is Neuroglancer's
            shown = {seg_id: pixels(img, c) for seg_id, c in COLOURS.items()}
            assert shown[A] > 30 and shown[C] > 30, (kind, filtered, shown)
            if filtered:  # B's and D's annotations are filtered out
                assert shown[B] == 0 and shown[D] == 0, (kind, shown)
            else:
                assert shown[B] > 30 and shown[D] > 30, (kind, shown)
    assert not browser.errors, browser.errors


def test_annotation_infos_name_what_neuroglancer_reads(served: Served) -> None:
    """Field names and types of the annotation info, as Neuroglancer's parser wants them
    (ids of the relationship index as keys: never through a float)."""
    for name in ("multires", "sharded"):
        info = json.loads((served.root / name / "point" / "info").read_text())
        assert info["@type"] == "neuroglancer_annotations_v1"
        assert list(info["dimensions"]) == ["x", "y", "z"]
        assert [p["type"] for p in info["properties"]] == ["float32", "uint16", "uint8", "rgb"]
        assert [r["id"] for r in info["relationships"]] == ["seg_id"]
        assert all(isinstance(v, int) for e in info["spatial"] for v in e["grid_shape"])
        if name == "multires":
            rel = served.root / name / "point" / "rel_seg_id"
            assert sorted(int(p.name) for p in rel.iterdir()) == sorted(IDS)
