"""Key-value access to a storage location through tensorstore's kvstore drivers.

A location is a local path, file://, gs://, s3:// or http(s):// (read-only):

- ``kvstore_spec``: a location as a tensorstore kvstore spec;
- ``ts_context``: one tensorstore Context per process (``set_request_retries`` bounds how long
  networked kvstores retry);
- ``ts_errors``: tensorstore's status-string errors as voxgate errors (a chunk that does not
  decode is a CorruptChunkError naming it, never zeros);
- ``is_local``, ``local_path``, ``join``, ``split_query``: location arithmetic (an http(s)://
  location's query string stays at the end, carried onto every key under it);
- ``atomic_write``, ``read_json``, ``write_json``, ``kvstore_exists``: small documents, written
  whole or not at all on local disks;
- ``remove_tree``: a directory and everything under it (a prefix on object storage);
- ``check_bucket``, ``check_spec_buckets``: before creating on s3:// (a location, or the
  kvstores of a TensorStore spec), that the bucket exists;
- ``ranges_ignored``, ``ignores_ranges``, ``note_ranges_ignored``: an HTTP server that answers
  a ranged read with the whole file (Python's ``http.server``, many static servers).
  tensorstore refuses such an answer (``FAILED_PRECONDITION: ... was ignored by server``); the
  readers of sharded precomputed data then read whole files and cut the ranges themselves,
  and remember the server for ``RANGES_IGNORED_TTL`` seconds so that later reads skip the
  doomed ranged request.  Where no such fallback exists (a zarr v3 shard, which tensorstore
  reads by range itself) the error says what is wrong and what to do
  (CapabilityNotSupportedError), not that a chunk could not be decoded.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import tensorstore as ts

from ..errors import (
    AuthenticationError,
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    VoxgateError,
    redact,
)

__all__ = [
    "GCS_FIRST_CONTACT_RETRIES",
    "WRITE_FILE_IO_CONCURRENCY",
    "atomic_write",
    "check_bucket",
    "check_spec_buckets",
    "gcs_credentials",
    "DESKTOP_FILES",
    "VCS_PLACEHOLDERS",
    "holds_nothing",
    "is_desktop_file",
    "is_placeholder_file",
    "left_by",
    "is_local",
    "join",
    "kvstore_exists",
    "kvstore_spec",
    "local_path",
    "json_object",
    "RANGES_IGNORED_TTL",
    "ignores_ranges",
    "note_ranges_ignored",
    "ranges_ignored",
    "read_json",
    "remove_tree",
    "s3_settings",
    "set_copy_concurrency",
    "set_request_retries",
    "split_query",
    "ts_context",
    "ts_errors",
    "ts_write_context",
    "with_s3_settings",
    "write_json",
]

_context: ts.Context | None = None
_write_context: tuple[ts.Context, ts.Context] | None = None  # (its parent, the child)
_context_lock = threading.Lock()
_retries: dict[str, Any] | None = None
#: tensorstore's resources holding the retry policy of each networked kvstore
_RETRY_RESOURCES = ("http_request_retries", "gcs_request_retries", "s3_request_retries")


_copy_limit: int | None = None


def set_copy_concurrency(limit: int | None) -> None:
    """How many threads tensorstore may use in this process to decode, encode and copy chunks
    (None: one per core, at least 2).  Stores opened afterwards use it; a dask worker running
    block-wise work sets its own thread count, so its processes do not each take every core."""
    global _context, _copy_limit
    with _context_lock:
        if limit != _copy_limit:
            _copy_limit, _context = limit, None


def ts_context() -> ts.Context:
    """One tensorstore Context per process: a shared cache pool and concurrency limits."""
    global _context
    with _context_lock:
        if _context is None:
            # file reads keep tensorstore's own limit, max(4, cores): on 2 cores, 32 threads
            # woken for the 27 chunk files of one unaligned 128^3 cutout cost about 7% of its
            # time (benchmarks/README.md, issue 15 item 6); writes have their own context
            spec: dict[str, Any] = {
                "cache_pool": {"total_bytes_limit": 0},
                "data_copy_concurrency": {"limit": _copy_limit or max(2, os.cpu_count() or 2)},
            }
            if _retries is not None:
                spec.update({name: dict(_retries) for name in _RETRY_RESOURCES})
            _context = ts.Context(spec)
        return _context


#: local files written at once by one process's tensorstore writes (``ts_write_context``)
WRITE_FILE_IO_CONCURRENCY = 32


def ts_write_context() -> ts.Context:
    """A child of :func:`ts_context` for handles that write local files: up to
    ``WRITE_FILE_IO_CONCURRENCY`` files written at once.  Every chunk file written ends in an
    fsync (tensorstore's ``file_io_sync``), so a write of many chunks waits on the disk, not on
    the cores, and overlapping those waits is what makes it fast: a whole-volume write took
    about 25% longer with tensorstore's default limit (max(4, cores)).  Reads, which the disk
    cache usually answers, keep that default (:func:`ts_context`).  Handles in this context
    share the parent's cache pool and copy threads, so they see the same chunks."""
    global _write_context
    parent = ts_context()
    with _context_lock:
        if _write_context is None or _write_context[0] is not parent:
            child = ts.Context({"file_io_concurrency": {"limit": WRITE_FILE_IO_CONCURRENCY}},
                               parent=parent)
            _write_context = (parent, child)
        return _write_context[1]


def set_request_retries(max_retries: int, initial_delay: float, max_delay: float) -> None:
    """Bound how long tensorstore retries a failed HTTP, GCS or S3 request.

    Its default (32 retries, delays growing to 32 s) waits out a dead server for minutes; a
    server in front of upstreams (the relay) wants a refused connection to fail in about a
    second.  Applies to stores opened afterwards.
    """
    global _context, _retries
    with _context_lock:
        _retries = {"max_retries": int(max_retries), "initial_delay": f"{initial_delay:g}s",
                    "max_delay": f"{max_delay:g}s"}
        _context = None


#: the first request to a gs:// bucket is retried this few times: a bucket that cannot be
#: reached at all (no network, a name that does not resolve) fails in about a second, not after
#: tensorstore's 32 retries; once a bucket has answered, the usual retries apply
GCS_FIRST_CONTACT_RETRIES = {"max_retries": 2, "initial_delay": "0.2s", "max_delay": "1s"}
_probe_context: ts.Context | None = None
_buckets_reached: set[str] = set()


def _gcs_bucket(location: str) -> str | None:
    parsed = urlparse(location)
    return parsed.netloc if parsed.scheme == "gs" else None


def gcs_credentials() -> str:
    """Where tensorstore will find Google credentials, in words ("none" when it will send
    unauthenticated requests, which only public buckets answer).

    Raises AuthenticationError at once when ``GOOGLE_APPLICATION_CREDENTIALS`` names a file
    that cannot be read: tensorstore would otherwise drop to unauthenticated requests
    silently.
    """
    if os.environ.get("GOOGLE_AUTH_TOKEN_FOR_TESTING"):
        return "GOOGLE_AUTH_TOKEN_FOR_TESTING"
    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if named:
        if not os.access(named, os.R_OK) or not os.path.isfile(named):
            raise AuthenticationError(
                f"GOOGLE_APPLICATION_CREDENTIALS is {named!r}, which is not a readable file; "
                "point it at a service-account or user credentials JSON file, or unset it to "
                "use `gcloud auth application-default login` credentials"
            )
        return f"GOOGLE_APPLICATION_CREDENTIALS ({named})"
    config = os.environ.get("CLOUDSDK_CONFIG") or os.path.join(
        os.path.expanduser("~"), ".config", "gcloud")
    adc = os.path.join(config, "application_default_credentials.json")
    if os.path.isfile(adc):
        return f"gcloud application-default credentials ({adc})"
    return (f"none (GOOGLE_APPLICATION_CREDENTIALS is unset and {adc} does not exist; off "
            "Google Compute Engine requests go unauthenticated, which only public buckets "
            "allow)")


def _context_for(location: str) -> ts.Context:
    """The shared context, or for a gs:// bucket (or an http(s):// or s3:// host) not reached
    yet in this process, one that retries its first request only a few times."""
    global _probe_context
    key = _first_contact_key(location)
    if key is None or key in _buckets_reached:
        return ts_context()
    if _gcs_bucket(location) is not None:
        gcs_credentials()  # a broken GOOGLE_APPLICATION_CREDENTIALS fails before any request
    with _context_lock:
        if _probe_context is None:
            _probe_context = ts.Context({name: dict(GCS_FIRST_CONTACT_RETRIES)
                                         for name in _RETRY_RESOURCES})
        return _probe_context


def _first_contact_key(location: str) -> str | None:
    """The bucket or host whose first request gets few retries: a gs:// bucket, or an
    http(s):// or s3:// host unless ``set_request_retries`` chose the policy (the relay)."""
    parsed = urlparse(location)
    if parsed.scheme == "gs":
        return f"gs://{parsed.netloc}"
    if parsed.scheme == "s3" and _retries is None:
        # (per endpoint too: a bucket name answered by one S3 server says nothing of another)
        return f"s3://{parsed.netloc} at {s3_settings().get('endpoint', 'AWS')}"
    if parsed.scheme in ("http", "https") and _retries is None:
        return f"{parsed.scheme}://{parsed.netloc}"
    return None


def _first_contact(location: str) -> bool:
    key = _first_contact_key(location)
    return key is not None and key not in _buckets_reached


def _reached(location: str) -> None:
    key = _first_contact_key(location)
    if key is not None:
        _buckets_reached.add(key)


def _s3_endpoint(spec: dict[str, Any] | str) -> str:
    """Where an s3 kvstore spec sends its requests, in words."""
    endpoint = spec.get("endpoint") if isinstance(spec, dict) else None
    if endpoint:
        return f"the S3 endpoint {endpoint}"
    return ("AWS S3 (no endpoint is configured: set VOXGATE_S3_ENDPOINT=http(s)://HOST[:PORT] "
            "for another S3 server)")


def _gcs_failure(exc: BaseException, location: str, what: str,
                 spec: dict[str, Any] | str | None = None) -> VoxgateError:
    """A first request to a gs:// bucket (or an http(s)/s3 host) that failed, with where
    credentials came from for gs:// and the endpoint for s3:// (``spec`` opened it)."""
    error = _translate(exc, what)
    # (``what`` names the location most often: "reading info of URL"; said once)
    named = location in what
    if _gcs_bucket(location) is None:
        if isinstance(error, RemoteUnavailableError):
            where = location if not named else "the server"
            if location.startswith("s3://"):
                where = location if not named else f"the bucket {urlparse(location).netloc!r}"
                where += " at " + _s3_endpoint(spec if spec is not None
                                               else kvstore_spec(location))
            return RemoteUnavailableError(
                f"{what}: {where} could not be reached ({exc}); gave up after "
                f"{GCS_FIRST_CONTACT_RETRIES['max_retries']} retries of the first request to "
                "this host: check the address and that the server is running")
        return error
    if isinstance(error, (RemoteUnavailableError, AuthenticationError)):
        try:
            creds = gcs_credentials()
        except AuthenticationError as bad:
            creds = str(bad)
        if isinstance(error, RemoteUnavailableError):
            advice = (f"gave up after {GCS_FIRST_CONTACT_RETRIES['max_retries']} retries of the "
                      "first request to this bucket: check the network and the bucket's name")
        else:
            advice = "the bucket refused the request: use credentials that may read it"
        if creds.startswith("none"):
            advice += ("; for a private bucket run `gcloud auth application-default login` or "
                       "set GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json")
        return type(error)(
            f"{what}: {location if not named else 'the bucket'} could not be read ({exc}); "
            f"Google credentials: {creds}; "
            f"{advice}"
        )
    return error


def is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def local_path(location: str) -> str:
    """The absolute filesystem path of a local location (a path or a file:// URL)."""
    if location.startswith("file://"):
        location = location[len("file://") :]
    return os.path.abspath(os.path.expanduser(location))


def split_query(location: str) -> tuple[str, str]:
    """An http(s):// location as (the URL up to its query, ``"?query"`` or ``""``).

    A signed URL or a ``?token=...`` is how many servers hand out access: the query belongs
    to every request under the location, after the key (``/layer/info?token=X``, never
    ``/layer?token=X/info``).  Elsewhere ``?`` is part of a name (an object key, a file)."""
    if location.startswith(("http://", "https://")):
        head, sep, query = location.partition("?")
        if sep:
            return head, sep + query
    return location, ""


def _http_key(location: str, key: str) -> tuple[str, str]:
    """(location, key) with the query string of an http(s):// key moved onto the location:
    over HTTP a '?' in a key starts its query (a URL relative to the location, such as the
    last part of a joined location, ``zarr.json?token=X``), whose parameters are added to the
    location's (the ones it has already are not repeated).  Other keys are left alone."""
    if "?" not in key or not location.startswith(("http://", "https://")):
        return location, key
    key, _, extra = key.partition("?")
    head, query = split_query(location)
    params = [p for p in query[1:].split("&") if p]
    params += [p for p in extra.split("&") if p and p not in params]
    return head + ("?" + "&".join(params) if params else ""), key


def join(location: str, *parts: str) -> str:
    """``location`` with ``parts`` appended as '/'-separated path components (on http(s)://,
    before the query string, which every key under the location keeps)."""
    out, query = split_query(location)
    out = out.rstrip("/")
    for p in parts:
        if p:
            out = out + "/" + p.strip("/")
    return out + query


def remove_tree(location: str) -> None:
    """Remove the directory at ``location`` and everything under it (on object storage: every
    key under the prefix ``location/``).  Nothing there is not an error."""
    if is_local(location):
        import shutil

        shutil.rmtree(local_path(location), ignore_errors=True)
        return
    if location.startswith(("http://", "https://")):
        raise InvalidRequestError(f"{location} is served over HTTP, which voxgate can only read")
    with ts_errors(f"removing {location}"):
        kv = ts.KvStore.open(kvstore_spec(location), context=_context_for(location)).result()
        kv.delete_range(ts.KvStore.KeyRange()).result()
    _reached(location)


def kvstore_spec(location: str) -> dict[str, Any]:
    """A tensorstore kvstore spec for a voxgate location, always ending in a directory slash."""
    if is_local(location):
        return {"driver": "file", "path": local_path(location).rstrip("/") + "/"}
    parsed = urlparse(location)
    if parsed.scheme in ("gs", "s3"):
        # an object name may hold any character: '#' and '?' are part of the key, not a
        # fragment or a query (urlparse cut them off, and the path with them: a volume named
        # s3://b/a#1/vol was written to s3://b/a/)
        bucket, _, path = location.split("://", 1)[1].partition("/")
    else:
        bucket, path = parsed.netloc, parsed.path
    if parsed.scheme in ("gs", "s3", "http", "https") and not bucket:
        what = "bucket" if parsed.scheme in ("gs", "s3") else "host"
        raise InvalidRequestError(
            f"{location!r} names no {what}: write {parsed.scheme}://"
            f"{'BUCKET' if parsed.scheme in ('gs', 's3') else 'HOST[:PORT]'}/path"
        )
    path = path.strip("/")
    path = path + "/" if path else ""
    if parsed.scheme == "gs":
        return {"driver": "gcs", "bucket": bucket, "path": path}
    if parsed.scheme == "s3":
        return {"driver": "s3", "bucket": bucket, "path": path, **s3_settings()}
    if parsed.scheme in ("http", "https"):
        # tensorstore's http kvstore puts each key before the base URL's query:
        # base_url "https://h/layer/?token=X" reads "https://h/layer/info?token=X"
        head, query = split_query(location)
        return {"driver": "http", "base_url": head.rstrip("/") + "/" + query}
    raise InvalidRequestError(
        f"unsupported storage location {location!r}; use a path, file://, gs://, s3:// or http(s)://"
    )


def s3_settings() -> dict[str, str]:
    """What voxgate adds to every s3 kvstore it opens: ``endpoint`` from
    ``VOXGATE_S3_ENDPOINT`` (else ``AWS_ENDPOINT_URL``) and ``aws_region`` from ``AWS_REGION``
    (else ``AWS_DEFAULT_REGION``), each when set.  Credentials tensorstore finds itself
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ...)."""
    out = {}
    endpoint = os.environ.get("VOXGATE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        out["endpoint"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        out["aws_region"] = region
    return out


def s3_endpoints(spec: dict[str, Any]) -> list[str]:
    """Where the s3 kvstores of the TensorStore spec ``spec`` send their requests, in words
    (after :func:`with_s3_settings`): for an error that says which server did not answer."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str) and node.startswith("s3://"):
            found.append(_s3_endpoint(kvstore_spec(node)))
        elif isinstance(node, dict):
            if node.get("driver") == "s3":
                found.append(_s3_endpoint(node))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(with_s3_settings(spec))
    return sorted(set(found))


def with_s3_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of the TensorStore spec ``spec`` in which every s3 kvstore gets the
    :func:`s3_settings` members it does not set itself, as an s3:// location does: its
    ``kvstore`` and the ``base`` of one such as ocdbt's, as JSON or as a URL (an s3:// URL
    becomes JSON: a URL cannot hold an endpoint), and the ``base`` of a driver that wraps
    another array (``cast``, ``downsample``).  Without this, ``"kvstore": "s3://b/x"`` went
    to AWS whatever VOXGATE_S3_ENDPOINT said (and with no route there, retried for
    minutes)."""
    settings = s3_settings()
    if not settings:
        return spec

    def kvstore(kv: Any) -> Any:
        if isinstance(kv, str) and kv.startswith("s3://"):
            try:
                kv = ts.KvStore.Spec(kv).to_json()
            except ValueError:
                return kv  # tensorstore itself says what is wrong with it when it opens
        if not isinstance(kv, dict):
            return kv
        kv = dict(kv)
        if kv.get("driver") == "s3":
            kv = {**settings, **kv}
        if "base" in kv:
            kv["base"] = kvstore(kv["base"])
        return kv

    def array(sp: Any) -> Any:
        if not isinstance(sp, dict):
            return sp
        sp = dict(sp)
        if "kvstore" in sp:
            sp["kvstore"] = kvstore(sp["kvstore"])
        if isinstance(sp.get("base"), dict):
            sp["base"] = array(sp["base"])
        return sp

    out: dict[str, Any] = array(spec)
    return out


#: the text of tensorstore's refusal of a whole-object answer to a ranged read
_RANGE_IGNORED = "was ignored by server"
#: how long a server seen to ignore Range is read whole without trying a range first (the
#: relay's layer files keep the same time: IGNORED_RANGE_TTL): each try transfers the whole
#: file once more, and a server may be replaced by one that serves ranges
RANGES_IGNORED_TTL = 600.0
_ignoring: dict[str, float] = {}  # origin (scheme://host:port) -> when it was last seen to
_ORIGIN = re.compile(r"https?://[^/\s]+")


def _origin(location: str) -> str | None:
    found = _ORIGIN.match(location)
    return found.group(0).lower() if found else None


def ranges_ignored(exc: BaseException) -> bool:
    """Whether a failed read says its server ignored the Range of the request: it answered with
    the whole object, which tensorstore received and refused."""
    return _RANGE_IGNORED in str(exc)


def note_ranges_ignored(location: str) -> None:
    """Remember that the HTTP server of ``location`` ignores Range (a no-op elsewhere)."""
    origin = _origin(location)
    if origin is not None:
        with _context_lock:
            _ignoring[origin] = time.monotonic()


def ignores_ranges(location: str) -> bool:
    """Whether the HTTP server of ``location`` was seen to ignore Range in the last
    ``RANGES_IGNORED_TTL`` seconds."""
    origin = _origin(location)
    if origin is None:
        return False
    with _context_lock:
        seen = _ignoring.get(origin)
        if seen is None:
            return False
        if time.monotonic() - seen > RANGES_IGNORED_TTL:
            del _ignoring[origin]
            return False
        return True


def _range_error(text: str, what: str) -> VoxgateError:
    """The error of a read refused because its server ignored Range, saying so."""
    found = _ORIGIN.search(text)
    origin = found.group(0).lower() if found else None
    if origin is not None:
        note_ranges_ignored(origin)
    server = f"the server at {origin}" if origin else "the HTTP server"
    return CapabilityNotSupportedError(
        f"{what}: {server} ignores HTTP Range requests (it answered a request for part of a "
        "file with the whole file), and this data is read by ranges: a sharded layer's shard "
        "index, minishard indexes and chunks (zarr v3 shards included). Serve the directory "
        "with a server that supports Range, e.g. `python -m RangeHTTPServer` (pip install "
        "rangehttpserver), `npx http-server`, nginx or Caddy; Python's `python -m http.server` "
        f"does not ({text})")


_QUOTED = re.compile(r'"([^"]+)"')
_READING = re.compile(r"[Ee]rror reading (\S+): ")


def _translate(exc: BaseException, what: str) -> VoxgateError:
    text = str(exc)
    code = text.split(":", 1)[0].strip()
    lowered = text.lower()
    quoted = _QUOTED.findall(text)
    if _RANGE_IGNORED in text:
        # (FAILED_PRECONDITION "Error reading ...": not a chunk that could not be decoded)
        return _range_error(text, what)
    if code == "NOT_FOUND":
        return RemoteNotFoundError(f"{what}: not found ({text})")
    if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "RESOURCE_EXHAUSTED"):
        return RemoteUnavailableError(f"{what}: storage unavailable ({text})")
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return AuthenticationError(f"{what}: access refused ({text})")
    # OUT_OF_RANGE: a truncated shard file, whose index points past its end
    if code in ("DATA_LOSS", "FAILED_PRECONDITION", "INVALID_ARGUMENT", "OUT_OF_RANGE") and (
        "error reading" in lowered
        or "decod" in lowered
        or "corrupt" in lowered
        or "expected chunk length" in lowered
    ):
        # (the HTTP kvstore names the key unquoted: "Error reading http://h/v/0/0/0: ...")
        named = _READING.search(text)
        chunk = quoted[0] if quoted else named.group(1) if named else None
        return CorruptChunkError(
            f"{what}: {f'chunk {chunk}' if chunk else 'a chunk'} could not be decoded: {text}",
            chunk=chunk)
    return VoxgateError(f"{what}: {text}")


@contextlib.contextmanager
def ts_errors(what: str) -> Iterator[None]:
    """Turn tensorstore failures into voxgate errors that say what was being done."""
    try:
        yield
    except VoxgateError:
        raise
    except (ValueError, RuntimeError, OSError) as exc:
        error = _translate(exc, what)
        if redact(str(exc)) != str(exc):  # (its text, a spec with headers, is in ours redacted)
            raise error from None
        raise error from exc


def update_conditionally(kv: ts.KvStore, name: str, change: Callable[[bytes | None], bytes],
                         what: str, *, attempts: int, advice: str) -> None:
    """Store ``change(the value of name, or None)`` under ``name`` only if nobody changed it
    since it was read (tensorstore's conditional write: a lock file on local disks, object
    generations on GCS, ``If-Match`` / ``If-None-Match`` on S3), else read and change it
    again, up to ``attempts`` times: concurrent writers of one key lose nothing.  ``what``
    names the key in errors; ``advice`` ends the error when it keeps changing."""
    for attempt in range(attempts):
        with ts_errors(f"reading {what}"):
            current = kv.read(name).result()
        data = change(bytes(current.value) if current.state == "value" else None)
        with ts_errors(f"writing {what}"):
            written = kv.write(name, data, if_equal=current.stamp.generation).result()
        if written.generation:
            return
        time.sleep(min(0.5, 0.01 * 2 ** attempt))  # another writer got there first
    raise RemoteUnavailableError(
        f"{what} kept changing under this write ({attempts} attempts); {advice}")


def kvstore_exists(location: str, key: str) -> bool:
    """Whether ``key`` exists under ``location`` (local paths are checked without tensorstore)."""
    if is_local(location):
        return os.path.exists(os.path.join(local_path(location), key))
    location, key = _http_key(location, key)
    spec = kvstore_spec(location)  # a malformed location is an error, not "absent"
    context = _context_for(location)
    try:
        kv = ts.KvStore.open(spec, context=context).result()
        found = bool(kv.read(key).result().state == "value")
    except ValueError as exc:
        if _first_contact(location):
            # a bucket that never answered: say why, instead of "does not exist" later
            raise _gcs_failure(exc, location, f"looking for {key}") from exc
        error = _translate(exc, f"looking for {key} under {location}")
        if isinstance(error, (RemoteUnavailableError, AuthenticationError)):
            raise error from exc  # unreachable or refused is not "absent"
        return False
    _reached(location)
    return found


#: the key listed by ``check_bucket``: a name no store holds many objects under
_BUCKET_PROBE_KEY = ".voxgate-bucket-check"


def check_bucket(location: str, what: str) -> None:
    """Raise RemoteNotFoundError, naming the bucket, when ``location`` is on an s3:// bucket
    that does not exist.

    A read of a key in a missing bucket answers "absent", like a missing key, so only a
    listing tells the two apart (opening a volume that is not found asks, so the error names
    the bucket instead of the volume); and tensorstore's conditional writes (the metadata a
    zarr or N5 array is created with) retry a 404 from a missing bucket forever.  One listing
    of a single key name, before anything is written.  A listing that is refused (a writer may
    lack s3:ListBucket) says nothing about the bucket, and the write goes ahead.  (gs:// is
    not asked: tensorstore's GCS driver lists a missing bucket as an empty one.)
    """
    parsed = urlparse(location)
    if parsed.scheme != "s3":
        return
    _probe_bucket(kvstore_spec(location), _context_for(location), location, what)


def check_spec_buckets(spec: dict[str, Any], what: str, *,
                       first_contact_only: bool = False) -> None:
    """:func:`check_bucket` for a TensorStore spec: every s3 and gcs kvstore in it (its
    ``kvstore``, and the ``base`` of one such as ocdbt's, as a JSON object or a URL).

    A bucket not reached yet in this process is probed with few retries, as a location is
    (``_context_for``): an endpoint that does not answer fails in about a second instead of
    after tensorstore's 32 retries.  ``first_contact_only``: probe only such buckets (opening
    an array, where a missing bucket reads as a missing array anyway)."""
    for location, probe in _spec_buckets(with_s3_settings(spec)):
        if first_contact_only and not _first_contact(location):
            continue
        _probe_bucket(probe, _context_for(location), location, what)


def _spec_buckets(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """(``s3://BUCKET/`` or ``gs://BUCKET/``, a kvstore spec of the bucket) for each object
    storage kvstore in the chain of ``spec``."""
    drivers = {"s3": "s3", "gcs": "gs"}
    kv: Any = spec.get("kvstore")
    while kv is not None:
        if isinstance(kv, str):
            scheme = kv.split("://", 1)[0] if "://" in kv else ""
            if scheme in ("s3", "gs"):
                bucket = kv.split("://", 1)[1].partition("/")[0].split("|", 1)[0]
                if bucket:
                    yield f"{scheme}://{bucket}/", f"{scheme}://{bucket}/"
            kv = kv.split("|", 1)[1] if "|" in kv else None  # "s3://b/x|ocdbt:" has no base
            continue
        if not isinstance(kv, dict):
            return  # tensorstore itself says what is wrong with it
        url_scheme = drivers.get(str(kv.get("driver")))
        if url_scheme is not None and isinstance(kv.get("bucket"), str):
            yield (f"{url_scheme}://{kv['bucket']}/",
                   {k: v for k, v in kv.items() if k != "path"})
        kv = kv.get("base")


def _probe_bucket(spec: dict[str, Any] | str, context: ts.Context, location: str,
                  what: str) -> None:
    """List one key name of the bucket of ``location`` (``spec`` opens it)."""
    bucket = urlparse(location).netloc
    probe = ts.KvStore.KeyRange(_BUCKET_PROBE_KEY, _BUCKET_PROBE_KEY + "\0")
    try:
        kv = ts.KvStore.open(spec, context=context).result()
        kv.list(probe).result()
    except (ValueError, RuntimeError, OSError) as exc:
        error = (_gcs_failure(exc, location, what, spec) if _first_contact(location)
                 else _translate(exc, what))
        if isinstance(error, RemoteNotFoundError):
            if location.startswith("gs://"):
                where, make = "Google Cloud Storage", f"gcloud storage buckets create gs://{bucket}"
            else:
                where = (spec.get("endpoint") if isinstance(spec, dict) else None) or "AWS"
                make = f"aws s3 mb s3://{bucket}"
            raise RemoteNotFoundError(
                f"{what}: the bucket {bucket!r} does not exist (at {where}); create it "
                f"first (e.g. `{make}`) or name an existing one"
            ) from exc
        if isinstance(error, RemoteUnavailableError):
            raise error from exc
        return  # refused or otherwise unanswered: the write itself will say
    _reached(location)


#: how long :func:`holds_nothing` lists before it takes a prefix as holding something (an
#: empty prefix answers with one request; a long listing means there are many keys)
_EMPTY_LISTING_SECONDS = 20.0


#: files a desktop leaves in any folder it has shown, lowercase: macOS Finder's .DS_Store (and
#: the ._NAME AppleDouble files it writes beside others on non-Mac disks), Windows Explorer's
#: Thumbs.db and desktop.ini.  A folder (or a prefix ``aws s3 sync`` filled from one) holding
#: only these holds no volume.
DESKTOP_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})


#: files version control keeps in a folder it would otherwise not keep, or beside the files it
#: tracks there: git's .gitignore and .gitattributes, the .gitkeep and .keep conventions for
#: keeping an empty folder in git, Mercurial's .hgignore.  A folder a user made with git for a
#: volume to come (``newproject/.gitkeep``) holds no volume.  No format's own file is one of
#: these (zarr's .zarray, .zgroup, .zattrs, .zmetadata are markers and metadata, never litter).
VCS_PLACEHOLDERS = frozenset({".gitkeep", ".keep", ".gitignore", ".gitattributes", ".hgignore"})


def _base(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def is_desktop_file(name: str) -> bool:
    """Whether the file (or key) ``name``'s last part is one a desktop leaves in folders."""
    base = _base(name)
    return base.lower() in DESKTOP_FILES or base.startswith("._")


def is_placeholder_file(name: str) -> bool:
    """Whether the file (or key) ``name``'s last part is one of :data:`VCS_PLACEHOLDERS`."""
    return _base(name) in VCS_PLACEHOLDERS


def _holds_no_volume(name: str) -> bool:
    return is_desktop_file(name) or is_placeholder_file(name)


def left_by(names: list[str]) -> str:
    """What left the files ``names`` (all desktop files or version-control placeholders), as a
    message says it after listing them."""
    desktop = any(is_desktop_file(n) for n in names)
    vcs = any(is_placeholder_file(n) and not is_desktop_file(n) for n in names)
    return " and ".join(
        what for what, there in (("a desktop leaves in folders it shows", desktop),
                                 ("version control keeps in folders", vcs)) if there)


def holds_nothing(location: str) -> list[str] | None:
    """The keys under the gs:// or s3:// prefix ``location`` when a listing answers with none
    but a desktop's own files (:data:`DESKTOP_FILES`) and version control's placeholders
    (:data:`VCS_PLACEHOLDERS`; [] when nothing at all is stored there);
    None when something else is, for other locations, and when the listing is refused or does
    not finish in time (it says nothing then)."""
    if urlparse(location).scheme not in ("gs", "s3"):
        return None
    try:
        kv = ts.KvStore.open(kvstore_spec(location), context=_context_for(location)).result()
        future = kv.list()
        try:
            keys = future.result(timeout=_EMPTY_LISTING_SECONDS)
        except TimeoutError:
            future.cancel()
            return None
    except (ValueError, RuntimeError, OSError):
        return None
    _reached(location)
    names = sorted(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k) for k in keys)
    return names if all(_holds_no_volume(n) for n in names) else None


def json_object(raw: bytes, where: str,
                not_object: type[VoxgateError] = CorruptChunkError) -> dict[str, Any]:
    """The JSON object stored as ``raw`` (the file ``where``): not JSON is CorruptChunkError,
    JSON of another type ``not_object`` (an info a user wrote by hand may be refused as a bad
    request rather than as damaged)."""
    import json

    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise CorruptChunkError(f"{where} is not valid JSON: {exc}", chunk=where) from None
    if not isinstance(doc, dict):
        if issubclass(not_object, CorruptChunkError):
            raise not_object(f"{where} is not a JSON object", chunk=where)
        raise not_object(f"{where} is not a JSON object")
    return doc


def read_json(location: str, key: str) -> Any:
    """Read a small JSON document; RemoteNotFoundError when it is absent."""
    import json

    if is_local(location):
        path = os.path.join(local_path(location), key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):  # (a location that is a file)
            raise RemoteNotFoundError(f"{path} does not exist") from None
    else:
        location, key = _http_key(location, key)
        what = f"reading {key} of {location}"
        spec = kvstore_spec(location)
        context = _context_for(location)
        try:
            kv = ts.KvStore.open(spec, context=context).result()
            r = kv.read(key).result()
        except (ValueError, RuntimeError, OSError) as exc:
            if _first_contact(location):
                raise _gcs_failure(exc, location, what) from exc
            raise _translate(exc, what) from exc
        _reached(location)
        if r.state != "value":
            raise RemoteNotFoundError(f"{join(location, key)} does not exist")
        data = bytes(r.value)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise CorruptChunkError(
            f"{join(location, key)} is not valid JSON: {exc}", chunk=join(location, key)
        ) from None


#: the process's umask, read once at import (os.umask only reads it by setting it)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str, data: bytes) -> None:
    """Write a local file whole or not at all: a temporary name in the same folder, then a
    rename.  The temporary name starts with '.' and ends in '.tmp', so no reader takes it for
    a chunk while it is being written, and it is removed if the write fails."""
    import tempfile  # (writes only: with shutil, bz2, lzma and random ~4 ms of a reader's start)

    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=directory or ".", prefix=f".{name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; a chunk is made as open() makes files (0666 less the
        # umask), so the lab's group reads what voxgate wrote as it reads tensorstore's chunks
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(location: str, key: str, value: Any) -> None:
    """Write a small JSON document atomically (temporary file then rename on local disks)."""
    import json

    data = json.dumps(value, indent=2).encode()
    if is_local(location):
        path = os.path.join(local_path(location), key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, data)
        return
    with ts_errors(f"writing {key} of {location}"):
        kv = ts.KvStore.open(kvstore_spec(location), context=ts_context()).result()
        kv.write(key, data).result()
