"""intern-compatible entry points: change ``from intern... import`` to this module.

```python
# from intern.remote.boss import BossRemote
# from intern.resource.boss.resource import ChannelResource
from voxgate.compat.intern import BossRemote, ChannelResource, array
```

The calls people use most keep intern's names and argument order (ranges are
``[start, stop)`` lists in x, y, z order; arrays come back (z, y, x)).  Where intern was wrong,
this is right, and docs/compat-intern.md lists every difference:

- open slices use the right axis length, negative indices and steps work, ``...`` works,
  integer indices drop the axis (numpy), length-1 axes are kept;
- writes are never dropped: an all-zero block is sent, and writes to any writable store work;
- a write's shape is checked against its box;
- ``boss_config`` is honoured by ``array`` (intern contacted the public bossDB first);
- ``get_cutout`` accepts a ``"bossdb://c/e/ch"`` string as its docs say;
- requests have timeouts and retries, big cutouts run concurrently over one pooled client;
- ``get_neuroglancer_link`` gives a link current Neuroglancer opens (JSON state, a segmentation
  layer for annotation channels, the position at the base resolution).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote

import numpy as np

from ..api import open as vopen
from ..errors import CapabilityNotSupportedError, DtypeError, InvalidRequestError, VoxgateError
from ..geometry import Box
from ..remotes.boss import BossDBRemote, BossProject, boss_settings
from ..remotes.boss.client import check_name
from ..volume import Volume

__all__ = [
    "NEUROGLANCER",
    "BossRemote",
    "ChannelResource",
    "CollectionResource",
    "CoordinateFrameResource",
    "ExperimentResource",
    "array",
]


#: the Neuroglancer that ``get_neuroglancer_link`` links to: bossDB's, which reads ``boss://``
#: sources (intern 1.4.2 linked to neuroglancer.theboss.io)
NEUROGLANCER = "https://neuroglancer.bossdb.io/"

#: intern's names of voxel units (its coordinate frames' ``voxel_unit``), by voxgate's
_INTERN_UNITS = {"nm": "nanometers", "nanometer": "nanometers", "um": "micrometers",
                 "µm": "micrometers", "micrometer": "micrometers", "mm": "millimeters",
                 "millimeter": "millimeters", "cm": "centimeters"}


@dataclass
class CollectionResource:
    name: str
    description: str = ""
    creator: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentResource:
    name: str
    collection_name: str
    coord_frame: str = ""
    description: str = ""
    num_hierarchy_levels: int = 1
    hierarchy_method: str = "anisotropic"
    num_time_samples: int = 1
    creator: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    time_step: int = 0
    time_step_unit: str = "seconds"

    @property
    def coll_name(self) -> str:
        return self.collection_name


@dataclass
class CoordinateFrameResource:
    name: str
    description: str = ""
    x_start: int = 0
    x_stop: int = 1
    y_start: int = 0
    y_stop: int = 1
    z_start: int = 0
    z_stop: int = 1
    x_voxel_size: float = 1
    y_voxel_size: float = 1
    z_voxel_size: float = 1
    voxel_unit: str = "nanometers"
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChannelResource:
    name: str
    collection_name: str
    experiment_name: str
    type: str = "image"
    description: str = ""
    default_time_sample: int = 0
    datatype: str = "uint8"
    base_resolution: int = 0
    sources: list[str] = field(default_factory=list)
    related: list[str] = field(default_factory=list)
    creator: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    downsample_status: str = ""
    cv_path: str | None = None

    @property
    def coll_name(self) -> str:
        return self.collection_name

    @property
    def exp_name(self) -> str:
        return self.experiment_name


Resource = CollectionResource | ExperimentResource | CoordinateFrameResource | ChannelResource

_P = ParamSpec("_P")
_R = TypeVar("_R")
_STATUS = re.compile(r"HTTP (\d{3})\b")


#: the mixed error classes made so far, by their parts: the voxgate error class, then each
#: class it was made an instance of too (in the order they were added)
_MIXED: dict[tuple[type[BaseException], ...], type[BaseException]] = {}


def _rebuild(parts: tuple[type[BaseException], ...], args: tuple[Any, ...],
             state: dict[str, Any]) -> BaseException:
    """An instance of the mixed class of ``parts`` (unpickling: the class is made again in
    this process from its parts, which are importable by name)."""
    cls = _mixed_class(parts)
    new = cls.__new__(cls)
    new.args = args
    new.__dict__.update(state)
    return new


def _reduce(self: BaseException) -> tuple[Any, ...]:
    # (a made class cannot be pickled by name: it is rebuilt from its parts; like every
    # exception, the traceback and cause are not kept)
    parts: tuple[type[BaseException], ...] = type(self)._voxgate_parts  # type: ignore[attr-defined]
    return _rebuild, (parts, self.args, dict(self.__dict__))


def _mixed_class(parts: tuple[type[BaseException], ...]) -> type[BaseException]:
    """The class of ``parts[0]`` that also is each of ``parts[1:]`` (its name kept, so
    messages and reprs read the same), made once per process."""
    if len(parts) == 1:
        return parts[0]
    found = _MIXED.get(parts)
    if found is not None:
        return found
    base, extra = _mixed_class(parts[:-1]), parts[-1]
    # the base whose instance layout is the larger (OSError's) must come first, whichever of
    # the two it is, or instances cannot be made
    for bases in ((base, extra), (extra, base)):
        made: type[BaseException] = type(parts[0].__name__, bases, {
            "__module__": parts[0].__module__, "__reduce__": _reduce,
            "_voxgate_parts": parts})
        try:
            made.__new__(made)
        except TypeError:
            continue
        _MIXED[parts] = made
        return made
    raise TypeError(f"no class can be both {base.__name__} and {extra.__name__}")


def _also(exc: BaseException, extra: type[BaseException]) -> BaseException:
    """A copy of ``exc`` that is also an instance of ``extra`` (its class keeps its name, so
    messages and reprs read the same; it pickles, for multiprocessing and dask)."""
    if isinstance(exc, extra):
        return exc
    parts = (*getattr(type(exc), "_voxgate_parts", (type(exc),)), extra)
    try:
        cls = _mixed_class(parts)
    except TypeError:
        return exc
    new = cls.__new__(cls)
    new.args = exc.args
    new.__dict__.update(exc.__dict__)
    new.__cause__, new.__traceback__ = exc.__cause__, exc.__traceback__
    return new


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status a server answered with, as the error (or what caused it) says, or the
    one bossDB answers to a request voxgate refused before sending it (see :func:`_answers`)."""
    seen: BaseException | None = exc
    while seen is not None:
        found = _STATUS.search(str(seen))
        if found:
            return int(found.group(1))
        seen = seen.__cause__
    status = getattr(exc, "_bossdb_status", None)
    return status if isinstance(status, int) else None


@contextlib.contextmanager
def _answers(status: int, *kinds: type[VoxgateError]) -> Iterator[None]:
    """Within: an error of ``kinds`` (InvalidRequestError unless named) raised before any
    request is one bossDB answers with ``status``; intern sends such a request and raises
    HTTPError, so the error is also an HTTPError with that status here."""
    caught: tuple[type[VoxgateError], ...] = kinds or (InvalidRequestError,)
    try:
        yield
    except caught as exc:
        if _http_status(exc) is None:
            exc._bossdb_status = status  # type: ignore[attr-defined]
        raise


def _checked_names(**names: str) -> None:
    """bossDB answers 404 to a name its URLs do not match (intern sends the request)."""
    with _answers(404):
        for what, name in names.items():
            check_name(name, what.replace("_", " "))


def _as_intern_error(exc: VoxgateError) -> BaseException:
    """``exc`` as intern's scripts catch it: an error the server answered, or that bossDB
    would answer to the request voxgate refused before sending it, is also a
    ``requests.HTTPError`` (intern's every failed request) whose ``response.status_code`` is
    the server's, when requests is installed (intern needs it, so a script that catches it has
    it)."""
    status = _http_status(exc)
    if status is None:
        return exc
    try:
        import requests
    except ImportError:  # pragma: no cover - nothing can catch requests.HTTPError then
        return exc
    new = _also(exc, requests.HTTPError)
    response = requests.Response()
    response.status_code = status
    response._content = str(exc).encode()
    new.response, new.request = response, None  # type: ignore[attr-defined]
    return new


def _intern_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Raise voxgate's errors so that intern's ``except HTTPError`` still catches them."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except VoxgateError as exc:
            raise _as_intern_error(exc) from exc.__cause__

    return wrapper


def _annotation_only(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """intern raises TypeError for ids, bounding boxes and reserved ids of an image channel
    (before sending anything); voxgate's refusal is also a TypeError here."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except CapabilityNotSupportedError as exc:
            if "annotation channel" not in str(exc):
                raise
            raise _also(exc, TypeError) from exc.__cause__

    return wrapper


def _channel_parts(resource: ChannelResource | str) -> tuple[str, str, str]:
    if isinstance(resource, str):
        text = resource.removeprefix("bossdb://").strip("/")
        parts = text.split("/")
        if len(parts) != 3:
            raise InvalidRequestError(
                f"expected 'bossdb://collection/experiment/channel', got {resource!r}")
        return parts[0], parts[1], parts[2]
    if hasattr(resource, "coll_name") and hasattr(resource, "exp_name"):
        return resource.coll_name, resource.exp_name, resource.name
    raise InvalidRequestError(f"expected a ChannelResource or a bossdb:// string, got "
                              f"{type(resource).__name__}")


def _box(x_range: Sequence[int], y_range: Sequence[int], z_range: Sequence[int]) -> Box:
    for name, r in (("x_range", x_range), ("y_range", y_range), ("z_range", z_range)):
        if len(r) != 2:
            raise InvalidRequestError(f"{name} must be [start, stop], got {r!r}")
        if r[0] > r[1]:
            # (intern's check, before any request: RuntimeError "Invalid range")
            raise _also(InvalidRequestError(f"{name} {list(r)}: its start is after its stop"),
                        RuntimeError)
    return Box((z_range[0], y_range[0], x_range[0]), (z_range[1], y_range[1], x_range[1]))


def _scale(remote: BossDBRemote, resolution: int) -> int:
    """voxgate's scale of intern's ``resolution`` (a bossDB resolution: the channel's
    base_resolution + scale); one the channel lacks is bossDB's 400 (code 1002), which intern
    gets from the server."""
    base, levels = remote.base_resolution, len(remote.meta.scales)
    with _answers(400):
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or \
                not base <= resolution < base + levels:
            raise InvalidRequestError(f"Invalid resolution {resolution!r}: {remote.url} has "
                                      f"resolutions {base}..{base + levels - 1}")
    return int(resolution) - base


class BossRemote:
    """intern's BossRemote, on voxgate's bossdb:// Remote.

    ``cfg_file_or_dict`` is a dict with ``protocol``, ``host`` and ``token`` (intern's form),
    a path to an intern-style INI file, or None for voxgate's configuration chain.

    An error the server answered is also a ``requests.HTTPError`` (with the server's
    ``response.status_code``), as intern's are, and so is one voxgate raises before sending a
    request that intern sends and bossDB refuses (a resolution or time sample the channel
    lacks, data that does not fit its box, a count of ids below 1: 400; a name bossDB's URLs do
    not match: 404); ids, bounding boxes and reserved ids of an image channel raise an error
    that is also a TypeError, and a range whose start is after its stop or a ``bb_type`` other
    than loose or tight one that is also a RuntimeError, as intern's own checks do.  These
    errors pickle (multiprocessing, dask).  ``resolution`` is bossDB's: the channel's
    base_resolution and up.
    """

    @_intern_errors
    def __init__(self, cfg_file_or_dict: Mapping[str, str] | str | None = None,
                 version: str | None = None) -> None:
        cfg = cfg_file_or_dict
        url = token = None
        if isinstance(cfg, Mapping):
            missing = {"protocol", "host", "token"} - set(cfg)
            if missing:
                raise InvalidRequestError(f"the config dict needs {sorted(missing)}")
            url, token = f"{cfg['protocol']}://{cfg['host']}", cfg["token"]
        elif isinstance(cfg, (str, os.PathLike)):
            import configparser

            parser = configparser.ConfigParser()
            if not parser.read(cfg):
                raise InvalidRequestError(f"cannot read the config file {cfg}")
            sec = parser["Default"] if parser.has_section("Default") else parser[
                parser.sections()[0]]
            url, token = f"{sec.get('protocol', 'https')}://{sec['host']}", sec.get("token")
        self._setup(url, token)

    def _setup(self, url: str | None, token: str | None) -> None:
        self.settings = boss_settings(url, token)
        self.project = BossProject(self.settings.url, self.settings.token)
        self._remotes: dict[tuple[str, str, str], BossDBRemote] = {}

    @classmethod
    def _at(cls, url: str | None, token: str | None) -> BossRemote:
        """A BossRemote on ``url`` with ``token`` (None: voxgate's configuration chain)."""
        rmt = cls.__new__(cls)
        rmt._setup(url, token)
        return rmt

    def __repr__(self) -> str:
        return f"<voxgate.compat.intern.BossRemote {self.settings.url}>"

    def _remote(self, resource: ChannelResource | str, mode: str = "r") -> BossDBRemote:
        c, e, ch = _channel_parts(resource)
        _checked_names(collection=c, experiment=e, channel=ch)
        key = (c, e, ch)
        remote = self._remotes.get(key)
        if remote is None or (mode == "r+" and remote.mode != "r+"):
            remote = BossDBRemote(self.settings, c, e, ch, mode)
            self._remotes[key] = remote
        return remote

    # -- listing and getting ---------------------------------------------------------------------
    @_intern_errors
    def list_collections(self) -> list[str]:
        return self.project.list_collections()

    @_intern_errors
    def list_experiments(self, collection_name: str) -> list[str]:
        _checked_names(collection=collection_name)
        return self.project.list_experiments(collection_name)

    @_intern_errors
    def list_channels(self, collection_name: str, experiment_name: str) -> list[str]:
        _checked_names(collection=collection_name, experiment=experiment_name)
        return self.project.list_channels(collection_name, experiment_name)

    @_intern_errors
    def list_coordinate_frames(self) -> list[str]:
        return self.project.list_coordinate_frames()

    @_intern_errors
    def get_collection(self, name: str) -> CollectionResource:
        _checked_names(collection=name)
        d = self.project.get_collection(name)
        return CollectionResource(d["name"], d.get("description", ""), d.get("creator", ""), d)

    @_intern_errors
    def get_experiment(self, coll_name: str, exp_name: str) -> ExperimentResource:
        _checked_names(collection=coll_name, experiment=exp_name)
        d = self.project.get_experiment(coll_name, exp_name)
        return ExperimentResource(
            d["name"], coll_name, d["coord_frame"], d.get("description", ""),
            d["num_hierarchy_levels"], d["hierarchy_method"], d.get("num_time_samples", 1),
            d.get("creator", ""), d, d.get("time_step") or 0,
            d.get("time_step_unit") or "seconds")

    @_intern_errors
    def get_coordinate_frame(self, name: str) -> CoordinateFrameResource:
        _checked_names(coordinate_frame=name)
        d = self.project.get_coordinate_frame(name)
        keys = ("x_start", "x_stop", "y_start", "y_stop", "z_start", "z_stop", "x_voxel_size",
                "y_voxel_size", "z_voxel_size", "voxel_unit")
        return CoordinateFrameResource(d["name"], d.get("description", ""),
                                       **{k: d[k] for k in keys}, raw=d)

    @_intern_errors
    def get_channel(self, chan_name: str, coll_name: str, exp_name: str) -> ChannelResource:
        _checked_names(collection=coll_name, experiment=exp_name, channel=chan_name)
        d = self.project.get_channel(coll_name, exp_name, chan_name)
        return ChannelResource(
            d["name"], coll_name, exp_name, d["type"], d.get("description", ""),
            d.get("default_time_sample", 0), d["datatype"], d.get("base_resolution", 0),
            list(d.get("sources", [])), list(d.get("related", [])), d.get("creator", ""), d,
            d.get("downsample_status", ""), d.get("cv_path"))

    @_intern_errors
    def get_extents(self, resource: ExperimentResource) -> list[list[int]]:
        """The experiment's coordinate frame as ``[[x_start, x_stop], [y_start, y_stop],
        [z_start, z_stop]]`` (intern's form)."""
        f = self.get_coordinate_frame(resource.coord_frame)
        return [[f.x_start, f.x_stop], [f.y_start, f.y_stop], [f.z_start, f.z_stop]]

    @_intern_errors
    def get_project(self, resource: Resource) -> Resource:
        if isinstance(resource, ChannelResource):
            return self.get_channel(resource.name, resource.collection_name,
                                    resource.experiment_name)
        if isinstance(resource, ExperimentResource):
            return self.get_experiment(resource.collection_name, resource.name)
        if isinstance(resource, CoordinateFrameResource):
            return self.get_coordinate_frame(resource.name)
        return self.get_collection(resource.name)

    # -- creating and deleting -------------------------------------------------------------------
    def _forget(self, *parts: str) -> None:
        """Drop the Remotes kept for the channels under ``parts`` (a collection, experiment or
        channel this object deletes or creates): a channel created again under a name is read
        with its own metadata, not the deleted one's."""
        for key in [k for k in self._remotes if k[: len(parts)] == parts]:
            self._remotes.pop(key).close()

    @_intern_errors
    def create_project(self, resource: Resource) -> Resource:
        p = self.project
        if isinstance(resource, CollectionResource):
            p.create_collection(resource.name, resource.description)
        elif isinstance(resource, CoordinateFrameResource):
            r = resource
            p.create_coordinate_frame(
                r.name, Box((r.z_start, r.y_start, r.x_start), (r.z_stop, r.y_stop, r.x_stop)),
                (r.z_voxel_size, r.y_voxel_size, r.x_voxel_size), unit=r.voxel_unit,
                description=r.description)
        elif isinstance(resource, ExperimentResource):
            r2 = resource
            p.create_experiment(r2.collection_name, r2.name, r2.coord_frame,
                                description=r2.description,
                                num_hierarchy_levels=r2.num_hierarchy_levels,
                                hierarchy_method=r2.hierarchy_method,
                                num_time_samples=r2.num_time_samples, time_step=r2.time_step,
                                time_step_unit=r2.time_step_unit)
        else:
            r3 = resource
            self._forget(r3.collection_name, r3.experiment_name, r3.name)
            p.create_channel(r3.collection_name, r3.experiment_name, r3.name, type=r3.type,
                             datatype=r3.datatype, description=r3.description,
                             base_resolution=r3.base_resolution, sources=tuple(r3.sources),
                             related=tuple(r3.related))
        return self.get_project(resource)

    @_intern_errors
    def delete_project(self, resource: Resource) -> None:
        p = self.project
        if isinstance(resource, ChannelResource):
            p.delete_channel(resource.collection_name, resource.experiment_name, resource.name)
            self._forget(resource.collection_name, resource.experiment_name, resource.name)
        elif isinstance(resource, ExperimentResource):
            p.delete_experiment(resource.collection_name, resource.name)
            self._forget(resource.collection_name, resource.name)
        elif isinstance(resource, CoordinateFrameResource):
            p.delete_coordinate_frame(resource.name)
        else:
            p.delete_collection(resource.name)
            self._forget(resource.name)

    # -- cutouts ---------------------------------------------------------------------------------
    @_intern_errors
    def get_cutout(self, resource: ChannelResource | str, resolution: int,
                   x_range: Sequence[int], y_range: Sequence[int], z_range: Sequence[int],
                   time_range: Sequence[int] | None = None, id_list: Iterable[int] = (),
                   no_cache: bool | None = None, access_mode: Any = None, parallel: Any = True,
                   **kwargs: Any) -> np.ndarray:
        remote = self._remote(resource)
        box = _box(x_range, y_range, z_range)
        if time_range is not None:
            t = list(time_range)
            with _answers(400):  # (bossDB's check, code 1000)
                if len(t) != 2 or not 0 <= t[0] < t[1] <= remote._samples:
                    raise InvalidRequestError(f"Invalid time range {t}: this channel's time "
                                              f"samples are 0..{remote._samples - 1}")
                # a valid range other than the remote's one sample, refused before reading
                # (bossDB would serve it): a 400 as well, so ``except HTTPError`` catches it
                if t != [remote.time, remote.time + 1]:
                    raise InvalidRequestError(
                        f"time_range {t}: this channel is read one time sample at a time; "
                        f"open it with time=... (currently {remote.time})")
        data = remote.read(box, _scale(remote, resolution))
        ids = list(id_list)
        if ids:
            data = np.where(np.isin(data, np.asarray(ids, dtype=data.dtype)), data, 0)
        if time_range is not None:
            data = data[np.newaxis]
        return data

    @_intern_errors
    def create_cutout(self, resource: ChannelResource | str, resolution: int,
                      x_range: Sequence[int], y_range: Sequence[int], z_range: Sequence[int],
                      data: np.ndarray, time_range: Sequence[int] | None = None) -> None:
        remote = self._remote(resource, "r+")
        box = _box(x_range, y_range, z_range)
        arr = np.asarray(data)
        if time_range is not None:
            if arr.ndim != 4 or arr.shape[0] != 1:  # (intern's ValueError, before sending)
                raise InvalidRequestError("with a time_range, data must be (1, z, y, x)")
            arr = arr[0]
        scale = _scale(remote, resolution)
        # what intern sends and bossDB refuses with 400: data that does not fill the box
        # (code 2002), of another datatype (2001/2002), at a resolution it does not write
        with _answers(400, InvalidRequestError, DtypeError):
            if arr.shape != tuple(box.shape):
                raise InvalidRequestError(f"data of shape {arr.shape} does not fit the "
                                          f"(z, y, x) box {tuple(box.shape)}")
            vol = Volume(remote, scale)
            vol.write(arr, box)  # safe-cast checks; zeros are sent like anything else

    # -- object services -------------------------------------------------------------------------
    @_intern_errors
    @_annotation_only
    def get_ids_in_region(self, resource: ChannelResource | str, resolution: int,
                          x_range: Sequence[int], y_range: Sequence[int],
                          z_range: Sequence[int], time_range: Sequence[int] = (0, 1)) -> list[int]:
        remote = self._remote(resource)
        box = _box(x_range, y_range, z_range)
        ids = remote.ids_in(box, _scale(remote, resolution))
        return [int(i) for i in ids]

    @_intern_errors
    @_annotation_only
    def get_bounding_box(self, resource: ChannelResource | str, resolution: int, id: int,
                         bb_type: str = "loose") -> dict[str, list[int]]:
        if bb_type not in ("loose", "tight"):  # (intern's check, before any request)
            raise _also(InvalidRequestError(f"bb_type must be either 'loose' or 'tight', not "
                                            f"{bb_type!r}"), RuntimeError)
        remote = self._remote(resource)
        box = remote.bounding_box(id, _scale(remote, resolution), tight=bb_type == "tight")
        return {"x_range": [box.start.x, box.stop.x], "y_range": [box.start.y, box.stop.y],
                "z_range": [box.start.z, box.stop.z], "t_range": [0, 1]}

    @_intern_errors
    @_annotation_only
    def reserve_ids(self, resource: ChannelResource | str, num_ids: int) -> int:
        remote = self._remote(resource)
        with _answers(400):  # (intern sends any count; bossDB refuses one below 1)
            return remote.reserve_ids(num_ids)

    @_intern_errors
    def get_neuroglancer_link(self, resource: ChannelResource | str, resolution: int,
                              x_range: Sequence[int], y_range: Sequence[int],
                              z_range: Sequence[int], **kwargs: Any) -> str:
        """A Neuroglancer link (str) showing the channel from this server, at the start of the
        region (``x_range``, ... at ``resolution``, as intern's).

        Unlike intern 1.4.2's: the state is JSON, URL-encoded (intern wrote the legacy quoted
        form), an annotation channel is a ``segmentation`` layer (intern asked for an
        ``annotation`` layer, which draws no voxels), the position is converted from
        ``resolution`` to base-resolution voxels (intern ignored ``resolution``), and the link
        opens bossDB's Neuroglancer (:data:`NEUROGLANCER`).  Neuroglancer reads the channel
        through its ``boss://`` source; a voxgate relay's index page (``/``) also gives
        ``precomputed://`` links that need no bossDB login.
        """
        c, e, ch = _channel_parts(resource)
        remote = self._remote(resource)
        meta = remote.meta
        box = _box(x_range, y_range, z_range)
        base, here = meta.scale(0).voxel_size, meta.scale(_scale(remote, resolution)).voxel_size
        position = [float(v) * (h / b) for v, h, b in
                    zip(box.start.xyz(), here.xyz(), base.xyz(), strict=True)]
        layer = {"type": "segmentation" if meta.kind == "segmentation" else "image",
                 "name": ch, "source": f"boss://{self.settings.url}/{c}/{e}/{ch}"}
        state = {"layers": [layer], "position": position, "layout": "4panel"}
        return NEUROGLANCER + "#!" + quote(json.dumps(state, separators=(",", ":")), safe="")

    # -- metadata --------------------------------------------------------------------------------
    def _meta(self, resource: Resource) -> Any:
        if isinstance(resource, ChannelResource):
            return self.project.metadata(resource.collection_name, resource.experiment_name,
                                         resource.name)
        if isinstance(resource, ExperimentResource):
            return self.project.metadata(resource.collection_name, resource.name)
        return self.project.metadata(resource.name)

    @_intern_errors
    def list_metadata(self, resource: Resource) -> list[str]:
        return list(self._meta(resource))

    @_intern_errors
    def get_metadata(self, resource: Resource, keys: Iterable[str]) -> dict[str, str]:
        md = self._meta(resource)
        return {k: md[k] for k in keys}

    @_intern_errors
    def create_metadata(self, resource: Resource, keys_vals: Mapping[str, Any]) -> None:
        md = self._meta(resource)
        existing = set(md)
        clash = sorted(set(keys_vals) & existing)
        if clash:
            raise InvalidRequestError(f"metadata keys already exist: {clash} (use update)")
        for k, v in keys_vals.items():
            md[k] = str(v)

    @_intern_errors
    def update_metadata(self, resource: Resource, keys_vals: Mapping[str, Any]) -> None:
        md = self._meta(resource)
        missing = sorted(set(keys_vals) - set(md))
        if missing:
            raise InvalidRequestError(f"metadata keys do not exist: {missing} (use create)")
        for k, v in keys_vals.items():
            md[k] = str(v)

    @_intern_errors
    def delete_metadata(self, resource: Resource, keys: Iterable[str]) -> None:
        md = self._meta(resource)
        for k in keys:
            del md[k]


class _Array:
    """intern.array's numpy-like object: indexing reads, assignment writes."""

    def __init__(self, volume: Volume, axis_order: str) -> None:
        if axis_order.upper() not in ("ZYX", "XYZ"):
            raise InvalidRequestError(f"axis_order must be 'ZYX' or 'XYZ', got {axis_order!r}")
        self._vol = volume
        self._xyz = axis_order.upper() == "XYZ"
        #: intern's attributes: the axis order and resolution the array was opened with, and
        #: (for a bossdb:// channel) its collection, experiment and channel names
        self.axis_order = axis_order
        remote = volume.remote
        #: a bossdb:// channel's resolutions are bossDB's: its base_resolution + scale
        self._base = remote.base_resolution if isinstance(remote, BossDBRemote) else 0
        self.resolution = self._base + volume.scale
        names = (getattr(remote, "collection", None), getattr(remote, "experiment", None),
                 getattr(remote, "channel", None))
        self.collection_name, self.experiment_name, self.channel_name = names

    @property
    def available_resolutions(self) -> list[int]:
        """The resolutions the array can be opened at (intern's ``available_resolutions``;
        for a bossdb:// channel bossDB's, from its base_resolution, where intern listed
        0 .. num_hierarchy_levels - 1 whatever the base)."""
        return list(range(self._base, self._base + len(self._vol.scales)))

    @property
    def downsample_status(self) -> str:
        """A bossdb:// channel's downsample status as its record says (intern's attribute)."""
        record = getattr(self._vol.remote, "channel_record", None)
        if record is None:
            raise AttributeError("downsample_status is known for bossdb:// channels only")
        return str(record.get("downsample_status", ""))

    @property
    def shape(self) -> tuple[int, ...]:
        return self._vol.shape[::-1] if self._xyz else self._vol.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._vol.dtype

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        vs = self._vol.voxel_size
        return vs.xyz() if self._xyz else vs.zyx()

    @property
    def voxel_unit(self) -> str:
        """The unit of :attr:`voxel_size` in intern's words ("nanometers", "micrometers", ...;
        a unit intern has no name for is voxgate's own name of it).  voxgate gives sizes in
        nanometres for every store, so a bossDB frame in micrometers reads as nanometers here
        with sizes 1000 times larger, the same lengths."""
        unit = self._vol.voxel_size.unit
        return _INTERN_UNITS.get(unit, unit)

    @property
    def volume(self) -> Volume:
        return self._vol

    def _key(self, key: Any) -> Any:
        if not self._xyz:
            return key
        if not isinstance(key, tuple):
            key = (key,)
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (3 - len(key))
        return key[::-1]

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self._vol[self._key(key)].read()
        return out.T if self._xyz else out

    def __setitem__(self, key: Any, value: Any) -> None:
        arr = np.asarray(value)
        self._vol[self._key(key)] = arr.T if self._xyz and arr.ndim else arr

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:  # numpy 2: refuse when a copy cannot be avoided (every read is one)
            raise InvalidRequestError(
                "np.asarray(array, copy=False): every read of this array makes a new one; "
                "use np.asarray(array) or array[...]")
        return self[...] if dtype is None else self[...].astype(dtype)


def _bossdb_parts(url: str) -> tuple[str | None, str, str, str, int | None]:
    """``bossdb://[server/]c/e/ch[/resolution]`` -> (server, c, e, ch, resolution or None):
    intern's array takes a resolution as a fourth part."""
    text = url[len("bossdb://"):]
    server = None
    if text.startswith(("http://", "https://")):
        scheme, _, rest = text.partition("://")
        host, _, text = rest.partition("/")
        server = f"{scheme}://{host}"
    parts = [p for p in text.split("/") if p]
    res = None
    if len(parts) == 4 and parts[3].isdigit():
        res = int(parts.pop())
    if len(parts) < 3:
        raise InvalidRequestError(
            f"expected 'bossdb://collection/experiment/channel[/resolution]', got {url!r}")
    if server is not None and len(parts) > 3:  # a server with a path prefix
        server += "/" + "/".join(parts[:-3])
        parts = parts[-3:]
    if len(parts) != 3:
        raise InvalidRequestError(
            f"expected 'bossdb://collection/experiment/channel[/resolution]', got {url!r}")
    return server, parts[0], parts[1], parts[2], res


def _create_new(rmt: BossRemote, c: str, e: str, ch: str, *, description: str | None,
                dtype: str | None, extents: Sequence[int] | None,
                voxel_size: Sequence[float] | None, voxel_unit: str | None,
                downsample_levels: int, downsample_method: str | None,
                coordinate_frame_name: str | None, coordinate_frame_desc: str | None,
                collection_desc: str | None, experiment_desc: str | None,
                source_channel: str | None) -> None:
    """intern's ``array(..., create_new=True)``: make whichever of the collection, coordinate
    frame, experiment and channel do not exist, with intern's names and defaults (``extents``
    and ``voxel_size`` in z, y, x order)."""
    if extents is None or voxel_size is None:
        raise InvalidRequestError("create_new=True needs extents=(z, y, x) and "
                                  "voxel_size=(z, y, x) for the new coordinate frame")
    description = description or "Created with intern"
    dtype = dtype or "uint8"
    from ..errors import RemoteNotFoundError

    try:
        rmt.get_project(CollectionResource(c))
    except RemoteNotFoundError:
        rmt.create_project(CollectionResource(c, collection_desc or description))
    try:
        exp: ExperimentResource | None = rmt.get_experiment(c, e)
    except RemoteNotFoundError:
        exp = None
    if exp is None:
        frame_name = coordinate_frame_name or f"CF_{c}_{e}"
        try:
            rmt.get_coordinate_frame(frame_name)
        except RemoteNotFoundError:
            rmt.create_project(CoordinateFrameResource(
                frame_name, coordinate_frame_desc or description, 0, int(extents[2]), 0,
                int(extents[1]), 0, int(extents[0]), voxel_size[2], voxel_size[1],
                voxel_size[0], voxel_unit or "nanometers"))
        rmt.create_project(ExperimentResource(
            e, c, frame_name, experiment_desc or description, downsample_levels,
            downsample_method or "anisotropic"))
    try:
        rmt.get_channel(ch, c, e)
    except RemoteNotFoundError:
        rmt.create_project(ChannelResource(
            ch, c, e, "image" if dtype in ("uint8", "uint16") else "annotation", description,
            datatype=dtype, sources=[source_channel] if source_channel else []))


def array(channel: str | ChannelResource, resolution: int = 0, volume_provider: None = None,
          axis_order: str = "ZYX", create_new: bool = False, description: str | None = None,
          dtype: str | None = None, extents: Sequence[int] | None = None,
          voxel_size: Sequence[float] | None = None, voxel_unit: str | None = None,
          downsample_levels: int = 6, downsample_method: str | None = "anisotropic",
          coordinate_frame_name: str | None = None, coordinate_frame_desc: str | None = None,
          collection_desc: str | None = None, experiment_desc: str | None = None,
          source_channel: str | None = None, boss_config: Mapping[str, str] | None = None, *,
          mode: str | None = None, **options: Any) -> _Array:
    """intern's ``array``: a numpy-like view of a channel by URL (any voxgate URL works).

    intern's arguments, in its order.  ``bossdb://c/e/ch/RES`` names the resolution as intern's
    did (it wins over ``resolution``).  ``create_new=True`` makes whichever of the collection,
    coordinate frame (``CF_c_e`` unless named; ``extents`` and ``voxel_size`` in z, y, x
    order), experiment and channel are missing, as intern did, on bossdb:// URLs.
    ``volume_provider`` must be None: name the store by its URL instead.  ``mode`` None opens
    read-write where the store allows it and read-only otherwise.
    """
    if volume_provider is not None:
        raise InvalidRequestError("volume_provider is intern's; give the channel's URL "
                                  "(bossdb://, precomputed://, zarr://, ...) instead")
    if isinstance(channel, ChannelResource):
        channel = f"bossdb://{channel.collection_name}/{channel.experiment_name}/{channel.name}"
    if channel.startswith("bossdb://"):
        server, c, e, ch, res = _bossdb_parts(channel)
        channel = f"bossdb://{server + '/' if server else ''}{c}/{e}/{ch}"
        resolution = resolution if res is None else res
        if boss_config is not None:
            # honoured first, unlike intern, which probed the public bossDB before reading it
            if server is None:
                options.setdefault("server",
                                   f"{boss_config['protocol']}://{boss_config['host']}")
            options.setdefault("token", boss_config.get("token"))
        if create_new:
            rmt = BossRemote._at(options.get("server") or server, options.get("token"))
            _create_new(rmt, c, e, ch, description=description, dtype=dtype, extents=extents,
                        voxel_size=voxel_size, voxel_unit=voxel_unit,
                        downsample_levels=downsample_levels,
                        downsample_method=downsample_method,
                        coordinate_frame_name=coordinate_frame_name,
                        coordinate_frame_desc=coordinate_frame_desc,
                        collection_desc=collection_desc, experiment_desc=experiment_desc,
                        source_channel=source_channel)
    elif create_new:
        raise InvalidRequestError("create_new=True makes bossdb:// channels (as intern's); "
                                  "make other stores with voxgate.create")
    bossdb = channel.startswith("bossdb://")
    # a bossdb:// channel's resolution is bossDB's (base_resolution + scale, as the remote
    # methods take it): opened at scale 0, then at the scale it names
    scale = 0 if bossdb else resolution
    try:
        if mode is None:
            try:
                vol = vopen(channel, scale=scale, mode="r+", **options)
            except PermissionError:
                vol = vopen(channel, scale=scale, mode="r", **options)
        else:
            vol = vopen(channel, scale=scale, mode=mode, **options)
        if bossdb and isinstance(vol.remote, BossDBRemote):
            vol = vol.at_scale(_scale(vol.remote, resolution))
    except VoxgateError as exc:
        raise _as_intern_error(exc) from exc.__cause__
    return _Array(vol, axis_order)
