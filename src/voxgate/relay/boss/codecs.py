"""Request and response bodies of the bossDB dialect: cutouts in application/blosc (raw C-order
bytes) and application/npygz (a zlib-compressed .npy), and project-service JSON records.
Request bodies are never unpickled."""

from __future__ import annotations

import io
import math
import struct
import zlib
from typing import Any

import blosc
import numpy as np
from starlette.requests import Request

from ...meta import VolumeMeta
from ...storage.npyfiles import NPY_LOCK
from ..errors import (
    DATA_DIMENSION_MISMATCH,
    DATATYPE_DOES_NOT_MATCH,
    INVALID_POST_ARGUMENT,
    REQUEST_TOO_LARGE,
    BossHTTPError,
    bad_request,
)

__all__ = ["blosc_level", "cutout_media", "decode_body", "encode_blosc", "encode_cutout",
           "to_stored", "wire_dtype"]


def wire_dtype(meta: VolumeMeta) -> np.dtype[Any]:
    """The datatype a channel has in this dialect: an annotation channel's is uint64 whatever
    its upstream holds (bossDB's annotation channels are, and intern takes no uint32 or
    signed channel), an image channel's is its upstream's."""
    if meta.kind == "segmentation" and np.issubdtype(meta.dtype, np.integer):
        return np.dtype(np.uint64)
    return meta.dtype


def to_stored(data: np.ndarray, meta: VolumeMeta) -> np.ndarray:
    """Written ``data`` (of :func:`wire_dtype`) in the upstream's dtype; ids the upstream
    cannot hold are refused (400, code 2001), not wrapped.

    A signed upstream's ids are read as uint64 in two's complement (-1 as 2**64 - 1, as
    numpy's ``astype`` gives them), so the same rule takes them back: a cutout read from the
    channel can be written to it unchanged."""
    stored = meta.dtype
    if data.dtype == stored:
        return data
    info = np.iinfo(stored)
    if stored.kind == "i" and data.dtype == np.uint64:
        signed = data.view(np.int64)
        if signed.size and (int(signed.min()) < info.min or int(signed.max()) > info.max):
            raise bad_request(DATATYPE_DOES_NOT_MATCH, (
                f"ids from {info.max + 1} to {2**64 + info.min - 1} cannot be written to this "
                f"annotation channel: its upstream holds {stored.name}, whose ids "
                f"{info.min}..-1 read as {2**64 + info.min}..{2**64 - 1}"))
        return signed.astype(stored)
    top = int(info.max)
    if data.size and int(data.max()) > top:
        raise bad_request(DATATYPE_DOES_NOT_MATCH, f"ids above {top} cannot be written to this "
                          f"annotation channel: its upstream holds {stored.name}")
    return data.astype(stored)


#: the blosc header's flag of a buffer stored without compression (its bytes follow the header)
_MEMCPYED = 0x02


def _blosc_header_nbytes(body: bytes) -> int:
    if len(body) < 16:
        raise ValueError("shorter than a blosc header")
    return int(struct.unpack("<I", body[4:8])[0])


def _npy_header(buf: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """The (shape, fortran_order, dtype) an .npy stream declares, without reading its data."""
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(buf)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(buf)
    raise ValueError(f".npy format version {version} is not supported")


def decode_body(body: bytes, content_type: str, dtype: np.dtype[Any],
                 shape: tuple[int, ...]) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/blosc":
        try:
            nbytes = _blosc_header_nbytes(body)
        except ValueError:
            raise bad_request(DATA_DIMENSION_MISMATCH, "Failed to unpack data: the body is not a "
                              "blosc buffer") from None
        if nbytes != expected:
            raise bad_request(DATA_DIMENSION_MISMATCH, f"Data dimensions in URL do not match "
                              f"POSTed data: the region {shape} of {dtype.name} is {expected} "
                              f"bytes, the body holds {nbytes}")
        if body[2] & _MEMCPYED and len(body) == 16 + expected and \
                struct.unpack_from("<I", body, 12)[0] == len(body):
            # stored as is (incompressible voxels): the bytes after the header, not copied
            return np.frombuffer(body, dtype=dtype, count=math.prod(shape),
                                 offset=16).reshape(shape)
        try:
            raw = blosc.decompress(body)
        except Exception as exc:
            raise bad_request(DATATYPE_DOES_NOT_MATCH,
                              f"Failed to decompress data: {exc}") from None
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if ctype == "application/npygz":
        try:
            d = zlib.decompressobj()
            raw = d.decompress(body, expected + 4096)  # never inflate past what the box needs
            if d.unconsumed_tail:
                raise bad_request(DATA_DIMENSION_MISMATCH, "Data dimensions in URL do not match "
                                  "POSTed data: the body inflates past the region's size")
            if not d.eof or d.unused_data:
                # a cut-off stream inflates to what it holds: the data would be taken unchecked
                raise bad_request(DATA_DIMENSION_MISMATCH, "Failed to unpack data: the zlib "
                                  "stream is " + ("truncated (it does not end)" if not d.eof
                                                  else "followed by bytes that are not in it"))
            buf = io.BytesIO(raw)
            # the header is checked before numpy allocates what it declares
            with NPY_LOCK:  # (storage.npyfiles: numpy parses the header with ast)
                head_shape, _, head_dtype = _npy_header(buf)
            if head_dtype.hasobject:
                raise bad_request(DATA_DIMENSION_MISMATCH, "Failed to unpack data: the .npy "
                                  "holds Python objects, which only unpickling could read")
            if head_dtype != dtype:
                got, want = head_dtype.name, dtype.name
                if got == want:  # the same type in another byte order: name both orders
                    got, want = f"{got} ({head_dtype.str})", f"{want} ({dtype.str})"
                raise bad_request(DATATYPE_DOES_NOT_MATCH, f"Datatype does not match channel: "
                                  f"got {got}, the channel is {want}")
            if head_shape != shape:
                raise bad_request(DATA_DIMENSION_MISMATCH, f"Data dimensions in URL do not "
                                  f"match POSTed data: URL {shape}, body {head_shape}")
            buf.seek(0)
            with NPY_LOCK:
                arr = np.load(buf, allow_pickle=False)
        except BossHTTPError:
            raise
        except Exception as exc:
            raise bad_request(DATA_DIMENSION_MISMATCH,
                              f"Failed to unpack data: not a zlib-compressed .npy: {exc}") from None
        return arr
    if ctype == "application/blosc-python":
        raise BossHTTPError(415, 0, 'Unsupported media type "application/blosc-python" in '
                            "request: it can only be decoded by unpickling, which this server "
                            "never does; send application/blosc (raw C-order bytes) instead",
                            drf=True)
    raise BossHTTPError(415, 0, f'Unsupported media type "{ctype}" in request: use '
                        "application/blosc or application/npygz", drf=True)


#: blosc settings of cutout responses: lz4 at level 5, a 4 MiB cutout in a few ms; any blosc
#: decompressor reads it
_CNAME, _CLEVEL = "lz4", 5
#: a sample of this many bytes tells incompressible data (random voxels) before the whole
#: array is compressed
_SAMPLE = 2**18


def blosc_level(data: np.ndarray, typesize: int, cname: str = _CNAME,
                clevel: int = _CLEVEL) -> int:
    """``clevel``, or 0 when a sample of ``data`` (contiguous) does not shrink: blosc then
    stores the bytes as they are (a copy) instead of trying every block and giving up."""
    if data.nbytes <= 2 * _SAMPLE or clevel == 0:
        return clevel
    flat = data.reshape(-1).view(np.uint8)
    # two samples, the start and the middle: a volume's edge may be all fill value
    for start in (0, (flat.size // 2) // typesize * typesize):
        part = flat[start:start + _SAMPLE]
        packed = blosc.compress_ptr(part.ctypes.data, part.size // typesize, typesize,
                                    clevel=clevel, shuffle=blosc.SHUFFLE, cname=cname)
        if len(packed) < 0.9 * part.size:
            return clevel
    return 0


def encode_blosc(arr: np.ndarray, cname: str = _CNAME, clevel: int = _CLEVEL) -> bytes:
    """``arr``'s C-order bytes blosc-compressed, without an intermediate copy."""
    arr = np.ascontiguousarray(arr)
    typesize = arr.dtype.itemsize
    if typesize > blosc.MAX_TYPESIZE or arr.size == 0:
        return bytes(blosc.compress(arr.tobytes(), typesize=1, cname=cname, clevel=clevel))
    level = blosc_level(arr, typesize, cname, clevel)
    return bytes(blosc.compress_ptr(arr.ctypes.data, arr.size, typesize, clevel=level,
                                    shuffle=blosc.SHUFFLE, cname=cname))


#: bossDB's cutout renderers, in the order of its view's ``renderer_classes``
_CUTOUT_MEDIA = ("application/blosc", "application/blosc-python", "application/npygz",
                 "image/jpeg")


def cutout_media(accept: str) -> str:
    """The media type bossDB answers a cutout GET with for this Accept header, by Django REST
    framework's content negotiation: the header's types grouped by how specific they are (with
    parameters other than q, a full type, ``type/*``, ``*/*``), the most specific group first,
    and in a group the first of the view's renderers (blosc, blosc-python, npygz, jpeg) that one
    of its types matches.  The order of the types in the header and their q-values do not
    count: ``application/npygz, application/blosc`` is answered in blosc.  A header naming
    none of them gets blosc (the relay's default; no Accept at all is blosc too)."""
    groups: list[list[tuple[str, str]]] = [[], [], [], []]
    for token in accept.lower().split(","):
        full, _, params = token.partition(";")
        main, _, sub = full.strip().partition("/")
        if not main:
            continue
        names = [p.split("=")[0].strip() for p in params.split(";") if p.strip()]
        precedence = (0 if main == "*" else 1 if sub == "*" else
                      2 if not names or names == ["q"] else 3)
        groups[3 - precedence].append((main, sub))
    for group in groups:
        for media in _CUTOUT_MEDIA:
            kind, sub = media.split("/")
            if any(m in ("*", kind) and s in ("*", sub) for m, s in group):
                return media
    return "application/blosc"


def encode_cutout(arr: np.ndarray, media: str) -> tuple[bytes, str]:
    """A cutout response's body and media type, for the type :func:`cutout_media` chose."""
    if media == "application/npygz":
        arr = np.ascontiguousarray(arr)
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return zlib.compress(buf.getbuffer(), 1), media
    if media == "application/blosc-python":
        raise BossHTTPError(406, 0, "application/blosc-python responses need pickle; ask for "
                            "application/blosc", drf=True)
    if media == "image/jpeg":
        raise BossHTTPError(406, 0, "this relay serves cutouts as application/blosc or "
                            "application/npygz", drf=True)
    return encode_blosc(arr), media


_JSON_LIMIT = 2**20


async def _json_body(request: Request) -> dict[str, Any]:
    """A project-service JSON record; a body too large for one is refused before it is read."""
    too_large = BossHTTPError(413, REQUEST_TOO_LARGE, f"the body is larger than a JSON record "
                              f"can be ({_JSON_LIMIT} bytes)")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isascii() or not length.isdigit():
            raise bad_request(INVALID_POST_ARGUMENT, "bad Content-Length")
        if int(length) > _JSON_LIMIT:
            raise too_large
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > _JSON_LIMIT:
            raise too_large
        parts.append(part)
    body = b"".join(parts)
    if not body:
        return {}
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        # as bossDB's parsers (DRF) answer a body they cannot parse; no Content-Type is taken
        raise BossHTTPError(415, 0, f'Unsupported media type "{media[:100]}" in request: send '
                            "the record as application/json", drf=True)
    import json as _json

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text[:40]} is out of range (not a finite float)")
        return value

    def constant(text: str) -> float:
        raise ValueError(f"{text} is not a JSON number")

    try:
        data = _json.loads(body, parse_float=finite, parse_constant=constant)
    except RecursionError:
        raise bad_request(INVALID_POST_ARGUMENT, "the body is not valid JSON here: it is nested "
                          "too deeply (a project record is a flat object)") from None
    except ValueError as exc:
        raise bad_request(INVALID_POST_ARGUMENT, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request(INVALID_POST_ARGUMENT, "the body must be a JSON object")
    try:
        # a lone surrogate ("\ud800") parses, but no UTF-8 response could ever show it
        _json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(INVALID_POST_ARGUMENT, "the body is not valid JSON text: it holds a "
                          "lone UTF-16 surrogate escape (\\ud800-\\udfff not in a pair)") from None
    return data
