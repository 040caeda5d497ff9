"""The few protobuf messages DVID's keyvalue and labelmap endpoints exchange, without protoc.

From DVID's ``datatype/common/proto``::

    message KeyValue  { string key = 1; bytes value = 2; }
    message KeyValues { repeated KeyValue kvs = 1; }
    message KeyRange  { string key = 1; uint64 byte_start = 2; uint64 byte_end = 3; }
    message Keys      { repeated string keys = 1; repeated KeyRange key_ranges = 2; }
    message MappingOp { uint64 mutid = 1; uint64 mapped = 2; repeated uint64 original = 3; }
    message MappingOps { repeated MappingOp mappings = 1; }

Only varint (0) and length-delimited (2) wire types occur; unknown fields are skipped, a
truncated or malformed buffer raises :class:`ProtobufError`, a
:class:`~voxgate.errors.CorruptChunkError` (so a :class:`~voxgate.errors.VoxgateError`) and a
``ValueError``.  Values that cannot be encoded raise :class:`~voxgate.errors.InvalidRequestError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import CorruptChunkError, InvalidRequestError

__all__ = [
    "MappingOp",
    "ProtobufError",
    "decode_keys",
    "decode_keyvalues",
    "decode_mapping_ops",
    "encode_keys",
    "encode_keyvalues",
    "encode_mapping_ops",
]


class ProtobufError(CorruptChunkError, ValueError):
    """Bytes that are not the protobuf message expected."""


def _varint(n: int) -> bytes:
    if n < 0 or n >= 2**64:
        raise InvalidRequestError(f"a protobuf uint64 holds 0..2**64-1, not {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("a varint runs past the end of the message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if result >= 2**64:
                raise ProtobufError(f"a varint holds {result}, more than 64 bits")
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError("a varint is longer than 10 bytes")


def _fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    buf = memoryview(data).cast("B")
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield num, wire, value
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise ProtobufError(f"field {num} declares {n} bytes, {len(buf) - pos} are left")
            yield num, wire, buf[pos:pos + n]
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ProtobufError(f"unsupported protobuf wire type {wire} (field {num})")
        if pos > len(buf):
            raise ProtobufError("a fixed-width field runs past the end of the message")


def _ld(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _vi(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def _text(v: int | memoryview, what: str) -> str:
    if not isinstance(v, memoryview):
        raise ProtobufError(f"{what} must be a string field")
    try:
        return bytes(v).decode()
    except UnicodeDecodeError:
        raise ProtobufError(f"{what} is not UTF-8") from None


# -- keyvalue -----------------------------------------------------------------------------------
def encode_keyvalues(items: dict[str, bytes]) -> bytes:
    return b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, bytes(v))) for k, v in items.items())


def decode_keyvalues(data: bytes | memoryview) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for num, _, value in _fields(data):
        if num != 1:
            continue
        if not isinstance(value, memoryview):
            raise ProtobufError("KeyValues.kvs must be messages")
        key, val = "", b""
        for n2, _, v2 in _fields(value):
            if n2 == 1:
                key = _text(v2, "KeyValue.key")
            elif n2 == 2:
                if not isinstance(v2, memoryview):
                    raise ProtobufError("KeyValue.value must be bytes")
                val = bytes(v2)
        out[key] = val
    return out


def encode_keys(keys: list[str]) -> bytes:
    return b"".join(_ld(1, k.encode()) for k in keys)


def decode_keys(data: bytes | memoryview) -> list[str]:
    out: list[str] = []
    for num, _, value in _fields(data):
        if num == 1:
            out.append(_text(value, "Keys.keys"))
        elif num == 2 and isinstance(value, memoryview):
            for n2, _, v2 in _fields(value):
                if n2 == 1:
                    out.append(_text(v2, "KeyRange.key"))
    return out


# -- labelmap mappings --------------------------------------------------------------------------
@dataclass
class MappingOp:
    mapped: int
    original: list[int] = field(default_factory=list)
    mutid: int = 0


def encode_mapping_ops(ops: list[MappingOp]) -> bytes:
    parts = []
    for op in ops:
        packed = b"".join(_varint(o) for o in op.original)
        parts.append(_ld(1, _vi(1, op.mutid) + _vi(2, op.mapped) + _ld(3, packed)))
    return b"".join(parts)


def decode_mapping_ops(data: bytes | memoryview) -> list[MappingOp]:
    ops: list[MappingOp] = []
    for num, _, value in _fields(data):
        if num != 1:
            continue
        if not isinstance(value, memoryview):
            raise ProtobufError("MappingOps.mappings must be messages")
        op = MappingOp(0)
        for n2, wire, v2 in _fields(value):
            if n2 == 1 and isinstance(v2, int):
                op.mutid = v2
            elif n2 == 2 and isinstance(v2, int):
                op.mapped = v2
            elif n2 == 3:
                if wire == 0 and isinstance(v2, int):
                    op.original.append(v2)
                elif isinstance(v2, memoryview):  # packed
                    pos = 0
                    while pos < len(v2):
                        o, pos = _read_varint(v2, pos)
                        op.original.append(o)
        ops.append(op)
    return ops
