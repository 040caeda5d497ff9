"""``tensorstore://<json>``: any array TensorStore can open, from its JSON spec.

``voxgate.open({"driver": "zarr3", "kvstore": {"driver": "ocdbt", "base": "file:///d"}})``
(a dict) or ``voxgate.open('tensorstore://{"driver": ...}')`` opens whatever TensorStore opens
— a driver voxgate does not wrap (OCDBT, zip, an in-memory array, a future format), or a spec
with its own ``transform`` — as a Volume of one scale.

Axes: the array must be 3-D (z, y, x) or 4-D with a channel axis.  Dimension labels ``x``,
``y``, ``z`` and ``c``/``channel`` name them in any order; unlabelled 3-D arrays are
``z, y, x`` and 4-D ones ``c, z, y, x``, unless ``axes="xyz"`` (or ``"czyx"``, ``"xyzc"``,
...) says otherwise.  A time dimension (labelled ``t``) is read at one time point, the
``time`` open option (an index along it; required when it is longer than 1).  Other
dimensions of length 1 are dropped.

Geometry: ``voxel_size`` (z, y, x, nm) and ``kind`` are open options, for specs that have none;
without them the voxel size comes from the array's ``dimension_units`` (zarr3, N5 and
precomputed keep them) or is 1 nm, and the kind is guessed from the dtype.  The offset is the
array's domain origin, or the ``offset`` option (which moves it).  Reads and writes go as the
driver allows (a zip kvstore is read only).

``voxgate.create('tensorstore://<json>', ...)`` creates the array with TensorStore's
driver-neutral schema: dtype, shape, chunk shape, labels and ``dimension_units`` from the
voxel size (zarr v2 keeps none); an offset only where the driver can store a domain origin.
A spec's own open-mode members (``create``, ``delete_existing``, ``open``, ...) are refused:
voxgate chooses how it opens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorstore as ts

from ..errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    ReadOnlyError,
    RemoteExistsError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    VoxgateError,
    redact,
)
from ..geometry import Box, Vec, VoxelSize
from ..meta import Kind, Scale, VolumeMeta
from ..storage import (
    check_spec_buckets,
    length_unit_nm,
    s3_endpoints,
    ts_context,
    ts_errors,
    with_s3_settings,
)
from ._tensorstore import TSArray, at_time_point
from .base import Capability, Remote, check_options, check_same_volume

__all__ = ["TensorStoreRemote", "spec_url"]

_CHANNEL = ("c", "channel", "ch")

#: spec members that choose how TensorStore opens: voxgate chooses (mode=, voxgate.create,
#: exist_ok=); ``delete_existing`` in a spec opened with mode="r+" deleted the array
_OPEN_MODE = ("open", "create", "delete_existing", "assume_metadata", "assume_cached_metadata")


def spec_url(spec: dict[str, Any]) -> str:
    """The ``tensorstore://`` URL of a spec (compact JSON, keys sorted)."""
    return "tensorstore://" + json.dumps(spec, sort_keys=True, separators=(",", ":"))


def _shown(location: str, n: int = 200) -> str:
    """The start of a spec for a message: credentials (http headers, tokens) redacted first,
    so the cut cannot split one where redaction no longer finds it."""
    return redact(location)[:n]


def _parse(location: str) -> dict[str, Any]:
    try:
        spec = json.loads(location)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"tensorstore:// takes a TensorStore spec as JSON, e.g. tensorstore://"
            f'{{"driver": "zarr3", "kvstore": "file:///data/a.zarr"}}; {_shown(location, 80)!r} '
            f"is not JSON ({exc})"
        ) from exc
    if not isinstance(spec, dict) or "driver" not in spec:
        raise InvalidRequestError(
            f"a TensorStore spec is a JSON object with a 'driver', got {_shown(location, 80)!r}"
        )
    # (``"open": true`` and a member set to false, as specs copied from TensorStore's docs
    # have them, ask nothing voxgate does not do: taken as they are)
    given = [m for m in _OPEN_MODE if m in spec and spec[m] is not (m == "open")]
    if given:
        raise InvalidRequestError(
            f"the TensorStore spec {_shown(location, 80)!r} has {', '.join(given)}: voxgate "
            "opens and creates the array itself (voxgate.open(..., mode='r+'), "
            "voxgate.create(..., exist_ok=True)); leave those members out"
        )
    try:  # a spec TensorStore cannot parse (an unknown driver, a stray member) is bad input
        ts.Spec(spec)
    except ValueError as exc:
        raise InvalidRequestError(
            f"TensorStore does not accept the spec {_shown(location)}: {exc}"
        ) from None
    return spec


def _on_zip(spec: dict[str, Any]) -> bool:
    """Whether the spec's kvstore is, or sits on, a zip archive (TensorStore documents its zip
    kvstore as read only; yet it rewrites the archive when written to)."""
    try:
        kv = ts.Spec(spec).kvstore
    except ValueError:
        return False
    node: Any = kv.to_json() if kv is not None else None
    while isinstance(node, dict):
        if node.get("driver") == "zip":
            return True
        node = node.get("base")
    return False


def _spec_refused(exc: ValueError) -> bool:
    """Whether TensorStore refused a spec itself (INVALID_ARGUMENT, whose text has no status
    code, or FAILED_PRECONDITION: a spec that contradicts the array), not its storage (a
    FAILED_PRECONDITION "Error reading <file>: ..." is a stored file that is not what its
    format says: corrupt, as the callers answer it)."""
    text = str(exc)
    code = text.split(":", 1)[0].strip()
    if code == "FAILED_PRECONDITION":
        return "Error reading " not in text
    return not code.isupper() or code == "INVALID_ARGUMENT"


def _check_labels(where: str, stated: Sequence[str], taken: Sequence[str], by: str) -> None:
    """Refuse axes ``taken`` (by ``by``) that contradict the array's own dimension labels."""
    for have, want in zip(stated, taken, strict=True):
        if have and have != want and not (have in _CHANNEL and want in _CHANNEL):
            raise InvalidRequestError(
                f"{where} labels its dimensions {list(stated)}, which contradicts {by} "
                f"({list(taken)}); leave axes= out, or open a view whose labels agree"
            )


def _unkept(spec: dict[str, Any], meta: VolumeMeta) -> dict[str, Any]:
    """The open options a created array needs for what its driver does not store: zarr v2
    keeps no dimension_units, so the voxel size it was created with (nm) is given as
    ``voxel_size=`` (it travels with the Volume); without it the array read as 1 nm voxels."""
    if spec["driver"] != "zarr":
        return {}
    vs = meta.scales[0].voxel_size
    f = length_unit_nm(vs.unit) or 1.0
    return {"voxel_size": tuple(v * f for v in vs.zyx())}


def _kind(value: object, dtype: np.dtype[Any]) -> Kind:
    if value is None:
        return "segmentation" if dtype.kind in "ui" and dtype.itemsize >= 4 else "image"
    if value not in ("image", "segmentation"):
        raise InvalidRequestError(f"kind must be 'image' or 'segmentation', got {value!r}")
    return value


class TensorStoreRemote(Remote):
    scheme = "tensorstore"
    open_options = ("voxel_size", "kind", "offset", "axes", "time")
    create_options = ()

    def __init__(self, spec: dict[str, Any], meta: VolumeMeta, arr: TSArray, mode: str,
                 options: dict[str, Any]) -> None:
        self.ts_spec = spec
        self.meta = meta
        self.mode = mode
        self.url = spec_url(spec)
        self._arr = arr
        self._options = options

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> TensorStoreRemote:
        check_options("tensorstore://", options, cls.open_options)
        spec = _parse(location)
        if mode == "r+" and _on_zip(spec):
            raise ReadOnlyError(
                f"{_shown(location)} is in a zip archive, which voxgate can only read"
            )
        # a bucket this process has not reached yet: one quick probe first, so an endpoint
        # that does not answer fails in about a second (tensorstore's own open retries it for
        # minutes)
        check_spec_buckets(spec, f"opening {_shown(location)}", first_contact_only=True)
        try:
            store = cls._open_store(spec, location, mode)
        except RemoteUnavailableError as exc:
            # which server did not answer (the probe above says it on a first contact only)
            where = [w for w in s3_endpoints(spec) if w not in str(exc)]
            if not where:
                raise
            raise RemoteUnavailableError(f"{exc} (s3 at {', '.join(where)})") from None
        return cls._from_store(spec, store, mode, options)

    @classmethod
    def _open_store(cls, spec: dict[str, Any], location: str, mode: str) -> Any:
        with ts_errors(f"opening the TensorStore spec {_shown(location)}"):
            try:
                # (s3 kvstores go where s3:// locations go: VOXGATE_S3_ENDPOINT; the spec
                # kept, and reopened from the URL, is the one given)
                store = ts.open(with_s3_settings(spec), read=True, write=mode == "r+",
                                context=ts_context()).result()
            except ValueError as exc:
                if "NOT_FOUND" in str(exc):
                    # a missing bucket says so (whether or not this process had reached the
                    # bucket before, which decides the probe above)
                    check_spec_buckets(spec, f"opening {_shown(location)}")
                    # (tensorstore's text holds the spec: the cause is left out, ours has it
                    # redacted)
                    raise RemoteNotFoundError(
                        f"TensorStore finds no array for {_shown(location)}: {exc}"
                    ) from None
                if _spec_refused(exc):
                    raise InvalidRequestError(
                        f"TensorStore cannot open the spec {_shown(location)}: {exc}"
                    ) from None
                raise
        return store

    @classmethod
    def _from_store(cls, spec: dict[str, Any], store: ts.TensorStore, mode: str,
                    options: dict[str, Any]) -> TensorStoreRemote:
        where = "the TensorStore array " + _shown(json.dumps(spec))
        labels = [(n or "").lower() for n in store.domain.labels]
        given = options.get("axes")
        if given is not None:
            if not isinstance(given, str) or len(given) != store.rank:
                raise InvalidRequestError(
                    f"axes must be a string of {store.rank} letters (x, y, z and c), got "
                    f"{given!r}"
                )
            stated = labels
            labels = ["c" if a in "cC" else a.lower() for a in given]
            _check_labels(where, stated, labels, f"axes={given!r}")
        elif not {"x", "y", "z"} <= set(labels):
            if store.rank not in (3, 4):
                raise InvalidRequestError(
                    f"{where} has {store.rank} unlabelled dimensions; voxgate opens 3-D "
                    "(z, y, x) and 4-D (c, z, y, x) arrays, or name them with axes='...'"
                )
            stated = labels
            labels = ["z", "y", "x"] if store.rank == 3 else ["c", "z", "y", "x"]
            # (a dimension labelled x taken for z, unsaid)
            _check_labels(where, stated, labels, f"the unlabelled default {''.join(labels)!r}")
        if not {"x", "y", "z"} <= set(labels):
            raise InvalidRequestError(f"{where} has axes {labels}; x, y and z are needed")
        twice = sorted(a for a in "xyz" if labels.count(a) > 1)
        if twice:
            raise InvalidRequestError(f"{where} has axes {labels}: {', '.join(twice)} twice")
        chans = [n for n in labels if n in _CHANNEL]
        if len(chans) > 1:
            raise InvalidRequestError(f"{where} has more than one channel axis: {labels}")
        # (a time axis read at the time point ``time`` names; other extra ones of length 1)
        view, left, points = at_time_point(store, labels, ("x", "y", "z", *chans),
                                           options.get("time"), where)
        order = [left.index(a) for a in (*chans, "z", "y", "x")]
        if order != list(range(len(order))):
            view = view[ts.d[order].transpose[:]]
        lead = 1 if chans else 0
        if options.get("offset") is not None:
            offset = Vec.of(options["offset"], "offset")
            view = view[ts.d[:].translate_to[(*([0] * lead), *offset)]]
        else:
            offset = Vec(*(int(v) for v in view.domain.origin[lead:]))
        if chans and view.domain.origin[0] != 0:
            view = view[ts.d[0].translate_to[0]]
        shape = Vec(*(int(v) for v in view.shape[lead:]))
        channels = int(view.shape[0]) if chans else 1
        dtype = np.dtype(view.dtype.numpy_dtype)
        layout = view.chunk_layout.read_chunk.shape
        chunks = Vec(*(int(n or 64) for n in layout[lead:])) if layout else Vec(64, 64, 64)
        chunks = Vec(*(min(c, max(1, s)) for c, s in zip(chunks, shape, strict=True)))
        if options.get("voxel_size") is not None:
            vs = VoxelSize.of(options["voxel_size"])
            # (the option is for arrays that state no voxel size: one that says otherwise is
            # a contradiction, not a choice)
            units = list(view.dimension_units)[lead:]
            for axis, size, u in zip("zyx", vs.zyx(), units, strict=True):
                f = length_unit_nm(u.base_unit) if u is not None and u.base_unit else None
                if u is not None and f is not None and not math.isclose(
                        size, float(u.multiplier) * f):
                    raise InvalidRequestError(
                        f"voxel_size={tuple(vs.zyx())} contradicts the dimension_units of "
                        f"{where} ({axis}: {u}); leave voxel_size out"
                    )
        else:
            vs = cls._units(view, lead)
        meta = VolumeMeta(dtype, (Scale(0, shape, chunks, vs, offset, str(spec["driver"])),),
                          _kind(options.get("kind"), dtype), channels, 0)
        arr = TSArray(view, reversed_axes=False, channel=bool(chans), keep_channel=channels > 1,
                      name=where)
        arr.time_points = points
        kept = {k: v for k, v in options.items() if v is not None}
        if "time" in kept:  # (an int: a numpy integer is no JSON value, and spec() is one)
            kept["time"] = int(kept["time"])
        remote = cls(spec, meta, arr, mode, kept)
        remote._time_points_are(points)
        return remote

    @staticmethod
    def _units(view: ts.TensorStore, lead: int) -> VoxelSize:
        out = []
        for u in list(view.dimension_units)[lead:]:
            if u is None:
                out.append(1.0)
                continue
            f = length_unit_nm(u.base_unit) if u.base_unit else 1.0
            if f is None:
                raise InvalidRequestError(
                    f"dimension unit {u} is not a length voxgate knows; pass voxel_size=(z, y, x)"
                )
            out.append(float(u.multiplier) * f)
        return VoxelSize(out[0], out[1], out[2])

    @classmethod
    def exists(cls, location: str) -> bool:
        try:
            # (time 0: a timelapse, which needs time= to open, is there as much as an array
            # with no time axis, which takes 0)
            cls.open(location, time=0)
        except RemoteNotFoundError:
            return False
        return True

    @classmethod
    def create(cls, location: str, meta: VolumeMeta, *, exist_ok: bool = False,
               **options: Any) -> TensorStoreRemote:
        check_options("tensorstore://", options, cls.create_options)
        spec = _parse(location)
        if _on_zip(spec):
            raise ReadOnlyError(
                f"{_shown(location)} is in a zip archive, which voxgate can only read"
            )
        if cls.exists(location):
            if not exist_ok:
                raise RemoteExistsError(
                    f"TensorStore opens an array at {_shown(location)} already (pass "
                    "exist_ok=True to open it)"
                )
            existing = cls.open(location, mode="r+", **_unkept(spec, meta))
            check_same_volume(existing.meta, meta, _shown(location))
            return existing
        if len(meta.scales) > 1:
            raise CapabilityNotSupportedError(
                "a TensorStore spec names one array: create it with num_scales=1"
            )
        if spec["driver"] == "neuroglancer_precomputed":
            # (its arrays are x, y, z, channel with a scale's own metadata around them)
            raise CapabilityNotSupportedError(
                "create neuroglancer precomputed volumes with precomputed://PATH (voxgate "
                "writes the info file, scales and encodings); a tensorstore:// spec of that "
                "driver opens one that exists"
            )
        sc = meta.scales[0]
        nc = meta.num_channels
        lead = [nc] if nc > 1 else []
        labels = (["c"] if nc > 1 else []) + ["z", "y", "x"]
        unit = sc.voxel_size.unit
        units = ([[1, ""]] if nc > 1 else []) + [[v, unit] for v in sc.voxel_size.zyx()]
        domain = ts.IndexDomain(inclusive_min=[*([0] * len(lead)), *sc.offset],
                                shape=[*lead, *sc.shape], labels=labels)
        kw: dict[str, Any] = {
            "dtype": ts.dtype(meta.dtype.name), "domain": domain,
            "chunk_layout": ts.ChunkLayout(chunk_shape=[*lead, *sc.chunks]),
        }
        if spec["driver"] != "zarr":  # (zarr v2 keeps no units: open it with voxel_size=)
            kw["dimension_units"] = units
        if spec["driver"] != "n5":  # (N5 has no fill value: absent chunks read as 0)
            kw["fill_value"] = np.zeros((), meta.dtype)
        # tensorstore retries the 404 of a missing bucket on its metadata write forever
        check_spec_buckets(spec, f"creating {_shown(location)}")
        try:
            with ts_errors(f"creating {_shown(location)}"):
                ts.open(with_s3_settings(spec), create=True, context=ts_context(),
                        **kw).result()
        except VoxgateError as exc:
            if any(sc.offset) and "bounds" in str(exc).lower():
                raise InvalidRequestError(
                    f"the {spec['driver']} driver cannot store an offset {tuple(sc.offset)}; "
                    "create the array at the origin and open it with offset=(z, y, x)"
                ) from exc
            cause = exc.__cause__
            if type(exc) is VoxgateError and isinstance(cause, ValueError) and _spec_refused(
                    cause):
                # (a spec whose own metadata contradicts the volume: chunks, sharding)
                raise InvalidRequestError(str(exc)) from cause
            raise
        return cls.open(location, mode="r+", **_unkept(spec, meta))

    # -- data -----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.WRITE}) if self.mode == "r+" else frozenset()

    def write_grid(self, scale: int = 0) -> Vec:
        layout = self._arr.store.chunk_layout.write_chunk.shape
        if not layout:
            return self.meta.scale(0).chunks
        return Vec(*(int(n or 64) for n in layout[-3:]))

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        return self._arr.read(box)

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        self._arr.write(box, array)

    def add_scales(self, scales: Sequence[Scale]) -> None:
        raise CapabilityNotSupportedError(
            f"{self.url} names one array and holds one scale: downsample a copy in a store "
            "that keeps scales (voxgate.copy(vol, 'zarr://...') then voxgate.downsample), or "
            "open a multiscale store with its own scheme (zarr://, n5://, precomputed://)"
        )

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        if self._options:
            out["options"] = {**out.get("options", {}), **{
                k: list(v) if isinstance(v, tuple) else v for k, v in self._options.items()}}
        return out
