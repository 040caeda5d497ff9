"""The relay's configuration: a TOML file, or the equivalent command-line flags.

```toml
[server]
host = "127.0.0.1"
port = 8080
upstream_timeout = 30          # seconds before an upstream read answers 504
client_timeout = 30            # seconds the relay waits on a silent client, then hangs up
max_cutout_bytes = "520 MiB"   # bossDB's CUTOUT_MAX_SIZE; larger requests answer 413
max_inflight_bytes = "2080 MiB" # working memory large cutouts reserve at once, per process
                               # (default: 4 x max_cutout_bytes; over it they wait, then 503)
state_path = "relay-state.json" # metadata, reserved ids, local projects (default: beside the cache)
generations_path = "/shared/gens"  # ETag write generations: relays behind one HTTP cache share it
read_only_max_age = 0          # seconds an HTTP cache may reuse writable = false channels' data
upstream_meta_seconds = 10     # how often an upstream's metadata is read again (0: never)
workers = 1                    # processes serving the port ("auto": one per core)
stats_max_ids = 4194304        # distinct ids one label-statistics pass may hold (else 413)

[cache]
memory_bytes = "2 GiB"
disk_path = "/var/cache/voxgate"
disk_bytes = "200 GiB"

[[channel]]
name = "lab/em_2024/raw"                  # collection/experiment/channel
upstream = "precomputed://gs://bucket/em/raw"
options = { }                             # keyword options for voxgate.open
forward_token = false                     # open the upstream with each client's token
missing = "fill"                          # absent upstream chunks: "fill" or "error" (a 404)
writable = true

[auth]
public_read = false
tokens = { "s3cret-rw" = "read-write", "s3cret-ro" = "read" }
# or a table per token: tokens.alice = { role = "read-write", collections = ["lab"] }
# tokens_file = "tokens.toml"             # the same table in another file
```
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequestError

if TYPE_CHECKING:
    from ..remotes.base import Remote

__all__ = [
    "AuthConfig",
    "CacheConfig",
    "ChannelConfig",
    "RelayConfig",
    "TokenGrant",
    "check_channels",
    "check_paths",
    "check_worker_options",
    "config_from_json",
    "config_to_json",
    "load_config",
    "parse_bytes",
    "parse_workers",
]

#: bossDB's NameValidator (letters, digits, '_' and '-') and its CharField(max_length=255);
#: matched with fullmatch, so a trailing newline is not a name character
_NAME = re.compile(r"[A-Za-z0-9_-]+")
NAME_MAX = 255
_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30,
}
ROLES = ("read", "read-write")


def parse_bytes(value: object, what: str) -> int:
    """``"2 GiB"``, ``"512MB"``, ``1048576`` -> bytes."""
    if isinstance(value, bool):
        raise InvalidRequestError(f"{what} must be a size such as '2 GiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidRequestError(f"{what} must not be negative, got {value}")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise InvalidRequestError(f"{what} must be a size such as '2 GiB' or '500 MB', got {value!r}")


def check_name(name: object, what: str) -> str:
    """``name`` if it is a bossDB name (1-255 of ``A-Z a-z 0-9 _ -``), else InvalidRequestError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise InvalidRequestError(
            f"{what} {shown} is not a valid name: use letters, digits, '_' and '-' only"
        )
    if len(name) > NAME_MAX:
        raise InvalidRequestError(
            f"{what} name is {len(name)} characters long; names are at most {NAME_MAX}"
        )
    return name


@dataclass(frozen=True)
class TokenGrant:
    role: str  # "read" or "read-write"
    collections: frozenset[str] | None = None  # None: every collection

    def allows(self, collection: str | None, write: bool) -> bool:
        if write and self.role != "read-write":
            return False
        return self.collections is None or collection is None or collection in self.collections


@dataclass
class AuthConfig:
    public_read: bool = True
    tokens: dict[str, TokenGrant] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        """No tokens configured: anyone may read and write (a relay on a laptop)."""
        return not self.tokens


@dataclass
class CacheConfig:
    memory_bytes: int = 512 * 2**20
    disk_path: Path | None = None
    disk_bytes: int = 10 * 2**30


@dataclass
class ChannelConfig:
    collection: str
    experiment: str
    channel: str
    upstream: str
    options: dict[str, Any] = field(default_factory=dict)
    forward_token: bool = False
    writable: bool = True

    @property
    def name(self) -> str:
        return f"{self.collection}/{self.experiment}/{self.channel}"


@dataclass
class RelayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    upstream_timeout: float = 30.0
    #: seconds the relay waits on a client that neither sends (its request) nor reads (its
    #: response) before it closes the connection (docs/relay.md, "Configuration")
    client_timeout: float = 30.0
    max_cutout_bytes: int = 520 * 2**20
    #: bytes of working memory the large cutouts in progress in one process may reserve at
    #: once (None: relay.budget.WORK_FACTOR x max_cutout_bytes; docs/relay.md, "Memory")
    max_inflight_bytes: int | None = None
    state_path: Path | None = None
    data_root: Path | None = None
    #: the write generations behind ETags (a directory relays behind one HTTP cache share)
    generations_path: Path | None = None
    #: seconds an HTTP cache may reuse a read-only channel's responses without asking (0:
    #: revalidate every use, as for writable channels)
    read_only_max_age: int = 0
    #: seconds between reads of a channel's upstream metadata, in the background, to take in
    #: a change made outside the relay (new scales, a new shape); 0: read it once (docs/relay.md)
    upstream_meta_seconds: float = 10.0
    #: processes accepting on the port (docs/relay.md, "Several worker processes")
    workers: int = 1
    #: the most distinct ids a label-statistics pass holds (None: VOXGATE_RELAY_STATS_MAX_IDS,
    #: else relay.stats.MAX_IDS; docs/relay.md, "Memory")
    stats_max_ids: int | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    channels: list[ChannelConfig] = field(default_factory=list)


def parse_workers(value: object) -> int:
    """``workers``: a whole number >= 1, or ``"auto"`` (the cores this process may use)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # (not Linux)
            return max(1, os.cpu_count() or 1)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"workers must be a whole number >= 1 or \"auto\", "
                                  f"got {value!r}")
    return value


def config_to_json(cfg: RelayConfig) -> str:
    """The configuration as JSON (what ``voxgate serve --workers N`` hands each worker on a
    pipe; tokens included, so it never goes into a command line or the environment)."""
    doc = asdict(cfg)
    doc["auth"]["tokens"] = {t: {"role": g.role, "collections": None if g.collections is None
                                 else sorted(g.collections)}
                             for t, g in cfg.auth.tokens.items()}
    return json.dumps(doc, default=str)


def config_from_json(text: str) -> RelayConfig:
    """The inverse of :func:`config_to_json`."""
    doc = json.loads(text)
    path = (lambda v: None if v is None else Path(v))  # noqa: E731
    cache = CacheConfig(doc["cache"]["memory_bytes"], path(doc["cache"]["disk_path"]),
                        doc["cache"]["disk_bytes"])
    auth = AuthConfig(doc["auth"]["public_read"], {
        t: TokenGrant(g["role"], None if g["collections"] is None else frozenset(g["collections"]))
        for t, g in doc["auth"]["tokens"].items()})
    channels = [ChannelConfig(**c) for c in doc["channels"]]
    return RelayConfig(
        host=doc["host"], port=doc["port"], upstream_timeout=doc["upstream_timeout"],
        max_cutout_bytes=doc["max_cutout_bytes"],
        max_inflight_bytes=doc.get("max_inflight_bytes"), state_path=path(doc["state_path"]),
        data_root=path(doc["data_root"]), generations_path=path(doc["generations_path"]),
        read_only_max_age=doc["read_only_max_age"], workers=doc["workers"], cache=cache,
        upstream_meta_seconds=doc["upstream_meta_seconds"],
        client_timeout=doc.get("client_timeout", 30.0),
        stats_max_ids=doc.get("stats_max_ids"), auth=auth, channels=channels)


SECTIONS = ("server", "cache", "channel", "auth", "data_root")
SERVER_KEYS = ("host", "port", "upstream_timeout", "client_timeout", "max_cutout_bytes",
               "max_inflight_bytes", "state_path", "data_root", "generations_path",
               "read_only_max_age", "workers", "upstream_meta_seconds", "stats_max_ids")
CACHE_KEYS = ("memory_bytes", "disk_path", "disk_bytes")
AUTH_KEYS = ("public_read", "tokens", "tokens_file")
CHANNEL_KEYS = ("name", "upstream", "options", "forward_token", "writable", "missing")
TOKEN_KEYS = ("role", "collections")


def _check_keys(table: dict[str, Any], known: tuple[str, ...], where: str, text: str) -> None:
    """Refuse a key that is not in ``known``, naming it, its line and the key it may be a
    typo of: a misspelt ``tokens`` must not start an open relay."""
    import difflib

    for key in table:
        if key in known:
            continue
        line = _line_of(text, key)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = (f"did you mean {close[0]!r}?" if close
                else f"known keys: {', '.join(known)}")
        raise InvalidRequestError(f"{where}: unknown key {key!r}{line}; {hint}")


def _line_of(text: str, key: str, start: int = 0) -> str:
    """`` (line N)``: where ``key`` is first set or opened in the TOML ``text`` at or after
    the offset ``start`` ("" if unseen)."""
    name = rf"[\"']?{re.escape(key)}[\"']?"
    lines = re.compile(rf"^\s*(\[\[?\s*)?(\w+\.)*{name}\s*(=|\]|\.)", re.MULTILINE)
    m = lines.search(text, start) or re.compile(rf"[{{,]\s*{name}\s*=").search(text, start)
    return "" if m is None else f" (line {text.count(chr(10), 0, m.start()) + 1})"


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where} must be a table ([section] or {{ key = value }}), "
                                  f"got {value!r}")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{what} must be true or false, got {value!r}")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _port(value: object, what: str = "port") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidRequestError(f"{what} must be a whole number 1..65535, got {value!r}")
    return value


def _seconds(value: object, what: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 < value < 1e9):  # (NaN fails every comparison)
        raise InvalidRequestError(f"{what} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _upstream(value: object, where: str) -> str:
    """An upstream URL whose scheme names a Remote (checked now, not at the first request)."""
    import difflib

    from ..registry import is_known_scheme, known_schemes
    from ..storage.locations import split_url

    url = _text(value, f"{where}: upstream")
    scheme, _ = split_url(url)
    if scheme is not None and not is_known_scheme(scheme):
        known = known_schemes()
        close = difflib.get_close_matches(scheme, known, n=1)
        raise InvalidRequestError(
            f"{where}: upstream {url!r} has the unknown scheme {scheme + '://'!r}"
            + (f" (did you mean {close[0] + '://'!r}?)" if close else "")
            + f"; known schemes: {', '.join(s + '://' for s in known)}")
    return url


def _tokens(table: object, where: str, text: str = "") -> dict[str, TokenGrant]:
    if not isinstance(table, dict):
        raise InvalidRequestError(f"{where}: tokens must be a table of token = role")
    out = {}
    for token, value in table.items():
        if isinstance(value, str):
            role, cols = value, None
        elif isinstance(value, dict):
            # a misspelt "collections" would grant every collection
            _check_keys(value, TOKEN_KEYS, f"{where}: a token's table", text)
            role = value.get("role", "read")
            cols = value.get("collections")
        else:
            raise InvalidRequestError(f"{where}: a token maps to a role or a table, got {value!r}")
        if role not in ROLES:
            raise InvalidRequestError(f"{where}: role must be one of {ROLES}, got {role!r}")
        if cols is not None and not (isinstance(cols, list) and all(isinstance(c, str)
                                                                    for c in cols)):
            raise InvalidRequestError(f"{where}: collections must be a list of names")
        if not token or any(ch.isspace() for ch in token):
            raise InvalidRequestError(f"{where}: tokens cannot be empty or contain spaces")
        out[token] = TokenGrant(role, frozenset(cols) if cols is not None else None)
    return out


def _read_toml(p: Path, what: str) -> tuple[dict[str, Any], str]:
    try:
        text = p.read_text(encoding="utf-8")
        return tomllib.loads(text), text
    except FileNotFoundError:
        raise InvalidRequestError(f"{what} {p} does not exist") from None
    except UnicodeDecodeError:
        raise InvalidRequestError(f"{what} {p} is not a TOML file (not UTF-8 text)") from None
    except OSError as exc:
        raise InvalidRequestError(f"{what} {p} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequestError(f"{what} {p} is not valid TOML: {exc}") from None


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> RelayConfig:
    """Read a relay TOML file (paths in it are relative to the file) and apply overrides.

    Every key and value is checked here, so a mistake stops the relay before it serves: an
    :class:`InvalidRequestError` names the file, the key (its line, and the key it may be a
    typo of) and what would be right."""
    if path is None:
        return _load(None, {}, "", Path.cwd(), overrides)
    p = Path(path)
    raw, text = _read_toml(p, "relay config")
    try:
        return _load(p, raw, text, p.resolve().parent, overrides)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"relay config {p}: {exc}") from None


def _load(path: Path | None, raw: dict[str, Any], text: str, base: Path,
          overrides: dict[str, Any]) -> RelayConfig:
    _check_keys(raw, SECTIONS, "top level", text)
    cfg = RelayConfig()
    server = _table(raw.get("server", {}), "[server]")
    _check_keys(server, SERVER_KEYS, "[server]", text)

    def where_path(table: dict[str, Any], key: str, what: str) -> Path | None:
        if key not in table:
            return None
        return base / _text(table[key], what)

    cfg.host = _text(server.get("host", cfg.host), "[server] host")
    cfg.port = _port(server.get("port", cfg.port), "[server] port")
    cfg.upstream_timeout = _seconds(server.get("upstream_timeout", cfg.upstream_timeout),
                                    "[server] upstream_timeout")
    cfg.client_timeout = _seconds(server.get("client_timeout", cfg.client_timeout),
                                  "[server] client_timeout")
    cfg.max_cutout_bytes = parse_bytes(server.get("max_cutout_bytes", cfg.max_cutout_bytes),
                                       "[server] max_cutout_bytes")
    if cfg.max_cutout_bytes < 1:
        raise InvalidRequestError("[server] max_cutout_bytes must be at least 1 byte (0 would "
                                  "refuse every cutout)")
    if "max_inflight_bytes" in server:
        cfg.max_inflight_bytes = parse_bytes(server["max_inflight_bytes"],
                                             "[server] max_inflight_bytes")
        if cfg.max_inflight_bytes < 1:
            raise InvalidRequestError("[server] max_inflight_bytes must be at least 1 byte (a "
                                      "cutout larger than it still runs, alone)")
    cfg.state_path = where_path(server, "state_path", "[server] state_path")
    cfg.generations_path = where_path(server, "generations_path", "[server] generations_path")
    age = server.get("read_only_max_age", 0)
    if isinstance(age, bool) or not isinstance(age, int) or age < 0:
        raise InvalidRequestError(f"read_only_max_age must be a whole number of seconds >= 0, "
                                  f"got {age!r}")
    cfg.read_only_max_age = age
    every = server.get("upstream_meta_seconds", cfg.upstream_meta_seconds)
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 <= every < 1e9:
        raise InvalidRequestError(f"upstream_meta_seconds must be a number of seconds >= 0, "
                                  f"got {every!r}")
    cfg.upstream_meta_seconds = float(every)
    cfg.workers = parse_workers(server.get("workers", 1))
    most = server.get("stats_max_ids")
    if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
        raise InvalidRequestError(f"[server] stats_max_ids must be a whole number of ids >= 1, "
                                  f"got {most!r}")
    cfg.stats_max_ids = most
    if "data_root" in server and "data_root" in raw:
        raise InvalidRequestError("data_root is set twice (at the top level and under "
                                  "[server]): keep one")
    cfg.data_root = (where_path(server, "data_root", "[server] data_root")
                     or where_path(raw, "data_root", "data_root"))
    cache = _table(raw.get("cache", {}), "[cache]")
    _check_keys(cache, CACHE_KEYS, "[cache]", text)
    cfg.cache.memory_bytes = parse_bytes(cache.get("memory_bytes", cfg.cache.memory_bytes),
                                         "[cache] memory_bytes")
    cfg.cache.disk_bytes = parse_bytes(cache.get("disk_bytes", cfg.cache.disk_bytes),
                                       "[cache] disk_bytes")
    cfg.cache.disk_path = where_path(cache, "disk_path", "[cache] disk_path")
    auth = _table(raw.get("auth", {}), "[auth]")
    _check_keys(auth, AUTH_KEYS, "[auth]", text)
    cfg.auth.public_read = _bool(auth.get("public_read", not (auth.get("tokens")
                                                               or auth.get("tokens_file"))),
                                 "[auth] public_read")
    tokens: dict[str, TokenGrant] = {}
    if "tokens_file" in auth:
        tfile = base / _text(auth["tokens_file"], "[auth] tokens_file")
        traw, ttext = _read_toml(tfile, "tokens_file")
        try:
            tokens.update(_tokens(traw.get("tokens", traw), "tokens", ttext))
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"tokens_file {tfile}: {exc}") from None
    if "tokens" in auth:
        tokens.update(_tokens(auth["tokens"], "[auth] tokens", text))
    cfg.auth.tokens = tokens
    channels = raw.get("channel", [])
    if not isinstance(channels, list):
        raise InvalidRequestError("channels are an array of tables: write each one under "
                                  "[[channel]] (two brackets), not [channel]")
    # where each [[channel]] table starts, to find the lines of its keys (none found, or not
    # one per channel, as for an inline array of tables: the whole file is searched)
    starts = [m.start() for m in re.finditer(r"^\s*\[\[\s*channel\s*\]\]", text,
                                              re.MULTILINE)]
    if len(starts) != len(channels):
        starts = [0] * len(channels)
    for i, ch in enumerate(channels):
        cfg.channels.append(_channel(ch, f"[[channel]] #{i + 1}", text, starts[i]))
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("memory_bytes", "disk_bytes"):
            setattr(cfg.cache, key, parse_bytes(value, key))
        # paths given on the command line are taken from the directory it was run in, once:
        # a relative data root kept relative made every channel created through the API
        # unreachable (404) to a relay started from elsewhere or with the absolute path
        elif key == "disk_path":
            cfg.cache.disk_path = Path(value).absolute()
        elif key in ("data_root", "state_path", "generations_path"):
            setattr(cfg, key, Path(value).absolute())
        elif key == "workers":
            cfg.workers = parse_workers(value)
        elif key == "port":
            cfg.port = _port(value)
        elif key == "host":
            cfg.host = _text(value, "host")
        elif hasattr(cfg, key):
            setattr(cfg, key, value)
        else:
            raise InvalidRequestError(f"unknown relay setting {key!r}")
    names = [c.name for c in cfg.channels]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise InvalidRequestError(f"channel(s) configured twice: {sorted(dupes)}")
    check_worker_options(cfg)
    return cfg


def check_worker_options(cfg: RelayConfig) -> None:
    """Refuse, before the relay starts, a writable channel whose options keep its upstream's
    file open in each worker process when there are several (``hold_write = true`` or
    ``hold_open = true`` on an HDF5 upstream).  HDF5 locks a file against every other process
    while one has it open for writing, and against writes while one has it open at all: the
    worker that opened it first answered every other worker's requests to the channel (with
    ``hold_write``), or every write once the others had read it (with ``hold_open``), 503
    "locked" for the relay's whole run, which retrying never cured."""
    if cfg.workers <= 1:
        return
    from ..errors import VoxgateError
    from ..registry import resolve

    for ch in cfg.channels:
        if not ch.writable:  # (read-only handles in every worker do not lock each other out)
            continue
        try:
            cls, _ = resolve(ch.upstream)
        except VoxgateError:  # (opening it says what is wrong with the URL)
            continue
        if ch.options.get("hold_write") is True and "hold_write" in cls.open_options:
            what = ("hold_write = true keeps the file open for writing in the worker process "
                    "that opens it first, and HDF5 then refuses the file to the other workers "
                    "(every request they answer for the channel would fail \"locked\")")
        elif ch.options.get("hold_open") is True and "hold_open" in cls.open_options:
            what = ("hold_open = true keeps the file open in every worker process, and HDF5 "
                    "refuses a write while another process has the file open (every write "
                    "would fail \"locked\" once another worker had read the channel)")
        else:
            continue
        raise InvalidRequestError(
            f"channel {ch.name}: options {what}; with workers = {cfg.workers} leave the option "
            "out (the workers then take turns on the file, each read and write opening it "
            "under a lock they share), or serve with workers = 1, or make the channel "
            "writable = false")


def _channel(ch: object, where: str, text: str, start: int = 0) -> ChannelConfig:
    ch = _table(ch, where)
    _check_keys(ch, CHANNEL_KEYS, where, text)
    try:
        name, upstream = ch["name"], ch["upstream"]
    except KeyError as exc:
        raise InvalidRequestError(f"{where} needs {exc.args[0]!r}") from None
    parts = str(name).split("/")
    if not isinstance(name, str) or len(parts) != 3:
        raise InvalidRequestError(
            f"{where}: name must be collection/experiment/channel, got {name!r}"
        )
    _check_names(parts, where)
    options = dict(_table(ch.get("options", {}), f"{where}: options"))
    if "missing" in ch:  # absent upstream chunks: "fill" (default) or "error" (a 404)
        if ch["missing"] not in ("fill", "error"):
            raise InvalidRequestError(
                f"{where}: missing must be \"fill\" or \"error\", got {ch['missing']!r}"
            )
        options["missing"] = ch["missing"]
    url = _upstream(upstream, where)
    forward = _check_upstream(url, options, ch.get("forward_token", False), where,
                              f"{where} ({name})", text, start)
    return ChannelConfig(parts[0], parts[1], parts[2], url, options, forward,
                         _bool(ch.get("writable", True), f"{where}: writable"))


def _check_names(parts: tuple[str, ...] | list[str], where: str) -> None:
    """A channel's collection, experiment and channel names, as bossDB takes them."""
    for part, what in zip(parts, ("collection", "experiment", "channel"), strict=True):
        check_name(part, f"{where}: {what}")


def _check_upstream(url: str, options: dict[str, Any], forward: object, where: str, named: str,
                    text: str, start: int) -> bool:
    """Check a channel's ``options`` and ``forward_token`` (returned) against its upstream's
    Remote (``url``'s scheme checked already): the part of a channel's checks that a
    :class:`ChannelConfig` made in code needs as much as a TOML table (:func:`check_channels`).
    ``named``: the channel as messages name it; ``text``/``start``: the TOML file, its lines
    named in messages ("" in code)."""
    cls = _upstream_class(url)
    _check_options(cls, options, named, text, start)
    forward = _bool(forward, f"{where}: forward_token")
    if forward and cls is not None and "token" not in cls.open_options:
        raise InvalidRequestError(
            f"{named}: forward_token{_line_of(text, 'forward_token', start)} = true "
            f"opens the upstream with each client's token, and {cls.scheme}:// takes no token "
            "(bossdb:// and dvid:// do); leave it out, and give the upstream's own credentials "
            "in its URL or environment")
    return forward


def check_channels(cfg: RelayConfig) -> None:
    """Refuse, before the relay starts, what :func:`load_config` refuses in a ``[[channel]]``
    table, for a :class:`RelayConfig` made in code (``voxgate.relay.serve``, ``run_workers``
    and ``build_app`` call it; a loaded configuration passes it again, cheaply: nothing is
    opened or read): a name that is not bossDB's, an upstream whose scheme no Remote takes,
    ``options`` its Remote would refuse at the first open (a misspelt or unknown key, ``mode``,
    a value of the wrong type), ``forward_token`` on an upstream that takes no token, a
    channel given twice.  Unchecked, each failed the channel's first request, maybe
    hours after the relay started."""
    for ch in cfg.channels:
        if not isinstance(ch, ChannelConfig):
            raise InvalidRequestError(f"RelayConfig.channels holds ChannelConfig values, got "
                                      f"{ch!r}")
        where = f"channel {ch.name}"
        _check_names((ch.collection, ch.experiment, ch.channel), where)
        url = _upstream(ch.upstream, where)
        options = _table(ch.options, f"{where}: options")
        _check_upstream(url, options, ch.forward_token, where, where, "", 0)
        _bool(ch.writable, f"{where}: writable")
    names = [c.name for c in cfg.channels]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise InvalidRequestError(f"channel(s) configured twice: {sorted(dupes)}")


def _check_options(cls: type[Remote] | None, options: dict[str, Any], where: str, text: str,
                   start: int) -> None:
    """Refuse, before the relay starts and without opening anything, a channel's ``options``
    its upstream's open would refuse whatever the upstream holds: a key that Remote does not
    take (with the closest one it does: ``hold_wrte``), ``mode`` (the relay sets it), a value
    of the wrong type or two that contradict each other (the Remote's
    ``check_open_options``).  Unchecked, each failed the channel's first request, as an error
    answer to some client, maybe hours after the relay started.  ``cls`` is the upstream's
    Remote class (:func:`_upstream_class`; None when it is told only at the first open)."""
    from ..remotes.base import check_missing, check_options

    if cls is None:
        return
    if "mode" in options:
        raise InvalidRequestError(
            f"{where}: options{_line_of(text, 'mode', start)}: mode is not an option here: the "
            "relay opens the upstream read-write, or read-only for writable = false; leave it "
            "out")
    # (missing is taken for every Remote by open_remote, and put here from the channel's own
    # missing key; hold_write, hold_open and token the relay adds when it opens the upstream)
    try:
        unknown = sorted(set(options) - {*cls.open_options, "missing"})
        if unknown:
            where = f"{where}: options{_line_of(text, unknown[0], start)}"
            check_options(f"{cls.scheme}://", options, (*cls.open_options, "missing"))
        where = f"{where}: options{_line_of(text, 'options', start)}"
        if "missing" in options:
            check_missing(options["missing"])
        cls.check_open_options({k: v for k, v in options.items() if k != "missing"})
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"{where}: {exc}") from None


def _upstream_class(url: str) -> type[Remote] | None:
    """The Remote class that opens ``url``, when that is known without I/O: the URL names its
    scheme, or it is a path whose extension says HDF5 or TIFF (as ``detect_format`` takes it).
    Other bare paths are told by what they hold (read when the channel is first opened)."""
    from ..errors import VoxgateError
    from ..registry import resolve, resolve_for_create
    from ..storage.locations import split_url

    try:
        if split_url(url)[0] is not None:
            return resolve(url)[0]
        cls = resolve_for_create(url)[0]
    except VoxgateError:  # (the open says what is wrong with the URL)
        return None
    return cls if cls.scheme in ("hdf5", "tiff") else None


def check_paths(cfg: RelayConfig) -> None:
    """Refuse, before the relay starts, folders it could not create or write (the disk cache,
    the data root, the write generations) and a state file that is a folder, naming the
    setting, instead of failing after it says it listens."""
    for path, what, writable in ((cfg.cache.disk_path, "disk cache (disk_path)", True),
                                 (cfg.data_root, "data root (data_root)", False),
                                 (cfg.generations_path, "generations_path", True)):
        if path is not None:
            _usable_dir(path, what, writable)
    if cfg.state_path is not None:
        if cfg.state_path.is_dir():
            raise InvalidRequestError(f"state_path {cfg.state_path} is a folder; it names the "
                                      "relay's state file (e.g. relay-state.json)")
        _usable_dir(cfg.state_path.parent, "state_path's folder", True)


def _usable_dir(path: Path, what: str, writable: bool) -> None:
    if path.exists() and not path.is_dir():
        raise InvalidRequestError(f"{what} {path} is a file, not a folder")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InvalidRequestError(f"{what} {path} cannot be made: {probe} is a file")
    if writable and not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidRequestError(f"{what} {path} cannot be written: {probe} is not writable "
                                  "by this user")
