"""The DVID test server's model: type tables, errors and replies, repos, nodes, instances,
and the per-request context the data-type handlers get."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .store import Store

IMAGE_TYPES: dict[str, str] = {
    "uint8blk": "uint8", "uint16blk": "<u2", "uint32blk": "<u4", "uint64blk": "<u8",
    "float32blk": "<f4",
}
LABEL_TYPES = ("labelmap", "labelarray")
#: the legacy labelblk (datatype/labelblk): uint64 voxels kept like an imageblk's, with no
#: label index (no sparse volumes, ids, merges or splits) and no coarser scales
TYPES = (*IMAGE_TYPES, *LABEL_TYPES, "labelblk", "keyvalue")
TYPE_URL = "github.com/janelia-flyem/dvid/datatype/"
_TYPE_PKG = {**{t: "imageblk" for t in IMAGE_TYPES}, "labelmap": "labelmap",
             "labelarray": "labelarray", "labelblk": "labelblk", "keyvalue": "keyvalue"}
MAX_LABEL = 2**48


def _q(text: str) -> str:
    """Go's %q: a double-quoted string."""
    return json.dumps(text)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class DVIDError(Exception):
    """An error answer: ``status`` and DVID's text (400s get the path appended)."""

    def __init__(self, message: str, status: int = 400, *, raw: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.raw = raw  # send the message as is (404 bodies), not DVID's BadRequest format


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(obj: Any) -> Reply:
    return Reply(body=json.dumps(obj).encode())


# -- repos, nodes, instances ----------------------------------------------------------------------
@dataclass
class Node:
    uuid: str
    version: int
    branch: str = ""
    note: str = ""
    log: list[str] = field(default_factory=list)
    locked: bool = False
    parents: list[int] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)

    def to_json(self) -> dict[str, Any]:
        return {"Branch": self.branch, "Note": self.note, "Log": self.log, "UUID": self.uuid,
                "VersionID": self.version, "Locked": self.locked, "Parents": self.parents,
                "Children": self.children, "Created": self.created, "Updated": self.updated}


@dataclass
class Instance:
    name: str
    typename: str
    data_uuid: str
    repo_root: str
    versioned: bool = True
    compression: str = "lz4"
    tags: dict[str, str] = field(default_factory=dict)
    block_size: list[int] = field(default_factory=lambda: [32, 32, 32])  # x, y, z
    voxel_size: list[float] = field(default_factory=lambda: [8.0, 8.0, 8.0])
    voxel_units: list[str] = field(default_factory=lambda: ["nanometers"] * 3)
    max_downres: int = 0
    min_point: list[int] | None = None  # x, y, z voxel, inclusive
    max_point: list[int] | None = None
    max_label: dict[str, int] = field(default_factory=dict)  # version -> maxlabel
    max_repo_label: int = 0
    next_label: int = 0
    last_mod: dict[str, Any] = field(default_factory=dict)
    sv_splits: dict[str, list[list[int]]] = field(default_factory=dict)  # version -> ops
    stores: dict[str, Store] = field(default_factory=dict, repr=False)
    mutations: int = 0  # bumps on every write: invalidates index/mapping caches
    caches: dict[Any, Any] = field(default_factory=dict, repr=False)

    META = ("name", "typename", "data_uuid", "repo_root", "versioned", "compression", "tags",
            "block_size", "voxel_size", "voxel_units", "max_downres", "min_point", "max_point",
            "max_label", "max_repo_label", "next_label", "last_mod", "sv_splits")

    @property
    def is_label(self) -> bool:
        return self.typename in LABEL_TYPES

    @property
    def dtype(self) -> np.dtype[Any]:
        if self.is_label or self.typename == "labelblk":
            return np.dtype("<u8")
        return np.dtype(IMAGE_TYPES[self.typename])

    def store(self, name: str, data_root: Path | None) -> Store:
        s = self.stores.get(name)
        if s is None:
            root = None if data_root is None else data_root / "data" / self.data_uuid / name
            s = self.stores[name] = Store(root)
        return s


@dataclass
class Repo:
    root: str
    root_version: int
    alias: str = ""
    description: str = ""
    log: list[str] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    nodes: dict[int, Node] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    mutation_id: int = 0
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)


class _State(Protocol):
    """What the data-type handlers use of :class:`~.state.DVIDState` (kept here so the
    handler modules do not import the router that imports them)."""

    data_root: Path | None
    lock: threading.RLock

    def save(self) -> None: ...

    def _body_json(self, body: bytes, what: str) -> Any: ...


@dataclass
class _Ctx:
    state: _State
    repo: Repo
    inst: Instance
    version: int
    ancestry: list[int]
    q: dict[str, str]
    headers: dict[str, str]
    path: str = ""  # the request's path (DVID's r.URL.Path), for messages that quote it

    def store(self, name: str) -> Store:
        return self.inst.store(name, self.state.data_root)

    def mutated(self) -> None:
        """Record a mutation: caches drop, the repo's mutation id moves, lastmod is kept."""
        inst = self.inst
        inst.mutations += 1
        inst.caches.clear()
        self.repo.mutation_id += 1
        inst.last_mod[str(self.version)] = {
            "mutation id": self.repo.mutation_id, "last mod user": self.q.get("u", ""),
            "last mod app": self.q.get("app", ""), "last mod time": _now()}

    def flag(self, name: str) -> bool:
        """A boolean query option as DVID reads every one the handlers here look at
        (``supervoxels``, ``sizes``, ``json``, ``tar``, ``jsontar``): ``queryStrings.Get(name)
        == "true"``, that exact string; ``1``, ``on`` or ``True`` are false."""
        return self.q.get(name, "") == "true"
