"""``voxgate.copy``: move a volume from any Remote to any other, in parallel and resumably.

The copy walks the destination's write grid (chunks, or shards where the store has them),
grouped into blocks of a few MiB, and runs a bounded number of blocks at once: memory stays at
a few blocks per worker whatever the volume's size.  Every finished block is appended to a
journal; an interrupted copy (Ctrl-C, kill -9, a crash) rerun with the same arguments skips the
blocks the journal records (or, with ``verify=True``, checks them against the source and
rewrites the ones that differ: the source may have changed meanwhile) and finishes the rest.
A block is written whole or not at all as far as the journal is concerned, and writing a block
twice gives the same bytes, so the result is identical to an uninterrupted copy of the same
source.  The journal is deleted when the copy completes.

Nothing the copy holds grows with the number of chunks or blocks beyond a bit per block (or per
chunk, up to :data:`voxgate.absence.CHUNK_BITS`): the
plan is walked as the blocks are sent (never listed), the journal is read back into a bitmap per
scale (:class:`_BlockSet`), and the report keeps the number of the source's absent chunks per
scale with the first :data:`ABSENT_LISTED` of them (they are asked for in pieces:
:func:`voxgate.absence.absent_in`).  A copy of a sparse volume of many millions of chunks runs
in the memory of a small one.  Nor does it read what it need not: that question's answers
mark, a bit per chunk (per group of chunks past :data:`voxgate.absence.CHUNK_BITS`:
:class:`voxgate.absence.StoredGroups`), where the source stores chunks; a block touching none
is copied as the fill value without a read of the source, and of a block touching some only
those are read.  Nor does it write what it need not: into a destination it created, a block
holding only the fill value is not written, and of a block that holds data too, the
destination's chunks (or shards) holding only the fill value are left out of its write
(:func:`voxgate.absence.write_sparse`), so a sparse source's copy is as sparse as the source.

With a ``dask.distributed`` Client the same block plan runs as tasks on the cluster: each task
reopens the source and destination from their specs, copies its one block and returns; the
journal, the progress bar and the report stay on the client, which records a block when its
task has finished.  A worker that dies mid-block leaves that block unrecorded, and the
scheduler (or a rerun) simply copies it again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import math
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .absence import (
    ABSENT_LISTED,
    StoredGroups,
    absent_fill,
    absent_in,
    chunk_blocks,
    holds_nothing,
    leaves_fill_absent,
    only_fill,
    write_sparse,
)
from .blockwise import (
    TASKS_PER_THREAD,  # noqa: F401 - the cluster's window, documented here
    check_for_cluster,
    check_run,
    choosing_options,
    cluster_spec,
    run_blocks,
    worker_remote,
)
from .errors import (
    InvalidRequestError,
    MissingChunkError,
    OutOfBoundsError,
    PartialWriteError,
    VoxgateError,
    VoxgateWarning,
    check_flag,
    redact,
)
from .geometry import Box, Vec, chunk_boxes, grow_block
from .meta import Scale, VolumeMeta, centre_translation, coarser_extent
from .parallel import default_workers
from .progress import progress_bar
from .registry import create_remote, open_remote, resolve_for_create, without_fragment
from .remotes.base import (
    COMMON_OPTIONS,
    Capability,
    Remote,
    check_keywords,
    check_missing,
    exists_with,
    format_chunks,
    has_capability,
    notify_written,
    opening_options,
    same_volume,
)
from .storage import file_lock, is_local, is_locked, local_path, split_url, state_dir
from .storage.locking import LOOK_PATIENCE
from .volume import Volume

__all__ = [
    "CopyInterrupted",
    "CopyReport",
    "JournalStatus",
    "copy",
    "damaged_journals",
    "forget_journals",
    "journal_dir",
    "list_journals",
]

#: blocks grow from the write grid toward this many bytes (bounded memory, little overhead)
BLOCK_BYTES = 8 * 2**20

#: one block of the plan: scale, block index, its box, its write-grid cells, whether the
#: journal lists it as finished by an earlier run, whether the source said every chunk it
#: touches is absent (it is then not read: it holds only the fill value), and the boxes of it
#: to read where the source said some of its chunks are absent (runs of stored chunks: the
#: rest holds the fill value), or None (read it whole)
_Item = tuple[int, Vec, Box, int, bool, bool, tuple[Box, ...] | None]



@dataclass
class CopyReport:
    """What a copy did.  ``chunks_*`` count destination write-grid cells (chunks or shards)."""

    src: str
    dst: str
    scales: list[int]
    blocks_total: int = 0
    blocks_written: int = 0
    blocks_skipped: int = 0
    blocks_empty: int = 0
    #: blocks an interrupted run had finished that differed from the source on the rerun (the
    #: source or the destination changed in between) and were copied again
    blocks_changed: int = 0
    chunks_written: int = 0
    chunks_skipped: int = 0
    #: cells left absent because they held only the fill value, in a destination the copy
    #: created: those of the ``blocks_empty`` blocks, and those of written blocks that held
    #: data elsewhere (neither counts in ``chunks_written`` or ``bytes_written``)
    chunks_empty: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    created: bool = False
    resumed: bool = False
    per_scale: dict[int, int] = field(default_factory=dict)
    #: per scale, the grid indices (z, y, x) of source chunks absent inside the copied region
    #: (they were copied as the fill value), sorted: all of them, or the first
    #: :data:`ABSENT_LISTED` when there are more (``absent_counts`` has the total); empty when
    #: the source cannot tell (bossdb, dvid)
    absent_chunks: dict[int, list[Vec]] = field(default_factory=dict)
    #: whether the source could say which chunks are absent
    absent_checked: bool = False
    #: per scale with absent chunks, how many there are (``absent_chunks`` may list fewer)
    absent_counts: dict[int, int] = field(default_factory=dict)

    def absent_summary(self) -> str:
        """ "N chunks absent at scale k: ..." for each scale with absent chunks, or ""."""
        return "; ".join(
            f"{n} chunk(s) absent at scale {k}: {format_chunks(chunks, total=n)}"
            for k, chunks in sorted(self.absent_chunks.items())
            for n in [self.absent_counts.get(k, len(chunks))] if n
        )

    def __str__(self) -> str:
        mb = self.bytes_written / 2**20
        rate = mb / self.seconds if self.seconds > 0 else float("inf")
        verb = "created and copied" if self.created else "copied"
        extra = f", resumed: {self.chunks_skipped} chunks already done" if self.resumed else ""
        if self.blocks_changed:
            extra += (f", {self.blocks_changed} finished block(s) differed from the source and "
                      "were copied again")
        absent = self.absent_summary()
        if absent:
            absent = f"; source {absent}, copied as the fill value"
        left = f" ({self.chunks_empty} chunks left absent)" if self.chunks_empty else ""
        return (
            f"{verb} {self.src} -> {self.dst}: scales {self.scales}, "
            f"{self.chunks_written} chunks written ({mb:.1f} MiB, {rate:.1f} MiB/s), "
            f"{self.blocks_empty} empty blocks left as fill{left}{extra}, {self.seconds:.2f} s"
            f"{absent}"
        )


def journal_dir() -> Path:
    """Where copy journals live: ``$VOXGATE_STATE_DIR`` or ``~/.cache/voxgate/transfers``."""
    return state_dir("transfers")


class CopyInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`copy`: the blocks finished are recorded in ``journal`` and the
    same copy (same source, destination, box and scales) run again resumes from them."""

    def __init__(self, message: str, journal: Path, blocks_done: int, blocks_total: int) -> None:
        super().__init__(message)
        self.journal = journal
        self.blocks_done = blocks_done
        self.blocks_total = blocks_total


@dataclass(frozen=True)
class JournalStatus:
    """An unfinished copy's journal, as :func:`list_journals` finds it."""

    path: Path
    src: str
    dst: str
    box: str | None
    scales: list[int]
    blocks_done: int
    blocks_total: int
    #: seconds since the journal was last written
    age: float
    #: a run of this copy is copying now (it holds the journal's lock): the journal is not
    #: a stopped copy's, and ``forget_journals`` leaves it
    running: bool = False

    def __str__(self) -> str:
        region = "" if self.box is None else f" box {self.box}"
        state = ", running now" if self.running else ""
        return (
            f"{self.src} -> {self.dst}{region} scales {self.scales}: "
            f"{self.blocks_done}/{self.blocks_total} blocks done, last written "
            f"{_age(self.age)} ago{state} ({self.path})"
        )


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _read_status(path: Path, now: float) -> JournalStatus | str | None:
    """The status of the journal file ``path``; or why it is no journal one can read (a
    damaged file: :func:`damaged_journals`); None when it was removed meanwhile."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
        if not first.endswith(b"\n"):
            return ("empty, or its header cut short (a copy killed as it started: nothing "
                    "was recorded)")
        header = json.loads(first)
        if not isinstance(header, dict) or "src" not in header or "dst" not in header:
            return "its first line is not a copy journal's header"
        done = len(_Journal._parse(path)[0])
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        if path.is_symlink():
            return "a symbolic link to a file that does not exist"
        return None  # (removed meanwhile)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except ValueError as exc:
        return f"cannot be read as a journal ({exc})"
    return JournalStatus(path, str(header["src"]), str(header["dst"]), header.get("box"),
                         list(header.get("scales", [])), done, int(header.get("blocks", 0)),
                         max(0.0, now - mtime), running=is_locked(str(path)))


def _statuses() -> list[tuple[Path, JournalStatus | str]]:
    folder = journal_dir()
    if not folder.is_dir():
        return []
    now = time.time()
    found = ((p, _read_status(p, now)) for p in sorted(folder.glob("*.journal")))
    return [(p, s) for p, s in found if s is not None]


def list_journals() -> list[JournalStatus]:
    """The journals of copies that did not finish (interrupted, killed or failed), oldest
    first, and of copies running now (``running``: a run holds the journal's lock).  Each
    stopped one is resumed by running the same copy again, or removed by
    :func:`forget_journals`.  The files in the journals' folder that cannot be read as one
    are not listed here but by :func:`damaged_journals`."""
    found = [s for _, s in _statuses() if isinstance(s, JournalStatus)]
    return sorted(found, key=lambda j: -j.age)


def damaged_journals() -> list[tuple[Path, str]]:
    """The files in the journals' folder that cannot be read as a copy's journal (a directory,
    an unreadable file, a broken link, a damaged header or lines naming blocks outside the
    plan), each with why; ``forget_journals()`` (every journal) deletes them, and a copy
    whose journal is one of them refuses to start until it is deleted."""
    return [(p, s) for p, s in _statuses() if isinstance(s, str)]


def _spellings(url: str) -> set[str]:
    """``url`` as given and as the Remote that opens it names itself (a bare path or a
    scheme-less storage URL is recorded by its Remote's URL)."""
    names = {redact(url)}
    with contextlib.suppress(Exception):
        remote = open_remote(url)
        names.add(redact(remote.url))
        remote.close()
    return names


def forget_journals(src: str | None = None, dst: str | None = None) -> list[JournalStatus]:
    """Delete the journals of unfinished copies from ``src`` to ``dst`` (every journal when
    both are None), and the damaged files :func:`damaged_journals` lists of them (all, or
    those whose header names ``src`` and ``dst``); return what was deleted of
    :func:`list_journals`.  The destinations are left as they are: a copy
    run again after this starts from the first block.  The journal of a copy running now
    (its lock is held) is left, with a VoxgateWarning naming it."""
    if (src is None) != (dst is None):
        raise InvalidRequestError("give both src and dst, or neither to forget every journal")
    srcs = None if src is None else _spellings(src)
    dsts = None if dst is None else _spellings(dst)
    gone = []
    for j in list_journals():
        if srcs is not None and dsts is not None and (j.src not in srcs or j.dst not in dsts):
            continue
        try:
            with file_lock(str(j.path), blocking=False):  # (no run starts on it meanwhile)
                j.path.unlink(missing_ok=True)
        except BlockingIOError:
            warnings.warn(VoxgateWarning(
                f"left the journal {j.path} of the copy {j.src} -> {j.dst}: a run of it is "
                "copying now (the journal is locked); it removes its journal when it finishes, "
                "or stop it first to forget it"), stacklevel=2)
            continue
        gone.append(j)
    for path, _ in damaged_journals():  # every journal, or those whose header names the pair
        if srcs is not None and dsts is not None:
            named = _names_of(path)
            if named is None or named[0] not in srcs or named[1] not in dsts:
                continue
        # (a directory that is not empty is left; so is the file of a copy starting now, its
        # header not written yet: it holds the lock)
        with contextlib.suppress(OSError), file_lock(str(path), blocking=False):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
    return gone


def _names_of(path: Path) -> tuple[str, str] | None:
    """The source and destination a damaged journal's header names, if it can be read."""
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or "src" not in header or "dst" not in header:
        return None
    return str(header["src"]), str(header["dst"])


def _as_remote(
    x: str | os.PathLike[str] | Volume, mode: str, **options: Any
) -> tuple[Remote, Box | None, int]:
    """The Remote behind ``x``, and for a view of part of a Volume the region it covers (at
    the view's scale, returned third).  A copy carries every channel at full resolution, so
    views that pick channels or step through voxels are refused rather than copied whole."""
    if isinstance(x, Volume):
        role = "source" if mode == "r" else "destination"
        axes = x._axes
        if len(axes) == 4 and (axes[0].start, axes[0].length, axes[0].keep) != (
                0, x.meta.num_channels, True):
            raise InvalidRequestError(
                f"the copy's {role} is a view that selects channels of {x.url}; a copy carries "
                f"all {x.meta.num_channels} channels: copy the whole channel axis "
                "(vol[:, z0:z1, ...]) or write the channel's array to a volume created for it")
        if any(a.step != 1 for a in axes):
            raise InvalidRequestError(
                f"the copy's {role} is a strided view of {x.url} (a step other than 1); a copy "
                "copies voxels at their scale: copy another scale (vol.at_scale(k)) or a "
                "step-1 region")
        remote = x.remote
        if mode == "r+" and remote.mode != "r+":
            remote = open_remote(remote.url, mode="r+")
        full = x.at_scale(x.scale)
        box = None if x.bounds == full.bounds else x.bounds
        if box is not None and mode == "r+":
            raise InvalidRequestError(
                f"the copy's destination is a view of part of {x.url} ({box!r}); give the "
                "whole destination (its URL or voxgate.open(url)) and the region as box= or "
                "as a view of the source")
        return remote, box, x.scale
    return open_remote(os.fspath(x), mode=mode, **options), None, 0


def _check_scales(scales: object, meta: VolumeMeta) -> list[int]:
    """``copy``'s ``scales``: a non-empty sequence of distinct scale indices of ``meta``."""
    given = None if isinstance(scales, (str, bytes)) or not isinstance(scales, Iterable) \
        else list(scales)
    if not given:
        raise InvalidRequestError(
            f"scales must be a non-empty list of scale indices (0..{len(meta.scales) - 1}), "
            f"or None for all, got {scales!r}")
    wanted = [meta.scale(k).index for k in given]  # refuses non-integers and unknown scales
    if len(set(wanted)) != len(wanted):
        raise InvalidRequestError(f"scales lists a scale more than once: {given!r}")
    return wanted


def _options_refused(dst: Any, create_options: dict[str, Any]) -> InvalidRequestError:
    return InvalidRequestError(
        f"{_name(dst)} exists already; options {sorted(create_options)} only apply when "
        "copy creates the destination (or when the same copy is run again to finish it)"
    )


def _check_geometry(smeta: VolumeMeta, dmeta: VolumeMeta, wanted: Sequence[int],
                    url: str) -> None:
    """An existing destination holds the source's dtype, channels and, at every scale
    copied, its bounds (a voxel size that differs is warned about)."""
    if dmeta.dtype != smeta.dtype:
        raise InvalidRequestError(
            f"destination dtype {dmeta.dtype.name} differs from the source's {smeta.dtype.name}"
        )
    if dmeta.num_channels != smeta.num_channels:
        raise InvalidRequestError("source and destination have different numbers of channels")
    for k in wanted:
        if k >= len(dmeta.scales):
            raise InvalidRequestError(f"destination {url} has no scale {k}")
        ss, ds = smeta.scale(k), dmeta.scale(k)
        if ss.shape != ds.shape or ss.offset != ds.offset:
            raise InvalidRequestError(
                f"scale {k}: source covers {ss.bounds!r}, destination {ds.bounds!r}; they must "
                "match (copy into a fresh destination to create it with the source's geometry)"
            )
        _warn_voxel_sizes(k, ss, ds, url)


def _check_pyramid_fits(smeta: VolumeMeta, top: int, src_anchor: str, anchor: str,
                        scheme: str, url: str, *, created: bool = True) -> None:
    """Before a destination is created or written: a store whose coarser scales lie on the
    grid through 0 (``pyramid_anchor`` "origin": WEBKNOSSOS, DVID labelmaps) makes each
    scale's extent itself, so the source's scales 1..``top`` must have those extents; and a
    pyramid made from the volume's first voxel (``src_anchor`` "offset": precomputed after
    Igneous, zarr, n5, ...) at an offset that is not a multiple of a factor lies up to a
    factor - 1 voxels off that grid, whether its extents agree or not."""
    if anchor != "origin":
        return
    nothing = "Nothing was created" if created else "Nothing was written"
    advice = (f"{nothing}: copy scale 0 alone (scales=[0]) and make the coarser scales with "
              "voxgate.downsample on the destination")
    if created:
        advice += (" (a store that cannot add scales, as dvid://, is made first with "
                   "voxgate.create(..., num_scales=N))")
    prev = smeta.scale(0)
    offset, shape = prev.offset, prev.shape
    for k in range(1, top + 1):
        sk = smeta.scale(k)
        f = [max(1, round(b / a)) for a, b in zip(prev.voxel_size.zyx(), sk.voxel_size.zyx(),
                                                  strict=True)]
        offset, shape = coarser_extent(offset, shape, f, "origin")
        if (offset, shape) != (sk.offset, sk.shape):
            raise InvalidRequestError(
                f"{url}: {scheme}:// puts the voxels of a coarser scale on the grid through "
                f"0 (voxel i covers [i * factor, (i + 1) * factor) of the scale before it), so "
                f"its scale {k} would cover {Box(offset, offset + shape)!r}; the source's scale "
                f"{k} covers {sk.bounds!r} (a pyramid whose blocks start at the volume's first "
                f"voxel, offset {tuple(smeta.scale(0).offset)}). {advice}")
        if src_anchor != "origin" and any(o % n for o, n in zip(prev.offset, f, strict=True)):
            raise InvalidRequestError(
                f"{url}: {scheme}:// puts the voxels of a coarser scale on the grid through "
                f"0 (voxel i covers [i * factor, (i + 1) * factor) of the scale before it); the "
                f"source's scale {k} was made by blocks of {tuple(f)} starting at scale "
                f"{k - 1}'s first voxel, offset {tuple(prev.offset)}, which is not a multiple "
                f"of the factor: its voxels would lie up to a factor - 1 voxels off that grid "
                f"(the extents agree, the voxels do not). {advice}")
        prev = sk


def _portable_extra(meta: VolumeMeta, cls: type[Remote]) -> dict[str, Any]:
    """What of the source's ``meta.extra`` a destination of class ``cls`` the copy creates is
    told: of what describes the image wherever it is stored, the channels' names
    (``channel_names``) and the OME ``omero`` block (labels, colours and display windows: the
    dtype is the same, so the windows hold; less the NGFF ``version`` it was written under),
    each only when it names exactly the source's channels, what the destination has a place
    for (:meth:`Remote.carries_extra`: OME-Zarr all of it, OME-TIFF the names, a WEBKNOSSOS
    layer one channel's colour, window and visibility, mem:// the metadata as given; the
    others none).  Every other key names a part of the source's own store and would be
    wrong at the destination: an OME-Zarr group's multiscale index and names
    (``multiscale``, ``multiscales``), a precomputed layer's ``mesh``, ``skeletons`` and
    ``segment_properties`` directories and any other info key (the copy copies voxels, not
    those files), a DVID node."""
    out: dict[str, Any] = {}
    carried = cls.carries_extra(meta)
    names = meta.extra.get("channel_names")
    if "channel_names" in carried and isinstance(names, list) and \
            len(names) == meta.num_channels and all(isinstance(n, str) for n in names):
        out["channel_names"] = list(names)
    omero = meta.extra.get("omero")
    listed = omero.get("channels") if isinstance(omero, dict) else None
    if "omero" in carried and isinstance(listed, list) and \
            len(listed) == meta.num_channels and all(isinstance(c, dict) for c in listed):
        with contextlib.suppress(TypeError, ValueError):  # (not JSON: not written anywhere)
            kept = json.loads(json.dumps(omero))  # (the destination's own copy)
            # the NGFF version the source's block was written under (ome-zarr-py states it):
            # the destination states its own, which may be another
            kept.pop("version", None)
            out["omero"] = kept
    return out


#: schemes whose locations are not storage paths (a name, a server's instance, a spec)
_PATHLESS = ("mem", "dvid", "bossdb", "tensorstore")


def _stored_at(url: str) -> str | None:
    """Where ``url``'s volume is stored, the same however it is spelled: the real absolute
    path of a local location (a bare path, file://, relative, through a symlink, with a
    trailing slash), or a storage URL without its trailing slash, with the ``#`` part (an
    HDF5 dataset) kept; None for schemes that name no storage path (mem://, dvid://, ...)."""
    try:
        scheme, location = split_url(url)
    except InvalidRequestError:
        return None
    if scheme in _PATHLESS:
        return None
    # (a '#' in a local folder's name is part of the path, as registry reads it: cutting
    # there kept the symbolic link a real path resolves through)
    path = without_fragment(location)
    sep, inner = ("#", location[len(path) + 1:]) if len(path) < len(location) else ("", "")
    path = os.path.realpath(local_path(path)) if is_local(path) else path.rstrip("/")
    return path + sep + inner.rstrip("/")


def _check_apart(src: str, dst: str) -> None:
    """Refuse a destination stored where the source is, inside it, or around it (under any
    spelling): the copy would write into the source's own store, or over its files."""
    a, b = _stored_at(src), _stored_at(dst)
    if a is None or b is None:
        return
    if a == b:
        raise InvalidRequestError(
            f"source and destination are the same volume: {src} and {dst} are both stored at "
            f"{a}; copy to another location")
    if b.startswith(a + "/"):
        raise InvalidRequestError(
            f"the destination {dst} lies inside the source {src} ({a}): the copy would write "
            "into the source's own store; copy to a location outside it")
    if a.startswith(b + "/"):
        raise InvalidRequestError(
            f"the source {src} lies inside the destination {dst} ({b}): creating or writing "
            "the destination would write over the source's files; copy to a location that "
            "does not hold the source")


def _name(x: str | os.PathLike[str] | Volume) -> str:
    return x.url if isinstance(x, Volume) else os.fspath(x)


def _warn_voxel_sizes(k: int, ss: Scale, ds: Scale, url: str) -> None:
    """A VoxgateWarning when an existing destination's scale ``k`` states another voxel size
    than the source's (compared in nm): the voxels are copied all the same (a destination made
    by a tool that stores no voxel size states 1), but they would then be read at the wrong
    resolution."""
    from .storage.units import length_unit_nm

    a, b = length_unit_nm(ss.voxel_size.unit), length_unit_nm(ds.voxel_size.unit)
    if a is None or b is None:
        return
    src_nm = [float(v) * a for v in ss.voxel_size.zyx()]
    dst_nm = [float(v) * b for v in ds.voxel_size.zyx()]
    if all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(src_nm, dst_nm, strict=True)):
        return
    warnings.warn(VoxgateWarning(
        f"scale {k}: the destination {url} states voxels of {tuple(dst_nm)} nm (z, y, x), the "
        f"source {tuple(src_nm)} nm; the voxels are copied as they are, so the destination's "
        "metadata now describes them at another resolution (copy into a fresh destination to "
        "keep the source's)"), stacklevel=3)


def _factors(s0: Scale, sk: Scale) -> list[float]:
    """Scale ``sk``'s (z, y, x) downsampling factor from scale ``s0``: the ratio of the voxel
    sizes when it is a whole number (the shapes' ratio drifts from it at odd extents: 53
    voxels halved are 27, 53 / 27 = 1.96), else the shapes' ratio."""
    out = []
    for v0, vk, n0, nk in zip(s0.voxel_size.zyx(), sk.voxel_size.zyx(), s0.shape, sk.shape,
                              strict=True):
        r = float(vk) / float(v0) if v0 else 0.0
        out.append(float(round(r)) if round(r) >= 1 and abs(r - round(r)) < 1e-6 * r
                   else n0 / nk)
    return out


def _block_starts(s0: Scale, sk: Scale, origin: bool) -> tuple[Vec, Vec]:
    """Where the blocks of ``sk``'s voxels start: scale 0's first voxel and ``sk``'s (a
    pyramid made from the first voxel), or coordinate 0 of both (``origin``: the grid through
    0 of WEBKNOSSOS mags and DVID labelmaps, ``Remote.pyramid_anchor``)."""
    return (Vec(0, 0, 0), Vec(0, 0, 0)) if origin else (s0.offset, sk.offset)


def _covering_box(view: Box, meta: VolumeMeta, scale: int, origin: bool = False) -> Box:
    """The scale-0 region covering ``view``, a region of ``scale`` (the inverse of
    :func:`_scale_box`, which maps it back to at least ``view``)."""
    s0, sk = meta.scale(0), meta.scale(scale)
    start, stop = [], []
    for a, b, f, o0, ok in zip(
        view.start, view.stop, _factors(s0, sk), *_block_starts(s0, sk, origin), strict=True
    ):
        start.append(o0 + math.floor((a - ok) * f))
        stop.append(o0 + math.ceil((b - ok) * f))
    return Box(start, stop).intersect(s0.bounds)


def _scale_box(box: Box, meta: VolumeMeta, scale: int, origin: bool = False) -> Box:
    """A scale-0 box mapped to the voxels of ``scale`` that it covers."""
    s0, sk = meta.scale(0), meta.scale(scale)
    start, stop = [], []
    for a, b, f, o0, ok in zip(
        box.start, box.stop, _factors(s0, sk), *_block_starts(s0, sk, origin), strict=True
    ):
        start.append(ok + math.floor((a - o0) / f))
        stop.append(ok + math.ceil((b - o0) / f))
    return Box(start, stop).intersect(sk.bounds)


#: scale -> (first block index, number of blocks per axis) of the block grid a set covers
_Space = dict[int, tuple[Vec, Vec]]

#: the number of bits set in each byte
_BITS_IN = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _popcount(bits: np.ndarray) -> int:
    """How many bits of the uint8 array ``bits`` are set."""
    return int(_BITS_IN[bits].sum(dtype=np.int64))


class _BlockSet:
    """A set of block keys ``(scale, z, y, x)`` held as one bit per block of each scale's block
    grid (``space``): a copy of 10^8 blocks keeps 12 MiB of it, where a set of tuples kept
    about 10 GiB.  Keys outside ``space`` are not held (``add`` says False)."""

    def __init__(self, space: _Space) -> None:
        self.space = space
        self.bits = {k: bytearray((math.prod(shape) + 7) // 8)
                     for k, (_, shape) in space.items()}
        self._n = 0

    def _at(self, key: Sequence[int]) -> tuple[bytearray, int, int] | None:
        """The byte holding ``key``'s bit (its bitmap, index) and the bit's mask."""
        if len(key) != 4 or key[0] not in self.space:
            return None
        k, z, y, x = key
        (lz, ly, lx), (nz, ny, nx) = self.space[k]
        z, y, x = z - lz, y - ly, x - lx
        if not (0 <= z < nz and 0 <= y < ny and 0 <= x < nx):
            return None
        flat = (z * ny + y) * nx + x
        return self.bits[k], flat >> 3, 1 << (flat & 7)

    def __contains__(self, key: Sequence[int]) -> bool:
        at = self._at(key)
        return at is not None and bool(at[0][at[1]] & at[2])

    def add(self, key: Sequence[int]) -> bool:
        """Hold ``key``; whether it is new (and in the space)."""
        at = self._at(key)
        if at is None or at[0][at[1]] & at[2]:
            return False
        at[0][at[1]] |= at[2]
        self._n += 1
        return True

    def discard(self, key: Sequence[int]) -> None:
        at = self._at(key)
        if at is not None and at[0][at[1]] & at[2]:
            at[0][at[1]] &= ~at[2] & 0xFF
            self._n -= 1

    def __len__(self) -> int:
        return self._n

    def array(self, k: int, but: _BlockSet | None = None) -> np.ndarray:
        """Scale ``k``'s bitmap (less ``but``'s) as uint8, a view when ``but`` is None."""
        bits = np.frombuffer(self.bits[k], np.uint8)
        if but is not None and k in but.bits:
            bits = bits & ~np.frombuffer(but.bits[k], np.uint8)
        return bits

    def flat(self, k: int, but: _BlockSet | None = None) -> Iterator[np.ndarray]:
        """The flat grid positions of scale ``k``'s keys (not in ``but``), ascending, a slice
        of the bitmap at a time."""
        bits = self.array(k, but)
        step = 2**16  # bytes of the bitmap unpacked at once
        for at in range(0, len(bits), step):
            part = np.unpackbits(bits[at:at + step], bitorder="little")
            yield np.flatnonzero(part) + 8 * at

    def keys(self, but: _BlockSet | None = None) -> Iterator[tuple[int, ...]]:
        """The keys held (and not held by ``but``), scale by scale in ``space``'s order, each
        scale's in grid order (z, then y, then x), as the plan runs."""
        for k, (lo, shape) in self.space.items():
            for flat in self.flat(k, but):
                for idx in zip(*np.unravel_index(flat, tuple(shape)), strict=True):
                    yield (k, *(int(i) + a for i, a in zip(idx, lo, strict=True)))


#: a block's journal line: "k z y x", or "k z y x fill" (ASCII digits: "²".isdigit() and
#: "--5".lstrip("-").isdigit() are true, and int() refuses both)
_RECORD = re.compile(r"(-?[0-9]+) (-?[0-9]+) (-?[0-9]+) (-?[0-9]+)( fill)?\n")

#: what to do with a journal a copy cannot use
_DELETE_IT = ("delete that file (voxgate cp --status lists it; voxgate cp --forget-all deletes "
              "it with every other journal) and run the copy again: it then starts from the "
              "first block")


class _Journal:
    """An append-only record of finished blocks; fsync'd in batches, read back on resume.

    The file holds a JSON header, then a line per finished block ("k z y x", or "k z y x fill"
    for a block of only the fill value; a block recorded again with the other kind gets a
    second line, the last one counts) and "created" when the copy made its destination.  In
    memory the finished blocks are bitmaps over ``space`` (:class:`_BlockSet`)."""

    def __init__(self, path: Path, header: dict[str, Any], space: _Space) -> None:
        self.path = path
        self.header = header
        self.done = _BlockSet(space)
        #: the finished blocks that held only the fill value (they may be absent from the
        #: destination: a copy into a store it created does not write them)
        self.fill = _BlockSet(space)
        self.created = False
        self._lock = threading.Lock()
        self._since_sync = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        cut = False  # (the last line was cut short by a kill: ended before the next one)
        try:
            if path.exists() or path.is_symlink():
                cut = self._check(path, header)
                self.done, self.fill, self.created = self._parse(path, space)
            self._file = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise InvalidRequestError(
                f"the copy's journal {path} cannot be read or written "
                f"({exc.strerror or exc}): {_DELETE_IT}") from None
        if self._file.tell() == 0:
            self._file.write(json.dumps(header) + "\n")
            self._file.flush()
        elif cut:
            self._file.write("\n")
            self._file.flush()

    @staticmethod
    def _check(path: Path, header: dict[str, Any]) -> bool:
        """Refuse the file at ``path`` unless it is the journal of the copy ``header`` names
        (InvalidRequestError); one whose header was cut short (a kill as the copy started)
        is emptied, as it records nothing.  Whether its last line is cut short."""
        with open(path, "rb") as f:
            first = f.readline()
            if not first.endswith(b"\n"):
                f.close()
                open(path, "wb").close()
                return False
            f.seek(0, os.SEEK_END)
            f.seek(f.tell() - 1)
            cut = f.read(1) != b"\n"
        try:
            theirs = json.loads(first)
        except ValueError:
            raise InvalidRequestError(
                f"the copy's journal {path} is damaged (its first line is not a journal "
                f"header): {_DELETE_IT}") from None
        if theirs != json.loads(json.dumps(header)):
            other = (f"{theirs.get('src')} -> {theirs.get('dst')}"
                     if isinstance(theirs, dict) else "none")
            raise InvalidRequestError(
                f"the copy's journal {path} holds the header of another copy ({other}), so "
                f"the blocks it lists may not be this copy's: {_DELETE_IT}")
        return cut

    @staticmethod
    def read_done(path: Path) -> tuple[set[tuple[int, ...]], bool]:
        """The blocks a journal records as finished, as a set (for a look at a small one), and
        whether the copy created its destination."""
        done, _, created = _Journal._parse(path)
        return set(done.keys()), created

    @staticmethod
    def _records(path: Path) -> Iterator[tuple[tuple[int, ...], bool] | None]:
        """Each complete line after the header, read as it comes: (block key, whether it held
        only fill), or None for "created"; other lines are passed over."""
        # (bytes that are not UTF-8 make a line that is none of these: passed over)
        with open(path, encoding="utf-8", errors="replace") as f:
            f.readline()  # the header
            for line in f:
                if not line.endswith("\n"):
                    break  # the last line may be cut short by a kill: only complete lines count
                if line == "created\n":
                    yield None
                    continue
                m = _RECORD.fullmatch(line)
                if m is not None:
                    yield (int(m[1]), int(m[2]), int(m[3]), int(m[4])), m[5] is not None

    @staticmethod
    def _parse(path: Path, space: _Space | None = None) -> tuple[_BlockSet, _BlockSet, bool]:
        """The finished blocks, the ones of them that held only fill, and whether the copy
        created its destination.  Without ``space`` (a journal looked at on its own), the
        bitmaps span the blocks the file names (a first pass finds their range; a range
        wider than the plan the header counts is a ValueError: not a journal of ours)."""
        if space is None:
            with open(path, "rb") as f:  # (the lines after it may not be UTF-8)
                header = json.loads(f.readline())
            most = int(header.get("blocks", 0)) if isinstance(header, dict) else 0
            lo: dict[int, list[int]] = {}
            hi: dict[int, list[int]] = {}
            for rec in _Journal._records(path):
                if rec is not None:
                    k, *idx = rec[0]
                    lo[k] = [min(a, b) for a, b in zip(lo.get(k, idx), idx, strict=True)]
                    hi[k] = [max(a, b) for a, b in zip(hi.get(k, idx), idx, strict=True)]
            space = {k: (Vec(*lo[k]), Vec(*(b - a + 1 for a, b in zip(lo[k], hi[k],
                                                                          strict=True))))
                     for k in sorted(lo)}
            if any(math.prod(shape) > most for _, shape in space.values()):
                raise ValueError(f"{path} names blocks outside the {most} of its plan")
        done, fill = _BlockSet(space), _BlockSet(space)
        created = False
        for rec in _Journal._records(path):
            if rec is None:
                created = True
                continue
            key, empty = rec
            done.add(key)
            if empty:
                fill.add(key)
            else:
                fill.discard(key)
        return done, fill, created

    def mark_created(self) -> None:
        """Record that this copy made the destination: its untouched blocks are still fill."""
        with self._lock:
            self.created = True
            self._file.write("created\n")
            self._file.flush()

    def record(self, key: tuple[int, ...]) -> None:
        with self._lock:
            if key in self.done and key not in self.fill:
                return  # (recorded so already)
            self.done.add(key)
            self.fill.discard(key)
            self._append(" ".join(map(str, key)))

    def record_fill(self, key: tuple[int, ...]) -> None:
        """Record a finished block that held only the fill value."""
        with self._lock:
            if key in self.fill:
                return
            self.done.add(key)
            self.fill.add(key)
            self._append(" ".join(map(str, key)) + " fill")

    def _append(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()
        self._since_sync += 1
        if self._since_sync >= 64:
            os.fsync(self._file.fileno())
            self._since_sync = 0

    def close(self, *, complete: bool) -> None:
        with self._lock:
            self._file.flush()
            with contextlib.suppress(OSError):
                os.fsync(self._file.fileno())
            self._file.close()
            if complete:
                self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _ScalePlan:
    """The blocks of one scale: ``region`` cut on a grid of ``block`` (whole cells of the
    destination's write grid ``grid``) anchored at ``anchor``'s start; walked, never listed."""

    scale: int
    region: Box
    grid: Vec
    block: Vec
    anchor: Box

    @property
    def lo(self) -> Vec:
        """The first block's index."""
        return Vec(*((a - o) // b for a, o, b in zip(self.region.start, self.anchor.start,
                                                    self.block, strict=True)))

    @property
    def shape(self) -> Vec:
        """Blocks per axis."""
        hi = (-(-(b - o) // s) for b, o, s in zip(self.region.stop, self.anchor.start,
                                                    self.block, strict=True))
        return Vec(*(h - a for h, a in zip(hi, self.lo, strict=True)))

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def items(self) -> Iterator[tuple[Vec, Box, int]]:
        """(block index, its box, its write-grid cells), in grid order."""
        per_block = math.prod(b // g for b, g in zip(self.block, self.grid, strict=True))
        for idx, cell in chunk_boxes(self.region, self.block, self.anchor):
            part = cell.intersect(self.region)
            # (a block cut by the region or by the scale's far edge, where chunk_boxes clips
            # the cell already, holds fewer cells)
            yield idx, part, (per_block if part.shape == self.block else
                              sum(1 for _ in chunk_boxes(part, self.grid, self.anchor)))

    def part(self, idx: Sequence[int]) -> Box:
        """The box of block ``idx``."""
        start = Vec(*(o + i * b for o, i, b in zip(self.anchor.start, idx, self.block,
                                                   strict=True)))
        return Box(start, start + self.block).intersect(self.anchor).intersect(self.region)

    def voxels(self, blocks: _BlockSet, but: _BlockSet | None = None) -> int:
        """The voxels of this scale's blocks in ``blocks`` and not in ``but``."""
        if self.scale not in blocks.bits:
            return 0
        shape, total = tuple(self.shape), 0
        for flat in blocks.flat(self.scale, but):
            size = np.ones(len(flat), np.int64)
            for axis, i in enumerate(np.unravel_index(flat, shape)):
                start = self.anchor.start[axis] + (i + self.lo[axis]) * self.block[axis]
                a = np.maximum(start, self.region.start[axis])
                b = np.minimum(start + self.block[axis], self.region.stop[axis])
                size *= np.maximum(b - a, 0)
            total += int(size.sum())
        return total


@contextlib.contextmanager
def _progress(enabled: bool, total_bytes: int, label: str) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    with progress_bar(True, total_bytes, label, unit="bytes") as bar:  # KiB/MiB/GiB
        yield bar.advance


def _create_options_of(dst: str | os.PathLike[str] | Volume) -> tuple[str, ...]:
    """The options the destination's store takes to create (none when the URL names none)."""
    try:
        cls = type(dst.remote) if isinstance(dst, Volume) else resolve_for_create(
            os.fspath(dst))[0]
    except VoxgateError:
        return ()
    return (*cls.create_options, *COMMON_OPTIONS["create"])


def copy(
    src: str | os.PathLike[str] | Volume,
    dst: str | os.PathLike[str] | Volume,
    *,
    box: Box | None = None,
    scales: Sequence[int] | None = None,
    workers: int | None = None,
    progress: bool = True,
    missing: str = "fill",
    client: Any = None,
    retries: int = 2,
    verify: bool = False,
    **create_options: Any,
) -> CopyReport:
    """Copy a volume (all its scales by default) from ``src`` to ``dst``.

    ``dst`` is created with ``src``'s metadata when it does not exist (``create_options`` go
    to its Remote, e.g. ``zarr_format=2`` or ``sharded=True``); when it exists, its dtype and
    shapes must match.  ``box`` limits the copy to a scale-0 region (dataset coordinates);
    coarser scales copy the voxels that region covers.  Rerunning an interrupted copy with the
    same arguments resumes it: the blocks its journal lists are skipped, or with ``verify=True``
    read again from both stores and copied again where they differ (for a source that may
    have changed since the interruption; it costs a read of both for the part already done).

    Chunks absent from the source inside the copied region are listed in the report
    (``report.absent_chunks``, per scale: the first :data:`ABSENT_LISTED`, with their number
    in ``report.absent_counts``) and copied as the fill value; with
    ``missing="error"`` the copy refuses to start when any is absent (MissingChunkError) and
    reads the source with ``missing="error"``.

    ``client``: a ``dask.distributed.Client``; the blocks then run as tasks on its cluster
    (each worker reopens both volumes by URL, so ``mem://`` is refused); the journal and the
    progress bar stay here.  Without one, ``workers`` threads of this process copy the blocks.
    Either way the blocks run through :mod:`voxgate.blockwise`: a block failing with a
    transient error (the store unreachable, a worker that died) is run again up to
    ``retries`` times; any other error stops the copy (PartialWriteError, resumable).

    Two runs of the same copy at once are refused: the copy holds its journal's lock while it
    runs, and a second run raises InvalidRequestError naming the journal (a killed run's lock
    is released by its end).
    """
    # (released when the copy ends, however it ends: the destination's lock while the copy
    # starts, then its journal's)
    with contextlib.ExitStack() as held:
        return _copy(held, src, dst, box=box, scales=scales, workers=workers,
                     progress=progress, missing=missing, client=client, retries=retries,
                     verify=verify, **create_options)


def _copy(
    held: contextlib.ExitStack,
    src: str | os.PathLike[str] | Volume,
    dst: str | os.PathLike[str] | Volume,
    /,
    *,
    box: Box | None,
    scales: Sequence[int] | None,
    workers: int | None,
    progress: bool,
    missing: str,
    client: Any,
    retries: int,
    verify: bool,
    **create_options: Any,
) -> CopyReport:
    """:func:`copy`, holding in ``held`` the locks it takes (:func:`_lock_journal`)."""
    t0 = time.perf_counter()
    check_missing(missing)
    for role, x in (("source", src), ("destination", dst)):
        if not isinstance(x, (str, os.PathLike, Volume)):
            raise InvalidRequestError(
                f"the copy's {role} must be a URL, a path or a Volume, got {type(x).__name__}"
                + (" (write an array in memory with Volume[...] = array)"
                   if isinstance(x, np.ndarray) else f" {repr(x)[:80]}"))
    check_keywords(copy, create_options, lambda: _create_options_of(dst))
    workers, retries = check_run(workers, retries, client, "copy")
    verify = check_flag(verify, "verify")
    progress = check_flag(progress, "progress")
    if client is not None:
        check_for_cluster(_name(src), "source", "copy")
        check_for_cluster(_name(dst), "destination", "copy", writes=True)
    if box is not None and not isinstance(box, Box):
        raise InvalidRequestError(f"box must be a voxgate.Box, got {type(box).__name__}")
    s_remote, s_box, view_scale = _as_remote(src, "r", missing=missing)
    smeta = s_remote.meta
    # a view of a coarser scale is copied exactly at its scale; the other scales copy the
    # voxels of the scale-0 region that covers it
    # (coarser voxels cover the blocks of the source's own pyramid grid)
    origin = s_remote.pyramid_anchor == "origin"
    exact: dict[int, Box] = {}
    if box is None and s_box is not None:
        box = s_box if view_scale == 0 else _covering_box(s_box, smeta, view_scale, origin)
        exact[view_scale] = s_box

    def region_of(k: int, meta: VolumeMeta) -> Box:
        if k in exact:
            return exact[k]
        return meta.scale(k).bounds if box is None else _scale_box(box, meta, k, origin)
    if scales is None:
        wanted = list(range(len(smeta.scales)))
    else:
        wanted = _check_scales(scales, smeta)
    # refused before the destination is created: a refused copy leaves nothing behind
    if box is not None and not smeta.scale(0).bounds.contains(box):
        raise OutOfBoundsError(f"{box!r} is outside the source's bounds {smeta.scale(0).bounds!r}")
    if box is not None and box.is_empty():
        raise InvalidRequestError(
            f"{box!r} holds no voxels (a zero-length axis): give a box with start < stop on "
            "every axis")

    # per scale: the first ABSENT_LISTED absent chunks, and how many there are
    absent: dict[int, list[Vec]] = {}
    absent_counts: dict[int, int] = {}
    #: per scale with absent chunks, where its stored ones are (the blocks touching none are
    #: not read: they hold only the fill value)
    stored: dict[int, StoredGroups] = {}
    checked = has_capability(s_remote, Capability.CHUNK_PRESENCE)
    if checked:
        for k in wanted:
            region = region_of(k, smeta)
            if not region.is_empty():
                sc = smeta.scale(k)
                # (a bit per chunk where the scale has few enough, else per group dividing
                # the blocks a destination with the source's chunks is copied in)
                group = chunk_blocks(s_remote, k, grow_block(
                    sc.chunks, smeta.dtype.itemsize * smeta.num_channels, region.shape,
                    BLOCK_BYTES))
                groups = StoredGroups(region, sc.chunks, sc.bounds.start,
                                       Vec(*(g // c for g, c in zip(group, sc.chunks,
                                                                    strict=True))))
                found, n_absent = absent_in(s_remote, region, k, groups.mark)
                if n_absent:
                    absent[k], absent_counts[k] = found, n_absent
                    stored[k] = groups
    if missing == "error" and absent:
        k, chunks = min(absent.items())
        raise MissingChunkError(
            f"copy {s_remote.url} -> {_name(dst)} refused (missing='error'): "
            + "; ".join(f"{absent_counts[kk]} chunk(s) absent at scale {kk}: "
                        f"{format_chunks(c, total=absent_counts[kk])}"
                        for kk, c in sorted(absent.items()))
            + "; nothing was created or written (copy with missing='fill' to copy them as the "
            "fill value)",
            chunks=chunks,
            scale=k,
            total=absent_counts[k],
        )

    # a block touching only chunks the source said are absent is not read (on object storage
    # each is a request answered "not found"): it holds what the source reads there, the fill
    # value, read once per scale from the first of those chunks, which must read as the fill
    # value everywhere, or every block of that scale is read (absent_fill)
    fills: dict[int, np.ndarray] = {}
    for k, g in list(stored.items()):
        voxel = absent_fill(s_remote, absent[k][0], k, g.region)
        if voxel is None:
            del stored[k]
        else:
            fills[k] = voxel

    created = refuse_options = False
    #: the destination's lock, held from before it is looked for until this copy's journal is
    #: locked and open: of two copies into a destination that both find it missing, one
    #: creates it and the other waits, then finds it (and, the same copy, is refused)
    starting = held.enter_context(contextlib.ExitStack())
    if isinstance(dst, Volume):
        d_remote, _, _ = _as_remote(dst, "r+")
        if same_volume(d_remote, s_remote):
            raise InvalidRequestError("source and destination are the same volume")
        if d_remote.url != s_remote.url:
            # (another time point of the source's own timelapse is another volume: opened
            # with time=, each reads and writes its own time point only)
            _check_apart(s_remote.url, d_remote.url)
    else:
        dst_url = os.fspath(dst)
        if dst_url == s_remote.url or dst_url == getattr(src, "url", src):
            raise InvalidRequestError("source and destination are the same volume")
        cls, location = resolve_for_create(dst_url)
        # (an option naming a part of the location, a WEBKNOSSOS layer=, is folded into it)
        named, create_options = cls.create_location(location, create_options, smeta.kind)
        if named != location:
            location, dst_url = named, f"{cls.scheme}://{named}"
        _check_apart(s_remote.url, dst_url)
        starting.enter_context(_state_lock(_destination_lock(dst_url), blocking=True))
        # (a bossdb:// token= or server= is the store's open option too: the destination is
        # looked for and opened with it, as it is created with it)
        opening = opening_options(cls, create_options)
        if exists_with(cls, location, opening):
            # create options on a destination that exists are refused below, unless this is
            # the same copy run again to finish it (its journal is there): the options made
            # the destination the first time
            refuse_options = any(k not in opening for k in create_options)
            d_remote = cls.open(location, mode="r+", **opening)
            _check_apart(s_remote.url, d_remote.url)  # (as the destination names itself)
        else:
            _check_pyramid_fits(smeta, max(wanted), s_remote.pyramid_anchor,
                                cls.create_anchor(smeta, create_options), cls.scheme, dst_url)
            keep = [
                replace(smeta.scale(k), encoding=None, key=None) for k in range(max(wanted) + 1)
            ]
            if s_remote.pyramid_anchor == "origin":
                # (a store stating positions, OME-Zarr, takes the first-voxel rule otherwise)
                keep = [replace(sc, translation=centre_translation(keep[0], sc, "origin"))
                        for sc in keep]
            dmeta = replace(smeta, scales=tuple(replace(s, index=i) for i, s in enumerate(keep)),
                            extra=_portable_extra(smeta, cls))
            d_remote = create_remote(dst_url, dmeta, **create_options)
            created = True
    dmeta = d_remote.meta
    try:
        _check_geometry(smeta, dmeta, wanted, d_remote.url)
    except InvalidRequestError:
        if refuse_options:  # (no unfinished copy of this source can have made it)
            raise _options_refused(dst, create_options) from None
        raise
    if not created:
        _check_pyramid_fits(smeta, max(wanted), s_remote.pyramid_anchor, d_remote.pyramid_anchor,
                            d_remote.scheme, d_remote.url, created=False)

    # the plan: the blocks of every scale, walked as they are sent (a plan of 10^8 blocks
    # listed first held tens of GiB)
    itemsize, channels = smeta.dtype.itemsize, smeta.num_channels
    plans: list[_ScalePlan] = []
    #: per scale, the block grid (block shape, where it starts): a block index names the same
    #: voxels only on the same grid, so it is part of the journal's key
    grids: dict[str, list[list[int]]] = {}
    for k in wanted:
        region = region_of(k, dmeta)
        if region.is_empty():
            continue
        grid = d_remote.write_grid(k)
        block = grow_block(grid, itemsize * channels, region.shape, BLOCK_BYTES)
        anchor = d_remote.grid_bounds(k)  # (DVID, bossDB: the grid through 0)
        grids[str(k)] = [list(block), list(anchor.start)]
        plans.append(_ScalePlan(k, region, grid, block, anchor))
    blocks_total = sum(sp.count for sp in plans)
    space: _Space = {sp.scale: (sp.lo, sp.shape) for sp in plans}

    header: dict[str, Any] = {
        # absolute: zarr://x.zarr in another working directory is another volume, whose
        # copy must not resume this one's journal
        # (credentials redacted: a journal on disk never holds a token; the copy is the same
        # copy whatever token reaches the stores)
        "src": redact(json.loads(cluster_spec(s_remote))["url"]),
        "dst": redact(json.loads(cluster_spec(d_remote))["url"]),
        "box": None if box is None else str(box),
        "scales": wanted,
        "blocks": blocks_total,
        # another chunking or sharding of a destination made again, or another block size,
        # numbers other blocks: such a copy starts over rather than skip the wrong ones
        "grid": grids,
    }
    if view_scale in exact:  # a view of a coarser scale: its region is part of the key
        header["view"] = [view_scale, str(exact[view_scale])]
    for end, remote in (("src", s_remote), ("dst", d_remote)):
        chosen = choosing_options(remote)
        if chosen:  # (absent when none: the keys of journals made before stay the same)
            header[f"{end}_options"] = chosen
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:24]
    path = journal_dir() / f"{digest}.journal"
    # held until the copy ends: no other run of the same copy reads, appends to, removes or
    # (creating the destination) empties this journal meanwhile
    _lock_journal(held, path, header)
    if refuse_options and not path.exists():
        raise _options_refused(dst, create_options)
    if created:
        # the destination was (re)created just now: whatever an earlier run recorded went into
        # a store that is gone, so the copy starts from the first block; and so must every
        # other unfinished copy into it (another region, source or block grid)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # (a directory in its place, say)
            raise InvalidRequestError(
                f"the copy's journal {path} cannot be removed ({exc.strerror or exc}): "
                f"{_DELETE_IT}") from None
        _forget_destination(header["dst"])
    journal = _Journal(path, header, space)
    report = CopyReport(redact(s_remote.url), redact(d_remote.url), wanted,
                        blocks_total=blocks_total, created=created)
    report.resumed = bool(len(journal.done))
    report.absent_chunks, report.absent_checked = absent, checked
    report.absent_counts = absent_counts
    if created:
        journal.mark_created()
    starting.close()  # (the destination is there and its copies' journals are settled)
    # a destination this copy created (now or before an interruption) holds only fill where no
    # block was written yet, so all-fill source blocks need no write
    skip_fill = journal.created
    # with verify, a block the journal does not list may still have been written, in whole or
    # in part, by the interrupted run (a kill or an interrupt between its write and its line,
    # a block failing part way): its stale chunks must not be taken for fill (_run_item)
    recheck = verify and skip_fill and not created
    # a block the journal lists is skipped; with verify, read again from both stores and
    # written only when they differ (the source changed since the interrupted run, or the
    # destination did): then a rerun never keeps stale blocks, and never rewrites finished ones
    gone = _BlockSet(space) if verify else _blocks_gone(d_remote, plans, journal)
    #: the scales of the blocks sent (told of the writes at the end, whatever happened)
    touched: set[int] = set()

    def todo() -> Iterator[_Item]:
        # (run here, in this thread, as blocks are sent: the report's counts are this thread's)
        for sp in plans:
            groups = stored.get(sp.scale)
            if groups is not None and groups.region != sp.region:
                groups = None  # (the scan covered another region: not its answer)
            for idx, part, n in sp.items():
                key = (sp.scale, *idx)
                listed = key in journal.done
                if listed and not verify and key not in gone:
                    report.blocks_skipped += 1
                    report.chunks_skipped += n
                    continue
                touched.add(sp.scale)
                empty = holds_nothing(groups, part)
                reads = None if groups is None or empty else groups.reads(part)
                yield (sp.scale, idx, part, n, listed, empty,
                       None if reads is None or reads == [part] else tuple(reads))

    workers = workers or default_workers()
    if client is None:
        fn: Any = functools.partial(_copy_item, s_remote, d_remote, skip_fill=skip_fill,
                                    fills=fills, recheck=recheck)
    else:  # each worker reopens both stores by their specs, once per process and run
        fn = functools.partial(_copy_block, cluster_spec(s_remote), cluster_spec(d_remote),
                               uuid.uuid4().hex, skip_fill=skip_fill, fills=fills,
                               recheck=recheck)

    total_bytes = sum(sp.region.size - (0 if verify else sp.voxels(journal.done, gone))
                      for sp in plans) * itemsize * channels
    #: the boxes of the blocks this run wrote, for a PartialWriteError: the first
    #: ABSENT_LISTED of them (the journal records them all)
    written: list[Box] = []
    complete = False
    try:
        with _progress(progress, total_bytes, "copy") as advance:

            def done(item: _Item, out: object) -> None:
                # here, in this thread, once the block is written (on a cluster too)
                assert isinstance(out, tuple)
                nbytes: int = out[0]
                empty: bool = out[1]
                unchanged: bool = out[2]
                # the cells of a written block left absent (all fill), and their bytes
                left, left_bytes = (int(out[4]), int(out[5])) if len(out) > 5 else (0, 0)
                if advance is not None:
                    advance(nbytes)
                if unchanged:  # listed in the journal and still equal to the source
                    report.blocks_skipped += 1
                    report.chunks_skipped += item[3]
                    return
                if out[3]:
                    journal.record_fill((item[0], *item[1]))
                else:
                    journal.record((item[0], *item[1]))
                if len(written) < ABSENT_LISTED:
                    written.append(item[2])
                report.blocks_written += 1
                if item[4]:
                    report.blocks_changed += 1
                if empty:
                    report.blocks_empty += 1
                    report.chunks_empty += item[3]
                else:
                    report.chunks_written += item[3] - left
                    report.chunks_empty += left
                    report.bytes_written += nbytes - left_bytes
                report.per_scale[item[0]] = report.per_scale.get(item[0], 0) + 1

            try:
                # (run_blocks takes the blocks as it sends them and keeps none of those done:
                # the plan is never held; a failure stops it taking more)
                res = run_blocks(fn, todo(), name="copy", client=client, workers=workers,
                                 on_done=done, retries=retries, collect=True)
            except KeyboardInterrupt as stop:
                # blocks in flight at the interrupt finished and are recorded too
                finished = len(journal.done)
                raise CopyInterrupted(  # (a KeyboardInterrupt: its message redacted here)
                    f"copy {report.src} -> {report.dst} interrupted after {finished} of "
                    f"{blocks_total} blocks; run the same copy again to resume (journal at "
                    f"{journal.path})",
                    journal.path, finished, blocks_total,
                ) from stop
        if res.failed:
            item, cause = res.failed[0]
            listed_all = len(written) == report.blocks_written
            raise PartialWriteError(
                f"copy {s_remote.url} -> {d_remote.url} failed at block {item[2]!r} of scale "
                f"{item[0]}: {cause}. {report.blocks_written} blocks were written this run and are "
                "recorded; rerun the same copy to resume"
                + ("" if listed_all else f" (.written lists the first {len(written)}; the "
                   f"journal {journal.path} records all)"),
                written=written,
                failed=[it[2] for it, _ in res.failed],
            ) from cause
        complete = True
    finally:
        for k in sorted(touched):  # (written, all or in part)
            notify_written(d_remote, k)
        journal.close(complete=complete)
    report.seconds = time.perf_counter() - t0
    return report


@contextlib.contextmanager
def _state_lock(path: Path, *, blocking: bool, patience: float = 0.0) -> Iterator[None]:
    """:func:`voxgate.storage.file_lock` of ``path`` in the journals' folder (made first); a
    folder that cannot be written is refused as a journal there is (InvalidRequestError)."""
    with contextlib.ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(file_lock(str(path), blocking=blocking, patience=patience))
        except BlockingIOError:
            raise
        except OSError as exc:
            raise InvalidRequestError(
                f"the copy cannot lock {path} ({exc.strerror or exc}): it keeps its journal in "
                f"{path.parent}; set VOXGATE_STATE_DIR to a writable directory") from None
        yield


def _destination_lock(dst_url: str) -> Path:
    """The file whose lock (:func:`_state_lock`) copies into ``dst_url`` hold while they look
    for it, create it and open their journals: one name however the destination is spelled
    (:func:`_stored_at`)."""
    where = _stored_at(dst_url) or redact(dst_url)
    return journal_dir() / f"{hashlib.sha256(where.encode()).hexdigest()[:24]}.destination"


def _lock_journal(held: contextlib.ExitStack, path: Path, header: dict[str, Any]) -> None:
    """Hold the lock of the journal ``path`` in ``held`` (until the copy ends), or refuse with
    InvalidRequestError when another run of the same copy holds it (trying for
    :data:`~voxgate.storage.locking.LOOK_PATIENCE` seconds: a look at it by ``--status`` ends
    at once)."""
    try:
        held.enter_context(_state_lock(path, blocking=False, patience=LOOK_PATIENCE))
        return
    except BlockingIOError:
        pass
    raise InvalidRequestError(
        f"another run of this copy ({header['src']} -> {header['dst']}) is running now: its "
        f"journal {path} is locked.  Wait for that run to finish, or stop it (Ctrl-C; the "
        "blocks it finished are recorded) and run the copy again to resume; two runs of one "
        "copy at once would copy every block twice and each lose the other's record")


def _forget_destination(dst: str) -> None:
    """Delete the journals of unfinished copies into ``dst`` (as a journal names it): the
    destination was created again, so none of the blocks they list is there any more."""
    for j in list_journals():
        if j.dst == dst:
            j.path.unlink(missing_ok=True)


def _blocks_gone(d: Remote, plans: Sequence[_ScalePlan], journal: _Journal) -> _BlockSet:
    """The blocks the journal lists as written (not fill) of which the destination now holds
    no chunk at all: it was deleted and made again (or emptied) since the interrupted run, so
    they are copied again rather than skipped.  Empty for a store that cannot tell absent
    chunks (dvid://, bossdb://), where only ``verify=True`` finds them.

    A few written blocks, spread over the plan, are asked first (one listing each): only when
    one of them is gone is every written block asked, so a resume of a large copy into an
    intact destination lists almost nothing (a sparse volume's absent chunks are many)."""
    out = _BlockSet(journal.done.space)
    if not has_capability(d, Capability.CHUNK_PRESENCE):
        return out
    n_written = sum(_popcount(journal.done.array(k, journal.fill)) for k in journal.done.bits)
    if not n_written:
        return out
    of = {sp.scale: sp for sp in plans}

    def gone(key: tuple[int, ...]) -> bool:
        return _stores_no_chunk(d, of[key[0]].part(key[1:]), key[0])

    step = max(1, n_written // _GONE_SAMPLE)
    sample = itertools.islice(journal.done.keys(but=journal.fill), 0, None, step)
    if not any(gone(key) for key in itertools.islice(sample, _GONE_SAMPLE + 1)):
        return out
    for key in journal.done.keys(but=journal.fill):
        if gone(key):
            out.add(key)
    return out


#: written blocks a resume asks the destination about before it asks about all of them
_GONE_SAMPLE = 8


def _copy_part(s: Remote, d: Remote, scale: int, part: Box, skip_fill: bool,
               absent: np.ndarray | None = None,
               runs: tuple[tuple[Box, ...], np.ndarray] | None = None
               ) -> tuple[int, bool, bool, int, int]:
    """Copy one block: read it from ``s``, write it to ``d`` unless it holds only the fill
    value and may stay absent (``skip_fill``: ``d`` holds nothing in the block's cells, and
    only this block writes them).  Then, too, the cells of a block written that hold only the
    fill value are left out of its write (:func:`voxgate.absence.write_sparse`): a sparse
    source's copy stays as sparse.  Returns (bytes read, whether left as fill, whether it
    holds only the fill value, the cells left absent of a block written, their bytes).
    ``absent``: the block touches only chunks absent from ``s``, which reads this voxel there
    (channels first): it is not read.  Into a store that keeps chunks of the fill value
    (``d.keeps_fill_chunks``: precomputed, for CloudVolume) a block read whole is written whole,
    fill value and all: only blocks of chunks absent from the source stay absent.  ``runs``:
    the boxes of the block to read (its runs of stored chunks) and the voxel the source reads
    in the rest (:func:`_read`)."""
    if absent is None:
        data = _read(s, part, scale, runs)
        fill = only_fill(data, d.meta)
    else:
        fill = only_fill(absent, d.meta)
        if skip_fill and fill:
            return absent.nbytes * part.size, True, True, 0, 0
        data = _filled(absent, part)
    # (a store whose peers refuse absent chunks keeps the source's stored chunks of fill value:
    # absent only where the source's are, above)
    empty = skip_fill and fill and leaves_fill_absent(d)
    left = left_bytes = 0
    if not empty:
        left, left_bytes = write_sparse(d, part, np.ascontiguousarray(data, dtype=d.meta.dtype),
                                        scale, skip_fill or None)
    return data.nbytes, empty, fill, left, left_bytes


def _read(s: Remote, part: Box, scale: int,
          runs: tuple[tuple[Box, ...], np.ndarray] | None) -> np.ndarray:
    """Block ``part`` of ``s``'s ``scale`` as one read of it gives it: read whole (``runs``
    None), or only its boxes ``runs[0]`` (runs of stored chunks), the rest ``runs[1]``, the
    voxel the source reads where a chunk is absent (channels first), bit for bit."""
    if runs is None:
        return s.read(part, scale)
    boxes, voxel = runs
    out = np.empty(voxel.shape[:-3] + tuple(part.shape), voxel.dtype)
    out[...] = voxel
    for box in boxes:
        out[(..., *box.slices(part.start))] = s.read(box, scale)
    return out


def _filled(voxel: np.ndarray, part: Box) -> np.ndarray:
    """``part`` of a block of absent chunks: the source's ``voxel`` there (channels first),
    broadcast to the block's shape (a read-only view: nothing is allocated)."""
    return np.broadcast_to(voxel, voxel.shape[:-3] + tuple(part.shape))


def _stores_no_chunk(d: Remote, part: Box, scale: int) -> bool:
    """Whether ``d`` stores no chunk touching ``part`` at ``scale`` (False when it cannot
    tell absent chunks from stored ones)."""
    if not has_capability(d, Capability.CHUNK_PRESENCE):
        return False
    sc = d.meta.scale(scale)
    absent = set(d.absent_chunks(part, scale))
    return all(g in absent for g, _ in chunk_boxes(part, sc.chunks, sc.bounds))


def _run_item(s: Remote, d: Remote, item: _Item, skip_fill: bool,
              fills: dict[int, np.ndarray],
              recheck: bool = False) -> tuple[int, bool, bool, bool, int, int]:
    """One block of the plan.  A block an earlier run finished (``item[4]``) is left as it is
    when ``d`` holds the source's voxels there, and copied again (fill included) when not.
    ``recheck`` (a rerun with verify into a destination an earlier run created): a block the
    journal does not list that ``d`` stores a chunk of was written, whole or in part, by an
    interrupted run before its journal line, so its fill is written too (the source may have
    changed since: fill left out would keep the stale chunks).
    A block of absent chunks only (``item[5]``) is not read from ``s``: it holds ``fills``'s
    voxel of its scale.  Returns (bytes read, whether left as fill, whether left as it was
    because unchanged, whether it holds only the fill value, the cells of a block written
    left absent, their bytes)."""
    scale, part = item[0], item[2]
    absent = fills[scale] if item[5] else None
    # (the runs of stored chunks of a block some of whose chunks are absent, with the voxel
    # the source reads in the others)
    runs = None if item[6] is None else (item[6], fills[scale])
    if item[4]:
        data = (_read(s, part, scale, runs) if absent is None else
                _filled(absent, part))
        if _same_voxels(data, d.read(part, scale)):
            return data.nbytes, False, True, False, 0, 0
        skip_fill = False  # the destination holds other voxels there: fill must be written
    elif skip_fill and recheck and not _stores_no_chunk(d, part, scale):
        skip_fill = False  # (written by an interrupted run, unrecorded: see above)
    # (the keywords only for such a block: _copy_part is the one call per block)
    kw: dict[str, Any] = {} if absent is None else {"absent": absent}
    if runs is not None:
        kw["runs"] = runs
    nbytes, empty, fill, left, left_bytes = _copy_part(s, d, scale, part, skip_fill, **kw)
    return nbytes, empty, False, fill, left, left_bytes


def _same_voxels(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (NaNs of a float volume included), never through a float for ids."""
    if a.shape != b.shape or a.dtype.itemsize != b.dtype.itemsize:
        return False
    return bool(np.array_equal(np.ascontiguousarray(a).view(np.uint8),
                               np.ascontiguousarray(b).view(np.uint8)))


def _copy_item(s: Remote, d: Remote, item: _Item, skip_fill: bool,
               fills: dict[int, np.ndarray],
               recheck: bool = False) -> tuple[int, bool, bool, bool, int, int]:
    """One block of a local copy (see :func:`_run_item`)."""
    return _run_item(s, d, item, skip_fill, fills, recheck)


def _copy_block(src: str, dst: str, run: str, item: _Item, skip_fill: bool,
                fills: dict[int, np.ndarray],
                recheck: bool = False) -> tuple[int, bool, bool, bool, int, int]:
    """One task of a distributed copy, on a worker (see :func:`_run_item`)."""
    return _run_item(worker_remote(src, run), worker_remote(dst, run), item, skip_fill, fills,
                     recheck)
