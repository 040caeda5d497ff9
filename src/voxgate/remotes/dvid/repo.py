"""DVID repos and versioning: nodes, the DAG, commit, branch, new version, log, instances."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import (
    InvalidRequestError,
    RemoteNotFoundError,
)
from .._http import server_answer
from .client import _call, answered, client_for, normalize_server
from .keyvalue import DVIDKeyValue
from .labels import DVIDLabels


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
        with server_answer(f"repo info of {uuid} on {self.server}: the server answered"):
            root = info["Root"]
            if not isinstance(root, str):
                raise TypeError(f"its Root is {root!r}, not a UUID")
        self.root: str = root
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
        with server_answer(f"creating a repo on {srv}: the server answered"):
            root = str(answered(resp, f"creating a repo on {srv}")["root"])
        return cls(srv, root, token=token, timeout=timeout)

    @staticmethod
    def list_repos(server: str, *, token: str | None = None) -> dict[str, dict[str, Any]]:
        """Every repo on the server: root UUID -> repo info (alias, description, DAG, ...)."""
        srv = normalize_server(server)
        return dict(answered(_call(client_for(srv, token=token), "GET", "/api/repos/info",
                                   what=f"listing repos on {srv}"), f"listing repos on {srv}"))

    # the DAG
    def info(self, node: str | None = None) -> dict[str, Any]:
        """The repo's JSON: Root, Alias, Description, DataInstances, DAG (the version graph)."""
        ref = node or self.root
        what = f"repo info of {ref}"
        return dict(answered(_call(self.client, "GET", f"/api/repo/{ref}/info", what=what), what))

    def versions(self) -> dict[str, DVIDNode]:
        """Every node of the DAG by UUID, parents and children translated to UUIDs."""
        info = self.info()
        with server_answer(f"repo info of {self.root} on {self.server}: its DAG is not one"):
            nodes = info["DAG"]["Nodes"]
            by_id = {int(n["VersionID"]): u for u, n in nodes.items()}
            out = {}
            for u, n in nodes.items():
                out[u] = DVIDNode(u, n.get("Branch", ""), bool(n.get("Locked")),
                                  n.get("Note", ""),
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
        doc = info or self.info(node)
        with server_answer(f"repo info of {node} on {self.server}: its DAG is not one"):
            matches = [u for u in doc["DAG"]["Nodes"] if u.startswith(prefix)]
        if len(matches) != 1:
            raise InvalidRequestError(f"{node!r} matches {len(matches)} nodes of repo {self.root}")
        return matches[0]

    def branch_versions(self, branch: str = "master", node: str | None = None) -> list[str]:
        """UUIDs of ``branch`` from its leaf back to the root."""
        ref = node or self.root
        what = f"versions of branch {branch}"
        return list(answered(_call(self.client, "GET",
                                   f"/api/repo/{ref}/branch-versions/{branch}", what=what),
                             what, list))

    def is_locked(self, node: str) -> bool:
        what = f"lock state of {node}"
        doc = answered(_call(self.client, "GET", f"/api/node/{node}/commit", what=what), what)
        with server_answer(f"{what}: the server answered"):
            return bool(doc["Locked"])

    def commit(self, node: str, note: str = "", log: Sequence[str] = ()) -> str:
        """Commit (lock) ``node``: it becomes read-only and can have children."""
        resp = _call(self.client, "POST", f"/api/node/{node}/commit",
                     json={"note": note, "log": list(log)}, what=f"committing {node}")
        with server_answer(f"committing {node}: the server answered"):
            return str(answered(resp, f"committing {node}")["committed"])

    def branch(self, node: str, name: str, *, note: str = "", uuid: str | None = None) -> str:
        """A child of the committed ``node`` on a new branch ``name``; returns its UUID."""
        body: dict[str, str] = {"branch": name, "note": note}
        if uuid:
            body["uuid"] = uuid
        resp = _call(self.client, "POST", f"/api/node/{node}/branch", json=body,
                     what=f"branching {name!r} from {node}")
        with server_answer(f"branching {name!r} from {node}: the server answered"):
            return str(answered(resp, f"branching {name!r} from {node}")["child"])

    def new_version(self, node: str, *, note: str = "", uuid: str | None = None) -> str:
        """A child of the committed ``node`` on the same branch; returns its UUID."""
        body: dict[str, str] = {"note": note}
        if uuid:
            body["uuid"] = uuid
        resp = _call(self.client, "POST", f"/api/node/{node}/newversion", json=body,
                     what=f"new version of {node}")
        with server_answer(f"new version of {node}: the server answered"):
            return str(answered(resp, f"new version of {node}")["child"])

    def log(self, node: str | None = None) -> list[str]:
        """The node's log lines (each prefixed with its RFC3339 time by the server)."""
        ref = node or self.root
        doc = answered(_call(self.client, "GET", f"/api/node/{ref}/log", what=f"log of {ref}"),
                       f"log of {ref}")
        with server_answer(f"log of {ref}: the server answered"):
            return list(doc["log"])

    def add_log(self, node: str, *messages: str) -> None:
        _call(self.client, "POST", f"/api/node/{node}/log", json={"log": list(messages)},
              what=f"logging to {node}")

    def note(self, node: str) -> str:
        doc = answered(_call(self.client, "GET", f"/api/node/{node}/note",
                             what=f"note of {node}"), f"note of {node}")
        with server_answer(f"note of {node}: the server answered"):
            return str(doc["note"])

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
            bs = [int(v) for v in block_size]
            if len(bs) != 3 or min(bs) < 1:
                # DVID would create it (imageblk setByConfig checks nothing), and then fail
                # every request that cuts it into blocks
                raise InvalidRequestError(
                    f"block_size is 3 positive sizes (z, y, x), got {tuple(bs)}: DVID creates "
                    "an instance of any BlockSize but can then neither read nor write one "
                    "that is not positive. Nothing was created")
            body["BlockSize"] = ",".join(str(v) for v in bs[::-1])
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
