"""The ``keyvalue`` data type of the DVID test server."""

from __future__ import annotations

import json
import re
from typing import Any

from ...formats.dvid_proto import (
    ProtobufError,
    decode_keys,
    decode_keyvalues,
    encode_keyvalues,
)
from .model import DVIDError, Reply, _Ctx, _json, _q


# -- keyvalue -----------------------------------------------------------------------------------
def _keyvalue(ctx: _Ctx, method: str, parts: list[str], body: bytes,
              not_found: DVIDError) -> Reply:
    store = ctx.store("kv")
    kw = parts[0]
    if kw == "key" and len(parts) >= 2:
        key = "/".join(parts[1:])
        if method in ("GET", "HEAD"):
            value = store.get(key, ctx.ancestry)
            if value is None:
                if method == "HEAD":
                    return Reply(404, b"", "text/plain")
                raise DVIDError(f"Key {_q(key)} not found", 404, raw=True)
            assert isinstance(value, bytes)
            if method == "HEAD":
                return Reply(200, b"", "text/plain")
            return _ranged(value, ctx)
        if method == "POST":
            with ctx.state.lock:
                store.put(key, ctx.version, bytes(body))
                ctx.mutated()
            return Reply(body=b"")
        if method == "DELETE":
            with ctx.state.lock:
                store.delete(key, ctx.version, ctx.ancestry)
                ctx.mutated()
            return Reply(body=b"")
    if kw == "keys" and method == "GET":
        return _json(sorted(store.keys(ctx.ancestry)))
    if kw in ("keyrange", "keyrangevalues") and len(parts) == 3 and method == "GET":
        lo, hi = parts[1], parts[2]
        keys = sorted(k for k in store.keys(ctx.ancestry) if lo <= k <= hi)
        if kw == "keyrange":
            return _json(keys)
        _one_output(ctx)
        values = {k: store.get(k, ctx.ancestry) for k in keys}
        return _kv_bulk(ctx, {k: v for k, v in values.items() if isinstance(v, bytes)})
    if kw == "keyvalues":
        if method == "GET":
            _one_output(ctx)
            # keyvalue.go handleKeyValues: tar, jsontar and json read a JSON list of keys
            if ctx.flag("json") or ctx.flag("jsontar") or ctx.flag("tar"):
                try:
                    keys = json.loads(body or b"[]")
                except ValueError as exc:
                    raise DVIDError(f"bad JSON list of keys: {exc}") from None
            else:
                try:
                    keys = decode_keys(body)
                except ProtobufError as exc:
                    raise DVIDError(f"unable to parse protobuf Keys: {exc}") from None
            values = {str(k): store.get(str(k), ctx.ancestry) for k in keys}
            return _kv_bulk(ctx, {k: v if isinstance(v, bytes) else b"" for k, v in
                                  values.items()}, missing_empty=True)
        if method == "POST":
            try:
                items = decode_keyvalues(body)
            except ProtobufError as exc:
                raise DVIDError(f"unable to parse protobuf KeyValues: {exc}") from None
            with ctx.state.lock:
                for k, v in items.items():
                    store.put(k, ctx.version, v)
                ctx.mutated()
            return Reply(body=b"")
    raise not_found


def _one_output(ctx: _Ctx) -> None:
    """keyvalue.go handleKeyValues / sendJSONValuesInRange: tar (or jsontar) and json at
    once are refused before anything is read."""
    if (ctx.flag("tar") or ctx.flag("jsontar")) and ctx.flag("json"):
        raise DVIDError("can only specify tar or json output, not both")


def _ranged(value: bytes, ctx: _Ctx) -> Reply:
    rng = ctx.headers.get("range")
    start = end = None
    if "byte_start" in ctx.q or "byte_end" in ctx.q:
        start = int(ctx.q.get("byte_start", 0))
        end = int(ctx.q.get("byte_end", len(value) - 1))
    elif rng:
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if not m or (not m.group(1) and not m.group(2)):
            raise DVIDError(f"bad Range header {rng!r}", 416)
        if m.group(1):
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(value) - 1
        else:
            start = max(0, len(value) - int(m.group(2)))
            end = len(value) - 1
    if start is None or end is None:
        return Reply(body=value, content_type="application/octet-stream")
    if start >= len(value) or end < start:
        raise DVIDError(f"range {start}-{end} is outside the value's {len(value)} bytes", 416)
    end = min(end, len(value) - 1)
    return Reply(206, value[start:end + 1], "application/octet-stream",
                 {"Content-Range": f"bytes {start}-{end}/{len(value)}"})


def _kv_bulk(ctx: _Ctx, values: dict[str, bytes], missing_empty: bool = False) -> Reply:
    if ctx.flag("json"):
        out: dict[str, Any] = {}
        for k, v in values.items():
            if not v and missing_empty:
                out[k] = {}
                continue
            try:
                out[k] = json.loads(v)
            except ValueError:
                raise DVIDError(f"value of key {k!r} is not JSON; ask for protobuf") from None
        return _json(out)
    if ctx.flag("tar") or ctx.flag("jsontar"):
        import io
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for k, v in values.items():
                info = tarfile.TarInfo(k)
                info.size = len(v)
                tar.addfile(info, io.BytesIO(v))
        return Reply(body=buf.getvalue(), content_type="application/x-tar")
    return Reply(body=encode_keyvalues(values), content_type="application/octet-stream")
