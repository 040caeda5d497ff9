"""voxgate.compat.intern against the real intern 1.4.2, second audit: the errors voxgate raises
before any request, where intern sends the request and bossDB refuses it (intern's
``requests.HTTPError``); the mixed error classes through pickle (multiprocessing, dask); and the
relay's object services (ids, bounding boxes, reserve) on a signed segmentation, whose ids its
cutouts serve wrapped to uint64."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import intern.remote.boss as real_boss
import intern.resource.boss.resource as real_res
import numpy as np
import pytest
import requests

import voxgate
from voxgate.compat import intern as compat
from voxgate.errors import DtypeError, InvalidRequestError, RemoteNotFoundError, VoxgateError

from ..relay.conftest import (  # noqa: F401
    RW,
    RelayProcess,
    Upstreams,
    free_port,
    one_channel_config,
    relay,
    start_relay,
    start_rw_relay,
    upstreams,
)


def _config(relay: RelayProcess) -> dict[str, str]:  # noqa: F811
    return {"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RW}


def _raised(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


#: calls intern sends and bossDB refuses (intern: HTTPError), which voxgate refuses before
#: sending; the voxgate error class each must still be
SERVER_REFUSED: dict[str, tuple[Callable[[Any], Any], type[VoxgateError]]] = {
    "cutout at a resolution the channel lacks": (
        lambda r: r.get_cutout(r.get_channel("raw", "lab", "em"), 5, [0, 10], [0, 10], [0, 1]),
        InvalidRequestError),
    "cutout at a negative resolution": (
        lambda r: r.get_cutout(r.get_channel("raw", "lab", "em"), -1, [0, 10], [0, 10], [0, 1]),
        InvalidRequestError),
    "cutout at a time sample the channel lacks": (
        lambda r: r.get_cutout(r.get_channel("raw", "lab", "em"), 0, [0, 5], [0, 5], [0, 1],
                               time_range=[3, 4]), InvalidRequestError),
    "ids at a resolution the channel lacks": (
        lambda r: r.get_ids_in_region(r.get_channel("seg", "lab", "em"), 7, [0, 5], [0, 5],
                                      [0, 1]), InvalidRequestError),
    "bounding box at a resolution the channel lacks": (
        lambda r: r.get_bounding_box(r.get_channel("seg", "lab", "em"), 7, 1),
        InvalidRequestError),
    "reserve no id": (lambda r: r.reserve_ids(r.get_channel("seg", "lab", "em"), 0),
                      InvalidRequestError),
    "reserve -1 ids": (lambda r: r.reserve_ids(r.get_channel("seg", "lab", "em"), -1),
                       InvalidRequestError),
    "write data of the wrong shape": (
        lambda r: r.create_cutout(r.get_channel("seg", "lab", "em"), 0, [0, 5], [0, 5], [0, 1],
                                  np.ones((1, 5, 4), np.uint64)), InvalidRequestError),
    "write at a resolution the channel lacks": (
        lambda r: r.create_cutout(r.get_channel("seg", "lab", "em"), 3, [0, 5], [0, 5], [0, 1],
                                  np.ones((1, 5, 5), np.uint64)), InvalidRequestError),
    "write uint16 data to a uint8 channel": (
        lambda r: r.create_cutout(r.get_channel("raw", "lab", "em"), 0, [0, 5], [0, 5], [0, 1],
                                  np.ones((1, 5, 5), np.uint16)), DtypeError),
    "a channel name bossDB's URLs do not match": (
        lambda r: r.get_channel("bad name", "lab", "em"), InvalidRequestError),
}


@pytest.mark.parametrize("case", list(SERVER_REFUSED))
def test_refused_before_sending_is_interns_http_error(relay: RelayProcess,  # noqa: F811
                                                      case: str) -> None:
    cfg = _config(relay)
    call, kind = SERVER_REFUSED[case]
    theirs = _raised(lambda: call(real_boss.BossRemote(cfg)))
    assert isinstance(theirs, requests.HTTPError), theirs  # (what intern's script catches)
    ours = _raised(lambda: call(compat.BossRemote(cfg)))
    assert isinstance(ours, requests.HTTPError), repr(ours)
    assert ours.response is not None
    assert ours.response.status_code == theirs.response.status_code  # type: ignore[union-attr]
    assert isinstance(ours, kind)  # still voxgate's error, with voxgate's words
    assert "HTTP" not in str(ours)  # refused here: no server answer in its message


@pytest.mark.parametrize("case", ["range", "bb_type"])
def test_interns_own_checks_raise_its_runtime_error(relay: RelayProcess,  # noqa: F811
                                                    case: str) -> None:
    cfg = _config(relay)

    def call(r: Any) -> Any:
        if case == "range":  # start after stop
            return r.get_ids_in_region(r.get_channel("seg", "lab", "em"), 0, [5, 0], [0, 5],
                                       [0, 1])
        return r.get_bounding_box(r.get_channel("seg", "lab", "em"), 0, 1, "weird")

    theirs = _raised(lambda: call(real_boss.BossRemote(cfg)))
    ours = _raised(lambda: call(compat.BossRemote(cfg)))
    assert type(theirs) is RuntimeError
    # (a bb_type voxgate did not know was read as "loose" and answered)
    assert isinstance(ours, RuntimeError) and isinstance(ours, InvalidRequestError), repr(ours)
    assert not isinstance(ours, requests.HTTPError)


def test_resolution_is_boss_resolution_above_a_base(tmp_path: Path) -> None:
    # intern's resolution is bossDB's (base_resolution + level): the layer read level
    # ``resolution`` instead, two above the base for resolution 1 of a channel based at 1
    r = start_rw_relay(tmp_path)
    try:
        cfg = _config(r)
        theirs, ours = real_boss.BossRemote(cfg), compat.BossRemote(cfg)
        theirs.create_project(real_res.CollectionResource("c"))
        theirs.create_project(real_res.CoordinateFrameResource("f", "", 0, 64, 0, 64, 0, 8, 4,
                                                               4, 40))
        theirs.create_project(real_res.ExperimentResource("e", "c", "f",
                                                          num_hierarchy_levels=3))
        theirs.create_project(real_res.ChannelResource("s", "c", "e", "image", datatype="uint8",
                                                       base_resolution=1))
        data = (np.arange(8 * 32 * 32) % 251 + 1).astype(np.uint8).reshape(8, 32, 32)
        ch = theirs.get_channel("s", "c", "e")
        theirs.create_cutout(ch, 1, [0, 32], [0, 32], [0, 8], data)
        np.testing.assert_array_equal(theirs.get_cutout(ch, 1, [0, 32], [0, 32], [0, 8]), data)
        ch2 = ours.get_channel("s", "c", "e")
        np.testing.assert_array_equal(ours.get_cutout(ch2, 1, [0, 32], [0, 32], [0, 8]), data)
        ours.create_cutout(ch2, 1, [0, 4], [0, 4], [0, 1], np.full((1, 4, 4), 7, np.uint8))
        assert (theirs.get_cutout(ch, 1, [0, 4], [0, 4], [0, 1]) == 7).all()
        for rmt, chan in ((theirs, ch), (ours, ch2)):  # below the base: bossDB's 400
            exc = _raised(lambda: rmt.get_cutout(chan, 0, [0, 4], [0, 4], [0, 1]))  # noqa: B023
            assert isinstance(exc, requests.HTTPError) and exc.response is not None
            assert exc.response.status_code == 400
    finally:
        r.stop()


def _errors(relay: RelayProcess) -> dict[str, BaseException]:  # noqa: F811
    """Mixed errors of each kind, raised by the layer against the relay."""
    rmt = compat.BossRemote(_config(relay))
    return {
        "answered 404": _raised(lambda: rmt.get_channel("nope", "lab", "em")),
        "answered 400": _raised(lambda: rmt.get_cutout("bossdb://lab/em/raw", 0, [0, 300],
                                                       [0, 10], [0, 1])),
        "refused here, 400": _raised(lambda: rmt.get_cutout("bossdb://lab/em/raw", 5, [0, 1],
                                                            [0, 1], [0, 1])),
        "annotation only": _raised(lambda: rmt.reserve_ids("bossdb://lab/em/raw", 2)),
        "range": _raised(lambda: rmt.get_cutout("bossdb://lab/em/raw", 0, [3, 1], [0, 1],
                                                [0, 1])),
    }


def test_mixed_errors_pickle(relay: RelayProcess) -> None:  # noqa: F811
    errors = _errors(relay)
    assert isinstance(errors["answered 404"], RemoteNotFoundError)
    for name, exc in errors.items():
        assert type(exc) not in (InvalidRequestError, RemoteNotFoundError), name  # mixed ones
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc), name
        assert str(back) == str(exc) and back.args == exc.args, name
        status = getattr(exc, "response", None)
        if status is not None:
            assert back.response.status_code == exc.response.status_code, name
    # in another process, where the mixed classes were never made: the multiprocessing and
    # dask case (an error raised in a worker, re-raised in the client)
    code = """
import pickle, sys, requests
import voxgate.errors as E
for exc in pickle.loads(sys.stdin.buffer.read()):
    status = exc.response.status_code if isinstance(exc, requests.HTTPError) else None
    kinds = [k.__name__ for k in (E.VoxgateError, E.InvalidRequestError, E.RemoteNotFoundError,
             requests.HTTPError, TypeError, RuntimeError) if isinstance(exc, k)]
    print(type(exc).__name__, status, ",".join(kinds), str(exc)[:40], sep="|")
"""
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(list(errors.values())),
                         capture_output=True, check=True).stdout.decode().splitlines()
    expected = {
        "answered 404": ("RemoteNotFoundError", "404",
                         "VoxgateError,RemoteNotFoundError,HTTPError"),
        "answered 400": ("InvalidRequestError", "400",
                         "VoxgateError,InvalidRequestError,HTTPError"),
        "refused here, 400": ("InvalidRequestError", "400",
                              "VoxgateError,InvalidRequestError,HTTPError"),
        # (NotImplementedError, its builtin, is a RuntimeError)
        "annotation only": ("CapabilityNotSupportedError", "None",
                            "VoxgateError,TypeError,RuntimeError"),
        "range": ("InvalidRequestError", "None", "VoxgateError,InvalidRequestError,RuntimeError"),
    }
    for (name, exc), line in zip(errors.items(), out, strict=True):
        assert line.split("|") == [*expected[name], str(exc)[:40]], name


# -- the relay's object services on a signed segmentation -----------------------------------------

SIGNED_SHAPE = (20, 40, 50)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess,
                                                                        np.ndarray]]:
    d = tmp_path_factory.mktemp("signed")
    lab = np.zeros(SIGNED_SHAPE, np.int64)
    lab[:10, :20, :25] = -7
    lab[10:, 20:, 25:] = 5
    lab[3:5, 30:35, 5:9] = -(2**40)
    lab[15, 1, 1] = np.iinfo(np.int64).min
    lab[12:14, 2:6, 40:45] = 9
    seg = voxgate.create(f"zarr://{d}/seg.zarr", shape=SIGNED_SHAPE, chunks=(8, 16, 16),
                         dtype="int64", voxel_size=(40, 8, 8), kind="segmentation")
    seg[:] = lab
    r = start_relay(one_channel_config(d, f"zarr://{d}/seg.zarr"), free_port())
    yield r, lab
    r.stop()


def _wrapped_ids(part: np.ndarray) -> list[int]:
    u = np.unique(part.astype(np.uint64))
    return [int(i) for i in u if i != 0]


def test_ids_of_a_signed_segmentation_are_its_cutouts(
        signed: tuple[RelayProcess, np.ndarray]) -> None:
    r, lab = signed
    cfg = _config(r)
    for rmt in (real_boss.BossRemote(cfg), compat.BossRemote(cfg)):
        ch = rmt.get_channel("seg", "lab", "em")
        whole = rmt.get_cutout(ch, 0, [0, 50], [0, 40], [0, 20])
        assert whole.dtype == np.uint64
        np.testing.assert_array_equal(whole, lab.astype(np.uint64))  # (wrapped: -7 is 2**64-7)
        expected = _wrapped_ids(whole)
        assert 2**64 - 7 in expected and 2**63 in expected
        # the whole channel (the relay's label statistics pass refused negative ids) and a
        # region (its ids came sorted as signed values), both as bossDB's: uint64, ascending
        assert rmt.get_ids_in_region(ch, 0, [0, 50], [0, 40], [0, 20]) == expected
        part = rmt.get_cutout(ch, 0, [0, 30], [0, 36], [2, 16])
        assert rmt.get_ids_in_region(ch, 0, [0, 30], [0, 36], [2, 16]) == _wrapped_ids(part)
    with r.client() as http:  # bossDB's format: decimal strings
        body = http.get("/v1/ids/lab/em/seg/0/0:50/0:40/0:20/").json()
    assert body == {"ids": [str(i) for i in _wrapped_ids(lab)]}


def test_bounding_boxes_and_reserve_of_a_signed_segmentation(
        signed: tuple[RelayProcess, np.ndarray]) -> None:
    r, lab = signed
    rmt = real_boss.BossRemote(_config(r))
    ch = rmt.get_channel("seg", "lab", "em")
    wrapped = lab.astype(np.uint64)
    for ident in _wrapped_ids(lab):
        zs, ys, xs = np.nonzero(wrapped == np.uint64(ident))
        tight = rmt.get_bounding_box(ch, 0, ident, "tight")
        assert tight == {"x_range": [int(xs.min()), int(xs.max()) + 1],
                         "y_range": [int(ys.min()), int(ys.max()) + 1],
                         "z_range": [int(zs.min()), int(zs.max()) + 1], "t_range": [0, 1]}, ident
        loose = rmt.get_bounding_box(ch, 0, ident, "loose")
        assert loose["x_range"] == [0, 512] and loose["z_range"][0] == int(zs.min()) // 16 * 16
    with pytest.raises(requests.HTTPError) as info:  # no voxel holds it
        rmt.get_bounding_box(ch, 0, 2**64 - 8, "tight")
    assert info.value.response.status_code == 404
    # reserved ids collide with none in the channel, the wrapped negative ones included
    start = rmt.reserve_ids(ch, 4)
    assert not set(range(start, start + 4)) & set(_wrapped_ids(lab))
    assert start > 9
