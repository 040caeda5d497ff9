"""Versioned key-value storage of the DVID test server: values per version, tombstones,
ancestry lookups, optional persistence (raw bytes or arrays in a header + lz4 frame; never
pickles)."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import lz4.block
import numpy as np

# -- versioned storage ----------------------------------------------------------------------------
_TOMB = object()
_ON_DISK = object()


def _serialize(value: object) -> bytes:
    if value is _TOMB:
        return b"T"
    if isinstance(value, np.ndarray):
        head = json.dumps({"dtype": value.dtype.str, "shape": list(value.shape)}).encode()
        raw = np.ascontiguousarray(value).tobytes()
        return b"A" + struct.pack("<I", len(head)) + head + lz4.block.compress(raw)
    assert isinstance(value, bytes)
    return b"B" + value


def _deserialize(data: bytes) -> object:
    kind, rest = data[:1], data[1:]
    if kind == b"T":
        return _TOMB
    if kind == b"B":
        return rest
    if kind == b"A":
        (n,) = struct.unpack_from("<I", rest, 0)
        head = json.loads(rest[4:4 + n])
        raw = lz4.block.decompress(rest[4 + n:])
        return np.frombuffer(raw, dtype=np.dtype(head["dtype"])).reshape(head["shape"]).copy()
    raise ValueError(f"unknown stored value kind {kind!r}")


class Store:
    """Keys -> {version: value | tombstone}; a read walks the node's ancestry (nearest first)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.index: dict[str, dict[int, object]] = {}
        self.lock = threading.Lock()
        if root is not None and root.exists():
            for vdir in root.iterdir():
                if not vdir.is_dir() or not vdir.name.isdigit():
                    continue
                for f in vdir.iterdir():
                    if f.name.endswith(".tmp"):
                        continue
                    key = bytes.fromhex(f.name).decode()
                    self.index.setdefault(key, {})[int(vdir.name)] = _ON_DISK

    def _file(self, key: str, version: int) -> Path:
        assert self.root is not None
        return self.root / str(version) / key.encode().hex()

    def _load(self, key: str, version: int) -> object:
        return _deserialize(self._file(key, version).read_bytes())

    def get(self, key: str, ancestry: list[int]) -> object | None:
        entry = self.index.get(key)
        if not entry:
            return None
        for v in ancestry:
            if v in entry:
                value = entry[v]
                if value is _ON_DISK:
                    value = self._load(key, v)
                return None if value is _TOMB else value
        return None

    def origin(self, key: str, ancestry: list[int]) -> int | None:
        """The version whose value a read at ``ancestry[0]`` sees (None: absent)."""
        entry = self.index.get(key)
        if entry:
            for v in ancestry:
                if v in entry:
                    return None if entry[v] is _TOMB else v
        return None

    def put(self, key: str, version: int, value: object) -> None:
        if self.root is not None:
            path = self._file(key, version)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(_serialize(value))
            os.replace(tmp, path)
            stored: object = _TOMB if value is _TOMB else _ON_DISK
        else:
            stored = value
        with self.lock:
            self.index.setdefault(key, {})[version] = stored

    def delete(self, key: str, version: int, ancestry: list[int]) -> bool:
        if self.get(key, ancestry) is None:
            return False
        self.put(key, version, _TOMB)
        return True

    def keys(self, ancestry: list[int]) -> list[str]:
        with self.lock:
            items = list(self.index.items())
        out = []
        for key, entry in items:
            for v in ancestry:
                if v in entry:
                    if entry[v] is not _TOMB:
                        out.append(key)
                    break
        return out
