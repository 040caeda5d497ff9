"""The voxgate exception hierarchy.

Every error voxgate raises on purpose is a :class:`VoxgateError`.  Each subclass also inherits
the builtin exception a Python user would already catch for that situation, so
``except IndexError`` keeps working around a numpy-like read, and ``except VoxgateError``
catches everything voxgate says.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

__all__ = [
    "check_flag",
    "closest_keyword",
    "refuses_unknown_keywords",
    "unknown_keyword",
    "redact",
    "redacting_logger",
    "RedactingFilter",
    "AuthenticationError",
    "CapabilityNotSupportedError",
    "CorruptChunkError",
    "DtypeError",
    "IndexingError",
    "InvalidRequestError",
    "KEYWORD_ALIASES",
    "LazyOperationError",
    "MissingChunkError",
    "MissingDependencyError",
    "OutOfBoundsError",
    "PartialWriteError",
    "ReadOnlyError",
    "RemoteBusyError",
    "RemoteExistsError",
    "RemoteNotFoundError",
    "RemoteUnavailableError",
    "UnknownKeywordError",
    "UnknownSchemeError",
    "VoxelOrderWarning",
    "VoxgateError",
    "VoxgateWarning",
]


#: where a credential sits in a URL, a TensorStore spec (as JSON, or escaped inside
#: tensorstore's own error text) or a Python repr of options
_USERINFO = re.compile(r"(?<=://)([^/?#@:\s\"'\\{}]*)(:?)[^/?#@\s\"'\\{}]*@")
_QUERY_SECRET = re.compile(
    r"([?&;](?:access_token|token|auth|api_key|apikey|key|sig|signature|password|secret"
    r"|client_secret|x-amz-signature|x-amz-credential|x-amz-security-token"
    r"|x-goog-signature|x-goog-credential)=)[^&#\s\"'\\]+", re.IGNORECASE)
_HEADER_SECRET = re.compile(
    r"((?<![\w-])(?:proxy-authorization|authorization|cookie|set-cookie"
    r"|x-[\w-]*(?:token|key|secret|auth)[\w-]*)\s*:\s*)[^\"'\\\r\n]+", re.IGNORECASE)
_MEMBER_SECRET = re.compile(
    r"((\\?[\"'])(?:token|access_token|auth_token|bearer_token|password|secret"
    r"|client_secret|secret_access_key|aws_secret_access_key|session_token"
    r"|aws_session_token|api_key|private_key)\2\s*:\s*(\\?[\"']))[^\"'\\]*(?=\3)",
    re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` (a URL, a spec, a message) with every credential in it replaced by ``***``:
    the password of ``user:password@host`` (a bare ``token@host`` whole), token and signature
    query parameters, the values of ``Authorization``/``Cookie``/``X-...-Token`` headers and
    of ``token``/``password``/``secret...`` members.  Everything voxgate shows (a Volume's
    URL, reprs, error messages, logs, copy journals) goes through it; requests keep the
    credentials."""
    def userinfo(m: re.Match[str]) -> str:
        return f"{m.group(1)}:***@" if m.group(2) else "***@"

    text = _USERINFO.sub(userinfo, text)
    text = _QUERY_SECRET.sub(r"\1***", text)
    text = _HEADER_SECRET.sub(r"\1***", text)
    return _MEMBER_SECRET.sub(r"\1***", text)


_FORMATTER = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Takes the credentials (:func:`redact`) out of what a log record shows: its message,
    its exception's traceback with every chained exception (a third-party error, say httpx's,
    tensorstore's or an OSError, names the URL it failed on, token and all) and its stack.

    The exception object is left alone (other code still holds it): the record gets the
    redacted traceback as ``exc_text`` and no longer ``exc_info``, so no handler formats the
    original again.  On a logger it sees what is logged to that logger (not to its children);
    on a handler, everything the handler writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format: shown as its parts (logging would print them raw)
            message = f"{record.msg} {record.args!r}"
        shown = redact(message)
        if shown != message:
            record.msg, record.args = shown, ()
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = _FORMATTER.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redacting_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with a :class:`RedactingFilter` (once): voxgate logs only
    through loggers made here."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger


class VoxgateError(Exception):
    """Base class of every error voxgate raises deliberately.  Its message never holds a
    credential (:func:`redact`): errors are shown, logged and sent back by the relay."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.args = tuple(redact(a) if isinstance(a, str) else a for a in args)


class UnknownSchemeError(VoxgateError, ValueError):
    """A URL names a scheme no registered Remote handles (the message lists the known ones)."""


class InvalidRequestError(VoxgateError, ValueError):
    """A request is malformed: a bad URL, a step <= 0, a shape that does not match, a bad option."""


class UnknownKeywordError(InvalidRequestError, TypeError):
    """A keyword argument a voxgate function does not take (``chunk=`` for ``chunks=``).  Also
    a TypeError, as Python's own "unexpected keyword argument" is: ``except TypeError`` around
    a call keeps working."""


class DtypeError(VoxgateError, TypeError):
    """Data of a dtype that cannot be stored safely in the target volume."""


class RemoteNotFoundError(VoxgateError, FileNotFoundError):
    """The resource named by a URL does not exist."""


class RemoteExistsError(VoxgateError, FileExistsError):
    """``create`` was asked to make a volume where one already exists (pass ``exist_ok=True``)."""


class IndexingError(VoxgateError, IndexError):
    """An index numpy would also refuse: too many indices, ``None``/newaxis, fancy indexing."""


class OutOfBoundsError(VoxgateError, IndexError):
    """A box or index lies (partly) outside the volume and the volume's bounds mode is "error"."""


class ReadOnlyError(VoxgateError, PermissionError):
    """A write to a volume opened read-only, or to a store that cannot be written."""


class AuthenticationError(VoxgateError, PermissionError):
    """Credentials were missing or refused."""


class CorruptChunkError(VoxgateError, OSError):
    """A stored chunk could not be decoded, or a server's answer could not be understood (an
    HTML page where JSON was due, JSON without the members it must have).  ``chunk`` names
    it (a path, key or URL)."""

    def __init__(self, message: str, chunk: str | None = None) -> None:
        super().__init__(message)
        self.chunk = None if chunk is None else redact(chunk)


class MissingChunkError(VoxgateError, LookupError):
    """A read touched chunks absent from the store, on a volume opened with missing="error".

    ``chunks`` lists their chunk grid indices (z, y, x) at ``scale``: all of them, or the first
    hundred when the error came through a voxgate relay (the message names the first few);
    ``total`` is how many there are.
    """

    def __init__(
        self, message: str, chunks: Sequence[tuple[int, ...]] = (), scale: int = 0,
        total: int | None = None,
    ) -> None:
        super().__init__(message)
        self.chunks: list[tuple[int, ...]] = list(chunks)
        self.scale = scale
        self.total = len(self.chunks) if total is None else total


class LazyOperationError(VoxgateError, TypeError):
    """An operation on a lazy Volume that would read all of it behind the caller's back
    (arithmetic, numpy ufuncs, ``xr.DataArray(vol)``); the message names the explicit way
    (``vol.to_dask()``, ``vol.to_xarray()``, ``vol.read()``)."""


class MissingDependencyError(VoxgateError, ImportError):
    """An optional package a feature needs is not installed; the message names the pip extra
    that brings it (``pip install 'voxgate[notebook]'``)."""


class CapabilityNotSupportedError(VoxgateError, NotImplementedError):
    """The Remote does not offer an optional capability (server-side meshing, writes, ...)."""


class RemoteUnavailableError(VoxgateError, ConnectionError):
    """The storage system could not be reached, after retries."""


class RemoteBusyError(RemoteUnavailableError):
    """The storage is there but held by someone else for now (an HDF5 file another process
    has locked): the same request can succeed later.  The relay answers it 503, not 502."""


class PartialWriteError(VoxgateError, OSError):
    """A write failed after some chunks were already stored.

    ``written`` lists the boxes (in dataset voxel coordinates) that were stored completely, and
    ``failed`` the ones that were not, so the caller knows exactly what changed.
    """

    def __init__(self, message: str, written: Sequence[object], failed: Sequence[object]) -> None:
        super().__init__(message)
        self.written = list(written)
        self.failed = list(failed)


class VoxgateWarning(UserWarning):
    """Base class of the warnings voxgate gives (``warnings.simplefilter("error",
    VoxgateWarning)`` turns them into errors).  Its text never holds a credential
    (:func:`redact`), whether it is made here or by ``warnings.warn(text, VoxgateWarning)``."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.args = tuple(redact(a) if isinstance(a, str) else a for a in args)


class VoxelOrderWarning(VoxgateWarning):
    """A bare ``voxel_size`` triple looks like it was written (x, y, z), CloudVolume's order;
    voxgate takes (z, y, x).  Pass ``VoxelSize(z=..., y=..., x=...)`` to say which is which."""


def check_flag(value: object, name: str) -> bool:
    """``value`` if it is True or False (a numpy bool too), else InvalidRequestError: "no",
    0 or 1 is no way to say it (taken as truthy, ``strict="no"`` was strict)."""
    if type(value).__name__ not in ("bool", "bool_"):
        raise InvalidRequestError(f"{name} must be True or False, got {value!r}")
    return bool(value)


#: names other libraries (CloudVolume's mip and chunk_size, bossDB's resolution, dask's
#: n_workers) or a slip give a parameter voxgate's functions call otherwise; each is suggested
#: only where the function takes it (the first such one: mip= is scale= where both could be,
#: k= in Volume.at_scale)
KEYWORD_ALIASES: dict[str, tuple[str, ...]] = {
    "mip": ("scale", "k"), "mips": ("num_scales",), "num_mips": ("num_scales",),
    "scale": ("k",), "level": ("scale", "k"), "resolution": ("scale", "voxel_size"),
    "chunk": ("chunks", "block"), "chunks": ("block",), "chunk_size": ("chunks", "block"),
    "block_size": ("block",), "bbox": ("box",), "bounding_box": ("box",),
    "worker": ("workers", "client"), "workers": ("client",), "n_workers": ("workers", "client"),
    "num_workers": ("workers", "client"), "n_jobs": ("workers",),
    "segids": ("ids",), "segment_ids": ("ids",), "output": ("out",),
}


def closest_keyword(name: str, own: Sequence[str]) -> str | None:
    """The parameter of ``own`` that the keyword ``name`` most likely meant, or None."""
    import difflib

    close = [o for o in KEYWORD_ALIASES.get(name, ()) if o in own] or \
        difflib.get_close_matches(name, own, n=1, cutoff=0.75)
    return close[0] if close else None


def unknown_keyword(func: Callable[..., Any], names: Sequence[str], own: Sequence[str],
                    extra: str = "") -> UnknownKeywordError:
    """The refusal of the keywords ``names`` given to ``func``, which takes ``own`` (its
    private ``_x`` parameters are not listed), each with the parameter it likely meant;
    ``extra`` ends the list of what it takes."""
    public = [o for o in own if not o.startswith("_")]
    qual = func.__qualname__  # a method is named by its class: Volume.read()
    where = qual if "." in qual and "<locals>" not in qual else f"voxgate.{func.__name__}"
    named = []
    for name in names:
        close = closest_keyword(name, public)
        named.append(f"{name!r}" + (f" (did you mean {close}=?)" if close else ""))
    return UnknownKeywordError(
        f"{where}() got the unknown keyword{'s' if len(names) > 1 else ''} "
        f"{', '.join(named)}; it takes {', '.join(public)}{extra}")


_F = TypeVar("_F", bound=Callable[..., Any])


def refuses_unknown_keywords(func: _F) -> _F:
    """``func`` refusing a keyword it does not take with :class:`UnknownKeywordError` (naming
    the keyword, the parameter it likely meant and every one ``func`` takes) before it runs,
    instead of Python's bare "unexpected keyword argument".  Correct calls are passed on
    untouched; the signature, name and docstring stay ``func``'s (``functools.wraps``).

    For a function without ``**options``; one that passes its ``**options`` on to a store
    checks them with ``voxgate.remotes.base.check_keywords``."""
    import inspect  # (not at import: errors is loaded by every command, inspect is not)

    params = inspect.signature(func).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        raise TypeError(f"{func.__qualname__} takes **options; check them with check_keywords")
    own = tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    known = frozenset(own)
    if "." in func.__qualname__ and own[:1] == ("self",):
        own = own[1:]  # (a method: self is not listed)

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if kwargs and not known.issuperset(kwargs):
            raise unknown_keyword(func, [k for k in kwargs if k not in known], own)
        return func(*args, **kwargs)

    return cast(_F, checked)
