"""Servers that answer garbage: every HTTP-speaking Remote refuses it with a voxgate error.

A proxy on 127.0.0.1 stands in front of a real server (a voxgate relay speaking bossDB, the
DVID test server, a static file server holding precomputed / zarr / N5 volumes) and replaces
the answer to one request with garbage: an HTML page with status 200 (a proxy's or a login
page), JSON of the wrong shape (a list, null, a number, an empty object, every member a
string or null), JSON cut in half or followed by more, an empty body, a huge body, bytes
that are no JSON, chunk bodies that do not decode or have the wrong length.  Each must come
out of ``voxgate.open(url).read()`` as a VoxgateError of the right kind whose message names
the server's address, and out of ``voxgate info`` / ``voxgate cp`` as exit status 1 with one
``Error:`` line and no traceback.  A wrong Content-Type on a good body is read as the body.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

import voxgate
from tests.garbage_proxy import (
    CHUNK_GARBAGE,
    JSON_GARBAGE,
    GarbageProxy,
    dvid_behind_proxy,
    garbage,
)
from tests.relay.conftest import free_port, start_relay
from tests.static_http import serve_directory
from voxgate.cli import main
from voxgate.errors import (
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    VoxgateError,
    VoxgateWarning,
)

SHAPE = (20, 30, 40)
DATA = (np.arange(np.prod(SHAPE)) % 251).astype(np.uint8).reshape(SHAPE)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GarbageProxy]:
    """Precomputed, zarr v3 and a two-scale N5 group, served by a static server behind the
    proxy."""
    root = tmp_path_factory.mktemp("garbage_files")
    for url in (f"precomputed://file://{root}/raw", f"zarr://{root}/a.zarr",
                f"n5://{root}/a.n5"):
        vol = voxgate.create(url, shape=SHAPE, chunks=(16, 16, 16), dtype="uint8",
                             voxel_size=(40, 8, 8), num_scales=2)
        vol[:] = DATA
    with serve_directory(root) as base:
        proxy = GarbageProxy(base)
        yield proxy
        proxy.close()


@pytest.fixture(scope="module")
def boss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GarbageProxy]:
    """A voxgate relay (the bossDB REST dialect) over a zarr volume, behind the proxy."""
    root = tmp_path_factory.mktemp("garbage_boss")
    voxgate.create(f"zarr://{root}/a.zarr", shape=SHAPE, chunks=(16, 16, 16), dtype="uint8",
                   voxel_size=(40, 8, 8))[:] = DATA
    cfg = root / "relay.toml"
    cfg.write_text(f'[server]\nhost = "127.0.0.1"\nstate_path = "{root / "state.json"}"\n'
                   f'[[channel]]\nname = "lab/em/raw"\nupstream = "zarr://{root}/a.zarr"\n')
    relay = start_relay(cfg, free_port())
    proxy = GarbageProxy(relay.url)
    try:
        yield proxy
    finally:
        proxy.close()
        relay.stop()


@pytest.fixture(scope="module")
def dvid() -> Iterator[tuple[GarbageProxy, str]]:
    """The DVID test server with a uint8blk instance, behind the proxy; also the root UUID."""
    with dvid_behind_proxy("garbage", gray="uint8blk") as (proxy, repo):
        voxgate.open(repo.url("gray"), mode="r+")[0:20, 0:30, 0:40] = DATA
        yield proxy, repo.root


def _url(scheme: str, proxy: GarbageProxy, root: str = "") -> str:
    return {"precomputed": f"precomputed://{proxy.url}/raw",
            "zarr": f"zarr://{proxy.url}/a.zarr",
            "n5": f"n5://{proxy.url}/a.n5",
            "bossdb": f"bossdb://{proxy.url}/lab/em/raw",
            "dvid": f"dvid://{proxy.url}/{root[:8]}/gray"}[scheme]


def _refused(url: str, proxy: GarbageProxy, pattern: str, kind: str) -> VoxgateError:
    """The error of opening and reading ``url`` while ``pattern``'s answers are garbage."""
    with (proxy.answering(pattern, garbage(kind), must_match=False),
          pytest.raises(VoxgateError) as info):
        voxgate.open(url).read()
    exc = info.value
    assert proxy.address in str(exc), f"the message does not name the server: {exc}"
    return exc


def _one_error(res: Result, address: str) -> str:
    """The command failed with status 1 and one ``Error:`` line naming ``address``."""
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.output
    assert address in errors[0], errors[0]
    return errors[0]


# -- bossDB: the project service's records -----------------------------------------------------
BOSS_RECORDS = {"experiment": r"/v1/collection/lab/experiment/em$",
                "channel": r"/v1/collection/lab/experiment/em/channel/raw$",
                "frame": r"/v1/coord/lab_em_frame$"}


@pytest.mark.parametrize("record", sorted(BOSS_RECORDS))
@pytest.mark.parametrize("kind", JSON_GARBAGE)
def test_bossdb_record_garbage_is_a_voxgate_error(boss: GarbageProxy, record: str,
                                                  kind: str) -> None:
    # (before: JSONDecodeError, UnicodeDecodeError, KeyError 'coord_frame' / 'z_start',
    # TypeError "'NoneType' object is not iterable", ValueError "invalid literal for int()")
    exc = _refused(_url("bossdb", boss), boss, BOSS_RECORDS[record], kind)
    if kind == "strings" and record == "experiment":
        # its coord_frame is "x": a frame the server does not have
        assert isinstance(exc, RemoteNotFoundError), repr(exc)
        assert "coordinate frame 'x'" in str(exc)
        return
    assert isinstance(exc, CorruptChunkError), repr(exc)
    if kind == "html":
        assert "an HTML page titled 'Sign in'" in str(exc), str(exc)
    if kind in ("list", "null", "number"):
        assert "where a JSON object was expected" in str(exc), str(exc)


def test_bossdb_record_missing_member_is_named(boss: GarbageProxy) -> None:
    exc = _refused(_url("bossdb", boss), boss, BOSS_RECORDS["frame"], "emptyobj")
    assert "the member 'z_start' is missing" in str(exc), str(exc)
    assert str(exc).startswith(_url("bossdb", boss)), str(exc)


@pytest.mark.parametrize("kind", CHUNK_GARBAGE)
def test_bossdb_cutout_garbage_is_corrupt(boss: GarbageProxy, kind: str) -> None:
    exc = _refused(_url("bossdb", boss), boss, r"/v1/cutout/", kind)
    assert isinstance(exc, CorruptChunkError), repr(exc)


# -- DVID: the repo info and the voxels -----------------------------------------------------------
@pytest.mark.parametrize("kind", JSON_GARBAGE)
def test_dvid_repo_info_garbage_is_a_voxgate_error(dvid: tuple[GarbageProxy, str],
                                                   kind: str) -> None:
    # (before: JSONDecodeError, KeyError 'Root', TypeError "'int' object is not iterable")
    proxy, root = dvid
    exc = _refused(_url("dvid", proxy, root), proxy, r"/api/repo/[0-9a-f]+/info$", kind)
    if kind in ("strings", "nulls"):
        # every member "x" / null: an instance of type "x" / None, refused as such
        assert isinstance(exc, (CorruptChunkError, VoxgateError)), repr(exc)
        return
    assert isinstance(exc, CorruptChunkError), repr(exc)
    if kind == "empty":
        assert "an empty body" in str(exc), str(exc)


@pytest.mark.parametrize("kind", CHUNK_GARBAGE)
def test_dvid_voxel_garbage_is_corrupt(dvid: tuple[GarbageProxy, str], kind: str) -> None:
    proxy, root = dvid
    exc = _refused(_url("dvid", proxy, root), proxy, r"/gray/raw/", kind)
    assert isinstance(exc, CorruptChunkError), repr(exc)


# -- precomputed, zarr, N5 over http -----------------------------------------------------------
FILE_METADATA = {"precomputed": r"/raw/info$", "zarr": r"/a\.zarr/zarr\.json$",
                 "n5": r"/a\.n5/s0/attributes\.json$"}
FILE_CHUNK = {"precomputed": r"/raw/8_8_40/0-16_0-16_0-16$", "zarr": r"/a\.zarr/0/c/0/0/0$",
              "n5": r"/a\.n5/s0/0/0/0$"}


@pytest.mark.parametrize("scheme", sorted(FILE_METADATA))
@pytest.mark.parametrize("kind", JSON_GARBAGE)
def test_file_metadata_garbage_is_a_voxgate_error(files: GarbageProxy, scheme: str,
                                                  kind: str) -> None:
    # (before: an N5 scale whose attributes.json is a list, null or a number raised
    # AttributeError "'list' object has no attribute 'get'")
    exc = _refused(_url(scheme, files), files, FILE_METADATA[scheme], kind)
    assert isinstance(exc, (CorruptChunkError, InvalidRequestError)), repr(exc)


def test_n5_group_kind_garbage_names_the_file(files: GarbageProxy) -> None:
    # (before: "kind must be 'image' or 'segmentation', got 'x'", naming nothing; the garbled
    # pixelResolution and resolution, every string "x", are named in warnings first)
    with pytest.warns(VoxgateWarning, match=r"attributes\.json '(pixelR|r)esolution'.*ignored"):
        exc = _refused(_url("n5", files), files, r"/a\.n5/attributes\.json$", "strings")
    assert isinstance(exc, InvalidRequestError), repr(exc)
    assert f"{files.url}/a.n5/attributes.json" in str(exc), str(exc)


@pytest.mark.parametrize("scheme", sorted(FILE_CHUNK))
@pytest.mark.parametrize("kind", CHUNK_GARBAGE)
def test_file_chunk_garbage_is_corrupt(files: GarbageProxy, scheme: str, kind: str) -> None:
    exc = _refused(_url(scheme, files), files, FILE_CHUNK[scheme], kind)
    assert isinstance(exc, CorruptChunkError), repr(exc)


@pytest.mark.parametrize("scheme", ["precomputed", "zarr", "n5", "bossdb", "dvid"])
def test_a_wrong_content_type_is_read_as_the_body(files: GarbageProxy, boss: GarbageProxy,
                                                  dvid: tuple[GarbageProxy, str],
                                                  scheme: str) -> None:
    proxy, root = {"bossdb": (boss, ""), "dvid": dvid}.get(scheme, (files, ""))
    with proxy.answering(r".", garbage("ctype"), must_match=False):
        got = voxgate.open(_url(scheme, proxy, root))[0:20, 0:30, 0:40]
    np.testing.assert_array_equal(got, DATA)


# -- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["info", "cp"])
@pytest.mark.parametrize("case", ["bossdb-html", "bossdb-list", "dvid-truncated", "n5-null"])
def test_cli_says_one_error_line(files: GarbageProxy, boss: GarbageProxy,
                                 dvid: tuple[GarbageProxy, str], tmp_path: Path,
                                 command: str, case: str) -> None:
    scheme, kind = case.split("-")
    proxy, root = {"bossdb": (boss, ""), "dvid": dvid}.get(scheme, (files, ""))
    pattern = {"bossdb": BOSS_RECORDS["channel"], "dvid": r"/api/repo/[0-9a-f]+/info$",
               "n5": FILE_METADATA["n5"]}[scheme]
    url = _url(scheme, proxy, root)
    argv = ["info", url] if command == "info" else ["cp", url, f"zarr://{tmp_path}/out.zarr",
                                                     "--no-progress"]
    with proxy.answering(pattern, garbage(kind), must_match=False):
        res = CliRunner().invoke(main, argv)
    _one_error(res, proxy.address)


def test_cli_info_bossdb_html_in_a_real_process(boss: GarbageProxy) -> None:
    # what was seen: `voxgate info bossdb://http://HOST/...` against a server answering HTML
    # printed a JSONDecodeError traceback
    exe = Path(sys.executable).with_name("voxgate")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "voxgate.cli"]
    with boss.answering(BOSS_RECORDS["channel"], garbage("html"), must_match=False):
        proc = subprocess.run([*cmd, "info", _url("bossdb", boss)], capture_output=True,
                              text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: CorruptChunkError"), proc.stderr
    assert boss.address in lines[0] and "HTML page" in lines[0], lines[0]


# -- a server that cannot be reached: its address said once -------------------------------------
@pytest.mark.parametrize("scheme", ["precomputed", "zarr", "n5"])
def test_unreachable_server_is_named_once(scheme: str) -> None:
    # (before: "reading info of http://H/layer: http://H/layer could not be reached")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    location = f"http://127.0.0.1:{port}/vol"
    with pytest.raises(RemoteUnavailableError) as info:
        voxgate.open(f"{scheme}://{location}")
    message = str(info.value)
    assert "could not be reached" in message, message
    assert message.count(location) == 1, message
