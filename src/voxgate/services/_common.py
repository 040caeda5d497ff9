"""What every Service shares: inputs (a Volume, a URL or a numpy array), the choice between
the store's server-side operation and the local kernel, provenance, block iteration."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np

from ..api import open as vopen
from ..errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    ReadOnlyError,
    RemoteExistsError,
    VoxgateError,
    VoxgateWarning,
    redact,
)
from ..geometry import Box, Vec, VoxelSize
from ..lru import make_newest
from ..meta import Scale, VolumeMeta
from ..progress import progress_bar  # one progress bar (and byte unit) for every Service
from ..registry import create_remote, resolve_for_create
from ..remotes.base import (
    COMMON_OPTIONS,
    Capability,
    Remote,
    check_keywords,
    exists_with,
    has_capability,
    opening_options,
)
from ..remotes.memory import MemoryRemote
from ..remotes.tensorstore_spec import spec_url
from ..storage import remove_tree
from ..volume import Volume

__all__ = [
    "finish_advice",
    "noting_partial_output",
    "remove_scratch",
    "ArrayResult",
    "Prefer",
    "Provenance",
    "ProvenanceLog",
    "as_volume",
    "block_boxes",
    "choose_path",
    "progress_bar",
    "region_meta",
    "resolve_created_output",
    "resolve_output",
    "scratch_remote",
    "scratch_result",
]

Prefer = Literal["auto", "server", "local"]


@dataclass(frozen=True)
class Provenance:
    """Which path produced a Service's result, and on what."""

    service: str
    path: Literal["server", "local"]
    source: str
    details: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.details.items())
        return f"Provenance({self.service}: {self.path} on {self.source}{extra})"


class ProvenanceLog:
    """The provenance of the volumes a Service wrote in this process, by URL (what its
    ``*_provenance(vol)`` answers): the last :attr:`KEPT` volumes written.  Unbounded, a
    script running a Service in a loop (a new in-memory result or output URL each time) kept
    every one of them."""

    #: how many volumes' provenance is kept (each a few hundred bytes)
    KEPT = 1024

    def __init__(self) -> None:
        self._entries: OrderedDict[str, Provenance] = OrderedDict()
        self._lock = threading.Lock()

    def __setitem__(self, url: str, prov: Provenance) -> None:
        with self._lock:
            self._entries[url] = prov
            make_newest(self._entries, url, limit=self.KEPT)

    def get(self, url: str) -> Provenance | None:
        with self._lock:
            return self._entries.get(url)

    def __len__(self) -> int:
        return len(self._entries)


_array_counter = itertools.count()
_array_lock = threading.Lock()


def as_volume(data: Any, *, voxel_size: Any = None, kind: str | None = None,
              mode: str = "r") -> Volume:
    """A Volume from a Volume, a URL / path, or a 3-D numpy array (wrapped without a copy).

    ``voxel_size`` is for a numpy array only (a store's volume has its own); ``kind``
    "segmentation" for an array needs integer labels."""
    if not isinstance(data, np.ndarray) and voxel_size is not None:
        raise InvalidRequestError(
            "voxel_size is for a numpy source; a store's volume has its own voxel size "
            f"({type(data).__name__} given)"
        )
    if isinstance(data, Volume):
        return data
    if isinstance(data, (str, os.PathLike, dict)):  # a dict: a TensorStore spec, as in open
        return vopen(data, mode=mode)
    if isinstance(data, np.ndarray):
        if data.ndim != 3:
            raise InvalidRequestError(
                f"a numpy array given to a Service must be 3-D (z, y, x), got shape {data.shape}"
            )
        if data.dtype.kind not in "biuf":
            raise InvalidRequestError(
                f"a numpy array given to a Service must hold numbers, got dtype {data.dtype}"
            )
        if kind == "segmentation" and data.dtype.kind not in "iu":
            raise InvalidRequestError(
                f"a segmentation needs integer labels, got a {data.dtype} array; convert it "
                "(e.g. arr.astype('uint64')) if its values are ids"
            )
        arr = np.ascontiguousarray(data)
        if kind is None:
            kind = "segmentation" if arr.dtype.kind in "ui" and arr.dtype.itemsize >= 4 else \
                "image"
        vs = VoxelSize.of(voxel_size if voxel_size is not None else (1, 1, 1))
        shape = Vec(*arr.shape)
        meta = VolumeMeta(arr.dtype, (Scale(0, shape, shape, vs),), kind)  # type: ignore[arg-type]
        with _array_lock:
            name = f"array-{next(_array_counter)}"
        remote = MemoryRemote.wrap(name, meta, [arr], mode="r")
        return Volume(remote)
    raise InvalidRequestError(
        f"expected a voxgate Volume, a URL, a TensorStore spec dict or a numpy array, got "
        f"{type(data).__name__}"
    )


def refuse_negative_labels(labels: np.ndarray, service: str) -> None:
    """Refuse a signed label array holding negative values: segment ids are uint64, and the
    engines under mesh and skeletonize would otherwise wrap -5 to another id (zmesh gives
    an int16 -5 the id 65531) or fail after the work is done."""
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InvalidRequestError(
            f"{service} found negative labels ({int(labels.min())}) in {labels.dtype.name} "
            "data; segment ids are uint64 (0 is background, ids 1..2**64-1)")


def scratch_remote(meta: VolumeMeta) -> MemoryRemote:
    """A writable in-memory Remote that is not registered under any mem:// name, so it is
    freed with its last reference (Services use it for results held in memory)."""
    lead = (meta.num_channels,) if meta.num_channels > 1 else ()
    arrays = [np.full(lead + tuple(s.shape), meta.fill_value, dtype=meta.dtype)
              for s in meta.scales]
    with _array_lock:
        name = f"scratch-{next(_array_counter)}"
    return MemoryRemote.wrap(name, meta, arrays, mode="r+", stored=False)


def scratch_result(target: Volume, prov: Provenance) -> ArrayResult:
    """The result held in a scratch output (:func:`resolve_output`'s for ``out=None``) as an
    array, handed over without a copy (a read of it held the result twice at the end)."""
    return ArrayResult(cast(MemoryRemote, target.remote).array(target.scale), prov)


class ArrayResult(np.ndarray):
    """A numpy array that remembers which path computed it (``.provenance``)."""

    provenance: Provenance

    def __new__(cls, arr: np.ndarray, prov: Provenance) -> ArrayResult:
        obj = np.asarray(arr).view(cls)
        obj.provenance = prov
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.provenance = getattr(obj, "provenance", None)  # type: ignore[assignment]


def region_meta(src: Volume, region: Box, dtype: Any, kind: str) -> VolumeMeta:
    """One scale covering ``region`` of ``src`` (its chunks and voxel size), for an output."""
    sc = src.scale_meta
    return VolumeMeta(np.dtype(dtype), (Scale(0, region.shape, sc.chunks, sc.voxel_size,
                                              region.start),), kind)  # type: ignore[arg-type]


def check_output_options(func: Callable[..., Any], out: Any, options: dict[str, Any]) -> None:
    """Refuse a keyword of ``func``'s ``**create_options`` that misspells one of its own
    parameters (``halos=`` for ``halo=``), rather than pass it on to ``out``'s create."""

    def store_options() -> tuple[str, ...]:
        try:
            cls = type(out.remote) if isinstance(out, Volume) else (
                resolve_for_create(os.fspath(out))[0] if isinstance(out, (str, os.PathLike))
                else None)
        except VoxgateError:
            cls = None
        return () if cls is None else (*cls.create_options, *COMMON_OPTIONS["create"])

    check_keywords(func, options, store_options)


def resolve_output(out: Any, meta: VolumeMeta, *, overwrite: bool, options: dict[str, Any],
                   check: Callable[[Volume], None], scale_of: Volume | None = None) -> Volume:
    """:func:`resolve_created_output`'s Volume."""
    return resolve_created_output(out, meta, overwrite=overwrite, options=options, check=check,
                                  scale_of=scale_of)[0]


def finish_advice(out: Any, overwrite: bool) -> str:
    """How to finish a Service's run into ``out`` that stopped part-way: an ``out=`` URL the
    failed run made (or overwrote) is refused as existing until ``overwrite=True``."""
    if isinstance(out, Volume) or overwrite:
        return "Run the same call again to write every block"
    return "Run the call again with overwrite=True to write every block"


@contextlib.contextmanager
def noting_partial_output(what: str, target: Volume, out: Any, overwrite: bool
                          ) -> Iterator[None]:
    """Whatever stops the blocks' writes into an ``out=`` store (an error, Ctrl-C) gets a
    note that the store may hold part of the result and how to finish (:func:`finish_advice`);
    an in-memory result (``out=None``) is gone with the call and gets none."""
    try:
        yield
    except BaseException as exc:
        if out is not None:
            exc.add_note(
                f"{what} into {target.url} stopped before its end: some of its blocks may "
                "have been written, the others hold what they held before (the fill value in "
                f"a store this call created).  {finish_advice(out, overwrite)}")
        raise


def resolve_created_output(out: Any, meta: VolumeMeta, *, overwrite: bool,
                           options: dict[str, Any], check: Callable[[Volume], None],
                           scale_of: Volume | None = None) -> tuple[Volume, bool]:
    """A Service's output: an in-memory scratch volume for None, the given writable Volume
    (which ``check`` accepts), or a URL created with ``meta`` (an existing one only with
    ``overwrite``; it is then checked like a given Volume).  A given or existing output must
    have the voxel size of ``scale_of``, the source, whose voxels it holds one for one (None:
    a numpy source, which has no voxel size of its own).

    With it, whether this call created the store (a URL that named none): it then holds
    nothing until the Service writes it, so its write units of only the fill value need not be
    written.  Told by the create itself, which refuses a store that exists by then (another
    process's, made since the check): never taken for a new one."""
    if out is None:
        if options:
            raise InvalidRequestError(f"options {sorted(options)} need an out= URL")
        return Volume(scratch_remote(meta)), False
    if isinstance(out, Volume):
        if out.mode != "r+":
            raise ReadOnlyError(f"{out.url} is opened read-only; it cannot hold the output")
        check(out)
        if scale_of is not None:
            vs, want = out.voxel_size, scale_of.voxel_size
            if vs.unit == want.unit and not np.allclose(vs.zyx(), want.zyx(), rtol=1e-6):
                raise InvalidRequestError(
                    f"out {out.url} has voxels of {vs.zyx()} {vs.unit}, the source "
                    f"{scale_of.url} {want.zyx()} {want.unit}: each output voxel is written "
                    "where the source's lies; give an output at the source's scale")
        return out, False
    if isinstance(out, dict):  # a TensorStore spec, as voxgate.create takes it
        out = spec_url(out)
    cls, location = resolve_for_create(str(out))
    # the options that reach the store (a bossdb:// token=, server=) reach it to ask whether
    # the output exists and to open it, as they reach its create
    opening = opening_options(cls, options)
    if exists_with(cls, location, opening):
        if not overwrite:
            raise RemoteExistsError(f"{out} exists; pass overwrite=True to write into it")
        return resolve_created_output(Volume(cls.open(location, mode="r+", **opening)), meta,
                                      overwrite=overwrite, options={}, check=check,
                                      scale_of=scale_of)
    # (an exist_ok=True among the options would open another process's store made since)
    return Volume(create_remote(str(out), meta, **options)), not options.get("exist_ok")


def choose_path(prefer: str, remote: Remote, capability: Capability,
                service: str) -> Literal["server", "local"]:
    """'server' when the store offers the operation and it is wanted, else 'local'."""
    if prefer not in ("auto", "server", "local"):
        raise InvalidRequestError(f"prefer must be 'auto', 'server' or 'local', got {prefer!r}")
    offered = has_capability(remote, capability)
    if prefer == "server" and not offered:
        raise CapabilityNotSupportedError(
            f"{remote.url} cannot {service} on its server (it lacks {capability.value}); use "
            "prefer='local' or 'auto'"
        )
    return "server" if offered and prefer != "local" else "local"


def whole_segment_path(path: Literal["server", "local"], prefer: str, vol: Volume,
                       what: str, verb: str) -> Literal["server", "local"]:
    """``path`` for a Service whose stored results (meshes, skeletons) are of whole segments:
    a view of part of the volume is computed locally from its region ("auto"), or refused
    (``prefer='server'``), as whole-segment results would reach outside the view."""
    if path != "server" or vol.bounds == vol.scale_meta.bounds:
        return path
    if prefer == "server":
        raise CapabilityNotSupportedError(
            f"the {what} {vol.url} stores are of whole segments, not of the view "
            f"{vol.bounds}; use prefer='local' to {verb} the view's region")
    return "local"


def block_boxes(region: Box, block: Vec) -> Iterator[Box]:
    """``region`` cut into blocks of ``block`` anchored at the region's start."""
    for z in range(region.start.z, region.stop.z, block.z):
        for y in range(region.start.y, region.stop.y, block.y):
            for x in range(region.start.x, region.stop.x, block.x):
                start = Vec(z, y, x)
                yield Box(start, start + block).intersect(region)


def remove_scratch(tmp: tempfile.TemporaryDirectory[str] | None, location: str | None,
                   what: str) -> None:
    """Remove a Service's scratch space at the end of its run: a temporary directory here, or
    a storage location (a sibling of the output, a scratch= directory).  A failure to remove
    it is a warning, never in place of the run's own error."""
    if tmp is not None:
        tmp.cleanup()
    elif location is not None:
        try:
            remove_tree(location)
        except VoxgateError as exc:
            warnings.warn(redact(f"{what} at {location}: {exc}"), VoxgateWarning, stacklevel=3)
