"""``voxgate.copy`` of a volume of very many chunks: what the copy holds must not grow with
the number of chunks or blocks.

Before, the copy listed every block of its plan first (a tuple with two boxes each, and the
same again for the blocks to do, and once more in ``run_blocks``' list of blocks done), read
the journal back into a set of tuples (and the file into one string first), and kept every
absent chunk of the source in ``CopyReport.absent_chunks`` (a ``Vec`` each).  On sparse
volumes of 2^17-2^21 chunks (two written, the rest absent) the cases here peaked at 97-219 MiB
above the baseline, growing about linearly with the chunks or blocks (a copy of one-chunk
blocks: 57 MiB at 65536 blocks, 192 at 262144; refusing 0.5 M absent chunks 68 MiB, 2 M 221);
a petascale volume (10^8-10^9 chunks) would have held tens to hundreds of GiB.  Now the plan is
walked as blocks are sent (a window of blocks at a time to ``run_blocks``), the journal is a
bitmap per scale, and the report keeps the count of absent chunks with the first
``ABSENT_LISTED`` of them; the same cases peak at 18-39 MiB.

Each large case runs in a subprocess whose peak RSS (VmHWM) above its baseline after its
imports is bounded, with glibc's mmap threshold fixed as in tests/test_memory_bounds.py (see its
docstring), and checks its result against the source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.absence
import voxgate.transfer
from voxgate import Box, Vec

from .peak_rss import peak_delta_and_stdout, prelude

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="peak RSS is read from /proc/self/status (Linux)")

#: peak RSS (MiB) above the subprocess's baseline allowed for the large copies here: they
#: peak at 18-39 MiB, and peaked at 97-219 MiB before
BOUND_MIB = 60

_PRELUDE = prelude("""
    import numpy as np
    import tensorstore
    import voxgate
    import voxgate.transfer
    from voxgate import Box
""", warm_up="""
    def _warm_up():
        # a small copy first: tensorstore's thread pools and their allocator arenas start here,
        # not inside the measured case (they moved a case's peak between 34 and 75 MiB)
        import tempfile
        d = tempfile.mkdtemp()
        w = voxgate.create(f"zarr://{d}/w.zarr", shape=(64, 64, 64), dtype="uint8",
                           chunks=(16, 16, 16), voxel_size=(1, 1, 1))
        w[0:16, 0:16, 0:16] = 1
        voxgate.copy(f"zarr://{d}/w.zarr", f"zarr://{d}/w2.zarr", progress=False, workers=2)
    _warm_up()
""")


def _peak_delta(code: str, cwd: Path) -> tuple[float, str]:
    """Run ``code`` in a fresh Python; its peak RSS (MiB) above its baseline after imports,
    and what it printed."""
    return peak_delta_and_stdout(code, cwd, prelude=_PRELUDE, timeout=600)


def _sparse(path: Path, z: int) -> tuple[str, np.ndarray, np.ndarray]:
    """A (z, 512, 512) uint8 zarr of 8^3 chunks (z * 512 of them): a chunk of random voxels
    at the origin and one of 7s at the far corner, the rest absent."""
    url = f"zarr://{path}"
    vol = voxgate.create(url, shape=(z, 512, 512), dtype="uint8", chunks=(8, 8, 8),
                         voxel_size=(8, 8, 8))
    first = np.random.default_rng(0).integers(1, 255, (8, 8, 8), dtype=np.uint8)
    vol[0:8, 0:8, 0:8] = first
    vol[z - 8:z, 504:512, 504:512] = 7
    return url, first, np.full((8, 8, 8), 7, np.uint8)


def _check_copy(url: str, z: int, first: np.ndarray, last: np.ndarray) -> None:
    """``url`` holds the source of :func:`_sparse`: the two chunks, and 0 elsewhere."""
    got = voxgate.open(url).read()
    want = np.zeros((z, 512, 512), np.uint8)
    want[0:8, 0:8, 0:8] = first
    want[z - 8:z, 504:512, 504:512] = last
    assert np.array_equal(got, want)


def test_a_copy_refused_for_two_million_absent_chunks_lists_ten_thousand(
        tmp_path: Path) -> None:
    """missing="error" on a source with 2^21 - 2 absent chunks: the copy asks for them in
    pieces and keeps their number and the first ABSENT_LISTED (it held all of them, 2 M Vecs,
    peaking at 221 MiB, and put them all in the error)."""
    z = 4096  # 512 x 64 x 64 = 2^21 chunks
    url, _, _ = _sparse(tmp_path / "src.zarr", z)
    dst = tmp_path / "dst.zarr"
    peak, out = _peak_delta(f"""
        try:
            voxgate.copy("{url}", "zarr://{dst}", progress=False, missing="error")
        except voxgate.errors.MissingChunkError as e:
            print("REFUSED", e.total, len(e.chunks), tuple(e.chunks[0]), tuple(e.chunks[-1]))
            print("MESSAGE", str(e))
    """, tmp_path)
    assert peak < BOUND_MIB, f"refusing a copy of 2 M absent chunks peaked at {peak} MiB"
    assert f"REFUSED {2**21 - 2} 10000 (0, 0, 1) " in out, out
    # the first ten thousand, in grid order: (0, 0, 1) .. (0, 0, 63), (0, 1, 0) ...
    assert "(2, 28, 16)" in out.split("REFUSED")[1].splitlines()[0], out
    assert f"{2**21 - 2} chunk(s) absent at scale 0: (0, 0, 1), " in out
    assert f"and {2**21 - 12} more" in out
    assert not dst.exists()


def test_a_copy_of_131072_blocks_holds_no_plan_of_them(tmp_path: Path) -> None:
    """One block per chunk (BLOCK_BYTES = 1), 2^17 chunks nearly all absent: the plan is
    walked, the blocks done are not kept, the journal is a bitmap (they peaked at 110 MiB,
    about 0.8 KiB a block); the copy equals the source."""
    z = 256  # 32 x 64 x 64 = 2^17 chunks
    url, first, last = _sparse(tmp_path / "src.zarr", z)
    dst = tmp_path / "dst.zarr"
    state = tmp_path / "state"
    peak, out = _peak_delta(f"""
        import os
        os.environ["VOXGATE_STATE_DIR"] = "{state}"
        voxgate.transfer.BLOCK_BYTES = 1
        r = voxgate.copy("{url}", "zarr://{dst}", progress=False, workers=2)
        print("REPORT", r.blocks_total, r.blocks_written, r.blocks_empty, r.chunks_written,
              r.absent_summary().split(" chunk(s)")[0], len(r.absent_chunks[0]))
    """, tmp_path)
    n = 2**17
    assert peak < BOUND_MIB, f"a copy of {n} blocks peaked at {peak} MiB"
    assert f"REPORT {n} {n} {n - 2} 2 {n - 2} 10000" in out, out
    _check_copy(f"zarr://{dst}", z, first, last)
    assert not list((state / "transfers").glob("*.journal"))


def test_resuming_a_journal_of_262144_blocks_holds_a_bit_per_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted copy whose journal lists 2^18 - 2 finished blocks (all but the two
    that hold data): --status counts them and the rerun skips them, holding a bitmap (the
    journal read whole into a string and a set of tuples, with the plan listed, peaked at
    190 MiB); the two blocks left are copied."""
    z = 512  # 64 x 64 x 64 = 2^18 chunks
    url, first, last = _sparse(tmp_path / "src.zarr", z)
    dst = tmp_path / "dst.zarr"
    state = tmp_path / "state"
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(state))
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def capture(self: object, path: Path, header: dict[str, Any], *rest: object) -> None:
        seen.update(path=path, header=header)
        raise Stop

    # the journal's name and header as this copy makes them (it created the destination)
    monkeypatch.setattr(voxgate.transfer._Journal, "__init__", capture)
    with pytest.raises(Stop):
        voxgate.copy(url, f"zarr://{dst}", progress=False)
    monkeypatch.undo()
    n = 2**18
    assert seen["header"]["blocks"] == n
    data = {(0, 0, 0, 0), (0, 63, 63, 63)}
    seen["path"].parent.mkdir(parents=True, exist_ok=True)
    with open(seen["path"], "w", encoding="utf-8") as f:
        f.write(json.dumps(seen["header"]) + "\n" + "created\n")
        f.writelines(f"0 {i} {j} {k} fill\n" for i in range(64) for j in range(64)
                     for k in range(64) if (0, i, j, k) not in data)

    peak, out = _peak_delta(f"""
        import os
        os.environ["VOXGATE_STATE_DIR"] = "{state}"
        voxgate.transfer.BLOCK_BYTES = 1
        [status] = voxgate.transfer.list_journals()
        print("STATUS", status.blocks_done, status.blocks_total)
        r = voxgate.copy("{url}", "zarr://{dst}", progress=False, workers=2)
        print("REPORT", r.resumed, r.blocks_total, r.blocks_skipped, r.blocks_written,
              r.chunks_skipped, r.chunks_written)
    """, tmp_path)
    assert peak < BOUND_MIB, f"resuming a journal of {n} blocks peaked at {peak} MiB"
    assert f"STATUS {n - 2} {n}" in out, out
    assert f"REPORT True {n} {n - 2} 2 {n - 2} 2" in out, out
    _check_copy(f"zarr://{dst}", z, first, last)
    assert not list((state / "transfers").glob("*.journal"))


@pytest.mark.parametrize("piece", [1, 5, 64, 700, 2**16])
def test_the_report_counts_absent_chunks_and_lists_the_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int) -> None:
    """The absent chunks asked for in pieces (of one chunk, part of a row of x, rows, planes,
    the whole region) are the region's, in grid order; the report lists the first
    ABSENT_LISTED and counts all, and its text says how many more there are."""
    url = f"zarr://{tmp_path}/src.zarr"
    vol = voxgate.create(url, shape=(20, 36, 44), dtype="uint8", chunks=(4, 8, 8),
                         voxel_size=(8, 8, 8))
    rng = np.random.default_rng(1)
    stored = {Vec(*g) for g in zip(rng.integers(0, 5, 40), rng.integers(0, 5, 40),
                                     rng.integers(0, 6, 40), strict=True)}
    for g in stored:
        vol[g.z * 4:g.z * 4 + 4, g.y * 8:min(36, g.y * 8 + 8), g.x * 8:min(44, g.x * 8 + 8)] = 1
    box = Box((2, 3, 5), (19, 36, 41))
    everything = vol.remote.absent_chunks(box, 0)
    assert len(everything) > 20 and everything == sorted(everything)
    monkeypatch.setattr(voxgate.absence, "_ABSENT_PIECE", piece)
    monkeypatch.setattr(voxgate.absence, "ABSENT_LISTED", 20)
    report = voxgate.copy(url, f"zarr://{tmp_path}/dst.zarr", box=box, progress=False)
    assert report.absent_checked
    assert report.absent_counts == {0: len(everything)}
    assert report.absent_chunks == {0: everything[:20]}
    text = str(report)
    assert f"source {len(everything)} chunk(s) absent at scale 0: " in text
    assert f"and {len(everything) - 10} more (chunk grid index z, y, x)" in text
    got = voxgate.open(f"zarr://{tmp_path}/dst.zarr").remote.read(box, 0)
    assert np.array_equal(got, vol.remote.read(box, 0))


@pytest.mark.parametrize("most", [1, 3, 7, 40, 300, 10**6])
def test_the_pieces_cover_the_region_once_cut_along_x(most: int) -> None:
    """The pieces the absent chunks are asked for in cover every chunk of an odd region (an
    offset grid, partial chunks at both ends) exactly once, hold at most ``most`` chunks, and
    are cut along x first: while whole y-z planes fit, no x column is in two pieces (a
    precomputed layer on object storage lists its chunk names by the prefix of their x range)."""
    from voxgate.geometry import chunk_boxes

    chunks, bounds = Vec(3, 4, 5), Box((1, 2, 3), (20, 31, 44))
    region = Box((2, 5, 4), (19, 29, 43))
    want = sorted(g for g, _ in chunk_boxes(region, chunks, bounds))
    seen: list[Vec] = []
    xs: list[set[int]] = []
    for piece in voxgate.absence.pieces(region, chunks, bounds, most):
        cells = [g for g, _ in chunk_boxes(piece, chunks, bounds)]
        assert 0 < len(cells) <= max(most, len({g.z for g in cells}))
        assert piece.intersect(region) == piece
        seen.extend(cells)
        xs.append({g.x for g in cells})
    assert sorted(seen) == want  # (each chunk once: no piece overlaps another)
    n_yz = len({(g.z, g.y) for g in want})
    if most >= n_yz:
        assert all(a.isdisjoint(b) for i, a in enumerate(xs) for b in xs[i + 1:])


def test_a_copy_from_precomputed_on_s3_lists_no_prefix_twice(
        s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The absent chunks of a precomputed source on object storage (moto's S3), asked for in
    pieces: each listing prefix is asked for once over the whole copy.  Pieces of a few z each
    (the first cut) listed the whole scale directory once per piece: a copy of a dense layer of
    N chunks in N / 65536 pieces read N^2 / 65536 names."""
    import xml.etree.ElementTree as ET

    import voxgate.remotes.precomputed.chunks as chunks_module
    from tests.garbage_proxy import GarbageProxy

    url = f"precomputed://s3://{s3_bucket}/img"
    vol = voxgate.create(url, shape=(16, 64, 64), dtype="uint8", chunks=(4, 8, 8),
                         voxel_size=(8, 8, 8))
    data = np.random.default_rng(3).integers(1, 255, (16, 64, 64), dtype=np.uint8)
    vol[0:8, 0:16, 0:64] = data[0:8, 0:16, 0:64]  # (a band of stored chunks across x)
    prefixes: list[str] = []

    def listed(status: int, headers: dict[str, str], body: bytes
               ) -> tuple[int, dict[str, str], bytes]:
        # (the answer's own Prefix: a direct child of ListBucketResult)
        prefixes.extend(el.text or "" for el in ET.fromstring(body)
                        if el.tag.rsplit("}", 1)[-1] == "Prefix")
        return status, headers, body

    proxy = GarbageProxy(os.environ["VOXGATE_S3_ENDPOINT"])
    try:
        monkeypatch.setenv("VOXGATE_S3_ENDPOINT", proxy.url)
        monkeypatch.setattr(voxgate.absence, "_ABSENT_PIECE", 128)
        # listings of 16 names a page, as the layer's lookups weigh them: the 256 chunks of
        # this layer then weigh as a directory of 16,000 chunks does with S3's 1000-name pages
        # (a piece's own x prefixes cost fewer pages than the whole directory)
        monkeypatch.setattr(chunks_module, "_LIST_PAGE_KEYS", 16)
        with proxy.answering(r"list-type=2", listed):
            report = voxgate.copy(url, f"zarr://{tmp_path}/dst.zarr", progress=False)
    finally:
        proxy.close()
    assert report.absent_checked and report.absent_counts == {0: 4 * 8 * 8 - 2 * 2 * 8}
    assert prefixes, "the source was never listed"
    repeated = sorted({p for p in prefixes if prefixes.count(p) > 1})
    assert not repeated, f"prefixes listed more than once: {repeated[:5]} ({len(prefixes)})"
    got = voxgate.open(f"zarr://{tmp_path}/dst.zarr").read()
    want = np.zeros_like(data)
    want[0:8, 0:16] = data[0:8, 0:16]
    assert np.array_equal(got, want)
