"""Which chunks are absent, where the answer comes from a shard index or from halving.

``absent_chunks`` is used to skip work (``voxgate.copy`` writes the fill value over a block of
absent chunks without reading it; the block-wise Services skip it), so a chunk called absent
that is stored is lost silently.

Found: a sharded zarr v3 array's shard index was read without checking its crc32c (the index
codecs ``[bytes, crc32c]`` end it with a CRC32C of the entries before it), so a damaged index
gave a wrong answer with no error: a stored chunk's entry turned "missing" was called absent
(and skipped), a missing one turned stored was called stored.  Now the checksum is verified
(google_crc32c when installed, else voxgate's own numpy CRC32C, checked here against it) and
a mismatch raises CorruptChunkError naming the shard, for indexes at the end and at the start.

Also checked against the truth (the chunk files on disk, the shard indexes parsed here, the
voxels read by zarr-python, and the chunks the writes touched, all agreeing), on odd shapes
at an offset: the fallbacks that halve with tensorstore's storage statistics instead of
listing (a listing far larger than the box, a shard index whose codecs voxgate does not read,
keys that cannot be listed over HTTP).
"""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest
import tensorstore as ts
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, TransposeCodec, ZstdCodec

import voxgate
import voxgate.remotes.base as remotes_base
from voxgate import Box, Vec
from voxgate.errors import CorruptChunkError
from voxgate.geometry import chunk_boxes
from voxgate.remotes import _tensorstore

from ..static_http import serve_directory

SHAPE = (13, 29, 31)  # (not a multiple of the chunks, nor of the shards)
OFFSET = Vec(2, 3, 4)
CHUNKS = (3, 5, 7)
SHARDS = (6, 10, 14)
PER_SHARD = tuple(s // c for s, c in zip(SHARDS, CHUNKS, strict=True))
#: boxes written (relative to the volume's first voxel), odd, across chunk borders and edges
WRITES = [((0, 0, 0), (2, 4, 3)), ((5, 9, 13), (8, 16, 15)), ((12, 28, 30), (13, 29, 31)),
          ((4, 27, 0), (5, 29, 1))]


# -- the fallback CRC32C ---------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 7, 1023, 1024, 1025, 4096, 100000, 2**19 + 4])
def test_fallback_crc32c_equals_google_crc32c(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(3):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert _tensorstore._crc32c_numpy(data) == google_crc32c.value(data), n


def test_fallback_crc32c_known_vectors() -> None:
    """The check value of CRC-32C and RFC 3720's (iSCSI) test vectors, and long runs of one
    byte (the lanes of the numpy path all equal)."""
    crc = _tensorstore._crc32c_numpy
    assert crc(b"123456789") == 0xE3069283
    assert crc(bytes(32)) == 0x8A9136AA
    assert crc(b"\xff" * 32) == 0x62A8AB43
    assert crc(bytes(range(32))) == 0x46DD794E
    assert crc(bytes(range(31, -1, -1))) == 0x113FDB5C
    for data in (bytes(5000), b"\xff" * 70000, b"123456789" * 1000):
        assert crc(data) == google_crc32c.value(data)


def test_crc32c_falls_back_where_google_crc32c_is_not_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tensorstore, "_crc32c_fast", _tensorstore._UNKNOWN)
    monkeypatch.setitem(sys.modules, "google_crc32c.cext", None)  # (import fails)
    used = _counting(monkeypatch, "_crc32c_numpy")
    assert _tensorstore._crc32c(b"123456789") == 0xE3069283
    assert _tensorstore._crc32c_fast is None and used == [9]


def test_crc32c_takes_google_crc32c_c_extension_where_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import google_crc32c.cext

    monkeypatch.setattr(_tensorstore, "_crc32c_fast", _tensorstore._UNKNOWN)
    assert _tensorstore._crc32c(b"123456789") == 0xE3069283
    assert _tensorstore._crc32c_fast is google_crc32c.cext.value


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Wrap ``_tensorstore.<name>`` (a function of bytes): the lengths it was called with.
    (Nothing is wrapped where there is no such function, as before the checksum was checked:
    the test then fails on what it asserts, not here.)"""
    calls: list[int] = []
    real = getattr(_tensorstore, name, None)
    if real is None:
        return calls

    def counted(data: bytes) -> Any:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(_tensorstore, name, counted)
    return calls


def _crc_path(monkeypatch: pytest.MonkeyPatch, path: str) -> list[int]:
    """Make the shard index checks take ``path`` ("google_crc32c" or "fallback"); the lengths
    checked by it."""
    if path == "fallback":
        monkeypatch.setattr(_tensorstore, "_crc32c_fast", None, raising=False)
        return _counting(monkeypatch, "_crc32c_numpy")
    monkeypatch.setattr(_tensorstore, "_crc32c_fast", google_crc32c.value, raising=False)
    return _counting(monkeypatch, "_crc32c_fast")


# -- the truth -------------------------------------------------------------------------------

def _touched() -> set[tuple[int, ...]]:
    """The chunk grid indices (z, y, x) the writes touched."""
    bounds = Box(Vec(0, 0, 0), Vec(*SHAPE))
    return {tuple(g) for a, e in WRITES
            for g, _ in chunk_boxes(Box(Vec(*a), Vec(*e)), Vec(*CHUNKS), bounds)}


def _files(root: Path, pattern: str, reverse: bool = False) -> set[tuple[int, ...]]:
    """The grid indices named by the files under ``root`` whose path matches ``pattern``."""
    out = set()
    for path in root.rglob("*"):
        m = re.fullmatch(pattern, path.relative_to(root).as_posix())
        if path.is_file() and m is not None:
            idx = tuple(int(v) for v in m.groups())
            out.add(idx[::-1] if reverse else idx)
    return out


def _index_entries(raw: bytes, at_end: bool, endian: str, crc: bool) -> np.ndarray:
    """A shard file's index entries, shaped ``PER_SHARD + (2,)``; its checksum checked."""
    n = int(np.prod(PER_SHARD)) * 16 + (4 if crc else 0)
    index = raw[-n:] if at_end else raw[:n]
    if crc:
        assert google_crc32c.value(index[:-4]) == int.from_bytes(index[-4:], "little")
    return np.frombuffer(index[:n - 4] if crc else index, endian + "u8").reshape(*PER_SHARD, 2)


def _shard_truth(root: Path, at_end: bool, endian: str = "<",
                 crc: bool = True) -> set[tuple[int, ...]]:
    """The chunk grid indices held by the shards under ``root`` (keys ``c/z/y/x``), from
    their indexes parsed here."""
    out = set()
    for shard in _files(root, r"c/(\d+)/(\d+)/(\d+)"):
        raw = (root / "c" / "/".join(map(str, shard))).read_bytes()
        entries = _index_entries(raw, at_end, endian, crc)
        for inner in itertools.product(*(range(n) for n in PER_SHARD)):
            if not (entries[inner] == 2**64 - 1).all():
                out.add(tuple(s * n + i for s, n, i in zip(shard, PER_SHARD, inner,
                                                           strict=True)))
    return out


def _voxel_truth(z: Any) -> set[tuple[int, ...]]:
    """The chunk grid indices holding a voxel other than the fill value (0), read by
    zarr-python."""
    data = z[...]
    bounds = Box(Vec(0, 0, 0), Vec(*SHAPE))
    return {tuple(g) for g, b in chunk_boxes(bounds, Vec(*CHUNKS), bounds)
            if data[tuple(slice(a, e) for a, e in zip(b.start, b.stop, strict=True))].any()}


def _check(vol: voxgate.Volume, stored: set[tuple[int, ...]]) -> None:
    """absent_chunks of the whole volume and of a few odd boxes, and missing_chunks, are the
    grid minus ``stored`` (grid indices relative to the volume's first voxel)."""
    remote = vol.remote
    sc = remote.meta.scale(0)
    b = sc.bounds
    assert tuple(sc.chunks) == CHUNKS
    boxes = [b, Box(b.start + Vec(4, 6, 8), b.start + Vec(9, 20, 22)),
             Box(b.start + Vec(1, 2, 3), b.start + Vec(12, 27, 30)),
             Box(b.stop - Vec(1, 1, 1), b.stop), Box(b.start, b.start + Vec(1, 1, 1)),
             Box(b.start + Vec(3, 5, 7), b.start + Vec(6, 10, 14))]
    for box in boxes:
        want = sorted(g for g, _ in chunk_boxes(box, sc.chunks, b) if tuple(g) not in stored)
        assert remote.absent_chunks(box, 0) == want, box
    everything = {tuple(g) for g, _ in chunk_boxes(b, sc.chunks, b)}
    assert vol.missing_chunks() == sorted(Vec(*g) for g in everything - stored)


def _write(vol: voxgate.Volume) -> None:
    start = vol.remote.meta.scale(0).bounds.start
    for i, (a, e) in enumerate(WRITES):
        box = Box(start + Vec(*a), start + Vec(*e))
        vol.remote.write(box, np.full(tuple(box.shape), 10 + i, vol.dtype), 0)


def _zarr_python(path: Path, **sharding: Any) -> Any:
    """A sharded zarr v3 array written by zarr-python (no offset: zarr-python has none)."""
    z = zarr.create(store=str(path), shape=SHAPE, dtype="uint16", fill_value=0, zarr_format=3,
                    chunks=SHARDS, dimension_names=["z", "y", "x"],
                    codecs=[ShardingCodec(chunk_shape=CHUNKS, codecs=[BytesCodec(), ZstdCodec()],
                                          **sharding)])
    for i, (a, e) in enumerate(WRITES):
        z[tuple(slice(x, y) for x, y in zip(a, e, strict=True))] = 10 + i
    return z


def _tensorstore_start(path: Path) -> None:
    """A sharded zarr v3 array written by tensorstore, its index at the start."""
    _tensorstore_sharded(path, {
        "chunk_shape": list(CHUNKS), "codecs": [{"name": "bytes"}, {"name": "gzip"}],
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                         {"name": "crc32c"}], "index_location": "start"})


def _tensorstore_sharded(path: Path, conf: dict[str, Any]) -> None:
    """A sharded zarr v3 array of sharding configuration ``conf`` written by tensorstore."""
    t = ts.open({"driver": "zarr3", "kvstore": f"file://{path}", "create": True,
                 "metadata": {"shape": list(SHAPE), "data_type": "uint16",
                              "dimension_names": ["z", "y", "x"],
                              "chunk_grid": {"name": "regular",
                                             "configuration": {"chunk_shape": list(SHARDS)}},
                              "codecs": [{"name": "sharding_indexed",
                                          "configuration": conf}]}}).result()
    for i, (a, e) in enumerate(WRITES):
        t[tuple(slice(x, y) for x, y in zip(a, e, strict=True))] = 10 + i


SHARDED = ["voxgate-end", "zarr-python-start", "zarr-python-big-endian-end",
           "tensorstore-start"]


def _sharded(d: Path, maker: str) -> tuple[str, Path, bool, str, bool]:
    """A sharded array made and written by voxgate (at an offset), zarr-python or tensorstore:
    its URL, the folder of its shard keys, whether the index is at the end, its byte order,
    whether it has a checksum."""
    if maker == "voxgate-end":
        _write(voxgate.create(f"zarr://{d}/v.zarr", shape=SHAPE, dtype="uint16", chunks=CHUNKS,
                              voxel_size=(1, 1, 1), offset=OFFSET, shards=SHARDS))
        return f"zarr://{d}/v.zarr", d / "v.zarr" / "0", True, "<", True
    if maker == "tensorstore-start":
        _tensorstore_start(d / "t.zarr")
        return f"zarr://{d}/t.zarr", d / "t.zarr", False, "<", True
    if maker == "zarr-python-start":
        _zarr_python(d / "z.zarr", index_location="start")
        return f"zarr://{d}/z.zarr", d / "z.zarr", False, "<", True
    assert maker == "zarr-python-big-endian-end"
    _zarr_python(d / "z.zarr", index_codecs=[BytesCodec(endian="big"), Crc32cCodec()])
    return f"zarr://{d}/z.zarr", d / "z.zarr", True, ">", True


# -- the shard index checksum ----------------------------------------------------------------

@pytest.mark.parametrize("path", ["google_crc32c", "fallback"])
@pytest.mark.parametrize("maker", [*SHARDED, "zarr-python-no-crc"])
def test_undamaged_shard_indexes_are_checked_and_read(tmp_path: Path, maker: str, path: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if maker == "zarr-python-no-crc":  # (nothing to check: read as it is)
        _zarr_python(tmp_path / "z.zarr", index_codecs=[BytesCodec()])
        url, root, at_end, endian, crc = (f"zarr://{tmp_path}/z.zarr", tmp_path / "z.zarr",
                                          True, "<", False)
    else:
        url, root, at_end, endian, crc = _sharded(tmp_path, maker)
    truth = _shard_truth(root, at_end, endian, crc)
    assert truth == _touched()
    checked = _crc_path(monkeypatch, path)
    _check(voxgate.open(url), truth)
    if crc:  # (each listed shard's index checked, by the path asked for)
        n_shards = len(_files(root, r"c/(\d+)/(\d+)/(\d+)"))
        assert set(checked) == {int(np.prod(PER_SHARD)) * 16} and len(checked) >= n_shards
    else:
        assert checked == []


def _damage(raw: bytearray, at_end: bool, how: str, stored: list[int], missing: list[int],
            crc: int) -> None:
    """Damage the index in a shard file's bytes ``raw``: ``stored``/``missing`` are the
    entry numbers of stored and missing inner chunks; ``crc`` the index length with the
    checksum."""
    start = len(raw) - crc if at_end else 0
    if how == "stored-entry-made-missing":  # (the old answer: that chunk absent, skipped)
        e = start + 16 * stored[0]
        raw[e:e + 16] = b"\xff" * 16
    elif how == "one-byte-of-a-missing-entry":  # (the old answer: that chunk stored)
        raw[start + 16 * missing[0] + 3] ^= 0x01
    elif how == "one-byte-of-a-stored-offset":  # (the old answer: right by luck, no error)
        raw[start + 16 * stored[0] + 1] ^= 0x40
    else:  # the checksum itself
        raw[start + crc - 2] ^= 0x80


DAMAGES = ["stored-entry-made-missing", "one-byte-of-a-missing-entry",
           "one-byte-of-a-stored-offset", "checksum"]


@pytest.mark.parametrize("path", ["google_crc32c", "fallback"])
@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("maker", SHARDED)
def test_a_damaged_shard_index_is_an_error(tmp_path: Path, maker: str, how: str, path: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    url, root, at_end, endian, crc = _sharded(tmp_path, maker)
    key = "c/0/0/0"  # (holds the first write, and a chunk of the second)
    f = root / key
    raw = bytearray(f.read_bytes())
    entries = _index_entries(bytes(raw), at_end, endian, crc)
    flat = [bool((e == 2**64 - 1).all()) for e in entries.reshape(-1, 2)]
    stored = [i for i, gone in enumerate(flat) if not gone]
    missing = [i for i, gone in enumerate(flat) if gone]
    assert stored and missing
    _damage(raw, at_end, how, stored, missing, int(np.prod(PER_SHARD)) * 16 + 4)
    f.write_bytes(bytes(raw))
    checked = _crc_path(monkeypatch, path)
    vol = voxgate.open(url)
    with pytest.raises(CorruptChunkError, match=re.escape(key)) as err:
        vol.missing_chunks()
    assert err.value.chunk == key and "crc32c" in str(err.value)
    assert checked
    b = vol.remote.meta.scale(0).bounds
    inside = Box(b.start + Vec(1, 1, 1), b.start + Vec(*SHARDS) - Vec(1, 1, 1))
    with pytest.raises(CorruptChunkError, match=re.escape(key)):
        vol.remote.absent_chunks(inside, 0)
    # a box in other shards does not read it: answered
    elsewhere = Box(b.start + Vec(*SHARDS), b.stop)
    far = {g for g in _touched() if all(x >= n for x, n in zip(g, PER_SHARD, strict=True))}
    sc = vol.remote.meta.scale(0)
    assert vol.remote.absent_chunks(elsewhere, 0) == sorted(
        g for g, _ in chunk_boxes(elsewhere, sc.chunks, b) if tuple(g) not in far)


@pytest.mark.parametrize("size", [0, 20, 131])
@pytest.mark.parametrize("maker", ["voxgate-end", "zarr-python-start"])
def test_a_shard_shorter_than_its_index_is_an_error(tmp_path: Path, maker: str,
                                                    size: int) -> None:
    """It was refused as a byte range past the end of the file: a VoxgateError that did not
    say the shard was damaged, nor which."""
    url, root, *_ = _sharded(tmp_path, maker)
    raw = (root / "c/0/0/0").read_bytes()
    (root / "c/0/0/0").write_bytes(raw[:size])
    with pytest.raises(CorruptChunkError, match=r"shard c/0/0/0 is shorter than its index "
                                                r"\(132 bytes\)") as err:
        voxgate.open(url).missing_chunks()
    assert err.value.chunk == "c/0/0/0"


# -- the fallbacks that halve ----------------------------------------------------------------

def _spy_halving(monkeypatch: pytest.MonkeyPatch) -> list[Box]:
    """The boxes answered by halving (``bisect_absent``)."""
    real = remotes_base.bisect_absent
    boxes: list[Box] = []

    def spy(box: Box, *a: Any) -> list[Vec]:
        boxes.append(box)
        return real(box, *a)

    monkeypatch.setattr(remotes_base, "bisect_absent", spy)
    return boxes


#: an array made by voxgate at an offset -> (its URL under the folder, the folder of its chunk
#: keys, their pattern, whether the key names x first, create options)
CREATED: dict[str, tuple[str, str, str, bool, dict[str, Any]]] = {
    "zarr3": ("zarr://{d}/v.zarr", "v.zarr/0", r"c/(\d+)/(\d+)/(\d+)", False, {}),
    "zarr2": ("zarr://{d}/v.zarr", "v.zarr/0", r"(\d+)/(\d+)/(\d+)", False, {"zarr_format": 2}),
    "n5": ("n5://{d}/v.n5", "v.n5/s0", r"(\d+)/(\d+)/(\d+)", True, {}),
    "zarr3-sharded": ("zarr://{d}/v.zarr", "v.zarr/0", r"c/(\d+)/(\d+)/(\d+)", False,
                      {"shards": SHARDS}),
}


def _created(d: Path, kind: str) -> tuple[str, set[tuple[int, ...]]]:
    """An array made and written by voxgate; its URL under ``d`` and the truth from disk."""
    template, folder, pattern, reverse, options = CREATED[kind]
    vol = voxgate.create(template.format(d=d), shape=SHAPE, dtype="uint16", chunks=CHUNKS,
                         voxel_size=(1, 1, 1), offset=OFFSET, **options)
    _write(vol)
    root = d / folder
    if kind == "zarr3-sharded":
        truth = _shard_truth(root, at_end=True)
    else:
        truth = _files(root, pattern, reverse)
    assert truth == _touched()
    return template.format(d=d), truth


@pytest.mark.parametrize("kind", sorted(CREATED))
def test_a_listing_far_larger_than_the_box_halves(tmp_path: Path, kind: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``_ChunkKeys.plan`` gives up listing where the listing would take more than
    ``_LIST_PAGES_ANYWAY`` pages and more than ``_KEYS_PER_CHUNK`` keys per chunk of the box:
    with one key a page, no page listed anyway and one key per chunk, every box but the
    whole volume (whose listing is exactly its chunks) is answered by halving."""
    url, truth = _created(tmp_path, kind)
    monkeypatch.setattr(_tensorstore, "_LIST_PAGE_KEYS", 1)
    monkeypatch.setattr(_tensorstore, "_LIST_PAGES_ANYWAY", 0)
    monkeypatch.setattr(_tensorstore, "_KEYS_PER_CHUNK", 1)
    plans: list[bool] = []
    real = _tensorstore._ChunkKeys.plan

    def plan(self: Any, *a: Any) -> Any:
        out = real(self, *a)
        plans.append(out is None)
        return out

    monkeypatch.setattr(_tensorstore._ChunkKeys, "plan", plan)
    halved = _spy_halving(monkeypatch)
    vol = voxgate.open(url)
    _check(vol, truth)
    assert len(halved) == plans.count(True) >= 3
    assert plans.count(False) >= 1  # (the whole volume: listed)


@pytest.mark.parametrize("writer", ["zarr-python", "tensorstore"])
def test_a_shard_index_voxgate_does_not_read_halves(tmp_path: Path, writer: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Index codecs ``[transpose, bytes, crc32c]`` (written by zarr-python and by tensorstore
    alike): voxgate reads no such index, so tensorstore's storage statistics are asked."""
    index_codecs = [TransposeCodec(order=(3, 2, 1, 0)), BytesCodec(), Crc32cCodec()]
    path = tmp_path / "x.zarr"
    if writer == "zarr-python":
        z = _zarr_python(path, index_codecs=index_codecs)
    else:
        _tensorstore_sharded(path, {"chunk_shape": list(CHUNKS), "codecs": [{"name": "bytes"}],
                            "index_codecs": [c.to_dict() for c in index_codecs],
                            "index_location": "end"})
        z = zarr.open_array(str(path), mode="r")
    assert z.metadata.to_dict()["codecs"][0]["configuration"]["index_codecs"][0]["name"] == (
        "transpose")
    truth = _voxel_truth(z)
    assert truth == _touched()
    halved = _spy_halving(monkeypatch)
    _check(voxgate.open(str(path)), truth)
    assert len(halved) == 7  # (every question: 6 boxes and missing_chunks)


_serve = serve_directory  # (static_http: a backlog that takes tensorstore's requests)


def _channels_apart(d: Path) -> tuple[str, set[tuple[int, ...]]]:
    """A t, c, z, y, x array by zarr-python, each channel chunked apart, one channel of each
    write; a chunk is stored when either channel's is (the files on disk)."""
    z = zarr.create(store=str(d / "tc.zarr"), shape=(1, 2, *SHAPE), chunks=(1, 1, *CHUNKS),
                    dtype="uint8", fill_value=0, zarr_format=3,
                    dimension_names=["t", "c", "z", "y", "x"])
    for i, (a, e) in enumerate(WRITES):
        z[(0, i % 2, *(slice(x, y) for x, y in zip(a, e, strict=True)))] = 5 + i
    files = _files(d / "tc.zarr", r"c/0/[01]/(\d+)/(\d+)/(\d+)")
    return "zarr://{base}/tc.zarr", files


HTTP_KINDS = [*sorted(CREATED), "zarr-python-sharded-start", "zarr-python-channels-apart"]


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_keys_that_cannot_be_listed_over_http(tmp_path: Path, kind: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP cannot list: halving with tensorstore's storage statistics raised at its first
    question (a region of more than one chunk takes a listing), so ``missing_chunks`` and
    ``voxgate.copy`` of an HTTP-served zarr or N5 array failed.  Now chunk by chunk."""
    if kind == "zarr-python-sharded-start":
        _zarr_python(tmp_path / "z.zarr", index_location="start")
        truth = _shard_truth(tmp_path / "z.zarr", at_end=False)
        url = "zarr://{base}/z.zarr"
    elif kind == "zarr-python-channels-apart":
        url, truth = _channels_apart(tmp_path)
    else:
        local, truth = _created(tmp_path, kind)
        url = local.replace(str(tmp_path), "{base}")
    assert truth == _touched()
    one_by_one = _spy_method(monkeypatch, "_absent_one_by_one")
    with _serve(tmp_path) as base:
        vol = voxgate.open(url.format(base=base))
        assert vol.remote.meta.scale(0).bounds.start == (
            Vec(0, 0, 0) if kind.startswith("zarr-python") else OFFSET)
        _check(vol, truth)
        assert len(one_by_one) == 4  # (all but the 3 boxes of one chunk)
        if kind in ("zarr3", "n5"):  # a copy skips the absent chunks and equals the source
            report = voxgate.copy(vol, f"zarr://{tmp_path}/copy.zarr", progress=False)
            assert report.absent_counts == {0: 150 - len(truth)}
            np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path}/copy.zarr").read(),
                                          vol.read())


def _spy_method(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    """The calls of ``TSArray.<name>`` (none wrapped where there is no such method)."""
    calls: list[Any] = []
    real = getattr(_tensorstore.TSArray, name, None)
    if real is None:
        return calls

    def spy(self: Any, *a: Any) -> Any:
        calls.append(a)
        return real(self, *a)

    monkeypatch.setattr(_tensorstore.TSArray, name, spy)
    return calls
