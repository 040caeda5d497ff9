"""``-O / --open-option KEY=VALUE``: the open options of the volumes a command reads.

Before it, the command line could not say ``missing="error"``, an OME-Zarr ``multiscale=``, a
WEBKNOSSOS ``layer=`` ... for its inputs (``cp -o`` is the destination's create options).
The stores are real zarr directories on disk; zarr-python reads the copies back as the oracle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner, Result

import voxgate
from voxgate.cli import main


def _sparse(tmp_path: Path) -> str:
    """An (8, 8, 8) uint8 zarr whose chunks of z 4..8 were never written (absent)."""
    url = f"zarr://{tmp_path}/sparse.zarr"
    vol = voxgate.create(url, shape=(8, 8, 8), dtype="uint8", chunks=(4, 4, 4),
                         voxel_size=(8, 8, 8))
    vol[:4] = 7
    return url


def _two_multiscales(tmp_path: Path) -> str:
    """An OME-Zarr 0.5 group with scales 0, 1, 2 (multiscale 0, "all") and a second multiscale
    "skip" listing only datasets 0 and 2: its scale 1 is the group's 4 x 8 x 8 level."""
    path = tmp_path / "two.zarr"
    vol = voxgate.create(f"zarr://{path}", shape=(16, 32, 32), dtype="uint8", chunks=(8, 8, 8),
                         voxel_size=(8, 8, 8), num_scales=3)
    vol[:] = 1
    doc = json.loads((path / "zarr.json").read_text())
    ms = doc["attributes"]["ome"]["multiscales"]
    ms[0]["name"] = "all"
    ms.append({**ms[0], "name": "skip", "datasets": [ms[0]["datasets"][0], ms[0]["datasets"][2]]})
    (path / "zarr.json").write_text(json.dumps(doc))
    return f"zarr://{path}"


def _clean(res: Result) -> None:
    """The command ended through click (an ``Error:`` line and an exit status), not with an
    exception escaping it (a traceback)."""
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output


def _shapes(output: str) -> list[list[int]]:
    return [s["shape_zyx"] for s in json.loads(output)["scales"]]


def test_cp_missing_error_refuses_a_source_with_absent_chunks(tmp_path: Path) -> None:
    src = _sparse(tmp_path)
    dst = tmp_path / "strict.zarr"
    res = CliRunner().invoke(main, ["cp", "--no-progress", "-O", "missing=error", src,
                                    f"zarr://{dst}"])
    assert res.exit_code == 1, res.output
    assert "Error: MissingChunkError: copy" in res.output
    assert "refused (missing='error'): 4 chunk(s) absent at scale 0: (1, 0, 0)" in res.output
    _clean(res)
    assert not dst.exists()  # refused before the destination is made
    # the long form says the same
    res = CliRunner().invoke(main, ["cp", "--no-progress", "--open-option", "missing=error",
                                    src, f"zarr://{dst}"])
    assert res.exit_code == 1 and "MissingChunkError" in res.output

    # without it the absent chunks are copied as zeros (the default, unchanged)
    res = CliRunner().invoke(main, ["cp", "--no-progress", src, f"zarr://{dst}"])
    assert res.exit_code == 0, res.output
    assert "copied as the fill value" in res.output
    copied = np.asarray(zarr.open_array(str(dst / "0"), mode="r"))
    np.testing.assert_array_equal(copied[:4], 7)
    np.testing.assert_array_equal(copied[4:], 0)


def test_cp_missing_given_twice_must_agree(tmp_path: Path) -> None:
    src = _sparse(tmp_path)
    dst = f"zarr://{tmp_path}/out.zarr"
    res = CliRunner().invoke(main, ["cp", "--no-progress", "-O", "missing=error",
                                    "--missing", "fill", src, dst])
    assert res.exit_code == 2, res.output
    assert "--missing fill and -O missing=error disagree" in res.output
    res = CliRunner().invoke(main, ["cp", "--no-progress", "-O", "missing=error",
                                    "--missing", "error", src, dst])
    assert res.exit_code == 1 and "MissingChunkError" in res.output
    # a copy's scales and region are --scales and --box, not a view opened with scale=
    res = CliRunner().invoke(main, ["cp", "--no-progress", "-O", "scale=1", src, dst])
    assert res.exit_code == 2 and "use --scales" in res.output


def test_cp_copies_the_chosen_multiscale(tmp_path: Path) -> None:
    src = _two_multiscales(tmp_path)
    dst = tmp_path / "skip-copy.zarr"
    res = CliRunner().invoke(main, ["cp", "--no-progress", "-O", "multiscale=skip", src,
                                    f"zarr://{dst}"])
    assert res.exit_code == 0, res.output
    assert [tuple(s.shape) for s in voxgate.open(f"zarr://{dst}").meta.scales] == \
        [(16, 32, 32), (4, 8, 8)]


def test_info_reads_the_second_multiscale(tmp_path: Path) -> None:
    url = _two_multiscales(tmp_path)
    res = CliRunner().invoke(main, ["info", "--json", url])
    assert res.exit_code == 0, res.output
    assert _shapes(res.output) == [[16, 32, 32], [8, 16, 16], [4, 8, 8]]
    for choice in ("1", "skip", '"skip"'):
        res = CliRunner().invoke(main, ["info", "--json", "-O", f"multiscale={choice}", url])
        assert res.exit_code == 0, res.output
        assert _shapes(res.output) == [[16, 32, 32], [4, 8, 8]]
        assert json.loads(res.output)["scales"][1]["voxel_size_zyx"] == [32.0, 32.0, 32.0]
    res = CliRunner().invoke(main, ["info", "-O", "multiscale=2", url])
    assert res.exit_code == 1
    assert "has no multiscale 2; its multiscales are 0 ('all'), 1 ('skip')" in res.output


def test_services_open_their_input_with_the_options(tmp_path: Path) -> None:
    seg = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=(8, 8, 8), dtype="uint64",
                         chunks=(4, 4, 4), voxel_size=(8, 8, 8), kind="segmentation",
                         num_scales=2)
    seg[:4] = 3  # z 4..8 of scale 0 absent
    seg.at_scale(1)[:] = 5
    runner = CliRunner()
    res = runner.invoke(main, ["stats", "--no-progress", seg.url])
    assert res.exit_code == 0 and " 3 " in res.output and "256" in res.output, res.output
    res = runner.invoke(main, ["stats", "--no-progress", "-O", "scale=1", seg.url])
    assert res.exit_code == 0, res.output
    assert " 5 " in res.output and "64" in res.output and " 3 " not in res.output
    res = runner.invoke(main, ["stats", "--no-progress", "-O", "missing=error", seg.url])
    assert res.exit_code == 1 and "Error: MissingChunkError: 4 chunk(s)" in res.output

    # downsample opens its input read-write, with the multiscale chosen
    url = _two_multiscales(tmp_path)
    res = runner.invoke(main, ["downsample", "--no-progress", "--num-scales", "3",
                               "-O", "multiscale=skip", url])
    assert res.exit_code == 0, res.output
    ms = json.loads((tmp_path / "two.zarr" / "zarr.json").read_text())["attributes"]["ome"][
        "multiscales"]
    assert [d["path"] for d in ms[0]["datasets"]] == ["0", "1", "2"]  # untouched
    assert len(ms[1]["datasets"]) == 3 and ms[1]["datasets"][:2] == \
        [ms[0]["datasets"][0], ms[0]["datasets"][2]]


def test_bad_open_options_are_one_clean_error(tmp_path: Path) -> None:
    url = _two_multiscales(tmp_path)
    runner = CliRunner()
    # a key the store does not know: its own message (accepted keys, the closest name)
    res = runner.invoke(main, ["info", "-O", "multscale=1", url])
    assert res.exit_code == 1, res.output
    assert res.output.strip() == (
        "Error: InvalidRequestError: zarr:// got unknown option(s) to open 'multscale' (did "
        "you mean 'multiscale'?); it accepts multiscale, time, mode, missing")
    for cmd in (["cp", "--no-progress", "-O", "bogus=1", url, f"zarr://{tmp_path}/x.zarr"],
                ["stats", "--no-progress", "-O", "bogus=1", url],
                ["mesh", "-O", "bogus=1", url, "--obj-dir", str(tmp_path / "objs")]):
        res = runner.invoke(main, cmd)
        assert res.exit_code == 1, (cmd, res.output)
        assert "got unknown option(s) to open 'bogus'" in res.output
        _clean(res)
    assert not (tmp_path / "x.zarr").exists()
    # malformed -O: a usage error (status 2) before anything is opened
    for bad, said in ((["-O", "multiscale"], "options are KEY=VALUE, got 'multiscale'"),
                      (["-O", "=1"], "options are KEY=VALUE"),
                      (["-O", "mode=r+"], "'mode': the command opens its inputs"),
                      (["-O", "multiscale=0", "-O", "multiscale=1"], "given twice")):
        res = runner.invoke(main, ["info", *bad, url])
        assert res.exit_code == 2, (bad, res.output)
        assert "Invalid value for '--open-option' / '-O'" in res.output and said in res.output
    # a value the store refuses: its message, as for any refusal
    res = runner.invoke(main, ["info", "-O", "missing=maybe", url])
    assert res.exit_code == 1 and "missing must be 'fill'" in res.output


@pytest.mark.parametrize("command", ["info", "cp", "mesh", "skeletonize", "downsample", "cc",
                                     "stats", "predict", "synapses", "view"])
def test_every_command_that_reads_volumes_takes_open_options(command: str) -> None:
    res = CliRunner().invoke(main, [command, "--help"])
    assert res.exit_code == 0
    assert "-O, --open-option KEY=VALUE" in res.output


def test_a_real_process(tmp_path: Path) -> None:
    """``python -m voxgate`` as a shell runs it: JSON on stdout, one error line on stderr."""
    url = _two_multiscales(tmp_path)
    env = {**os.environ, "VOXGATE_STATE_DIR": str(tmp_path / "state")}
    run = [sys.executable, "-m", "voxgate", "info", "--json"]
    done = subprocess.run([*run, "-O", "multiscale=1", url], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _shapes(done.stdout) == [[16, 32, 32], [4, 8, 8]]
    done = subprocess.run([*run, "--open-option", "bogus=[1, 2]", url], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("Error: InvalidRequestError: zarr:// got unknown option(s)")
    assert "Traceback" not in done.stderr
