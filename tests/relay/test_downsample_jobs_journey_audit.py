"""Server-side downsample jobs (bossDB's ``/v1/downsample/``) walked with the real ``intern``
client against ``voxgate serve --workers 2``: channels made through the project service,
written with ``create_cutout``, downsampled by a POST (intern has no call for it: bossDB's
``Downsample`` view, bossspatialdb/views.py, answers GET/POST/DELETE), the status polled on
both workers, the levels read back with ``get_cutout(resolution=1/2)`` and compared with numpy's
rule (tests/services/numpy_reference.py: floor of the mean, a mode for annotations; levels on
the grid through 0; anisotropic experiments halve x and y only).

bossDB keeps a job's status on the channel row (bosscore/models.py Channel.DownsampleStatus);
the relay keeps it in its state file with the pid of the process running the job, and a job
whose process is gone is FAILED (relay/jobs.py).  A pid alone does not say that: a relay
killed during a job and started again (in a container its processes get the same pids every
time) found its own, or a sibling worker's, pid alive and answered IN_PROGRESS for ever,
refusing every new job with 409.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from intern.remote.boss import BossRemote
from intern.resource.boss.resource import (
    ChannelResource,
    CollectionResource,
    CoordinateFrameResource,
    ExperimentResource,
)

from ..services.numpy_reference import downsample_scales
from .conftest import RO, RW, RelayProcess, free_port, start_relay, tls

#: the coordinate frame, z, y, x: odd starts and an odd 23 x 45 x 37 extent
START = (1, 5, 3)
STOP = (24, 50, 40)
SHAPE = tuple(b - a for a, b in zip(START, STOP, strict=True))
ANISO = [(1, 2, 2), (1, 2, 2)]  # z, y, x per level: bossDB's anisotropic hierarchy
ISO = [(2, 2, 2), (2, 2, 2)]
#: a larger frame, for a job that runs long enough to be killed
BIG_STOP = (48, 700, 700)


@dataclass
class Made:
    relay: RelayProcess
    state: Path


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Made]:
    d = tmp_path_factory.mktemp("dsjobs")
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
workers = 2
state_path = "{d / 'state.json'}"
[cache]
memory_bytes = "32 MiB"
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write", "{RO}" = "read" }}
""")
    r = start_relay(cfg, free_port(), "--data-root", str(d / "data"))
    try:
        rmt = _intern(r)
        rmt.create_project(CollectionResource("dj"))
        rmt.create_project(CoordinateFrameResource(
            "dj_odd", "", START[2], STOP[2], START[1], STOP[1], START[0], STOP[0], 4, 4, 40))
        rmt.create_project(CoordinateFrameResource(
            "dj_big", "", 0, BIG_STOP[2], 0, BIG_STOP[1], 0, BIG_STOP[0], 4, 4, 4))
        rmt.create_project(ExperimentResource("aniso", "dj", "dj_odd",
                                              hierarchy_method="anisotropic",
                                              num_hierarchy_levels=3))
        rmt.create_project(ExperimentResource("iso", "dj", "dj_odd",
                                              hierarchy_method="isotropic",
                                              num_hierarchy_levels=3))
        rmt.create_project(ExperimentResource("big", "dj", "dj_big",
                                              hierarchy_method="isotropic",
                                              num_hierarchy_levels=3))
        yield Made(r, d / "state.json")
    finally:
        r.stop()


def _intern(relay: RelayProcess, token: str = RW) -> BossRemote:
    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": token})


def _big_channel(relay: RelayProcess, name: str, seed: int
                 ) -> tuple[BossRemote, ChannelResource, np.ndarray]:
    """A channel ``dj/big/<name>`` on the larger frame, written with random voxels (those)."""
    rmt = _intern(relay)
    rmt.create_project(ChannelResource(name, "dj", "big", type="image", datatype="uint8"))
    chan = rmt.get_channel(name, "dj", "big")
    data = np.random.default_rng(seed).integers(1, 256, BIG_STOP, dtype=np.uint8)
    rmt.create_cutout(chan, 0, *_ranges((0, 0, 0), BIG_STOP), data)
    return rmt, chan, data


def _ask(relay: RelayProcess, method: str, path: str, token: str | None = RW) -> httpx.Response:
    """One request on a connection of its own (so either worker may take it)."""
    headers = {"Authorization": f"Token {token}"} if token else {}
    with httpx.Client(base_url=relay.url, headers=headers, timeout=60,
                      verify=tls()) as client:
        return client.request(method, path)


def _every_worker(ask: Callable[[], httpx.Response]) -> dict[str, httpx.Response]:
    """``ask()`` until both workers answered: each worker's (last) answer."""
    seen: dict[str, httpx.Response] = {}
    deadline = time.monotonic() + 60
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered"
        res = ask()
        seen[res.headers["x-voxgate-worker"]] = res
    return seen


def _status(relay: RelayProcess, ch: str, exp: str) -> str:
    res = _ask(relay, "GET", f"/v1/downsample/dj/{exp}/{ch}/")
    assert res.status_code == 200, res.text
    return str(res.json()["status"])


def _statuses(relay: RelayProcess, ch: str, exp: str) -> set[str]:
    """The status every worker answers (a set of one when they agree)."""
    answers = _every_worker(lambda: _ask(relay, "GET", f"/v1/downsample/dj/{exp}/{ch}/"))
    return {str(r.json()["status"]) for r in answers.values()}


def _wait_ended(relay: RelayProcess, ch: str, exp: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        status = _status(relay, ch, exp)
        if status != "IN_PROGRESS":
            return status
        assert time.monotonic() < deadline, "the job never ended"
        time.sleep(0.05)


def _ranges(start: tuple[int, ...], stop: tuple[int, ...]) -> list[list[int]]:
    """intern's x, y, z ranges of a z, y, x box."""
    return [[start[2], stop[2]], [start[1], stop[1]], [start[0], stop[0]]]


def _level_box(k: int, factors: list[tuple[int, int, int]]
               ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The frame at level ``k`` (the grid through 0: floor of the start, ceil of the stop)."""
    start, stop = START, STOP
    for f in factors[:k]:
        start = tuple(a // g for a, g in zip(start, f, strict=True))
        stop = tuple(-(-b // g) for b, g in zip(stop, f, strict=True))
    return start, stop


def _check_levels(relay: RelayProcess, chan: ChannelResource, data: np.ndarray,
                  factors: list[tuple[int, int, int]], kind: str) -> None:
    want = downsample_scales(data, factors, kind, start=START)
    for k in (1, 2):
        start, stop = _level_box(k, factors)
        assert tuple(b - a for a, b in zip(start, stop, strict=True)) == want[k - 1].shape
        # a new client (a connection of its own) per read: both workers serve the level
        for _ in range(4):
            got = _intern(relay).get_cutout(chan, k, *_ranges(start, stop))
            np.testing.assert_array_equal(got, want[k - 1], err_msg=f"level {k}")


def _new_channel(relay: RelayProcess, name: str, exp: str, kind: str = "image",
                 dtype: str = "uint8") -> ChannelResource:
    rmt = _intern(relay)
    rmt.create_project(ChannelResource(name, "dj", exp, type=kind, datatype=dtype))
    return rmt.get_channel(name, "dj", exp)


def _data(seed: int, dtype: str = "uint8") -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "uint64":  # few labels, large ids: modes with ties and above 2**53
        return rng.choice(np.array([0, 3, 2**60 + 1, 2**60 + 7], np.uint64), SHAPE)
    return rng.integers(1, 256, SHAPE, dtype=np.uint8)


def _downsample(relay: RelayProcess, ch: str, exp: str) -> str:
    res = _ask(relay, "POST", f"/v1/downsample/dj/{exp}/{ch}/")
    assert res.status_code == 201, res.text
    return _wait_ended(relay, ch, exp)


# -- the journey: create, write, downsample, read the levels back -----------------------------
@pytest.mark.parametrize(("exp", "kind", "dtype", "factors"), [
    ("aniso", "image", "uint8", ANISO),
    ("iso", "annotation", "uint64", ISO),
])
def test_intern_writes_a_job_downsamples_and_intern_reads_the_levels(
        made: Made, exp: str, kind: str, dtype: str,
        factors: list[tuple[int, int, int]]) -> None:
    r = made.relay
    ch = f"j{kind[:3]}"
    chan = _new_channel(r, ch, exp, kind, dtype)
    # level 1 and 2 read (zeros) and cached by both workers before anything is written
    _check_levels(r, chan, np.zeros(SHAPE, np.dtype(dtype)), factors, "image")
    data = _data(5, dtype)
    _intern(r).create_cutout(chan, 0, *_ranges(START, STOP), data)
    assert _statuses(r, ch, exp) == {"NOT_DOWNSAMPLED"}
    assert _intern(r).get_channel(ch, "dj", exp).downsample_status == "NOT_DOWNSAMPLED"
    assert _downsample(r, ch, exp) == "DOWNSAMPLED"
    assert _statuses(r, ch, exp) == {"DOWNSAMPLED"}
    assert _intern(r).get_channel(ch, "dj", exp).downsample_status == "DOWNSAMPLED"
    _check_levels(r, chan, data, factors, "image" if kind == "image" else "segmentation")
    np.testing.assert_array_equal(_intern(r).get_cutout(chan, 0, *_ranges(START, STOP)), data)


def test_a_write_racing_the_job_never_leaves_it_downsampled_over_stale_levels(
        made: Made) -> None:
    """Whichever lands first, the job's end says what its levels hold: DOWNSAMPLED only when
    they include the write, else NOT_DOWNSAMPLED, and the next job includes it."""
    r = made.relay
    chan = _new_channel(r, "race", "aniso")
    data = _data(11)
    _intern(r).create_cutout(chan, 0, *_ranges(START, STOP), data)
    for round_ in range(3):
        new = (255 - data) if round_ % 2 == 0 else _data(20 + round_)
        res = _ask(r, "POST", "/v1/downsample/dj/aniso/race/")
        assert res.status_code == 201, res.text
        writer = threading.Thread(target=lambda a=new: _intern(r).create_cutout(
            chan, 0, *_ranges(START, STOP), a))
        writer.start()
        # a second POST while it may still run: bossDB's 409 / 2006 when it does
        again = _ask(r, "POST", "/v1/downsample/dj/aniso/race/")
        assert again.status_code in (201, 409), again.text
        if again.status_code == 409:
            assert again.json()["code"] == 2006
        writer.join(60)
        ended = _wait_ended(r, "race", "aniso")
        if ended == "DOWNSAMPLED":
            _check_levels(r, chan, new, ANISO, "image")
        else:
            assert ended == "NOT_DOWNSAMPLED"
            assert _downsample(r, "race", "aniso") == "DOWNSAMPLED"
            _check_levels(r, chan, new, ANISO, "image")
        data = new


# -- the job's process gone ----------------------------------------------------------------------
def _edit_state(path: Path, change: Callable[[dict[str, object]], None]) -> None:
    """Change the relay's state file as a relay process does (its lock, then a save)."""
    from voxgate.relay.statefile import StateFile

    state = StateFile(path, {})
    with state.transaction():
        change(state.data)
        state.save()


def _job_key(path: Path, exp: str, ch: str) -> str:
    """The key of the channel's job in the state file: its upstream URL."""
    from voxgate.relay.statefile import StateFile

    return str(StateFile(path, {}).data["local_channels"][f"dj/{exp}/{ch}"]["url"])


def _worker_pids(relay: RelayProcess) -> set[int]:
    return {int(pid) for pid in _every_worker(lambda: _ask(relay, "GET", "/ping/"))}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_an_in_progress_record_of_an_earlier_process_with_a_reused_pid_is_failed(
        made: Made) -> None:
    """A relay killed during a job and started again, whose processes got the pids of the
    earlier ones (as a container's do): the record's pid is alive, but it is another process
    (started later than the job).  The job is FAILED there and can be started again; the relay
    answered IN_PROGRESS for ever, and 409 to every POST."""
    r = made.relay
    chan = _new_channel(r, "reused", "aniso")
    data = _data(31)
    _intern(r).create_cutout(chan, 0, *_ranges(START, STOP), data)
    assert _downsample(r, "reused", "aniso") == "DOWNSAMPLED"
    key = _job_key(made.state, "aniso", "reused")
    for pid in sorted(_worker_pids(r)):
        def stale(doc: dict[str, object], pid: int = pid) -> None:
            jobs = doc["downsample"]
            assert isinstance(jobs, dict)
            # as an earlier relay process with this pid wrote it (started at boot + 1 tick)
            jobs[key] = {"status": "IN_PROGRESS", "pid": pid, "started": "1"}

        _edit_state(made.state, stale)
        assert _statuses(r, "reused", "aniso") == {"FAILED"}
        assert _intern(r).get_channel("reused", "dj", "aniso").downsample_status == "FAILED"
        assert _downsample(r, "reused", "aniso") == "DOWNSAMPLED"
        _check_levels(r, chan, data, ANISO, "image")


def test_a_job_whose_worker_is_killed_is_failed_and_starts_again(made: Made) -> None:
    r = made.relay
    rmt, chan, data = _big_channel(r, "killed", 41)
    killed = None
    for _ in range(5):  # (a job that ended before the kill landed is tried again)
        res = _ask(r, "POST", "/v1/downsample/dj/big/killed/")
        assert res.status_code == 201, res.text
        pid = int(res.headers["x-voxgate-worker"])
        os.kill(pid, signal.SIGKILL)  # the worker running the job (a child of this relay)
        status = _wait_ended(r, "killed", "big")
        if status == "FAILED":
            killed = pid
            break
        assert status == "DOWNSAMPLED", status
        rmt.create_cutout(chan, 0, [0, 1], [0, 1], [0, 1], np.ones((1, 1, 1), np.uint8))
        data[0, 0, 0] = 1
    assert killed is not None, "the job always ended before its worker was killed"
    # every worker says so, the one started in its place too
    deadline = time.monotonic() + 60
    while killed in _worker_pids(r) or len(_worker_pids(r)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _statuses(r, "killed", "big") == {"FAILED"}
    assert _downsample(r, "killed", "big") == "DOWNSAMPLED"  # restartable
    want = downsample_scales(data[:, :64, :64], ISO, "image")
    got = _intern(r).get_cutout(chan, 1, [0, 32], [0, 32], [0, 24])
    np.testing.assert_array_equal(got, want[0])


# -- a channel deleted and created again under its name ------------------------------------------
def test_a_channel_made_again_has_neither_the_old_status_nor_the_old_pyramid(made: Made) -> None:
    r = made.relay
    chan = _new_channel(r, "again", "aniso")
    data = _data(51)
    _intern(r).create_cutout(chan, 0, *_ranges(START, STOP), data)
    assert _downsample(r, "again", "aniso") == "DOWNSAMPLED"
    _check_levels(r, chan, data, ANISO, "image")
    # the old channel ends FAILED (its job's process gone)
    key = _job_key(made.state, "aniso", "again")

    def failed(doc: dict[str, object]) -> None:
        jobs = doc["downsample"]
        assert isinstance(jobs, dict)
        jobs[key] = {"status": "IN_PROGRESS", "pid": 2**22 + 1}  # (no such process)

    _edit_state(made.state, failed)
    assert _statuses(r, "again", "aniso") == {"FAILED"}
    _intern(r).delete_project(ChannelResource("again", "dj", "aniso"))
    chan = _new_channel(r, "again", "aniso")
    assert _statuses(r, "again", "aniso") != {"FAILED"}
    zeros = np.zeros(SHAPE, np.uint8)
    _check_levels(r, chan, zeros, ANISO, "image")  # no old pyramid, on either worker
    _intern(r).create_cutout(chan, 0, *_ranges(START, STOP), 255 - data)
    assert _statuses(r, "again", "aniso") == {"NOT_DOWNSAMPLED"}
    assert _downsample(r, "again", "aniso") == "DOWNSAMPLED"
    _check_levels(r, chan, 255 - data, ANISO, "image")


def test_the_route_as_bossdb_answers_it_to_intern_users(made: Made) -> None:
    """Both spellings of the URL (bossDB's urls_downsample.py: ``/?$``) on every check: the
    read token reads the status but starts no job (403 / 3001), a bad or missing token is 401
    (tests/relay/test_route_sweep.py has the slash-ended URL's 404, 405 and 409s)."""
    r = made.relay
    _new_channel(r, "route", "aniso")
    for path in ("/v1/downsample/dj/aniso/route", "/v1/downsample/dj/aniso/route/"):
        assert _ask(r, "GET", path, RO).status_code == 200
        res = _ask(r, "POST", path, RO)
        assert res.status_code == 403 and res.json()["code"] == 3001, res.text
        assert _ask(r, "GET", path, "wrong").status_code == 401
        assert _ask(r, "GET", path, None).status_code == 401


def test_a_channel_deleted_while_its_job_runs_and_made_again_starts_clean(made: Made) -> None:
    """The delete waits for the job's writes (no write lands in the path the new channel
    uses); the new channel has no status of the old job (its end, NOT_DOWNSAMPLED after the
    write during it, is not the new one's) and reads zeros at every level."""
    r = made.relay
    rmt, chan, _ = _big_channel(r, "gone", 61)
    res = _ask(r, "POST", "/v1/downsample/dj/big/gone/")
    assert res.status_code == 201, res.text
    rmt.create_cutout(chan, 0, [0, 1], [0, 1], [0, 1], np.ones((1, 1, 1), np.uint8))
    rmt.delete_project(ChannelResource("gone", "dj", "big"))
    rmt.create_project(ChannelResource("gone", "dj", "big", type="image", datatype="uint8"))
    chan = rmt.get_channel("gone", "dj", "big")
    time.sleep(0.5)  # (anything the old job still does, done)
    # a new channel's (NOT_DOWNSAMPLED, as bossDB's), its record the creation's, not the old
    # job's end (which records its pid, and its job's id)
    assert _statuses(r, "gone", "big") == {"NOT_DOWNSAMPLED"}
    from voxgate.relay.statefile import StateFile

    record = StateFile(made.state, {}).data["downsample"][_job_key(made.state, "big", "gone")]
    assert record == {"status": "NOT_DOWNSAMPLED"}, record
    for k, stop in ((1, (24, 350, 350)), (2, (12, 175, 175))):
        got = _intern(r).get_cutout(chan, k, *_ranges((0, 0, 0), stop))
        assert not got.any(), f"level {k} holds the old channel's data"
