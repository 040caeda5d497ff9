"""Neuroglancer (its PyPI client) in Debian's headless Chromium, driven by Playwright.

The recipe in specs/neuroglancer-headless.md: the PyPI client only runs behind neuroglancer's
Python server, and Debian's Chromium renders WebGL2 in software (SwiftShader).  The same
recipe as the ``browser`` fixture of test_precomputed_dialect.py, as a context manager other
test modules can use.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless=new", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--use-gl=angle", "--no-sandbox", "--disable-gpu-sandbox",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-quic"]


@dataclass
class Browser:
    viewer: Any  # neuroglancer.Viewer
    page: Any  # playwright's Page
    responses: list[tuple[str, int]]  # (url, status) of every response the page received
    errors: list[str]  # uncaught exceptions in the page

    def screenshot(self, size: int = 512, save_as: str = "") -> np.ndarray:
        """The viewer drawn once everything it asked for arrived, as an (h, w, 3) int array.
        With ``VOXGATE_SAVE_SCREENSHOTS=DIR`` in the environment it is also saved there as
        ``save_as``."""
        from PIL import Image

        shot = self.viewer.screenshot(size=[size, size]).screenshot  # waits until all is drawn
        image = Image.open(io.BytesIO(shot.image)).convert("RGB")
        where = os.environ.get("VOXGATE_SAVE_SCREENSHOTS")
        if where and save_as:
            os.makedirs(where, exist_ok=True)
            image.save(os.path.join(where, save_as))
        return np.asarray(image).astype(int)

    def responses_since(self, start: int, prefix: str) -> list[tuple[str, int]]:
        """(url, status) of the responses after the first ``start`` whose URL starts with
        ``prefix``.  Playwright's sync API delivers page events only while one of its calls
        runs, so one is made first."""
        self.page.evaluate("0")
        return [(u, st) for u, st in self.responses[start:] if u.startswith(prefix)]


@contextmanager
def neuroglancer_browser() -> Iterator[Browser]:
    import neuroglancer
    from playwright.sync_api import sync_playwright

    neuroglancer.set_server_bind_address("127.0.0.1")
    viewer = neuroglancer.Viewer()
    out = Browser(viewer, None, [], [])
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1024, "height": 768})
        try:
            page = out.page = ctx.new_page()
            page.on("response", lambda r: out.responses.append((r.url, r.status)))
            page.on("pageerror", lambda e: out.errors.append(str(e)))
            page.goto(viewer.get_viewer_url())
            yield out
        finally:
            ctx.close()
            neuroglancer.stop()
