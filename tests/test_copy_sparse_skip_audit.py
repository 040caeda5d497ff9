"""``voxgate.copy`` of a sparse source does not read what the source said is absent, and
``voxgate info --check`` counts absent chunks in pieces.

Before, a block of the plan whose source chunks were all absent was read all the same (on
object storage one GET answered 404 per chunk, tens of ms each), only to find the fill value
there.  Now the copy's scan of absent chunks (which it makes anyway, in pieces) marks, one bit
per group of chunks, where stored chunks are; a block touching none is not read: it is a block
of the fill value (the voxel the source reads in an absent chunk, read once per scale), with
the same journal record, the same write or no write, and the same report as before.

``voxgate info --check`` held every absent chunk of every scale (a ``Vec`` each: 2^21 of them
took about 200 MiB) to print ten of them and the total; it now asks in the copy's pieces and
keeps the count and the first ones.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import voxgate
import voxgate.absence as absence
import voxgate.transfer as transfer
from voxgate import Box, Vec
from voxgate.cli import main
from voxgate.errors import MissingChunkError
from voxgate.geometry import chunk_boxes
from voxgate.remotes.precomputed.remote import PrecomputedRemote
from voxgate.remotes.zarr import ZarrRemote

from .peak_rss import peak_delta_and_stdout, prelude

#: the path of a chunk of a precomputed layer (x0-x1_y0-y1_z0-z1) or of a zarr array
#: (v3 "c/z/y/x", v2 "z.y.x")
CHUNK_PATH = re.compile(r"(/\d+-\d+_\d+-\d+_\d+-\d+|/c/\d+/\d+/\d+|/\d+\.\d+\.\d+)$")


# -- helpers ------------------------------------------------------------------------------------

def _counting_proxy(backend: str) -> tuple[Any, list[tuple[str, str]]]:
    """A GarbageProxy in front of ``backend`` that logs every request (method, path) it
    forwards, whatever the answer (GarbageProxy's own rules see only successful ones)."""
    from tests.garbage_proxy import GarbageProxy

    proxy = GarbageProxy(backend)
    log: list[tuple[str, str]] = []
    handler = proxy.server.RequestHandlerClass
    forward = handler.do_GET

    def logged(self: Any) -> None:
        log.append((self.command, self.path))
        forward(self)

    handler.do_GET = handler.do_HEAD = logged  # type: ignore[attr-defined]
    return proxy, log


def _chunk_reads(log: list[tuple[str, str]]) -> int:
    # (GETs: the reads of chunks; the scan of absent chunks lists, and may HEAD a few)
    return sum(1 for method, path in log
               if method == "GET" and CHUNK_PATH.search(path.split("?")[0]))


class _Reads:
    """Counts ``read`` calls of a Remote class on the volume at ``url`` (the source's reads:
    the destination is of another class or URL)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type, url: str) -> None:
        self.n = 0
        real = cls.read

        def read(remote: Any, box: Box, scale: int = 0) -> np.ndarray:
            if remote.url == url:
                self.n += 1
            return real(remote, box, scale)

        monkeypatch.setattr(cls, "read", read)


def _sparse_source(path: Path, offset: tuple[int, int, int] = (3, 5, 7)) -> voxgate.Volume:
    """A 2-scale precomputed uint16 image of odd shape (37, 45, 53) at an odd offset, chunks
    (4, 6, 5), with a few stored chunks, some across chunk borders and at the far edges; the
    rest absent."""
    vol = voxgate.create(f"precomputed://{path}", shape=(37, 45, 53), dtype="uint16",
                         chunks=(4, 6, 5), voxel_size=(8, 8, 8), offset=offset, num_scales=2,
                         encoding="raw")
    rng = np.random.default_rng(11)
    o = Vec(*offset)
    for a, b in [((0, 0, 0), (3, 4, 2)), ((17, 20, 30), (23, 29, 33)),
                 ((33, 40, 50), (37, 45, 53))]:
        box = Box(Vec(*(x + y for x, y in zip(o, a, strict=True))),
                  Vec(*(x + y for x, y in zip(o, b, strict=True))))
        vol.remote.write(box, rng.integers(1, 60000, tuple(box.shape), dtype=np.uint16), 0)
    s1 = vol.at_scale(1)
    b1 = s1.bounds
    vol.remote.write(Box(b1.start, Vec(b1.start.z + 2, b1.start.y + 3, b1.start.x + 4)),
                     np.full((2, 3, 4), 9, np.uint16), 1)
    return vol


def _assert_same(src: voxgate.Volume, dst_url: str, scales: list[int],
                 box: Box | None = None) -> None:
    dst = voxgate.open(dst_url)
    for k in scales:
        region = (src.at_scale(k).bounds if box is None
                  else transfer._scale_box(box, src.meta, k))
        want = src.remote.read(region, k)
        got = dst.remote.read(region, k)
        np.testing.assert_array_equal(got, want, err_msg=f"scale {k}")


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # blocks of 2 x 2 x 2 chunks of the sparse sources here (uint16 chunks of 4 x 6 x 5)
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 4 * 6 * 5 * 2 * 8)


# -- 1. requests on object storage ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["precomputed", "zarr"])
def test_a_sparse_source_on_s3_is_read_only_where_chunks_are_stored(
        s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """512 chunks, 4 stored (each in another block of 2 x 2 x 2 chunks): the copy reads the 4
    blocks holding them (32 chunks) and one absent chunk (the fill value's voxel), where it
    read all 512 chunks (508 GETs answered 404)."""
    url = f"{fmt}://s3://{s3_bucket}/img"
    vol = voxgate.create(url, shape=(32, 64, 64), dtype="uint8", chunks=(4, 8, 8),
                         voxel_size=(8, 8, 8))
    rng = np.random.default_rng(5)
    want = np.zeros((32, 64, 64), np.uint8)
    for z, y, x in [(0, 0, 0), (12, 24, 40), (20, 56, 8), (28, 56, 56)]:
        want[z:z + 4, y:y + 8, x:x + 8] = rng.integers(1, 255, (4, 8, 8), dtype=np.uint8)
        vol[z:z + 4, y:y + 8, x:x + 8] = want[z:z + 4, y:y + 8, x:x + 8]
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 4 * 8 * 8 * 8)  # blocks of 8 x 16 x 16
    proxy, log = _counting_proxy(os.environ["VOXGATE_S3_ENDPOINT"])
    try:
        monkeypatch.setenv("VOXGATE_S3_ENDPOINT", proxy.url)
        report = voxgate.copy(url, f"zarr://{tmp_path}/dst.zarr", progress=False, workers=2)
    finally:
        proxy.close()
    assert report.absent_checked and report.absent_counts == {0: 508}
    assert report.blocks_total == report.blocks_written == 64
    # (the 4 blocks holding data write their 4 stored chunks; their 28 others, of only the
    # fill value, stay absent in the destination the copy created, as the empty blocks do)
    assert report.blocks_empty == 60 and report.chunks_written == 4
    assert report.chunks_empty == 508
    reads = _chunk_reads(log)
    assert reads <= 4 * 8 + 1, f"{reads} chunk requests for 4 stored chunks"
    np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path}/dst.zarr").read(), want)


# -- 2. results on odd geometry ------------------------------------------------------------------

@pytest.mark.parametrize("case", ["all", "box", "scale1", "other_chunks", "workers1"])
def test_a_sparse_copy_equals_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         small_blocks: None, case: str) -> None:
    """An odd shape at an odd offset, two scales, partial edge blocks: all scales, a box that
    cuts chunks, scale 1 alone, and an existing destination chunked otherwise (its blocks span
    stored and absent source chunks) that holds other voxels, which the copy's fill must
    overwrite.  The result equals the source and some blocks were not read."""
    src = _sparse_source(tmp_path / "src")
    dst_url = f"zarr://{tmp_path}/dst.zarr"
    kw: dict[str, Any] = {"progress": False, "workers": 1 if case == "workers1" else 2}
    scales, box = [0, 1], None
    if case == "box":
        box = Box(Vec(5, 9, 10), Vec(31, 40, 59))
        kw["box"] = box
    elif case == "scale1":
        scales = [1]
        kw["scales"] = scales
    elif case == "other_chunks":
        dst = voxgate.create(dst_url, shape=(37, 45, 53), dtype="uint16", chunks=(3, 7, 4),
                             voxel_size=(8, 8, 8), offset=(3, 5, 7), num_scales=2)
        for k in (0, 1):
            d = dst.at_scale(k)
            dst.remote.write(d.bounds, np.full(tuple(d.bounds.shape), 4321, np.uint16), k)
    reads = _Reads(monkeypatch, PrecomputedRemote, src.remote.url)
    report = voxgate.copy(src.url, dst_url, **kw)
    n_reads = reads.n
    _assert_same(src, dst_url, scales, box)
    assert report.blocks_written == report.blocks_total
    assert sum(report.absent_counts.values()) > 0
    # every block read once before; now the blocks of absent chunks only are not (the probe
    # of the fill value is one read per scale)
    assert n_reads < report.blocks_total, (n_reads, report.blocks_total)


def test_a_fill_value_other_than_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zarr source of fill value 7: a block not read holds 7s, in a destination it creates
    (fill 7: nothing written there) and in one that exists with fill 0 (written)."""
    import zarr

    a = zarr.create_array(str(tmp_path / "f7.zarr"), shape=(10, 12, 14), chunks=(4, 4, 4),
                          dtype="uint16", fill_value=7)
    a[0:4, 0:4, 0:4] = np.arange(64, dtype=np.uint16).reshape(4, 4, 4)
    a[9, 11, 13] = 5
    want = a[...]
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 1)  # a block per chunk
    reads = _Reads(monkeypatch, ZarrRemote, f"zarr://{tmp_path / 'f7.zarr'}")
    report = voxgate.copy(f"zarr://{tmp_path / 'f7.zarr'}", f"zarr://{tmp_path}/new.zarr",
                          progress=False)
    assert report.blocks_empty == report.blocks_total - 2  # (not written: they read as 7)
    np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path}/new.zarr").read(), want)
    assert reads.n == 2 + 1  # the 2 stored chunks and the fill value's voxel
    voxgate.create(f"zarr://{tmp_path}/old.zarr", shape=(10, 12, 14), dtype="uint16",
                   chunks=(4, 4, 4), voxel_size=(1, 1, 1))
    report = voxgate.copy(f"zarr://{tmp_path / 'f7.zarr'}", f"zarr://{tmp_path}/old.zarr",
                          progress=False)
    assert report.blocks_empty == 0
    np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path}/old.zarr").read(), want)


def test_channels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3-channel source: a block not read holds the fill value in every channel."""
    src = voxgate.create(f"zarr://{tmp_path}/c.zarr", shape=(8, 8, 8), dtype="uint8",
                         chunks=(4, 4, 4), voxel_size=(1, 1, 1), num_channels=3)
    src.remote.write(Box(Vec(0, 0, 0), Vec(4, 4, 4)),
                     np.arange(3 * 64, dtype=np.uint8).reshape(3, 4, 4, 4))
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 1)
    dst = voxgate.create(f"precomputed://{tmp_path}/d", shape=(8, 8, 8), dtype="uint8",
                         chunks=(4, 4, 4), voxel_size=(1, 1, 1), num_channels=3,
                         encoding="raw")
    dst.remote.write(dst.bounds, np.full((3, 8, 8, 8), 200, np.uint8))
    reads = _Reads(monkeypatch, ZarrRemote, src.url)
    voxgate.copy(src.url, dst.url, progress=False)
    assert reads.n == 1 + 1  # the stored chunk and the fill value's voxel
    full = Box(Vec(0, 0, 0), Vec(8, 8, 8))
    np.testing.assert_array_equal(voxgate.open(dst.url).remote.read(full, 0),
                                  src.remote.read(full, 0))


# -- 3. resume -----------------------------------------------------------------------------------

@pytest.mark.parametrize("verify", [False, True])
def test_a_resumed_sparse_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               small_blocks: None, verify: bool) -> None:
    """Interrupted after 10 blocks, then resumed (with and without verify): the result equals
    the source, the journal holds the blocks of absent chunks as fill, and neither run reads
    those blocks."""
    src = _sparse_source(tmp_path / "src")
    dst_url = f"zarr://{tmp_path}/dst.zarr"
    real, calls = transfer._copy_part, [0]

    def stop_after_10(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    reads = _Reads(monkeypatch, PrecomputedRemote, src.remote.url)
    monkeypatch.setattr(transfer, "_copy_part", stop_after_10)
    with pytest.raises(transfer.CopyInterrupted) as stopped:
        voxgate.copy(src.url, dst_url, progress=False, workers=1)
    assert stopped.value.blocks_done == 10
    journal = Path(stopped.value.journal)
    lines = journal.read_text().splitlines()[1:]
    assert sum(ln.endswith(" fill") for ln in lines) >= 1
    first_reads = reads.n
    assert first_reads < 10 + 2
    monkeypatch.setattr(transfer, "_copy_part", real)
    reads.n = 0
    report = voxgate.copy(src.url, dst_url, progress=False, workers=2, verify=verify)
    n_reads = reads.n
    assert report.resumed
    assert report.blocks_written + report.blocks_skipped == report.blocks_total
    _assert_same(src, dst_url, [0, 1])
    remaining = report.blocks_total - (0 if verify else 10)
    assert n_reads < remaining, (n_reads, remaining)


# -- 4. what must not change ---------------------------------------------------------------------

def test_missing_error_still_refuses_and_a_dense_region_is_all_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: None) -> None:
    src = _sparse_source(tmp_path / "src")
    with pytest.raises(MissingChunkError):
        voxgate.copy(src.url, f"zarr://{tmp_path}/no.zarr", progress=False, missing="error")
    assert not (tmp_path / "no.zarr").exists()
    box = Box(Vec(20, 25, 37), Vec(26, 34, 40))  # inside the stored chunks of the middle
    reads = _Reads(monkeypatch, PrecomputedRemote, src.remote.url)
    report = voxgate.copy(src.url, f"zarr://{tmp_path}/yes.zarr", progress=False,
                          missing="error", box=box, scales=[0])
    assert report.absent_counts == {} and reads.n == report.blocks_total
    np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path}/yes.zarr").remote.read(box),
                                  src.remote.read(box, 0))


def _brute_stored(present: np.ndarray, origin: Vec, chunks: Vec, part: Box) -> bool:
    lo = [(a - o) // c for a, o, c in zip(part.start, origin, chunks, strict=True)]
    hi = [(b - 1 - o) // c + 1 for b, o, c in zip(part.stop, origin, chunks, strict=True)]
    return bool(present[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].any())


@pytest.mark.parametrize("seed", range(12))
def test_stored_groups_against_brute_force(seed: int) -> None:
    """The bitmap of groups, built from pieces of random sizes, tells for blocks of another
    grid (smaller or larger than the groups, anchored elsewhere, cut by the region) whether
    they touch a stored chunk as a look at every chunk does, or errs on the side of reading."""
    rng = np.random.default_rng(seed)
    chunks = Vec(*rng.integers(1, 6, 3))
    origin = Vec(*rng.integers(-5, 5, 3))
    nchunks = rng.integers(2, 12, 3)
    present = rng.random(tuple(nchunks)) < rng.choice([0.02, 0.2, 0.8])
    bounds = Box(origin, Vec(*(o + n * c - int(rng.integers(0, c))
                               for o, n, c in zip(origin, nchunks, chunks, strict=True))))
    a = Vec(*(int(rng.integers(s, s + (e - s) // 3 + 1)) for s, e in zip(bounds.start,
                                                                         bounds.stop,
                                                                         strict=True)))
    region = Box(a, bounds.stop)
    block = Vec(*rng.integers(1, 12, 3))
    anchor = Box(Vec(*(s - int(rng.integers(0, 7)) for s in region.start)), bounds.stop)
    pieces = list(absence.pieces(region, chunks, bounds, int(rng.integers(1, 40))))
    # groups of one chunk, or blocks that are the groups (a destination with the source's
    # chunks), tell exactly; other groups may say "stored" for a block that only shares a
    # group with a stored chunk, never "not stored" for a block that touches one
    group = Vec(*rng.integers(1, 4, 3))
    grouped = Vec(*(g * c for g, c in zip(group, chunks, strict=True)))
    for g, b, at, exact in [(Vec(1, 1, 1), block, anchor, True),
                            (group, grouped, Box(origin, bounds.stop), True),
                            (group, block, anchor, False)]:
        groups = absence.StoredGroups(region, chunks, origin, g)
        for piece in pieces:
            found = [Vec(*idx) for idx in np.argwhere(~present)
                     if _chunk_box(origin, chunks, idx).intersect(piece).size > 0]
            groups.mark(piece, sorted(found))
        for _, cell in chunk_boxes(region, b, at):
            part = cell.intersect(region)
            if part.is_empty():
                continue
            brute = _brute_stored(present, origin, chunks, part)
            if exact:
                assert groups.stored_in(part) == brute, (g, part)
            elif brute:
                assert groups.stored_in(part), (g, part)


def _chunk_box(origin: Vec, chunks: Vec, idx: Any) -> Box:
    return Box(Vec(*(o + i * c for o, i, c in zip(origin, idx, chunks, strict=True))),
               Vec(*(o + (i + 1) * c for o, i, c in zip(origin, idx, chunks, strict=True))))


# -- 5. voxgate info --check ---------------------------------------------------------------------

def test_info_check_asks_in_pieces_and_prints_as_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three scales, absent chunks in each: text and JSON as the full lists give them, and no
    question about more than a piece of chunks."""
    vol = voxgate.create(f"zarr://{tmp_path}/v.zarr", shape=(20, 40, 40), dtype="uint8",
                         chunks=(2, 4, 4), voxel_size=(8, 8, 8), num_scales=3)
    vol[0:2, 0:8, 0:4] = 1
    vol[18:20, 36:40, 20:40] = 2
    vol.at_scale(1)[0:2, 0:4, 0:4] = 3
    want = {k: vol.at_scale(k).missing_chunks() for k in range(3)}
    asked: list[int] = []
    real = ZarrRemote.absent_chunks

    def absent_chunks(remote: Any, box: Box, scale: int = 0) -> list[Vec]:
        sc = remote.meta.scale(scale)
        asked.append(int(np.prod([-(-(b - o) // c) - (a - o) // c for a, b, o, c in
                                  zip(box.start, box.stop, sc.bounds.start, sc.chunks,
                                      strict=True)])))
        return real(remote, box, scale)

    monkeypatch.setattr(ZarrRemote, "absent_chunks", absent_chunks)
    monkeypatch.setattr(absence, "_ABSENT_PIECE", 16)
    res = CliRunner().invoke(main, ["info", "--check", vol.url])
    assert res.exit_code == 0, res.output
    total = sum(len(v) for v in want.values())
    lines = [ln for ln in res.output.splitlines() if ln.startswith("check:")]
    from voxgate.remotes.base import format_chunks
    assert lines == [f"check: {len(v)} chunk(s) absent at scale {k}: {format_chunks(v)}"
                     for k, v in want.items() if v] + [
        f"check: {total} chunk(s) absent in all; they read as the fill value 0 (open with "
        "missing='error' to refuse them)"]
    res = CliRunner().invoke(main, ["info", "--check", "--json", vol.url])
    got = json.loads(res.output)["absent_chunks"]
    assert got == {str(k): {"total": len(v), "first_zyx": [list(g) for g in v[:10]]}
                   for k, v in want.items()}
    res = CliRunner().invoke(main, ["info", "--check", "--missing", "error", vol.url])
    assert res.exit_code != 0 and f"{total} chunk(s) absent" in res.output
    assert asked and max(asked) <= 16, max(asked)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS from /proc")
def test_info_check_of_two_million_absent_chunks_is_bounded(tmp_path: Path) -> None:
    """A zarr of 2^21 chunks, 2 written: ``info --check`` prints the count and the first ten
    with a peak RSS of 33-47 MiB above its start (it held 2^21 Vecs: 200 MiB)."""
    url = f"zarr://{tmp_path}/big.zarr"
    vol = voxgate.create(url, shape=(4096, 512, 512), dtype="uint8", chunks=(8, 8, 8),
                         voxel_size=(8, 8, 8))
    vol[0:8, 0:8, 0:8] = 1
    vol[4088:4096, 504:512, 504:512] = 2
    small = f"zarr://{tmp_path}/small.zarr"
    voxgate.create(small, shape=(16, 16, 16), dtype="uint8", chunks=(8, 8, 8),
                   voxel_size=(8, 8, 8))[0:8, 0:8, 0:8] = 1
    start = prelude("""
        from click.testing import CliRunner
        from voxgate.cli import main
        import voxgate.transfer, rich.console, rich.table
    """, warm_up=f"""
        # (what info --check imports and starts: tensorstore's threads and their arenas)
        CliRunner().invoke(main, ["info", "--check", "{small}"])
    """)
    peak, out = peak_delta_and_stdout(f"""
        res = CliRunner().invoke(main, ["info", "--check", "{url}"])
        print(res.output)
    """, None, prelude=start, timeout=600)
    n = 2**21 - 2
    assert (f"check: {n} chunk(s) absent at scale 0: (0, 0, 1), (0, 0, 2), (0, 0, 3), "
            f"(0, 0, 4), (0, 0, 5), (0, 0, 6), (0, 0, 7), (0, 0, 8), (0, 0, 9), (0, 0, 10) and "
            f"{n - 10} more (chunk grid index z, y, x)") in out
    assert f"check: {n} chunk(s) absent in all" in out
    # (33-47 MiB on a loaded machine; 200 before)
    assert peak < 100, f"info --check peaked at {peak:.0f} MiB above its start"
