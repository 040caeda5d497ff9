"""A sweep of bad input over every route of a running relay: each refusal is the right 4xx with
a boss (``{"status", "code", "message"}``) or DRF (``{"detail"}``) JSON body that says what was
wrong, never a 500 or a hang, and a refused write changes nothing (the upstreams, what the
relay serves and the project service are compared after every one).

The routes: ``/ping``; ``/v0.N/...``; ``/v1/collection`` (collections, experiments,
channels and their lists); ``/v1/coord``; ``/v1/cutout`` (GET, POST) and
``/v1/cutout/to_black`` (PUT); ``/v1/ids``; ``/v1/boundingbox``; ``/v1/reserve``;
``/v1/downsample``; ``/v1/meta``; ``/metrics``; ``/`` (the index); ``/precomputed/.../info``,
``.../{scale}/{chunk}`` and the layer's files; and HEAD on every GET route.  Cases
tests/relay/test_bad_input.py already has are not repeated here.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc
import numpy as np
import pytest

import voxgate

from .conftest import RO, RW, RelayProcess, free_port, start_relay

IMG_SHAPE = (8, 64, 64)  # z, y, x: uint8, two scales, zarr
SEG_SHAPE = (8, 64, 64)  # uint64 segmentation, precomputed with a mesh directory
RO_SHAPE = (4, 32, 32)  # uint8, a channel configured writable = false
FRAME = {"x_start": 0, "x_stop": 32, "y_start": 0, "y_stop": 32, "z_start": 0, "z_stop": 4,
         "x_voxel_size": 8.0, "y_voxel_size": 8.0, "z_voxel_size": 40.0,
         "voxel_unit": "nanometers"}
JSON = {"Content-Type": "application/json"}


def _img() -> np.ndarray:
    return np.random.default_rng(21).integers(1, 255, IMG_SHAPE, dtype=np.uint8)


def _seg() -> np.ndarray:
    z, y, x = np.indices(SEG_SHAPE)
    return (2**60 + 1 + (z // 4) * 4 + (y // 32) * 2 + x // 32).astype(np.uint64)


SEG_ID = 2**60 + 1


@dataclass
class Sweep:
    relay: RelayProcess
    root: Path
    img: np.ndarray
    img1: np.ndarray
    seg: np.ndarray
    ro: np.ndarray
    baseline: dict[str, Any]


def _upstreams(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    img, seg = _img(), _seg()
    vol = voxgate.create(f"zarr://{root}/img.zarr", shape=IMG_SHAPE, chunks=(8, 32, 32),
                         dtype="uint8", voxel_size=(40, 8, 8), num_scales=2)
    vol[:] = img
    img1 = img[:, ::2, ::2].copy()
    vol.at_scale(1)[:] = img1
    layer = voxgate.create(f"precomputed://file://{root}/seg", shape=SEG_SHAPE,
                           chunks=(8, 32, 32), dtype="uint64", voxel_size=(40, 8, 8),
                           kind="segmentation")
    layer[:] = seg
    info = json.loads((root / "seg" / "info").read_text())
    (root / "seg" / "info").write_text(json.dumps({**info, "mesh": "mesh"}))
    (root / "seg" / "mesh").mkdir()
    (root / "seg" / "mesh" / "info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh"}))
    (root / "seg" / "mesh" / f"{SEG_ID}:0").write_text(json.dumps({"fragments": []}))
    ro = np.full(RO_SHAPE, 3, np.uint8)
    voxgate.create(f"zarr://{root}/ro.zarr", shape=RO_SHAPE, chunks=(4, 32, 32), dtype="uint8",
                   voxel_size=(40, 8, 8))[:] = ro
    return img, img1, seg, ro


def _config(root: Path) -> Path:
    cfg = root / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
upstream_timeout = 5
max_cutout_bytes = "20 KiB"
state_path = "{root / 'state.json'}"
[cache]
memory_bytes = "16 MiB"
[[channel]]
name = "lab/em/img"
upstream = "zarr://{root}/img.zarr"
[[channel]]
name = "lab/em/seg"
upstream = "precomputed://file://{root}/seg"
[[channel]]
name = "lab/ro/img"
upstream = "zarr://{root}/ro.zarr"
writable = false
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write", "{RO}" = "read" }}
""")
    return cfg


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(relay: RelayProcess, method: str, path: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None, token: str | None = RW) -> Reply:
    """One request with the path sent exactly as written (no ``..`` or escape is normalized);
    a relay that does not answer within 10 s fails the test (a hang)."""
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent.setdefault("Authorization", f"Token {token}")
        conn.request(method, path, body=body, headers=sent)
        res = conn.getresponse()
        return Reply(res.status, {k.lower(): v for k, v in res.getheaders()}, res.read())
    finally:
        conn.close()


def _read(relay: RelayProcess, path: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    res = send(relay, "GET", path, headers={"Accept": "application/blosc"})
    assert res.status == 200, (path, res.status, res.body[:300])
    return np.frombuffer(blosc.decompress(res.body), dtype=dtype).reshape(shape)


#: what the project service shows: compared after every refused request
PROJECT = ["/v1/collection/", "/v1/collection/lab", "/v1/collection/lab/experiment/em",
           "/v1/collection/lab/experiment/em/channel/img",
           "/v1/collection/lab/experiment/em/channel/seg", "/v1/collection/proj",
           "/v1/collection/proj/experiment/exp", "/v1/collection/proj/experiment/exp/channel/loc",
           "/v1/coord/", "/v1/coord/pframe", "/v1/coord/lab_em_frame", "/v1/meta/lab/",
           "/v1/meta/lab/?key=k", "/v1/meta/lab/em/img/", "/v1/downsample/lab/em/img/"]


def snapshot(relay: RelayProcess) -> dict[str, Any]:
    """The project service's records and every voxel of every channel, as the relay serves
    them (in pieces under the 20 KiB cutout limit)."""
    out: dict[str, Any] = {}
    for url in PROJECT:
        res = send(relay, "GET", url)
        out[url] = (res.status, res.json())
    out["img"] = np.concatenate([_read(relay, f"/v1/cutout/lab/em/img/0/{x}/0:64/0:8/", np.uint8,
                                       (8, 64, 32)) for x in ("0:32", "32:64")], axis=2)
    out["img1"] = _read(relay, "/v1/cutout/lab/em/img/1/0:32/0:32/0:8/", np.uint8, (8, 32, 32))
    out["seg"] = np.block([[_read(relay, f"/v1/cutout/lab/em/seg/0/{x}/{y}/0:8/", np.uint64,
                                  (8, 32, 32)) for x in ("0:32", "32:64")]
                           for y in ("0:32", "32:64")])
    out["ro"] = _read(relay, "/v1/cutout/lab/ro/img/0/0:32/0:32/0:4/", np.uint8, RO_SHAPE)
    out["loc"] = _read(relay, "/v1/cutout/proj/exp/loc/0/0:32/0:32/0:4/", np.uint8, (4, 32, 32))
    return out


def assert_unchanged(s: Sweep, what: str) -> None:
    """Nothing changed: the upstreams on disk hold what they were made with, and the relay
    serves the baseline (so no refused write reached the cache either)."""
    np.testing.assert_array_equal(voxgate.open(f"zarr://{s.root}/img.zarr")[:, :, :].read(),
                                  s.img, err_msg=what)
    np.testing.assert_array_equal(
        voxgate.open(f"zarr://{s.root}/img.zarr").at_scale(1)[:, :, :].read(), s.img1,
        err_msg=what)
    np.testing.assert_array_equal(
        voxgate.open(f"precomputed://file://{s.root}/seg")[:, :, :].read(), s.seg, err_msg=what)
    np.testing.assert_array_equal(voxgate.open(f"zarr://{s.root}/ro.zarr")[:, :, :].read(),
                                  s.ro, err_msg=what)
    now = snapshot(s.relay)
    for key, value in s.baseline.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(now[key], value, err_msg=f"{what}: {key}")
        else:
            assert now[key] == value, (what, key)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sweep]:
    root = tmp_path_factory.mktemp("sweep")
    img, img1, seg, ro = _upstreams(root)
    relay = start_relay(_config(root), free_port(), "--data-root", str(root / "data"))
    try:
        # a stored project (collection, frame, experiment, channel) and a metadata key: the
        # HEAD and DELETE cases need things that can be deleted
        for method, url, body in (
            ("POST", "/v1/collection/proj", {"description": "p"}),
            ("POST", "/v1/coord/pframe", FRAME),
            ("POST", "/v1/collection/proj/experiment/exp", {"coord_frame": "pframe"}),
            ("POST", "/v1/collection/proj/experiment/exp/channel/loc", {"datatype": "uint8"}),
        ):
            res = send(relay, method, url, body=json.dumps(body).encode(), headers=JSON)
            assert res.status == 201, (url, res.body)
        assert send(relay, "POST", "/v1/meta/lab/?key=k&value=v").status == 201
        loc = np.full((4, 32, 32), 5, np.uint8)
        res = send(relay, "POST", "/v1/cutout/proj/exp/loc/0/0:32/0:32/0:4/",
                   body=bytes(blosc.compress(loc.tobytes(), typesize=1)),
                   headers={"Content-Type": "application/blosc"})
        assert res.status == 201, res.body
        yield Sweep(relay, root, img, img1, seg, ro, snapshot(relay))
    finally:
        relay.stop()


# -- bodies -----------------------------------------------------------------------------------
def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _blosc(arr: np.ndarray) -> bytes:
    return bytes(blosc.compress(np.ascontiguousarray(arr).tobytes(), typesize=arr.dtype.itemsize))


NINES = np.full((2, 8, 16), 9, np.uint8)  # the region 0:16/0:8/0:2 of img, all 9s
NPYGZ = zlib.compress(_npy(NINES))
BLOSC = _blosc(NINES)
SEG_NINES = np.full((2, 8, 16), 9, np.uint64)
BLACK = "/v1/cutout/to_black/lab/em/img/0"
CUT = "/v1/cutout/lab/em/img/0"
SEGCUT = "/v1/cutout/lab/em/seg/0/0:32/0:32/0:8/"
NPYGZ_CT = {"Content-Type": "application/npygz"}
BLOSC_CT = {"Content-Type": "application/blosc"}
DEEP = "/v1/collection/proj/experiment/exp"
LONE = b'{"description": "\\ud800"}'  # a lone surrogate escape: valid JSON syntax, no text


@dataclass(frozen=True)
class Case:
    """A request and the refusal it must get: ``code`` None is a DRF body (``{"detail"}``),
    else a boss body with that code; ``says``: words the message must hold."""

    method: str
    path: str
    status: int
    code: int | None
    says: str = ""
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    token: str | None = RW


def case(method: str, path: str, status: int, code: int | None, says: str = "", *,
         body: bytes | None = None, headers: dict[str, str] | None = None,
         token: str | None = RW, label: str = "") -> Any:
    c = Case(method, path, status, code, says, body, tuple((headers or {}).items()), token)
    name = f"{method} {path} {status}" + (f" {label or says}" if label or says else "")
    return pytest.param(c, id=name)


CASES = [
    # -- ping, index, metrics, unknown paths ------------------------------------------------
    case("POST", "/ping/", 405, None, "not allowed"),
    case("DELETE", "/ping", 405, None, "not allowed"),
    case("GET", "/?format=xml", 400, 1005, "format"),
    case("POST", "/", 405, None, "not allowed"),
    case("POST", "/metrics", 405, None, "not allowed"),
    case("GET", "/metrics", 401, None, "Invalid token", token="wrong"),
    case("GET", "/v1/nope", 404, 4000, "no such endpoint"),
    case("GET", "/nope/", 404, 4000, "no such endpoint"),
    case("GET", "/v1/", 404, 4000, "no such endpoint"),
    # -- collections ------------------------------------------------------------------------
    case("POST", "/v1/collection/", 405, None, "not allowed"),
    case("DELETE", "/v1/collection", 405, None, "not allowed"),
    case("PATCH", "/v1/collection/lab", 405, None, "not allowed"),
    case("GET", "/v1/collection/%C3%A9t%C3%A9", 404, 4000, "does not exist", label="unicode"),
    case("GET", "/v1/collection/..%2F..%2Fetc", 404, 4000, "no such endpoint",
         label="traversal"),
    case("POST", "/v1/collection/%2E%2E", 400, 1003, "name", body=b"{}", headers=JSON),
    case("POST", "/v1/collection/newc", 415, None, "application/json",
         body=b'{"description": "x"}', headers={"Content-Type": "text/plain"}),
    case("POST", "/v1/collection/newc", 415, None, "Unsupported media type",
         body=b"description=x", headers={"Content-Type": "application/x-www-form-urlencoded"}),
    case("POST", "/v1/collection/newc", 400, 1003, "surrogate", body=LONE, headers=JSON),
    case("PUT", "/v1/collection/proj", 400, 1003, "surrogate", body=LONE, headers=JSON),
    case("PUT", "/v1/collection/proj", 415, None, "Unsupported media type",
         body=b'{"description": "x"}', headers={"Content-Type": "application/octet-stream"}),
    case("PUT", "/v1/collection/proj", 403, 3001, "permissions", body=b"{}", headers=JSON,
         token=RO),
    case("DELETE", "/v1/collection/proj", 403, 3001, "permissions", token=RO),
    case("DELETE", "/v1/collection/lab", 400, 4003, "has experiments"),
    case("DELETE", "/v1/collection/nope", 404, 4000, "does not exist"),
    case("GET", "/v1/collection/lab", 401, None, "not provided", token=None),
    # -- experiments ------------------------------------------------------------------------
    case("POST", "/v1/collection/lab/experiment/", 405, None, "not allowed"),
    case("PATCH", DEEP, 405, None, "not allowed"),
    case("GET", "/v1/collection/lab/experiment/%E2%80%AE", 404, 4000, "does not exist"),
    case("GET", "/v1/collection/lab/experiment/", 401, None, "Invalid token", token="wrong"),
    case("POST", "/v1/collection/proj/experiment/new", 415, None, "Unsupported media type",
         body=b'{"coord_frame": "pframe"}', headers={"Content-Type": "text/csv"}),
    case("POST", "/v1/collection/proj/experiment/new", 403, 3001, "permissions",
         body=b'{"coord_frame": "pframe"}', headers=JSON, token=RO),
    case("POST", "/v1/collection/nope/experiment/new", 404, 4000, "does not exist",
         body=b'{"coord_frame": "pframe"}', headers=JSON),
    case("PUT", DEEP, 400, 1003, "surrogate", body=LONE, headers=JSON),
    case("DELETE", DEEP, 400, 4003, "has channels"),
    case("DELETE", DEEP, 403, 3001, "permissions", token=RO),
    # -- channels ---------------------------------------------------------------------------
    case("POST", f"{DEEP}/channel/", 405, None, "not allowed"),
    case("PATCH", f"{DEEP}/channel/loc", 405, None, "not allowed"),
    case("GET", "/v1/collection/lab/experiment/em/channel/%00", 404, 4000, "does not exist"),
    case("POST", f"{DEEP}/channel/new", 415, None, "Unsupported media type",
         body=b'{"datatype": "uint8"}', headers={"Content-Type": "multipart/form-data"}),
    case("POST", f"{DEEP}/channel/new", 400, 1003, "surrogate", body=LONE, headers=JSON),
    case("PUT", f"{DEEP}/channel/loc", 400, 1003, "surrogate", body=LONE, headers=JSON),
    case("PUT", f"{DEEP}/channel/loc", 403, 3001, "permissions", body=b"{}", headers=JSON,
         token=RO),
    case("DELETE", f"{DEEP}/channel/loc", 403, 3001, "permissions", token=RO),
    case("DELETE", "/v1/collection/lab/experiment/em/channel/img", 403, 3001, "configuration"),
    case("DELETE", f"{DEEP}/channel/nope", 404, 4000, "does not exist"),
    # -- coordinate frames ------------------------------------------------------------------
    case("POST", "/v1/coord/", 405, None, "not allowed"),
    case("PATCH", "/v1/coord/pframe", 405, None, "not allowed"),
    case("GET", "/v1/coord/nope", 404, 4000, "does not exist"),
    case("GET", "/v1/coord/pframe", 401, None, "not provided", token=None),
    case("POST", "/v1/coord/newframe", 415, None, "Unsupported media type",
         body=json.dumps(FRAME).encode(), headers={"Content-Type": "text/plain"}),
    case("POST", "/v1/coord/newframe", 400, 1003, "x_start",
         body=json.dumps({**FRAME, "x_start": -1}).encode(), headers=JSON),
    case("POST", "/v1/coord/newframe", 400, 1003, "surrogate",
         body=json.dumps(FRAME).encode()[:-1] + b', "description": "\\udfff"}', headers=JSON),
    case("POST", "/v1/coord/newframe", 403, 3001, "permissions",
         body=json.dumps(FRAME).encode(), headers=JSON, token=RO),
    case("PUT", "/v1/coord/lab_em_frame", 403, 3001, "cannot be changed", body=b"{}",
         headers=JSON),
    case("DELETE", "/v1/coord/lab_em_frame", 403, 3001, "cannot be changed"),
    case("DELETE", "/v1/coord/pframe", 400, 4003, "has experiments"),
    case("DELETE", "/v1/coord/pframe", 403, 3001, "permissions", token=RO),
    # -- cutout GET -------------------------------------------------------------------------
    case("GET", f"{CUT}/0:abc/0:8/0:2/", 400, 1001, "x range"),
    case("GET", f"{CUT}/0:16/0:99999999999/0:2/", 400, 1001, "coordinate frame"),
    case("GET", f"{CUT}/0:16/0:8/0:9999999999999999999/", 400, 1001, "z range"),
    case("GET", f"{CUT}/%D9%A3:5/0:8/0:2/", 400, 1001, "x range", label="arabic digit"),
    case("GET", "/v1/cutout/lab/em/img/%D9%A3/0:16/0:8/0:2/", 400, 1002, "resolution"),
    case("GET", "/v1/cutout/lab/em/img/99999999999999999999/0:16/0:8/0:2/", 400, 1002,
         "resolution"),
    case("GET", f"{CUT}/0:16/0:8/0:2/99999999999999999999999/", 400, 1001, "time"),
    case("GET", f"{CUT}/0:64/0:64/0:8/", 413, 2000, "Reduce cutout dimensions"),
    case("GET", "/v1/cutout/lab/em/%C3%A9/0/0:16/0:8/0:2/", 404, 4000, "not found"),
    case("GET", "/v1/cutout/..%2F/em/img/0/0:16/0:8/0:2/", 404, 4000, "no such endpoint"),
    case("GET", f"{CUT}/0:16/0:8/0:2/", 406, None, "application/blosc",
         headers={"Accept": "image/jpeg"}),
    case("GET", f"{CUT}/0:16/0:8/0:2/?filter=1", 400, 2003, "annotation"),
    case("GET", f"{SEGCUT}?filter=abc", 400, 1001, "filter"),
    case("GET", f"{SEGCUT}?filter=", 400, 1001, "filter"),
    case("GET", f"{SEGCUT}?filter=1,,2", 400, 1001, "filter"),
    case("GET", f"{SEGCUT}?filter=-1", 400, 1001, "filter"),
    case("GET", f"{SEGCUT}?filter={2**64}", 400, 1001, "filter"),
    case("GET", f"{SEGCUT}?filter=1%202", 400, 1001, "filter"),
    case("GET", f"{CUT}/0:16/0:8/0:2/?access-mode=bogus", 400, 1001, "access_mode"),
    case("GET", f"{CUT}/0:16/0:8/0:2/?access-mode=raw&no-cache=true", 400, 1001,
         "specify access_mode"),
    case("PUT", f"{CUT}/0:16/0:8/0:2/", 405, None, "not allowed"),
    case("DELETE", f"{CUT}/0:16/0:8/0:2/", 405, None, "not allowed"),
    case("PATCH", f"{CUT}/0:16/0:8/0:2/", 405, None, "not allowed"),
    # -- cutout POST (writes: compared after each) ------------------------------------------
    case("POST", f"{CUT}/0:abc/0:8/0:2/", 400, 1001, "x range", body=BLOSC, headers=BLOSC_CT),
    case("POST", "/v1/cutout/lab/em/img/2/0:16/0:8/0:2/", 400, 1002, "resolution", body=BLOSC,
         headers=BLOSC_CT),
    case("POST", f"{CUT}/0:16/0:8/0:2/7/", 400, 1000, "time", body=BLOSC, headers=BLOSC_CT),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 400, 2002, "truncated", body=NPYGZ[:-4],
         headers=NPYGZ_CT, label="npygz without its checksum"),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 400, 2002, "truncated", body=NPYGZ[:-1],
         headers=NPYGZ_CT, label="npygz cut by 1 byte"),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 400, 2002, "", body=NPYGZ[: len(NPYGZ) // 2],
         headers=NPYGZ_CT, label="npygz cut in half"),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 400, 2002, "followed by", body=NPYGZ + b"junk",
         headers=NPYGZ_CT, label="npygz trailing garbage"),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 400, 2002, "zlib", body=gzip.compress(_npy(NINES)),
         headers=NPYGZ_CT, label="gzip not zlib"),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 400, 2002, "dimensions",
         body=zlib.compress(_npy(NINES[None])), headers=NPYGZ_CT, label="4-D without time"),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 400, 2001, "float32",
         body=zlib.compress(_npy(NINES.astype(np.float32))), headers=NPYGZ_CT),
    case("POST", "/v1/cutout/lab/em/seg/0/0:16/0:8/0:2/", 400, 2001, ">u8",
         body=zlib.compress(_npy(SEG_NINES.astype(">u8"))), headers=NPYGZ_CT,
         label="big-endian uint64"),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 400, 2001, "decompress", body=BLOSC[:-3],
         headers=BLOSC_CT, label="blosc truncated"),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 400, 2001, "decompress", body=BLOSC + b"xx",
         headers=BLOSC_CT, label="blosc trailing garbage"),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 400, 2002, "", body=BLOSC, headers=NPYGZ_CT,
         label="blosc sent as npygz"),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 400, 2002, "", body=NPYGZ, headers=BLOSC_CT,
         label="npygz sent as blosc"),
    case("POST", f"{CUT}/0:16/0:8/0:2/", 413, 2000, "larger than the region",
         body=b"\0" * 100_000, headers=BLOSC_CT, label="body far over the region"),
    case("POST", "/v1/cutout/lab/ro/img/0/0:16/0:8/0:2/", 403, 3001, "read-only", body=BLOSC,
         headers=BLOSC_CT),
    # -- to_black ---------------------------------------------------------------------------
    case("PUT", f"{BLACK}/0:abc/0:8/0:2/", 400, 1001, "x range"),
    case("PUT", "/v1/cutout/to_black/lab/em/img/5/0:16/0:8/0:2/", 400, 1002, "resolution"),
    case("PUT", f"{BLACK}/0:16/0:8/0:2/7/", 400, 1000, "time"),
    case("PUT", f"{BLACK}/0:16/0:8/0:99999999999/", 400, 1001, "coordinate frame"),
    case("PUT", f"{BLACK}/0:64/0:64/0:8/", 413, 2000, "Reduce cutout dimensions"),
    case("PUT", "/v1/cutout/to_black/lab/ro/img/0/0:16/0:8/0:2/", 403, 3001, "read-only"),
    case("PUT", f"{BLACK}/0:16/0:8/0:2/", 403, 3001, "permissions", token=RO),
    case("GET", f"{BLACK}/0:16/0:8/0:2/", 405, None, "not allowed"),
    case("POST", f"{BLACK}/0:16/0:8/0:2/", 405, None, "not allowed", body=BLOSC,
         headers=BLOSC_CT),
    case("DELETE", f"{BLACK}/0:16/0:8/0:2/0:1/", 405, None, "not allowed"),
    # -- ids --------------------------------------------------------------------------------
    case("GET", "/v1/ids/lab/em/img/0/0:16/0:8/0:2/", 400, 2003, "annotation"),
    case("GET", "/v1/ids/lab/em/seg/0/0:abc/0:8/0:2/", 400, 1001, "x range"),
    case("GET", "/v1/ids/lab/em/seg/3/0:16/0:8/0:2/", 400, 1002, "resolution"),
    case("GET", "/v1/ids/lab/em/seg/0/0:16/0:8/0:2/3/", 400, 1000, "time"),
    # (no 413 on ids: bossDB applies its cutout limit to cutouts only, test_boss_fidelity.py)
    case("POST", "/v1/ids/lab/em/seg/0/0:16/0:8/0:2/", 405, None, "not allowed"),
    # -- bounding boxes ---------------------------------------------------------------------
    case("GET", "/v1/boundingbox/lab/em/seg/0/0/", 400, 1005, "object id"),
    case("GET", "/v1/boundingbox/lab/em/seg/0/abc/", 400, 1005, "integers"),
    case("GET", "/v1/boundingbox/lab/em/seg/-1/5/", 400, 1005, "integers"),
    case("GET", "/v1/boundingbox/lab/em/seg/9/5/", 400, 1002, "resolution"),
    case("GET", f"/v1/boundingbox/lab/em/seg/0/{SEG_ID}/?type=nope", 400, 1005, "loose"),
    case("GET", "/v1/boundingbox/lab/em/seg/0/12345/", 404, 4004, "does not exist"),
    case("GET", "/v1/boundingbox/lab/em/img/0/5/", 400, 2003, "annotation"),
    case("POST", f"/v1/boundingbox/lab/em/seg/0/{SEG_ID}/", 405, None, "not allowed"),
    # -- reserve (a write: the next id may not move) ----------------------------------------
    case("GET", "/v1/reserve/lab/em/seg/0", 400, 1005, "between 1 and"),
    case("GET", "/v1/reserve/lab/em/seg/-1", 400, 1005, "positive integer"),
    case("GET", "/v1/reserve/lab/em/seg/abc", 400, 1005, "positive integer"),
    case("GET", f"/v1/reserve/lab/em/seg/{2**40 + 1}", 400, 1005, "between 1 and"),
    case("GET", "/v1/reserve/lab/em/seg/99999999999999999999", 400, 1005, "positive integer"),
    case("GET", "/v1/reserve/lab/em/img/10", 400, 2003, "annotation"),
    case("POST", "/v1/reserve/lab/em/seg/10", 405, None, "not allowed"),
    # -- downsample -------------------------------------------------------------------------
    case("PUT", "/v1/downsample/lab/em/img/", 405, None, "not allowed"),
    case("GET", "/v1/downsample/lab/em/nope/", 404, 4000, "not found"),
    case("POST", "/v1/downsample/lab/em/img/", 403, 3001, "permissions", token=RO),
    case("POST", "/v1/downsample/lab/ro/img/", 403, 3001, "read-only"),
    case("POST", "/v1/downsample/lab/em/seg/", 409, 2006, "one resolution level"),
    case("DELETE", "/v1/downsample/lab/em/img/", 409, 2006, "only cancel"),
    # -- metadata ---------------------------------------------------------------------------
    case("POST", "/v1/meta/lab/?key=&value=x", 400, 1003, "argument key", label="empty key"),
    case("POST", "/v1/meta/lab/?value=x", 400, 1003, "argument key"),
    case("POST", "/v1/meta/lab/?key=new", 400, 1003, "argument key/value"),
    case("POST", "/v1/meta/lab/?key=k&value=other", 400, 1003, "already exists"),
    case("PUT", "/v1/meta/lab/?key=nope&value=x", 400, 1003, "does not exists"),
    case("PUT", "/v1/meta/lab/?key=&value=x", 400, 1003, "argument key", label="empty key"),
    case("DELETE", "/v1/meta/lab/?key=nope", 400, 1003, "Not found"),
    case("DELETE", "/v1/meta/lab/?key=", 400, 1003, "argument key", label="empty key"),
    case("GET", "/v1/meta/lab/?key=nope", 400, 1003, "Not found"),
    case("PUT", "/v1/meta/lab/?key=k&value=x", 403, 3001, "permissions", token=RO),
    case("DELETE", "/v1/meta/lab/?key=k", 403, 3001, "permissions", token=RO),
    case("GET", "/v1/meta/nope/", 404, 4000, "not found"),
    case("GET", "/v1/meta/lab/em/nope/", 404, 4000, "not found"),
    case("POST", "/v1/meta/lab/nope/?key=a&value=b", 404, 4000, "not found"),
    case("PATCH", "/v1/meta/lab/", 405, None, "not allowed"),
    case("GET", "/v1/meta/lab/em/img/", 401, None, "not provided", token=None),
    # -- precomputed: info, chunks, files ---------------------------------------------------
    case("POST", "/precomputed/lab/em/img/info", 405, None, "not allowed"),
    case("GET", "/precomputed/lab/em/%C3%A9/info", 404, 4000, "not found"),
    case("GET", "/precomputed/..%2F..%2Fetc/em/img/info", 404, 4000, "not found"),
    case("PUT", "/precomputed/lab/em/img/s0/0-32_0-32_0-8", 405, None, "not allowed"),
    case("GET", "/precomputed/lab/em/img/s0/0-32_0-32_0-99999999999", 404, 4000, "outside"),
    case("GET", "/precomputed/lab/em/img/s0/0-32_0-32_0-9999999999999999999", 400, 1001,
         "is not x0-x1"),
    case("GET", "/precomputed/lab/em/img/s%D9%A3/0-32_0-32_0-8", 404, 4000, "no scale"),
    case("GET", "/precomputed/lab/em/img/mesh/info", 404, 4000, "not a precomputed layer"),
    case("GET", "/precomputed/lab/em/seg/mesh%2Finfo", 400, 1000, "encoded slashes"),
    case("GET", "/precomputed/lab/em/seg/mesh/info%00", 400, 1000, "NUL"),
    case("GET", "/precomputed/lab/em/seg/mesh/nope", 404, 4000, "no file"),
    case("GET", "/precomputed/lab/em/seg/mesh/info", 416, 1001, "end of the file",
         headers={"Range": "bytes=99999999999-"}),
    case("GET", "/precomputed/lab/em/seg/mesh/info", 416, 1001, "one byte range",
         headers={"Range": "bytes=0-99999999999999999999"}),
    case("DELETE", "/precomputed/lab/em/seg/mesh/info", 405, None, "not allowed"),
    case("GET", "/precomputed/lab/em/seg/mesh/info", 401, None, "Invalid token",
         token="wrong"),
]


@pytest.mark.parametrize("c", CASES)
def test_bad_input_is_refused(sweep: Sweep, c: Case) -> None:
    res = send(sweep.relay, c.method, c.path, body=c.body, headers=dict(c.headers),
               token=c.token)
    assert res.status == c.status, (res.status, res.body[:400])
    assert res.headers.get("content-type", "").startswith("application/json"), res.headers
    doc = res.json()
    if c.code is None:
        assert set(doc) == {"detail"}, doc
        message = doc["detail"]
    else:
        assert set(doc) == {"status", "code", "message"}, doc
        assert (doc["status"], doc["code"]) == (c.status, c.code), doc
        message = doc["message"]
    assert isinstance(message, str) and message.strip(), doc
    assert c.says.lower() in message.lower(), (c.says, message)
    if c.method != "GET" or "/reserve/" in c.path:
        assert_unchanged(sweep, f"{c.method} {c.path}")


# -- metadata keys: bossDB's DynamoDB limit (a sort key of at most 1024 bytes) ----------------
@pytest.mark.parametrize(("method", "key", "value", "says"), [
    pytest.param("POST", "k" * 1025, "x", "at most 1024 bytes", id="POST key of 1025 bytes"),
    pytest.param("POST", "%C3%A9" * 513, "x", "got one of 1026", id="POST key of 513 x 2 bytes"),
    pytest.param("GET", "k" * 1025, None, "at most 1024 bytes", id="GET key of 1025 bytes"),
    pytest.param("DELETE", "k" * 1025, None, "at most 1024 bytes", id="DELETE key of 1025"),
    pytest.param("PUT", "k" * 1025, "x", "at most 1024 bytes", id="PUT key of 1025 bytes"),
])
def test_metadata_keys_have_bossdbs_limit(sweep: Sweep, method: str, key: str,
                                          value: str | None, says: str) -> None:
    path = f"/v1/meta/lab/?key={key}" + ("" if value is None else f"&value={value}")
    res = send(sweep.relay, method, path)
    assert res.status == 400, (res.status, res.body[:400])
    doc = res.json()
    assert (doc["code"], says in doc["message"]) == (1003, True), doc["message"][:400]
    assert len(doc["message"]) < 200  # the key is not echoed back whole
    assert_unchanged(sweep, f"{method} {path[:60]}")


def test_a_metadata_key_at_bossdbs_limit_is_kept(sweep: Sweep) -> None:
    key, value = "k" * 1022 + "%C3%A9", "v" * 60_000  # 1024 bytes; a value of 60 KB
    assert send(sweep.relay, "POST", f"/v1/meta/lab/?key={key}&value={value}").status == 201
    res = send(sweep.relay, "GET", f"/v1/meta/lab/?key={key}")
    assert res.status == 200 and res.json() == {"key": "k" * 1022 + "é", "value": value}
    assert send(sweep.relay, "DELETE", f"/v1/meta/lab/?key={key}").status == 204
    assert_unchanged(sweep, "POST and DELETE of a key at the limit")


# -- HEAD is a GET: it used to run the handler's write branch (a DELETE) ----------------------
HEADS = ["/v1/collection/proj", DEEP, f"{DEEP}/channel/loc", "/v1/coord/pframe",
         "/v1/meta/lab/?key=k", "/v1/cutout/lab/em/img/0/0:16/0:8/0:2/",
         "/v1/downsample/lab/em/img/"]


@pytest.mark.parametrize("path", HEADS)
@pytest.mark.parametrize("token", [RW, RO])
def test_head_reads_and_changes_nothing(sweep: Sweep, path: str, token: str) -> None:
    res = send(sweep.relay, "HEAD", path, token=token)
    assert res.status == 200 and res.body == b"", (res.status, res.headers)
    assert send(sweep.relay, "GET", path, token=token).status == 200
    assert_unchanged(sweep, f"HEAD {path}")


def test_head_of_to_black_is_not_allowed(sweep: Sweep) -> None:
    res = send(sweep.relay, "HEAD", f"{BLACK}/0:16/0:8/0:2/")
    assert res.status == 405
    assert_unchanged(sweep, "HEAD to_black")


# -- what the fixes serve ---------------------------------------------------------------------
def test_filter_keeps_only_the_listed_ids(sweep: Sweep) -> None:
    """``?filter=`` (intern's ``id_list``) was ignored: the whole cutout came back."""
    whole = sweep.seg[:, :32, :32]
    ids = [int(np.unique(whole)[0]), 2**64 - 1]  # one that is there, one in no voxel
    url = f"{SEGCUT}?filter={','.join(map(str, ids))}&access-mode=no-cache"
    got = _read(sweep.relay, url, np.uint64, whole.shape)
    keep = np.isin(whole, np.array(ids, dtype=np.uint64))  # (a list of ints may go by float)
    np.testing.assert_array_equal(got, np.where(keep, whole, np.uint64(0)))
    assert 0 < np.count_nonzero(got) < got.size
    filtered = send(sweep.relay, "GET", url).headers["etag"]
    assert filtered != send(sweep.relay, "GET", SEGCUT).headers["etag"]
    # and the unfiltered cutout is still whole (the cached cell was not filtered in place)
    np.testing.assert_array_equal(_read(sweep.relay, SEGCUT, np.uint64, whole.shape), whole)


def test_relay_is_healthy_after_the_sweep(sweep: Sweep) -> None:
    assert sweep.relay.proc.poll() is None
    assert send(sweep.relay, "GET", "/ping/").status == 200
    assert send(sweep.relay, "GET", "/metrics").status == 200
    assert_unchanged(sweep, "after the sweep")
    # a good write still lands, and is read back; then the data is put back
    url = f"{CUT}/0:16/0:8/0:2/"
    res = send(sweep.relay, "POST", url, body=NPYGZ, headers=NPYGZ_CT)
    assert res.status == 201, res.body
    np.testing.assert_array_equal(_read(sweep.relay, url, np.uint8, NINES.shape), NINES)
    res = send(sweep.relay, "POST", url, body=_blosc(sweep.img[0:2, 0:8, 0:16]),
               headers=BLOSC_CT)
    assert res.status == 201, res.body
    # no request of the sweep was a bug the relay logged (a 500 or worse)
    log = sweep.relay.log.read_text(errors="replace")
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
