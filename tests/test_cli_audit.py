"""The command line and the relay's configuration against bad input (what test_cli.py and
test_api_sweep.py do not cover): a relay configuration mistake stops ``voxgate serve`` before
it serves, naming the file, the key and the likely typo; Ctrl-C ends a long command with status
130 and one line; ``--no-progress`` on every long command; nothing is created by a refused
command."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

import voxgate
from voxgate.cli import main

from .ports import free_port

SHAPE = (16, 32, 32)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli_audit")
    seg = voxgate.create(f"zarr://{path}/seg.zarr", shape=SHAPE, chunks=(8, 16, 16),
                         dtype="uint64", voxel_size=(1, 1, 1), kind="segmentation")
    lab = np.zeros(SHAPE, np.uint64)
    lab[2:10, 4:20, 4:20] = 5
    lab[10:14, 20:30, 20:30] = 7
    seg[:] = lab
    (path / "afile").write_text("x")
    return path


def _one_error(res: Result, code: int, match: str) -> str:
    """The run ended with ``code`` and exactly one ``Error:`` line matching ``match``."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.output
    assert re.search(match, errors[0]), errors[0]
    return errors[0]


# -- voxgate serve: the configuration ---------------------------------------------------------

CHANNEL = '[[channel]]\nname = "a/b/c"\nupstream = "mem://x"\n'

CONFIG_CASES: list[tuple[str, str, str]] = [
    ("server key typo", '[server]\nprot = 8080\n' + CHANNEL,
     r"\[server\]: unknown key 'prot' \(line 2\); did you mean 'port'\?"),
    ("section typo", '[cahce]\nmemory_bytes = "1 GiB"\n' + CHANNEL,
     r"unknown key 'cahce' \(line 1\); did you mean 'cache'\?"),
    # a misspelt tokens table started an open relay: anyone could read and write
    ("auth tokens typo", '[auth]\ntoken = { s3cret = "read" }\n' + CHANNEL,
     r"\[auth\]: unknown key 'token' \(line 2\); did you mean 'tokens'\?"),
    # a misspelt collections gave the token every collection
    ("token table typo",
     '[auth]\ntokens.alice = { role = "read", collection = ["lab"] }\n' + CHANNEL,
     r"unknown key 'collection' \(line 2\); did you mean 'collections'\?"),
    # bool("no") is True: public reads were allowed
    ("public_read string", '[auth]\npublic_read = "no"\ntokens = { t = "read" }\n' + CHANNEL,
     r"\[auth\] public_read must be true or false, got 'no'"),
    ("channel key typo", CHANNEL + "writeable = false\n",
     r"unknown key 'writeable' \(line 4\); did you mean 'writable'\?"),
    ("writable string", CHANNEL + 'writable = "no"\n',
     r"writable must be true or false, got 'no'"),
    ("forward_token string", CHANNEL + 'forward_token = "false"\n',
     r"forward_token must be true or false"),
    ("port out of range", '[server]\nport = 99999\n' + CHANNEL,
     r"\[server\] port must be a whole number 1..65535, got 99999"),
    ("port float", '[server]\nport = 8080.5\n' + CHANNEL, r"got 8080.5"),
    ("port bool", '[server]\nport = true\n' + CHANNEL, r"got True"),
    ("port text", '[server]\nport = "abc"\n' + CHANNEL, r"port must be a whole number.*'abc'"),
    ("host number", '[server]\nhost = 5\n' + CHANNEL, r"host must be a non-empty string"),
    ("timeout text", '[server]\nupstream_timeout = "abc"\n' + CHANNEL,
     r"upstream_timeout must be a number of seconds > 0, got 'abc'"),
    ("timeout nan", '[server]\nupstream_timeout = nan\n' + CHANNEL, r"> 0, got nan"),
    ("timeout 0", '[server]\nupstream_timeout = 0\n' + CHANNEL, r"> 0, got 0"),
    ("cutout 0", '[server]\nmax_cutout_bytes = 0\n' + CHANNEL,
     r"max_cutout_bytes must be at least 1 byte"),
    ("state_path number", '[server]\nstate_path = 5\n' + CHANNEL,
     r"state_path must be a non-empty string, got 5"),
    ("size negative", '[cache]\nmemory_bytes = "-1 GiB"\n' + CHANNEL,
     r"memory_bytes must be a size such as"),
    ("size word", '[cache]\ndisk_bytes = "abc"\n' + CHANNEL, r"disk_bytes must be a size"),
    ("disk_path number", '[cache]\ndisk_path = 5\n' + CHANNEL, r"disk_path must be a non-empty"),
    ("section not a table", 'auth = 5\n' + CHANNEL, r"\[auth\] must be a table"),
    ("channel single brackets", '[channel]\nname = "a/b/c"\nupstream = "mem://x"\n',
     r"write each one under \[\[channel\]\] \(two brackets\)"),
    ("upstream scheme typo", '[[channel]]\nname = "a/b/c"\nupstream = "zar:///data/x"\n',
     r"#1: upstream 'zar:///data/x' has the unknown scheme 'zar://' \(did you mean 'zarr://'"),
    ("upstream number", '[[channel]]\nname = "a/b/c"\nupstream = 5\n',
     r"upstream must be a non-empty string, got 5"),
    ("options not a table", CHANNEL + 'options = "abc"\n', r"#1: options must be a table"),
    ("duplicate channel", CHANNEL + CHANNEL, r"channel\(s\) configured twice: \['a/b/c'\]"),
    ("not toml", "this is not toml\n", r"is not valid TOML: .*line 1"),
    ("disk_path under a file", '[cache]\ndisk_path = "{root}/afile/cache"\n' + CHANNEL,
     r"disk cache \(disk_path\) .*afile/cache cannot be made: .*afile is a file"),
    ("disk_path a file", '[cache]\ndisk_path = "{root}/afile"\n' + CHANNEL,
     r"disk cache \(disk_path\) .*afile is a file, not a folder"),
    ("generations_path under a file", '[server]\ngenerations_path = "{root}/afile/g"\n' + CHANNEL,
     r"generations_path .* cannot be made"),
    ("state_path a folder", '[server]\nstate_path = "{root}"\n' + CHANNEL,
     r"state_path .* is a folder"),
    ("data_root a file", '[server]\ndata_root = "{root}/afile"\n', r"data root .* is a file"),
]


@pytest.fixture
def no_start(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``voxgate serve`` runs every check, then records the configuration it would serve
    instead of serving it (a configuration that gets there was accepted)."""
    import voxgate.relay

    started: list[Any] = []
    monkeypatch.setattr(voxgate.relay, "serve", started.append)
    return started


@pytest.mark.parametrize(("text", "match"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])
def test_serve_refuses_a_bad_config_before_serving(root: Path, tmp_path: Path, no_start: list[Any],
                                                   text: str, match: str) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(text.replace("{root}", str(root)))
    res = CliRunner().invoke(main, ["serve", str(cfg), "--port", str(_free_port())])
    _one_error(res, 1, match)
    assert not no_start, "the relay started with a configuration it should have refused"
    assert "listening" not in res.output


def test_config_errors_name_the_file(tmp_path: Path, no_start: list[Any]) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text('[server]\nprot = 8080\n' + CHANNEL)
    res = CliRunner().invoke(main, ["serve", str(cfg)])
    assert str(cfg) in _one_error(res, 1, "prot")
    cfg.write_bytes(b"\xff\xfe\x00binary")
    res = CliRunner().invoke(main, ["serve", str(cfg)])
    _one_error(res, 1, r"relay\.toml is not a TOML file \(not UTF-8 text\)")


def test_a_good_config_still_starts(root: Path, tmp_path: Path, no_start: list[Any]) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
[server]
port = 8080
upstream_timeout = 2.5
state_path = "state.json"
[cache]
memory_bytes = "16 MiB"
disk_path = "cache"
disk_bytes = "1.5 GiB"
[[channel]]
name = "a/b/c"
upstream = "zarr://{root}/seg.zarr"
options = {{ missing = "error" }}
writable = false
[auth]
public_read = true
tokens = {{ "t1" = "read", "t2" = {{ role = "read-write", collections = ["a"] }} }}
""")
    port = _free_port()
    res = CliRunner().invoke(main, ["serve", str(cfg), "--port", str(port)])
    assert res.exit_code == 0, res.output
    (started,) = no_start
    assert started.port == port and started.upstream_timeout == 2.5
    assert started.cache.memory_bytes == 16 * 2**20
    assert started.cache.disk_bytes == int(1.5 * 2**30)
    assert started.cache.disk_path == tmp_path / "cache"
    assert started.auth.tokens["t2"].collections == frozenset({"a"})
    assert not started.channels[0].writable
    assert "warning" not in res.output


def test_serve_warns_when_an_open_relay_listens_beyond_this_machine(
        root: Path, no_start: list[Any]) -> None:
    res = CliRunner().invoke(main, ["serve", "--data-root", str(root), "--host", "0.0.0.0",
                                    "--port", str(_free_port())])
    assert res.exit_code == 0, res.output
    assert "warning: 0.0.0.0 is reachable from other machines and no [auth] tokens" in res.output
    assert no_start


def test_serve_help_states_the_real_defaults() -> None:
    from voxgate.progress import format_bytes
    from voxgate.relay.config import CacheConfig, RelayConfig

    text = " ".join(CliRunner().invoke(main, ["serve", "--help"]).output.split())
    assert f"(default {RelayConfig().host})" in text
    assert f"Port (default {RelayConfig().port})" in text
    mem, disk = CacheConfig().memory_bytes, CacheConfig().disk_bytes
    assert f"(default {format_bytes(mem).replace('.0', '')})" in text
    assert f"(default {format_bytes(disk).replace('.0', '')})" in text


def test_a_bad_config_fails_the_installed_command_without_a_traceback(tmp_path: Path) -> None:
    """The real ``voxgate serve`` process: status 1 and one line, never serving."""
    cfg = tmp_path / "relay.toml"
    cfg.write_text('[server]\nport = "abc"\n' + CHANNEL)
    exe = Path(sys.executable).with_name("voxgate")
    proc = subprocess.run([str(exe), "serve", str(cfg)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Error: InvalidRequestError: relay config {cfg}: [server] port must be a whole "
        "number 1..65535, got 'abc'"]


_free_port = free_port  # (held until the module ends: tests/ports.py)


# -- the other commands -----------------------------------------------------------------------

LONG_COMMANDS = ["mesh", "skeletonize", "downsample", "cc", "stats", "predict", "synapses",
                 "merge", "split", "undo", "cp"]


@pytest.mark.parametrize("command", LONG_COMMANDS)
def test_every_long_command_has_no_progress(command: str) -> None:
    res = CliRunner().invoke(main, [command, "--help"])
    assert "--no-progress" in res.output


def test_no_progress_turns_the_bars_off(root: Path, tmp_path: Path) -> None:
    url = f"zarr://{root}/seg.zarr"
    bar = "━"
    res = CliRunner().invoke(main, ["cc", url, f"zarr://{tmp_path}/a.zarr"])
    assert res.exit_code == 0 and bar in res.output, res.output
    res = CliRunner().invoke(main, ["cc", url, f"zarr://{tmp_path}/b.zarr", "--no-progress"])
    assert res.exit_code == 0 and bar not in res.output, res.output
    res = CliRunner().invoke(main, ["stats", url, "--no-progress"])
    assert res.exit_code == 0 and bar not in res.output, res.output


def test_cc_with_a_bad_block_creates_no_output(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cc.zarr"
    res = CliRunner().invoke(main, ["cc", f"zarr://{root}/seg.zarr", f"zarr://{out}",
                                    "--block", "0,4,4"])
    _one_error(res, 1, r"block must be three positive integers \(z, y, x\), got \(0, 4, 4\)")
    assert not out.exists()  # it was created, then the block refused


@pytest.mark.parametrize("ids", ["", ",", " , "])
def test_an_empty_id_list_is_refused_not_taken_as_every_id(root: Path, tmp_path: Path,
                                                           ids: str) -> None:
    res = CliRunner().invoke(main, ["mesh", f"zarr://{root}/seg.zarr", "--ids", ids,
                                    "--obj-dir", str(tmp_path / "objs")])
    _one_error(res, 2, "ids are comma-separated integers")
    assert not (tmp_path / "objs").exists()


def test_info_missing_error_without_check_is_a_usage_error(root: Path) -> None:
    res = CliRunner().invoke(main, ["info", f"zarr://{root}/seg.zarr", "--missing", "error"])
    _one_error(res, 2, "--missing error applies to --check")


def test_demo_into_a_path_under_a_file_is_one_line(root: Path) -> None:
    res = CliRunner().invoke(main, ["demo", "--dir", str(root / "afile" / "sub"),
                                    "--size", "48"])
    _one_error(res, 1, "NotADirectoryError")


def test_ctrl_c_during_downsample_is_status_130_and_one_line(tmp_path: Path) -> None:
    """SIGINT to a real ``voxgate downsample``: status 130, one line that says how to finish,
    no traceback; the same command run again completes the scales.  The command's third
    block waits (a marker file says so) until the signal comes: sent after a count of files,
    the signal raced the end of the run."""
    shape = (64, 256, 256)
    vol = voxgate.create(f"zarr://{tmp_path}/v.zarr", shape=shape, chunks=(4, 16, 16),
                         dtype="uint8", voxel_size=(1, 1, 1))  # 8 blocks of 32 x 128 x 128
    vol[:] = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    ready = tmp_path / "third-block"
    code = (
        "import importlib, sys, time\n"
        "d = importlib.import_module('voxgate.services.downsample')\n"
        "real, seen = d._block, []\n"
        "def held(*a, **k):\n"
        "    seen.append(1)\n"
        "    if len(seen) == 3:\n"
        f"        open({str(ready)!r}, 'w').close()\n"
        "        time.sleep(120)  # the test's SIGINT ends this\n"
        "    return real(*a, **k)\n"
        "d._block = held\n"
        "from voxgate.cli import main\n"
        "sys.argv[0] = 'voxgate'\n"
        "main()\n")
    # SIGINT as a terminal delivers it: a test run in the background of a non-interactive
    # shell (CI) starts its children with SIGINT ignored, which Python then keeps ignoring
    proc = subprocess.Popen([sys.executable, "-c", code, "downsample", vol.url, "--num-scales",
                             "4", "--workers", "1", "--block", "32,128,128", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists() and proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted" not in err
    assert err.strip().splitlines() == [
        "interrupted (Ctrl-C): voxgate downsample stopped; the new scales may be partly "
        "written (their absent chunks read as the fill value); run the same command again "
        "to compute them"]
    res = CliRunner().invoke(main, ["downsample", vol.url, "--num-scales", "4",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["info", vol.url, "--check", "--missing", "error"])
    assert res.exit_code == 0 and "no chunk absent in 4 scale(s)" in res.output, res.output
