"""A time point of a time series, kept through every path: bossdb:// ``time=`` (a small
bossDB-dialect server serving several time samples) and the Zarr / OME-Zarr ``time=`` option
(an index along the 't' axis), through spec(), pickling, a spawned process, to_dask,
voxgate.copy with workers and its journal key, and a relay channel."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import blosc
import numpy as np
import pytest
import tensorstore as ts
import zarr

import voxgate
from voxgate.blockwise import choosing_options
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError
from voxgate.remotes.tensorstore_spec import TensorStoreRemote

from ..relay.conftest import RO, RW, free_port, start_relay

T, Z, Y, X = 3, 16, 40, 48


# -- a bossDB-dialect server with several time samples ---------------------------------------------
class _Boss(BaseHTTPRequestHandler):
    """The routes bossdb:// uses (boss-rest.md): collection, experiment, channel and coordinate
    frame records, and cutouts GET / POST with a ``t0:t1`` range (the body (t, z, y, x) in
    blosc, C order), as bossDB answers them; one channel ``tl/exp/em`` of T samples."""

    protocol_version = "HTTP/1.1"
    data: np.ndarray
    requests: list[str]

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, doc: dict[str, Any], status: int = 200) -> None:
        self._send(status, json.dumps(doc).encode())

    def _cutout(self) -> tuple[tuple[slice, ...], tuple[int, ...]] | None:
        m = re.fullmatch(r"/v1/cutout/tl/exp/em/0/(\d+):(\d+)/(\d+):(\d+)/(\d+):(\d+)/"
                         r"(?:(\d+):(\d+)/)?", self.path.split("?")[0])
        if m is None:
            return None
        x0, x1, y0, y1, z0, z1 = (int(v) for v in m.groups()[:6])
        t0, t1 = (int(m.group(7)), int(m.group(8))) if m.group(7) else (0, 1)
        if not 0 <= t0 < t1 <= T:
            return None
        return ((slice(t0, t1), slice(z0, z1), slice(y0, y1), slice(x0, x1)),
                (t1 - t0, z1 - z0, y1 - y0, x1 - x0))

    def do_GET(self) -> None:
        self.requests.append("GET " + self.path)
        path = self.path.split("?")[0].rstrip("/")
        records = {
            "/v1/collection/tl": {"name": "tl", "description": "", "experiments": ["exp"]},
            "/v1/collection/tl/experiment/exp": {
                "name": "exp", "collection": "tl", "coord_frame": "tl_frame",
                "num_hierarchy_levels": 1, "hierarchy_method": "anisotropic",
                "num_time_samples": T, "time_step": 2, "time_step_unit": "seconds"},
            "/v1/collection/tl/experiment/exp/channel/em": {
                "name": "em", "type": "image", "datatype": "uint8", "base_resolution": 0,
                "default_time_sample": 0, "sources": [], "related": []},
            "/v1/coord/tl_frame": {
                "name": "tl_frame", "x_start": 0, "x_stop": X, "y_start": 0, "y_stop": Y,
                "z_start": 0, "z_stop": Z, "x_voxel_size": 8, "y_voxel_size": 8,
                "z_voxel_size": 40, "voxel_unit": "nanometers"},
        }
        if path in records:
            return self._json(records[path])
        cut = self._cutout()
        if cut is None:
            return self._json({"status": 400, "code": 2002, "message": "bad request"}, 400)
        part = np.ascontiguousarray(self.data[cut[0]])
        self._send(200, blosc.compress(part.tobytes(), typesize=1), "application/blosc")

    def do_POST(self) -> None:
        self.requests.append("POST " + self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cut = self._cutout()
        if cut is None:
            return self._json({"status": 400, "code": 2002, "message": "bad request"}, 400)
        self.data[cut[0]] = np.frombuffer(blosc.decompress(body), np.uint8).reshape(cut[1])
        self._send(201, b"")


@pytest.fixture(scope="module")
def boss() -> Iterator[tuple[str, np.ndarray, list[str]]]:
    data = np.random.default_rng(3).integers(1, 255, (T, Z, Y, X), dtype=np.uint8)
    handler = type("Boss", (_Boss,), {"data": data, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"bossdb://http://127.0.0.1:{server.server_address[1]}/tl/exp/em", data, \
        handler.requests
    server.shutdown()
    server.server_close()


def test_boss_stand_in_serves_each_time_sample(boss: tuple[str, np.ndarray, list[str]]) -> None:
    url, data, requests = boss
    for t in range(T):
        np.testing.assert_array_equal(voxgate.open(url, time=t).read(), data[t])
    assert voxgate.open(url).remote.time == 0  # the channel's default_time_sample
    assert any("/1:2/" in r for r in requests)  # the time range is in the cutout's path
    with pytest.raises(InvalidRequestError, match=r"0\.\.2"):
        voxgate.open(url, time=T)
    # what zarr, n5 and tensorstore refuse as a time point, bossdb:// refuses too (int() of
    # them read time point 2 and 1)
    for bad in ("2", True, 1.0, -1):
        with pytest.raises(InvalidRequestError, match="time must be a time point"):
            voxgate.open(url, time=bad)


def test_boss_spec_keeps_the_time_sample(boss: tuple[str, np.ndarray, list[str]]) -> None:
    url, data, _ = boss
    vol = voxgate.open(url, time=2)
    spec = vol.remote.spec()
    assert spec["options"]["time"] == 2
    again = voxgate.open(spec["url"], mode=spec["mode"], **spec["options"])
    np.testing.assert_array_equal(again.read(), data[2])
    # the journal of a copy (and a proofreading history) tells time points apart
    assert choosing_options(vol.remote) == {"time": 2}


def test_boss_pickle_in_process_and_in_a_spawned_one(
        boss: tuple[str, np.ndarray, list[str]]) -> None:
    url, data, _ = boss
    vol = voxgate.open(url, time=1)[2:10, 5:30, 7:40]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(vol)).read(),
                                  data[1, 2:10, 5:30, 7:40])
    child = ("import pickle, sys; v = pickle.loads(sys.stdin.buffer.read()); "
             "sys.stdout.buffer.write(v.read().tobytes())")
    out = subprocess.run([sys.executable, "-c", child], input=pickle.dumps(vol),
                         capture_output=True, check=True, timeout=120).stdout
    np.testing.assert_array_equal(np.frombuffer(out, np.uint8).reshape(8, 25, 33),
                                  data[1, 2:10, 5:30, 7:40])


def test_boss_to_dask_graph_reads_the_time_sample(
        boss: tuple[str, np.ndarray, list[str]]) -> None:
    url, data, _ = boss
    arr = voxgate.open(url, time=2).to_dask(chunks=(8, 20, 24))
    shipped = pickle.loads(pickle.dumps(arr))  # (as a graph goes to processes or a cluster)
    np.testing.assert_array_equal(shipped.compute(scheduler="synchronous"), data[2])


def test_boss_copy_with_workers_reads_the_time_sample(
        boss: tuple[str, np.ndarray, list[str]], tmp_path: Path) -> None:
    url, data, _ = boss
    out = f"zarr://{tmp_path / 'out.zarr'}"
    voxgate.copy(voxgate.open(url, time=2), out, workers=2, progress=False)
    np.testing.assert_array_equal(voxgate.open(out).read(), data[2])


def test_boss_write_reaches_its_time_sample_only(
        boss: tuple[str, np.ndarray, list[str]]) -> None:
    url, data, _ = boss
    before = data.copy()
    vol = voxgate.open(url, mode="r+", time=1)
    try:
        vol[0:4, 0:8, 0:8] = np.full((4, 8, 8), 255, np.uint8)
        expected = before.copy()
        expected[1, 0:4, 0:8, 0:8] = 255
        np.testing.assert_array_equal(data, expected)
    finally:
        data[:] = before


# -- Zarr / OME-Zarr timelapses --------------------------------------------------------------------
def _timelapse(path: Path, *, fmt: int = 2, seed: int = 5) -> np.ndarray:
    """An OME-Zarr image (t, c, z, y, x) of T time points written with zarr-python, its t axis
    in seconds (scale 2 s), z y x in nanometers."""
    data = np.random.default_rng(seed).integers(0, 60000, (T, 2, 8, 24, 32), dtype=np.uint16)
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt)  # type: ignore[arg-type]
    root.create_array("0", data=data, chunks=(1, 1, 4, 16, 16))
    ms = [{"version": "0.4", "name": "tl", "axes": [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "nanometer"},
        {"name": "y", "type": "space", "unit": "nanometer"},
        {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [2.0, 1.0, 40.0, 8.0, 8.0]}]}]}]
    if fmt == 2:
        root.attrs["multiscales"] = ms
    else:
        root.attrs["ome"] = {"version": "0.5", "multiscales": ms}
    return data


@pytest.fixture
def timelapse(tmp_path: Path) -> tuple[str, Path, np.ndarray]:
    path = tmp_path / "tl.zarr"
    return f"zarr://{path}", path, _timelapse(path)


def test_ome_zarr_timelapse_opens_one_time_point(
        timelapse: tuple[str, Path, np.ndarray], tmp_path: Path) -> None:
    url, _, data = timelapse
    for t in range(T):
        vol = voxgate.open(url, time=t)
        assert vol.shape == (2, 8, 24, 32)
        assert vol.voxel_size.zyx() == (40.0, 8.0, 8.0)  # (the t axis's scale is not space)
        np.testing.assert_array_equal(vol.read(), data[t])
    v5 = tmp_path / "v5.zarr"
    d5 = _timelapse(v5, fmt=3)  # NGFF 0.5 (Zarr v3)
    np.testing.assert_array_equal(voxgate.open(f"zarr://{v5}", time=2).read(), d5[2])
    # a level's own URL takes it too
    np.testing.assert_array_equal(voxgate.open(f"{url}/0", time=1).read(), data[1])


def test_time_is_required_in_range_and_checked(
        timelapse: tuple[str, Path, np.ndarray], tmp_path: Path) -> None:
    url, _, _ = timelapse
    with pytest.raises(InvalidRequestError, match=r"3 time points.*time=0\.\.2"):
        voxgate.open(url)
    with pytest.raises(InvalidRequestError, match=r"time=3 is outside.*0\.\.2"):
        voxgate.open(url, time=3)
    for bad in (-1, "1", 1.5, True):
        with pytest.raises(InvalidRequestError, match="time must be a time point"):
            voxgate.open(url, time=bad)
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), data=np.ones((4, 8, 8), np.uint8))
    assert voxgate.open(f"zarr://{plain}", time=0).shape == (4, 8, 8)
    with pytest.raises(InvalidRequestError, match="no time axis"):
        voxgate.open(f"zarr://{plain}", time=1)


def test_plain_zarr3_array_with_a_t_dimension(tmp_path: Path) -> None:
    path = tmp_path / "txyz.zarr"
    data = np.arange(T * 4 * 6 * 5, dtype=np.int32).reshape(T, 4, 6, 5)
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
                     "metadata": {"shape": list(data.shape), "data_type": "int32",
                                  "dimension_names": ["t", "z", "y", "x"]}},
                    create=True).result()
    store.write(data).result()
    np.testing.assert_array_equal(voxgate.open(f"zarr://{path}", time=2).read(), data[2])


def test_ome_zarr_write_reaches_its_time_point_only(
        timelapse: tuple[str, Path, np.ndarray]) -> None:
    url, path, data = timelapse
    vol = voxgate.open(url, mode="r+", time=1)
    vol[:, 2:6, 4:20, 8:30] = np.full((2, 4, 16, 22), 7, np.uint16)
    expected = data.copy()
    expected[1, :, 2:6, 4:20, 8:30] = 7
    np.testing.assert_array_equal(zarr.open_array(str(path / "0"), mode="r")[:], expected)


def test_ome_zarr_time_point_kept_by_spec_pickle_and_copy(
        timelapse: tuple[str, Path, np.ndarray], tmp_path: Path) -> None:
    url, _, data = timelapse
    vol = voxgate.open(url, time=2)
    assert vol.remote.spec()["options"] == {"time": 2}
    assert choosing_options(vol.remote) == {"time": 2}
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(vol)).read(), data[2])
    out = f"zarr://{tmp_path / 'copy.zarr'}"
    voxgate.copy(vol, out, workers=2, progress=False)
    np.testing.assert_array_equal(voxgate.open(out).read(), data[2])
    # into a time point of another timelapse: that one only changes
    other = tmp_path / "other.zarr"
    before = _timelapse(other, seed=6)
    voxgate.copy(vol, voxgate.open(f"zarr://{other}", mode="r+", time=0), workers=2,
                 progress=False)
    expected = before.copy()
    expected[0] = data[2]
    np.testing.assert_array_equal(zarr.open_array(str(other / "0"), mode="r")[:], expected)


def test_downsample_of_a_timelapse_is_refused_and_writes_nothing(
        timelapse: tuple[str, Path, np.ndarray]) -> None:
    url, path, _ = timelapse
    attrs = (path / ".zattrs").read_text()
    listing = sorted(p.relative_to(path) for p in path.rglob("*"))
    with pytest.raises(CapabilityNotSupportedError, match="timelapse of 3 time points"):
        voxgate.downsample(voxgate.open(url, mode="r+", time=1), progress=False)
    assert (path / ".zattrs").read_text() == attrs
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == listing


def test_relay_channel_serves_the_time_point_its_options_name(
        timelapse: tuple[str, Path, np.ndarray], tmp_path: Path) -> None:
    url, _, data = timelapse
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
state_path = "{tmp_path / 'state.json'}"
[cache]
memory_bytes = "16 MiB"
[[channel]]
name = "lab/tl/em"
upstream = "{url}"
options = {{ time = 2 }}
[auth]
public_read = true
tokens = {{ "{RW}" = "read-write", "{RO}" = "read" }}
""")
    relay = start_relay(cfg, free_port())
    try:
        # (two channels per voxel: the precomputed dialect; a bossDB channel holds one)
        vol = voxgate.open(f"precomputed://{relay.url}/precomputed/lab/tl/em")
        np.testing.assert_array_equal(vol.read(), data[2])
    finally:
        relay.stop()


# -- N5 and tensorstore:// -------------------------------------------------------------------------
def test_n5_dataset_with_a_time_axis(tmp_path: Path) -> None:
    path = tmp_path / "t.n5"
    data = np.random.default_rng(7).integers(0, 255, (5, 6, 4, T), dtype=np.uint8)  # x y z t
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)},
                     "metadata": {"dimensions": list(data.shape), "blockSize": [4, 4, 4, 1],
                                  "dataType": "uint8", "compression": {"type": "raw"},
                                  "axes": ["x", "y", "z", "t"]}},
                    create=True).result()
    store.write(data).result()
    url = f"n5://{path}"
    vol = voxgate.open(url, time=1)
    np.testing.assert_array_equal(vol.read(), data[..., 1].transpose())
    assert vol.remote.spec()["options"] == {"time": 1}
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(vol)).read(),
                                  data[..., 1].transpose())
    with pytest.raises(InvalidRequestError, match=r"time=0\.\.2"):
        voxgate.open(url)
    rw = voxgate.open(url, mode="r+", time=2)
    rw[:] = np.full((4, 6, 5), 9, np.uint8)
    expected = data.copy()
    expected[..., 2] = 9
    np.testing.assert_array_equal(store.read().result(), expected)


def test_tensorstore_spec_with_a_time_dimension(tmp_path: Path) -> None:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "a")}}
    data = np.arange(T * 4 * 6 * 5, dtype=np.uint16).reshape(T, 4, 6, 5)
    ts.open({**spec, "metadata": {"shape": list(data.shape), "data_type": "uint16",
                                  "dimension_names": ["t", "z", "y", "x"]}},
            create=True).result().write(data).result()
    vol = voxgate.open(f"tensorstore://{json.dumps(spec)}", time=2)
    np.testing.assert_array_equal(vol.read(), data[2])
    assert vol.remote.spec()["options"]["time"] == 2
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(vol)).read(), data[2])
    with pytest.raises(InvalidRequestError, match=r"time=0\.\.2"):
        voxgate.open(f"tensorstore://{json.dumps(spec)}")
    # a timelapse is there (it was refused as "open it with time=")
    assert TensorStoreRemote.exists(json.dumps(spec))
    assert not TensorStoreRemote.exists(
        json.dumps({**spec, "kvstore": {"driver": "file", "path": str(tmp_path / "none")}}))


def _plus_one(a: np.ndarray) -> np.ndarray:  # (a kernel the cluster's workers import)
    return a.astype(np.uint16) + 1


def test_a_dask_cluster_reads_and_writes_the_time_points(
        cluster: Any, boss: tuple[str, np.ndarray, list[str]],
        timelapse: tuple[str, Path, np.ndarray], tmp_path: Path) -> None:
    url, data, _ = boss
    out = f"zarr://{tmp_path / 'boss.zarr'}"
    voxgate.copy(voxgate.open(url, time=2), out, progress=False, client=cluster)
    np.testing.assert_array_equal(voxgate.open(out).read(), data[2])
    plus = f"zarr://{tmp_path / 'plus.zarr'}"
    voxgate.map_blocks(_plus_one, voxgate.open(url, time=1), plus, block=(8, 16, 16),
                       dtype="uint16", client=cluster)
    np.testing.assert_array_equal(voxgate.open(plus).read(), data[1].astype(np.uint16) + 1)
    # from a time point of an OME-Zarr timelapse into one of another (whose other time
    # points stay as they were)
    zurl, _, zdata = timelapse
    other = tmp_path / "other.zarr"
    before = _timelapse(other, seed=6)
    voxgate.copy(voxgate.open(zurl, time=1), voxgate.open(f"zarr://{other}", mode="r+", time=2),
                 progress=False, client=cluster)
    expected = before.copy()
    expected[2] = zdata[1]
    np.testing.assert_array_equal(zarr.open_array(str(other / "0"), mode="r")[:], expected)


def test_services_take_another_time_point_of_the_same_url_as_another_volume(
        tmp_path: Path) -> None:
    """map_blocks with a halo from time point 0 into time point 1 of one array: the two are
    two volumes of one URL (it was refused as "out is the source", and without a halo
    journalled as an in-place run); the other time point stays as it was."""
    path = tmp_path / "t.zarr"
    data = np.random.default_rng(5).integers(0, 200, (2, 8, 16, 16), dtype=np.uint8)
    arr = zarr.create_array(str(path), shape=data.shape, chunks=(1, 4, 8, 8), dtype="uint8",
                            dimension_names=["t", "z", "y", "x"], zarr_format=3)
    arr[...] = data
    url = f"zarr://{path}"
    for halo in ((1, 1, 1), (0, 0, 0)):
        out = voxgate.map_blocks(lambda x: x // 2, voxgate.open(url, time=0),
                                 out=voxgate.open(url, mode="r+", time=1),
                                 block=(4, 8, 8), halo=halo, progress=False)
        assert out.remote.spec()["options"]["time"] == 1
        got = zarr.open_array(str(path))[...]
        np.testing.assert_array_equal(got[1], data[0] // 2)
        np.testing.assert_array_equal(got[0], data[0])
    # the same time point stays the source
    with pytest.raises(InvalidRequestError, match="out is the source"):
        voxgate.map_blocks(lambda x: x, voxgate.open(url, time=1),
                           out=voxgate.open(url, mode="r+", time=1), block=(4, 8, 8),
                           halo=(1, 1, 1), progress=False)
