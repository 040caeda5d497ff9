"""Fuzz every decoder voxgate owns or drives: only voxgate errors may come out.

Each test feeds a decoder random bytes and mutations of a valid encoding (truncations, bit
flips, a length or count field overwritten with a boundary value, a byte range deleted or
repeated) and fails on any exception that is not a :class:`voxgate.errors.VoxgateError`
(the relay's request bodies: anything but a 4xx bossDB error).  A valid input must still
decode (checked once per test, so a decoder that refuses everything cannot pass).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blosc
import lz4.block
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import voxgate
from voxgate.errors import RemoteUnavailableError, VoxgateError
from voxgate.formats.dvid_block import (
    decode_label_block,
    decode_rles,
    encode_label_block,
    encode_rles,
    pack_block_records,
    unpack_block_records,
)
from voxgate.formats.dvid_proto import (
    MappingOp,
    decode_keys,
    decode_keyvalues,
    decode_mapping_ops,
    encode_keys,
    encode_keyvalues,
    encode_mapping_ops,
)
from voxgate.formats.mesh import Mesh, decode_multires, encode_multires
from voxgate.formats.precomputed_chunks import decode_chunk, encode_chunk
from voxgate.formats.skeleton import Skeleton
from voxgate.geometry import Box
from voxgate.meta import VolumeMeta
from voxgate.relay.boss import decode_body
from voxgate.relay.cache import decode_cell, encode_cell
from voxgate.relay.errors import BossHTTPError
from voxgate.remotes._http import HTTPClient
from voxgate.remotes.boss import BossDBRemote
from voxgate.remotes.dvid import DVIDRemote, decode_ngmesh
from voxgate.storage import decompress
from voxgate.testing.dvid import DVIDState

#: VOXGATE_FUZZ_EXAMPLES raises the count for a longer local hunt; the suite runs 200
FUZZ = settings(max_examples=int(os.environ.get("VOXGATE_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

_BOUNDARY = (0, 1, 2, 3, 7, 8, 255, 256, 511, 512, 513, 2**15, 2**16 - 1, 2**16, 2**24,
             2**31 - 1, 2**31, 2**32 - 1)


@st.composite
def _mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    n = len(valid)
    kind = draw(st.sampled_from(["truncate", "flip", "field", "splice", "extend"]))
    if kind == "truncate":
        return valid[:draw(st.integers(0, max(0, n - 1)))]
    buf = bytearray(valid)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            if buf:
                i = draw(st.integers(0, len(buf) - 1))
                buf[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    if kind == "field":
        fmt = draw(st.sampled_from(["<H", "<I", "<i", "<Q"]))
        size = struct.calcsize(fmt)
        if n < size:
            return bytes(buf)
        # fields sit on their own alignment in every format here; most live near the start
        at = draw(st.one_of(st.integers(0, min(n - size, 64)), st.integers(0, n - size)))
        value = draw(st.one_of(st.sampled_from(_BOUNDARY), st.just(n), st.just(n // size),
                               st.integers(0, 2**32 - 1)))
        if fmt == "<H":
            value &= 0xFFFF
        elif fmt == "<i":
            value = (value & 0xFFFFFFFF) - (2**32 if value & 0x80000000 else 0)
        struct.pack_into(fmt, buf, at, value)
        return bytes(buf)
    if kind == "splice":
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, n))
        if draw(st.booleans()):
            return bytes(buf[:i] + buf[j:])
        return bytes(buf[:j] + buf[i:j] + buf[j:])
    return bytes(buf) + draw(st.binary(min_size=1, max_size=64))


def fuzz_bytes(valid: bytes, max_random: int = 512) -> st.SearchStrategy[bytes]:
    """Random bytes, or a mutation of ``valid``."""
    return st.one_of(st.binary(max_size=max_random), _mutated(valid))


def only_voxgate_errors(fn: Callable[[], object]) -> None:
    try:
        fn()
    except VoxgateError:
        pass


def only_answer_errors(fn: Callable[[], object]) -> None:
    """only_voxgate_errors for a REST Remote reading the answer server: an unreachable server
    is not an answer to the body (the bodies must reach the decoder)."""
    try:
        fn()
    except RemoteUnavailableError as exc:
        pytest.fail(f"the body never reached the decoder: {exc}")
    except VoxgateError:
        pass


# -- precomputed chunks --------------------------------------------------------------------------
_RNG = np.random.default_rng(0)
_SEG = _RNG.integers(0, 5, (1, 8, 8, 8)).astype(np.uint64) * np.uint64(2**40 + 7)
_SEG[0, :4] = 3  # a block with one label (0 bits), next to blocks with several
_CSEG = encode_chunk(_SEG, "compressed_segmentation", block_size=(4, 4, 4))
_RAW = encode_chunk(_RNG.integers(0, 60000, (1, 4, 4, 4)).astype(np.uint16), "raw")
_IMG = _RNG.integers(0, 255, (1, 2, 8, 8)).astype(np.uint8)
_JPEG = encode_chunk(_IMG, "jpeg")


def test_valid_chunks_decode() -> None:
    got = decode_chunk(_CSEG, "compressed_segmentation", _SEG.shape, np.dtype(np.uint64),
                       block_size=(4, 4, 4), name="c")
    np.testing.assert_array_equal(got, _SEG)
    assert decode_chunk(_JPEG, "jpeg", _IMG.shape, np.dtype(np.uint8), name="j").shape == \
        _IMG.shape


@FUZZ
@given(data=fuzz_bytes(_CSEG), dtype=st.sampled_from([np.uint32, np.uint64]))
def test_compressed_segmentation(data: bytes, dtype: type) -> None:
    only_voxgate_errors(lambda: decode_chunk(data, "compressed_segmentation", (1, 8, 8, 8),
                                             np.dtype(dtype), block_size=(4, 4, 4), name="c"))


@FUZZ
@given(data=fuzz_bytes(_CSEG), channels=st.integers(1, 3),
       block=st.sampled_from([(4, 4, 4), (8, 8, 8), (1, 2, 3), (3, 3, 3)]))
def test_compressed_segmentation_any_layout(data: bytes, channels: int,
                                            block: tuple[int, int, int]) -> None:
    only_voxgate_errors(lambda: decode_chunk(data, "compressed_segmentation",
                                             (channels, 5, 8, 7), np.dtype(np.uint64),
                                             block_size=block, name="c"))


@FUZZ
@given(data=fuzz_bytes(_RAW))
def test_raw_chunk(data: bytes) -> None:
    only_voxgate_errors(lambda: decode_chunk(data, "raw", (1, 4, 4, 4), np.dtype(np.uint16),
                                             name="r"))


@FUZZ
@given(data=fuzz_bytes(_JPEG), channels=st.sampled_from([1, 3]))
def test_jpeg_chunk(data: bytes, channels: int) -> None:
    only_voxgate_errors(lambda: decode_chunk(data, "jpeg", (channels, 2, 8, 8),
                                             np.dtype(np.uint8), name="j"))


_COMPRESSED = {".gz": gzip.compress(_RAW), ".xz": __import__("lzma").compress(_RAW),
               ".bz2": __import__("bz2").compress(_RAW)}


@FUZZ
@given(suffix=st.sampled_from(sorted(_COMPRESSED)), data=st.data())
def test_compressed_chunk_files(suffix: str, data: st.DataObject) -> None:
    body = data.draw(fuzz_bytes(_COMPRESSED[suffix]))
    only_voxgate_errors(lambda: decompress(body, suffix, "chunk" + suffix))


# -- chunks through the stores that tensorstore or voxgate's codecs read --------------------------
def _layer(root: Path, scheme: str, dtype: str, gz: bool = False, **options: Any
           ) -> tuple[str, list[Path], bytes]:
    """A 16^3 volume of 8^3 chunks (or one shard) written by voxgate; its first data file.

    ``gz``: every chunk file is then stored as CloudVolume does on local disks, ``<name>.gz``
    (read by voxgate's own codecs, not tensorstore)."""
    url = f"{scheme}://{root}"
    kind = "segmentation" if dtype == "uint64" else "image"
    vol = voxgate.create(url, shape=(16, 16, 16), chunks=(8, 8, 8), dtype=dtype,
                         voxel_size=(8, 8, 8), kind=kind, **options)
    data = (np.arange(16**3).reshape(16, 16, 16) % 7).astype(dtype) * 3
    vol[:] = data
    meta = {"info", "zarr.json", ".zarray", ".zattrs", ".zgroup", "attributes.json"}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in meta
                   and not p.name.startswith("."))
    assert files
    if gz:
        for f in files:
            f.with_name(f.name + ".gz").write_bytes(gzip.compress(f.read_bytes()))
            f.unlink()
        files = [f.with_name(f.name + ".gz") for f in files]
    return url, files, files[0].read_bytes()


_STORES = {
    "precomputed raw": ("precomputed", "uint16", {"encoding": "raw"}),
    "precomputed jpeg": ("precomputed", "uint8", {"encoding": "jpeg"}),
    "precomputed png": ("precomputed", "uint8", {"encoding": "png"}),
    "precomputed compressed_segmentation": ("precomputed", "uint64",
                                            {"encoding": "compressed_segmentation"}),
    "precomputed sharded": ("precomputed", "uint64", {"sharded": True}),
    "precomputed raw .gz": ("precomputed", "uint16", {"encoding": "raw", "gz": True}),
    "precomputed compressed_segmentation .gz": ("precomputed", "uint64",
                                                {"encoding": "compressed_segmentation",
                                                 "gz": True}),
    "zarr v2": ("zarr", "uint16", {"zarr_format": 2}),
    "zarr v3": ("zarr", "uint16", {}),
    "zarr v3 sharded": ("zarr", "uint64", {"shards": (16, 16, 16)}),
    "n5": ("n5", "uint16", {}),
}


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, list[Path], bytes]]:
    tmp = tmp_path_factory.mktemp("layers")
    return {name: _layer(tmp / name.replace(" ", "_"), scheme, dtype, **options)
            for name, (scheme, dtype, options) in _STORES.items()}


def test_stored_chunks_are_read_and_damage_is_seen(
        layers: dict[str, tuple[str, list[Path], bytes]]) -> None:
    expected = (np.arange(16**3).reshape(16, 16, 16) % 7) * 3
    for name, (url, files, valid) in layers.items():
        got = voxgate.open(url).read()
        if "jpeg" in name:  # lossy, and this pattern is all high frequencies
            assert np.abs(got.astype(int) - expected).mean() < 8, name
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)
        try:
            files[0].write_bytes(valid[: len(valid) // 2])
            with pytest.raises(VoxgateError):
                voxgate.open(url).read()
        finally:
            files[0].write_bytes(valid)


@FUZZ
@given(which=st.sampled_from(sorted(_STORES)), data=st.data())
def test_stored_chunks_and_shard_indexes(layers: dict[str, tuple[str, list[Path], bytes]],
                                         which: str, data: st.DataObject) -> None:
    """A damaged chunk file (or shard file: its shard index, minishard indexes and chunk
    data) read through voxgate.open, whoever decodes it (tensorstore or voxgate)."""
    url, files, valid = layers[which]
    body = data.draw(fuzz_bytes(valid, 256))
    target = files[0]
    try:
        target.write_bytes(body)
        only_voxgate_errors(lambda: voxgate.open(url).read())
    finally:
        target.write_bytes(valid)
    assert voxgate.open(url).read().shape == (16, 16, 16)


# -- meshes ---------------------------------------------------------------------------------------
_VERTS = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10], [10, 10, 10]], np.float32)
_FACES = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 4]], np.uint32)
_MESH = Mesh(_VERTS, _FACES, 5)
_LEGACY = _MESH.to_precomputed()
_BIG = Mesh(np.concatenate([_VERTS, _VERTS + 40, _VERTS * 3 + 80]),
            np.concatenate([_FACES, _FACES + 5, _FACES + 10]), 6)
_MANIFEST, _FRAGMENTS = encode_multires(_BIG, lods=3, lod_scale=1.0)


def _multires() -> tuple[bytes, bytes]:
    return _MANIFEST, _FRAGMENTS


def test_valid_meshes_decode() -> None:
    assert Mesh.from_precomputed(_LEGACY) == Mesh(_VERTS, _FACES)
    manifest, fragments = _multires()
    got = decode_multires(manifest, fragments, vertex_quantization_bits=16)
    assert got.num_faces >= 3 * len(_FACES)  # cut on the octree grid: never fewer
    draco = _draco()
    assert Mesh.from_draco(draco).num_faces == len(_FACES)


def _draco() -> bytes:
    import DracoPy

    return bytes(DracoPy.encode(_VERTS, _FACES))


@FUZZ
@given(data=fuzz_bytes(_LEGACY))
def test_legacy_mesh(data: bytes) -> None:
    only_voxgate_errors(lambda: Mesh.from_precomputed(data))
    only_voxgate_errors(lambda: decode_ngmesh(data))


@FUZZ
@given(data=st.data(), lod=st.integers(0, 2), bits=st.sampled_from([10, 16]),
       which=st.sampled_from(["manifest", "fragments", "both"]))
def test_multires_mesh(data: st.DataObject, lod: int, bits: int, which: str) -> None:
    manifest, fragments = _multires()
    if which in ("manifest", "both"):
        manifest = data.draw(fuzz_bytes(manifest))
    if which in ("fragments", "both"):
        fragments = data.draw(fuzz_bytes(fragments, 2048))
    only_voxgate_errors(lambda: decode_multires(manifest, fragments, lod=lod,
                                                vertex_quantization_bits=bits))


@FUZZ
@given(data=st.data())
def test_draco_mesh(data: st.DataObject) -> None:
    body = data.draw(fuzz_bytes(_draco()))
    only_voxgate_errors(lambda: Mesh.from_draco(body))


_PLY = _MESH.to_ply()


@FUZZ
@given(data=fuzz_bytes(_PLY))
def test_ply_and_obj_mesh(data: bytes) -> None:
    only_voxgate_errors(lambda: Mesh.from_ply(data))
    only_voxgate_errors(lambda: Mesh.from_obj(data))


# -- skeletons ------------------------------------------------------------------------------------
_SKEL = Skeleton(_VERTS, np.array([[0, 1], [1, 2], [2, 3], [3, 4]], np.uint32),
                 radius=np.arange(5, dtype=np.float32), vertex_types=np.arange(5, dtype=np.uint8))
_SKEL_BYTES = _SKEL.to_precomputed()
_SWC = _SKEL.to_swc().encode()
_ATTRS = [{"id": "radius", "data_type": "float32", "num_components": 1},
          {"id": "vertex_types", "data_type": "uint8", "num_components": 1},
          {"id": "vec", "data_type": "int16", "num_components": 3}]


def test_valid_skeletons_decode() -> None:
    got = Skeleton.from_precomputed(_SKEL_BYTES)
    np.testing.assert_array_equal(got.vertices, _VERTS)
    assert Skeleton.from_swc(_SWC).vertices.shape == (5, 3)


@FUZZ
@given(data=fuzz_bytes(_SKEL_BYTES), attrs=st.sampled_from([None, _ATTRS[:2], _ATTRS, []]))
def test_precomputed_skeleton(data: bytes, attrs: list[dict[str, Any]] | None) -> None:
    only_voxgate_errors(lambda: Skeleton.from_precomputed(data, attrs))


@FUZZ
@given(data=fuzz_bytes(_SWC))
def test_swc_skeleton(data: bytes) -> None:
    only_voxgate_errors(lambda: Skeleton.from_swc(data))


# -- DVID blocks and sparse volumes ---------------------------------------------------------------
_BLOCK = np.zeros((16, 16, 16), np.uint64)
_BLOCK[:8] = 7
_BLOCK[8:, :, :5] = 2**60 + 1
_BLOCK[8:, 8:] = (np.arange(8 * 8 * 16).reshape(8, 8, 16) % 5).astype(np.uint64) + 100
_LABEL_BLOCK = encode_label_block(_BLOCK)
_RUNS = np.array([[1, 2, 3, 4], [0, 0, 0, 1], [-5, 7, 9, 100]], np.int32)


def test_valid_dvid_blocks_decode() -> None:
    np.testing.assert_array_equal(decode_label_block(_LABEL_BLOCK, (16, 16, 16)), _BLOCK)
    np.testing.assert_array_equal(decode_rles(encode_rles(_RUNS)), _RUNS)


@FUZZ
@given(data=fuzz_bytes(_LABEL_BLOCK, 2048), shaped=st.booleans())
def test_dvid_label_block(data: bytes, shaped: bool) -> None:
    # without a shape a header may ask for up to DVID's largest block (4 GiB of uint64):
    # unshaped decoding is fuzzed on inputs that cannot ask for more than 2**21 voxels
    if not shaped and len(data) >= 12:
        gx, gy, gz = struct.unpack_from("<3I", data)
        if gx * gy * gz > 4096:
            shaped = True
    only_voxgate_errors(lambda: decode_label_block(data, (16, 16, 16) if shaped else None))


@FUZZ
@given(data=fuzz_bytes(encode_rles(_RUNS)), header=st.booleans())
def test_dvid_sparse_volume(data: bytes, header: bool) -> None:
    only_voxgate_errors(lambda: decode_rles(data, header=header))


_RECORDS = pack_block_records([((0, 1, 2), gzip.compress(_LABEL_BLOCK)), ((3, 4, 5), b"xy")])


@FUZZ
@given(data=fuzz_bytes(_RECORDS, 1024))
def test_dvid_block_records(data: bytes) -> None:
    def decode() -> None:
        for _, payload in unpack_block_records(data):
            bytes(payload)

    only_voxgate_errors(decode)


# -- DVID protobuf --------------------------------------------------------------------------------
_KV = encode_keyvalues({"a": b"\x00\x01", "ключ": b"", "c" * 200: bytes(range(256))})
_KEYS = encode_keys(["a", "b", "ключ"])
_OPS = encode_mapping_ops([MappingOp(2**64 - 1, [1, 2, 2**40]), MappingOp(5, [], mutid=3)])


def test_valid_protobuf_decodes() -> None:
    assert decode_keys(_KEYS) == ["a", "b", "ключ"]
    assert decode_keyvalues(_KV)["a"] == b"\x00\x01"
    assert decode_mapping_ops(_OPS)[0].mapped == 2**64 - 1


@FUZZ
@given(which=st.sampled_from(["kv", "keys", "ops"]), data=st.data())
def test_dvid_protobuf(which: str, data: st.DataObject) -> None:
    valid, fn = {"kv": (_KV, decode_keyvalues), "keys": (_KEYS, decode_keys),
                 "ops": (_OPS, decode_mapping_ops)}[which]
    body = data.draw(fuzz_bytes(valid))
    only_voxgate_errors(lambda: fn(body))


# -- server answers: DVID raw (uint8blk, labelmap lz4 / gzip) and bossDB blosc cutouts ------------
class _Answer:
    """What the answer server (below) sends for every request: ``body``."""

    def __init__(self) -> None:
        self.body = b""


class _AnswerServer:
    """A plain HTTP/1.1 server on 127.0.0.1 answering every GET with the current answer's
    body (with its length), so the REST Remotes' own transport (urllib3 into a buffer) carries
    the fuzzed bodies, as it carries a server's."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.answer = _Answer()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = outer.answer.body
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.client = HTTPClient(f"http://127.0.0.1:{self.server.server_address[1]}",
                                 retries=0)


_answers: _AnswerServer | None = None


def _client(answer: _Answer) -> HTTPClient:
    """The client of the answer server, which now answers with ``answer``."""
    global _answers
    if _answers is None:
        _answers = _AnswerServer()
    _answers.answer = answer
    return _answers.client


def _dvid_remote(answer: _Answer, typename: str, compression: str) -> DVIDRemote:
    import threading

    remote = DVIDRemote.__new__(DVIDRemote)
    dtype = "uint8" if typename == "uint8blk" else "uint64"
    remote.meta = VolumeMeta.build(shape=(16, 16, 16), dtype=dtype, chunks=(16, 16, 16),
                                   voxel_size=(8, 8, 8))
    remote.is_label = typename != "uint8blk"
    remote.typename = typename
    remote.compression = compression
    remote.instance = "x"
    remote._scale_names = ["x"]
    remote.uuid = "abc"
    remote.url = "dvid://127.0.0.1:9/abc/x"
    remote.supervoxels = False
    remote.concurrency = 2
    remote._pool = None
    remote._pool_lock = threading.Lock()
    remote.client = _client(answer)
    return remote


_DVID_BOX = Box((0, 0, 0), (4, 4, 4))
_DVID_VALID = {
    ("uint8blk", "none"): bytes(range(64)),
    ("labelmap", "lz4"): lz4.block.compress(np.arange(64, dtype="<u8").tobytes(),
                                            store_size=False),
    ("labelmap", "gzip"): gzip.compress(np.arange(64, dtype="<u8").tobytes()),
    ("labelmap", "none"): np.arange(64, dtype="<u8").tobytes(),
}


def test_valid_dvid_answers_decode() -> None:
    answer = _Answer()
    for (typename, comp), body in _DVID_VALID.items():
        answer.body = body
        got = _dvid_remote(answer, typename, comp).read(_DVID_BOX)
        assert got.reshape(-1).tolist() == list(range(64))


@FUZZ
@given(kind=st.sampled_from(sorted(_DVID_VALID)), data=st.data())
def test_dvid_raw_answers(kind: tuple[str, str], data: st.DataObject) -> None:
    answer = _Answer()
    answer.body = data.draw(fuzz_bytes(_DVID_VALID[kind]))
    remote = _dvid_remote(answer, *kind)
    only_answer_errors(lambda: remote.read(_DVID_BOX))


def _boss_remote(answer: _Answer, dtype: str) -> BossDBRemote:
    remote = BossDBRemote.__new__(BossDBRemote)
    remote.meta = VolumeMeta.build(shape=(16, 64, 64), dtype=dtype, chunks=(16, 512, 512),
                                   voxel_size=(8, 8, 8))
    remote.collection, remote.experiment, remote.channel = "c", "e", "ch"
    remote.url = "bossdb://127.0.0.1:9/c/e/ch"
    remote.time, remote._samples = 0, 1
    remote.concurrency = 2
    remote._pool = None
    remote.client = _client(answer)
    return remote


_BOSS_BOX = Box((0, 0, 0), (2, 4, 8))
_BOSS_VALID = {dt: blosc.compress(np.arange(64, dtype=dt).tobytes(), typesize=np.dtype(dt)
                                  .itemsize, cname=cname)
               for dt, cname in (("uint8", "lz4"), ("uint16", "zstd"), ("uint64", "blosclz"))}


def test_valid_boss_answers_decode() -> None:
    answer = _Answer()
    for dt, body in _BOSS_VALID.items():
        answer.body = body
        assert _boss_remote(answer, dt).read(_BOSS_BOX).reshape(-1).tolist() == list(range(64))


@FUZZ
@given(dtype=st.sampled_from(sorted(_BOSS_VALID)), data=st.data())
def test_boss_blosc_answers(dtype: str, data: st.DataObject) -> None:
    answer = _Answer()
    answer.body = data.draw(fuzz_bytes(_BOSS_VALID[dtype]))
    remote = _boss_remote(answer, dtype)
    only_answer_errors(lambda: remote.read(_BOSS_BOX))


# -- the relay: POSTed cutout bodies and its own cache entries -------------------------------------
def _npygz(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return zlib.compress(buf.getvalue())


_POST = np.arange(2 * 4 * 8, dtype=np.uint16).reshape(2, 4, 8)
_BODIES = {"application/blosc": blosc.compress(_POST.tobytes(), typesize=2),
           "application/npygz": _npygz(_POST)}


def test_valid_relay_bodies_decode() -> None:
    for ctype, body in _BODIES.items():
        np.testing.assert_array_equal(decode_body(body, ctype, np.dtype(np.uint16), (2, 4, 8)),
                                      _POST)


@FUZZ
@given(ctype=st.sampled_from(sorted(_BODIES)), dtype=st.sampled_from(["uint16", "uint64"]),
       data=st.data())
def test_relay_post_bodies(ctype: str, dtype: str, data: st.DataObject) -> None:
    body = data.draw(fuzz_bytes(_BODIES[ctype]))
    try:
        decode_body(body, ctype, np.dtype(dtype), (2, 4, 8))
    except BossHTTPError as exc:
        assert 400 <= exc.status < 500, exc


_CELL = encode_cell(np.arange(60, dtype=np.uint64).reshape(3, 4, 5))


@FUZZ
@given(data=fuzz_bytes(_CELL))
def test_relay_cache_entries(data: bytes) -> None:
    only_voxgate_errors(lambda: decode_cell(data, "entry"))


# -- the DVID test server: what it decodes from POSTs ------------------------------------------
@pytest.fixture(scope="module")
def dvid_state() -> tuple[DVIDState, str]:
    state = DVIDState()

    def call(method: str, path: str, body: bytes = b"") -> bytes:
        reply = state.handle(method, path, {}, body, {})
        assert reply.status == 200, reply.body
        return reply.body

    uuid = json.loads(call("POST", "/api/repos", b'{"alias": "fuzz"}'))["root"]
    for name, typename in (("seg", "labelmap"), ("kv", "keyvalue")):
        call("POST", f"/api/repo/{uuid}/instance",
             json.dumps({"typename": typename, "dataname": name}).encode())
    return state, uuid


_SERVER_POSTS: dict[str, tuple[str, dict[str, str], bytes]] = {
    "blocks": ("seg/blocks", {}, pack_block_records(
        [((0, 0, 0), gzip.compress(encode_label_block(np.pad(_BLOCK, ((0, 48),) * 3))))])),
    "raw lz4": ("seg/raw/0_1_2/64_64_64/0_0_0", {"compression": "lz4"}, lz4.block.compress(
        np.ones(64**3, "<u8").tobytes(), store_size=False)),
    "raw gzip": ("seg/raw/0_1_2/64_64_64/0_0_0", {"compression": "gzip"},
                 gzip.compress(np.ones(64**3, "<u8").tobytes())),
    "keyvalues": ("kv/keyvalues", {}, _KV),
    "mappings": ("seg/mappings", {}, _OPS),
}


def test_valid_server_posts(dvid_state: tuple[DVIDState, str]) -> None:
    state, uuid = dvid_state
    for path, query, body in _SERVER_POSTS.values():
        reply = state.handle("POST", f"/api/node/{uuid}/{path}", query, body, {})
        assert reply.status == 200, reply.body


@FUZZ
@given(which=st.sampled_from(sorted(_SERVER_POSTS)), data=st.data())
def test_dvid_test_server_posts(dvid_state: tuple[DVIDState, str], which: str,
                                data: st.DataObject) -> None:
    """The test server answers a damaged body with a 4xx, as DVID does, never a crash."""
    state, uuid = dvid_state
    path, query, valid = _SERVER_POSTS[which]
    body = data.draw(fuzz_bytes(valid, 1024))
    reply = state.handle("POST", f"/api/node/{uuid}/{path}", query, body, {})
    assert reply.status == 200 or 400 <= reply.status < 500, (reply.status, reply.body)
