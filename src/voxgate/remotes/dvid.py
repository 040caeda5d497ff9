"""``dvid://``: DVID, the versioned connectomics store (repos, nodes, branches).

```
dvid://127.0.0.1:8000/3f8a/segmentation              http, a unique UUID prefix
dvid://https://dvid.example.org/3f8a:proofread/grayscale   https, the leaf of a branch
dvid://http://host:8000/3f8a2b.../segmentation       any server URL, full UUID
```

The node (``UUID``, a unique prefix, ``prefix:branch`` for the branch's current leaf, or
``prefix:branch~N`` for its Nth ancestor) is resolved once when the volume opens and pinned:
``spec()`` names the full UUID, so every worker reads the same version.

Voxel types: ``uint8blk``, ``uint16blk``, ``uint32blk``, ``uint64blk``, ``float32blk`` (images)
and ``labelmap`` / ``labelarray`` (uint64 segmentations; ``labelblk`` reads).  Reads of any
box are split into block-aligned requests run concurrently over one pooled client and decoded
straight into one output array; labels travel lz4-compressed by default (``compression=``
``"lz4"``, ``"gzip"`` or ``"none"``).  Writes of any box work: DVID only accepts
block-aligned POSTs, so whole blocks are written directly and partly covered edge blocks are
read (as supervoxels), patched and written back.  labelmap scales are the Volume's scales
(``?scale=k``, each halving every axis); an image volume's scales are sibling instances
``<name>_1``, ``<name>_2``, ... (made by ``voxgate.create`` with ``num_scales > 1``).
Reads of a labelmap return body ids (the supervoxel -> body mapping applied); open with
``supervoxels=True`` to read the stored supervoxel ids.  Writes always store supervoxels.

:class:`DVIDRepo` handles the versioning (create, commit, branch, new version, log, the DAG),
keyvalue instances (:class:`DVIDKeyValue`) and label queries (:class:`DVIDLabels`).
"""

from __future__ import annotations

import atexit
import gzip
import json
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlparse

import httpx
import lz4.block
import numpy as np

from ..errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    DtypeError,
    InvalidRequestError,
    ReadOnlyError,
    RemoteExistsError,
    RemoteNotFoundError,
    VoxgateError,
)
from ..formats.dvid_block import (
    DVIDFormatError,
    decode_rles,
    rles_to_coordinates,
)
from ..formats.dvid_proto import decode_keyvalues, encode_keys, encode_keyvalues
from ..geometry import Box, Vec, VoxelSize, grow_block
from ..meta import Kind, Scale, VolumeMeta
from ._http import HTTPClient
from .base import Capability, Remote, check_options

__all__ = [
    "DVIDKeyValue",
    "DVIDLabels",
    "DVIDNode",
    "DVIDRemote",
    "DVIDRepo",
    "LabelNotFoundError",
    "SparsevolSize",
    "decode_ngmesh",
    "encode_ngmesh",
]

IMAGE_TYPES = {"uint8blk": "uint8", "uint16blk": "uint16", "uint32blk": "uint32",
               "uint64blk": "uint64", "float32blk": "float32"}
LABEL_TYPES = ("labelmap", "labelarray", "labelblk")
_TYPE_FOR_DTYPE = {v: k for k, v in IMAGE_TYPES.items()}
#: a read or write request moves at most about this many uncompressed bytes
REQUEST_BYTES = 8 * 2**20
#: bounds of a DVID volume that has neither voxgate geometry nor extents (DVID has no size)
UNBOUNDED = 2**31 - 1
_UNIT_NM = {"nanometers": 1.0, "nanometer": 1.0, "nm": 1.0, "micrometers": 1e3,
            "micrometer": 1e3, "um": 1e3, "microns": 1e3, "millimeters": 1e6, "angstroms": 0.1}
_COMPRESSIONS = ("lz4", "gzip", "none")


class LabelNotFoundError(RemoteNotFoundError):
    """The label (body or supervoxel) has no voxels at this node (DVID answered 404)."""


# -- URLs, clients and errors ---------------------------------------------------------------------
def normalize_server(server: str) -> str:
    """``host:port`` -> ``http://host:port``; an http(s) URL is kept (without a trailing /)."""
    server = server.strip().rstrip("/")
    if not server:
        raise InvalidRequestError("no DVID server given")
    if not server.startswith(("http://", "https://")):
        server = "http://" + server
    if not urlparse(server).netloc:
        raise InvalidRequestError(f"{server!r} names no host")
    return server


def parse_location(location: str) -> tuple[str, str, str]:
    """``[http(s)://]host[:port][/prefix]/UUID/instance`` -> (server URL, node spec, instance)."""
    loc = location.strip()
    explicit = loc.startswith(("http://", "https://"))
    parsed = urlparse(loc if explicit else "http://" + loc)
    parts = [p for p in parsed.path.split("/") if p]
    if not parsed.netloc or len(parts) < 2:
        raise InvalidRequestError(
            f"dvid://{location}: expected dvid://HOST:PORT/UUID/INSTANCE or "
            "dvid://http(s)://HOST[:PORT]/UUID/INSTANCE"
        )
    prefix = "/".join(parts[:-2])
    server = f"{parsed.scheme}://{parsed.netloc}" + (f"/{prefix}" if prefix else "")
    node, instance = parts[-2], parts[-1]
    if not re.fullmatch(r"[0-9a-fA-F]*(:[A-Za-z0-9_.\-]+(~\d+)?)?", node) or node in ("", ":"):
        raise InvalidRequestError(
            f"dvid://{location}: {node!r} is not a UUID, a UUID prefix or 'uuid:branch'"
        )
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", instance):
        raise InvalidRequestError(f"dvid://{location}: {instance!r} is not a data instance name")
    return server, node, instance


_clients: dict[tuple[str, str, float, int], HTTPClient] = {}
_clients_lock = threading.Lock()


@atexit.register
def _close_clients() -> None:
    with _clients_lock:
        for c in _clients.values():
            c.close()
        _clients.clear()


def _token(token: str | None) -> str:
    return token if token is not None else os.environ.get("VOXGATE_DVID_TOKEN", "")


def client_for(server: str, *, token: str | None = None, timeout: float = 60.0,
               concurrency: int = 8) -> HTTPClient:
    """The shared pooled client for one server and credential."""
    tok = _token(token)
    key = (server, tok, float(timeout), max(concurrency, 16))
    with _clients_lock:
        c = _clients.get(key)
        if c is None:
            headers = {"User-Agent": "voxgate"}
            if tok:
                headers["Authorization"] = f"Bearer {tok}"
            c = HTTPClient(server, headers=headers, timeout=timeout,
                           max_connections=max(concurrency, 16))
            _clients[key] = c
        return c


def _translate(exc: InvalidRequestError) -> VoxgateError:
    """DVID answers 400 to almost everything: give each case its voxgate class and a hint."""
    msg = str(exc)
    low = msg.lower()
    if "unlocked node" in low:
        return InvalidRequestError(msg + " -- commit the node first (DVIDRepo.commit)")
    if "locked node" in low:
        return ReadOnlyError(msg + " -- the node is committed; make a child with "
                             "DVIDRepo.branch() or new_version() and write there")
    if "could not find uuid" in low or "uuid is not present" in low:
        return RemoteNotFoundError(msg)
    if "more than one uuid matches" in low:
        return InvalidRequestError(msg + " -- give more characters of the UUID")
    if "invalid data instance name" in low:
        return RemoteNotFoundError(msg + " -- no data instance of that name in the repo")
    if re.search(r"branch .* not found", low):
        return RemoteNotFoundError(msg)
    return exc


def _call(client: HTTPClient, method: str, path: str, *, what: str,
          expect: int | tuple[int, ...] = 200, **kw: Any) -> httpx.Response:
    try:
        return client.request(method, path, expect=expect, what=what, **kw)
    except InvalidRequestError as exc:
        err = _translate(exc)
        if err is exc:
            raise
        raise err from None


# -- versioning -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DVIDNode:
    """One version of a repo, with parents and children as UUIDs (DVID sends local ids)."""

    uuid: str
    branch: str
    locked: bool
    note: str
    parents: tuple[str, ...]
    children: tuple[str, ...]
    log: tuple[str, ...]
    created: str


class DVIDRepo:
    """A DVID repo: its version DAG, its instances, and the versioning operations.

    ``server`` is ``http(s)://host:port`` or ``host:port``; ``uuid`` any node of the repo (a
    unique prefix or ``prefix:branch`` works).  Node arguments take the same forms.
    """

    def __init__(self, server: str, uuid: str, *, token: str | None = None,
                 timeout: float = 60.0) -> None:
        self.server = normalize_server(server)
        self.client = client_for(self.server, token=token, timeout=timeout)
        self._token = token
        self._timeout = timeout
        info = self.info(uuid)
        self.root: str = info["Root"]
        self.opened_info = info  # the repo JSON as of opening (callers may reuse it once)

    def __repr__(self) -> str:
        return f"<DVIDRepo {self.server} root={self.root}>"

    # construction
    @classmethod
    def create(cls, server: str, *, alias: str = "", description: str = "",
               root: str | None = None, token: str | None = None,
               timeout: float = 60.0) -> DVIDRepo:
        """Make a new repo (``root`` fixes the root UUID: 32 hex characters)."""
        srv = normalize_server(server)
        body: dict[str, str] = {"alias": alias, "description": description}
        if root is not None:
            body["root"] = root
        resp = _call(client_for(srv, token=token, timeout=timeout), "POST", "/api/repos",
                     json=body, what=f"creating a repo on {srv}")
        return cls(srv, resp.json()["root"], token=token, timeout=timeout)

    @staticmethod
    def list_repos(server: str, *, token: str | None = None) -> dict[str, dict[str, Any]]:
        """Every repo on the server: root UUID -> repo info (alias, description, DAG, ...)."""
        srv = normalize_server(server)
        return dict(_call(client_for(srv, token=token), "GET", "/api/repos/info",
                          what=f"listing repos on {srv}").json())

    # the DAG
    def info(self, node: str | None = None) -> dict[str, Any]:
        """The repo's JSON: Root, Alias, Description, DataInstances, DAG (the version graph)."""
        ref = node or self.root
        return dict(_call(self.client, "GET", f"/api/repo/{ref}/info",
                          what=f"repo info of {ref}").json())

    def versions(self) -> dict[str, DVIDNode]:
        """Every node of the DAG by UUID, parents and children translated to UUIDs."""
        nodes = self.info()["DAG"]["Nodes"]
        by_id = {int(n["VersionID"]): u for u, n in nodes.items()}
        out = {}
        for u, n in nodes.items():
            out[u] = DVIDNode(u, n.get("Branch", ""), bool(n.get("Locked")), n.get("Note", ""),
                              tuple(by_id[p] for p in n.get("Parents") or []),
                              tuple(by_id[c] for c in n.get("Children") or []),
                              tuple(n.get("Log") or []), n.get("Created", ""))
        return out

    def resolve(self, node: str, info: dict[str, Any] | None = None) -> str:
        """The full UUID of a node given as a prefix, ``prefix:branch`` or ``prefix:branch~N``.

        ``info`` is a repo JSON just fetched, saving a request."""
        prefix, _, branch = node.partition(":")
        if branch:
            name, _, back = branch.partition("~")
            chain = self.branch_versions(name, prefix or self.root)
            if not chain:
                raise RemoteNotFoundError(f"branch {name!r} not found in repo {self.root}")
            k = int(back) if back else 0
            if k >= len(chain):
                raise InvalidRequestError(f"branch {name!r} has only {len(chain)} versions")
            return chain[k]
        nodes = (info or self.info(node))["DAG"]["Nodes"]
        matches = [u for u in nodes if u.startswith(prefix)]
        if len(matches) != 1:
            raise InvalidRequestError(f"{node!r} matches {len(matches)} nodes of repo {self.root}")
        return matches[0]

    def branch_versions(self, branch: str = "master", node: str | None = None) -> list[str]:
        """UUIDs of ``branch`` from its leaf back to the root."""
        ref = node or self.root
        return list(_call(self.client, "GET", f"/api/repo/{ref}/branch-versions/{branch}",
                          what=f"versions of branch {branch}").json())

    def is_locked(self, node: str) -> bool:
        return bool(_call(self.client, "GET", f"/api/node/{node}/commit",
                          what=f"lock state of {node}").json()["Locked"])

    def commit(self, node: str, note: str = "", log: Sequence[str] = ()) -> str:
        """Commit (lock) ``node``: it becomes read-only and can have children."""
        resp = _call(self.client, "POST", f"/api/node/{node}/commit",
                     json={"note": note, "log": list(log)}, what=f"committing {node}")
        return str(resp.json()["committed"])

    def branch(self, node: str, name: str, *, note: str = "", uuid: str | None = None) -> str:
        """A child of the committed ``node`` on a new branch ``name``; returns its UUID."""
        body: dict[str, str] = {"branch": name, "note": note}
        if uuid:
            body["uuid"] = uuid
        resp = _call(self.client, "POST", f"/api/node/{node}/branch", json=body,
                     what=f"branching {name!r} from {node}")
        return str(resp.json()["child"])

    def new_version(self, node: str, *, note: str = "", uuid: str | None = None) -> str:
        """A child of the committed ``node`` on the same branch; returns its UUID."""
        body: dict[str, str] = {"note": note}
        if uuid:
            body["uuid"] = uuid
        resp = _call(self.client, "POST", f"/api/node/{node}/newversion", json=body,
                     what=f"new version of {node}")
        return str(resp.json()["child"])

    def log(self, node: str | None = None) -> list[str]:
        """The node's log lines (each prefixed with its RFC3339 time by the server)."""
        ref = node or self.root
        return list(_call(self.client, "GET", f"/api/node/{ref}/log",
                          what=f"log of {ref}").json()["log"])

    def add_log(self, node: str, *messages: str) -> None:
        _call(self.client, "POST", f"/api/node/{node}/log", json={"log": list(messages)},
              what=f"logging to {node}")

    def note(self, node: str) -> str:
        return str(_call(self.client, "GET", f"/api/node/{node}/note",
                         what=f"note of {node}").json()["note"])

    def set_note(self, node: str, note: str) -> None:
        _call(self.client, "POST", f"/api/node/{node}/note", json={"note": note},
              what=f"setting the note of {node}")

    # instances
    def instances(self) -> dict[str, str]:
        """Data instance name -> type name."""
        return {n: i["Base"]["TypeName"] for n, i in
                (self.info().get("DataInstances") or {}).items()}

    def create_instance(
        self, name: str, typename: str, *, node: str | None = None,
        block_size: Iterable[int] | None = None, voxel_size: Iterable[float] | None = None,
        voxel_units: str = "nanometers", max_scale: int = 0, versioned: bool = True,
        compression: str | None = None, tags: dict[str, str] | None = None,
    ) -> None:
        """Add a data instance to the repo (at ``node``, default the root; it must be open).

        ``block_size`` and ``voxel_size`` are (z, y, x) like everything in voxgate.
        """
        body: dict[str, str] = {"typename": typename, "dataname": name,
                                "versioned": "true" if versioned else "false"}
        if block_size is not None:
            body["BlockSize"] = ",".join(str(int(v)) for v in list(block_size)[::-1])
        if voxel_size is not None:
            body["VoxelSize"] = ",".join(f"{float(v):g}" for v in list(voxel_size)[::-1])
        if typename != "keyvalue":
            body["VoxelUnits"] = voxel_units
        if typename in ("labelmap", "labelarray"):
            body["MaxDownresLevel"] = str(int(max_scale))
            body["IndexedLabels"] = "true"
        if compression:
            body["Compression"] = compression
        if tags:
            for k, v in tags.items():
                if re.search(r"[,=\s]", f"{k}{v}"):
                    raise InvalidRequestError(f"tag {k}={v} may not hold ',', '=' or spaces")
            body["Tags"] = ",".join(f"{k}={v}" for k, v in tags.items())
        ref = node or self.root
        _call(self.client, "POST", f"/api/repo/{ref}/instance", json=body,
              what=f"creating {typename} instance {name!r}")

    def url(self, instance: str, node: str | None = None) -> str:
        """The ``dvid://`` URL of an instance at a node (default the root)."""
        return f"dvid://{self.server}/{node or self.root}/{instance}"

    def keyvalue(self, name: str, node: str | None = None) -> DVIDKeyValue:
        return DVIDKeyValue(self.client, node or self.root, name)

    def labels(self, name: str, node: str | None = None) -> DVIDLabels:
        return DVIDLabels(self.client, node or self.root, name)


# -- keyvalue -------------------------------------------------------------------------------------
class DVIDKeyValue(MutableMapping[str, bytes]):
    """A keyvalue instance at one node as a mapping of str -> bytes (missing keys: KeyError)."""

    def __init__(self, client: HTTPClient, node: str, name: str) -> None:
        self.client, self.node, self.name = client, node, name
        self._base = f"/api/node/{node}/{name}"

    def __repr__(self) -> str:
        return f"<DVIDKeyValue {self.client.base_url}/{self.node}/{self.name}>"

    @staticmethod
    def _k(key: str) -> str:
        if not isinstance(key, str) or not key:
            raise InvalidRequestError(f"keyvalue keys are non-empty strings, got {key!r}")
        return quote(key, safe="")

    def __getitem__(self, key: str) -> bytes:
        try:
            return _call(self.client, "GET", f"{self._base}/key/{self._k(key)}",
                         what=f"key {key!r} of {self.name}").content
        except RemoteNotFoundError:
            raise KeyError(key) from None

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of a value (an HTTP Range request)."""
        if not 0 <= start < stop:
            raise InvalidRequestError(f"byte range [{start}, {stop}) is empty or negative")
        try:
            return _call(self.client, "GET", f"{self._base}/key/{self._k(key)}",
                         headers={"Range": f"bytes={start}-{stop - 1}"}, expect=(200, 206),
                         what=f"bytes of key {key!r}").content
        except RemoteNotFoundError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: bytes) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise DtypeError(f"keyvalue values are bytes, got {type(value).__name__}")
        _call(self.client, "POST", f"{self._base}/key/{self._k(key)}", content=bytes(value),
              what=f"storing key {key!r} in {self.name}")

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        _call(self.client, "DELETE", f"{self._base}/key/{self._k(key)}",
              what=f"deleting key {key!r} of {self.name}")

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not key:
            return False
        resp = _call(self.client, "HEAD", f"{self._base}/key/{self._k(key)}", expect=(200, 404),
                     what=f"checking key {key!r}")
        return resp.status_code == 200

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_list())

    def __len__(self) -> int:
        return len(self.keys_list())

    def keys_list(self) -> list[str]:
        return list(_call(self.client, "GET", f"{self._base}/keys",
                          what=f"keys of {self.name}").json())

    def keys_between(self, first: str, last: str) -> list[str]:
        """Keys ``first <= key <= last`` (byte-wise order, both ends inclusive, like DVID)."""
        return list(_call(self.client, "GET",
                          f"{self._base}/keyrange/{self._k(first)}/{self._k(last)}",
                          what=f"key range of {self.name}").json())

    def items_between(self, first: str, last: str) -> dict[str, bytes]:
        """Keys and values with ``first <= key <= last``, in one request."""
        resp = _call(self.client, "GET",
                     f"{self._base}/keyrangevalues/{self._k(first)}/{self._k(last)}",
                     what=f"key range values of {self.name}")
        return decode_keyvalues(resp.content)

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Values of ``keys`` in one request; absent keys are left out."""
        wanted = list(keys)
        resp = _call(self.client, "GET", f"{self._base}/keyvalues", content=encode_keys(wanted),
                     what=f"values of {len(wanted)} keys")
        got = decode_keyvalues(resp.content)
        return {k: v for k, v in got.items() if v or k in self}

    def put_many(self, items: dict[str, bytes]) -> None:
        """Store several values in one request."""
        _call(self.client, "POST", f"{self._base}/keyvalues", content=encode_keyvalues(items),
              what=f"storing {len(items)} keys")


# -- labels ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparsevolSize:
    """``sparsevol-size``: voxel count, block count and a block-accurate bounding Box."""

    voxels: int
    blocks: int
    box: Box


def _zyx_point(p: Iterable[Any]) -> tuple[int, int, int]:
    v = Vec.of(p, "point")
    return (v.z, v.y, v.x)


class DVIDLabels:
    """Label queries on a labelmap / labelarray instance at one node (points are (z, y, x))."""

    def __init__(self, client: HTTPClient, node: str, name: str) -> None:
        self.client, self.node, self.name = client, node, name
        self._base = f"/api/node/{node}/{name}"

    def __repr__(self) -> str:
        return f"<DVIDLabels {self.client.base_url}/{self.node}/{self.name}>"

    def _q(self, scale: int = 0, supervoxels: bool = False) -> str:
        parts = []
        if scale:
            parts.append(f"scale={int(scale)}")
        if supervoxels:
            parts.append("supervoxels=true")
        return "?" + "&".join(parts) if parts else ""

    @staticmethod
    def _label(label: Any) -> int:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or \
                not 0 < int(label) < 2**64:
            raise InvalidRequestError(f"a label is an integer in 1..2^64-1, got {label!r}")
        return int(label)

    def _json_list(self, resp: httpx.Response) -> np.ndarray:
        # parse integers exactly: ids above 2^53 must not pass through a float
        return np.array(json.loads(resp.content, parse_int=int), dtype=np.uint64)

    def label_at(self, point: Iterable[Any], *, scale: int = 0,
                 supervoxels: bool = False) -> int:
        z, y, x = _zyx_point(point)
        resp = _call(self.client, "GET", f"{self._base}/label/{x}_{y}_{z}"
                     + self._q(scale, supervoxels), what=f"label at (z, y, x) {(z, y, x)}")
        return int(json.loads(resp.content)["Label"])

    def labels_at(self, points: Iterable[Iterable[Any]], *, scale: int = 0,
                  supervoxels: bool = False) -> np.ndarray:
        pts = [_zyx_point(p) for p in points]
        resp = _call(self.client, "GET", f"{self._base}/labels" + self._q(scale, supervoxels),
                     content=json.dumps([[x, y, z] for z, y, x in pts]),
                     what=f"labels at {len(pts)} points")
        return self._json_list(resp)

    def size(self, label: int, *, supervoxels: bool = False) -> int:
        lab = self._label(label)
        try:
            resp = _call(self.client, "GET", f"{self._base}/size/{lab}"
                         + self._q(0, supervoxels), what=f"size of label {lab}")
        except RemoteNotFoundError:
            raise LabelNotFoundError(f"label {lab} has no voxels at node {self.node}") from None
        return int(resp.json()["voxels"])

    def sizes(self, labels: Iterable[int], *, supervoxels: bool = False) -> np.ndarray:
        """Voxel counts (0 for labels that do not exist)."""
        labs = [self._label(v) for v in labels]
        resp = _call(self.client, "GET", f"{self._base}/sizes" + self._q(0, supervoxels),
                     content=json.dumps(labs), what=f"sizes of {len(labs)} labels")
        return self._json_list(resp)

    def supervoxels(self, body: int) -> np.ndarray:
        lab = self._label(body)
        try:
            resp = _call(self.client, "GET", f"{self._base}/supervoxels/{lab}",
                         what=f"supervoxels of body {lab}")
        except RemoteNotFoundError:
            raise LabelNotFoundError(f"body {lab} has no voxels at node {self.node}") from None
        return np.sort(self._json_list(resp))

    def mapping(self, supervoxels: Iterable[int]) -> np.ndarray:
        """Body of each supervoxel (0 where the supervoxel does not exist)."""
        svs = [self._label(v) for v in supervoxels]
        resp = _call(self.client, "GET", f"{self._base}/mapping", content=json.dumps(svs),
                     what=f"mapping of {len(svs)} supervoxels")
        return self._json_list(resp)

    def mappings(self) -> dict[int, int]:
        """Every non-identity supervoxel -> body mapping at this node."""
        resp = _call(self.client, "GET", f"{self._base}/mappings?format=binary",
                     what="the label mapping")
        pairs = np.frombuffer(resp.content, "<u8").reshape(-1, 2)
        return {int(a): int(b) for a, b in pairs}

    def merge(self, target: int, others: Iterable[int]) -> int:
        """Merge bodies ``others`` into ``target``; returns the mutation id."""
        labs = [self._label(target)] + [self._label(v) for v in others]
        resp = _call(self.client, "POST", f"{self._base}/merge", content=json.dumps(labs),
                     what=f"merging {labs[1:]} into {labs[0]}")
        return int(resp.json()["MutationID"])

    def cleave(self, body: int, supervoxels: Iterable[int]) -> int:
        """Move ``supervoxels`` of ``body`` to a new body; returns its id."""
        lab = self._label(body)
        svs = [self._label(v) for v in supervoxels]
        resp = _call(self.client, "POST", f"{self._base}/cleave/{lab}", content=json.dumps(svs),
                     what=f"cleaving {len(svs)} supervoxels from {lab}")
        return int(resp.json()["CleavedLabel"])

    def maxlabel(self) -> int:
        resp = _call(self.client, "GET", f"{self._base}/maxlabel", what="maxlabel")
        return int(json.loads(resp.content)["maxlabel"])

    def next_label(self) -> int:
        resp = _call(self.client, "GET", f"{self._base}/nextlabel", what="nextlabel")
        return int(json.loads(resp.content)["nextlabel"])

    def reserve_ids(self, count: int) -> int:
        """Reserve ``count`` new label ids (``POST nextlabel``); returns the first."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidRequestError(f"reserve at least one id, not {count!r}")
        resp = _call(self.client, "POST", f"{self._base}/nextlabel/{count}",
                     what=f"reserving {count} ids")
        return int(json.loads(resp.content)["start"])

    def _sv_query(self, scale: int, supervoxels: bool, box: Box | None) -> str:
        parts = [f"scale={int(scale)}"] if scale else []
        if supervoxels:
            parts.append("supervoxels=true")
        if box is not None:
            for axis, a, b in zip("zyx", box.start, box.stop, strict=True):
                parts += [f"min{axis}={a}", f"max{axis}={b - 1}"]
        return "?" + "&".join(parts) if parts else ""

    def sparsevol_runs(self, label: int, *, scale: int = 0, supervoxels: bool = False,
                       box: Box | None = None) -> np.ndarray:
        """The label's voxels as runs along x: (n, 4) int32 ``x, y, z, length``."""
        lab = self._label(label)
        try:
            resp = _call(self.client, "GET", f"{self._base}/sparsevol/{lab}"
                         + self._sv_query(scale, supervoxels, box),
                         what=f"sparse volume of {lab}")
        except RemoteNotFoundError:
            raise LabelNotFoundError(f"label {lab} has no voxels at node {self.node}"
                                     + ("" if box is None else f" inside {box!r}")) from None
        try:
            return decode_rles(resp.content)
        except DVIDFormatError as exc:
            raise CorruptChunkError(f"the sparse volume of {lab} does not decode: {exc}",
                                    chunk=f"{self._base}/sparsevol/{lab}") from None

    def sparsevol(self, label: int, *, scale: int = 0, supervoxels: bool = False,
                  box: Box | None = None) -> np.ndarray:
        """The label's voxel coordinates, (n, 3) int64 (z, y, x), sorted."""
        return rles_to_coordinates(self.sparsevol_runs(label, scale=scale,
                                                       supervoxels=supervoxels, box=box))

    def sparsevol_mask(self, label: int, *, scale: int = 0, supervoxels: bool = False,
                       box: Box | None = None) -> tuple[Box, np.ndarray]:
        """The label as a boolean mask over its tight bounding Box."""
        runs = self.sparsevol_runs(label, scale=scale, supervoxels=supervoxels, box=box)
        r = runs.astype(np.int64)
        lo = Vec(int(r[:, 2].min()), int(r[:, 1].min()), int(r[:, 0].min()))
        hi = Vec(int(r[:, 2].max()) + 1, int(r[:, 1].max()) + 1, int((r[:, 0] + r[:, 3]).max()))
        tight = Box(lo, hi)
        mask = np.zeros(tuple(tight.shape), dtype=bool)
        for x, y, z, n in r.tolist():
            mask[z - lo.z, y - lo.y, x - lo.x:x - lo.x + n] = True
        return tight, mask

    def has_label(self, label: int, *, supervoxels: bool = False, box: Box | None = None
                  ) -> bool:
        lab = self._label(label)
        resp = _call(self.client, "HEAD", f"{self._base}/sparsevol/{lab}"
                     + self._sv_query(0, supervoxels, box), expect=(200, 204),
                     what=f"checking label {lab}")
        return resp.status_code == 200

    def sparsevol_size(self, label: int, *, supervoxels: bool = False) -> SparsevolSize:
        lab = self._label(label)
        try:
            resp = _call(self.client, "GET", f"{self._base}/sparsevol-size/{lab}"
                         + self._q(0, supervoxels), what=f"sparsevol-size of {lab}")
        except RemoteNotFoundError:
            raise LabelNotFoundError(f"label {lab} has no voxels at node {self.node}") from None
        d = resp.json()
        mn, mx = d["minvoxel"], d["maxvoxel"]
        return SparsevolSize(int(d["voxels"]), int(d["numblocks"]),
                             Box((mn[2], mn[1], mn[0]), (mx[2] + 1, mx[1] + 1, mx[0] + 1)))


# -- meshes: Neuroglancer's legacy single-resolution fragment -------------------------------------
def encode_ngmesh(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """``u32 nverts, f32[nverts*3] (x, y, z), u32[ntri*3]`` (what ``<seg>_meshes`` holds)."""
    v = np.ascontiguousarray(vertices, dtype="<f4").reshape(-1, 3)
    f = np.ascontiguousarray(faces, dtype="<u4").reshape(-1, 3)
    if len(f) and int(f.max()) >= len(v):
        raise InvalidRequestError(f"a face refers to vertex {int(f.max())}; there are {len(v)}")
    return struct.pack("<I", len(v)) + v.tobytes() + f.tobytes()


def decode_ngmesh(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Legacy Neuroglancer mesh bytes -> (vertices (n, 3) float32 x, y, z; faces (m, 3) uint32)."""
    if len(data) < 4:
        raise CorruptChunkError("a mesh fragment needs at least its 4-byte vertex count")
    (n,) = struct.unpack_from("<I", data, 0)
    rest = len(data) - 4 - 12 * n
    if rest < 0 or rest % 12:
        raise CorruptChunkError(f"a mesh fragment of {n} vertices cannot be {len(data)} bytes")
    v = np.frombuffer(data, "<f4", 3 * n, 4).reshape(n, 3).copy()
    f = np.frombuffer(data, "<u4", rest // 4, 4 + 12 * n).reshape(-1, 3).copy()
    return v, f


# -- the Remote -----------------------------------------------------------------------------------
def _xyz_tag(text: str) -> Vec:
    x, y, z = (int(p) for p in text.split("_"))
    return Vec(z, y, x)


def _aligned(box: Box, grid: Vec) -> Box:
    return Box._trusted(
        Vec(*(a // g * g for a, g in zip(box.start, grid, strict=True))),
        Vec(*(-(-b // g) * g for b, g in zip(box.stop, grid, strict=True))),
    )


def _tiles(box: Box, tile: Vec) -> list[Box]:
    """``box`` cut on a grid of ``tile`` anchored at the origin (DVID's blocks are)."""
    lo = [a // t for a, t in zip(box.start, tile, strict=True)]
    hi = [-(-b // t) for b, t in zip(box.stop, tile, strict=True)]
    out = []
    for z in range(lo[0], hi[0]):
        for y in range(lo[1], hi[1]):
            for x in range(lo[2], hi[2]):
                s = Vec(z * tile.z, y * tile.y, x * tile.x)
                out.append(Box._trusted(s, Vec(s.z + tile.z, s.y + tile.y, s.x + tile.x))
                           .intersect(box))
    return out


class DVIDRemote(Remote):
    scheme = "dvid"
    open_options = ("timeout", "concurrency", "compression", "supervoxels", "token", "meshes",
                    "skeletons")
    create_options = ("typename", "versioned", "block_size", *open_options)

    def __init__(self, server: str, node_spec: str, instance: str, mode: str, *,
                 timeout: float = 60.0, concurrency: int = 8, compression: str = "lz4",
                 supervoxels: bool = False, token: str | None = None,
                 meshes: str | None = None, skeletons: str | None = None) -> None:
        if mode not in ("r", "r+"):
            raise InvalidRequestError(f"mode must be 'r' or 'r+', got {mode!r}")
        if compression not in _COMPRESSIONS:
            raise InvalidRequestError(
                f"compression must be one of {', '.join(_COMPRESSIONS)}, got {compression!r}")
        self.server = normalize_server(server)
        self.instance = instance
        self.mode = mode
        self.timeout, self.concurrency = float(timeout), int(concurrency)
        self.compression = compression
        self.supervoxels = bool(supervoxels)
        self.client = client_for(self.server, token=token, timeout=timeout,
                                 concurrency=concurrency)
        self.repo = DVIDRepo(self.server, node_spec, token=token, timeout=timeout)
        self.node_spec = node_spec
        repo_info = self.repo.opened_info
        self.uuid = self.repo.resolve(node_spec, repo_info)
        self.url = f"dvid://{self.server}/{node_spec}/{instance}"
        insts = repo_info.get("DataInstances") or {}
        if instance not in insts:
            names = ", ".join(sorted(insts)) or "none"
            raise RemoteNotFoundError(
                f"repo {self.repo.root} on {self.server} has no data instance {instance!r} "
                f"(it has: {names})")
        self.info: dict[str, Any] = insts[instance]
        self.typename: str = self.info["Base"]["TypeName"]
        if self.typename not in IMAGE_TYPES and self.typename not in LABEL_TYPES:
            raise CapabilityNotSupportedError(
                f"{self.url} is a {self.typename} instance; dvid:// volumes are "
                f"{', '.join([*IMAGE_TYPES, *LABEL_TYPES])}")
        self.versioned = bool(self.info["Base"].get("Versioned", True))
        node = repo_info["DAG"]["Nodes"][self.uuid]
        self.locked = bool(node.get("Locked"))
        if mode == "r+" and self.locked and self.versioned:
            raise ReadOnlyError(
                f"{self.url}: node {self.uuid} is committed (locked) and DVID refuses writes to "
                "it; branch or make a new version (DVIDRepo.branch / new_version) and open "
                "that node with mode='r+'")
        self.is_label = self.typename in LABEL_TYPES
        self._mesh_name = meshes or f"{instance}_meshes"
        self._skel_name = skeletons or f"{instance}_skeletons"
        self._instances = {n: i["Base"]["TypeName"] for n, i in insts.items()}
        self._scale_names = [instance]
        if not self.is_label:
            k = 1
            while f"{instance}_{k}" in insts and insts[f"{instance}_{k}"]["Base"]["TypeName"] \
                    == self.typename:
                self._scale_names.append(f"{instance}_{k}")
                k += 1
        self.meta = self._meta(insts)
        self._pool: ThreadPoolExecutor | None = None
        self._rmw_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self.labels: DVIDLabels | None = (
            DVIDLabels(self.client, self.uuid, instance) if self.is_label else None)

    def __repr__(self) -> str:
        return f"<DVIDRemote {self.url} node={self.uuid} mode={self.mode!r}>"

    # -- metadata -------------------------------------------------------------------------------
    def _geometry(self, info: dict[str, Any]) -> tuple[Vec, Vec, Kind | None]:
        """(shape, offset, kind) from voxgate's tags, else DVID's extents, else unbounded."""
        tags = info["Base"].get("Tags") or {}
        kind: Kind | None = None
        if tags.get("voxgate_kind") in ("image", "segmentation"):
            kind = tags["voxgate_kind"]
        if "voxgate_shape" in tags:
            try:
                shape = _xyz_tag(tags["voxgate_shape"])
                offset = _xyz_tag(tags.get("voxgate_offset", "0_0_0"))
                return shape, offset, kind
            except ValueError:
                pass
        ext = info.get("Extended") or {}
        mn, mx = ext.get("MinPoint"), ext.get("MaxPoint")
        if mn and mx:
            offset = Vec(int(mn[2]), int(mn[1]), int(mn[0]))
            stop = Vec(int(mx[2]) + 1, int(mx[1]) + 1, int(mx[0]) + 1)
            return stop - offset, offset, kind
        return Vec(UNBOUNDED, UNBOUNDED, UNBOUNDED), Vec(0, 0, 0), kind

    @staticmethod
    def _voxel(info: dict[str, Any]) -> tuple[Vec, VoxelSize]:
        ext = info.get("Extended") or {}
        bs = ext.get("BlockSize") or [32, 32, 32]
        vs = ext.get("VoxelSize") or [8, 8, 8]
        units = ext.get("VoxelUnits") or ["nanometers"] * 3
        f = [_UNIT_NM.get(str(u).lower(), 1.0) for u in units]
        return (Vec(int(bs[2]), int(bs[1]), int(bs[0])),
                VoxelSize(float(vs[2]) * f[2], float(vs[1]) * f[1], float(vs[0]) * f[0]))

    def _meta(self, insts: dict[str, Any]) -> VolumeMeta:
        shape, offset, kind = self._geometry(self.info)
        block, vs = self._voxel(self.info)
        self.block = block
        enc = self.compression if self.is_label else "raw"
        scales = [Scale(0, shape, block, vs, offset, enc)]
        if self.is_label:
            levels = int((self.info.get("Extended") or {}).get("MaxDownresLevel") or 0)
            for k in range(1, levels + 1):
                f = 2**k
                lo = Vec(*(o // f for o in offset))
                hi = Vec(*(-(-(o + s) // f) for o, s in zip(offset, shape, strict=True)))
                scales.append(Scale(k, hi - lo, block,
                                    VoxelSize(vs.z * f, vs.y * f, vs.x * f), lo, enc))
            dtype = np.dtype("uint64")
            kind = "segmentation"
        else:
            for k, name in enumerate(self._scale_names[1:], start=1):
                sinfo = self._instance_info(name, insts)
                s_shape, s_off, _ = self._geometry(sinfo)
                s_block, s_vs = self._voxel(sinfo)
                scales.append(Scale(k, s_shape, s_block, s_vs, s_off, "raw"))
            dtype = np.dtype(IMAGE_TYPES[self.typename])
            kind = kind or "image"
        return VolumeMeta(dtype, tuple(scales), kind,
                          extra={"dvid": {"node": self.uuid, "typename": self.typename}})

    def _instance_info(self, name: str, insts: dict[str, Any]) -> dict[str, Any]:
        if name in insts:
            return dict(insts[name])
        return dict(_call(self.client, "GET", f"/api/node/{self.uuid}/{name}/info",
                          what=f"info of {name}").json())

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> DVIDRemote:
        check_options("dvid://", options, cls.open_options)
        server, node, instance = parse_location(location)
        return cls(server, node, instance, mode, **options)

    @classmethod
    def create(cls, location: str, meta: VolumeMeta, *, exist_ok: bool = False,
               **options: Any) -> DVIDRemote:
        """Add an instance for ``meta``: labelmap for uint64 segmentations, else ``<dtype>blk``.

        Its geometry (shape, offset, kind) is kept in the instance's tags and its extents;
        an image volume's scales 1.. become instances ``<name>_1``, ... .
        """
        check_options("dvid://", options, cls.create_options)
        server, node, instance = parse_location(location)
        typename = options.pop("typename", None)
        versioned = options.pop("versioned", True)
        block_size = options.pop("block_size", None)
        if block_size is not None:
            bs = Vec.of(block_size, "block_size")
            if min(bs) < 1:
                raise InvalidRequestError(f"block_size must be positive, got {tuple(bs)}")
            meta = meta.with_scales([replace(s, chunks=bs) for s in meta.scales])
        if meta.num_channels != 1:
            raise InvalidRequestError("DVID volumes have one channel")
        if typename is None:
            if meta.kind == "segmentation" and meta.dtype == np.uint64:
                typename = "labelmap"
            elif meta.dtype.name in _TYPE_FOR_DTYPE:
                typename = _TYPE_FOR_DTYPE[meta.dtype.name]
            else:
                raise DtypeError(
                    f"DVID stores {', '.join(IMAGE_TYPES.values())}; {meta.dtype.name} has no "
                    "DVID type (convert the data first)")
        if typename in ("labelmap", "labelarray"):
            if meta.dtype != np.uint64:
                raise DtypeError(f"a {typename} holds uint64 labels, not {meta.dtype.name}")
            s0 = meta.scale(0)
            for k, sc in enumerate(meta.scales[1:], start=1):
                f = 2**k
                want = Vec(*(-(-(o + s) // f) - o // f for o, s in zip(s0.offset, s0.shape,
                                                                      strict=True)))
                if sc.shape != want:
                    raise InvalidRequestError(
                        f"DVID {typename} scales halve every axis: scale {k} would be "
                        f"{tuple(want)}, this volume's is {tuple(sc.shape)} (copy only scale 0 "
                        "with scales=[0], or use an image type)")
            if any(c % 8 for c in s0.chunks):
                raise InvalidRequestError(
                    f"DVID label blocks are multiples of 8 voxels; got chunks {tuple(s0.chunks)}")
        elif typename in IMAGE_TYPES:
            if IMAGE_TYPES[typename] != meta.dtype.name:
                raise DtypeError(f"a {typename} holds {IMAGE_TYPES[typename]}, not "
                                 f"{meta.dtype.name}")
        else:
            raise InvalidRequestError(
                f"typename must be one of {', '.join([*IMAGE_TYPES, 'labelmap', 'labelarray'])}")
        open_opts = dict(options)
        repo = DVIDRepo(server, node, token=options.get("token"),
                        timeout=options.get("timeout", 60.0))
        uuid = repo.resolve(node)
        existing = repo.instances()
        if instance in existing:
            if not exist_ok:
                raise RemoteExistsError(f"DVID repo {repo.root} already has an instance "
                                        f"{instance!r} ({existing[instance]})")
            return cls(server, node, instance, "r+", **open_opts)
        is_label = typename in ("labelmap", "labelarray")
        names = [instance] if is_label else [instance] + [f"{instance}_{k}" for k in
                                                           range(1, len(meta.scales))]
        for k, name in enumerate(names):
            sc = meta.scale(k)
            tags = {"voxgate_shape": "_".join(map(str, sc.shape.xyz())),
                    "voxgate_offset": "_".join(map(str, sc.offset.xyz())),
                    "voxgate_kind": meta.kind}
            repo.create_instance(
                name, typename, node=uuid, block_size=tuple(sc.chunks),
                voxel_size=sc.voxel_size.zyx(), max_scale=len(meta.scales) - 1 if is_label else 0,
                versioned=bool(versioned), tags=tags)
            lo, hi = sc.offset.xyz(), (sc.offset + sc.shape).xyz()
            _call(repo.client, "POST", f"/api/node/{uuid}/{name}/extents",
                  json={"MinPoint": list(lo), "MaxPoint": [v - 1 for v in hi]},
                  what=f"setting the extents of {name}")
        return cls(server, node, instance, "r+", **open_opts)

    def spec(self) -> dict[str, Any]:
        # the token is not part of the spec: the reopening process reads VOXGATE_DVID_TOKEN
        return {"url": f"dvid://{self.server}/{self.uuid}/{self.instance}", "mode": self.mode,
                "options": {"timeout": self.timeout, "concurrency": self.concurrency,
                            "compression": self.compression, "supervoxels": self.supervoxels}}

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = {Capability.VERSIONING, Capability.BATCH_READ}
        if self.mode == "r+":
            caps.add(Capability.WRITE)
        if self._instances.get(self._mesh_name) == "keyvalue":
            caps.add(Capability.SERVER_MESH)
        if self._instances.get(self._skel_name) == "keyvalue":
            caps.add(Capability.SERVER_SKELETON)
        return frozenset(caps)

    def write_grid(self, scale: int = 0) -> Vec:
        return self.meta.scale(scale).chunks

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # -- voxels ---------------------------------------------------------------------------------
    def _target(self, scale: int) -> tuple[str, str]:
        """(instance name, query prefix) serving ``scale``."""
        self.meta.scale(scale)
        if self.is_label:
            return self.instance, f"scale={scale}&" if scale else ""
        return self._scale_names[scale], ""

    def _map(self, fn: Any, items: list[Box]) -> None:
        if len(items) == 1:
            fn(items[0])
            return
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency,
                                                thread_name_prefix="voxgate-dvid")
            pool = self._pool
        futures = [(b, pool.submit(fn, b)) for b in items]
        errors = [(b, f.exception()) for b, f in futures]
        failed = [(b, e) for b, e in errors if e is not None]
        if failed:
            b, exc = failed[0]
            assert exc is not None
            exc.add_note(f"{len(failed)} of {len(items)} requests failed, the first at {b!r}; "
                         "no partial data is returned")
            raise exc

    def _request_tile(self, scale: int) -> Vec:
        grid = self.meta.scale(scale).chunks
        return grow_block(grid, self.meta.dtype.itemsize, Vec(2**30, 2**30, 2**30),
                          REQUEST_BYTES)

    def _get(self, box: Box, scale: int, *, supervoxels: bool) -> np.ndarray:
        name, q = self._target(scale)
        dtype = self.meta.dtype.newbyteorder("<")
        n = box.size * dtype.itemsize
        (ox, oy, oz), (sx, sy, sz) = box.start.xyz(), box.shape.xyz()
        query = q
        if self.is_label:
            if self.compression != "none":
                query += f"compression={self.compression}&"
            if supervoxels:
                query += "supervoxels=true&"
        path = f"/api/node/{self.uuid}/{name}/raw/0_1_2/{sx}_{sy}_{sz}/{ox}_{oy}_{oz}"
        if query:
            path += "?" + query.rstrip("&")
        resp = _call(self.client, "GET", path, what=f"reading {box!r} of {self.url}")
        raw: bytes = resp.content
        where = f"{self.url} {box}"
        try:
            if self.is_label and self.compression == "lz4":
                raw = lz4.block.decompress(raw, uncompressed_size=n)
            elif self.is_label and self.compression == "gzip":
                raw = gzip.decompress(raw)
        except (lz4.block.LZ4BlockError, OSError, EOFError, ValueError, zlib.error) as exc:
            raise CorruptChunkError(
                f"{self.url}: the server's {self.compression} data for {box!r} does not decode "
                f"({exc})", chunk=where) from None
        if len(raw) != n:
            raise CorruptChunkError(
                f"{self.url}: the server sent {len(raw)} bytes for {box!r}, expected {n}",
                chunk=where)
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(box.shape))

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        out = np.empty(tuple(box.shape), dtype=self.meta.dtype)
        if box.is_empty():
            return out
        parts = _tiles(box, self._request_tile(scale))

        def fetch(b: Box) -> None:
            out[b.slices(box.start)] = self._get(b, scale, supervoxels=self.supervoxels)

        self._map(fetch, parts)
        return out

    def _post(self, box: Box, data: np.ndarray, scale: int) -> None:
        name, q = self._target(scale)
        raw = np.ascontiguousarray(data, dtype=self.meta.dtype.newbyteorder("<")).tobytes()
        query = q
        if self.is_label and self.compression == "lz4":
            raw = lz4.block.compress(raw, store_size=False)
            query += "compression=lz4&"
        elif self.is_label and self.compression == "gzip":
            raw = gzip.compress(raw, 1)
            query += "compression=gzip&"
        (ox, oy, oz), (sx, sy, sz) = box.start.xyz(), box.shape.xyz()
        path = f"/api/node/{self.uuid}/{name}/raw/0_1_2/{sx}_{sy}_{sz}/{ox}_{oy}_{oz}"
        if query:
            path += "?" + query.rstrip("&")
        _call(self.client, "POST", path, content=raw, what=f"writing {box!r} of {self.url}")

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        if tuple(array.shape) != tuple(box.shape):
            raise InvalidRequestError(
                f"array of shape {array.shape} does not match {box!r} (shape {tuple(box.shape)})")
        if box.is_empty():
            return
        grid = self.meta.scale(scale).chunks
        outer = _aligned(box, grid)
        tile = self._request_tile(scale)
        if outer == box:
            def put(b: Box) -> None:
                self._post(b, array[b.slices(box.start)], scale)

            self._map(put, _tiles(box, tile))
            return
        # DVID takes only block-aligned writes: read the whole blocks (as stored: supervoxels),
        # patch them and write them back; one edge write at a time, so two writes that share
        # a block never lose each other's voxels
        with self._rmw_lock:
            data = np.empty(tuple(outer.shape), dtype=self.meta.dtype)

            def fetch(b: Box) -> None:
                data[b.slices(outer.start)] = self._get(b, scale, supervoxels=True)

            self._map(fetch, _tiles(outer, tile))
            data[box.slices(outer.start)] = array

            def put_all(b: Box) -> None:
                self._post(b, data[b.slices(outer.start)], scale)

            self._map(put_all, _tiles(outer, tile))

    # -- ids ------------------------------------------------------------------------------------
    def _labels(self) -> DVIDLabels:
        if self.labels is None:
            raise CapabilityNotSupportedError(f"{self.url} is a {self.typename}, not a labelmap")
        return self.labels

    def reserve_ids(self, count: int) -> int:
        """Reserve ``count`` new label ids; returns the first (like bossdb://'s reserve)."""
        if self.locked and self.versioned:
            raise ReadOnlyError(f"{self.url}: node {self.uuid} is committed; reserve ids on an "
                                "open node")
        return self._labels().reserve_ids(count)

    def label_at(self, point: Iterable[Any], scale: int = 0) -> int:
        return self._labels().label_at(point, scale=scale, supervoxels=self.supervoxels)

    # -- meshes and skeletons (the Services' server-side mesh / skeleton capability) ------------
    def _kv(self, name: str, what: str, create: bool) -> DVIDKeyValue:
        if self._instances.get(name) != "keyvalue":
            self._instances = self.repo.instances()
        if self._instances.get(name) != "keyvalue":
            if not create:
                raise CapabilityNotSupportedError(
                    f"repo {self.repo.root} has no keyvalue instance {name!r} holding {what}s; "
                    f"put_{what}() creates it")
            self._check_writable()
            self.repo.create_instance(name, "keyvalue", node=self.uuid,
                                      tags={"type": what + "es" if what == "mesh" else what + "s"})
            self._instances = self.repo.instances()
        return DVIDKeyValue(self.client, self.uuid, name)

    @staticmethod
    def _body(body: int) -> int:
        if isinstance(body, bool) or not isinstance(body, (int, np.integer)) or \
                not 0 < int(body) < 2**64:
            raise InvalidRequestError(f"a body id is an integer in 1..2^64-1, got {body!r}")
        return int(body)

    def get_mesh(self, body: int) -> bytes:
        """The body's mesh: Neuroglancer legacy fragment bytes from ``<seg>_meshes``."""
        b = self._body(body)
        try:
            return self._kv(self._mesh_name, "mesh", False)[f"{b}.ngmesh"]
        except KeyError:
            raise RemoteNotFoundError(f"no mesh for body {b} in {self._mesh_name} at node "
                                      f"{self.uuid}") from None

    def get_mesh_arrays(self, body: int) -> tuple[np.ndarray, np.ndarray]:
        """(vertices (n, 3) float32 x, y, z in nm, faces (m, 3) uint32) of the body's mesh."""
        return decode_ngmesh(self.get_mesh(body))

    def put_mesh(self, body: int, mesh: Any) -> None:
        """Store a mesh as ``<body>.ngmesh``: fragment bytes, (vertices, faces), or a Mesh."""
        self._check_writable()
        b = self._body(body)
        if isinstance(mesh, tuple):
            data = encode_ngmesh(*mesh)
        elif hasattr(mesh, "to_ngmesh"):
            data = mesh.to_ngmesh()
        elif isinstance(mesh, (bytes, bytearray, memoryview)):
            data = bytes(mesh)
        else:
            raise InvalidRequestError(
                f"a mesh is ngmesh bytes, (vertices, faces) or a Mesh, got {type(mesh).__name__}")
        self._kv(self._mesh_name, "mesh", True)[f"{b}.ngmesh"] = data

    def meshes(self, ids: Iterable[int] | None = None) -> dict[int, Any]:
        """Stored meshes as ``{body: voxgate.formats.mesh.Mesh}`` (all when ``ids`` is None);
        bodies without a stored mesh are left out.  The mesh Service's server path."""
        from ..formats.mesh import Mesh

        kv = self._kv(self._mesh_name, "mesh", False)
        wanted = self.mesh_ids() if ids is None else [self._body(i) for i in ids]
        got = kv.get_many([f"{b}.ngmesh" for b in wanted])
        return {b: Mesh.from_ngmesh(got[f"{b}.ngmesh"], b, name=f"{self._mesh_name}/{b}.ngmesh")
                for b in wanted if f"{b}.ngmesh" in got}

    def skeletons(self, ids: Iterable[int] | None = None) -> dict[int, Any]:
        """Stored skeletons as ``{body: voxgate.formats.skeleton.Skeleton}`` (all when ``ids``
        is None); bodies without one are left out.  The skeletonize Service's server path."""
        from ..formats.skeleton import Skeleton

        kv = self._kv(self._skel_name, "skeleton", False)
        wanted = self.skeleton_ids() if ids is None else [self._body(i) for i in ids]
        got = kv.get_many([f"{b}_swc" for b in wanted])
        return {b: Skeleton.from_swc(got[f"{b}_swc"], b) for b in wanted if f"{b}_swc" in got}

    def has_mesh(self, body: int) -> bool:
        try:
            return f"{self._body(body)}.ngmesh" in self._kv(self._mesh_name, "mesh", False)
        except CapabilityNotSupportedError:
            return False

    def delete_mesh(self, body: int) -> None:
        self._check_writable()
        b = self._body(body)
        try:
            del self._kv(self._mesh_name, "mesh", False)[f"{b}.ngmesh"]
        except KeyError:
            raise RemoteNotFoundError(f"no mesh for body {b}") from None

    def mesh_ids(self) -> list[int]:
        keys = self._kv(self._mesh_name, "mesh", False).keys_list()
        return sorted(int(k[:-7]) for k in keys if k.endswith(".ngmesh") and k[:-7].isdigit())

    def get_skeleton(self, body: int) -> str:
        """The body's skeleton, SWC text from ``<seg>_skeletons`` key ``<body>_swc``."""
        b = self._body(body)
        try:
            return self._kv(self._skel_name, "skeleton", False)[f"{b}_swc"].decode()
        except KeyError:
            raise RemoteNotFoundError(f"no skeleton for body {b} in {self._skel_name} at node "
                                      f"{self.uuid}") from None

    def put_skeleton(self, body: int, skeleton: Any) -> None:
        """Store a skeleton as ``<body>_swc``: SWC text, or a Skeleton (its ``to_swc()``)."""
        self._check_writable()
        b = self._body(body)
        if hasattr(skeleton, "to_swc"):
            skeleton = skeleton.to_swc()
        if not isinstance(skeleton, str):
            raise InvalidRequestError(
                f"a skeleton is SWC text or a Skeleton, got {type(skeleton).__name__}")
        self._kv(self._skel_name, "skeleton", True)[f"{b}_swc"] = skeleton.encode()

    def has_skeleton(self, body: int) -> bool:
        try:
            return f"{self._body(body)}_swc" in self._kv(self._skel_name, "skeleton", False)
        except CapabilityNotSupportedError:
            return False

    def delete_skeleton(self, body: int) -> None:
        self._check_writable()
        b = self._body(body)
        try:
            del self._kv(self._skel_name, "skeleton", False)[f"{b}_swc"]
        except KeyError:
            raise RemoteNotFoundError(f"no skeleton for body {b}") from None

    def skeleton_ids(self) -> list[int]:
        keys = self._kv(self._skel_name, "skeleton", False).keys_list()
        return sorted(int(k[:-4]) for k in keys if k.endswith("_swc") and k[:-4].isdigit())
