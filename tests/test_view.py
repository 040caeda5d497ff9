"""voxgate.view / vol.view(): any Volumes shown in Neuroglancer through an in-process relay.

Neuroglancer's client (the PyPI package's) runs in Debian's headless Chromium; the tests look
at the pixels of each panel, not only at which files were fetched."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.formats.mesh import write_meshes
from voxgate.formats.skeleton import write_skeletons
from voxgate.synthetic import synthetic_labels
from voxgate.viewer import ViewerSession, view

from .relay.browser import CHROMIUM, FLAGS


@dataclass
class Data:
    image: str  # a zarr image: no meshes there, served by the relay all the same
    seg: str  # a precomputed segmentation with multires meshes and skeletons
    ids: list[int]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("view")
    labels = synthetic_labels((32, 96, 96), cell=(16, 32, 32), seed=3)
    seg = voxgate.create(f"precomputed://file://{root}/seg", shape=labels.shape,
                         chunks=(32, 64, 64), dtype="uint64", voxel_size=(40, 8, 8),
                         kind="segmentation")
    seg[:] = labels
    img = voxgate.create(f"zarr://{root}/img.zarr", shape=labels.shape, chunks=(32, 64, 64),
                         dtype="uint8", voxel_size=(40, 8, 8))
    rng = np.random.default_rng(0)
    img[:] = ((labels * 37) % 200 + 30 + rng.integers(0, 20, labels.shape)).astype(np.uint8)
    ids = [int(i) for i in np.unique(labels) if i]
    write_meshes(seg.url, voxgate.mesh(seg, ids=ids), format="multires")
    write_skeletons(seg.url, voxgate.skeletonize(seg, ids=ids))
    # an annotation layer inside the segmentation's directory, by Neuroglancer's own writer
    import neuroglancer
    from neuroglancer.write_annotations import AnnotationWriter

    space = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=[8, 8, 40])
    writer = AnnotationWriter(space, "point")
    for x, y, z in [(20, 30, 10), (60, 50, 20), (80, 20, 5)]:
        writer.add_point([x, y, z])
    writer.write(str(root / "seg" / "points"))
    return Data(img.url, seg.url, ids)


@dataclass
class Page:
    page: Any
    responses: list[tuple[str, int]]
    errors: list[str]


@pytest.fixture
def page() -> Iterator[Page]:
    from playwright.sync_api import sync_playwright

    out = Page(None, [], [])
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1024, "height": 768})
        try:
            out.page = ctx.new_page()
            out.page.on("response", lambda r: out.responses.append((r.url, r.status)))
            out.page.on("pageerror", lambda e: out.errors.append(str(e)))
            yield out
        finally:
            ctx.close()


def screenshot(session: ViewerSession, name: str) -> np.ndarray:
    import io
    import os

    from PIL import Image

    shot = session.viewer.screenshot(size=[800, 800]).screenshot  # waits until all is drawn
    image = Image.open(io.BytesIO(shot.image)).convert("RGB")
    if os.environ.get("VOXGATE_SAVE_SCREENSHOTS"):
        os.makedirs(os.environ["VOXGATE_SAVE_SCREENSHOTS"], exist_ok=True)
        image.save(Path(os.environ["VOXGATE_SAVE_SCREENSHOTS"]) / name)
    return np.asarray(image).astype(int)


def drawn(panel: np.ndarray) -> tuple[float, int]:
    """(fraction of pixels off the grey/black backgrounds, distinct colours) of a panel."""
    grey = (np.abs(panel - 128).sum(-1) <= 15) | (panel.sum(-1) <= 30)
    return float((~grey).mean()), len(np.unique(panel.reshape(-1, 3), axis=0))


def test_view_draws_image_segmentation_meshes_and_skeletons(data: Data, page: Page) -> None:
    with view(data.image, data.seg) as session:
        assert set(session.layers) == {"img", "seg", "seg/points"}
        assert all(s.startswith(f"precomputed://{session.relay_url}/precomputed/")
                   for s in session.layers.values())
        assert session.url.startswith("http://127.0.0.1:")
        assert session.relay_url.startswith("http://127.0.0.1:")
        page.page.goto(session.url)
        shot = screenshot(session, "view-4panel.png")
        # the 4-panel layout: xy | xz over 3-D | yz
        quads = {"xy": shot[:400, :400], "xz": shot[:400, 400:], "3d": shot[400:, :400],
                 "yz": shot[400:, 400:]}
        for name, quad in quads.items():
            frac, colours = drawn(quad)
            assert frac > 0.02 and colours > 20, (name, frac, colours)
        # the 3-D panel shows the selected segments' meshes: many shaded colours
        assert drawn(quads["3d"])[1] > 200
        page.page.evaluate("0")  # Playwright delivers page events during its own calls
        relay = [(u, st) for u, st in page.responses if u.startswith(session.relay_url)]
        assert any("/seg/mesh/" in u and u.endswith(".index") for u, _ in relay), relay
        assert any("/seg/skeletons/" in u for u, _ in relay), relay
        assert any("/img/" in u for u, _ in relay), relay
        assert any("/seg/points/" in u and "spatial" in u for u, _ in relay), relay
        assert all(st in (200, 206) for _, st in relay), relay
        # the image alone is drawn too (the segmentation is hidden)
        with session.viewer.txn() as s:
            s.layers["seg"].visible = False
        frac, colours = drawn(screenshot(session, "view-image.png")[:400, :400])
        assert frac > 0.02 and colours > 20, (frac, colours)
        assert page.errors == []


def test_view_selects_segments_and_names_layers(data: Data) -> None:
    vol = voxgate.open(data.seg)
    with view(vol, names=["cells"], segments={"cells": data.ids[:2]}) as session:
        assert list(session.layers) == ["cells", "cells/points"]
        state = session.viewer.state
        assert sorted(int(i) for i in state.layers["cells"].segments) == sorted(data.ids[:2])
        html = session._repr_html_()
        assert "<iframe" in html and session.url in html
    with view(vol) as session:  # the largest segments of the middle slice
        chosen = [int(i) for i in session.viewer.state.layers["seg"].segments]
        assert chosen and set(chosen) <= set(data.ids)
    with voxgate.open(data.seg).view() as session:  # the Volume's own method
        assert list(session.layers) == ["seg", "seg/points"]


def test_view_refuses_bad_requests(data: Data) -> None:
    with pytest.raises(InvalidRequestError, match="at least one"):
        view()
    with pytest.raises(InvalidRequestError, match="names has 2 entries"):
        view(data.seg, names=["a", "b"])
    with pytest.raises(InvalidRequestError, match="must differ"):
        view(data.seg, data.image, names=["a", "a"])


def test_voxgate_view_command_prints_a_working_link(data: Data) -> None:
    """``voxgate view URL --no-browser`` serves until interrupted; its link and relay answer."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    def default_sigint() -> None:
        # a child inherits an ignored SIGINT: something in a long test run (a C library)
        # may have left this process ignoring it, and Ctrl-C must reach the command
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "voxgate", "view", data.image, data.seg,
                             "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "BROWSER": "false"},
                            preexec_fn=default_sigint)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the servers are up
        assert line.startswith("Neuroglancer: http://127.0.0.1:"), line
        link = line.split(": ", 1)[1].strip()
        assert httpx.get(link, timeout=30).status_code == 200  # the client's page
        state = httpx.get(link.replace("/v/", "/state/", 1).rstrip("/"), timeout=30)
        if state.status_code == 200:  # neuroglancer's state endpoint, where it has one
            assert "seg" in state.text
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "img, seg" in err and "Ctrl-C" in err
    bad = subprocess.run([sys.executable, "-m", "voxgate", "view"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "Missing argument" in bad.stderr
