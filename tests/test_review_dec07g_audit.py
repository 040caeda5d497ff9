"""Review of the day's second half (time points, out= / copy destinations looked for with the
store's options, meshes under a transform, the relay's multi-worker metadata digest).

- A time point given as a numpy integer (an index from ``np.arange``, ``np.argmax`` over a
  timelapse) made ``spec()`` hold a value JSON cannot write: a copy, a worker, a journal key
  failed with a TypeError from json.  Checked on zarr://, n5:// and tensorstore://.
- The keys of copy journals and proofreading histories (``choosing_options``) of a bossDB
  channel of several time samples opened without ``time=`` changed (its spec now names the
  sample), so a copy interrupted before the upgrade started over and an edit history recorded
  before it was no longer found; ``time=0`` on an array of one time point was keyed as
  another volume than the array opened without it.  The time point the URL alone opens is
  left out of those keys (still in ``spec()``: workers read the sample opened).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

import voxgate
from voxgate.blockwise import choosing_options, cluster_spec
from voxgate.errors import InvalidRequestError
from voxgate.services.proofread_history import history_location, history_options

from .remotes.test_time_points_audit import _Boss

T, Z, Y, X = 3, 8, 24, 32


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))


def _ome_timelapse(path: Path, points: int, seed: int = 5) -> np.ndarray:
    """An OME-Zarr image (t, z, y, x) of ``points`` time points (zarr-python)."""
    data = np.random.default_rng(seed).integers(0, 60000, (points, Z, Y, X), dtype=np.uint16)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", data=data, chunks=(1, 4, 16, 16))
    root.attrs["multiscales"] = [{"version": "0.4", "name": "tl", "axes": [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "z", "type": "space", "unit": "nanometer"},
        {"name": "y", "type": "space", "unit": "nanometer"},
        {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [2.0, 40.0, 8.0, 8.0]}]}]}]
    return data


def _n5_timelapse(path: Path) -> np.ndarray:
    """An N5 dataset of axes x, y, z, t (tensorstore's n5 driver)."""
    data = np.random.default_rng(7).integers(0, 250, (T, Z, Y, X), dtype=np.uint8)
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)},
                     "metadata": {"dimensions": [X, Y, Z, T], "blockSize": [16, 16, 4, 1],
                                  "dataType": "uint8", "compression": {"type": "raw"},
                                  "axes": ["x", "y", "z", "t"]}}, create=True).result()
    store[...] = data.transpose(3, 2, 1, 0)
    return data


def _zarr3_spec(path: Path, points: int) -> tuple[dict[str, object], np.ndarray]:
    """A zarr3 array (t, z, y, x) written through tensorstore, and its kvstore spec."""
    data = np.random.default_rng(9).integers(0, 250, (points, Z, Y, X), dtype=np.uint8)
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
    store = ts.open({**spec, "metadata": {
        "shape": [points, Z, Y, X], "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, 4, 16, 16]}},
        "dimension_names": ["t", "z", "y", "x"]}}, create=True).result()
    store[...] = data
    return spec, data


# -- a numpy integer time point --
@pytest.mark.parametrize("scheme", ["zarr", "n5", "tensorstore"])
def test_numpy_integer_time_point_is_kept_as_a_json_int(tmp_path: Path, scheme: str) -> None:
    if scheme == "zarr":
        data = _ome_timelapse(tmp_path / "tl.zarr", T)
        url = f"zarr://{tmp_path / 'tl.zarr'}"
    elif scheme == "n5":
        data = _n5_timelapse(tmp_path / "tl.n5")
        url = f"n5://{tmp_path / 'tl.n5'}"
    else:
        spec, data = _zarr3_spec(tmp_path / "tl3.zarr", T)
        url = "tensorstore://" + json.dumps(spec)
    t = np.arange(T)[1]  # (a numpy integer, as an index from numpy is)
    vol = voxgate.open(url, time=t)
    np.testing.assert_array_equal(vol.read(), data[1])
    options = json.loads(cluster_spec(vol.remote))["options"]
    assert options["time"] == 1 and type(vol.remote.spec()["options"]["time"]) is int
    assert choosing_options(vol.remote) == {"time": 1}
    out = f"zarr://{tmp_path / 'out.zarr'}"
    voxgate.copy(vol, out, progress=False)
    np.testing.assert_array_equal(voxgate.open(out).read(), data[1])


# -- keys of the time point the URL alone opens --
@pytest.fixture(scope="module")
def boss() -> Iterator[str]:
    """A bossDB-dialect server of one channel of several time samples (default sample 0)."""
    data = np.random.default_rng(3).integers(1, 255, (3, 16, 40, 48), dtype=np.uint8)
    handler = type("Boss", (_Boss,), {"data": data, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"bossdb://http://127.0.0.1:{server.server_address[1]}/tl/exp/em"
    server.shutdown()
    server.server_close()


def test_bossdb_default_sample_keeps_its_journal_and_history_keys(boss: str) -> None:
    """Opened without time= (as every copy and edit before time= was kept in spec()), a
    channel of several samples has the keys it had: no options; the spec still names the
    sample, so workers read the one opened."""
    plain = voxgate.open(boss)
    assert plain.remote.spec()["options"]["time"] == 0  # (workers read the sample opened)
    assert choosing_options(plain.remote) == {}
    assert history_options(plain.remote) == {}
    assert history_location(plain.url, 0, None, history_options(plain.remote)) \
        == history_location(plain.url, 0, None)
    # time=0, the channel's default sample, is the URL alone; another sample is not
    assert choosing_options(voxgate.open(boss, time=0).remote) == {}
    assert choosing_options(voxgate.open(boss, time=2).remote) == {"time": 2}


def test_time_zero_on_one_time_point_is_the_array_itself(tmp_path: Path) -> None:
    """time=0 on an array whose t axis has length 1, or that has none, opens what the URL
    alone opens: the same journal and history keys; on a timelapse, time=0 is a choice."""
    one = tmp_path / "one.zarr"
    _ome_timelapse(one, 1)
    plain = voxgate.create(f"zarr://{tmp_path / 'plain.zarr'}", shape=(Z, Y, X), dtype="uint8",
                           chunks=(4, 16, 16), voxel_size=(40, 8, 8))
    spec, _ = _zarr3_spec(tmp_path / "one3.zarr", 1)
    for url in (f"zarr://{one}", plain.url, "tensorstore://" + json.dumps(spec)):
        at0 = voxgate.open(url, time=0)
        assert at0.remote.spec()["options"]["time"] == 0
        assert choosing_options(at0.remote) == choosing_options(voxgate.open(url).remote) \
            == {}, url
    many = tmp_path / "many.zarr"
    _ome_timelapse(many, T)
    assert choosing_options(voxgate.open(f"zarr://{many}", time=0).remote) == {"time": 0}


# -- a copy between two time points of one timelapse --
def test_copy_between_time_points_of_one_timelapse(tmp_path: Path) -> None:
    """Another time point of the same URL is another volume (remotes.base.same_volume, as
    map_blocks takes it): voxgate.copy from time point 0 into time point 2 of one timelapse
    was refused as "the same volume"; it writes time point 2 only.  The same time point stays
    refused."""
    path = tmp_path / "tl.zarr"
    data = _ome_timelapse(path, T)
    url = f"zarr://{path}"
    report = voxgate.copy(voxgate.open(url, time=0), voxgate.open(url, mode="r+", time=2),
                          progress=False)
    assert report.chunks_written > 0
    for t, expected in ((0, data[0]), (1, data[1]), (2, data[0])):
        np.testing.assert_array_equal(voxgate.open(url, time=t).read(), expected)
    with pytest.raises(InvalidRequestError, match="same volume"):
        voxgate.copy(voxgate.open(url, time=1), voxgate.open(url, mode="r+", time=1),
                     progress=False)
