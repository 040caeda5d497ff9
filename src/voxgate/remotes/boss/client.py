"""Where a bossDB server is and how to reach it: settings (server and token from arguments,
environment and configuration files), ``bossdb://`` locations and names, and one pooled HTTP
client per server, token and timeout."""

from __future__ import annotations

import atexit
import configparser
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ...errors import InvalidRequestError
from .._http import HTTPClient, SharedClients

PUBLIC_URL = "https://api.bossdb.io"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")  # bossDB's name rule and length (fullmatch)


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"{what} name {name!r} is not valid for bossDB: use 1 to 255 letters, digits, '_' "
            "and '-'"
        )
    return name


@dataclass(frozen=True)
class BossSettings:
    url: str
    token: str
    source: str  # where they came from, for error messages (never the token itself)

    def __repr__(self) -> str:
        return f"BossSettings(url={self.url!r}, token=<hidden>, source={self.source!r})"


def _config_file() -> Path:
    env = os.environ.get("VOXGATE_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME", str(Path.home() / ".config"))
    return Path(base) / "voxgate" / "config.toml"


def boss_settings(url: str | None = None, token: str | None = None) -> BossSettings:
    """Resolve the server and token: arguments, environment, voxgate config, intern.cfg."""
    sources: list[tuple[str | None, str | None, str]] = [(url, token, "arguments")]
    env_url = os.environ.get("VOXGATE_BOSS_URL")
    if not env_url and os.environ.get("INTERN_HOST"):
        env_url = f"{os.environ.get('INTERN_PROTOCOL', 'https')}://{os.environ['INTERN_HOST']}"
    sources.append((env_url, os.environ.get("VOXGATE_BOSS_TOKEN")
                    or os.environ.get("INTERN_TOKEN"), "environment"))
    cfg = _config_file()
    if cfg.exists():
        try:
            table = tomllib.loads(cfg.read_text()).get("bossdb", {})
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequestError(f"{cfg} is not valid TOML: {exc}") from None
        sources.append((table.get("url"), table.get("token"), str(cfg)))
    intern_cfg = Path(os.environ.get("INTERN_CONFIG", Path.home() / ".intern" / "intern.cfg"))
    if intern_cfg.exists():
        parser = configparser.ConfigParser()
        parser.read(intern_cfg)
        for section in ("Volume Service", "Default"):
            if parser.has_section(section):
                sec = parser[section]
                host = sec.get("host")
                proto = sec.get("protocol", "https")
                sources.append((f"{proto}://{host}" if host else None, sec.get("token"),
                                f"{intern_cfg} [{section}]"))
    found_url = next(((u, s) for u, _, s in sources if u), (PUBLIC_URL, "default"))
    found_token = next((t for _, t, _ in sources if t), "public")
    return BossSettings(found_url[0].rstrip("/"), found_token, found_url[1])


_clients = SharedClients()
atexit.register(_clients.close_all)


def unreachable_hint(settings: BossSettings) -> str:
    """What a connection error says after the host: which server this is and how to pick
    another (``bossdb://c/e/ch`` without a server means api.bossdb.io)."""
    if settings.url.rstrip("/") == PUBLIC_URL:
        return (" (the default bossDB host; bossdb://https://HOST/collection/experiment/channel, "
                "server=... or VOXGATE_BOSS_URL picks another)")
    if settings.source == "arguments":
        return " (the bossDB server named in the URL or the server= option)"
    return f" (the bossDB server from {settings.source})"


def _client(settings: BossSettings, timeout: float, concurrency: int) -> HTTPClient:
    key = (settings.url, settings.token, timeout, settings.source)

    def make() -> HTTPClient:
        headers = {"User-Agent": "voxgate"}
        if settings.token and settings.token != "public":
            headers["Authorization"] = f"Token {settings.token}"
        return HTTPClient(settings.url, headers=headers, timeout=timeout,
                          max_connections=max(concurrency, 16),
                          unreachable_hint=unreachable_hint(settings))

    return _clients.get(key, make)


def _parse_location(location: str) -> tuple[str | None, str, str, str]:
    """``[http(s)://host[:port][/prefix]/]c/e/ch`` -> (server or None, c, e, ch)."""
    server = None
    path = location
    if location.startswith(("http://", "https://")):
        parsed = urlparse(location)
        if not parsed.netloc:
            raise InvalidRequestError(f"bossdb://{location}: no host in the server URL")
        parts = [p for p in parsed.path.split("/") if p]
        if len(parts) < 3:
            raise InvalidRequestError(
                f"bossdb://{location} must end in collection/experiment/channel"
            )
        prefix = "/".join(parts[:-3])
        server = f"{parsed.scheme}://{parsed.netloc}" + (f"/{prefix}" if prefix else "")
        path = "/".join(parts[-3:])
    parts = [p for p in path.split("/") if p]
    if len(parts) != 3:
        raise InvalidRequestError(
            f"bossdb://{location}: expected collection/experiment/channel, got {len(parts)} parts"
        )
    c, e, ch = parts
    return server, check_name(c, "collection"), check_name(e, "experiment"), \
        check_name(ch, "channel")
