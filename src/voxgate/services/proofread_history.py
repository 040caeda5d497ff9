"""Where proofreading edits are recorded, and what undo needs to restore them.

A file store keeps its history beside the data: ``<layer>/.voxgate/history.jsonl`` (one JSON
object per line, appended) and the voxels an edit replaced in ``<layer>/.voxgate/undo/<n>/``,
one compressed ``.npz`` per block (raw arrays, never pickles; read with
``allow_pickle=False``).  An HDF5 dataset's history sits in ``<file>.voxgate/<dataset>/``.
A store without a local directory (bossdb://, mem://, s3://, relays) keeps it under
``$VOXGATE_PROOFREAD_DIR`` (default ``$VOXGATE_STATE_DIR/proofread``, else
``~/.local/share/voxgate/proofread``), in a directory
named after its URL; ``history_dir=`` names another place.  A DVID node's edits are also
written to the node's own log (``POST /api/node/<uuid>/log``).

A URL does not say everything that chooses what is edited: two multiscales of one OME-Zarr
group (``multiscale=``), two layers of a WEBKNOSSOS dataset (``layer=``) share one.  A volume
opened with such options (:func:`history_options`) keeps its history one folder further down,
``options-<digest of the options>`` (its records name them), so an undo never restores the
voxels of another; a volume opened without any keeps it where it always was.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import os
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..blockwise import choosing_options
from ..errors import CorruptChunkError, InvalidRequestError
from ..geometry import Box
from ..remotes.base import Remote
from ..storage import split_url
from ..storage.npyfiles import NPY_LOCK

__all__ = ["HISTORY_ENV", "History", "current_user", "history_location", "history_options"]

#: environment variable naming the directory that holds histories of stores without a local dir
HISTORY_ENV = "VOXGATE_PROOFREAD_DIR"
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def current_user(user: str | None = None) -> str:
    """``user`` itself, else ``$VOXGATE_USER``, else the login name."""
    if user:
        return str(user)
    env = os.environ.get("VOXGATE_USER")
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        return "unknown"


#: schemes whose location is a name or a host and port, not a path (a folder of that name in the
#: working directory is not the volume's)
_NOT_PATHS = frozenset({"mem", "bossdb", "dvid", "webknossos", "tensorstore"})


def history_options(remote: Remote) -> dict[str, Any]:
    """The open options of ``remote`` that choose which voxels its URL's volume is
    (:func:`~voxgate.blockwise.choosing_options`: not how they travel, are described or where
    meshes go, nor options at their defaults; a DVID node edited with timeout=30 and undone
    with timeout=60 is one history): part of its history's key (:func:`history_location`)."""
    return choosing_options(remote)


def _options_folder(options: Mapping[str, Any] | None) -> str:
    """The folder name of the history of a volume opened with ``options`` ("" for none): a
    digest, a valid short name on every file system whatever the options hold."""
    if not options:
        return ""
    text = json.dumps(dict(options), sort_keys=True, separators=(",", ":"))
    return "options-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def history_location(url: str, scale: int, history_dir: str | os.PathLike[str] | None,
                     options: Mapping[str, Any] | None = None) -> Path:
    """The directory that holds the history of the volume at ``url`` (scale ``scale``) opened
    with ``options`` (:func:`history_options`; none: where histories always were)."""
    suffix = "/".join(p for p in (_options_folder(options), f"s{scale}" if scale else "") if p)
    if history_dir is not None:
        if not isinstance(history_dir, (str, os.PathLike)):
            raise InvalidRequestError(
                f"history_dir must be a directory path, got {type(history_dir).__name__} "
                f"{history_dir!r}")
        base = Path(history_dir)
        return base / suffix if suffix else base
    scheme, rest = split_url(url)
    rest, _, fragment = rest.partition("#")  # hdf5: the dataset inside the file after '#'
    inside = [p for p in fragment.split("/") if p]
    if scheme in _NOT_PATHS:  # a name or a host, never a folder of the working directory
        return _in_state_dir(url, suffix)
    if rest.startswith("file://"):
        rest = rest[len("file://"):]
    if "://" not in rest and not rest.startswith("/"):  # a relative path: where it is now
        rest = str(Path(rest).resolve())
    if rest.startswith("/"):
        p = Path(rest)
        if p.is_dir():
            out = p / ".voxgate"
            return out / suffix if suffix else out
        # a file (HDF5), maybe followed by a path inside it
        inner: list[str] = []
        q = p
        while q != q.parent and not q.exists():
            inner.insert(0, q.name)
            q = q.parent
        if q.is_file():
            out = Path(str(q) + ".voxgate").joinpath(*inner, *inside)
            return out / suffix if suffix else out
    return _in_state_dir(url, suffix)


def _in_state_dir(url: str, suffix: str) -> Path:
    """The history folder of a volume that has no folder of its own to keep it beside."""
    state = os.environ.get("VOXGATE_STATE_DIR")
    root = Path(os.environ.get(HISTORY_ENV) or (Path(state) / "proofread" if state else
                Path.home() / ".local" / "share" / "voxgate" / "proofread"))
    out = root / urllib.parse.quote(url, safe="")
    return out / suffix if suffix else out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class History:
    """The history file and undo blocks of one volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "history.jsonl"
        with _locks_guard:
            self.lock = _locks.setdefault(str(root), threading.Lock())

    # -- records ------------------------------------------------------------------------------
    def lines(self) -> list[dict[str, Any]]:
        if not self.file.exists():
            return []
        out = []
        for i, line in enumerate(self.file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                raise CorruptChunkError(f"line {i} of {self.file} is not JSON; the history is "
                                        "damaged", chunk=str(self.file)) from None
        return out

    def entries(self) -> list[dict[str, Any]]:
        """One dict per edit: the first line of each ``n`` updated by its later lines."""
        by_n: dict[int, dict[str, Any]] = {}
        for rec in self.lines():
            n = int(rec["n"])
            if n in by_n:
                by_n[n].update(rec)
            else:
                by_n[n] = dict(rec)
        return [by_n[k] for k in sorted(by_n)]

    def append(self, rec: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps(rec, sort_keys=True) + "\n"
        with self.lock, open(self.file, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def start(self, rec: dict[str, Any]) -> int:
        """Append a new edit record (status 'started'); returns its number."""
        with self.lock:
            entries = self.entries()
            n = (max(int(e["n"]) for e in entries) + 1) if entries else 1
        rec = {"n": n, "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
               "status": "started", **rec}
        self.append(rec)
        return n

    def update(self, n: int, **fields: Any) -> None:
        self.append({"n": n, **fields})

    # -- undo blocks --------------------------------------------------------------------------
    def undo_dir(self, n: int) -> Path:
        return self.root / "undo" / str(n)

    def save_block(self, n: int, box: Box, data: np.ndarray, scale: int | None = None,
                   changed: np.ndarray | None = None) -> None:
        """Keep ``data`` (the voxels of ``box`` before edit ``n``) so undo can restore them.
        ``scale``: the scale they belong to where it is not the edited one (a coarser scale
        the edit downsampled into).  ``changed``: which of them the edit changes (a boolean
        array of ``data``'s shape); undo then writes back those only, and keeps what was
        written since to the block's other voxels (without it, the whole block)."""
        d = self.undo_dir(n)
        d.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        arrays: dict[str, Any] = {"data": np.ascontiguousarray(data),
                                  "start": np.array(tuple(box.start), dtype=np.int64),
                                  "stop": np.array(tuple(box.stop), dtype=np.int64)}
        if scale is not None:
            arrays["scale"] = np.array(int(scale), dtype=np.int64)
        if changed is not None:
            arrays["changed"] = np.ascontiguousarray(changed, dtype=bool)
        np.savez_compressed(buf, **arrays)
        name = ("" if scale is None else f"s{int(scale)}_") + "_".join(
            str(v) for v in box.start) + ".npz"
        _atomic_write(d / name, buf.getvalue())

    def blocks(self, n: int) -> list[tuple[Box, np.ndarray, int | None]]:
        """The saved blocks of edit ``n`` as (box, voxels before the edit, their scale: None
        for the edited scale itself), all loaded: :meth:`saved_blocks` names them without
        their voxels (undo loads one at a time)."""
        return [(box, self.load_block(f), scale) for box, scale, f in self.saved_blocks(n)]

    def saved_blocks(self, n: int) -> list[tuple[Box, int | None, Path]]:
        """The saved blocks of edit ``n`` as (box, scale: None for the edited scale itself,
        file), without their voxels (an edit of a whole volume saved all of it)."""
        d = self.undo_dir(n)
        if not d.is_dir():
            return []
        out = []
        for f in sorted(d.glob("*.npz")):
            try:
                # (an npz loads each array on demand: its headers are parsed under the lock)
                with NPY_LOCK, np.load(f, allow_pickle=False) as z:
                    box = Box(tuple(int(v) for v in z["start"]), tuple(int(v) for v in z["stop"]))
                    scale = int(z["scale"]) if "scale" in z.files else None
            except (OSError, ValueError, KeyError) as exc:
                raise CorruptChunkError(f"undo block {f} does not load ({exc})",
                                        chunk=str(f)) from None
            out.append((box, scale, f))
        return out

    @staticmethod
    def load_block(f: Path) -> np.ndarray:
        """The voxels kept in one saved block's file (:meth:`saved_blocks`)."""
        return History.load_saved(f)[0]

    @staticmethod
    def load_saved(f: Path) -> tuple[np.ndarray, np.ndarray | None]:
        """The voxels kept in one saved block's file and which of them the edit changed (None:
        not recorded, in blocks saved before it was)."""
        try:
            with NPY_LOCK, np.load(f, allow_pickle=False) as z:
                data = np.asarray(z["data"])
                changed = np.asarray(z["changed"]) if "changed" in z.files else None
        except (OSError, ValueError, KeyError) as exc:
            raise CorruptChunkError(f"undo block {f} does not load ({exc})",
                                    chunk=str(f)) from None
        if changed is not None and (changed.dtype != bool or changed.shape != data.shape):
            raise CorruptChunkError(f"undo block {f} does not load (its mask of changed voxels "
                                    f"is {changed.dtype} {changed.shape}, not bool "
                                    f"{data.shape})", chunk=str(f))
        return data, changed

    def entry(self, n: int) -> dict[str, Any]:
        for e in self.entries():
            if int(e["n"]) == n:
                return e
        raise InvalidRequestError(f"edit {n} is not in the history at {self.file}")
