"""DVID's wire formats from DVID's own documentation, not from voxgate's encoder.

The DVID test server (voxgate.testing.dvid) uses the same codecs as the client, so a
symmetric codec bug would pass every client-server test.  These bytes are written by hand
from DVID's source (github.com/janelia-flyem/dvid):

- ``datatype/common/labels/compressed.go``: the compressed label Block.  Its comment gives
  the layout (``3 * uint32 gx, gy, gz; uint32 N; N * uint64 labels``; when ``N > 1``:
  ``Nsb * uint16`` labels per sub-block, ``sum(Ns) * uint32`` indices into the label list,
  then per sub-block ``512 * ceil(log2(Ns[i]))`` bits of voxel values, byte-padded, all
  little-endian); ``encodeBlock`` walks sub-blocks and the voxels inside one x fastest, then
  y, then z, lists a sub-block's labels in order of first appearance, and writes each value
  most significant bit first (``getPackedValue`` reads them back); ``bitsFor(n)`` is the bit
  length of ``n - 1``; ``setExportedVars`` refuses a block of 0 labels; a sub-block with
  ``Ns == 0`` reads as label 0.
- ``datatype/common/proto/keyvalue.proto`` and ``labelops.proto``: the protobuf messages
  (field numbers and types below), encoded per the protobuf wire format: a tag is
  ``field << 3 | wire type`` (0 varint, 2 length-delimited), varints are 7 bits per byte,
  least significant group first; proto3 packs ``repeated uint64``.

DVID's block-level label order comes from a Go map (any order): the decoder must follow the
table, so the hand-built blocks list labels unsorted.  voxgate's encoder sorts labels, which
makes its output canonical; it is compared byte for byte with a hand-built sorted block.
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from voxgate.errors import CorruptChunkError, InvalidRequestError, VoxgateError
from voxgate.formats.dvid_block import (
    DVIDFormatError,
    decode_label_block,
    decode_rles,
    encode_label_block,
    encode_rles,
    pack_block_records,
    unpack_block_records,
)
from voxgate.formats.dvid_proto import (
    MappingOp,
    ProtobufError,
    decode_keys,
    decode_keyvalues,
    decode_mapping_ops,
    encode_keys,
    encode_keyvalues,
    encode_mapping_ops,
)


# -- hand-built label blocks ----------------------------------------------------------------------
def header(gx: int, gy: int, gz: int, labels: list[int]) -> bytes:
    return struct.pack("<4I", gx, gy, gz, len(labels)) + struct.pack(f"<{len(labels)}Q", *labels)


def msb_bits(values: list[int], bits: int) -> bytes:
    """Values packed most significant bit first, as a string of '0'/'1' then bytes (padded)."""
    text = "".join(format(v, f"0{bits}b") for v in values)
    text += "0" * (-len(text) % 8)
    return int(text, 2).to_bytes(len(text) // 8, "big") if text else b""


def subblock(arr: np.ndarray, sz: int, sy: int, sx: int) -> np.ndarray:
    return arr[8 * sz:8 * sz + 8, 8 * sy:8 * sy + 8, 8 * sx:8 * sx + 8]


A, B = 7, 2**40 + 1


def test_solid_block() -> None:
    label = 2**63 + 5
    golden = struct.pack("<IIII", 2, 2, 2, 1) + struct.pack("<Q", label)
    assert len(golden) == 24  # MakeSolidBlock's 24 bytes
    expected = np.full((16, 16, 16), label, np.uint64)
    got = decode_label_block(golden, (16, 16, 16))
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, expected)
    assert encode_label_block(expected) == golden


def _two_labels() -> np.ndarray:
    out = np.full((16, 16, 16), B, np.uint64)
    out[0:8, 0:8, 0:4] = A  # sub-block 0: x < 4 is A, the rest B
    return out


def test_two_labels_as_dvid_orders_them() -> None:
    # block labels [B, A] (a Go map's order); sub-block 0 lists A first (its first voxel)
    golden = (header(2, 2, 2, [B, A])
              + struct.pack("<8H", 2, 1, 1, 1, 1, 1, 1, 1)
              + struct.pack("<9I", 1, 0, 0, 0, 0, 0, 0, 0, 0)
              + bytes([0b00001111]) * 64)  # 1 bit a voxel, rows of 8 x: A A A A B B B B
    np.testing.assert_array_equal(decode_label_block(golden, (16, 16, 16)), _two_labels())


def test_two_labels_canonical_bytes() -> None:
    golden = (header(2, 2, 2, [A, B])
              + struct.pack("<8H", 2, 1, 1, 1, 1, 1, 1, 1)
              + struct.pack("<9I", 0, 1, 1, 1, 1, 1, 1, 1, 1)
              + bytes([0x0F]) * 64)
    np.testing.assert_array_equal(decode_label_block(golden), _two_labels())
    assert encode_label_block(_two_labels()) == golden


L0 = [50, 10, 40, 20, 30]  # sub-block 0: voxel v holds L0[v % 5] (3 bits a voxel)
L1 = [1000 + i for i in range(300)]  # sub-block 1: voxel v holds L1[v % 300] (9 bits a voxel)


def _many_bits() -> np.ndarray:
    """8 (z) x 8 (y) x 16 (x): two sub-blocks along x."""
    v = np.arange(512)
    out = np.zeros((8, 8, 16), np.uint64)
    out[:, :, 0:8] = np.asarray(L0, np.uint64)[v % 5].reshape(8, 8, 8)
    out[:, :, 8:16] = np.asarray(L1, np.uint64)[v % 300].reshape(8, 8, 8)
    return out


def test_several_bits_per_voxel() -> None:
    values0 = msb_bits([v % 5 for v in range(512)], 3)
    values1 = msb_bits([v % 300 for v in range(512)], 9)  # 9-bit values straddle bytes
    assert (len(values0), len(values1)) == (192, 576)
    golden = (header(2, 1, 1, L0 + L1)
              + struct.pack("<2H", 5, 300)
              + struct.pack("<305I", *range(5), *range(5, 305))
              + values0 + values1)
    np.testing.assert_array_equal(decode_label_block(golden, (8, 8, 16)), _many_bits())


def test_several_bits_per_voxel_canonical_bytes() -> None:
    ranks = [sorted(L0).index(label) for label in L0]  # local index of L0[i] in sorted order
    golden = (header(2, 1, 1, sorted(L0) + L1)
              + struct.pack("<2H", 5, 300)
              + struct.pack("<305I", *range(5), *range(5, 305))
              + msb_bits([ranks[v % 5] for v in range(512)], 3)
              + msb_bits([v % 300 for v in range(512)], 9))
    assert encode_label_block(_many_bits()) == golden
    np.testing.assert_array_equal(decode_label_block(golden), _many_bits())


def test_bits_for_powers_of_two() -> None:
    """bitsFor(n) is the bit length of n - 1: 4 labels take 2 bits, 5 take 3, 2 take 1."""
    for n, bits in ((2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4), (256, 8), (257, 9)):
        labels = [100 + i for i in range(n)]
        local = [v % n for v in range(512)]
        golden = (header(1, 1, 1, labels) + struct.pack("<H", n)
                  + struct.pack(f"<{n}I", *range(n)) + msb_bits(local, bits))
        expected = np.asarray(labels, np.uint64)[np.asarray(local)].reshape(8, 8, 8)
        np.testing.assert_array_equal(decode_label_block(golden), expected)
        assert encode_label_block(expected) == golden


def test_empty_subblock_reads_as_zero() -> None:
    golden = header(2, 1, 1, [5, 9]) + struct.pack("<2H", 0, 1) + struct.pack("<I", 1)
    expected = np.zeros((8, 8, 16), np.uint64)
    expected[:, :, 8:] = 9
    np.testing.assert_array_equal(decode_label_block(golden), expected)


def test_blocks_dvid_refuses() -> None:
    with pytest.raises(DVIDFormatError, match="0 labels"):
        decode_label_block(header(2, 2, 2, []) + bytes(8))
    with pytest.raises(DVIDFormatError, match="sub-block grid"):
        decode_label_block(header(129, 1, 1, [1]))
    bad = header(1, 1, 1, [1, 2]) + struct.pack("<H", 2) + struct.pack("<2I", 0, 2) + bytes(64)
    with pytest.raises(DVIDFormatError, match="past the block"):
        decode_label_block(bad)
    with pytest.raises(DVIDFormatError) as info:
        decode_label_block(b"\x01" * 10)
    assert isinstance(info.value, CorruptChunkError) and isinstance(info.value, ValueError)
    with pytest.raises(InvalidRequestError):
        encode_label_block(np.zeros((8, 8, 12), np.uint64))


def test_block_records_and_rles() -> None:
    """``GET blocks`` records (i32 bx, by, bz, nbytes + gzipped block) and sparsevol RLEs."""
    block = struct.pack("<IIII", 1, 1, 1, 1) + struct.pack("<Q", 42)
    gz = gzip.compress(block)
    golden = struct.pack("<4i", 3, -1, 2, len(gz)) + gz + struct.pack("<4i", 0, 0, 0, 0)
    records = [(xyz, bytes(p)) for xyz, p in unpack_block_records(golden)]
    assert records == [((3, -1, 2), gz), ((0, 0, 0), b"")]
    assert pack_block_records(records) == golden
    assert decode_label_block(gzip.decompress(records[0][1])).tolist() == \
        np.full((8, 8, 8), 42, np.uint64).tolist()
    # rles: u8 payload 0, u8 ndims 3, u8 rundim 0, u8 0, u32 0 voxels, u32 nspans, spans
    rles = struct.pack("<BBBBII", 0, 3, 0, 0, 0, 2) + struct.pack("<8i", 5, 6, 7, 3, -2, 0, 1, 1)
    runs = decode_rles(rles)
    assert runs.tolist() == [[5, 6, 7, 3], [-2, 0, 1, 1]]
    assert encode_rles(runs) == rles


# -- protobuf, by hand ----------------------------------------------------------------------------
def test_keyvalues_by_hand() -> None:
    # KeyValue{key: "ab", value: 00 ff}: 0a 02 'a' 'b' 12 02 00 ff; KeyValues.kvs = 1
    kv1 = b"\x0a\x02ab\x12\x02\x00\xff"
    kv2 = b"\x0a\x01c"  # an empty value is left out, as proto3 does
    golden = b"\x0a" + bytes([len(kv1)]) + kv1 + b"\x0a" + bytes([len(kv2)]) + kv2
    assert decode_keyvalues(golden) == {"ab": b"\x00\xff", "c": b""}
    assert decode_keyvalues(encode_keyvalues({"ab": b"\x00\xff", "c": b""})) == \
        {"ab": b"\x00\xff", "c": b""}
    # a 300-byte value: its length is the two-byte varint ac 02
    long = b"\x0a\x01k\x12\xac\x02" + bytes(300)
    assert decode_keyvalues(b"\x0a\xb2\x02" + long) == {"k": bytes(300)}


def test_keys_by_hand() -> None:
    golden = b"\x0a\x01a\x0a\x03b/c"
    assert decode_keys(golden) == ["a", "b/c"]
    assert encode_keys(["a", "b/c"]) == golden
    # Keys.key_ranges = 2: KeyRange{key = 1, byte_start = 2, byte_end = 3}
    key_range = b"\x0a\x01z\x10\x05\x18\x80\x01"
    assert decode_keys(golden + b"\x12" + bytes([len(key_range)]) + key_range) == \
        ["a", "b/c", "z"]


def test_mapping_ops_by_hand() -> None:
    top = b"\xff" * 9 + b"\x01"  # 2**64 - 1 as a varint: ten bytes
    packed = b"\x01" + b"\xac\x02" + top  # original = [1, 300, 2**64 - 1], packed (proto3)
    op = b"\x08\x07" + b"\x10\x2a" + b"\x1a" + bytes([len(packed)]) + packed
    golden = b"\x0a" + bytes([len(op)]) + op
    (got,) = decode_mapping_ops(golden)
    assert (got.mutid, got.mapped, got.original) == (7, 42, [1, 300, 2**64 - 1])
    assert encode_mapping_ops([MappingOp(42, [1, 300, 2**64 - 1], mutid=7)]) == golden
    # the same repeated field unpacked (tag 0x18 per value): parsers must accept both
    unpacked = b"\x08\x07\x10\x2a\x18\x01\x18\xac\x02\x18" + top
    (got,) = decode_mapping_ops(b"\x0a" + bytes([len(unpacked)]) + unpacked)
    assert got.original == [1, 300, 2**64 - 1]


def test_malformed_protobuf() -> None:
    for bad in (b"\x0a\x05ab", b"\x0a", b"\x0a\x02\x0a\x05", b"\x0b",
                b"\x0a\x0b\x08" + b"\xff" * 10):
        with pytest.raises(ProtobufError) as info:
            decode_mapping_ops(bad) if bad[2:3] == b"\x08" else decode_keyvalues(bad)
        assert isinstance(info.value, VoxgateError) and isinstance(info.value, ValueError)
    with pytest.raises(ProtobufError, match="64 bits"):
        decode_mapping_ops(b"\x0a\x0b\x08" + b"\xff" * 9 + b"\x7f")
    with pytest.raises(InvalidRequestError):
        encode_mapping_ops([MappingOp(2**64)])


# -- protobuf, against Google's implementation of the same .proto ---------------------------------
def _messages() -> dict[str, type]:
    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="voxgate_dvid_golden.proto",
                                             package="voxgate_golden", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name

    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    message("KeyValue", ("key", 1, f.TYPE_STRING, opt, ""), ("value", 2, f.TYPE_BYTES, opt, ""))
    message("KeyValues", ("kvs", 1, f.TYPE_MESSAGE, rep, ".voxgate_golden.KeyValue"))
    message("KeyRange", ("key", 1, f.TYPE_STRING, opt, ""), ("byte_start", 2, f.TYPE_UINT64, opt,
            ""), ("byte_end", 3, f.TYPE_UINT64, opt, ""))
    message("Keys", ("keys", 1, f.TYPE_STRING, rep, ""),
            ("key_ranges", 2, f.TYPE_MESSAGE, rep, ".voxgate_golden.KeyRange"))
    message("MappingOp", ("mutid", 1, f.TYPE_UINT64, opt, ""), ("mapped", 2, f.TYPE_UINT64, opt,
            ""), ("original", 3, f.TYPE_UINT64, rep, ""))
    message("MappingOps", ("mappings", 1, f.TYPE_MESSAGE, rep, ".voxgate_golden.MappingOp"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {m.name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"voxgate_golden.{m.name}")) for m in fdp.message_type}


def test_protobuf_agrees_with_google() -> None:
    msgs = _messages()
    kvs = msgs["KeyValues"]()
    for k, v in (("ab", b"\x00\xff"), ("ключ", bytes(range(256)) * 3), ("z", b"")):
        kvs.kvs.add(key=k, value=v)
    theirs = kvs.SerializeToString()
    expected = {"ab": b"\x00\xff", "ключ": bytes(range(256)) * 3, "z": b""}
    assert decode_keyvalues(theirs) == expected
    back = msgs["KeyValues"]()
    back.ParseFromString(encode_keyvalues(expected))
    assert {kv.key: kv.value for kv in back.kvs} == expected

    keys = msgs["Keys"](keys=["a", "b/c", "ключ"])
    keys.key_ranges.add(key="r", byte_start=3, byte_end=2**40)
    assert decode_keys(keys.SerializeToString()) == ["a", "b/c", "ключ", "r"]
    back_keys = msgs["Keys"]()
    back_keys.ParseFromString(encode_keys(["a", "b/c", "ключ"]))
    assert list(back_keys.keys) == ["a", "b/c", "ключ"]

    ops = msgs["MappingOps"]()
    ops.mappings.add(mutid=9, mapped=2**64 - 1, original=[0, 1, 2**63, 2**64 - 1])
    ops.mappings.add(mutid=0, mapped=5, original=[])
    got = decode_mapping_ops(ops.SerializeToString())
    assert [(o.mutid, o.mapped, o.original) for o in got] == \
        [(9, 2**64 - 1, [0, 1, 2**63, 2**64 - 1]), (0, 5, [])]
    ours = encode_mapping_ops([MappingOp(2**64 - 1, [0, 1, 2**63, 2**64 - 1], mutid=9),
                               MappingOp(5, [], mutid=0)])
    back_ops = msgs["MappingOps"]()
    back_ops.ParseFromString(ours)
    assert [(o.mutid, o.mapped, list(o.original)) for o in back_ops.mappings] == \
        [(9, 2**64 - 1, [0, 1, 2**63, 2**64 - 1]), (0, 5, [])]
