"""voxgate.compat.intern against the real intern 1.4.2, call by call: the names and order of
arguments, calls intern has that the layer lacked (``get_extents``, ``array(create_new=True)``,
``bossdb://c/e/ch/RES``, the array's attributes), and the errors an intern script catches."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import intern.remote.boss as real_boss
import intern.resource.boss.resource as real_res
import numpy as np
import pytest
import requests
from intern.convenience.array import _BossDBVolumeProvider
from intern.convenience.array import array as real_array

from voxgate.compat import intern as compat

from ..relay.conftest import (  # noqa: F401
    RW,
    RelayProcess,
    Upstreams,
    relay,
    start_rw_relay,
    upstreams,
)

#: BossRemote methods an intern script calls, whose arguments must be intern's
METHODS = ["__init__", "get_cutout", "create_cutout", "get_channel", "get_experiment",
           "get_coordinate_frame", "get_project", "get_extents", "list_collections",
           "list_experiments", "list_channels", "list_coordinate_frames", "create_project",
           "delete_project", "get_ids_in_region", "get_bounding_box", "reserve_ids",
           "get_neuroglancer_link", "list_metadata", "get_metadata", "create_metadata",
           "update_metadata", "delete_metadata"]


def _names(fn: Callable[..., Any]) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY)]


def _config(relay: RelayProcess) -> dict[str, str]:  # noqa: F811
    return {"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RW}


def _theirs_array(channel: str, cfg: dict[str, str], **kw: Any) -> Any:
    # intern's array with its provider given: it contacts only this relay
    return real_array(channel, volume_provider=_BossDBVolumeProvider(real_boss.BossRemote(cfg)),
                      **kw)


@pytest.mark.parametrize("method", METHODS)
def test_boss_remote_takes_interns_arguments(method: str) -> None:
    # positional and keyword calls of intern's methods (get_experiment(coll_name=...),
    # BossRemote(cfg_file_or_dict=...)) reach the same parameters
    assert _names(getattr(compat.BossRemote, method)) == \
        _names(getattr(real_boss.BossRemote, method))


def test_array_takes_interns_arguments_in_order() -> None:
    theirs = _names(real_array.__init__)[1:]
    assert _names(compat.array)[: len(theirs)] == theirs


def test_extents_and_keyword_calls_answer_as_intern(relay: RelayProcess) -> None:  # noqa: F811
    cfg = _config(relay)
    theirs, ours = real_boss.BossRemote(cfg_file_or_dict=cfg), compat.BossRemote(
        cfg_file_or_dict=cfg)
    for rmt in (theirs, ours):
        exp = rmt.get_experiment(coll_name="lab", exp_name="em")
        assert exp.name == "em" and exp.coll_name == "lab"
    t_ext = theirs.get_extents(theirs.get_experiment("lab", "em"))
    o_ext = ours.get_extents(ours.get_experiment("lab", "em"))
    assert o_ext == t_ext == [[0, 260], [0, 300], [0, 40]]
    # intern's own ExperimentResource works too (get_extents reads only its coord_frame)
    assert ours.get_extents(theirs.get_experiment("lab", "em")) == t_ext


def _caught(call: Callable[[Any, Any], Any], rmt: Any, module: Any) -> tuple[str, int | None]:
    """What an intern script's ``except`` clauses see of ``call(rmt, module)``."""
    try:
        call(rmt, module)
    except requests.HTTPError as exc:
        return "HTTPError", exc.response.status_code
    except TypeError:
        return "TypeError", None
    return "nothing", None


def test_errors_are_caught_by_interns_except_clauses(relay: RelayProcess,  # noqa: F811
                                                     upstreams: Upstreams) -> None:  # noqa: F811
    cfg = _config(relay)
    known = int(upstreams.labels[0, 0, 0])
    calls: dict[str, Callable[[Any, Any], Any]] = {
        "missing channel": lambda r, m: r.get_channel("nope", "lab", "em"),
        "missing collection": lambda r, m: r.get_project(m.CollectionResource("nope")),
        "missing experiment": lambda r, m: r.get_experiment("lab", "nope"),
        "collection exists": lambda r, m: r.create_project(m.CollectionResource("lab")),
        "cutout outside the frame": lambda r, m: r.get_cutout(
            r.get_channel("raw", "lab", "em"), 0, [0, 300], [0, 10], [0, 1]),
        "no such id": lambda r, m: r.get_bounding_box(r.get_channel("seg", "lab", "em"), 0,
                                                      12345, "tight"),
        "ids of an image": lambda r, m: r.get_ids_in_region(
            r.get_channel("raw", "lab", "em"), 0, [0, 5], [0, 5], [0, 1]),
        "box in an image": lambda r, m: r.get_bounding_box(r.get_channel("raw", "lab", "em"),
                                                           0, known),
        "reserve in an image": lambda r, m: r.reserve_ids(r.get_channel("raw", "lab", "em"), 2),
        "bad token": lambda r, m: type(r)({**cfg, "token": "wrong"}).list_collections(),
    }
    theirs, ours = real_boss.BossRemote(cfg), compat.BossRemote(cfg)
    for name, call in calls.items():
        expected = _caught(call, theirs, real_res)
        assert expected[0] != "nothing", name
        assert _caught(call, ours, compat) == expected, name
    # still voxgate's errors, with voxgate's messages
    with pytest.raises(compat.InvalidRequestError, match="HTTP 400") as info:
        ours.get_cutout("bossdb://lab/em/raw", 0, [0, 300], [0, 10], [0, 1])
    assert isinstance(info.value, requests.HTTPError)
    with pytest.raises(FileNotFoundError):
        ours.get_channel("nope", "lab", "em")
    with pytest.raises(NotImplementedError, match="annotation channel"):
        ours.reserve_ids("bossdb://lab/em/raw", 2)
    # a missing channel given to array(): intern's HTTPError 404
    with pytest.raises(requests.HTTPError) as t_info:
        _theirs_array("bossdb://lab/em/nope", cfg)
    with pytest.raises(requests.HTTPError) as o_info:
        compat.array("bossdb://lab/em/nope", boss_config=cfg)
    assert o_info.value.response.status_code == t_info.value.response.status_code == 404


def test_array_attributes_and_resolution_in_the_uri(relay: RelayProcess,  # noqa: F811
                                                    upstreams: Upstreams) -> None:  # noqa: F811
    cfg = _config(relay)
    for url, order in (("bossdb://lab/em/raw", "ZYX"), ("bossdb://lab/em/raw/1", "ZYX"),
                       ("bossdb://lab/em/seg", "XYZ")):
        theirs = _theirs_array(url, cfg, axis_order=order)
        ours = compat.array(url, boss_config=cfg, axis_order=order)
        for attr in ("shape", "resolution", "axis_order", "collection_name", "experiment_name",
                     "channel_name", "available_resolutions", "downsample_status"):
            assert getattr(ours, attr) == getattr(theirs, attr), (url, attr)
        assert ours.dtype == theirs.dtype
    # the resolution in the URI wins over the argument, as in intern
    res1 = compat.array("bossdb://lab/em/raw/1", 0, boss_config=cfg)
    assert res1.resolution == 1 and res1.shape == upstreams.image1.shape
    np.testing.assert_array_equal(res1[3:5, 10:20, 7:30], upstreams.image1[3:5, 10:20, 7:30])
    with pytest.raises(compat.InvalidRequestError, match="volume_provider"):
        compat.array("bossdb://lab/em/raw", 0, _BossDBVolumeProvider(real_boss.BossRemote(cfg)))


@pytest.fixture
def rw_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    r = start_rw_relay(tmp_path)
    yield r
    r.stop()


def test_array_create_new_makes_what_intern_makes(rw_relay: RelayProcess) -> None:
    cfg = _config(rw_relay)
    kw: dict[str, Any] = dict(create_new=True, dtype="uint64", extents=(6, 20, 30),
                              voxel_size=(40, 4, 4), voxel_unit="nanometers",
                              downsample_levels=3, description="made here")
    theirs = _theirs_array("bossdb://theirs/exp/seg", cfg, **kw)
    ours = compat.array("bossdb://ours/exp/seg", boss_config=cfg, **kw)
    assert ours.shape == theirs.shape == (6, 20, 30)
    assert ours.available_resolutions == theirs.available_resolutions == [0, 1, 2]
    rmt = real_boss.BossRemote(cfg)

    def records(coll: str) -> list[dict[str, Any]]:
        exp = rmt.get_experiment(coll, "exp")
        found = [exp.raw, rmt.get_coordinate_frame(exp.coord_frame).raw,
                 rmt.get_channel("seg", coll, "exp").raw]
        return [{k: v for k, v in d.items() if k not in ("name", "collection", "coord_frame")}
                for d in found]

    assert records("ours") == records("theirs")
    assert rmt.get_experiment("ours", "exp").coord_frame == "CF_ours_exp"  # intern's name
    # an image channel: uint16 is an image in intern's rule; an existing one is left alone
    img = compat.array("bossdb://ours/exp/img", boss_config=cfg, **{**kw, "dtype": "uint16"})
    assert rmt.get_channel("img", "ours", "exp").type == "image"
    data = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4) + 1
    img[1:3, 2:5, 3:7] = data
    again = compat.array("bossdb://ours/exp/img", boss_config=cfg, **{**kw, "dtype": "uint16"})
    expected = np.zeros((6, 20, 30), np.uint16)
    expected[1:3, 2:5, 3:7] = data
    np.testing.assert_array_equal(again[:, :, :], expected)
    np.testing.assert_array_equal(rmt.get_cutout(rmt.get_channel("img", "ours", "exp"), 0,
                                                 [0, 30], [0, 20], [0, 6]), expected)
    with pytest.raises(compat.InvalidRequestError, match="extents"):
        compat.array("bossdb://ours/exp/other", boss_config=cfg, create_new=True)
    with pytest.raises(ValueError, match="bossdb"):  # intern: ValueError, too
        compat.array("mem://not-boss", create_new=True, extents=(1, 1, 1), voxel_size=(1, 1, 1))
