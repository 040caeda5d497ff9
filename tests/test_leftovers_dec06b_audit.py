"""Leftovers of the last session's notes (second audit of Dec 06).

1. ``voxgate.view`` found its relay's port by binding port 0, reading the number, closing that
   socket and starting uvicorn on the number: another process (a second notebook, the other
   pytest-xdist process) could take the port in between, and the viewer then failed to start,
   or handed out a link to that process's server.  Now the socket that binds the port is the
   one the relay serves on (``uvicorn.Server.run(sockets=[sock])``): no port is ever closed
   and bound again, and the link names the port actually listened on.  A port given that is
   taken is refused at once, naming it.  The race is made to happen every time here: a
   ``socket.close`` that, when it lets go of a bound and idle 127.0.0.1 port, starts another
   server listening there (what the other process does in the gap).
2. A ``RelayConfig`` built in code and handed to ``voxgate.relay.serve`` (or ``run_workers``)
   got none of the channel checks a TOML file gets at load: a misspelt option, one the
   upstream's Remote does not take, ``mode``, a value of the wrong type, ``forward_token`` on
   an upstream that takes no token, an unknown scheme or a name bossDB refuses started the
   relay, and failed the channel's first request.  Now each is refused before the relay
   starts, naming the channel (``build_app``, which the tests and ``voxgate.view`` call
   themselves, is left as it was).
3. ``scripts/test.sh -p no:xdist`` failed: the script put ``-n 2 --dist loadfile`` before the
   arguments given, options of the plugin the user had just disabled.  Now it leaves them out
   then (and leaves out ``-n`` when the user gives one, ``--dist`` when the user gives one).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import voxgate
from voxgate import VoxelSize
from voxgate.errors import InvalidRequestError
from voxgate.viewer import view

from .ports import free_port

ROOT = Path(__file__).resolve().parents[1]

# -- 1. the viewer's relay listens on the socket that found its port ------------------------------


@pytest.fixture(scope="module")
def em(tmp_path_factory: pytest.TempPathFactory) -> voxgate.Volume:
    root = tmp_path_factory.mktemp("view")
    vol = voxgate.create(f"zarr://{root}/em.zarr", shape=(8, 32, 32), dtype=np.uint8,
                         chunks=(8, 32, 32), voxel_size=VoxelSize(z=40, y=8, x=8))
    vol[:] = np.arange(32, dtype=np.uint8)[None, None, :]
    return voxgate.open(vol.url)


class _Thief:
    """What another process does in the gap: a server that starts listening on a 127.0.0.1
    port the moment the socket bound to it (and not listening) is closed."""

    def __init__(self) -> None:
        self.taken: list[socket.socket] = []

    def ports(self) -> list[int]:
        return [int(s.getsockname()[1]) for s in self.taken]

    def after_close(self, family: int, kind: int, name: object, listening: bool,
                    connected: bool) -> None:
        if (family != socket.AF_INET or kind != socket.SOCK_STREAM or listening or connected
                or not isinstance(name, tuple) or name[0] != "127.0.0.1" or not name[1]):
            return
        thief = socket.socket()
        thief.bind(("127.0.0.1", name[1]))
        thief.listen(8)
        self.taken.append(thief)

    def close(self) -> None:
        for s in self.taken:
            s.close()


@pytest.fixture
def thief(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Thief]:
    spy = _Thief()
    close = socket.socket.close

    def closing(sock: socket.socket) -> None:
        info = None
        if sock.fileno() != -1:
            try:
                name = sock.getsockname()
                listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
                try:
                    sock.getpeername()
                    connected = True
                except OSError:
                    connected = False
                info = (sock.family, sock.type, name, listening, connected)
            except OSError:
                pass
        close(sock)
        if info is not None:
            spy.after_close(*info)

    monkeypatch.setattr(socket.socket, "close", closing)
    try:
        yield spy
    finally:
        monkeypatch.undo()
        spy.close()


def test_view_serves_on_the_socket_that_found_its_port(em: voxgate.Volume,
                                                       thief: _Thief) -> None:
    # (was VoxgateError "the viewer's relay could not start": the port closed after it was
    # found was taken before uvicorn bound it again)
    with view(em) as session:
        assert thief.taken == [], f"a port was let go and taken meanwhile: {thief.ports()}"
        port = int(session.relay_url.rsplit(":", 1)[1])
        listening = [s.getsockname()[1] for srv in session._server.servers
                     for s in srv.sockets]
        assert listening == [port], (listening, session.relay_url)
        answer = httpx.get(f"{session.relay_url}/precomputed/view/data/em/info", timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["data_type"] == "uint8"
        assert f":{port}/precomputed/view/data/em" in session.layers["em"]


def test_view_on_a_given_port_listens_there(em: voxgate.Volume, thief: _Thief) -> None:
    """A port the tests hold (tests/ports.py: bound with SO_REUSEADDR, not listening) is
    one a server binding with SO_REUSEADDR can take, as before."""
    port = free_port()
    with view(em, port=port) as session:
        assert session.relay_url == f"http://127.0.0.1:{port}"
        answer = httpx.get(f"{session.relay_url}/precomputed/view/data/em/info", timeout=30)
        assert answer.status_code == 200, answer.text
    assert thief.taken == []


def test_view_on_a_taken_port_is_refused_naming_it(em: voxgate.Volume) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        with pytest.raises(InvalidRequestError, match=f"127.0.0.1:{port}.*already in use"):
            view(em, port=port)
        # the other server still has it, untouched
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass


# -- 2. a RelayConfig made in code is checked as a TOML file is ---------------------------------

_SERVE = """\
import json, sys
from voxgate.relay import RelayConfig, serve
from voxgate.relay.config import ChannelConfig
from voxgate.relay.workers import run_workers

channel = ChannelConfig(**json.loads(sys.argv[1]))
entry = {"serve": serve, "run_workers": run_workers}[sys.argv[4]]
entry(RelayConfig(host="127.0.0.1", port=int(sys.argv[2]), workers=int(sys.argv[3]),
                  channels=[channel]))
"""

# (the upstreams do not exist: nothing is opened or read to check them)
BAD_CHANNELS = {
    "misspelt option": ({"upstream": "hdf5:///nowhere/x.h5#/raw",
                         "options": {"hold_wrte": True}},
                        r"options: .*'hold_wrte' \(did you mean 'hold_write'\?\)"),
    "option the remote does not take": ({"upstream": "tiff:///nowhere/stack.tif",
                                         "options": {"compression": "gzip"}},
                                        r"'compression'.*voxel_size, kind, gaps, missing"),
    "mode": ({"upstream": "zarr:///nowhere/raw.zarr", "options": {"mode": "r"}},
             "mode is not an option here"),
    "wrong type": ({"upstream": "hdf5:///nowhere/x.h5#/raw", "options": {"hold_open": "no"}},
                   "hold_open"),
    "missing misspelt": ({"upstream": "zarr:///nowhere/raw.zarr",
                          "options": {"missing": "zero"}}, "missing"),
    "forward_token without a token": ({"upstream": "zarr:///nowhere/raw.zarr",
                                       "forward_token": True},
                                      r"forward_token = true .*zarr:// takes no token"),
    "unknown scheme": ({"upstream": "zar:///nowhere/raw.zarr"},
                       r"unknown scheme 'zar://' \(did you mean 'zarr://'\?\)"),
    "bad name": ({"channel": "em raw", "upstream": "zarr:///nowhere/raw.zarr"},
                 "channel 'em raw' is not a valid name"),
}


def _serve_in_code(tmp_path: Path, channel: dict[str, object], workers: int = 1,
                   entry: str = "serve") -> tuple[int, str]:
    from .relay.conftest import serve_refused

    script = tmp_path / "serve_in_code.py"
    script.write_text(_SERVE)
    port = free_port()
    args = {"collection": "lab", "experiment": "em", "channel": "seg", **channel}
    # (a hang guard, not a timing check: the old relay started, and answered on the port)
    res = serve_refused([sys.executable, str(script), json.dumps(args), str(port),
                         str(workers), entry], tmp_path, port)
    return res.returncode, res.stderr


@pytest.mark.parametrize("case", sorted(BAD_CHANNELS))
def test_serve_refuses_a_bad_channel_made_in_code(tmp_path: Path, case: str) -> None:
    channel, said = BAD_CHANNELS[case]
    code, err = _serve_in_code(tmp_path, channel)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("voxgate.errors.InvalidRequestError: channel lab/em/"), err
    assert re.search(said, last), last


@pytest.mark.parametrize("entry", ["serve", "run_workers"])
def test_serve_with_workers_refuses_a_bad_channel_made_in_code(tmp_path: Path,
                                                               entry: str) -> None:
    """Several workers: refused in the parent, before a worker starts."""
    channel, said = BAD_CHANNELS["misspelt option"]
    code, err = _serve_in_code(tmp_path, channel, workers=2, entry=entry)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("voxgate.errors.InvalidRequestError: channel lab/em/seg: "), err
    assert re.search(said, last), last
    assert f", in {entry}\n    check_channels(config)" in err, err  # (the entry's own check)
    assert "relay worker" not in err and "voxgate relay:" not in err, err


def test_a_good_channel_made_in_code_passes_the_checks(tmp_path: Path) -> None:
    """What every Remote takes, and the relay's own keys, pass (and serve then goes on)."""
    from voxgate.relay.config import ChannelConfig, RelayConfig, check_channels

    check_channels(RelayConfig(channels=[
        ChannelConfig("lab", "em", "seg", "hdf5:///nowhere/x.h5#/raw",
                      {"hold_write": True, "missing": "error"}),
        ChannelConfig("lab", "em", "raw", "zarr:///nowhere/raw.zarr", {"missing": "fill"},
                      writable=False),
        ChannelConfig("lab", "em", "boss", "bossdb://https://api.bossdb.io/a/b/c", {},
                      forward_token=True),
        ChannelConfig("lab", "em", "bare", str(tmp_path / "not-yet"), {"anything": 1}),
    ]))
    with pytest.raises(InvalidRequestError, match=r"configured twice: \['lab/em/seg'\]"):
        check_channels(RelayConfig(channels=[
            ChannelConfig("lab", "em", "seg", "zarr:///nowhere/a.zarr"),
            ChannelConfig("lab", "em", "seg", "zarr:///nowhere/b.zarr")]))


# -- 3. scripts/test.sh -p no:xdist ---------------------------------------------------------------

_PYTHON_SHIM = """#!/usr/bin/env bash
# the script's python: pip, venv and the import checks do nothing; pytest is the real one
if [ "$1 $2" = "-m pytest" ]; then
    shift 2
    printf '%s\\n' "$@" > "$(dirname "$0")/pytest-args"
    exec {python} -m pytest "$@"
fi
exit 0
"""


def _test_sh(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the real scripts/test.sh, copied into a checkout whose .venv's python only pretends
    to install (so nothing is installed or made), with ``args``: its outcome and the arguments
    pytest was given.  Chromium and nginx are where the script wants them (else it would
    install them): the suite needs them anyway."""
    for tool in ("/usr/bin/chromium", "/usr/sbin/nginx"):
        assert Path(tool).exists(), f"{tool} is missing: scripts/test.sh would install it"
    repo = tmp_path / "checkout"
    (repo / "scripts").mkdir(parents=True)
    script = repo / "scripts" / "test.sh"
    script.write_text((ROOT / "scripts" / "test.sh").read_text())
    script.chmod(0o755)
    shim = repo / ".venv" / "bin" / "python"
    shim.parent.mkdir(parents=True)
    shim.write_text(_PYTHON_SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "VIRTUAL_ENV"))}
    # (the peer venvs: a python given is used as it is, none is made)
    env.update(PYTHON=str(shim), VOXGATE_WEBKNOSSOS_PYTHON=str(shim),
               VOXGATE_IGNEOUS_PYTHON=str(shim))
    res = subprocess.run(["bash", str(script), *args], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=600)
    given = repo / ".venv" / "bin" / "pytest-args"
    return res, given.read_text().splitlines() if given.exists() else []


SMALL = str(ROOT / "tests" / "test_registry.py")


@pytest.mark.parametrize("args", [["-p", "no:xdist"], ["-pno:xdist"], ["-n", "0"], ["-n0"],
                                  ["--numprocesses=1"]],
                         ids=["-p no:xdist", "-pno:xdist", "-n 0", "-n0", "--numprocesses=1"])
def test_test_sh_runs_with_its_own_process_arguments(tmp_path: Path, args: list[str]) -> None:
    # (was: "-p no:xdist" -> pytest: error: unrecognized arguments: -n --dist)
    res, given = _test_sh(tmp_path, "-p", "no:cacheprovider", *args, "--co", "-q", SMALL)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"\b11 tests collected", res.stdout), res.stdout
    xdist = [] if "xdist" in "".join(args) else ["--dist", "loadfile"]
    assert given == [*xdist, "-p", "no:cacheprovider", *args, "--co", "-q", SMALL]


def test_test_sh_runs_on_two_processes_by_default(tmp_path: Path) -> None:
    res, given = _test_sh(tmp_path, "-p", "no:cacheprovider", "--co", "-q", SMALL)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"\b11 tests collected", res.stdout), res.stdout
    assert given == ["-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider", "--co", "-q",
                     SMALL]
