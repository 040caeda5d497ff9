"""``--scheduler ADDRESS``: the dask.distributed ``Client`` the block-wise commands run on.

One option and one connection rule for ``voxgate cp`` and every Service command whose Service
takes ``client=``: connect with dask's connect timeout, fail at once (naming the address) when
nothing listens there, and refuse ``--workers`` beside ``--scheduler``.  distributed is
imported only when ``--scheduler`` is given.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

__all__ = ["cluster_client", "scheduler_option"]

F = TypeVar("F", bound=Callable[..., Any])

_HELP = ("Run the blocks on the dask.distributed scheduler at ADDRESS (tcp://host:port); "
         "progress and the results stay here.  The volumes must be URLs every worker can open.")


def scheduler_option(help: str = _HELP) -> Callable[[F], F]:
    """The ``--scheduler ADDRESS`` option (the command gets ``scheduler: str | None``)."""
    return click.option("--scheduler", default=None, metavar="ADDRESS", help=help)


@contextlib.contextmanager
def cluster_client(scheduler: str | None, workers: int | None = None,
                   *, name: str = "--workers") -> Iterator[Any]:
    """A connected ``distributed.Client`` for ``scheduler`` (closed on exit), or None.

    Raises a click usage error when ``workers`` is given too (local threads or processes and a
    cluster's workers are two ways to run the same blocks), and a click error naming the
    address when no scheduler answers there: at once when the port refuses the connection or
    the address does not parse, else after dask's connect timeout
    (``distributed.comm.timeouts.connect``, 30 s unless configured)."""
    if scheduler is None:
        yield None
        return
    if workers is not None:
        raise click.UsageError(
            f"{name} sets what runs the blocks on this machine; with --scheduler the cluster's "
            "worker threads run them (give one or the other)")
    client = _connect(scheduler)
    with client:
        yield client


def _connect(address: str) -> Any:
    import dask
    from dask.utils import parse_timedelta
    from distributed import Client
    from distributed.comm import parse_address, parse_host_port

    timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    try:
        protocol, location = parse_address(address)
        if protocol == "tcp":
            # a refused port fails now; distributed itself retries until the timeout
            host, port = parse_host_port(location)
            socket.create_connection((host, port), timeout=timeout).close()
        return Client(address, timeout=timeout)
    except (OSError, ValueError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise click.ClickException(
            f"cannot reach a dask scheduler at {address!r}: {reason}. Is one running there? "
            "Give the address it prints at start, tcp://HOST:PORT (`dask scheduler` listens on "
            "port 8786); DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s waits longer for a slow "
            "one") from None
