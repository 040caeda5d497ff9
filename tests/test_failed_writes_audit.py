"""A failed write leaves the store as it was, or says exactly which chunks changed.

Faults are real: a chunk file the filesystem will not let anyone replace (``chattr +i``, which
refuses even root, as a read-only mount or a file locked by another system would), an S3
server on 127.0.0.1 (moto) behind a proxy that refuses the Nth PUT, and ENOSPC from the
operating system's write.  After each failure the store is read back and compared with numpy:
it must hold the old data, plus the new data in exactly the regions the error lists as
written (a :class:`PartialWriteError`), and nothing else.
"""

from __future__ import annotations

import errno
import http.client
import http.server
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.transfer
from voxgate.errors import PartialWriteError, VoxgateError
from voxgate.geometry import Box
from voxgate.volume import writing

SHAPE, CHUNKS = (32, 32, 64), (16, 16, 16)
WHOLE = Box((0, 0, 0), SHAPE)
#: files that hold metadata, not chunks
_META = {"zarr.json", ".zarray", ".zattrs", ".zgroup", "attributes.json", "info", "provenance",
         "datasource-properties.json", "knossos.k.toml"}

#: scheme, create options, dtype: every local store whose chunks are files of their own
STORES: dict[str, tuple[str, dict[str, Any], str]] = {
    "zarr2": ("zarr", {"zarr_format": 2}, "uint8"),
    "zarr3": ("zarr", {"zarr_format": 3}, "uint16"),
    "zarr3-sharded": ("zarr", {"zarr_format": 3, "shards": (32, 32, 32)}, "uint8"),
    "n5": ("n5", {}, "uint8"),
    "precomputed-raw": ("precomputed", {}, "uint8"),
    "precomputed-cseg": ("precomputed", {"kind": "segmentation"}, "uint64"),
    "precomputed-sharded": ("precomputed", {"sharded": True}, "uint8"),
    "webknossos": ("webknossos", {}, "uint8"),
}


def _pair(dtype: str, shape: tuple[int, ...] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Old and new data that differ in every voxel."""
    rng = np.random.default_rng(7)
    old = rng.integers(1, 200, shape).astype(dtype)
    return old, (old + 1).astype(dtype)


def _chunk_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _META
                  and not p.name.startswith(".") and not p.name.endswith((".lock", ".json")))


@contextmanager
def _immutable(path: Path) -> Iterator[None]:
    """``path`` can be neither replaced nor changed (by root either) while inside."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem does not take chattr +i: {done.stderr.decode()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def _check_stored(url: str, err: BaseException, old: np.ndarray, new: np.ndarray,
                  box: Box = WHOLE) -> list[Box]:
    """The store holds ``old`` plus ``new`` in exactly what ``err`` lists as written (nothing
    when it is not a PartialWriteError); the written and failed boxes tile ``box`` once.
    Returns the written boxes."""
    assert isinstance(err, VoxgateError), f"{type(err).__name__}: {err}"
    expect = old.copy()
    written: list[Box] = []
    if isinstance(err, PartialWriteError):
        written = list(err.written)
        seen = np.zeros(tuple(box.shape), np.uint8)
        for b in [*err.written, *err.failed]:
            assert isinstance(b, Box) and box.contains(b)
            seen[b.slices(box.start)] += 1
        assert (seen == 1).all(), "written and failed must tile the written box once"
        for b in written:
            expect[b.slices()] = new[b.slices()]
    got = voxgate.open(url).read()
    np.testing.assert_array_equal(got, expect)
    return written


# -- local stores: one chunk cannot be replaced ---------------------------------------------------
@pytest.mark.parametrize("store", list(STORES))
def test_a_write_of_one_block_that_fails_half_way_says_which_chunks_it_stored(
        tmp_path: Path, store: str) -> None:
    """The whole volume is one write block (a few KiB): the old code called the Remote once
    and let its error out as it was, with most chunks already replaced and no word of them."""
    scheme, options, dtype = STORES[store]
    url = f"{scheme}://{tmp_path}/v"
    vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype=dtype, voxel_size=(1, 1, 1),
                         **options)
    old, new = _pair(dtype)
    vol[:] = old
    files = _chunk_files(tmp_path / "v")
    assert files
    with _immutable(files[len(files) // 2]), pytest.raises(VoxgateError) as info:
        vol.write(new, workers=1)
    written = _check_stored(url, info.value, old, new)
    if len(files) > 1:  # (a single shard is refused whole: the store is as it was)
        assert isinstance(info.value, PartialWriteError)
        assert written and info.value.failed
        assert "were stored" in str(info.value)


@pytest.mark.parametrize("store", ["zarr3", "precomputed-cseg", "n5"])
def test_a_write_of_many_blocks_lists_the_chunks_a_failed_block_stored(
        tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 4 chunks: the block holding the chunk that cannot be replaced stored its other
    3; the old code listed that block as failed only, as if none of it had changed."""
    scheme, options, dtype = STORES[store]
    url = f"{scheme}://{tmp_path}/v"
    vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype=dtype, voxel_size=(1, 1, 1),
                         **options)
    old, new = _pair(dtype)
    vol[:] = old
    monkeypatch.setattr(writing, "WRITE_BLOCK_BYTES", 4 * 16**3 * np.dtype(dtype).itemsize)
    files = _chunk_files(tmp_path / "v")
    with _immutable(files[0]), pytest.raises(PartialWriteError) as info:
        vol.write(new, workers=1)
    written = _check_stored(url, info.value, old, new)
    # the failed block was the first: of it 3 chunks were stored, one was not
    assert len(info.value.failed) >= 1
    assert any(b.size == 16**3 for b in written)


def test_a_store_read_with_missing_error_still_tells_what_was_stored(tmp_path: Path) -> None:
    """missing="error" volumes: the chunks read back to tell what a failed write stored may be
    absent (never written); those were not stored, and that is no reason to give up."""
    url = f"zarr://{tmp_path}/v"
    vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype="uint8", voxel_size=(1, 1, 1))
    old, new = _pair("uint8")
    vol[:, :, :32] = old[:, :, :32]  # the chunks of x >= 32 stay absent
    files = _chunk_files(tmp_path / "v")
    strict = voxgate.open(url, mode="r+", missing="error")
    with _immutable(files[0]), pytest.raises(PartialWriteError) as info:
        strict.write(new, workers=1)
    expect = old.copy()
    expect[:, :, 32:] = 0
    _check_stored(url, info.value, expect, new)
    assert info.value.written


def test_no_chunk_of_a_failed_write_lands_after_the_error(tmp_path: Path) -> None:
    """tensorstore's write future fails at the first chunk that fails while the writebacks of
    the others go on: with the old code, chunk files still changed after the error was raised
    (in about half the tries), so no answer about what was stored could be right.  Tried 10
    times; each time the chunk files must not change once the error is out."""
    url = f"zarr://{tmp_path}/v"
    shape = (16, 16, 256)
    for _ in range(10):
        vol = voxgate.create(url, shape=shape, chunks=CHUNKS, dtype="uint64",
                             voxel_size=(1, 1, 1), exist_ok=True)
        old, new = _pair("uint64", shape)
        vol[:] = old
        files = _chunk_files(tmp_path / "v")
        with _immutable(files[0]):
            with pytest.raises(VoxgateError) as info:
                vol.write(new, workers=1)
            at_error = {f: f.read_bytes() for f in files}
            time.sleep(0.2)  # (time for a stray writeback to land, were there one)
            later = {f: f.read_bytes() for f in files}
        assert [f.name for f in files if later[f] != at_error[f]] == []
        _check_stored(url, info.value, old, new, Box((0, 0, 0), shape))


# -- the operating system says the disk is full ---------------------------------------------------
def test_knossos_disk_full_on_the_second_cube(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """KNOSSOS writes its cubes one by one in Python: the old code let the second cube's
    OSError out bare (not a voxgate error) with the first cube already replaced."""
    url = f"knossos://{tmp_path}/k"
    shape = (256, 128, 128)
    vol = voxgate.create(url, shape=shape, chunks=(128, 128, 128), dtype="uint8",
                         voxel_size=(1, 1, 1))
    old, new = _pair("uint8", shape)
    vol[:] = old
    real, calls = os.fdopen, []

    class Full:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd: int, *args: Any, **kw: Any) -> Any:
        calls.append(fd)
        f = real(fd, *args, **kw)
        return Full(f) if len(calls) == 2 else f

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(VoxgateError) as info:
        vol.write(new, workers=1)
    monkeypatch.setattr(os, "fdopen", real)
    written = _check_stored(url, info.value, old, new, Box((0, 0, 0), shape))
    assert len(written) == 1 and "No space left" in str(info.value)


# -- S3 (moto on 127.0.0.1) behind a proxy that refuses PUTs after the second ------------------
@contextmanager
def _put_refusing_proxy(target: str, allowed: int) -> Iterator[tuple[str, list[str]]]:
    """An HTTP proxy to ``target`` that passes every request as it came (the Host header too:
    the S3 signature covers it) but answers 403 to each PUT after the first ``allowed``."""
    host, port = target.removeprefix("http://").split(":")
    seen: list[str] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _do(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                seen.append(f"{self.command} {self.path}")
                refuse = self.command == "PUT" and sum(
                    r.startswith("PUT ") for r in seen) > allowed
            if refuse:
                out, status, headers = b"<Error><Code>AccessDenied</Code></Error>", 403, []
            else:
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                out, status = resp.read(), resp.status
                headers = [(k, v) for k, v in resp.getheaders()
                           if k.lower() not in ("content-length", "transfer-encoding",
                                                "connection")]
                conn.close()
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _do

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("store", ["zarr3", "precomputed-raw"])
def test_s3_puts_refused_half_way(store: str, s3_bucket: str, s3_server: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    scheme, options, dtype = STORES[store]
    url = f"{scheme}://s3://{s3_bucket}/v"
    vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype=dtype, voxel_size=(1, 1, 1),
                         **options)
    old, new = _pair(dtype)
    vol[:] = old
    with _put_refusing_proxy(s3_server, allowed=2) as (proxy, seen):
        monkeypatch.setenv("VOXGATE_S3_ENDPOINT", proxy)
        through = voxgate.open(url, mode="r+")
        with pytest.raises(VoxgateError) as info:
            through.write(new, workers=1)
        # (the chunks are read back through the proxy too: GETs are passed)
    monkeypatch.setenv("VOXGATE_S3_ENDPOINT", s3_server)
    assert sum(r.startswith("PUT ") for r in seen) > 2
    written = _check_stored(url, info.value, old, new)
    assert isinstance(info.value, PartialWriteError) and len(written) == 2


# -- copy into a destination that fails -----------------------------------------------------------
def test_copy_into_a_chunk_that_cannot_be_replaced_is_not_journalled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy block of several chunks fails on one of them: the journal must not list the
    block (a rerun would skip it, leaving the old chunk), and the rerun finishes the copy."""
    src = f"zarr://{tmp_path}/src"
    dst = f"zarr://{tmp_path}/dst"
    old, new = _pair("uint8")
    voxgate.create(src, shape=SHAPE, chunks=CHUNKS, dtype="uint8", voxel_size=(1, 1, 1))[:] = new
    target = voxgate.create(dst, shape=SHAPE, chunks=CHUNKS, dtype="uint8",
                            voxel_size=(1, 1, 1))
    target[:] = old
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 8 * 16**3)  # blocks of 8 chunks
    files = _chunk_files(tmp_path / "dst")
    with _immutable(files[-1]), pytest.raises(PartialWriteError) as info:
        voxgate.copy(src, dst, workers=1, progress=False, retries=0)
    err = info.value
    assert err.failed
    got = voxgate.open(dst).read()
    for b in err.written:
        np.testing.assert_array_equal(got[b.slices()], new[b.slices()])
    report = voxgate.copy(src, dst, workers=1, progress=False)
    assert report.resumed and report.blocks_written == len(err.failed)
    np.testing.assert_array_equal(voxgate.open(dst).read(), new)
