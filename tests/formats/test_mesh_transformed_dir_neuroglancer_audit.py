"""Neuroglancer shows the meshes voxgate adds to an Igneous-made mesh directory where
Igneous' own are.

Igneous (and CloudVolume's ``to_multi_resolution``) store multi-resolution meshes in voxel
units under a ``transform`` that scales by the voxel size; ``write_meshes`` moves voxgate's
nm vertices into that stored frame (tests/formats/test_mesh_transformed_dir_audit.py checks
that CloudVolume and voxgate read them back).  Here the reader is Neuroglancer itself (its
PyPI client in headless Chromium): a small anisotropic segmentation at an offset, meshed by
Igneous multi-resolution (unsharded and sharded) and legacy (Igneous' legacy fragments
moved to voxel units under the same transform, as CloudVolume's encoder writes them).  With
a fixed camera, the 3-D view of segment S drawn from Igneous' mesh and then from voxgate's
(written over it, same format and layout, with a coarser level of detail too) must cover
the same pixels; after ``voxgate.merge([A, B], remesh=True)`` the merged id's new mesh must
cover the pixels that A's and B's Igneous meshes covered.  A mesh stored in the wrong frame
(nm under a voxel-unit transform is 8-40 times too large; the identity mistaken is off)
shows elsewhere or not at all.  Neuroglancer ignores a legacy info's transform
(docs/formats.md): there old and new meshes alike show in the stored frame, which is
checked too.

Each state of a directory is served under its own URL (a copy), so neither the browser's
cache nor Neuroglancer's memoized metadata can show an older state.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from cloudvolume import CloudVolume
from cloudvolume.mesh import Mesh as CVMesh

import voxgate
from voxgate.formats.mesh import read_meshes, write_meshes
from voxgate.formats.mesh.multires import _Manifest

from ..relay.browser import Browser, neuroglancer_browser
from ..static_http import serve_directory
from .test_mesh_transformed_dir_audit import PEER, SCALE, _igneous, needs_igneous

#: (skipped without Igneous outside CI, failed in CI, as the file beside it)
pytestmark = needs_igneous

SHAPE = (32, 64, 64)              # z, y, x (what _igneous meshes: one (64, 64, 32) xyz task)
OFFSET = (3, 16, 24)              # z, y, x voxels
VOXEL = (40.0, 8.0, 8.0)          # z, y, x nm
RES = np.array(VOXEL[::-1])       # x, y, z
A, S, B = 1, 2, 3                 # the ids _igneous meshes; S is replaced, A and B merged
#: (z, y, x) centre and radii of each blob, in voxels of the array
BLOBS = {A: ((10, 18, 16), (7, 12, 11)), S: ((18, 44, 40), (9, 14, 16)),
         B: ((22, 16, 48), (8, 10, 12))}
KINDS = ("multires", "sharded", "legacy")
#: the camera: an oblique view, the same for both screenshots of a comparison
ORIENTATION = [0.28, -0.18, 0.08, 0.94]


def _labels() -> np.ndarray:
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    lab = np.zeros(SHAPE, np.uint64)
    for i, (c, r) in BLOBS.items():
        inside = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip((z, y, x), c, r, strict=True))
        lab[inside <= 1] = i
    return lab


def _layer(path: Path) -> str:
    url = f"file://{path}"
    info = CloudVolume.create_new_info(1, "segmentation", "uint64", "raw", RES.tolist(),
                                       list(OFFSET[::-1]), list(SHAPE[::-1]),
                                       chunk_size=[32, 32, 16])
    cv = CloudVolume(url, info=info, progress=False)
    cv.commit_info()
    cv[:, :, :] = np.transpose(_labels(), (2, 1, 0))[..., None]
    return url


def _legacy_from_igneous(path: Path, igneous: Path) -> None:
    """Legacy meshes of A, S and B in voxel units under the scaling transform: Igneous'
    legacy fragments (nm, gzipped, left beside its unsharded multires meshes in ``igneous``)
    divided by the voxel size and encoded again by CloudVolume's Mesh, each fragment stored
    as its manifest names it."""
    mesh_dir = path / "mesh"
    mesh_dir.mkdir()
    for i in (A, S, B):
        manifest = json.loads((igneous / f"{i}:0").read_text())
        for frag in manifest["fragments"]:
            m = CVMesh.from_precomputed(gzip.decompress((igneous / f"{frag}.gz").read_bytes()))
            v = (np.asarray(m.vertices, np.float64) / RES).astype(np.float32)
            (mesh_dir / frag).write_bytes(CVMesh(v, m.faces, None, segid=i).to_precomputed())
        (mesh_dir / f"{i}:0").write_text(json.dumps(manifest))
    (mesh_dir / "info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh",
                                               "transform": SCALE}))
    info = json.loads((path / "info").read_text())
    info["mesh"] = "mesh"
    (path / "info").write_text(json.dumps(info))


@dataclass
class World:
    root: Path
    url: str                      # the HTTP server's base URL, serving root
    browser: Browser
    console: list[str] = field(default_factory=list)  # console errors of the page
    ranges: list[tuple[str, str]] = field(default_factory=list)  # (url, Range) requested

    def copy(self, kind: str, name: str) -> Path:
        """A copy of the Igneous-made layer of ``kind`` as ``<name>-<kind>/seg``."""
        path = self.root / f"{name}-{kind}" / "seg"
        shutil.copytree(self.root / f"igneous-{kind}" / "seg", path)
        return path

    def http(self, path: Path) -> str:
        return f"{self.url}/{path.relative_to(self.root).as_posix()}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    assert PEER, "CI must run these: scripts/test.sh sets VOXGATE_IGNEOUS_PYTHON"
    root = tmp_path_factory.mktemp("ng-igneous")
    for kind in KINDS:
        path = root / f"igneous-{kind}" / "seg"
        _layer(path)
        if kind == "legacy":
            _legacy_from_igneous(path, root / "igneous-multires" / "seg" / "mesh")
        else:
            _igneous(path, sharded=kind == "sharded")
        assert json.loads((path / "mesh" / "info").read_text())["transform"] == SCALE
    with serve_directory(root) as url, neuroglancer_browser() as browser:
        w = World(root, url, browser)
        browser.page.on("console", lambda m: w.console.append(m.text)
                        if m.type == "error" else None)
        browser.page.on("request", lambda r: w.ranges.append((r.url, r.headers["range"]))
                        if "range" in r.headers else None)
        yield w


def _camera(kind: str) -> tuple[list[float], float]:
    """Position (global voxel coordinates) and projection scale: the volume's centre; for
    legacy meshes, which Neuroglancer draws in the stored frame (voxel units taken as nm),
    the centre of the volume's voxel coordinates read as nm."""
    centre = np.array(OFFSET[::-1]) + np.array(SHAPE[::-1]) / 2
    if kind == "legacy":
        return (centre / RES).tolist(), 120 / 8
    return centre.tolist(), 120


def _shot(w: World, layer_path: Path, ids: list[int], kind: str, save_as: str,
          camera: str | None = None, render_scale: float = 10.0,
          ) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """The silhouette of segments ``ids`` (white on black) in the 3-D view of the layer at
    ``layer_path``, and the responses to the requests the page made for that layer.
    ``render_scale`` is the layer's mesh render scale (Neuroglancer's default 10; a huge one
    makes it draw the coarsest level of detail)."""
    import neuroglancer

    base = w.http(layer_path)
    position, scale = _camera(camera or kind)
    before = len(w.browser.responses)
    with w.browser.viewer.txn() as s:
        s.layers.clear()
        s.layers["seg"] = neuroglancer.SegmentationLayer(
            source=f"precomputed://{base}", segments=ids,
            segment_colors={i: "#ffffff" for i in ids}, mesh_render_scale=render_scale)
        s.layout = "3d"
        s.show_axis_lines = False
        s.show_default_annotations = False
        s.show_scale_bar = False
        s.show_slices = False
        s.projection_background_color = "#000000"
        s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                    scales=RES.tolist())
        s.position = position
        s.projection_orientation = ORIENTATION
        s.projection_scale = scale
    img = w.browser.screenshot(save_as=save_as)
    mine = w.browser.responses_since(before, base + "/")
    return img.sum(-1) > 60, mine


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _fetched(mine: list[tuple[str, int]], base: str) -> list[str]:
    assert mine and all(st in (200, 206) for _, st in mine), mine
    return [u[len(base) + 1:] for u, _ in mine]


def _no_errors(w: World) -> None:
    """No uncaught exception in the page; every answer of the layer server 200 or 206; the
    console errors only the documented harmless 404 (of the client's own server) and 412s
    of Neuroglancer's Python server (its answer to a state update that crossed one made
    from Python: the client sends its state again)."""
    assert not w.browser.errors, w.browser.errors
    w.browser.page.evaluate("0")  # (page events arrive while a call runs)
    ours = [(u, st) for u, st in w.browser.responses if u.startswith(w.url + "/")]
    assert ours and all(st in (200, 206) for _, st in ours), ours
    viewer = urlsplit(w.browser.viewer.get_viewer_url())
    failed = [(u, st) for u, st in w.browser.responses if st >= 300]
    assert all(st == 412 and u.startswith(f"{viewer.scheme}://{viewer.netloc}/state/")
               for u, st in failed), failed
    said = "Failed to load resource: the server responded with a status of "
    assert all(m.startswith((said + "404", said + "412")) for m in w.console), w.console
    assert sum(m.startswith(said + "404") for m in w.console) <= 1, w.console


def _options(kind: str) -> dict[str, Any]:
    if kind == "legacy":
        return {"format": "legacy"}
    return {"format": "multires", "sharded": kind == "sharded"}


@pytest.mark.parametrize("kind", KINDS)
def test_voxgates_mesh_of_s_shows_where_igneous_mesh_of_s_did(world: World, kind: str) -> None:
    w = world
    old_path = w.root / f"igneous-{kind}" / "seg"
    theirs, mine = _shot(w, old_path, [S], kind, f"ng-{kind}-igneous.png")
    _fetched(mine, w.http(old_path))
    path = w.copy(kind, "replaced")
    url = f"file://{path}"
    made = voxgate.mesh(voxgate.open(f"precomputed://{url}"), ids=[S], prefer="local")
    before = {p.name: p.read_bytes() for p in (path / "mesh").iterdir()}
    # (Igneous made one level of detail: voxgate adds a coarser one too)
    lods: dict[str, Any] = {} if kind == "legacy" else {"lods": 2}
    write_meshes(url, {S: made[S]}, **_options(kind), **lods)
    assert json.loads((path / "mesh" / "info").read_text())["transform"] == SCALE
    changed = {p.name for p in (path / "mesh").iterdir()
               if before.get(p.name) != p.read_bytes()}
    assert changed, "nothing was written"
    data = f"{w.http(path)}/mesh/{S}"  # (unsharded multires: S's fragments, read by range)
    first = len(w.browser.responses)
    if kind != "legacy":
        # voxgate's coarser level first (its octree nodes twice the size in the stored
        # frame): Neuroglancer told to draw the coarsest level draws it where S is
        at = len(w.ranges)
        coarse, _ = _shot(w, path, [S], kind, f"ng-{kind}-voxgate-lod1.png", render_scale=4000)
        assert _iou(theirs, coarse) > 0.75, (_iou(theirs, coarse), coarse.mean())
        if kind == "multires":  # having read level 1's bytes only (they follow level 0's)
            m = _Manifest.from_bytes((path / "mesh" / f"{S}.index").read_bytes(), "index")
            assert m.lod_scales.tolist() == [1.0, 2.0]
            level1 = int(m.sizes[0].sum())
            read = [int(r.split("=")[1].split("-")[0]) for u, r in w.ranges[at:] if u == data]
            assert read and min(read) >= level1, (read, level1)
    at = len(w.ranges)
    ours, _ = _shot(w, path, [S], kind, f"ng-{kind}-voxgate.png")
    # Neuroglancer fetched the files voxgate wrote for S (in one screenshot or the other)
    files = _fetched(w.browser.responses_since(first, w.http(path) + "/"), w.http(path))
    fetched = {f.split("/")[-1] for f in files if f.startswith("mesh/")}
    if kind == "multires":
        assert {f"{S}.index", f"{S}"} <= fetched & changed, (fetched, changed)
        read = [int(r.split("=")[1].split("-")[0]) for u, r in w.ranges[at:] if u == data]
        assert read and min(read) < level1, (read, level1)  # level 0 drawn now
    elif kind == "sharded":
        assert any(f.endswith(".shard") for f in fetched & changed), (fetched, changed)
    else:
        frags = json.loads((path / "mesh" / f"{S}:0").read_text())["fragments"]
        assert {f"{S}:0", *frags} <= fetched & changed, (fetched, changed)
    assert theirs.mean() > 0.01 and ours.mean() > 0.01, (theirs.mean(), ours.mean())
    assert _iou(theirs, ours) > 0.8, (_iou(theirs, ours), theirs.mean(), ours.mean())
    _no_errors(w)


@pytest.mark.parametrize("kind", KINDS)
def test_a_merged_segment_remeshed_by_voxgate_shows_where_its_parts_did(
        world: World, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    monkeypatch.setenv("VOXGATE_PROOFREAD_DIR", str(w.root / f"histories-{kind}"))
    old_path = w.root / f"igneous-{kind}" / "seg"
    parts, _ = _shot(w, old_path, [A, B], kind, f"ng-{kind}-parts.png")
    alone, _ = _shot(w, old_path, [A], kind, f"ng-{kind}-a.png")
    path = w.copy(kind, "merged")
    voxgate.merge(voxgate.open(f"precomputed://file://{path}", mode="r+"), [A, B],
                  remesh=True)
    assert set(read_meshes(f"file://{path}", [A, B])) == {A}
    merged, mine = _shot(w, path, [A], kind, f"ng-{kind}-merged.png")
    files = set(_fetched(mine, w.http(path)))
    if kind == "multires":  # A's new mesh
        assert {f"mesh/{A}.index", f"mesh/{A}"} <= files, files
    elif kind == "sharded":
        assert any(f.startswith("mesh/") and f.endswith(".shard") for f in files), files
    else:
        frags = json.loads((path / "mesh" / f"{A}:0").read_text())["fragments"]
        assert {f"mesh/{A}:0", *(f"mesh/{f}" for f in frags)} <= files, files
        old = json.loads((old_path / "mesh" / f"{A}:0").read_text())["fragments"]
        assert not set(frags) & set(old), (frags, old)  # voxgate's, not Igneous'
    assert alone.mean() > 0.005 and (parts & ~alone).mean() > 0.005  # B shows beside A
    assert _iou(merged, parts) > 0.8, (_iou(merged, parts), merged.mean(), parts.mean())
    assert _iou(merged, alone) < 0.8  # A's new mesh covers B's voxels too
    _no_errors(w)


def test_neuroglancer_draws_legacy_meshes_in_the_stored_frame(world: World) -> None:
    """What docs/formats.md says: Neuroglancer ignores a legacy info's transform, so the
    voxel-unit meshes (CloudVolume's and voxgate's alike) are not where the segment's voxels
    are in nm, and are in the stored frame; multires meshes under the same transform are."""
    w = world
    path = w.root / "igneous-legacy" / "seg"
    at_nm, _ = _shot(w, path, [S], "legacy", "ng-legacy-at-nm.png", camera="multires")
    stored, _ = _shot(w, path, [S], "legacy", "ng-legacy-stored.png")
    multires, _ = _shot(w, w.root / "igneous-multires" / "seg", [S], "multires",
                        "ng-multires-at-nm.png")
    assert at_nm.mean() < 0.001 and stored.mean() > 0.01 and multires.mean() > 0.01
    _no_errors(w)
