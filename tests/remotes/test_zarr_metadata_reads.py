"""Opening a zarr array over HTTP reads its metadata document once: voxgate checks the document
it read and hands it to tensorstore (``metadata`` with ``assume_metadata``), which then reads
no metadata of its own.  On object storage every read is a request, paid at each open."""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import voxgate
from voxgate.errors import InvalidRequestError

from ..static_http import RangeHandler


@contextmanager
def counting_server(root: Path) -> Iterator[tuple[str, Counter[str]]]:
    """Serve ``root``; yields the base URL and a count of requests (GET and HEAD) by path."""
    counts: Counter[str] = Counter()

    class Handler(RangeHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=str(root), **k)

        def do_GET(self) -> None:
            counts[self.path.split("?")[0]] += 1
            super().do_GET()

        def do_HEAD(self) -> None:
            counts[self.path.split("?")[0]] += 1
            super().do_HEAD()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counts
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("fmt", [2, 3])
def test_plain_array_metadata_is_read_once(tmp_path: Path, fmt: int) -> None:
    data = np.arange(4 * 5 * 6, dtype="uint16").reshape(4, 5, 6)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(2, 5, 3),
                          dtype="uint16", zarr_format=fmt,
                          attributes={"voxgate": {"voxel_size": [40, 4, 4]}})
    z[:] = data
    key = "zarr.json" if fmt == 3 else ".zarray"
    with counting_server(tmp_path) as (base, counts):
        vol = voxgate.open(f"zarr://{base}/a.zarr")
        assert counts[f"/a.zarr/{key}"] == 1, dict(counts)
        assert vol.voxel_size.zyx() == (40, 4, 4)
        np.testing.assert_array_equal(vol.read(), data)
        assert counts[f"/a.zarr/{key}"] == 1, dict(counts)


@pytest.mark.parametrize("fmt", [2, 3])
def test_ome_zarr_dataset_metadata_is_read_once(tmp_path: Path, fmt: int) -> None:
    vol = voxgate.create(f"zarr://{tmp_path}/m.zarr", shape=(8, 16, 16), chunks=(4, 8, 8),
                         dtype="uint8", voxel_size=(40, 8, 8), num_scales=2, zarr_format=fmt)
    vol[:] = 5
    key = "zarr.json" if fmt == 3 else ".zarray"
    with counting_server(tmp_path) as (base, counts):
        again = voxgate.open(f"zarr://{base}/m.zarr")
        assert [counts[f"/m.zarr/{i}/{key}"] for i in range(2)] == [1, 1], dict(counts)
        assert (again.read() == 5).all()


def test_checks_hold_for_the_document_handed_on(tmp_path: Path) -> None:
    """What tensorstore refused when it read the file itself is still refused, naming it."""
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 5, 6), chunks=(2, 5, 3),
                          dtype="uint8", zarr_format=2)
    z[:] = 1
    f = tmp_path / "a.zarr" / ".zarray"
    f.write_text(f.read_text().replace('"chunks": [', '"chunks": [0, '))
    with pytest.raises(InvalidRequestError, match=r"\.zarray"):
        voxgate.open(f"zarr://{tmp_path}/a.zarr")
