"""A DVID-dialect test server: repos, versioned nodes, imageblk, labelmap/labelarray, keyvalue.

For tests, and for trying the ``dvid://`` Remote without a DVID install::

    python -m voxgate.testing.dvid --host 127.0.0.1 --port 8000             # in memory
    python -m voxgate.testing.dvid --host 127.0.0.1 --port 8000 --data DIR  # persisted

It answers DVID's REST endpoints (``/api/...``) with DVID's byte layouts, status codes and
plain-text errors (``"<message> (<path>)."`` with 400; ``"Could not find the URL: <path>"``
with 404), and DVID's versioning rules: a repo is a DAG of nodes; a committed (locked) node
refuses mutations; only committed nodes get children; a child reads its ancestors' data
wherever it has not written (deletions are tombstones); branch names are unique in a DAG;
unversioned instances read and write the root.  docs/remotes/dvid.md lists what is and is
not implemented.  :func:`start_server` runs it as a subprocess on 127.0.0.1 for tests.

Nothing received is ever unpickled: values are stored as raw bytes, or as arrays in a small
documented header + lz4 frame of our own.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid as uuidlib
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import lz4.block
import numpy as np

from ..formats.dvid_block import (
    DVIDFormatError,
    decode_label_block,
    encode_label_block,
    encode_rles,
    pack_block_records,
    rles_from_mask,
    unpack_block_records,
)
from ..formats.dvid_proto import (
    ProtobufError,
    decode_keys,
    decode_keyvalues,
    decode_mapping_ops,
    encode_keyvalues,
)

__all__ = ["DVIDServerProcess", "DVIDState", "make_app", "main", "start_server"]

IMAGE_TYPES: dict[str, str] = {
    "uint8blk": "uint8", "uint16blk": "<u2", "uint32blk": "<u4", "uint64blk": "<u8",
    "float32blk": "<f4",
}
LABEL_TYPES = ("labelmap", "labelarray")
TYPES = (*IMAGE_TYPES, *LABEL_TYPES, "keyvalue")
TYPE_URL = "github.com/janelia-flyem/dvid/datatype/"
_TYPE_PKG = {**{t: "imageblk" for t in IMAGE_TYPES}, "labelmap": "labelmap",
             "labelarray": "labelarray", "keyvalue": "keyvalue"}
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
    stores: dict[str, Store] = field(default_factory=dict, repr=False)
    mutations: int = 0  # bumps on every write: invalidates index/mapping caches
    caches: dict[Any, Any] = field(default_factory=dict, repr=False)

    META = ("name", "typename", "data_uuid", "repo_root", "versioned", "compression", "tags",
            "block_size", "voxel_size", "voxel_units", "max_downres", "min_point", "max_point",
            "max_label", "max_repo_label", "next_label", "last_mod")

    @property
    def is_label(self) -> bool:
        return self.typename in LABEL_TYPES

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype("<u8") if self.is_label else np.dtype(IMAGE_TYPES[self.typename])

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


class DVIDState:
    """Everything the server knows; one lock guards metadata and writes."""

    def __init__(self, data_root: Path | None = None) -> None:
        self.data_root = data_root
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self.uuid_to_version: dict[str, int] = {}
        self.version_repo: dict[int, Repo] = {}
        self.next_version = 1
        if data_root is not None:
            data_root.mkdir(parents=True, exist_ok=True)
            self._load()

    # -- persistence ----------------------------------------------------------------------------
    def _meta_path(self) -> Path:
        assert self.data_root is not None
        return self.data_root / "metadata.json"

    def save(self) -> None:
        if self.data_root is None:
            return
        doc = {"next_version": self.next_version, "repos": [
            {"root": r.root, "root_version": r.root_version, "alias": r.alias,
             "description": r.description, "log": r.log, "properties": r.properties,
             "mutation_id": r.mutation_id, "created": r.created, "updated": r.updated,
             "nodes": [n.__dict__ for n in r.nodes.values()],
             "instances": [{k: getattr(i, k) for k in Instance.META}
                           for i in r.instances.values()]}
            for r in self.repos.values()]}
        path = self._meta_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)

    def _load(self) -> None:
        path = self._meta_path()
        if not path.exists():
            return
        doc = json.loads(path.read_text())
        self.next_version = int(doc["next_version"])
        for rd in doc["repos"]:
            repo = Repo(rd["root"], rd["root_version"], rd["alias"], rd["description"],
                        rd["log"], rd["properties"], mutation_id=rd["mutation_id"],
                        created=rd["created"], updated=rd["updated"])
            for nd in rd["nodes"]:
                node = Node(**nd)
                repo.nodes[node.version] = node
                self.uuid_to_version[node.uuid] = node.version
                self.version_repo[node.version] = repo
            for idd in rd["instances"]:
                inst = Instance(**idd)
                repo.instances[inst.name] = inst
            self.repos[repo.root] = repo

    # -- lookups --------------------------------------------------------------------------------
    def match_uuid(self, text: str) -> tuple[Repo, Node]:
        """DVID's matchingUUID: a unique prefix, ``prefix:branch`` or ``:branch``."""
        parts = text.split(":")
        if len(parts) > 2:
            raise DVIDError(f"bad UUID specification {text!r}")
        prefix = parts[0]
        branch = parts[1] if len(parts) == 2 else None
        if branch is not None and not prefix:
            if len(self.repos) != 1:
                raise DVIDError("UUID must be specified if more than one repo exists")
            repo = next(iter(self.repos.values()))
            return repo, self.branch_leaf(repo, branch, text)
        matches = [u for u in self.uuid_to_version if u.startswith(prefix)] if prefix else []
        if len(matches) > 1:
            raise DVIDError(f"more than one UUID matches {prefix}")
        if not matches:
            raise DVIDError(f"could not find UUID with partial match to {prefix}")
        v = self.uuid_to_version[matches[0]]
        repo = self.version_repo[v]
        if branch is not None:
            return repo, self.branch_leaf(repo, branch, text)
        return repo, repo.nodes[v]

    def branch_leaf(self, repo: Repo, branch: str, text: str) -> Node:
        name, _, back = branch.partition("~")
        chain = self.branch_ancestry(repo, name)
        if not chain:
            raise DVIDError(f"branch {name!r} not found in repo {text.split(':')[0]!r}")
        steps = 0
        if back:
            if not back.isdigit():
                raise DVIDError(f"can't parse parent {back!r} in branch {name!r}")
            steps = int(back)
            if steps >= len(chain):
                raise DVIDError(f"parent {steps} is out of range for branch {name!r}")
        return chain[steps]

    def branch_ancestry(self, repo: Repo, branch: str) -> list[Node]:
        """Leaf of ``branch`` back to the root (DVID's getAncestryByBranch)."""
        want = "" if branch == "master" else branch
        candidates = [n for n in repo.nodes.values() if n.branch == want]
        if not candidates:
            return []
        node = min(candidates, key=lambda n: n.version)
        while True:
            nxt = [repo.nodes[c] for c in node.children if repo.nodes[c].branch == want]
            if not nxt:
                break
            node = nxt[0]
        out = []
        cur: Node | None = node
        while cur is not None:
            out.append(cur)
            cur = repo.nodes[cur.parents[0]] if cur.parents else None
        return out

    def ancestry(self, repo: Repo, version: int) -> list[int]:
        out = [version]
        node = repo.nodes[version]
        while node.parents:
            node = repo.nodes[node.parents[0]]
            out.append(node.version)
        return out

    def new_uuid(self, assign: str | None) -> tuple[str, int]:
        if assign is not None:
            if not re.fullmatch(r"[0-9a-f]{32}", assign):
                raise DVIDError(f"Bad UUID provided: UUID must be 32 hexadecimal characters, "
                                f"got {assign!r}")
            if assign in self.uuid_to_version:
                raise DVIDError("UUID already exists in datastore")
            u = assign
        else:
            u = uuidlib.uuid4().hex
        v = self.next_version
        self.next_version += 1
        return u, v

    # -- the request handler --------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, query: dict[str, str], body: bytes,
               headers: dict[str, str]) -> Reply:
        path = unquote(raw_path)
        try:
            return self._route(method, raw_path, query, body, headers)
        except DVIDError as exc:
            text = str(exc) if exc.raw else f"{exc} ({path})."
            return Reply(exc.status, (text + "\n").encode() if text else b"",
                         "text/plain; charset=utf-8")

    def _route(self, method: str, raw_path: str, q: dict[str, str], body: bytes,
               headers: dict[str, str]) -> Reply:
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        not_found = DVIDError(f"Could not find the URL: {unquote(raw_path)}", 404, raw=True)
        if not parts or parts[0] != "api" or len(parts) < 2:
            raise not_found
        head = parts[1]
        if head == "help":
            return Reply(body=b"voxgate DVID-dialect test server; see docs/remotes/dvid.md\n",
                         content_type="text/plain")
        if head == "heartbeat":
            return Reply(body=b"")
        if head == "server" and len(parts) == 3 and method in ("GET", "HEAD"):
            return self._server(parts[2], not_found)
        if head == "repos":
            if len(parts) == 2 and method == "POST":
                return self._new_repo(body)
            if len(parts) == 3 and parts[2] == "info" and method == "GET":
                with self.lock:
                    return _json({r.root: self._repo_json(r) for r in self.repos.values()})
            raise not_found
        if head == "repo" and len(parts) >= 3:
            return self._repo_request(method, parts, body, not_found)
        if head == "node" and len(parts) >= 4:
            return self._node_request(method, parts, q, body, headers, not_found)
        raise not_found

    def _server(self, what: str, not_found: DVIDError) -> Reply:
        if what == "info":
            return _json({"Cores": str(os.cpu_count()), "DVID datastore": "0.10.0",
                          "Server": "voxgate DVID-dialect test server",
                          "Storage backend": "disk" if self.data_root else "memory"})
        if what in ("types", "compiled-types"):
            with self.lock:
                used = {i.typename for r in self.repos.values() for i in r.instances.values()}
            names = TYPES if what == "compiled-types" else sorted(used)
            return _json({t: TYPE_URL + _TYPE_PKG[t] for t in names})
        raise not_found

    # -- repos ----------------------------------------------------------------------------------
    def _body_json(self, body: bytes, what: str) -> Any:
        if not body.strip():
            return {}
        try:
            return json.loads(body)
        except ValueError as exc:
            raise DVIDError(f"Malformed JSON request in body{what}: {exc}") from None

    def _new_repo(self, body: bytes) -> Reply:
        cfg = self._body_json(body, " for new repo")
        if not isinstance(cfg, dict):
            raise DVIDError("Error decoding POSTed JSON config for new repo: not an object")
        with self.lock:
            u, v = self.new_uuid(cfg.get("root"))
            repo = Repo(u, v, str(cfg.get("alias", "")), str(cfg.get("description", "")))
            repo.nodes[v] = Node(u, v)
            self.repos[u] = repo
            self.uuid_to_version[u] = v
            self.version_repo[v] = repo
            self.save()
        return _json({"root": u})

    def _repo_json(self, r: Repo) -> dict[str, Any]:
        return {"Root": r.root, "Alias": r.alias, "Description": r.description, "Log": r.log,
                "Properties": r.properties,
                "DataInstances": {n: self._instance_info(r, i) for n, i in r.instances.items()},
                "DAG": {"Root": r.root, "Nodes": {n.uuid: n.to_json() for n in r.nodes.values()}},
                "MutationID": r.mutation_id, "SavedMutationID": r.mutation_id,
                "Created": r.created, "Updated": r.updated}

    def _repo_request(self, method: str, parts: list[str], body: bytes,
                      not_found: DVIDError) -> Reply:
        with self.lock:
            repo, node = self.match_uuid(parts[2])
            if len(parts) == 3:
                if method == "HEAD":
                    return Reply(body=b"", content_type="text/plain")
                raise not_found
            action = parts[3]
            if action == "info" and method == "GET":
                return _json(self._repo_json(repo))
            if action == "info" and method == "POST":
                cfg = self._body_json(body, "")
                if "alias" in cfg:
                    repo.alias = str(cfg["alias"])
                if "description" in cfg:
                    repo.description = str(cfg["description"])
                repo.updated = _now()
                self.save()
                return Reply(body=b"")
            if action == "instance" and method == "POST":
                return self._new_instance(repo, node, body)
            if action == "log":
                if method == "GET":
                    return _json({"log": repo.log})
                if method == "POST":
                    cfg = self._body_json(body, "")
                    if "log" not in cfg:
                        raise DVIDError("Could not find 'log' value in POSTed JSON.")
                    t = _now()
                    repo.log.extend(f"{t}  {m}" for m in cfg["log"])
                    self.save()
                    return Reply(body=b"")
            if action == "branch-versions" and len(parts) == 5 and method == "GET":
                return _json([n.uuid for n in self.branch_ancestry(repo, parts[4])])
        raise not_found

    def _new_instance(self, repo: Repo, node: Node, body: bytes) -> Reply:
        if node.locked:
            raise DVIDError(f"New data instance cannot be created on locked node {node.uuid}")
        cfg = self._body_json(body, " for 'new'")
        if not isinstance(cfg, dict):
            raise DVIDError("Error decoding POSTed JSON config for 'new': not an object")
        cfg = {k.lower(): v for k, v in cfg.items()}
        typename = cfg.get("typename")
        name = cfg.get("dataname")
        if not isinstance(typename, str) or not typename:
            raise DVIDError("POST on repo endpoint requires specification of valid 'typename'")
        if not isinstance(name, str) or not name:
            raise DVIDError("POST on repo endpoint requires specification of valid 'dataname'")
        if typename not in TYPES:
            raise DVIDError(f"Data type {typename!r} is not supported in this DVID server; it "
                            f"has {', '.join(TYPES)}")
        if name in repo.instances:
            raise DVIDError(f"Data named {_q(name)} already exists in repo (root {repo.root})")
        inst = Instance(name, typename, uuidlib.uuid4().hex, repo.root)
        if str(cfg.get("versioned", "true")).lower() in ("false", "0"):
            inst.versioned = False
        if "compression" in cfg:
            inst.compression = str(cfg["compression"])
        if cfg.get("tags"):
            for item in str(cfg["tags"]).split(","):
                k, _, v = item.partition("=")
                inst.tags[k.strip()] = v.strip()
        if inst.is_label:
            inst.block_size = [64, 64, 64]
        if "blocksize" in cfg:
            inst.block_size = _triple(cfg["blocksize"], int, "BlockSize")
            if inst.is_label and any(b % 8 or b < 8 for b in inst.block_size):
                raise DVIDError(f"BlockSize {inst.block_size} must be multiples of 8 for labels")
        if "voxelsize" in cfg:
            inst.voxel_size = _triple(cfg["voxelsize"], float, "VoxelSize")
        if "voxelunits" in cfg:
            units = [u.strip() for u in str(cfg["voxelunits"]).split(",")]
            inst.voxel_units = units * 3 if len(units) == 1 else units
        if typename == "labelmap" or typename == "labelarray":
            inst.max_downres = int(cfg.get("maxdownreslevel", 0))
            inst.max_label[str(node.version)] = 0
        repo.instances[name] = inst
        t = _now()
        repo.log.append(f"{t}  New data instance {name!r} of type {typename!r}")
        repo.updated = t
        self.save()
        return _json({"result": f"Added {name} [{typename}] to node {node.uuid}"})

    def _instance_info(self, repo: Repo, inst: Instance) -> dict[str, Any]:
        base = {"TypeName": inst.typename, "TypeURL": TYPE_URL + _TYPE_PKG[inst.typename],
                "TypeVersion": "0.2", "DataUUID": inst.data_uuid, "Name": inst.name,
                "RepoUUID": repo.root, "Compression": inst.compression, "Checksum": "No checksum",
                "Syncs": [], "Versioned": inst.versioned, "KVStore": "voxgate-test",
                "LogStore": "", "Tags": inst.tags}
        if inst.typename == "keyvalue":
            return {"Base": base, "Extended": {}}
        bs = inst.block_size
        mn, mx = inst.min_point, inst.max_point
        ext: dict[str, Any] = {
            "Values": [{"DataType": inst.dtype.name, "Label": inst.typename}],
            "Interpolable": not inst.is_label, "BlockSize": bs,
            "VoxelSize": inst.voxel_size, "VoxelUnits": inst.voxel_units,
            "MinPoint": mn, "MaxPoint": mx,
            "MinIndex": None if mn is None else [a // b for a, b in zip(mn, bs, strict=True)],
            "MaxIndex": None if mx is None else [a // b for a, b in zip(mx, bs, strict=True)],
            "Background": 0, "GridStore": "", "ScaleLevel": 0,
        }
        if inst.is_label:
            ext.update({"MaxDownresLevel": inst.max_downres, "IndexedLabels": True,
                        "CountLabels": True})
        return {"Base": base, "Extended": ext, "Extents": {"MinPoint": mn, "MaxPoint": mx}}

    # -- nodes ----------------------------------------------------------------------------------
    def _node_request(self, method: str, parts: list[str], q: dict[str, str], body: bytes,
                      headers: dict[str, str], not_found: DVIDError) -> Reply:
        with self.lock:
            repo, node = self.match_uuid(parts[2])
        action = parts[3]
        if len(parts) == 4 and action in ("note", "log", "commit", "status", "branch",
                                          "newversion"):
            with self.lock:
                return self._node_action(method, repo, node, action, body, not_found)
        inst = repo.instances.get(action)
        if inst is None:
            raise DVIDError("invalid data instance name")
        if len(parts) < 5:
            raise not_found
        keyword = parts[4]
        version = node.version
        if inst.versioned:
            if node.locked and method in ("POST", "DELETE", "PUT"):
                raise DVIDError(f'Cannot do {method} on endpoint "{keyword}" of locked node '
                                f"{node.uuid}")
        else:
            version = repo.root_version
        ctx = _Ctx(self, repo, inst, version, self.ancestry(repo, version), q, headers)
        if keyword == "info" and method == "GET":
            return _json(self._instance_info(repo, inst))
        if keyword == "help":
            return Reply(body=f"{inst.typename} instance {inst.name}\n".encode(),
                         content_type="text/plain")
        if inst.typename == "keyvalue":
            return _keyvalue(ctx, method, parts[4:], body, not_found)
        return _voxels(ctx, method, parts[4:], body, not_found)

    def _node_action(self, method: str, repo: Repo, node: Node, action: str, body: bytes,
                     not_found: DVIDError) -> Reply:
        if node.locked and method not in ("GET", "HEAD") and action not in ("branch",
                                                                             "newversion"):
            raise DVIDError(f"Cannot do {method.lower()} on locked node {node.uuid}")
        if action == "note":
            if method == "GET":
                return _json({"note": node.note})
            cfg = self._body_json(body, "")
            if "note" not in cfg:
                raise DVIDError("Could not find 'note' value in POSTed JSON.")
            node.note = str(cfg["note"])
            node.updated = _now()
            self.save()
            return Reply(body=b"")
        if action == "log":
            if method == "GET":
                return _json({"log": node.log})
            cfg = self._body_json(body, "")
            if "log" not in cfg or not isinstance(cfg["log"], list):
                raise DVIDError("Could not find 'log' value in POSTed JSON.")
            t = _now()
            node.log.extend(f"{t}  {m}" for m in cfg["log"])
            node.updated = t
            self.save()
            return Reply(body=b"")
        if action in ("commit", "status") and method == "GET":
            return Reply(body=json.dumps({"Locked": node.locked}).encode())
        if action == "commit" and method == "POST":
            cfg = self._body_json(body, "")
            node.locked = True
            if cfg.get("note"):
                node.note = str(cfg["note"])
            if cfg.get("log"):
                t = _now()
                node.log.extend(f"{t}  {m}" for m in cfg["log"])
            node.updated = _now()
            self.save()
            return _json({"committed": node.uuid})
        if action in ("branch", "newversion") and method == "POST":
            cfg = self._body_json(body, "")
            if not node.locked:
                raise DVIDError("can't branch an unlocked node")
            if action == "branch":
                branch = str(cfg.get("branch", ""))
                if branch in ("", "master"):
                    raise DVIDError("Cannot create a master branch")
            else:
                branch = node.branch
            if branch == node.branch:
                if any(repo.nodes[c].branch == branch for c in node.children):
                    raise DVIDError("branch already exists with given name")
            elif any(n.branch == branch for n in repo.nodes.values()):
                raise DVIDError("branch already exists with given name")
            assign = cfg.get("uuid") or None
            u, v = self.new_uuid(assign)
            child = Node(u, v, branch=branch, note=str(cfg.get("note", "")),
                         parents=[node.version])
            repo.nodes[v] = child
            node.children.append(v)
            node.updated = repo.updated = _now()
            self.uuid_to_version[u] = v
            self.version_repo[v] = repo
            for inst in repo.instances.values():
                if inst.is_label:
                    inst.max_label[str(v)] = inst.max_label.get(str(node.version), 0)
            self.save()
            return _json({"child": u})
        raise not_found


def _triple(value: Any, kind: Callable[[str], Any], what: str) -> list[Any]:
    items = [p for p in re.split(r"[,\s]+", str(value).strip()) if p]
    if len(items) == 1:
        items = items * 3
    try:
        out = [kind(p) for p in items]
    except ValueError:
        raise DVIDError(f"bad {what} {value!r}: expected 3 comma-separated numbers") from None
    if len(out) != 3 or any(o <= 0 for o in out):
        raise DVIDError(f"bad {what} {value!r}: expected 3 positive numbers")
    return out


@dataclass
class _Ctx:
    state: DVIDState
    repo: Repo
    inst: Instance
    version: int
    ancestry: list[int]
    q: dict[str, str]
    headers: dict[str, str]

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
        return self.q.get(name, "").lower() in ("true", "1", "on")


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
        values = {k: store.get(k, ctx.ancestry) for k in keys}
        return _kv_bulk(ctx, {k: v for k, v in values.items() if isinstance(v, bytes)})
    if kw == "keyvalues":
        if method == "GET":
            if ctx.flag("json") or ctx.flag("jsontar"):
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


# -- voxels (imageblk, labelmap, labelarray) ----------------------------------------------------
def _xyz(text: str, what: str) -> tuple[int, int, int]:
    items = text.split("_")
    try:
        vals = [int(p) for p in items]
    except ValueError:
        raise DVIDError(f"bad {what} {text!r}: expected x_y_z integers") from None
    if len(vals) != 3:
        raise DVIDError(f"bad {what} {text!r}: expected 3 values x_y_z, got {len(vals)}")
    return vals[0], vals[1], vals[2]


def _pt(p: Iterable[int]) -> str:
    return "(" + ",".join(str(v) for v in p) + ")"


def _scale(ctx: _Ctx) -> int:
    text = ctx.q.get("scale", "0")
    if not text.isdigit():
        raise DVIDError(f"bad scale specified: {text!r} is not a non-negative integer")
    s = int(text)
    if ctx.inst.is_label:
        if s > ctx.inst.max_downres:
            raise DVIDError(f"bad scale specified: scale {s} exceeds MaxDownresLevel "
                            f"{ctx.inst.max_downres}")
    elif s != 0:
        raise DVIDError(f"{ctx.inst.typename} instances hold one scale; got scale={s}")
    return s


class _Vol:
    """Block-level access to one scale of a voxel instance at one version."""

    def __init__(self, ctx: _Ctx, scale: int) -> None:
        self.ctx = ctx
        self.scale = scale
        self.store = ctx.store(f"blocks-{scale}")
        bx, by, bz = ctx.inst.block_size
        self.bs = (bz, by, bx)  # z, y, x
        self.dtype = ctx.inst.dtype

    @staticmethod
    def key(bz: int, by: int, bx: int) -> str:
        return f"{bx}_{by}_{bz}"

    def block(self, bz: int, by: int, bx: int) -> np.ndarray | None:
        v = self.store.get(self.key(bz, by, bx), self.ctx.ancestry)
        return v if isinstance(v, np.ndarray) else None

    def block_keys(self) -> list[tuple[int, int, int]]:
        out = []
        for k in self.store.keys(self.ctx.ancestry):
            x, y, z = (int(p) for p in k.split("_"))
            out.append((z, y, x))
        return sorted(out)

    def read(self, start: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=self.dtype)
        stop = tuple(s + n for s, n in zip(start, shape, strict=True))
        lo = [s // b for s, b in zip(start, self.bs, strict=True)]
        hi = [-(-e // b) for e, b in zip(stop, self.bs, strict=True)]
        for bz in range(lo[0], hi[0]):
            for by in range(lo[1], hi[1]):
                for bx in range(lo[2], hi[2]):
                    blk = self.block(bz, by, bx)
                    if blk is None:
                        continue
                    b0 = (bz * self.bs[0], by * self.bs[1], bx * self.bs[2])
                    a = [max(s, o) for s, o in zip(start, b0, strict=True)]
                    e = [min(s, o + b) for s, o, b in zip(stop, b0, self.bs, strict=True)]
                    out[a[0] - start[0]:e[0] - start[0], a[1] - start[1]:e[1] - start[1],
                        a[2] - start[2]:e[2] - start[2]] = blk[
                        a[0] - b0[0]:e[0] - b0[0], a[1] - b0[1]:e[1] - b0[1],
                        a[2] - b0[2]:e[2] - b0[2]]
        return out

    def aligned(self, start: tuple[int, int, int], shape: tuple[int, int, int]) -> bool:
        return all(s % b == 0 and n % b == 0 for s, n, b in zip(start, shape, self.bs,
                                                                strict=True))

    def write(self, start: tuple[int, int, int], data: np.ndarray) -> None:
        nz, ny, nx = data.shape
        bz0, by0, bx0 = (s // b for s, b in zip(start, self.bs, strict=True))
        z, y, x = self.bs
        for iz in range(nz // z):
            for iy in range(ny // y):
                for ix in range(nx // x):
                    blk = np.array(data[iz * z:(iz + 1) * z, iy * y:(iy + 1) * y,
                                        ix * x:(ix + 1) * x])
                    self.store.put(self.key(bz0 + iz, by0 + iy, bx0 + ix), self.ctx.version,
                                   blk)
        if self.scale == 0:
            inst = self.ctx.inst
            lo = [start[2], start[1], start[0]]
            hi = [start[2] + nx - 1, start[1] + ny - 1, start[0] + nz - 1]
            inst.min_point = lo if inst.min_point is None else [
                min(a, b) for a, b in zip(inst.min_point, lo, strict=True)]
            inst.max_point = hi if inst.max_point is None else [
                max(a, b) for a, b in zip(inst.max_point, hi, strict=True)]


def _voxels(ctx: _Ctx, method: str, parts: list[str], body: bytes,
            not_found: DVIDError) -> Reply:
    kw = parts[0]
    inst = ctx.inst
    if kw == "raw" or kw == "isotropic":
        return _raw(ctx, method, parts, body)
    if kw == "metadata" and method == "GET":
        return _json({"Axes": [{"Label": a, "Resolution": r, "Units": u, "Size": 0}
                               for a, r, u in zip("XYZ", inst.voxel_size, inst.voxel_units,
                                                  strict=True)],
                      "Properties": {"Values": [{"DataType": inst.dtype.name,
                                                  "Label": inst.typename}]}})
    if kw == "extents" and method == "POST":
        cfg = ctx.state._body_json(body, "")
        try:
            inst.min_point = [int(v) for v in cfg["MinPoint"]]
            inst.max_point = [int(v) for v in cfg["MaxPoint"]]
        except (KeyError, TypeError, ValueError):
            raise DVIDError("extents must be JSON {\"MinPoint\": [x,y,z], \"MaxPoint\": "
                            "[x,y,z]}") from None
        with ctx.state.lock:
            ctx.state.save()
        return Reply(body=b"")
    if kw == "resolution" and method == "POST":
        try:
            res = [float(v) for v in json.loads(body)]
        except (ValueError, TypeError):
            raise DVIDError("resolution must be a JSON list of 3 numbers") from None
        if len(res) != 3:
            raise DVIDError("resolution must be a JSON list of 3 numbers")
        inst.voxel_size = res
        with ctx.state.lock:
            ctx.state.save()
        return Reply(body=b"")
    if not inst.is_label:
        raise not_found
    return _labels(ctx, method, parts, body, not_found)


def _raw(ctx: _Ctx, method: str, parts: list[str], body: bytes) -> Reply:
    if len(parts) < 4:
        raise DVIDError(f"'{parts[0]}' must be followed by shape/size/offset")
    dims, size_s, off_s = parts[1], parts[2], parts[3]
    if dims != "0_1_2":
        raise DVIDError(f"the voxgate DVID test server serves only 3-D raw requests (dims "
                        f"0_1_2), not {dims!r}")
    sx, sy, sz = _xyz(size_s, "size")
    ox, oy, oz = _xyz(off_s, "offset")
    if min(sx, sy, sz) <= 0:
        raise DVIDError(f"Illegal geometry requested: size {size_s}")
    inst = ctx.inst
    vol = _Vol(ctx, _scale(ctx))
    start, shape = (oz, oy, ox), (sz, sy, sx)
    compression = ctx.q.get("compression", "")
    nbytes = sx * sy * sz * inst.dtype.itemsize
    if method == "GET":
        data = vol.read(start, shape)
        if inst.is_label and not ctx.flag("supervoxels"):
            data = _apply_mapping(ctx, data)
        raw = data.astype(inst.dtype.newbyteorder("<"), copy=False).tobytes()
        if not inst.is_label or compression in ("", "uncompressed"):
            return Reply(body=raw, content_type="application/octet-stream")
        if compression == "lz4":
            return Reply(body=lz4.block.compress(raw, store_size=False),
                         content_type="application/octet-stream")
        if compression == "gzip":
            return Reply(body=gzip.compress(raw, 1), content_type="application/octet-stream")
        raise DVIDError(f"unknown compression type {compression!r} (this test server sends "
                        "lz4, gzip or uncompressed)")
    if method != "POST":
        raise DVIDError(f"DVID does not support {method} on the raw endpoint")
    if parts[0] == "isotropic":
        raise DVIDError("can only POST 'raw' not 'isotropic' images")
    end = (ox + sx - 1, oy + sy - 1, oz + sz - 1)
    if not vol.aligned(start, shape):
        what = f"labels for data {_q(inst.name)}" if inst.is_label else "voxels"
        raise DVIDError(f"cannot store {what} in non-block aligned geometry "
                        f"{_pt((ox, oy, oz))} -> {_pt(end)}")
    if inst.is_label and compression == "lz4":
        try:
            raw = lz4.block.decompress(body, uncompressed_size=nbytes)
        except (lz4.block.LZ4BlockError, ValueError) as exc:
            raise DVIDError(f"lz4 decompression of the POSTed labels failed: {exc}") from None
    elif inst.is_label and compression == "gzip":
        try:
            raw = gzip.decompress(body)
        except (OSError, EOFError, zlib.error) as exc:
            raise DVIDError(f"gzip decompression of the POSTed labels failed: {exc}") from None
    elif compression not in ("", "uncompressed"):
        raise DVIDError(f"unknown compression type {compression!r}")
    else:
        raw = body
    if len(raw) != nbytes:
        if inst.is_label:
            raise DVIDError(f"expected {nbytes} bytes for data {_q(inst.name)} label PUT but "
                            f"only received {len(raw)} bytes")
        raise DVIDError(f"Expected {nbytes} bytes for {sx * sy * sz} voxels of "
                        f"{inst.dtype.name}, got {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=inst.dtype.newbyteorder("<")).reshape(shape)
    with ctx.state.lock:
        vol.write(start, data)
        if inst.is_label and data.size:
            _note_labels(ctx, int(data.max()))
        ctx.mutated()
        ctx.state.save()
    return Reply(body=b"")


def _note_labels(ctx: _Ctx, top: int) -> None:
    inst = ctx.inst
    v = str(ctx.version)
    if top > inst.max_label.get(v, 0):
        inst.max_label[v] = top
    inst.max_repo_label = max(inst.max_repo_label, top)


# -- label bookkeeping --------------------------------------------------------------------------
def _mapping(ctx: _Ctx) -> dict[int, int]:
    """supervoxel -> body at this version (labelarray: no mapping)."""
    if ctx.inst.typename != "labelmap":
        return {}
    key = ("mapping", ctx.version, ctx.inst.mutations)  # a read racing a write keeps no stale copy
    cached = ctx.inst.caches.get(key)
    if cached is not None:
        return dict(cached)
    store = ctx.store("mapping")
    out: dict[int, int] = {}
    for k in store.keys(ctx.ancestry):
        v = store.get(k, ctx.ancestry)
        if isinstance(v, bytes):
            out[int(k)] = struct.unpack("<Q", v)[0]
    ctx.inst.caches[key] = out
    return dict(out)


def _apply_mapping(ctx: _Ctx, data: np.ndarray) -> np.ndarray:
    m = _mapping(ctx)
    if not m:
        return data
    keys = np.array(sorted(m), dtype=np.uint64)
    vals = np.array([m[int(k)] for k in keys], dtype=np.uint64)
    pos = np.searchsorted(keys, data)
    pos[pos >= len(keys)] = 0
    hit = keys[pos] == data
    out = data.copy()
    out[hit] = vals[pos[hit]]
    return out


def _index(ctx: _Ctx, scale: int = 0) -> dict[int, dict[tuple[int, int, int], int]]:
    """supervoxel -> {block (z, y, x): voxel count} at this version and scale."""
    key = ("index", ctx.version, scale, ctx.inst.mutations)
    cached = ctx.inst.caches.get(key)
    if cached is not None:
        return dict(cached)
    vol = _Vol(ctx, scale)
    out: dict[int, dict[tuple[int, int, int], int]] = {}
    for bk in vol.block_keys():
        blk = vol.block(*bk)
        if blk is None:
            continue
        labels, counts = np.unique(blk, return_counts=True)
        for lab, c in zip(labels.tolist(), counts.tolist(), strict=True):
            if lab:
                out.setdefault(lab, {})[bk] = c
    ctx.inst.caches[key] = out
    return dict(out)


def _supervoxels_of(ctx: _Ctx, label: int, supervoxels: bool) -> set[int]:
    idx = _index(ctx)
    if supervoxels:
        return {label} if label in idx else set()
    m = _mapping(ctx)
    return {sv for sv in idx if m.get(sv, sv) == label}


def _label_arg(parts: list[str], what: str) -> int:
    if len(parts) < 2:
        raise DVIDError(f"DVID requires label to follow '{what}' command")
    text = parts[1]
    if not text.isdigit() or int(text) >= 2**64:
        raise DVIDError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    label = int(text)
    if label == 0:
        raise DVIDError("Label 0 is protected background value and cannot be used as sparse "
                        "volume.\n".rstrip())
    return label


def _body_list(body: bytes, what: str) -> list[Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise DVIDError(f"Bad {what} request JSON: {exc}") from None
    if not isinstance(data, list):
        raise DVIDError(f"Bad {what} request JSON: expected a list")
    return data


def _bounds(ctx: _Ctx) -> tuple[list[int], list[int]]:
    """Optional minx..maxz query bounds as inclusive (z, y, x) lists."""
    lo, hi = [-(2**62)] * 3, [2**62] * 3
    for i, axis in enumerate("zyx"):
        for name, target in ((f"min{axis}", lo), (f"max{axis}", hi)):
            if name in ctx.q:
                try:
                    target[i] = int(ctx.q[name])
                except ValueError:
                    raise DVIDError(f"error parsing bounds from query string: {name}="
                                    f"{ctx.q[name]!r}") from None
    return lo, hi


def _runs(ctx: _Ctx, svs: set[int], scale: int, lo: list[int], hi: list[int]) -> np.ndarray:
    vol = _Vol(ctx, scale)
    idx = _index(ctx, scale)
    blocks = sorted({b for sv in svs for b in idx.get(sv, {})})
    wanted = np.array(sorted(svs), dtype=np.uint64)
    parts = []
    for bz, by, bx in blocks:
        blk = vol.block(bz, by, bx)
        if blk is None:
            continue
        o = (bz * vol.bs[0], by * vol.bs[1], bx * vol.bs[2])
        a = [max(lo_i - o_i, 0) for lo_i, o_i in zip(lo, o, strict=True)]
        e = [min(hi_i - o_i + 1, b) for hi_i, o_i, b in zip(hi, o, vol.bs, strict=True)]
        if any(x >= y for x, y in zip(a, e, strict=True)):
            continue
        sub = blk[a[0]:e[0], a[1]:e[1], a[2]:e[2]]
        mask = np.isin(sub, wanted)
        parts.append(rles_from_mask(mask, (o[0] + a[0], o[1] + a[1], o[2] + a[2])))
    if not parts:
        return np.zeros((0, 4), dtype=np.int32)
    runs = np.concatenate(parts).astype(np.int64)
    runs = runs[np.lexsort((runs[:, 0], runs[:, 1], runs[:, 2]))]
    # join runs that continue across block boundaries along x
    merged: list[list[int]] = []
    for x, y, z, n in runs.tolist():
        if merged and merged[-1][1] == y and merged[-1][2] == z and \
                merged[-1][0] + merged[-1][3] == x:
            merged[-1][3] += n
        else:
            merged.append([x, y, z, n])
    return np.array(merged, dtype=np.int32)


def _labels(ctx: _Ctx, method: str, parts: list[str], body: bytes,
            not_found: DVIDError) -> Reply:
    kw = parts[0]
    inst = ctx.inst
    is_map = inst.typename == "labelmap"
    if kw == "label" and method == "GET":
        if len(parts) < 2:
            raise DVIDError("DVID requires coord to follow 'label' command")
        x, y, z = _xyz(parts[1], "coordinate")
        return Reply(body=json.dumps({"Label": _points(ctx, [(x, y, z)])[0]}).encode())
    if kw == "labels" and method == "GET":
        coords = _body_list(body, "labels")
        try:
            pts = [(int(c[0]), int(c[1]), int(c[2])) for c in coords]
        except (TypeError, ValueError, IndexError):
            raise DVIDError("Bad labels request JSON: expected [[x,y,z], ...]") from None
        return Reply(body=("[" + ",".join(str(v) for v in _points(ctx, pts)) + "]").encode())
    if kw == "maxlabel":
        if method == "GET":
            v = str(ctx.version)
            if v not in inst.max_label:
                raise DVIDError(f"No maximum label found for {inst.name} version {ctx.version}")
            return Reply(body=json.dumps({"maxlabel": inst.max_label[v]}).encode())
        if method == "POST" and len(parts) >= 2:
            n = _uint(parts[1])
            if n == 0 or n > MAX_LABEL:
                raise DVIDError(f"max label {n} must be between 1 and 2^48")
            with ctx.state.lock:
                _note_labels(ctx, n)
                ctx.state.save()
            return Reply(body=b"")
    if kw == "nextlabel":
        if method == "GET":
            n = inst.next_label + 1 if inst.next_label else inst.max_repo_label + 1
            return Reply(body=json.dumps({"nextlabel": n}).encode())
        if method == "POST":
            if len(parts) < 2:
                raise DVIDError("DVID requires number of requested labels to follow POST "
                                "/nextlabel")
            count = _uint(parts[1])
            if count < 1:
                raise DVIDError(f"cannot request {count} new labels, must be 1 or more")
            with ctx.state.lock:
                start, end = _new_labels(ctx, count)
                ctx.state.save()
            return Reply(body=json.dumps({"start": start, "end": end}).encode())
    if kw == "set-nextlabel" and method == "POST" and len(parts) >= 2:
        n = _uint(parts[1])
        if n == 0:
            raise DVIDError("Label 0 is protected background value and cannot be used as next "
                            "label.")
        with ctx.state.lock:
            inst.next_label = n
            ctx.state.save()
        return Reply(body=b"")
    if kw in ("blocks", "specificblocks"):
        return _blocks(ctx, method, parts, body)
    if kw == "size" and method == "GET":
        label = _label_arg(parts, "size")
        svs = _supervoxels_of(ctx, label, ctx.flag("supervoxels"))
        idx = _index(ctx)
        n = sum(sum(idx[sv].values()) for sv in svs)
        if not n:
            return Reply(404, b"", "text/plain")
        return Reply(body=json.dumps({"voxels": n}).encode())
    if kw == "sizes" and method == "GET":
        labels = [_as_label(v) for v in _body_list(body, "sizes")]
        idx = _index(ctx)
        sv_mode = ctx.flag("supervoxels")
        m = {} if sv_mode else _mapping(ctx)
        totals: dict[int, int] = {}
        for sv, blocks in idx.items():
            b = sv if sv_mode else m.get(sv, sv)
            totals[b] = totals.get(b, 0) + sum(blocks.values())
        return Reply(body=("[" + ",".join(str(totals.get(lab, 0)) for lab in labels) + "]")
                     .encode())
    if kw == "supervoxels" and method == "GET" and is_map:
        label = _label_arg(parts, "supervoxels")
        sv_list = sorted(_supervoxels_of(ctx, label, False))
        if not sv_list:
            return Reply(404, b"", "text/plain")
        return Reply(body=("[" + ",".join(map(str, sv_list)) + "]").encode())
    if kw == "lastmod" and method == "GET":
        label = _label_arg(parts, "lastmod")
        if not _supervoxels_of(ctx, label, False):
            return Reply(404, b"", "text/plain")
        for anc in ctx.ancestry:
            if str(anc) in inst.last_mod:
                return _json(inst.last_mod[str(anc)])
        return _json({"mutation id": 0, "last mod user": "", "last mod app": "",
                      "last mod time": ""})
    if kw == "sparsevol-size" and method == "GET":
        label = _label_arg(parts, "sparsevol-size")
        svs = _supervoxels_of(ctx, label, ctx.flag("supervoxels"))
        idx = _index(ctx)
        bset = {b for sv in svs for b in idx[sv]}
        if not bset:
            return Reply(404, b"", "text/plain")
        n = sum(sum(idx[sv].values()) for sv in svs)
        bz, by, bx = inst.block_size[2], inst.block_size[1], inst.block_size[0]
        lo = [min(b[i] for b in bset) for i in range(3)]
        hi = [max(b[i] for b in bset) for i in range(3)]
        text = (f'{{"voxels": {n}, "numblocks": {len(bset)}, '
                f'"minvoxel": [{lo[2] * bx}, {lo[1] * by}, {lo[0] * bz}], '
                f'"maxvoxel": [{(hi[2] + 1) * bx - 1}, {(hi[1] + 1) * by - 1}, '
                f'{(hi[0] + 1) * bz - 1}]}}')
        return Reply(body=text.encode())
    if kw in ("sparsevol", "sparsevol-coarse") and method in ("GET", "HEAD"):
        label = _label_arg(parts, kw)
        svs = _supervoxels_of(ctx, label, ctx.flag("supervoxels"))
        lo, hi = _bounds(ctx)
        if kw == "sparsevol-coarse":
            idx = _index(ctx)
            bs = (inst.block_size[2], inst.block_size[1], inst.block_size[0])
            blist = sorted({b for sv in svs for b in idx[sv]
                            if all(lo[i] // bs[i] <= b[i] <= hi[i] // bs[i] for i in range(3))})
            if not blist:
                return Reply(404, b"", "text/plain")
            runs: list[list[int]] = []
            for z, y, x in blist:
                if runs and runs[-1][1] == y and runs[-1][2] == z and \
                        runs[-1][0] + runs[-1][3] == x:
                    runs[-1][3] += 1
                else:
                    runs.append([x, y, z, 1])
            return Reply(body=encode_rles(np.array(runs)),
                         content_type="application/octet-stream")
        scale = _scale(ctx)
        if method == "HEAD":
            found = bool(svs) and len(_runs(ctx, svs, scale, lo, hi)) > 0
            return Reply(200 if found else 204, b"", "text/html")
        runs_arr = _runs(ctx, svs, scale, lo, hi) if svs else np.zeros((0, 4), np.int32)
        if not len(runs_arr):
            return Reply(404, b"", "text/plain")
        fmt = ctx.q.get("format", "rles")
        if fmt not in ("rles", "srles"):
            raise DVIDError(f"sparsevol format {fmt!r} is not served by the voxgate DVID test "
                            "server (it serves rles and srles)")
        data = encode_rles(runs_arr, header=fmt == "rles")
        comp = ctx.q.get("compression", "")
        if comp == "gzip":
            data = gzip.compress(data, 1)
        elif comp:
            raise DVIDError(f"sparsevol compression {comp!r} is not served by the voxgate DVID "
                            "test server (it serves gzip)")
        return Reply(body=data, content_type="application/octet-stream")
    if kw == "listlabels" and method == "GET":
        idx = _index(ctx)
        m = _mapping(ctx)
        totals: dict[int, int] = {}  # type: ignore[no-redef]
        for sv, blocks in idx.items():
            b = m.get(sv, sv)
            totals[b] = totals.get(b, 0) + sum(blocks.values())
        start = int(ctx.q.get("start", 0) or 0)
        number = int(ctx.q.get("number", 10_000_000) or 10_000_000)
        keys = [k for k in sorted(totals) if k >= start][:number]
        if ctx.flag("sizes"):
            arr = np.array([[k, totals[k]] for k in keys], dtype="<u8").reshape(-1)
        else:
            arr = np.array(keys, dtype="<u8")
        return Reply(body=arr.tobytes(), content_type="application/octet-stream")
    if is_map and kw == "mapping" and method == "GET":
        asked = [_as_label(v) for v in _body_list(body, "mapping")]
        m = _mapping(ctx)
        idx = _index(ctx)
        out = [m.get(sv, sv if sv in idx else 0) for sv in asked]
        return Reply(body=("[" + ",".join(map(str, out)) + "]").encode())
    if is_map and kw == "mappings":
        if method == "GET":
            m = _mapping(ctx)
            pairs = sorted((sv, b) for sv, b in m.items() if sv != b)
            if ctx.q.get("format") == "binary":
                return Reply(body=np.array(pairs, dtype="<u8").reshape(-1).tobytes(),
                             content_type="application/octet-stream")
            return Reply(body="".join(f"{a} {b}\n" for a, b in pairs).encode(),
                         content_type="text/plain")
        if method == "POST":
            try:
                ops = decode_mapping_ops(body)
            except ProtobufError as exc:
                raise DVIDError(f"unable to parse protobuf MappingOps: {exc}") from None
            with ctx.state.lock:
                store = ctx.store("mapping")
                for op in ops:
                    for sv in op.original:
                        store.put(str(sv), ctx.version, struct.pack("<Q", op.mapped))
                ctx.mutated()
            return Reply(body=b"")
    if is_map and kw == "merge" and method == "POST":
        labels = [_as_label(v) for v in _body_list(body, "merge")]
        if len(labels) < 2:
            raise DVIDError("Bad merge op JSON: need [target, label, ...] with at least two "
                            "labels")
        target, others = labels[0], labels[1:]
        with ctx.state.lock:
            if target in others:
                raise DVIDError(f"Error on merge: cannot merge label {target} into itself")
            if not _supervoxels_of(ctx, target, False):
                raise DVIDError(f"Error on merge: can't merge into a non-existent label "
                                f"{target}")
            store = ctx.store("mapping")
            for other in others:
                svs = _supervoxels_of(ctx, other, False)
                if not svs:
                    raise DVIDError(f"Error on merge: can't merge non-existent label {other}")
                for sv in svs:
                    store.put(str(sv), ctx.version, struct.pack("<Q", target))
            ctx.mutated()
            ctx.state.save()
            return _json({"MutationID": ctx.repo.mutation_id})
    if is_map and kw == "cleave" and method == "POST":
        label = _label_arg(parts, "cleave")
        svs = {_as_label(v) for v in _body_list(body, "cleave")}
        with ctx.state.lock:
            have = _supervoxels_of(ctx, label, False)
            if not have:
                raise DVIDError(f"cannot cleave non-existent label {label}")
            if not svs <= have:
                raise DVIDError(f"supervoxels {sorted(svs - have)} are not part of label {label}")
            if svs == have:
                raise DVIDError(f"cannot cleave all supervoxels from label {label}")
            new, _ = _new_labels(ctx, 1)
            store = ctx.store("mapping")
            for sv in svs:
                store.put(str(sv), ctx.version, struct.pack("<Q", new))
            ctx.mutated()
            ctx.state.save()
            return _json({"CleavedLabel": new, "MutationID": ctx.repo.mutation_id})
    raise not_found


def _uint(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**64:
        raise DVIDError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    return int(text)


def _as_label(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64:
        raise DVIDError(f"labels must be unsigned 64-bit integers, got {v!r}")
    return v


def _new_labels(ctx: _Ctx, count: int) -> tuple[int, int]:
    inst = ctx.inst
    if inst.next_label:
        start, end = inst.next_label + 1, inst.next_label + count
        inst.next_label = end
        return start, end
    start, end = inst.max_repo_label + 1, inst.max_repo_label + count
    inst.max_repo_label = end
    inst.max_label[str(ctx.version)] = end
    return start, end


def _points(ctx: _Ctx, pts: list[tuple[int, int, int]]) -> list[int]:
    vol = _Vol(ctx, _scale(ctx))
    out = []
    for x, y, z in pts:
        out.append(int(vol.read((z, y, x), (1, 1, 1))[0, 0, 0]))
    if ctx.flag("supervoxels"):
        return out
    m = _mapping(ctx)
    return [m.get(v, v) for v in out]


def _blocks(ctx: _Ctx, method: str, parts: list[str], body: bytes) -> Reply:
    vol = _Vol(ctx, _scale(ctx))
    bz, by, bx = vol.bs
    if method == "POST" and parts[0] == "blocks":
        comp = ctx.q.get("compression", "blocks")
        if comp != "blocks":
            raise DVIDError(f"POST /blocks takes only compression=blocks, got {comp!r}")
        items = []
        try:
            for (x, y, z), record in unpack_block_records(body):
                try:
                    raw = gzip.decompress(record)
                except (OSError, EOFError, zlib.error) as exc:
                    raise DVIDError(f"block ({x},{y},{z}) is not gzip data: {exc}") from None
                items.append(((z, y, x), decode_label_block(raw, vol.bs)))
        except DVIDFormatError as exc:
            raise DVIDError(f"bad block data: {exc}") from None
        with ctx.state.lock:
            for (z, y, x), blk in items:
                vol.write((z * bz, y * by, x * bx), blk)
                if blk.size:
                    _note_labels(ctx, int(blk.max()))
            ctx.mutated()
            ctx.state.save()
        return Reply(body=b"")
    if method != "GET":
        raise DVIDError(f"DVID does not accept the {method} action on the '{parts[0]}' endpoint")
    if parts[0] == "blocks":
        if len(parts) < 3:
            raise DVIDError("must specify size and offset with GET /blocks endpoint")
        sx, sy, sz = _xyz(parts[1], "size")
        ox, oy, oz = _xyz(parts[2], "offset")
        if not vol.aligned((oz, oy, ox), (sz, sy, sx)):
            raise DVIDError(f"cannot use labels via 'blocks' endpoint in non-block aligned "
                            f"geometry {_pt((ox, oy, oz))} -> "
                            f"{_pt((ox + sx - 1, oy + sy - 1, oz + sz - 1))}")
        coords = [(z, y, x) for z in range(oz // bz, (oz + sz) // bz)
                  for y in range(oy // by, (oy + sy) // by)
                  for x in range(ox // bx, (ox + sx) // bx)]
        default = "lz4"
    else:
        text = ctx.q.get("blocks", "")
        try:
            nums = [int(v) for v in text.split(",") if v]
        except ValueError:
            raise DVIDError(f"bad blocks list {text!r}") from None
        if len(nums) % 3:
            raise DVIDError("blocks= must list x,y,z block coordinates in threes")
        coords = [(nums[i + 2], nums[i + 1], nums[i]) for i in range(0, len(nums), 3)]
        default = "blocks"
    comp = ctx.q.get("compression", "") or default
    records = []
    for z, y, x in coords:
        stored = vol.block(z, y, x)
        if stored is None:
            continue
        blk = stored
        if not ctx.flag("supervoxels"):
            blk = _apply_mapping(ctx, blk)
        raw = blk.astype("<u8", copy=False).tobytes()
        if comp == "lz4":
            payload = lz4.block.compress(raw, store_size=False)
        elif comp == "gzip":
            payload = gzip.compress(raw, 1)
        elif comp == "uncompressed":
            payload = raw
        elif comp == "blocks":
            payload = gzip.compress(encode_label_block(blk), 1)
        else:
            raise DVIDError(f"unknown compression {comp!r} for blocks")
        records.append(((x, y, z), payload))
    return Reply(body=pack_block_records(records), content_type="application/octet-stream")


# -- the ASGI app and the process helpers ---------------------------------------------------------
def make_app(data: Path | None = None) -> Any:
    """The Starlette app serving a fresh (or, with ``data``, persisted) DVID state."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    state = DVIDState(data)

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        raw = request.scope.get("raw_path") or request.url.path.encode()
        raw_path = raw.decode("latin-1").split("?")[0]
        query = dict(request.query_params)
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = await run_in_threadpool(state.handle, request.method, raw_path, query, body,
                                        headers)
        hdrs = {"Access-Control-Allow-Origin": "*", **reply.headers}
        if reply.status >= 400:
            hdrs["X-Content-Type-Options"] = "nosniff"
        return Response(reply.body, reply.status, hdrs, media_type=reply.content_type)

    app = Starlette(routes=[Route("/{path:path}", endpoint,
                                  methods=["GET", "POST", "DELETE", "HEAD", "PUT"])])
    app.state.dvid = state
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m voxgate.testing.dvid",
        description="A DVID-dialect test server (in memory unless --data is given).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data", type=Path, default=None,
                        help="folder to persist repos and data in (created if missing)")
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(make_app(args.data), host=args.host, port=args.port, log_level="warning",
                access_log=False)


@dataclass
class DVIDServerProcess:
    """A test server running as a subprocess; ``url`` is ``http://127.0.0.1:PORT``."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path | None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int | None = None, data: Path | None = None, log: Path | None = None,
                 timeout: float = 60.0) -> DVIDServerProcess:
    """Start ``python -m voxgate.testing.dvid`` on 127.0.0.1 and wait until it answers."""
    import httpx

    port = port or _free_port()
    cmd = [sys.executable, "-m", "voxgate.testing.dvid", "--host", "127.0.0.1", "--port",
           str(port)]
    if data is not None:
        cmd += ["--data", str(data)]
    out = open(log, "wb") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text() if log is not None and log.exists() else ""
            raise RuntimeError(f"the DVID test server exited with {proc.returncode}: {text}")
        try:
            if httpx.get(url + "/api/server/info", timeout=1).status_code == 200:
                return DVIDServerProcess(url, port, proc, log)
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the DVID test server did not answer on {url} within {timeout} s")


if __name__ == "__main__":
    main()
