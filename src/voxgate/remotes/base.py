"""The Remote protocol: the small synchronous interface every storage system implements.

A Remote has ``meta`` (a VolumeMeta), ``read(box, scale)`` and, when writable,
``write(box, array, scale)``.  Boxes are in dataset voxel coordinates of that scale, (z, y, x),
and always lie inside the scale's bounds: the Volume deals with clipping and filling.  Arrays
are C-order ZYX, with a leading channel axis when ``meta.num_channels > 1``.

Everything optional is a declared capability, looked up with :func:`has_capability`.

Absent chunks: a chunk never written (or deleted) reads as the fill value by default
(``missing="fill"``, as sparse stores need).  A Remote that can tell absent chunks from stored
ones declares ``Capability.CHUNK_PRESENCE``, implements :meth:`Remote.absent_chunks`, and
honours ``missing="error"`` (set with :meth:`Remote.set_missing`, which ``voxgate.open``
calls) by calling :meth:`Remote._check_present` at the top of its ``read``.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar, cast

import numpy as np

from ..errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    MissingChunkError,
    ReadOnlyError,
    RemoteExistsError,
    closest_keyword,
    redact,
    refuses_unknown_keywords,
    unknown_keyword,
)
from ..geometry import Box, Vec
from ..meta import PyramidAnchor, Scale, VolumeMeta

__all__ = [
    "MISSING_MODES",
    "Capability",
    "Remote",
    "bisect_absent",
    "check_missing",
    "check_options",
    "check_same_volume",
    "exists_with",
    "format_chunks",
    "guard_writes",
    "has_capability",
    "notify_written",
    "open_existing",
    "opening_options",
    "on_written",
    "require_capability",
    "same_volume",
    "writes_guarded",
]

R = TypeVar("R", bound="Remote")

#: what a read does with a chunk absent from the store: read it as the fill value, or raise
MISSING_MODES = ("fill", "error")
#: how many chunks an error message or report lists before "and N more"
LISTED_CHUNKS = 10


class Capability(enum.StrEnum):
    """Optional things a Remote can do."""

    WRITE = "write"
    #: reads a box as REST requests of its own size (bossDB cuboids, DVID tiles), in
    #: parallel: one read of a large box costs fewer round trips than many small reads (the
    #: relay's cache then fetches the missing cells that tile a box in one read)
    BATCH_READ = "batch_read"
    SERVER_DOWNSAMPLE = "server_downsample"
    #: the store rebuilds its coarser scales itself from every scale-0 write, by its own rule,
    #: before the write returns (a DVID labelmap or labelarray with MaxDownresLevel >= 1):
    #: ``voxgate.downsample`` has nothing to compute there (unless told ``prefer="local"``),
    #: and edits leave the coarser scales to the store
    DERIVED_SCALES = "derived_scales"
    SERVER_MESH = "server_mesh"
    SERVER_SKELETON = "server_skeleton"
    SERVER_IDS = "server_ids"
    SERVER_BOUNDING_BOXES = "server_bounding_boxes"
    VERSIONING = "versioning"
    ADD_SCALES = "add_scales"
    #: tells absent chunks from stored ones: ``absent_chunks`` and ``missing="error"``
    CHUNK_PRESENCE = "chunk_presence"
    #: hands out unused segment ids: ``reserve_ids(count) -> first`` (bossDB reserve, DVID
    #: nextlabel); proofreading's splits take their new ids from it
    RESERVE_IDS = "reserve_ids"
    #: merges and splits segments on the server (DVID labelmap merge / split / renumber,
    #: through ``remote.labels``)
    SERVER_PROOFREAD = "server_proofread"


def check_time(time: object) -> None:
    """Refuse a ``time`` open option that is no time point: None (not given) or an integer
    from 0."""
    if time is None:
        return
    if isinstance(time, bool) or not isinstance(time, int | np.integer) or time < 0:
        raise InvalidRequestError(f"time must be a time point, an integer from 0, not {time!r}")


class Remote(abc.ABC):
    """One opened Resource of one storage system."""

    #: URL scheme this class serves, e.g. "zarr".
    scheme: ClassVar[str]
    #: keyword options ``open``/``create`` accept besides mode; anything else is rejected.
    open_options: ClassVar[tuple[str, ...]] = ()
    create_options: ClassVar[tuple[str, ...]] = ()
    #: where a coarser scale's voxels lie over the finer scale's, for the scales
    #: ``voxgate.downsample`` computes and adds (``meta.coarser_extent``): "offset" (blocks
    #: start at the scale's first voxel, as Igneous makes precomputed pyramids) or "origin"
    #: (on the grid through coordinate 0, as WEBKNOSSOS mags are)
    pyramid_anchor: PyramidAnchor = "offset"
    #: which keys of ``meta.extra`` that describe an image wherever it is kept
    #: (``channel_names``; ``omero``: names, colours, visibility, display windows) a volume
    #: this class creates has a place for: ``voxgate.copy`` tells a destination it creates
    #: only these (see :meth:`carries_extra`)
    carried_extra: ClassVar[tuple[str, ...]] = ()
    #: whether chunks holding only the fill value are to be written like any other inside the
    #: blocks a copy or a Service writes (:func:`voxgate.absence.write_sparse` leaves none
    #: out): for a format whose peers refuse absent chunks by default (CloudVolume reads a
    #: precomputed layer's absent chunk as an error unless ``fill_missing`` is set), so that
    #: a dense volume's copy, pyramid or labels stay dense.  (A block whose source chunks are
    #: all absent is another matter: absent there, absent in the result.)
    keeps_fill_chunks: ClassVar[bool] = False

    #: the time point a Remote opened at one (``time=``) would be at without the option, when
    #: its URL alone opens one (a bossDB channel's default_time_sample; 0 for an array whose
    #: time axis has one time point or that has none); None when the URL needs ``time=``.  A
    #: ``time`` equal to it chooses nothing the URL does not: it is left out of the keys of
    #: copy journals and proofreading histories (:func:`voxgate.blockwise.choosing_options`),
    #: which stay those of the URL alone, as they were before ``time=`` existed
    url_time: int | None = None

    def _time_points_are(self, points: int) -> None:
        """Set :attr:`url_time` for an array whose time axis has ``points`` time points (1
        when it has none): 0 for one, None (``time=`` needed) for several."""
        self.url_time = 0 if points <= 1 else None

    url: str
    meta: VolumeMeta
    mode: str
    #: "fill" (absent chunks read as the fill value) or "error" (MissingChunkError)
    missing: str = "fill"

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> Remote:
        """Open an existing resource.  Raises RemoteNotFoundError when there is none."""

    @classmethod
    def check_open_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse, without any I/O, ``options`` (besides ``mode`` and ``missing``) that
        :meth:`open` would refuse whatever the location holds: a name it does not take, a value
        of the wrong type, two that contradict each other.  The relay checks each channel's
        options with it when it starts, so a mistake stops it there rather than failing the
        channel's first request.  A class with rules of its own adds them here and has
        ``open`` call it."""
        check_options(f"{cls.scheme}://", options, cls.open_options, "open")

    @classmethod
    def create(
        cls, location: str, meta: VolumeMeta, *, exist_ok: bool = False, **options: Any
    ) -> Remote:
        """Make a new resource with ``meta`` and return it opened read-write."""
        raise CapabilityNotSupportedError(f"{cls.scheme}:// volumes cannot be created by voxgate")

    @classmethod
    def carries_extra(cls, meta: VolumeMeta) -> tuple[str, ...]:
        """The keys of ``meta.extra`` (of :attr:`carried_extra`) a volume of ``meta`` this
        class creates keeps; a class whose place holds them only for some volumes says so."""
        return cls.carried_extra

    @classmethod
    def create_anchor(cls, meta: VolumeMeta, options: Mapping[str, Any]) -> PyramidAnchor:
        """The ``pyramid_anchor`` of the volume ``create(location, meta, **options)`` would
        make: ``voxgate.create`` lays out ``num_scales`` on it."""
        return cls.pyramid_anchor

    @classmethod
    def create_location(cls, location: str, options: Mapping[str, Any], kind: str = "image"
                        ) -> tuple[str, dict[str, Any]]:
        """Where ``create(location, meta, **options)`` puts the volume, as a location of its
        own, and the options left to pass with it: the same unless an option names a part of
        ``location`` (a WEBKNOSSOS ``layer=`` of an existing dataset, or the layer a volume of
        ``kind`` gets there by default).  copy checks, creates, resumes and journals the
        destination there, so ``layer="seg"`` on a dataset is the copy to
        ``.../dataset/seg``."""
        return location, dict(options)

    @classmethod
    def exists(cls, location: str) -> bool:
        """Whether a resource exists at ``location`` (used by copy to decide to create)."""
        from ..errors import RemoteNotFoundError

        try:
            found = cls.open(location, mode="r")
        except RemoteNotFoundError:
            return False
        found.close()
        return True

    # -- data -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        """Read ``box`` (inside the scale's bounds) as a new C-order array."""

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        """Store ``array`` (already of the volume's dtype and the box's shape) at ``box``."""
        raise CapabilityNotSupportedError(f"{self.scheme}:// does not support writes")

    # -- absent chunks --------------------------------------------------------------------------
    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        """Grid indices (z, y, x) of the chunks touching ``box`` that are absent from the store.

        ``box`` lies inside the scale's bounds; the grid is the scale's chunk grid anchored at
        its offset.  Sorted.  Remotes with ``Capability.CHUNK_PRESENCE`` implement it.
        """
        raise CapabilityNotSupportedError(
            f"{self.url} cannot tell absent chunks from stored ones ({self.scheme}:// shows "
            "clients no chunk store: every region in bounds is answered, with the fill value "
            "where nothing was written)"
        )

    def listing_order(self, scale: int = 0) -> tuple[int, ...]:
        """The voxgate axes (0 z, 1 y, 2 x) in the order this store's chunk names list them,
        outermost first: :func:`voxgate.absence.absent_in` asks :meth:`absent_chunks` in
        pieces cut along the first, so that a listing narrowed by a name prefix reads each
        name once in all.  By default x first (a precomputed layer names its chunks
        ``x0-x1_y0-y1_z0-z1``)."""
        return (2, 1, 0)

    def set_missing(self, missing: str) -> None:
        """Choose what reads do with absent chunks: "fill" (the default) or "error"."""
        check_missing(missing)
        if missing == "error" and not has_capability(self, Capability.CHUNK_PRESENCE):
            raise CapabilityNotSupportedError(
                f"missing='error' is not available for {self.url}: {self.scheme}:// shows "
                "clients no chunk store, so an absent chunk cannot be told from one that holds "
                "the fill value; open it with missing='fill' (the default)"
            )
        self.missing = missing

    def _check_present(self, box: Box, scale: int) -> None:
        """With missing="error": raise MissingChunkError if a chunk touching ``box`` is absent."""
        absent = self.absent_chunks(box, scale)
        if absent:
            raise MissingChunkError(
                f"{len(absent)} chunk(s) of {self.url} touched by {box!r} are absent at scale "
                f"{scale}: {format_chunks(absent)}; the volume was opened with missing='error' "
                f"(open it with missing='fill' to read absent chunks as the fill value "
                f"{self.meta.fill_value})",
                chunks=absent,
                scale=scale,
            )

    # -- description ----------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset()

    def add_scales(self, scales: Sequence[Scale]) -> None:
        """Append coarser scales (their indices continue the existing ones) to the store.

        The new scales hold fill until written (``voxgate.downsample`` computes them).  Updates
        ``self.meta``.  Stores that can do this declare ``Capability.ADD_SCALES``.
        """
        raise CapabilityNotSupportedError(f"{self.url} cannot add scales to its store")

    def write_grid(self, scale: int = 0) -> Vec:
        """The block shape writes should align to: a chunk, or a whole shard where there is one."""
        return self.meta.scale(scale).chunks

    def grid_bounds(self, scale: int = 0) -> Box:
        """The box whose start anchors :meth:`write_grid` (give it to ``chunk_boxes`` /
        ``plan_blocks`` as their bounds): the scale's bounds, for stores whose chunks start at
        the volume's first voxel.  A store whose blocks lie on the grid through 0 (DVID
        blocks, bossDB cuboids) widens it down to the grid line at or below that voxel, so
        blocks planned on it never share one of the store's blocks."""
        return self.meta.scale(scale).bounds

    def spec(self) -> dict[str, Any]:
        """A JSON-able description that reopens this Remote: ``voxgate.open(**spec)``."""
        out: dict[str, Any] = {"url": self.url, "mode": self.mode}
        if self.missing != "fill":
            out["options"] = {"missing": self.missing}
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or connections; the default holds none."""

    # -- helpers for subclasses -----------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.mode != "r+":
            raise ReadOnlyError(f"{self.url} is opened read-only; open it with mode='r+' to write")

    def __repr__(self) -> str:
        return redact(f"<{type(self).__name__} {self.url} mode={self.mode!r}>")


#: called with (remote, scale) after voxgate wrote voxels of that scale through a Volume, a
#: copy or a downsample in this process (see :func:`on_written`)
_WRITTEN_HOOKS: list[Callable[[Remote, int], None]] = []


def on_written(hook: Callable[[Remote, int], None]) -> None:
    """Call ``hook(remote, scale)`` whenever this process writes voxels of a volume through a
    Volume (``vol[...] = x``, ``vol.write``), ``voxgate.copy`` or ``voxgate.downsample``: for
    caches of what a volume holds (the proofreading Service's label statistics) to forget it.
    A hook must be cheap and must not raise."""
    if hook not in _WRITTEN_HOOKS:
        _WRITTEN_HOOKS.append(hook)


def notify_written(remote: Remote, scale: int) -> None:
    """Tell the :func:`on_written` hooks that voxels of ``remote``'s ``scale`` were written
    (also after a write that failed part-way: some of it may be stored)."""
    for hook in list(_WRITTEN_HOOKS):
        hook(remote, scale)


#: called with (remote, scale) around every write through a Volume in this process (see
#: :func:`guard_writes`)
_WRITE_GUARDS: list[Callable[[Remote, int], contextlib.AbstractContextManager[Any]]] = []


def guard_writes(hook: Callable[[Remote, int], contextlib.AbstractContextManager[Any]]) -> None:
    """Hold ``hook(remote, scale)`` (a context manager) while this process writes voxels of a
    volume through a Volume (``vol[...] = x``, ``vol.write``): for a Service whose edits read
    blocks and write them back whole (proofreading) to keep such writes out of an edit in
    progress, where they would be overwritten.  A hook must be cheap and must not raise."""
    if hook not in _WRITE_GUARDS:
        _WRITE_GUARDS.append(hook)


@contextlib.contextmanager
def writes_guarded(remote: Remote, scale: int) -> Iterator[None]:
    """The :func:`guard_writes` hooks of a write of ``remote``'s ``scale``, all held."""
    with contextlib.ExitStack() as stack:
        for hook in list(_WRITE_GUARDS):
            stack.enter_context(hook(remote, scale))
        yield


@refuses_unknown_keywords
def has_capability(remote: Remote, capability: Capability | str) -> bool:
    """Whether ``remote`` declares ``capability``; the one way to ask (never ``hasattr``)."""
    return Capability(capability) in remote.capabilities


def require_capability(remote: Remote, capability: Capability | str) -> None:
    if not has_capability(remote, capability):
        raise CapabilityNotSupportedError(
            f"{remote.url} does not offer {Capability(capability).value}"
        )


#: options every store takes, handled by the registry before a Remote sees the rest
COMMON_OPTIONS = {"open": ("mode", "missing"), "create": ("exist_ok",)}

def check_keywords(func: Callable[..., Any], given: Mapping[str, Any],
                   passed_on: Sequence[str] | Callable[[], Sequence[str]] = ()) -> None:
    """Refuse a keyword in ``given`` (what ``func`` takes as ``**options`` and passes on to a
    store) that is a misspelling of one of ``func``'s own parameters (``chunk=`` for
    ``chunks=``, ``worker=`` for ``workers=``, ``mip=`` for ``scale=``) with
    UnknownKeywordError: the store would refuse it as an option of its own, naming neither
    the parameter nor ``func``.  Names in ``passed_on`` (the store's options; a function
    giving them is called only when a name is in doubt) are left to the store.  (A function
    without ``**options`` has :func:`~voxgate.errors.refuses_unknown_keywords` instead.)"""
    if not given:
        return
    import inspect

    own = [p.name for p in inspect.signature(func).parameters.values()
           if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for name in given:
        if name in own or closest_keyword(name, own) is None:
            continue
        store = [o for o in (passed_on() if callable(passed_on) else passed_on) if o not in own]
        if name in store:
            continue
        raise unknown_keyword(
            func, [name], own, f", and the store's options {', '.join(store)}" if store else "")


def check_options(
    cls_name: str, given: Mapping[str, Any], allowed: tuple[str, ...], action: str = ""
) -> None:
    """Refuse options ``cls_name`` does not know, listing the ones it accepts.

    ``allowed`` is every option the Remote's ``open`` or ``create`` takes (named parameters
    included, so the message lists them all); ``action`` ("open" or "create") adds the options
    every store takes there.  A misspelt name gets the closest accepted one as a suggestion.
    """
    unknown = sorted(set(given) - set(allowed))
    if not unknown:
        return
    accepted = [*allowed, *(o for o in COMMON_OPTIONS.get(action, ()) if o not in allowed)]
    import difflib

    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.6)
        named.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    where = f" to {action}" if action else ""
    if allowed:
        hint = f"; it accepts {', '.join(accepted)}"
    else:
        hint = f"; it takes no options of its own{where}" + (
            f" (only {', '.join(accepted)})" if accepted else ""
        )
    raise InvalidRequestError(
        f"{cls_name} got unknown option(s){where} {', '.join(named)}{hint}"
    )


def check_same_volume(existing: VolumeMeta, wanted: VolumeMeta, where: str) -> None:
    """Refuse to hand back ``existing`` for a ``create(..., exist_ok=True)`` asking for another
    volume: the dtype, shape (of scale 0) and channel count must all match.

    ``where`` names the store's volume in the message (a location's repr, ``path#name``, ...);
    a store without channels always reports 1.
    """
    if (
        existing.dtype == wanted.dtype
        and existing.shape == wanted.shape
        and existing.num_channels == wanted.num_channels
    ):
        return
    raise RemoteExistsError(
        f"{where} already holds a {existing.dtype.name} volume of shape "
        f"{tuple(existing.shape)} with {existing.num_channels} channel(s), not the "
        f"{wanted.dtype.name} {tuple(wanted.shape)} with {wanted.num_channels} asked for"
    )


def same_volume(a: Remote, b: Remote) -> bool:
    """Whether two Remotes read and write one volume: one URL at one time point (a
    timelapse's time points, opened with ``time=``, are volumes of one URL)."""
    return a.url == b.url and _time_point(a) == _time_point(b)


def _time_point(remote: Remote) -> int:
    options = remote.spec().get("options") or {}
    return int(options.get("time") or 0)


def opening_options(cls: type[Remote], options: Mapping[str, Any]) -> dict[str, Any]:
    """The ones of ``options`` (a create's or a Service's ``out=`` options) that ``cls.open``
    takes too, a bossdb:// ``token=`` or ``server=`` (not ``mode``)."""
    return {k: v for k, v in options.items() if k in cls.open_options and k != "mode"}


def exists_with(cls: type[Remote], location: str, options: Mapping[str, Any]) -> bool:
    """``cls.exists(location)``, asked with the store's open options (a token) when given:
    a destination a relay shows only to a token is looked for with it."""
    if not options:
        return bool(cls.exists(location))
    from ..errors import RemoteNotFoundError

    try:
        found = cls.open(location, mode="r", **options)
    except RemoteNotFoundError:
        return False
    found.close()
    return True


def open_existing(cls: type[R], location: str, meta: VolumeMeta, exist_ok: bool,
                  what: str) -> R:
    """What ``cls.create(location, meta, exist_ok=...)`` gives where a volume exists already:
    a RemoteExistsError unless ``exist_ok``, else the volume opened for writing, provided it
    is the one asked for (:func:`check_same_volume`).  ``what`` names the kind of store in
    the message ("an N5 dataset or multiscale group")."""
    if not exist_ok:
        raise RemoteExistsError(
            f"{what} already exists at {location!r} (pass exist_ok=True to open it)")
    existing = cast(R, cls.open(location, mode="r+"))
    check_same_volume(existing.meta, meta, repr(location))
    return existing


def check_missing(missing: object) -> str:
    """``missing`` itself when it is one of MISSING_MODES, else a clear InvalidRequestError."""
    if missing not in MISSING_MODES:
        raise InvalidRequestError(
            f"missing must be 'fill' (absent chunks read as the fill value) or 'error' "
            f"(reading an absent chunk raises MissingChunkError), got {missing!r}"
        )
    return str(missing)


def format_chunks(chunks: Sequence[Vec], limit: int = LISTED_CHUNKS,
                  total: int | None = None) -> str:
    """``(z, y, x)`` grid indices, the first ``limit`` of them, then "and N more" (of ``total``
    when given: ``chunks`` may be the first of more)."""
    shown = ", ".join(str(tuple(int(v) for v in c)) for c in chunks[:limit])
    more = (len(chunks) if total is None else total) - min(limit, len(chunks))
    return shown + (f" and {more} more" if more > 0 else "") + " (chunk grid index z, y, x)"


def bisect_absent(
    box: Box, chunks: Vec, bounds: Box, stats: Callable[[Box], tuple[bool, bool]]
) -> list[Vec]:
    """The grid indices of absent chunks touching ``box``, found by halving.

    ``stats(region)`` answers ``(none_stored, all_stored)`` for a chunk-aligned region (clipped
    to ``bounds``); a region all stored or none stored needs no further question, so a volume
    with few absent chunks costs a few queries, not one per chunk.  A chunk partly stored (of
    a store whose own chunks lie on another grid) is not absent.
    """
    origin = bounds.start
    lo = [(a - o) // c for a, o, c in zip(box.start, origin, chunks, strict=True)]
    hi = [-(-(b - o) // c) for b, o, c in zip(box.stop, origin, chunks, strict=True)]
    out: list[Vec] = []

    def region(a: Sequence[int], b: Sequence[int]) -> Box:
        start = Vec(*(o + i * c for o, i, c in zip(origin, a, chunks, strict=True)))
        stop = Vec(*(o + i * c for o, i, c in zip(origin, b, chunks, strict=True)))
        return Box(start, stop).intersect(bounds)

    def visit(a: list[int], b: list[int]) -> None:
        if any(y <= x for x, y in zip(a, b, strict=True)):
            return
        none_stored, all_stored = stats(region(a, b))
        if all_stored:
            return
        if none_stored:  # (every chunk of a..b: the indices, without a box made for each)
            out.extend(Vec._make(i) for i in itertools.product(
                *(range(x, y) for x, y in zip(a, b, strict=True))))
            return
        axis = max(range(3), key=lambda d: b[d] - a[d])
        if b[axis] - a[axis] == 1:
            # one chunk, neither all stored nor none: the store's own chunks do not lie on
            # this grid (a WEBKNOSSOS layer at an offset off its chunk grid), and this one
            # holds some stored voxels: stored (called absent, a copy wrote the fill value
            # over them and the Services skipped them: absent must be certain)
            return
        mid = (a[axis] + b[axis]) // 2
        visit(a, [*b[:axis], mid, *b[axis + 1 :]])
        visit([*a[:axis], mid, *a[axis + 1 :]], b)

    visit(lo, hi)
    return sorted(out)
