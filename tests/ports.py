"""Free TCP ports on 127.0.0.1 that no other process takes before the test's server binds them.

The suite runs on two processes (pytest-xdist) at once.  A port found by binding port 0 and
closing that socket again is free only for a moment: a server the other process starts on port
0 (an HTTP test server, a dask worker, Neuroglancer's) or the other process's own free port
may get it before the relay, nginx or moto started on it here has bound it, and that server
then fails to start, or a test talks to the other process's server.  So the socket that found
the port is kept, bound with SO_REUSEADDR and not listening, until the module ends (tests/
conftest.py releases it): the kernel gives the port to no one else (binding port 0 skips it,
and a bind without SO_REUSEADDR is refused), while a server binding it with SO_REUSEADDR (the
relay, uvicorn, http.server, werkzeug, nginx all do) still can, and connecting to it is refused
while nothing listens there (a "dead" port stays dead for the test).  A server restarted on the
same port finds it free too.
"""

from __future__ import annotations

import socket

__all__ = ["free_port", "release_ports"]

_held: dict[int, socket.socket] = {}


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on, held for this process until
    :func:`release_ports`."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    except BaseException:
        s.close()
        raise
    _held[port] = s
    return port


def release_ports() -> None:
    """Let go of every port :func:`free_port` handed out (a server listening on one keeps it)."""
    while _held:
        _held.popitem()[1].close()
