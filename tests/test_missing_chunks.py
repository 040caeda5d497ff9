"""Absent chunks: read as fill by default, MissingChunkError with missing="error", listed by
Volume.missing_chunks, ``voxgate info --check`` and ``voxgate cp``, for every store type.

Each case makes a 48^3 volume of 16^3 chunks holding non-zero data everywhere except chunk
(1, 0, 2) (z, y, x), which is absent: a chunk file deleted from disk where each chunk is a
file, a chunk never written inside a shard (zarr v3, precomputed) or an HDF5 file, and a
``delete_chunk`` for mem://.  Chunk (0, 0, 0) holds zeros that were written: a stored chunk
equal to the fill value is not absent, in a sharded precomputed scale too (tensorstore's
sharded writer leaves such chunks out of the shard, even with store_data_equal_to_fill_value;
voxgate adds them after each write, as CloudVolume needs them: it was absent there before).
"""

from __future__ import annotations

import gzip
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
from click.testing import CliRunner

import voxgate
from voxgate.cli import main
from voxgate.errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    MissingChunkError,
    RemoteNotFoundError,
    VoxgateError,
)
from voxgate.geometry import Box, Vec
from voxgate.remotes import memory
from voxgate.remotes.base import Capability, Remote, bisect_absent
from voxgate.transfer import copy

from .relay.conftest import free_port, start_relay

SHAPE = (48, 48, 48)
CHUNK = 16
GONE = Vec(1, 0, 2)
GONE_BOX = Box((16, 0, 32), (32, 16, 48))
ZERO = Vec(0, 0, 0)


def _data() -> np.ndarray:
    a = (np.arange(np.prod(SHAPE)) % 250 + 1).astype(np.uint8).reshape(SHAPE)
    a[:CHUNK, :CHUNK, :CHUNK] = 0  # chunk (0, 0, 0) is written, as zeros
    return a


def _cells() -> Iterator[tuple[Vec, Box]]:
    n = SHAPE[0] // CHUNK
    for z in range(n):
        for y in range(n):
            for x in range(n):
                start = Vec(z * CHUNK, y * CHUNK, x * CHUNK)
                yield Vec(z, y, x), Box(start, start + Vec(CHUNK, CHUNK, CHUNK))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


STORES: dict[str, tuple[str, dict[str, Any], str]] = {
    # name: (url template, create options, how the chunk becomes absent)
    "zarr3": ("zarr://{d}/v.zarr", {}, "delete"),
    "zarr2": ("zarr://{d}/v.zarr", {"zarr_format": 2}, "delete"),
    "zarr3-sharded": ("zarr://{d}/v.zarr", {"shards": (32, 32, 32)}, "never"),
    "n5": ("n5://{d}/v.n5", {}, "delete"),
    "precomputed": ("precomputed://{d}/pc", {}, "delete"),
    "precomputed-gz": ("precomputed://{d}/pc", {}, "gzip+delete"),
    "precomputed-sharded": ("precomputed://{d}/pc", {"sharded": True}, "never"),
    "hdf5": ("hdf5://{d}/v.h5", {}, "never"),
    "mem": ("mem://missing-{n}", {}, "mem"),
}



class Store(str):
    """A volume URL, with the chunks absent from it."""

    absent: list[Vec]


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The URL of a volume whose chunk GONE is absent from its store."""
    template, options, how = STORES[request.param]
    url = template.format(d=tmp_path, n=request.param)
    vol = voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=(CHUNK,) * 3,
                         voxel_size=(1, 1, 1), **options)
    data = _data()
    for g, cell in _cells():
        if g != GONE:
            vol.write(data[cell.slices()], cell)
    if how in ("delete", "gzip+delete", "mem"):
        before = _files(tmp_path)
        vol.write(data[GONE_BOX.slices()], GONE_BOX)
        new = _files(tmp_path) - before
        if how == "mem":
            assert isinstance(vol.remote, memory.MemoryRemote)
            vol.remote.delete_chunk(GONE)
        else:
            assert len(new) == 1, new  # the chunk's own file
            if how == "gzip+delete":  # CloudVolume's local convention: every chunk as NAME.gz
                for f in _files(tmp_path / "pc") - {tmp_path / "pc" / "info"}:
                    f.with_name(f.name + ".gz").write_bytes(gzip.compress(f.read_bytes()))
                    f.unlink()
                os.unlink(str(new.pop()) + ".gz")
            else:
                new.pop().unlink()
    vol.remote.close()
    out = Store(url)
    out.absent = [GONE]
    yield out
    if how == "mem":
        memory.delete(url[len("mem://"):])


def test_default_reads_absent_chunk_as_fill(store: Store) -> None:
    vol = voxgate.open(store)
    assert vol.missing == "fill"
    got = vol.read()
    expected = _data()
    expected[GONE_BOX.slices()] = 0
    np.testing.assert_array_equal(got, expected)


def test_missing_error_raises_naming_the_chunk(store: Store) -> None:
    vol = voxgate.open(store, missing="error")
    assert vol.missing == "error"
    with pytest.raises(MissingChunkError) as info:
        vol[20:24, 2:5, 30:40].read()  # touches (1, 0, 1) and the absent (1, 0, 2)
    err = info.value
    assert isinstance(err, LookupError) and isinstance(err, VoxgateError)
    assert err.chunks == [GONE] and err.scale == 0 and err.total == 1  # (0,0,0) not touched
    assert "(1, 0, 2)" in str(err) and "missing='fill'" in str(err)
    with pytest.raises(MissingChunkError):
        np.asarray(vol)
    # reads that touch only stored chunks are unaffected, the written zeros included
    np.testing.assert_array_equal(vol[16:, :48, :32].read(), _data()[16:, :48, :32])
    if ZERO not in store.absent:
        np.testing.assert_array_equal(vol[:16, :48, :32].read(), _data()[:16, :48, :32])
    # the option survives a reopen from the spec (the relay and workers reopen that way)
    assert vol.spec()["options"] == {"missing": "error"}


def test_python_api_lists_absent_chunks(store: Store) -> None:
    vol = voxgate.open(store)
    assert vol.missing_chunks() == store.absent
    assert vol.missing_chunks(Box((0, 16, 0), (16, 48, 48))) == []
    assert vol.missing_chunks(Box((20, 10, 40), (21, 11, 41))) == [GONE]
    assert vol[16:32, :16, 32:].missing_chunks() == [GONE]
    assert vol[:16, 16:].missing_chunks() == []


def test_info_check_reports_absent_chunks(store: Store) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["info", "--check", store])
    assert res.exit_code == 0, res.output
    shown = ", ".join(str(tuple(g)) for g in store.absent)
    assert f"{len(store.absent)} chunk(s) absent at scale 0: {shown}" in res.output
    res = runner.invoke(main, ["info", "--check", "--json", store])
    assert res.exit_code == 0, res.output
    import json

    doc = json.loads(res.output)
    assert doc["absent_chunks"] == {
        "0": {"total": len(store.absent), "first_zyx": [list(g) for g in store.absent]}
    }
    res = runner.invoke(main, ["info", "--check", "--missing", "error", store])
    assert res.exit_code != 0 and "MissingChunkError" in res.output


def test_cp_reports_absent_chunks(store: Store, tmp_path: Path) -> None:
    dst = tmp_path / "copy.zarr"
    runner = CliRunner()
    res = runner.invoke(main, ["cp", "--no-progress", store, f"zarr://{dst}"])
    assert res.exit_code == 0, res.output
    shown = ", ".join(str(tuple(g)) for g in store.absent)
    assert f"{len(store.absent)} chunk(s) absent at scale 0: {shown}" in res.output
    # copied as fill; the copy, a zarr it created, leaves out the chunks of only the fill
    # value (write_sparse): the absent one and (0, 0, 0), written as zeros in the source
    out = voxgate.open(f"zarr://{dst}")
    assert not out[GONE_BOX.slices()].read().any()
    want = _data()
    want[GONE_BOX.slices()] = 0
    np.testing.assert_array_equal(out.read(), want)
    assert out.missing_chunks() == [Vec(0, 0, 0), Vec(1, 0, 2)]
    # --missing error refuses before creating anything
    dst2 = tmp_path / "refused.zarr"
    res = runner.invoke(main, ["cp", "--no-progress", "--missing", "error", store, f"zarr://{dst2}"])
    assert res.exit_code != 0 and "MissingChunkError" in res.output and "(1, 0, 2)" in res.output
    assert not dst2.exists()
    report = copy(store, f"zarr://{tmp_path / 'api.zarr'}", progress=False)
    assert report.absent_checked and report.absent_chunks == {0: store.absent}


def test_copy_with_a_box_reports_only_chunks_inside_it(tmp_path: Path) -> None:
    url = f"zarr://{tmp_path}/src.zarr"
    vol = voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=(CHUNK,) * 3,
                         voxel_size=(1, 1, 1))
    vol[:16] = 7  # only the first slab of chunks is stored
    report = copy(url, f"zarr://{tmp_path}/dst.zarr", box=Box((0, 0, 0), (16, 48, 48)),
                  progress=False)
    assert report.absent_chunks == {}
    report = copy(url, f"zarr://{tmp_path}/dst2.zarr", box=Box((0, 0, 0), (20, 16, 16)),
                  progress=False)
    assert report.absent_chunks == {0: [Vec(1, 0, 0)]}


def test_missing_values_are_checked() -> None:
    voxgate.create("mem://missing-opt", shape=(4, 4, 4), dtype="uint8", chunks=(2, 2, 2),
                   voxel_size=(1, 1, 1))
    try:
        with pytest.raises(InvalidRequestError, match=r"'fill'.*'error'"):
            voxgate.open("mem://missing-opt", missing="zeros")
        with pytest.raises(InvalidRequestError):
            voxgate.open("mem://missing-opt", missing=True)
        with pytest.raises(InvalidRequestError):
            copy("mem://missing-opt", "mem://missing-opt2", missing="skip", progress=False)
        assert voxgate.open("mem://missing-opt", missing="fill").missing == "fill"
        # reopening a Volume: missing may change, and is kept otherwise
        strict = voxgate.open(voxgate.open("mem://missing-opt"), missing="error")
        assert strict.missing == "error"
        assert voxgate.open(strict, scale=0).missing == "error"
        assert voxgate.open(strict, missing="fill").missing == "fill"
        with pytest.raises(InvalidRequestError):
            voxgate.open(strict, missing="never")
        # nothing written yet: every chunk is absent
        assert len(voxgate.open("mem://missing-opt").missing_chunks()) == 8
    finally:
        memory.delete("missing-opt")


class _NoChunks(Remote):
    """A Remote without CHUNK_PRESENCE, as bossdb:// and dvid:// are."""

    scheme = "nochunks"

    def __init__(self, meta: voxgate.VolumeMeta) -> None:
        self.meta, self.mode, self.url = meta, "r", "nochunks://x"

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: object) -> Remote:
        raise RemoteNotFoundError(location)

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        return np.zeros(box.shape, self.meta.dtype)


def test_stores_without_visible_chunks_refuse_missing_error() -> None:
    from voxgate.remotes.boss import BossDBRemote
    from voxgate.remotes.dvid import DVIDRemote

    meta = voxgate.VolumeMeta.build(shape=(4, 4, 4), dtype="uint8", chunks=(2, 2, 2),
                                    voxel_size=(1, 1, 1))
    remote = _NoChunks(meta)
    with pytest.raises(CapabilityNotSupportedError, match="missing='error'"):
        remote.set_missing("error")
    remote.set_missing("fill")
    with pytest.raises(CapabilityNotSupportedError):
        voxgate.Volume(remote).missing_chunks()
    # bossdb:// and dvid:// declare no CHUNK_PRESENCE, so set_missing refuses them the same way
    for cls in (BossDBRemote, DVIDRemote):
        assert cls.absent_chunks is Remote.absent_chunks
        assert cls.set_missing is Remote.set_missing


def test_bisect_absent_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    bounds = Box((3, 0, 0), (3 + 37, 21, 50))  # offset grid, partial edge chunks
    chunks = Vec(4, 5, 7)
    grid = [-(-n // c) for n, c in zip(bounds.shape, chunks, strict=True)]
    for density in (0.0, 0.02, 0.3, 1.0):
        stored = rng.random(grid) >= density
        calls: list[Box] = []

        def stats(region: Box, stored: np.ndarray = stored,
                  calls: list[Box] = calls) -> tuple[bool, bool]:
            calls.append(region)
            lo = [(a - o) // c for a, o, c in zip(region.start, bounds.start, chunks, strict=True)]
            hi = [-(-(b - o) // c) for b, o, c in zip(region.stop, bounds.start, chunks,
                                                       strict=True)]
            part = stored[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            return (not part.any()), bool(part.all())

        got = bisect_absent(bounds, chunks, bounds, stats)
        expected = sorted(Vec(*map(int, g)) for g in np.argwhere(~stored))
        assert got == expected
        if density == 0.0:
            assert len(calls) == 1


def test_capability_is_declared_by_file_stores(tmp_path: Path) -> None:
    vol = voxgate.create(f"zarr://{tmp_path}/c.zarr", shape=(4, 4, 4), dtype="uint8",
                         chunks=(2, 2, 2), voxel_size=(1, 1, 1))
    assert Capability.CHUNK_PRESENCE in vol.remote.capabilities
    assert Capability.CHUNK_PRESENCE in voxgate.open(f"zarr://{tmp_path}/c.zarr").remote.capabilities


# -- through the relay -------------------------------------------------------------------------
class _Relay:
    def __init__(self, url: str, http: httpx.Client) -> None:
        self.url = url
        self.http = http

    def __call__(self, path: str) -> httpx.Response:
        return self.http.get(path)


@pytest.fixture
def relay_over_gap(tmp_path: Path) -> Iterator[_Relay]:
    url = f"zarr://{tmp_path}/up.zarr"
    vol = voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=(CHUNK,) * 3,
                         voxel_size=(1, 1, 1))
    data = _data()
    for g, cell in _cells():
        if g != GONE:
            vol.write(data[cell.slices()], cell)
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
upstream_timeout = 20
state_path = "{tmp_path / 'state.json'}"
[cache]
memory_bytes = "16 MiB"
[[channel]]
name = "lab/em/fill"
upstream = "{url}"
[[channel]]
name = "lab/em/strict"
upstream = "{url}"
missing = "error"
""")
    tomllib.loads(cfg.read_text())
    relay = start_relay(cfg, free_port())
    try:
        with httpx.Client(base_url=relay.url, timeout=60) as http:
            yield _Relay(relay.url, http)
    finally:
        relay.stop()


def test_relay_serves_fill_or_a_clear_error(relay_over_gap: _Relay, tmp_path: Path) -> None:
    get = relay_over_gap
    # x 30:40, y 2:5, z 20:24 touches the absent chunk (1, 0, 2)
    res = get("/v1/cutout/lab/em/fill/0/30:40/2:5/20:24/")
    assert res.status_code == 200, res.text
    arr = np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(4, 3, 10)
    expected = _data()[20:24, 2:5, 30:40].copy()
    expected[:, :, 2:] = 0
    np.testing.assert_array_equal(arr, expected)
    res = get("/v1/cutout/lab/em/strict/0/30:40/2:5/20:24/")
    assert res.status_code == 404, res.text
    body = res.json()
    assert "absent" in body["message"] and "(1, 0, 2)" in body["message"]
    assert str(tmp_path) not in res.text  # no server path in the error
    # the relay caches whole cells (blocks of upstream chunks; here one cell holds the whole
    # 48^3 volume): a read of the cell's present chunks is served from the upstream (it was
    # the cell's 404, which clients of the precomputed dialect show as zeros)
    res = get("/v1/cutout/lab/em/strict/0/0:16/16:32/0:16/")
    assert res.status_code == 200, res.text
    arr = np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(16, 16, 16)
    np.testing.assert_array_equal(arr, _data()[:16, 16:32, :16])
    # the precomputed dialect serves the cell as one chunk, of which one upstream chunk in 27
    # is absent: neither the data (zeros in the gap) nor a 404 (zeros everywhere) is true
    info = get("/precomputed/lab/em/strict/info").json()
    assert info["scales"][0]["chunk_sizes"] == [[64, 64, 64]]  # clipped at 48
    res = get("/precomputed/lab/em/strict/s0/0-48_0-48_0-48")
    assert res.status_code == 409, res.text
    assert "partly absent" in res.json()["message"] and "1 of the 27" in res.json()["message"]
    assert str(tmp_path) not in res.text
    # so tensorstore fails loudly where it read the 404 as "absent" and showed zeros for all
    import tensorstore as ts

    got = ts.open({"driver": "neuroglancer_precomputed",
                   "kvstore": f"{relay_over_gap.url}/precomputed/lab/em/strict/"}).result()
    with pytest.raises(ValueError, match="409"):
        got.read().result()


def test_relay_config_checks_missing(tmp_path: Path) -> None:
    from voxgate.relay.config import load_config

    cfg = tmp_path / "bad.toml"
    cfg.write_text("""
[[channel]]
name = "a/b/c"
upstream = "zarr:///nowhere"
missing = "zeros"
""")
    with pytest.raises(InvalidRequestError, match="missing"):
        load_config(cfg)
    cfg.write_text("""
[[channel]]
name = "a/b/c"
upstream = "zarr:///nowhere"
missing = "error"
""")
    assert load_config(cfg).channels[0].options == {"missing": "error"}


def test_bossdb_client_through_the_relay(relay_over_gap: _Relay, tmp_path: Path) -> None:
    # bossdb:// shows no chunks: missing="error" is refused, clearly
    with pytest.raises(CapabilityNotSupportedError, match="missing='error'"):
        voxgate.open(f"bossdb://{relay_over_gap.url}/lab/em/fill", missing="error")
    # the relay's strict channel answers the absent chunk with an error, never zeros
    strict = voxgate.open(f"bossdb://{relay_over_gap.url}/lab/em/strict")
    with pytest.raises(MissingChunkError) as info:
        strict[20:24, 2:5, 30:40].read()
    assert info.value.chunks == [GONE] and info.value.total == 1 and info.value.scale == 0
    assert "absent" in str(info.value) and "(1, 0, 2)" in str(info.value)
    assert str(tmp_path) not in str(info.value)
    fill = voxgate.open(f"bossdb://{relay_over_gap.url}/lab/em/fill")
    assert not fill[20:24, 2:5, 34:40].read().any()


def test_missing_error_keeps_its_type_through_a_chain(relay_over_gap: _Relay,
                                                      tmp_path: Path) -> None:
    cfg = tmp_path / "outer.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
upstream_timeout = 20
state_path = "{tmp_path / 'outer-state.json'}"
[cache]
memory_bytes = "16 MiB"
[[channel]]
name = "lab/em/strict"
upstream = "bossdb://{relay_over_gap.url}/lab/em/strict"
""")
    outer = start_relay(cfg, free_port())
    try:
        res = httpx.get(outer.url + "/v1/cutout/lab/em/strict/0/30:40/2:5/20:24/", timeout=60)
        assert res.status_code == 404, res.text
        assert "(1, 0, 2)" in res.json()["message"]
        assert str(tmp_path) not in res.text
        vol = voxgate.open(f"bossdb://{outer.url}/lab/em/strict")
        with pytest.raises(MissingChunkError) as info:
            vol[20:24, 2:5, 30:40].read()
        assert info.value.chunks == [GONE]
    finally:
        outer.stop()


@pytest.mark.parametrize("kind", ["zarr", "precomputed", "precomputed-sharded"])
def test_absent_chunks_on_object_storage(kind: str, s3_bucket: str, s3_server: str) -> None:
    import boto3

    fmt, _, sharded = kind.partition("-")
    url = f"{fmt}://s3://{s3_bucket}/v"
    options: dict[str, Any] = {"sharded": True} if sharded else {}
    vol = voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=(CHUNK,) * 3,
                         voxel_size=(1, 1, 1), **options)
    data = _data()
    data[:CHUNK, :CHUNK, :CHUNK] = 9
    for g, cell in _cells():
        if g != GONE:
            vol.write(data[cell.slices()], cell)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    if not sharded:  # a chunk object deleted by hand
        vol.write(data[GONE_BOX.slices()], GONE_BOX)
        new = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]} - keys
        assert len(new) == 1
        s3.delete_object(Bucket=s3_bucket, Key=new.pop())
    again = voxgate.open(url)
    assert again.missing_chunks() == [GONE]
    assert not again[GONE_BOX.slices()].read().any()
    with pytest.raises(MissingChunkError) as info:
        voxgate.open(url, missing="error")[20:24, 2:5, 30:40].read()
    assert info.value.chunks == [GONE]
    np.testing.assert_array_equal(voxgate.open(url, missing="error")[:16].read(), data[:16])


def test_tensorstore_through_the_relay_sees_the_data_beside_an_absent_chunk(
        tmp_path: Path) -> None:
    """A channel with missing = "error" whose served chunks are its upstream's: the absent
    chunk is a 404 (tensorstore shows the fill value, as it does reading the upstream) and
    the chunk beside it is its data (what test_relay_serves_fill_or_a_clear_error's 409 is
    not: there one served chunk holds present and absent upstream chunks)."""
    import tensorstore as ts

    url = f"zarr://{tmp_path}/up.zarr"
    shape, chunks = (128, 128, 128), (64, 128, 128)  # two 1-MiB chunks: one per cache cell
    data = (np.arange(np.prod(shape)) % 251 + 1).astype(np.uint8).reshape(shape)
    vol = voxgate.create(url, shape=shape, dtype="uint8", chunks=chunks, voxel_size=(1, 1, 1))
    vol.write(data[:64], Box((0, 0, 0), (64, 128, 128)))
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
state_path = "{tmp_path / 'state.json'}"
[[channel]]
name = "lab/em/strict"
upstream = "{url}"
missing = "error"
""")
    relay = start_relay(cfg, free_port())
    try:
        with httpx.Client(base_url=relay.url, timeout=60) as http:
            info = http.get("/precomputed/lab/em/strict/info").json()
            assert info["scales"][0]["chunk_sizes"] == [[128, 128, 64]]
            assert http.get("/precomputed/lab/em/strict/s0/0-128_0-128_64-128").status_code \
                == 404
            assert http.get("/precomputed/lab/em/strict/s0/0-128_0-128_0-64").status_code \
                == 200
        got = ts.open({"driver": "neuroglancer_precomputed", "kvstore":
                       f"{relay.url}/precomputed/lab/em/strict/"}).result()
        arr = np.asarray(got.read().result())[..., 0].transpose(2, 1, 0)  # x y z -> z y x
        want = data.copy()
        want[64:] = 0
        np.testing.assert_array_equal(arr, want)
    finally:
        relay.stop()
