"""``voxgate serve`` and ``voxgate view``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidRequestError, VoxgateError
from . import _fail, main
from ._open_options import open_input, open_options_option


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Serve every volume under DIR/collection/experiment/channel; channels "
                   "created through the API are written here.")
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port (default 8080).")
@click.option("--memory-bytes", default=None,
              help="Memory cache size, e.g. '2 GiB' (default 512 MiB).")
@click.option("--disk-path", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Disk cache folder (none: memory only).")
@click.option("--disk-bytes", default=None,
              help="Disk cache size, e.g. '200 GiB' (default 10 GiB).")
@click.option("--state-path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where metadata, reserved ids and created projects are kept.")
@click.option("--workers", default=None, metavar="N|auto",
              help="Worker processes serving the port (default 1; 'auto': one per core). Each "
                   "has its own memory cache of --memory-bytes; they share the disk cache.")
def serve(config: Path | None, data_root: Path | None, host: str | None, port: int | None,
          memory_bytes: str | None, disk_path: Path | None, disk_bytes: str | None,
          state_path: Path | None, workers: str | None) -> None:
    """Run the relay: serve CONFIG's channels (and/or --data-root) in the bossDB and
    Neuroglancer precomputed dialects."""
    from ..relay import load_config
    from ..relay import serve as run
    from ..relay.config import check_paths

    try:
        cfg = load_config(config, data_root=data_root, host=host, port=port,
                          memory_bytes=memory_bytes, disk_path=disk_path, disk_bytes=disk_bytes,
                          state_path=state_path, workers=workers)
        if not cfg.channels and cfg.data_root is None:
            raise click.UsageError("give a CONFIG file with [[channel]] entries or --data-root")
        check_paths(cfg)
        _check_port(cfg.host, cfg.port)
        if cfg.auth.open and not _loopback(cfg.host):
            click.echo(f"warning: {cfg.host} is reachable from other machines and no [auth] "
                       "tokens are configured: anyone who reaches this relay may read and "
                       "write every channel", err=True)
        click.echo(f"voxgate relay: {len(cfg.channels)} configured channel(s)"
                   + (f", data root {cfg.data_root}" if cfg.data_root else "")
                   + (f", {cfg.workers} worker processes" if cfg.workers > 1 else "")
                   + f", listening on http://{cfg.host}:{cfg.port} (index page: "
                   f"http://{cfg.host}:{cfg.port}/)", err=True)
        run(cfg)
    except (VoxgateError, OSError) as exc:
        _fail(exc)


def _loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@main.command("view")
@click.argument("urls", nargs=-1, required=True)
@click.option("--no-browser", is_flag=True, help="Only print the link; do not open a browser.")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Port of the in-process relay (default: a free one).")
@open_options_option("Open option KEY=VALUE for every one of URLS, as voxgate.open takes it "
                     "(repeat for more; VALUE is JSON when it parses, else a string): e.g. "
                     "-O multiscale=1, -O layer=color.")
def view_cmd(urls: tuple[str, ...], no_browser: bool, port: int,
             open_options: dict[str, Any]) -> None:
    """Show URLS in Neuroglancer (offline client) through an in-process relay on 127.0.0.1,
    until Ctrl-C."""
    from ..viewer import view

    try:
        if port:
            _check_port("127.0.0.1", port)
        session = view(*(open_input(u, open_options) for u in urls),
                       open_browser=not no_browser, port=port)
    except VoxgateError as exc:
        _fail(exc)
        return
    try:  # from here on Ctrl-C ends the session cleanly, whenever it comes
        click.echo(f"layers served by {session.relay_url}/ : {', '.join(session.layers)} "
                   "(Ctrl-C to stop)", err=True)
        click.echo(f"Neuroglancer: {session.url}")
        sys.stdout.flush()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        session.stop()


def _check_port(host: str, port: int) -> None:
    """Bind ``host:port`` once (as the server will, with SO_REUSEADDR) so that a taken port is
    said before "listening" is printed, not logged by the server after it."""
    import errno
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port,
                                                          type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise InvalidRequestError(f"cannot listen on {host}:{port}: {host!r} does not resolve "
                                  f"({exc.strerror}); --host takes an address such as "
                                  "127.0.0.1") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InvalidRequestError(
                    f"port {port} on {host} is already in use (another voxgate serve?): stop "
                    f"that server or choose another port with --port") from None
            raise InvalidRequestError(f"cannot listen on {host}:{port}: {exc.strerror}"
                                      + (" (ports below 1024 need privileges)"
                                         if exc.errno == errno.EACCES else "")) from None
