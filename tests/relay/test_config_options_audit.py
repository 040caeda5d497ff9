"""A channel's ``options`` are checked against its upstream's Remote when the relay's
configuration is loaded, without opening the upstream.

``load_config`` used to take any ``options`` table: a misspelt key (``hold_wrte``), one the
Remote does not take at all, ``hold_write = true`` with ``hold_open = false`` (HDF5: "choose
one") or ``hold_open = "no"`` started the relay, and each failed the channel's first request,
as an error answer to some client, maybe hours later.  Now each stops ``load_config`` (and so
``voxgate serve``) with an InvalidRequestError naming the channel, the line, the key and what
would be right.  What the relay itself puts in (``missing``, from the channel's own key) and
every option a Remote really takes still load.  The upstream paths here do not exist: nothing
is opened or read to check them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from voxgate.errors import InvalidRequestError
from voxgate.relay.config import load_config

from .conftest import free_port, serve_refused


def _config(tmp_path: Path, body: str, server: str = "") -> Path:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"[server]\nhost = \"127.0.0.1\"\n{server}\n{body}")
    return cfg


def _channel(name: str, upstream: str, options: str, extra: str = "") -> str:
    return (f"[[channel]]\nname = \"{name}\"\nupstream = \"{upstream}\"\n"
            f"options = {{ {options} }}\n{extra}")


def _refused(cfg: Path, *, match: str) -> str:
    with pytest.raises(InvalidRequestError, match=match) as info:
        load_config(cfg)
    return str(info.value)


def test_a_misspelt_option_is_refused_with_the_close_match(tmp_path: Path) -> None:
    cfg = _config(tmp_path, _channel("lab/em/raw", "zarr:///nowhere/raw.zarr", "")
                  + _channel("lab/em/seg", "hdf5:///nowhere/x.h5#/raw", "hold_wrte = true"))
    said = _refused(cfg, match="hold_wrte")
    assert "lab/em/seg" in said and "[[channel]] #2" in said, said
    assert "(line 11)" in said, said  # (the line of the misspelt key)
    assert "did you mean 'hold_write'?" in said, said
    assert "it accepts hold_write, hold_open, missing" in said, said
    assert str(cfg) in said, said


def test_a_misspelt_option_of_a_bare_hdf5_path_is_refused(tmp_path: Path) -> None:
    """A bare path's extension names its Remote as opening it would (no file read)."""
    cfg = _config(tmp_path, _channel("lab/em/seg", "/nowhere/x.h5#/raw", "hold_opne = false"))
    assert "did you mean 'hold_open'?" in _refused(cfg, match="hold_opne")


def test_an_unknown_option_without_a_close_match_lists_what_the_remote_takes(
        tmp_path: Path) -> None:
    cfg = _config(tmp_path, _channel("lab/em/raw", "tiff:///nowhere/stack.tif",
                                     "compression = \"gzip\""))
    said = _refused(cfg, match="'compression'")
    assert "did you mean" not in said, said
    assert "it accepts voxel_size, kind, gaps, missing" in said, said
    assert "lab/em/raw" in said and "(line 7)" in said, said


def test_an_option_of_a_remote_that_takes_none_is_refused(tmp_path: Path) -> None:
    """precomputed:// takes no options of its own: CloudVolume's fill_missing is ours
    ``missing``."""
    cfg = _config(tmp_path, _channel("lab/em/raw", "precomputed:///nowhere/raw",
                                     "fill_missing = true"))
    said = _refused(cfg, match="fill_missing")
    assert "did you mean 'missing'?" in said and "it accepts missing" in said, said


def test_mode_is_refused_the_relay_sets_it(tmp_path: Path) -> None:
    """``mode`` went to the upstream's open beside the relay's own: a TypeError at the
    channel's first request."""
    cfg = _config(tmp_path, _channel("lab/em/raw", "zarr:///nowhere/raw.zarr", "mode = \"r\""))
    said = _refused(cfg, match="mode is not an option here")
    assert "writable = false" in said, said


def test_hold_write_with_hold_open_false_is_refused_with_one_worker(tmp_path: Path) -> None:
    cfg = _config(tmp_path, _channel("lab/em/seg", "hdf5:///nowhere/x.h5#/raw",
                                     "hold_write = true, hold_open = false"),
                  server="workers = 1")
    said = _refused(cfg, match="choose one")
    assert "lab/em/seg" in said and "(line 7)" in said, said


def test_a_value_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    # (the first channel's hold_open is right: the line named is the second one's)
    cfg = _config(tmp_path,
                  _channel("lab/em/raw", "hdf5:///nowhere/x.h5#/raw", "hold_open = true")
                  + _channel("lab/em/seg", "hdf5:///nowhere/x.h5#/seg", "hold_open = \"no\""))
    said = _refused(cfg, match="hold_open must be true or false, got 'no'")
    assert "lab/em/seg" in said and "(line 11)" in said, said
    cfg = _config(tmp_path, _channel("lab/em/seg", "hdf5:///nowhere/x.h5#/raw",
                                     "hold_write = 1"))
    _refused(cfg, match="hold_write must be true or false, got 1")
    cfg = _config(tmp_path, _channel("lab/em/img", "zarr:///nowhere/img.zarr",
                                     "multiscale = 1.5"))
    _refused(cfg, match="multiscale must be the name")
    cfg = _config(tmp_path, _channel("lab/em/img", "zarr:///nowhere/img.zarr",
                                     "missing = \"zero\""))
    _refused(cfg, match="missing must be 'fill'")


def test_good_options_load(tmp_path: Path) -> None:
    """Every scheme's own options, ``missing`` (in options, or the channel's own key, which
    the relay puts into options) and the HDF5 options the relay allows with several workers
    load, without opening anything."""
    cfg = _config(tmp_path, "".join([
        _channel("a/z/img", "zarr:///nowhere/img.zarr", "multiscale = \"nearest\"",
                 "missing = \"error\"\n"),
        _channel("a/z/idx", "zarr:///nowhere/img.zarr", "multiscale = 1, missing = \"error\""),
        _channel("a/p/raw", "precomputed:///nowhere/raw", "missing = \"fill\""),
        _channel("a/n/raw", "n5:///nowhere/raw.n5/s0", "", "missing = \"error\"\n"),
        _channel("a/h/seg", "hdf5:///nowhere/x.h5#/seg", "hold_open = false, hold_write = false"),
        _channel("a/h/raw", "/nowhere/x.h5#/raw", "hold_write = true", "writable = false\n"),
        _channel("a/t/img", "tiff:///nowhere/stack.tif",
                 "voxel_size = [40, 4, 4], kind = \"image\""),
        _channel("a/t/dir", "tiff:///nowhere/slices", "gaps = \"error\""),
        _channel("a/b/em", "bossdb://127.0.0.1:1/c/e/ch", "token = \"t\", timeout = 5"),
        # (a bare folder's Remote is known from what it holds: left to its first open)
        _channel("a/f/raw", "/nowhere/folder", "anything = 1"),
    ]), server="workers = 2")
    got = load_config(cfg)
    options = {c.name: c.options for c in got.channels}
    assert options["a/z/img"] == {"multiscale": "nearest", "missing": "error"}
    assert options["a/n/raw"] == {"missing": "error"}
    assert options["a/h/seg"] == {"hold_open": False, "hold_write": False}
    assert options["a/t/img"] == {"voxel_size": [40, 4, 4], "kind": "image"}
    assert not Path("/nowhere").exists()


def test_serve_refuses_a_misspelt_option_before_it_listens(tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, _channel("lab/em/seg", "hdf5:///nowhere/x.h5#/raw",
                                     "hold_wrte = true"), server=f"port = {port}")
    exe = Path(sys.executable).with_name("voxgate")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "voxgate.cli"]
    # (a hang guard, not a timing check: the old relay started, and answered on the port)
    res = serve_refused([*cmd, "serve", str(cfg)], tmp_path, port)
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: InvalidRequestError: relay config "), lines
    assert "lab/em/seg" in lines[0] and "'hold_wrte' (did you mean 'hold_write'?)" in lines[0]
    with pytest.raises(httpx.HTTPError):  # nothing listens on the port
        httpx.get(f"http://127.0.0.1:{port}/ping/", timeout=2)


def test_forward_token_on_an_upstream_that_takes_no_token_is_refused(tmp_path: Path) -> None:
    """forward_token = true opens the upstream with each client's token: a zarr:// (or any
    Remote without a ``token`` option) upstream refused every request's open, at the first
    request.  bossdb:// and dvid:// take it."""
    cfg = _config(tmp_path, _channel("lab/em/raw", "zarr:///nowhere/raw.zarr", "",
                                     "forward_token = true\n"))
    said = _refused(cfg, match="forward_token")
    assert "lab/em/raw" in said and "zarr:// takes no token" in said, said
    assert "(line 8)" in said, said  # (the forward_token line of the channel)
    for upstream in ("bossdb://lab/em/raw", "dvid://127.0.0.1:1/abc/seg"):
        ok = _config(tmp_path, _channel("lab/em/raw", upstream, "", "forward_token = true\n"))
        assert load_config(ok).channels[0].forward_token is True
