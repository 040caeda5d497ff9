"""label_stats on bossdb:// both ways, against the two servers that speak it.

A voxgate relay answers ``GET /v1/ids/...?boxes=tight`` for a whole channel with every id's
box, voxel count and coordinate sums: the server path's frame is then the local path's frame,
centroids included, to the last bit.  Real bossDB ignores query parameters it does not know
and answers the ids alone; here a proxy on 127.0.0.1 in front of a relay drops ``boxes`` from
the query, as bossDB would, and label_stats falls back to one bounding-box request per id (or
to the local path), with the same ids and boxes.

And the relay's whole-channel pass no longer counts a block's distinct ids in a pass of its
own before computing its statistics, unless the block could hold more than the cap.
"""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

import voxgate
from voxgate.relay import stats as stats_module
from voxgate.synthetic import synthetic_labels

from .conftest import RW, RelayProcess, free_port, relay_over_zarr, start_rw_relay

SHAPE = (24, 80, 72)
BOX_COLUMNS = ["id", "z0", "y0", "x0", "z1", "y1", "x1"]


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    # ids past 2**53; objects cut by any block grid
    return synthetic_labels(SHAPE, cell=(7, 23, 19), seed=5) + np.uint64(2**60 + 3)


@pytest.fixture(scope="module")
def boss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("paths")
    r = start_rw_relay(d)
    yield r
    r.stop()


def channel(boss: RelayProcess, name: str, labels: np.ndarray) -> str:
    """A channel of ``labels`` written through the relay; its bossdb:// location."""
    url = f"bossdb://{boss.url}/paths/{name}/seg"
    seg = voxgate.create(url, shape=labels.shape, chunks=(16, 512, 512), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation", token=RW)
    seg[:] = labels
    return f"paths/{name}/seg"


class _Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: PlainBoss


class _Forward(http.server.BaseHTTPRequestHandler):
    server: _Proxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        url = urllib.parse.urlsplit(self.path)
        query = [(k, v) for k, v in urllib.parse.parse_qsl(url.query, keep_blank_values=True)
                 if k != "boxes"]  # unknown to bossDB: ignored
        with owner.lock:
            owner.asked.append(self.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() == "authorization"}
        res = owner.http.get(url.path, params=query, headers=headers)
        self.send_response(res.status_code)
        self.send_header("Content-Type", res.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(res.content)))
        self.end_headers()
        self.wfile.write(res.content)


class PlainBoss:
    """bossDB's answers, from a relay behind a proxy that drops the ``boxes`` query."""

    def __init__(self, relay: RelayProcess) -> None:
        self.http = httpx.Client(base_url=relay.url, timeout=60)
        self.lock = threading.Lock()
        self.asked: list[str] = []
        self.server = _Proxy(("127.0.0.1", free_port()), _Forward)
        self.server.owner = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


@pytest.fixture
def plain(boss: RelayProcess) -> Iterator[PlainBoss]:
    p = PlainBoss(boss)
    yield p
    p.close()


def test_relay_server_path_is_the_local_frame(boss: RelayProcess, labels: np.ndarray) -> None:
    """Through a relay, one request gives every column: the frame equals the local path's,
    counts and centroids included (they were <NA> and NaN on the server path)."""
    name = channel(boss, "relay", labels)
    seg = voxgate.open(f"bossdb://{boss.url}/{name}", token=RW)
    server = voxgate.label_stats(seg, prefer="server")
    prov = server.attrs["provenance"]
    assert prov.path == "server" and prov.details["requests"] == 1
    # blocks unlike the relay's pass (one block): sums agree however the volume is cut
    local = voxgate.label_stats(seg, prefer="local", block=(5, 16, 16))
    assert local.attrs["provenance"].details["blocks"] > 1
    pd.testing.assert_frame_equal(server, local, check_exact=True)
    ids, table = seg.remote.ids_and_boxes(seg.bounds)  # type: ignore[attr-defined]
    assert table is not None and sorted(table) == ["count", "hi", "id", "lo", "sum"]
    np.testing.assert_array_equal(ids, np.unique(labels))
    # the centroids against numpy: the mean index of each id's voxels
    for i in (int(ids[0]), int(ids[len(ids) // 2])):
        where = np.array(np.nonzero(labels == i), dtype=np.float64).mean(axis=1)
        row = server[server["id"] == np.uint64(i)]
        np.testing.assert_allclose(
            row[["centroid_z", "centroid_y", "centroid_x"]].to_numpy()[0], where,
            rtol=1e-12)


def test_plain_bossdb_ids_without_boxes_fall_back(boss: RelayProcess, plain: PlainBoss,
                                                  labels: np.ndarray) -> None:
    """A server that answers ``ids?boxes=tight`` with the ids alone (bossDB): one box request
    per id on the server path, the local path's ids and boxes; counts and centroids missing,
    as bossDB has none.  "auto" gives the same ids and boxes, whichever path it takes."""
    name = channel(boss, "plain", labels)
    seg = voxgate.open(f"bossdb://{plain.url}/{name}", token=RW)
    whole = seg.bounds
    ids, table = seg.remote.ids_and_boxes(whole)  # type: ignore[attr-defined]
    assert table is None
    np.testing.assert_array_equal(ids, np.unique(labels))
    assert any("boxes=tight" in p for p in plain.asked)  # asked, and ignored
    local = voxgate.label_stats(seg, prefer="local")
    server = voxgate.label_stats(seg, prefer="server")
    prov = server.attrs["provenance"]
    assert prov.path == "server" and prov.details["requests"] == len(local) + 1
    assert sum("/boundingbox/" in p for p in plain.asked) == len(local)
    pd.testing.assert_frame_equal(server[BOX_COLUMNS], local[BOX_COLUMNS], check_exact=True)
    assert server["voxel_count"].isna().all()
    assert server[["centroid_z", "centroid_y", "centroid_x"]].isna().all().all()
    auto = voxgate.label_stats(seg)
    pd.testing.assert_frame_equal(auto[BOX_COLUMNS], local[BOX_COLUMNS], check_exact=True)


def test_a_pass_counts_no_ids_apart_from_the_kernel(tmp_path: Path, labels: np.ndarray,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A block that cannot hold more ids than the cap (its runs of equal voxels are fewer) is
    not first scanned for its distinct ids: that was a second pass over every block bigger
    than the cap, 35-45% of the pass once its kernel lost its per-id Python loops."""
    relay, remote = relay_over_zarr(tmp_path, labels, (8, 40, 36))
    counted: list[int] = []
    exact = stats_module._nonzero_ids

    def counting(data: np.ndarray) -> np.ndarray:
        counted.append(data.size)
        return exact(data)

    monkeypatch.setattr(stats_module, "_nonzero_ids", counting)
    try:
        flat = labels.reshape(-1)
        runs = int(np.count_nonzero(flat[1:] != flat[:-1])) + 1
        cap = labels.size // 4
        assert runs < cap < labels.size  # every block (here the whole channel) over the cap
        relay.stats.max_ids = cap
        assert relay.stats.ids(remote, 0) == [int(i) for i in np.unique(labels)]
        assert counted == []
        # a block that could hold more: counted exactly first, and refused when it does
        relay.stats.max_ids = runs - 1
        with relay.stats.writing(remote):
            pass
        assert relay.stats.ids(remote, 0) == [int(i) for i in np.unique(labels)]
        assert counted == [labels.size]
    finally:
        relay.cache.close()
