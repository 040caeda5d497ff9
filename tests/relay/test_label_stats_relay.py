"""The relay's ids and bounding boxes of a whole channel: one pass, cached, dropped by writes.

Over HTTP on a real relay process: many boundingbox requests cost one pass (the relay's
/metrics count passes); a write between two calls is seen by the second; a channel deleted and
created again answers its own boxes.  In process, on the relay's own ``Relay`` with an upstream
whose first read waits for the test: requests during a pass share it, and a pass that read the
channel before a write is never served after that write returned.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box
from voxgate.relay.state import Relay
from voxgate.remotes.base import Remote
from voxgate.remotes.boss import BossProject
from voxgate.services.label_stats import label_stats_kernel, merge_stats
from voxgate.synthetic import synthetic_labels

from .conftest import RW, RelayProcess, relay_over_zarr, start_rw_relay

SHAPE = (24, 80, 72)


def tight_boxes(labels: np.ndarray) -> dict[int, tuple[list[int], list[int]]]:
    """The brute-force answer: every non-zero id's tight box (numpy only)."""
    out = {}
    for i in np.unique(labels):
        if i == 0:
            continue
        where = np.nonzero(labels == i)
        out[int(i)] = ([int(w.min()) for w in where], [int(w.max()) + 1 for w in where])
    return out


def as_range(lo: list[int], hi: list[int]) -> dict[str, list[int]]:
    return {"x_range": [lo[2], hi[2]], "y_range": [lo[1], hi[1]], "z_range": [lo[0], hi[0]],
            "t_range": [0, 1]}


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return synthetic_labels(SHAPE, cell=(8, 20, 20), seed=3) + np.uint64(2**60)


@pytest.fixture(scope="module")
def boss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("stats")
    r = start_rw_relay(d)
    yield r
    r.stop()


def passes(http: httpx.Client) -> int:
    return int(http.get("/metrics").json()["label_stats"]["computations"])


def test_boxes_cost_one_pass_and_writes_are_seen(boss: RelayProcess, labels: np.ndarray
                                                 ) -> None:
    url = f"bossdb://{boss.url}/st/e/seg"
    seg = voxgate.create(url, shape=SHAPE, chunks=(16, 512, 512), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation", token=RW)
    seg[:] = labels
    expected = tight_boxes(labels)
    assert len(expected) > 10
    z, y, x = SHAPE
    with boss.client() as http:
        before = passes(http)
        ids = http.get(f"/v1/ids/st/e/seg/0/0:{x}/0:{y}/0:{z}/").json()["ids"]
        assert ids == [str(i) for i in sorted(expected)]
        for i, (lo, hi) in expected.items():
            res = http.get(f"/v1/boundingbox/st/e/seg/0/{i}/?type=tight")
            assert res.status_code == 200 and res.json() == as_range(lo, hi), i
        # the ids and every box: one pass over the channel, not one per id
        assert passes(http) == before + 1
        # a write lands between two boundingbox calls: the second sees the grown box
        target = sorted(expected)[0]
        lo, hi = expected[target]
        corner = np.full((2, 3, 4), target, dtype=np.uint64)
        seg[z - 2:z, y - 3:y, x - 4:x] = corner
        grown = as_range(lo, [z, y, x])
        res = http.get(f"/v1/boundingbox/st/e/seg/0/{target}/?type=tight")
        assert res.json() == grown
        # a new id written through the relay is in the whole channel's ids and has its box
        seg[0:1, 0:2, 0:3] = np.full((1, 2, 3), 7, dtype=np.uint64)
        ids = http.get(f"/v1/ids/st/e/seg/0/0:{x}/0:{y}/0:{z}/").json()["ids"]
        assert "7" in ids
        assert http.get("/v1/boundingbox/st/e/seg/0/7/?type=tight").json() == \
            as_range([0, 0, 0], [1, 2, 3])
        # an id overwritten everywhere is gone
        gone = sorted(expected)[-1]
        now = seg.read()
        now[now == gone] = 0
        seg[:] = now
        res = http.get(f"/v1/boundingbox/st/e/seg/0/{gone}/?type=tight")
        assert res.status_code == 404
        assert str(gone) not in http.get(f"/v1/ids/st/e/seg/0/0:{x}/0:{y}/0:{z}/").json()["ids"]


def test_a_channel_created_again_has_its_own_boxes(boss: RelayProcess, labels: np.ndarray
                                                   ) -> None:
    url = f"bossdb://{boss.url}/again/e/seg"
    seg = voxgate.create(url, shape=SHAPE, chunks=(16, 512, 512), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation", token=RW)
    seg[:] = labels
    target = int(np.unique(labels)[1])
    with boss.client() as http:
        first = http.get(f"/v1/boundingbox/again/e/seg/0/{target}/?type=tight").json()
        assert first == as_range(*tight_boxes(labels)[target])
        BossProject(boss.url, token=RW).delete_channel("again", "e", "seg")
        BossProject(boss.url, token=RW).create_channel("again", "e", "seg", type="annotation",
                                                        datatype="uint64")
        fresh = voxgate.open(url, mode="r+", token=RW)
        fresh[3:5, 6:9, 10:14] = np.full((2, 3, 4), target, dtype=np.uint64)
        res = http.get(f"/v1/boundingbox/again/e/seg/0/{target}/?type=tight")
        assert res.json() == as_range([3, 6, 10], [5, 9, 14])


# -- in process: single flight and a write racing a pass ------------------------------------------
class Gated(Remote):
    """Delegates to a real Remote; its first read (after the data is read) waits for the test,
    and so do writes (before they reach the store) while ``hold_writes`` is set."""

    scheme = "gated"

    def __init__(self, inner: Remote) -> None:
        self.inner = inner
        self.meta, self.url, self.mode = inner.meta, inner.url, inner.mode
        self.entered = threading.Event()
        self.release = threading.Event()
        self.reads = 0
        self._lock = threading.Lock()
        self.hold_writes = False
        self.writing = threading.Event()
        self.release_write = threading.Event()

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> Remote:
        raise NotImplementedError

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        data = self.inner.read(box, scale)
        with self._lock:
            self.reads += 1
            first = self.reads == 1
        if first:
            self.entered.set()
            assert self.release.wait(60), "the test never released the first read"
        return data

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        if self.hold_writes:
            self.writing.set()
            assert self.release_write.wait(60), "the test never released the write"
        self.inner.write(box, array, scale)


@pytest.fixture
def relay_in_process(tmp_path: Path, labels: np.ndarray) -> Iterator[tuple[Relay, Any, Gated]]:
    assert labels.shape == SHAPE
    relay, remote = relay_over_zarr(tmp_path, labels, (8, 40, 36))
    gated = Gated(remote.upstream)
    remote.upstream = gated  # the relay's own CachedRemote, over a gate
    yield relay, remote, gated
    gated.release.set()
    gated.release_write.set()
    relay.cache.close()


def run_in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    return t, out


def wait_until(cond: Any, what: str) -> None:
    done = threading.Event()
    for _ in range(6000):
        if cond():
            return
        done.wait(0.01)
    raise AssertionError(f"never happened: {what}")


def test_requests_during_a_pass_share_it(relay_in_process: tuple[Relay, Any, Gated],
                                         labels: np.ndarray) -> None:
    relay, remote, gated = relay_in_process
    stats = relay.stats
    target = int(np.unique(labels)[1])
    a, out_a = run_in_thread(lambda: stats.bounding_box(remote, target, 0))
    assert gated.entered.wait(60)
    b, out_b = run_in_thread(lambda: stats.ids(remote, 0))
    wait_until(lambda: stats.metrics()["joined"] == 1, "the second request joined the pass")
    gated.release.set()
    a.join(60)
    b.join(60)
    assert "error" not in out_a and "error" not in out_b
    lo, hi = tight_boxes(labels)[target]
    assert out_a["value"] == Box(lo, hi)
    assert out_b["value"] == [int(i) for i in np.unique(labels) if i]
    assert stats.metrics()["computations"] == 1
    # kept: the next requests read no voxel
    reads = gated.reads
    assert stats.bounding_box(remote, target, 0) == Box(lo, hi)
    assert gated.reads == reads and stats.metrics()["computations"] == 1


def test_a_pass_that_read_before_a_write_is_not_served_after_it(
        relay_in_process: tuple[Relay, Any, Gated], labels: np.ndarray) -> None:
    relay, remote, gated = relay_in_process
    stats = relay.stats
    target = int(np.unique(labels)[1])
    lo, hi = tight_boxes(labels)[target]
    z, y, x = SHAPE
    # the pass reads its first block, then waits; the write lands meanwhile, through the
    # relay's own write path, and returns (it covers the whole channel, so no cell fetch of
    # the waiting pass can be joined by a later read)
    a, out_a = run_in_thread(lambda: stats.bounding_box(remote, target, 0))
    assert gated.entered.wait(60)
    new = labels.copy()
    new[z - 2:, y - 2:, x - 2:] = target
    relay.write(remote, Box((0, 0, 0), SHAPE), new, 0)
    # a request that begins after the write does not join the old pass: it sees the write
    b, out_b = run_in_thread(lambda: stats.bounding_box(remote, target, 0))
    b.join(60)
    assert "error" not in out_b
    assert out_b["value"] == Box(lo, (z, y, x))
    gated.release.set()
    a.join(60)
    assert "error" not in out_a
    # the old pass answered its own request (begun before the write) ...
    assert out_a["value"] in (Box(lo, hi), Box(lo, (z, y, x)))
    # ... but what it computed is not current: what is served now has the write
    assert stats.bounding_box(remote, target, 0) == Box(lo, (z, y, x))
    got = stats.get(remote, 0)
    expected = merge_stats([label_stats_kernel(voxgate.open(remote.url).read())])
    np.testing.assert_array_equal(got.ids, expected["id"])
    np.testing.assert_array_equal(got.count, expected["count"])
    assert stats.metrics()["computations"] == 2


def test_a_pass_during_a_write_is_not_served_after_it(
        relay_in_process: tuple[Relay, Any, Gated], labels: np.ndarray) -> None:
    relay, remote, gated = relay_in_process
    stats = relay.stats
    gated.release.set()  # reads do not wait here
    target = int(np.unique(labels)[1])
    lo, hi = tight_boxes(labels)[target]
    z, y, x = SHAPE
    new = labels.copy()
    new[z - 2:, y - 2:, x - 2:] = target
    gated.hold_writes = True
    w, out_w = run_in_thread(lambda: relay.write(remote, Box((0, 0, 0), SHAPE), new, 0))
    assert gated.writing.wait(60)
    # a whole pass runs while the write is under way (the store still holds the old data)
    assert stats.bounding_box(remote, target, 0) == Box(lo, hi)
    gated.release_write.set()
    w.join(60)
    assert "error" not in out_w
    # once the write has returned, what that pass computed is not served
    assert stats.bounding_box(remote, target, 0) == Box(lo, (z, y, x))
    assert stats.metrics()["computations"] == 2


def test_an_upstream_failure_in_a_pass_is_a_502_and_not_kept(
        relay_in_process: tuple[Relay, Any, Gated], labels: np.ndarray) -> None:
    from voxgate.relay.cache import UpstreamError

    relay, remote, gated = relay_in_process
    gated.release.set()
    inner_read = gated.read
    failures = [OSError("disk went away")]

    def read(box: Box, scale: int = 0) -> np.ndarray:
        if failures:
            raise failures.pop()
        return inner_read(box, scale)

    gated.read = read  # type: ignore[method-assign]
    target = int(np.unique(labels)[1])
    with pytest.raises(UpstreamError, match="disk went away"):
        relay.stats.bounding_box(remote, target, 0)
    # the failure is not kept: the next request computes again, and succeeds
    assert relay.stats.bounding_box(remote, target, 0) == Box(*tight_boxes(labels)[target])
    assert relay.stats.metrics()["computations"] == 2


def test_an_upstream_that_does_not_answer_is_a_504(
        relay_in_process: tuple[Relay, Any, Gated], labels: np.ndarray) -> None:
    from voxgate.relay.cache import UpstreamTimeoutError

    relay, remote, gated = relay_in_process
    remote.timeout = 0.2  # the relay's upstream_timeout; the first read waits for the test
    with pytest.raises(UpstreamTimeoutError, match="did not answer"):
        relay.stats.bounding_box(remote, int(np.unique(labels)[1]), 0)
    gated.release.set()
    remote.timeout = 30.0
    target = int(np.unique(labels)[1])
    assert relay.stats.bounding_box(remote, target, 0) == Box(*tight_boxes(labels)[target])
