"""``voxgate serve --workers N``: N worker processes accepting on one port.

The parent binds the port once and starts N workers (``python -c ...worker_main()``), each
handed the listening socket (an inherited file descriptor) and the configuration (JSON on its
standard input, which the worker then keeps reading: the pipe closes when the parent dies, however
it dies, and the worker then stops itself, so no worker outlives its parent).  The kernel
spreads connections over the workers' accept calls.  Each worker is a whole relay (its own
memory tier, thread pool and event loop) sharing with the others, through files:

- the state file (collections, experiments, frames, channels created or deleted, metadata,
  reserved ids, downsample status): see :mod:`.statefile`;
- the write generations (:mod:`.generations`): a write through one worker moves the channel's
  generation, and every other worker drops its cells of the channel before its next read;
- the disk tier, written under the rule of :mod:`.shared_cache`.

With none of a state file, a data root or a disk cache configured, the parent makes a
temporary directory for the state and the generations, removed when it exits.  SIGINT
(Ctrl-C) or SIGTERM stops every worker (gracefully: requests in progress finish; after
:data:`STOP_SECONDS` they are killed), then the parent.  A worker that dies is started again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from ..errors import RemoteUnavailableError, VoxgateError
from .config import (
    RelayConfig,
    check_channels,
    check_worker_options,
    config_from_json,
    config_to_json,
)

__all__ = ["STOP_SECONDS", "run_workers", "worker_main"]

#: seconds the workers get to finish their requests after SIGINT/SIGTERM before being killed
STOP_SECONDS = 20.0
#: seconds a worker may take to start (open its state, scan the data root)
START_SECONDS = 300.0
_FD_VARIABLE = "VOXGATE_RELAY_LISTEN_FD"
_WORKER_CODE = "from voxgate.relay.workers import worker_main; worker_main()"


class _Worker:
    def __init__(self, slot: int, config_json: str, sock: socket.socket) -> None:
        self.slot = slot
        env = {**os.environ, _FD_VARIABLE: str(sock.fileno())}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            pass_fds=(sock.fileno(),), env=env, start_new_session=False)
        self.started = time.monotonic()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        # the configuration on a pipe (its tokens never in a command line or the environment)
        with contextlib.suppress(BrokenPipeError):  # (ended at once: wait_ready says so)
            self.stdin.write(config_json.encode() + b"\n")
            self.stdin.flush()

    def wait_ready(self, deadline: float, stopping: threading.Event) -> bool:
        """Whether the worker said it serves, before it ended or ``deadline`` passed."""
        while time.monotonic() < deadline and not stopping.is_set():
            ready, _, _ = select.select([self.stdout], [], [], 0.5)
            if ready:
                return self.stdout.readline().strip() == b"ready"
            if self.proc.poll() is not None:
                return False
        return False

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def close(self) -> None:
        for f in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                f.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise VoxgateError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def shared_config(config: RelayConfig, scratch: Path) -> RelayConfig:
    """``config`` as its workers run it: a state file (and so the generations beside it) in
    ``scratch`` when none would be kept otherwise."""
    if config.state_path is None and config.data_root is None and config.cache.disk_path is None:
        return dataclasses.replace(config, state_path=scratch / "relay-state.json")
    return config


def run_workers(config: RelayConfig) -> None:
    """Serve ``config`` with ``config.workers`` processes until SIGINT or SIGTERM."""
    check_channels(config)  # (load_config checks these too; a RelayConfig made in code)
    check_worker_options(config)
    stopping = threading.Event()
    received: list[int] = []

    def on_signal(sig: int, _frame: object) -> None:
        received.append(sig)
        stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    scratch = Path(tempfile.mkdtemp(prefix="voxgate-relay-"))
    workers: list[_Worker] = []
    sock: socket.socket | None = None
    try:
        cfg = shared_config(config, scratch)
        if cfg.cache.disk_path is not None:  # made once, before the workers open it at once
            from .cache import DiskTier

            DiskTier(cfg.cache.disk_path, cfg.cache.disk_bytes).close()
        text = config_to_json(cfg)
        sock = _listen(cfg.host, cfg.port)
        workers = [_Worker(i, text, sock) for i in range(cfg.workers)]
        deadline = time.monotonic() + START_SECONDS
        for w in workers:
            if not w.wait_ready(deadline, stopping) and not stopping.is_set():
                raise RemoteUnavailableError(
                    f"relay worker {w.slot + 1} of {cfg.workers} did not start (exit code "
                    f"{w.proc.poll()}; its error is above)")
        if not stopping.is_set():
            print(f"voxgate relay: all {cfg.workers} workers ready", file=sys.stderr, flush=True)
        restarts: list[float] = []
        while not stopping.wait(0.25):
            for i, w in enumerate(workers):
                code = w.proc.poll()
                if code is None or stopping.is_set():
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > 5:
                    raise RemoteUnavailableError(
                        "relay workers keep ending (6 times within a minute, the last with "
                        f"exit code {code}): stopping; their errors are above")
                print(f"voxgate relay: worker {w.slot + 1} (pid {w.proc.pid}) ended with exit "
                      f"code {code}; starting another", file=sys.stderr, flush=True)
                w.close()
                workers[i] = _Worker(w.slot, text, sock)
                if not workers[i].wait_ready(time.monotonic() + START_SECONDS, stopping) \
                        and not stopping.is_set():
                    print(f"voxgate relay: worker {w.slot + 1} did not start again",
                          file=sys.stderr, flush=True)
    finally:
        _stop(workers)
        if sock is not None:
            sock.close()
        shutil.rmtree(scratch, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop(workers: list[_Worker]) -> None:
    """SIGTERM every worker, wait up to STOP_SECONDS for all, SIGKILL what is left."""
    for w in workers:
        w.signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.signal(signal.SIGKILL)
            w.proc.wait()
        w.close()


# -- in a worker --------------------------------------------------------------------------------
def _watch_parent() -> None:
    """Stop this worker when its parent is gone: its standard input (the parent's pipe)
    reaches its end only then (or when the parent closes it, after stopping the workers)."""
    with contextlib.suppress(OSError):
        while os.read(0, 65536):  # (the raw descriptor: no buffer lock held at exit)
            pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_SECONDS)
    os._exit(1)  # the graceful stop did not finish


def worker_main() -> None:
    """One worker: read the configuration from standard input, build the relay, say "ready"
    on standard output and serve the inherited socket until SIGINT or SIGTERM."""
    import uvicorn

    from .app import (
        UVICORN_KEEP_ALIVE,
        build_app,
        client_timeout_protocol,
        uvicorn_log_config,
    )
    from .cache import limit_heap_growth

    fd = int(os.environ.pop(_FD_VARIABLE))
    line = b""
    while not line.endswith(b"\n"):  # one line, read from the raw descriptor (no buffer)
        part = os.read(0, 65536)
        if not part:
            sys.exit(1)  # the parent is gone already
        line += part
    config = config_from_json(line.decode())
    threading.Thread(target=_watch_parent, name="voxgate-parent", daemon=True).start()
    limit_heap_growth()  # RSS stays near the cache budget (docs/relay.md, "Memory")
    try:
        app = build_app(config)
    except VoxgateError as exc:
        print(f"voxgate relay worker {os.getpid()}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    sock = socket.socket(fileno=fd)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_keep_alive=UVICORN_KEEP_ALIVE,
                                           log_config=uvicorn_log_config(),
                                           http=client_timeout_protocol(
                                               config.client_timeout,
                                               app.state.relay.inflight.stop)))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    os.dup2(2, 1)  # nobody reads the pipe from now on: anything printed goes to the log
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # (uvicorn raises the SIGINT it stopped for again)
        pass
