"""The DVID test server's state and router: repos, the version DAG (nodes, branches,
commits), data instances, and the dispatch to the data-type handlers."""

from __future__ import annotations

import json
import os
import re
import threading
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .keyvalue import _keyvalue
from .labels import DVID_ENDPOINTS, _bad_api_call
from .model import (
    _TYPE_PKG,
    TYPE_URL,
    TYPES,
    DVIDError,
    Instance,
    Node,
    Reply,
    Repo,
    _Ctx,
    _json,
    _now,
    _q,
)
from .voxels import _voxels


class DVIDState:
    """Everything the server knows; one lock guards metadata and writes."""

    #: DVID answers ``POST split/<label>`` only with ``AllowLabelmapSplit`` in its config; the
    #: test server allows it unless this is set False
    allow_labelmap_split: bool = True

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
            if "compression" not in cfg:
                inst.compression = "gzip"  # labelmap.go NewData's default
        if "blocksize" in cfg:
            if typename == "labelmap" and any(v % 16 for v in _sscanf_ints(cfg["blocksize"])):
                # labelmap.go NewData: fmt.Sscanf(s, "%d,%d,%d") then each % 16, before the
                # imageblk properties parse the value (so what Sscanf cannot read passes here)
                raise DVIDError("BlockSize must be multiples of 16")
            # labelarray.go NewData and imageblk's setByConfig (dvid.StringToPoint) take any
            # size, zero and negative ones too; a labelarray's blocks the label codec cannot
            # hold are then never stored (labelindex._put_blocks), and an instance with a
            # size that is not positive answers its block requests with a panic
            # (voxels._check_block_size)
            inst.block_size = _string_to_point(cfg["blocksize"])
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
        idx = min(bs) > 0  # (no block index for a size DVID's block arithmetic cannot take)
        ext: dict[str, Any] = {
            "Values": [{"DataType": inst.dtype.name, "Label": inst.typename}],
            "Interpolable": not inst.is_label and inst.typename != "labelblk", "BlockSize": bs,
            "VoxelSize": inst.voxel_size, "VoxelUnits": inst.voxel_units,
            "MinPoint": mn, "MaxPoint": mx,
            "MinIndex": None if mn is None or not idx else [a // b for a, b in zip(mn, bs,
                                                                                  strict=True)],
            "MaxIndex": None if mx is None or not idx else [a // b for a, b in zip(mx, bs,
                                                                                  strict=True)],
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
        if inst.typename == "labelblk" and method not in ("GET", "POST", "DELETE"):
            raise DVIDError("labelblk only handles GET, POST, and DELETE HTTP verbs")
        keyword = parts[4]
        version = node.version
        if inst.versioned:
            if node.locked and method in ("POST", "DELETE", "PUT"):
                raise DVIDError(f'Cannot do {method} on endpoint "{keyword}" of locked node '
                                f"{node.uuid}")
        else:
            version = repo.root_version
        path = "/" + "/".join(parts)
        ctx = _Ctx(self, repo, inst, version, self.ancestry(repo, version), q, headers, path)
        if inst.typename in DVID_ENDPOINTS and keyword not in DVID_ENDPOINTS[inst.typename]:
            raise _bad_api_call(ctx)
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
            if not body.strip():
                # server/web.go repoCommitHandler unmarshals the body without checking its
                # length first (branch and newversion do check): an empty body is refused
                raise DVIDError("Malformed JSON request in body: unexpected end of JSON input")
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


def _sscanf_ints(value: Any) -> list[int]:
    """What Go's ``fmt.Sscanf(value, "%d,%d,%d", &x, &y, &z)`` reads: the leading integers
    (each after optional spaces) up to the first that does not parse."""
    out = []
    m = re.match(r"\s*([+-]?\d+)(?:,\s*([+-]?\d+)(?:,\s*([+-]?\d+))?)?", str(value))
    if m:
        out = [int(g) for g in m.groups() if g is not None]
    return out


def _string_to_point(value: Any) -> list[int]:
    """What dvid.StringToPoint(value, ",") makes of a BlockSize (imageblk setByConfig): split at
    every comma, each part strconv.ParseInt(strings.TrimSpace(part), 10, 32); no check of the
    values (0 and negative sizes are taken).  DVID also takes 2 or more than 3 parts (a 2-d or
    N-d point); the test server keeps 3-d blocks only and says so."""
    text = str(value)
    parts = text.split(",")
    if len(parts) < 2:
        raise DVIDError(f"cannot convert '{text}' into a Point.")
    out = []
    for part in parts:
        p = part.strip()
        if not re.fullmatch(r"[+-]?[0-9]+", p):
            raise DVIDError(f'strconv.ParseInt: parsing "{p}": invalid syntax')
        v = int(p)
        if not -2**31 <= v < 2**31:
            raise DVIDError(f'strconv.ParseInt: parsing "{p}": value out of range')
        out.append(v)
    if len(out) != 3:
        raise DVIDError(f"BlockSize {text!r}: DVID stores it as a {len(out)}-d point; the "
                        "voxgate DVID test server models 3-d blocks only")
    return out


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
