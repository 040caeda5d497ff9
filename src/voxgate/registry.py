"""URL scheme -> Remote class, with lazy imports, entry points and marker-file detection.

A third-party package adds a scheme with an entry point in the group ``voxgate.remotes``::

    [project.entry-points."voxgate.remotes"]
    myformat = "mypackage.remote:MyRemote"

A plugin that fails to import is reported as a warning naming it, never silently dropped and
never a crash of ``import voxgate``.  A built-in scheme (``zarr``, ``precomputed``, ...) is
never replaced by an entry point (:func:`register` does replace it), so opening one reads no
package's metadata: scanning the installed packages' entry points (importlib.metadata, ~30 ms)
happens only for a scheme that is neither built in nor registered, and for
:func:`known_schemes`.
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequestError, RemoteNotFoundError, UnknownSchemeError, redact
from .remotes.base import check_missing
from .storage import STORAGE_SCHEMES, split_url

if TYPE_CHECKING:
    from .meta import VolumeMeta
    from .remotes.base import Remote

__all__ = [
    "create_remote",
    "detect_format",
    "is_known_scheme",
    "known_schemes",
    "open_remote",
    "register",
    "resolve",
    "resolve_for_create",
    "split_url",
    "without_fragment",
]

_BUILTIN: dict[str, str] = {
    "mem": "voxgate.remotes.memory:MemoryRemote",
    "zarr": "voxgate.remotes.zarr:ZarrRemote",
    "n5": "voxgate.remotes.n5:N5Remote",
    "hdf5": "voxgate.remotes.hdf5:HDF5Remote",
    "precomputed": "voxgate.remotes.precomputed:PrecomputedRemote",
    "bossdb": "voxgate.remotes.boss:BossDBRemote",
    "dvid": "voxgate.remotes.dvid:DVIDRemote",
    "tiff": "voxgate.remotes.tiff:TiffRemote",
    "knossos": "voxgate.remotes.knossos:KnossosRemote",
    "webknossos": "voxgate.remotes.webknossos:WebknossosRemote",
    "tensorstore": "voxgate.remotes.tensorstore_spec:TensorStoreRemote",
}

_registered: dict[str, str | type[Remote]] = {}
_entry_points_loaded = False


def register(scheme: str, target: str | type[Remote]) -> None:
    """Register a Remote class (or a ``"module:Class"`` string) for ``scheme``."""
    _registered[scheme.lower()] = target


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points  # (imports email, zipfile, csv: ~20 ms)

    for ep in entry_points(group="voxgate.remotes"):
        name = ep.name.lower()
        if name in _BUILTIN:
            warnings.warn(f"the entry point {ep.name} = {ep.value!r} (group voxgate.remotes) "
                          f"names the built-in scheme {name}://, which it does not replace",
                          stacklevel=3)
            continue
        _registered.setdefault(name, ep.value)


def is_known_scheme(scheme: str) -> bool:
    """Whether ``scheme`` names a Remote: a built-in or registered one without reading the
    installed packages' entry points, any other after reading them."""
    scheme = scheme.lower()
    if scheme in _registered or scheme in _BUILTIN:
        return True
    _load_entry_points()
    return scheme in _registered


def known_schemes() -> list[str]:
    _load_entry_points()
    return sorted(set(_BUILTIN) | set(_registered))


def _load(scheme: str) -> type[Remote]:
    target = _registered.get(scheme, _BUILTIN.get(scheme))
    if target is None:
        _load_entry_points()
        target = _registered.get(scheme)
    if target is None:
        import difflib

        known = known_schemes()
        close = difflib.get_close_matches(scheme, known, n=1)
        raise UnknownSchemeError(
            f"unknown scheme {scheme + '://'!r}"
            + (f" (did you mean {close[0] + '://'!r}?)" if close else "")
            + "; known schemes: " + ", ".join(s + "://" for s in known)
        )
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = redact(f"the {scheme}:// Remote ({target}) could not be imported: {exc}")
        warnings.warn(msg, stacklevel=3)
        raise UnknownSchemeError(msg) from exc
    cls: type[Remote] = getattr(module, attr)
    return cls


_MARKERS: tuple[tuple[str, str], ...] = (
    ("datasource-properties.json", "webknossos"),
    ("knossos.conf", "knossos"),
    ("mag1/knossos.conf", "knossos"),
    ("zarr.json", "zarr"),
    (".zarray", "zarr"),
    (".zgroup", "zarr"),
    ("attributes.json", "n5"),
    ("info", "precomputed"),
)


#: what voxgate would open at a location, as the message of one holding nothing says it
_RECOGNISED = (
    "voxgate recognises a volume by its marker file, "
    + ", ".join(f"{scheme}:// ({', '.join(m for m, s in _MARKERS if s == scheme)}"
                + (", *.k.toml, *.k.conf, *.pyk.conf" if scheme == "knossos" else "") + ")"
                for scheme in dict.fromkeys(s for _, s in _MARKERS))
    + ", or a file's extension, hdf5:// (.h5, .hdf5, .hdf) and tiff:// (.tif, .tiff)")


def _holds_nothing_local(path: str) -> bool:
    """Whether the local directory ``path`` is empty but for a desktop's own files and version
    control's placeholders (.gitkeep, .gitignore, ...: storage.kvstore.VCS_PLACEHOLDERS)."""
    from .storage.kvstore import is_desktop_file, is_placeholder_file

    return all(is_desktop_file(n) or is_placeholder_file(n) for n in os.listdir(path))


def _is_knossos_conf(name: str) -> bool:
    """A KNOSSOS configuration file's name (knossos.conf itself is a marker above): NAME.k.toml,
    NAME.k.conf (the classic conf under the name knossos_utils' initialize_without_conf gives
    it), NAME.pyk.conf, NAME.pyknossos.conf, ariadne.conf."""
    return name.endswith((".k.toml", ".k.conf", ".pyk.conf", ".pyknossos.conf")) or \
        name == "ariadne.conf"


def detect_format(location: str) -> str:
    """The format scheme of a bare path or storage URL, from the marker file it holds."""
    path = without_fragment(location)
    lower = path.lower()
    if lower.endswith((".h5", ".hdf5", ".hdf")):
        return "hdf5"
    if lower.endswith((".tif", ".tiff", ".btf", ".tf8", ".tf2")):
        return "tiff"
    from .storage import check_bucket, kvstore_exists
    from .storage.kvstore import holds_nothing, left_by

    local = path.removeprefix("file://")
    if os.path.isfile(local):  # a configuration file itself
        if _is_knossos_conf(os.path.basename(local)) or os.path.basename(local) == "knossos.conf":
            return "knossos"
    elif os.path.isdir(local) and any(
        _is_knossos_conf(n) and not n.startswith("._")  # (._NAME: macOS's AppleDouble file)
        and os.path.isfile(os.path.join(local, n)) for n in os.listdir(local)
    ):
        return "knossos"
    for marker, scheme in _MARKERS:
        if kvstore_exists(path, marker):
            return scheme
    if os.path.isdir(local) and lower.rstrip("/").endswith((".n5", ".zarr")):
        # no marker of its own (an N5 root tensorstore wrote, a zarr folder of arrays): the
        # store, named by the extension, says what is there and what to open instead
        return "n5" if lower.rstrip("/").endswith(".n5") else "zarr"
    if path.startswith(("gs://", "s3://", "http://", "https://")) or os.path.exists(
        path.removeprefix("file://")
    ):
        # a missing bucket holds no marker either: name the bucket (s3:// can tell)
        check_bucket(path, f"opening {location}")
        litter = holds_nothing(path)
        if litter is not None:  # an object-storage prefix with no object under it
            raise RemoteNotFoundError(
                f"nothing is stored at {location!r}: no object's name starts with that "
                "prefix" + (f" but {', '.join(litter[:5])}{' ...' if len(litter) > 5 else ''}"
                            f", which {left_by(litter)}" if litter else "")
                + f"; {_RECOGNISED}")
        if os.path.isfile(local):  # (a .png, a .npy, a .csv: no volume voxgate reads)
            raise UnknownSchemeError(
                f"cannot tell the format of {location!r}: it is a file, and the volumes voxgate "
                "reads from one file are HDF5 (.h5, .hdf5, .hdf) and TIFF (.tif, .tiff); a "
                "zarr, N5 or precomputed volume is a directory.  If it is an HDF5 or TIFF file "
                f"under another name, say so in the URL: hdf5://{location}#/DATASET or "
                f"tiff://{location}")
        if os.path.isdir(local) and _holds_nothing_local(local):  # as an empty prefix above
            names = sorted(os.listdir(local))
            raise RemoteNotFoundError(
                f"nothing is stored at {location!r}: it is "
                + (f"a directory holding only {', '.join(names)}, which {left_by(names)}"
                   if names else "an empty directory")
                + " (a volume there has not been written yet, or the path names the wrong "
                f"folder); {_RECOGNISED}")
        raise UnknownSchemeError(
            f"cannot tell the format of {location!r}: it has none of the marker files "
            f"({', '.join(m for m, _ in _MARKERS)}, *.k.toml, *.k.conf, *.pyk.conf) and is "
            "not an .h5 file (or nothing is stored there); name the format in the URL, e.g. "
            f"zarr://{location}, precomputed://{location} or n5://{location}"
        )
    raise RemoteNotFoundError(f"{location!r} does not exist")


def without_fragment(location: str) -> str:
    """``location`` up to its ``#`` (an HDF5 file's object path follows it: ``/a/f.h5#/raw``),
    or the whole of it when ``#`` is part of a local name (``/data/run #3/em.zarr``): the part
    before the ``#`` is no file, and either the path exists as written or that part is not
    named as an HDF5 file is (.h5, .hdf5, .hdf).  (The hdf5 store refuses a ``#`` so placed
    clearly; the other stores read it as part of the name.)"""
    path, sep, _fragment = location.partition("#")
    if sep and not path.startswith(("gs://", "s3://", "http://", "https://")):
        whole, head = location.removeprefix("file://"), path.removeprefix("file://")
        if not os.path.isfile(head) and (
                os.path.exists(whole) or not head.lower().endswith((".h5", ".hdf5", ".hdf"))):
            return location
    return path


#: format schemes whose location is a local path (or a storage URL)
_PATH_SCHEMES = ("zarr", "n5", "precomputed", "hdf5", "tiff", "knossos", "webknossos")


def _check_one_slash(location: str) -> None:
    """Refuse ``zarr:/em.zarr``, a slip for ``zarr:///em.zarr`` or ``zarr://em.zarr``, which
    would otherwise name the relative path ``zarr:/em.zarr`` (a folder ``zarr:`` in the working
    directory).  fsspec reads ``file:/x`` as the absolute path /x, but voxgate's ``file://``
    handling (split_url) needs the two slashes, so no one-slash form is guessed at:
    the message names both readings.  A path of that name that exists is left to open."""
    head, sep, rest = location.partition(":")
    if not sep or not rest.startswith("/") or rest.startswith("//"):
        return
    scheme = head.lower()
    if scheme not in STORAGE_SCHEMES and not is_known_scheme(scheme):
        return
    if os.path.exists(location):  # a real relative path of that name
        return
    tail = rest.lstrip("/")
    if scheme in _PATH_SCHEMES or scheme == "file":
        meant = (f"{scheme}:///{tail} (the absolute path /{tail}) or {scheme}://{tail} "
                 f"({tail} relative to the working directory)")
        if scheme == "file":
            meant = f"file:///{tail} (the absolute path /{tail})"
    else:
        meant = f"{scheme}://{tail}"
    raise InvalidRequestError(
        f"{location} has one slash after {scheme}:; did you mean {meant}?")


#: format schemes whose Remotes name a local path as given: a relative one (or one starting
#: with ``~``) is made absolute here (precomputed:// and hdf5:// do so themselves)
_ABSOLUTE_HERE = ("zarr", "n5", "tiff", "knossos", "webknossos")


def _absolute(scheme: str, location: str) -> str:
    """``location`` of ``scheme``, a local path made absolute (against the working directory,
    ``~`` expanded): a Volume's URL, its spec, a copy's journal and a Dask worker then name
    the same place whatever their working directory."""
    if scheme in _ABSOLUTE_HERE and location and "://" not in location and \
            not location.startswith("/"):
        return os.path.abspath(os.path.expanduser(location))
    rest = location.removeprefix("file://")
    if scheme in (*_ABSOLUTE_HERE, "precomputed") and rest != location and rest and \
            not rest.startswith("/"):  # (file://em.zarr is relative too: storage.local_path)
        return "file://" + os.path.abspath(os.path.expanduser(rest))
    return location


def resolve(url: str) -> tuple[type[Remote], str]:
    """The Remote class for ``url`` and the location to pass to it."""
    scheme, location = split_url(url)
    if scheme is None:
        _check_one_slash(location)
        scheme = detect_format(location)
    return _load(scheme), _absolute(scheme, location)


def resolve_for_create(url: str) -> tuple[type[Remote], str]:
    """The Remote class that would create ``url`` and the location to pass to it: the
    scheme named in the URL, or for a bare path its extension (.h5/.hdf5/.hdf, .zarr, .n5)."""
    scheme, location = split_url(os.fspath(url))
    if scheme is None:
        _check_one_slash(location)
        lowered = without_fragment(location).lower()
        if lowered.endswith((".h5", ".hdf5", ".hdf")):
            scheme = "hdf5"
        elif lowered.rstrip("/").endswith((".zarr", ".ome.zarr")):
            scheme = "zarr"
        elif lowered.rstrip("/").endswith(".n5"):
            scheme = "n5"
        elif lowered.endswith((".tif", ".tiff", ".btf")):
            scheme = "tiff"
        else:
            raise InvalidRequestError(
                f"cannot tell which format to create at {location!r}; name it in the URL, "
                "e.g. zarr://, n5://, precomputed://, hdf5://"
            )
    return _load(scheme), _absolute(scheme, location)


_MODES = ("r", "r+")


def open_remote(url: str, *, mode: str = "r", **options: Any) -> Remote:
    """Open the Remote behind ``url`` (the layer under Volume; most users want
    :func:`voxgate.open`).

    ``missing`` ("fill" or "error") is taken here for every Remote: see :func:`voxgate.open`.
    """
    if mode not in _MODES:
        raise InvalidRequestError(f"mode must be 'r' or 'r+', got {mode!r}")
    missing = check_missing(options.pop("missing", "fill"))
    cls, location = resolve(url)
    remote = cls.open(location, mode=mode, **options)
    if missing != "fill":
        remote.set_missing(missing)
    return remote


def create_remote(
    url: str, meta: VolumeMeta, *, exist_ok: bool = False, **options: Any
) -> Remote:
    """Create the Remote at ``url`` (the layer under :func:`voxgate.create`)."""
    cls, location = resolve_for_create(url)
    target = f"{cls.__module__}:{cls.__qualname__}"
    if any(_BUILTIN[s] == target for s in _DIRECTORY_SCHEMES) or (
            split_url(url)[0] in _DIRECTORY_SCHEMES):
        _check_directory_location(location)
    return cls.create(location, meta, exist_ok=exist_ok, **options)


#: formats stored as a directory of files (a local one is refused where a file stands)
_DIRECTORY_SCHEMES = ("zarr", "n5", "precomputed", "webknossos")


def _check_directory_location(location: str) -> None:
    """Refuse a local directory-format location that is, or lies inside, a regular file."""
    if "://" in location and not location.startswith("file://"):
        return
    path = os.path.abspath(os.path.expanduser(location.removeprefix("file://")))
    probe = path
    while True:
        if os.path.exists(probe):
            if not os.path.isdir(probe):
                where = "is" if probe == path else f"lies inside {probe!r}, which is"
                raise InvalidRequestError(
                    f"cannot create a volume at {path!r}: it {where} a file, not a directory")
            return
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent
