"""The relay's server-side downsample job (bossDB's ``/v1/downsample/``) when level 0 is written
while it runs, and the client's rule for it.

In process, on the relay's own ``Relay`` with an upstream whose first read waits for the test:
the job reads level 0, a write lands, the job goes on with what it read.  Its pyramid then
lacks the write, so it must not end DOWNSAMPLED (bossDB would say DOWNSAMPLED; the relay says
NOT_DOWNSAMPLED), and while it runs a second POST is refused as bossDB refuses it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import VoxgateError
from voxgate.geometry import Box
from voxgate.relay.config import ChannelConfig, RelayConfig
from voxgate.relay.errors import BossHTTPError
from voxgate.relay.state import Relay

from ..services.numpy_reference import downsample_scales
from .test_label_stats_relay import Gated, wait_until

#: the module (voxgate.services.downsample is also the name of the function)
ds = importlib.import_module("voxgate.services.downsample")

SHAPE = (8, 45, 51)  # z, y, x: odd y and x
FACTORS = [(1, 2, 2), (1, 2, 2)]


@pytest.fixture
def job_relay(tmp_path: Path) -> Iterator[tuple[Relay, Any, Any, Gated, np.ndarray]]:
    url = f"zarr://{tmp_path / 'img.zarr'}"
    data = np.random.default_rng(3).integers(0, 256, SHAPE, dtype=np.uint8)
    vol = voxgate.create(url, shape=SHAPE, chunks=(4, 16, 16), dtype="uint8",
                         voxel_size=(40, 8, 8))
    vol[:] = data
    voxgate.downsample(url, 3, factors=FACTORS)  # a pyramid to start from
    cfg = RelayConfig()
    cfg.channels = [ChannelConfig("c", "e", "img", url)]
    relay = Relay(cfg)
    entry = relay.channel("c", "e", "img")
    remote = relay.remote(entry)
    gated = Gated(remote.upstream)
    remote.upstream = gated  # the relay's own CachedRemote, over a gate
    yield relay, entry, remote, gated, data
    gated.release.set()
    relay.cache.close()


def _levels(remote: Any) -> list[np.ndarray]:
    return [remote.read(remote.meta.scale(k).bounds, k) for k in (1, 2)]


def test_a_write_during_the_job_ends_it_not_downsampled(
        job_relay: tuple[Relay, Any, Any, Gated, np.ndarray]) -> None:
    relay, entry, remote, gated, data = job_relay
    assert relay.downsample_status(entry, remote) == "DOWNSAMPLED"  # the upstream's pyramid
    relay.start_downsample(entry, remote)
    assert gated.entered.wait(60)  # the job read level 0 and waits
    assert relay.downsample_status(entry, remote) == "IN_PROGRESS"
    new = data.copy()
    new[2:7, 10:41, 5:50] = 255 - new[2:7, 10:41, 5:50]
    relay.write(remote, Box((0, 0, 0), SHAPE), new, 0)
    # still running: bossDB's status, and a second job is refused as bossDB refuses it
    assert relay.downsample_status(entry, remote) == "IN_PROGRESS"
    with pytest.raises(BossHTTPError) as err:
        relay.start_downsample(entry, remote)
    assert err.value.status == 409
    gated.release.set()
    wait_until(lambda: relay.downsample_status(entry, remote) != "IN_PROGRESS", "the job ended")
    # the job downsampled what it had read: its levels lack the write, and the status says so
    stale = downsample_scales(data, FACTORS, "image")
    for got, want in zip(_levels(remote), stale, strict=True):
        np.testing.assert_array_equal(got, want)
    assert relay.downsample_status(entry, remote) == "NOT_DOWNSAMPLED"
    # the next job (nothing written meanwhile) makes the pyramid of the new data
    relay.start_downsample(entry, remote)
    wait_until(lambda: relay.downsample_status(entry, remote) != "IN_PROGRESS", "the job ended")
    assert relay.downsample_status(entry, remote) == "DOWNSAMPLED"
    for got, want in zip(_levels(remote), downsample_scales(new, FACTORS, "image"), strict=True):
        np.testing.assert_array_equal(got, want)
    # and a write after it ends makes it NOT_DOWNSAMPLED again, as in bossDB
    relay.write(remote, Box((0, 0, 0), (1, 1, 1)), np.zeros((1, 1, 1), np.uint8), 0)
    assert relay.downsample_status(entry, remote) == "NOT_DOWNSAMPLED"


def test_a_job_with_no_write_during_it_ends_downsampled(
        job_relay: tuple[Relay, Any, Any, Gated, np.ndarray]) -> None:
    relay, entry, remote, gated, data = job_relay
    # a write before the job: NOT_DOWNSAMPLED, then the job takes it in
    new = data // 2
    relay.write(remote, Box((0, 0, 0), SHAPE), new, 0)
    assert relay.downsample_status(entry, remote) == "NOT_DOWNSAMPLED"
    gated.release.set()
    relay.start_downsample(entry, remote)
    wait_until(lambda: relay.downsample_status(entry, remote) != "IN_PROGRESS", "the job ended")
    assert relay.downsample_status(entry, remote) == "DOWNSAMPLED"
    for got, want in zip(_levels(remote), downsample_scales(new, FACTORS, "image"), strict=True):
        np.testing.assert_array_equal(got, want)


class FakeProject:
    """A bossDB-dialect project service whose jobs end with the given statuses in turn."""

    def __init__(self, outcomes: list[str]) -> None:
        self.outcomes = outcomes
        self.started = 0

    def start_downsample(self, c: str, e: str, ch: str) -> None:
        self.started += 1

    def downsample_status(self, c: str, e: str, ch: str) -> dict[str, str]:
        return {"status": self.outcomes[self.started - 1]}


class FakeRemote:
    url = "bossdb://http://127.0.0.1:1/c/e/ch"
    collection, experiment, channel = "c", "e", "ch"

    def __init__(self, project: FakeProject) -> None:
        self.project = project


def test_the_client_starts_the_job_again_when_level_0_changed_while_it_ran() -> None:
    project = FakeProject(["NOT_DOWNSAMPLED", "DOWNSAMPLED"])
    ds._server_downsample(FakeRemote(project))
    assert project.started == 2
    always = FakeProject(["NOT_DOWNSAMPLED"] * ds.SERVER_ATTEMPTS)
    with pytest.raises(VoxgateError, match="written while it ran"):
        ds._server_downsample(FakeRemote(always))
    assert always.started == ds.SERVER_ATTEMPTS
    failed = FakeProject(["FAILED"])
    with pytest.raises(voxgate.errors.InvalidRequestError, match="failed"):
        ds._server_downsample(FakeRemote(failed))
    assert failed.started == 1


# -- a DVID labelmap upstream: DVID builds its own scales ----------------------------------------
class CountingDVID:
    """The DVID test server in this process (uvicorn on a thread), recording every request's
    (method, path, query) as the server receives it."""

    def __init__(self) -> None:
        import socket
        import threading

        import uvicorn

        from voxgate.testing.dvid import make_app

        app = make_app()
        self.seen: list[tuple[str, str, str]] = []

        async def counting(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.seen.append((scope["method"], scope["path"],
                                  scope["query_string"].decode()))
            await app(scope, receive, send)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(counting, host="127.0.0.1", port=port,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, "the DVID test server started")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_the_job_on_a_dvid_labelmap_leaves_dvids_scales_alone(tmp_path: Path) -> None:
    """DVID rebuilds a labelmap's scales 1..MaxDownresLevel on every scale-0 write (labelmap
    write.go PutLabels ends with downres.Mutation.Execute), by its own rule (labels/compressed.go
    downresArray: the most frequent non-zero label, the smaller on a tie).  The job recomputed
    them by voxgate's rule (zeros vote, the first label wins a tie) and POSTed them over DVID's
    (blocks?scale=k): wasted work, and a pyramid that DVID's next write mixes with its own.
    Now it writes nothing and the coarser scales stay DVID's."""
    from voxgate.remotes.dvid import DVIDRepo

    from ..services.numpy_reference import dvid_mode2

    dvid = CountingDVID()
    relay = None
    try:
        repo = DVIDRepo.create(dvid.url, alias="job")
        url = repo.url("seg")
        shape = (32, 32, 32)
        voxgate.create(url, shape=shape, chunks=(16, 16, 16), dtype="uint64",
                       voxel_size=(8, 8, 8), kind="segmentation", num_scales=3)
        rng = np.random.default_rng(7)
        # few labels and many zeros: the two rules disagree on most 2x2x2 cells
        labels = rng.choice(np.array([0, 0, 0, 5, 9], np.uint64), shape)
        cfg = RelayConfig()
        cfg.channels = [ChannelConfig("c", "e", "seg", url)]
        relay = Relay(cfg)
        entry = relay.channel("c", "e", "seg")
        remote = relay.remote(entry)
        relay.write(remote, Box((0, 0, 0), shape), labels, 0)  # DVID's raw POST: downres
        assert relay.downsample_status(entry, remote) == "NOT_DOWNSAMPLED"
        before = len(dvid.seen)
        relay.start_downsample(entry, remote)
        wait_until(lambda: relay.downsample_status(entry, remote) != "IN_PROGRESS",
                   "the job ended")
        assert relay.downsample_status(entry, remote) == "DOWNSAMPLED"
        writes = [r for r in dvid.seen[before:] if r[0] == "POST"]
        assert writes == [], f"the job wrote to DVID: {writes}"
        want = labels
        direct = voxgate.open(url)
        for k in (1, 2):
            want = dvid_mode2(want)
            np.testing.assert_array_equal(direct.at_scale(k).read(), want, err_msg=f"dvid {k}")
            got = remote.read(remote.meta.scale(k).bounds, k)  # through the relay's cache
            np.testing.assert_array_equal(got, want, err_msg=f"relay {k}")
    finally:
        if relay is not None:
            relay.cache.close()
        dvid.stop()


class _Catalog:
    """What relay/jobs.py uses of the relay's Catalog: its state, lock, save and refresh."""

    def __init__(self) -> None:
        import threading

        self.state: dict[str, Any] = {}
        self.lock = threading.RLock()
        self.saves = 0

    def save(self) -> None:
        self.saves += 1

    def refresh(self) -> None:
        pass


def test_a_jobs_end_records_nothing_once_its_channel_was_deleted_or_made_again() -> None:
    """The delete of a channel waits for its job's writes, not for the job's end, and clears
    the job's record; the job's end then wrote its status back under the channel's upstream
    URL, which a channel made again under the name has too: the new channel read the old job's
    FAILED (its store moved away by the delete) or wrote over its own job's IN_PROGRESS.  Fails
    on the code before, which recorded any job's end."""
    from voxgate.relay import jobs

    cat, url = _Catalog(), "zarr:///data/c/e/ch"
    jobs.set_job_status(cat, url, "IN_PROGRESS", job="old")
    assert jobs.job_status(cat, url) == "IN_PROGRESS"
    jobs.set_job_status(cat, url, None)  # the delete
    assert jobs.finish_job(cat, url, ok=False, job="old") == "FAILED"
    assert jobs.job_status(cat, url) is None  # nothing carried over to a channel made again
    jobs.set_job_status(cat, url, "IN_PROGRESS", job="new")  # the new channel's own job
    jobs.finish_job(cat, url, ok=True, job="old")
    assert jobs.job_status(cat, url) == "IN_PROGRESS"
    jobs.note_write(cat, url)  # (a write during it: marked on its record, which keeps its id)
    assert jobs.finish_job(cat, url, ok=True, job="new") == "NOT_DOWNSAMPLED"
    assert jobs.job_status(cat, url) == "NOT_DOWNSAMPLED"


def test_an_earlier_voxgates_in_progress_record_with_a_live_pid_is_failed() -> None:
    """Written before job ids and start times (an older voxgate killed mid-job); the upgraded
    relay runs with the same pid (here: this process's, alive)."""
    from voxgate.relay import jobs

    cat = _Catalog()
    url = "zarr:///data/c/e/ch"
    cat.state["downsample"] = {url: {"status": "IN_PROGRESS", "pid": os.getpid()}}
    assert jobs.job_status(cat, url) == "FAILED"
    # a job of this voxgate, running in this process, is still IN_PROGRESS
    jobs.set_job_status(cat, url, "IN_PROGRESS", job="j")
    assert jobs.job_status(cat, url) == "IN_PROGRESS"
