"""Journals and WEBKNOSSOS locations (audit).

- ``storage.locking`` on platforms without ``fcntl`` (Windows): an ``O_EXCL`` lock file with
  its holder's process id, forced here on Linux (``_FLOCK = False``): threads exclude each
  other, a live holder in another process is waited for (or refused, ``blocking=False``), one
  killed with SIGKILL is taken over; an in-place map_blocks run's journal is locked through it
  (before, it had no lock at all where ``fcntl`` is missing).
- in-place map_blocks journals are listed by ``voxgate cp --status`` (volume, function, blocks
  done/total, credentials redacted) and removed by ``--forget-map-blocks URL`` /
  ``--forget-all``; a journal a run is writing is left.
- ``webknossos://``: ``create`` and ``create_location`` (copy's destination) follow one rule
  for every spelling of a location (trailing slash, ``file://``, relative, ``./``); a
  ``layer=`` contradicting the layer named in the URL is refused (before, ``create`` dropped
  it and made the URL's layer).  The webknossos package opens the dataset voxgate added the
  layers to and reads them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import voxgate
from voxgate.cli import main
from voxgate.errors import InvalidRequestError
from voxgate.storage import locking
from voxgate.storage.locking import file_lock, lock_path

PEER = os.environ.get("VOXGATE_WEBKNOSSOS_PYTHON")


@pytest.fixture
def no_fcntl(monkeypatch: pytest.MonkeyPatch) -> None:
    """The branch of platforms without fcntl (Windows), on this one."""
    monkeypatch.setattr(locking, "_FLOCK", False)


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "o_excl"])
def test_file_lock_excludes_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    flock: bool) -> None:
    monkeypatch.setattr(locking, "_FLOCK", flock)
    counter = tmp_path / "counter"
    counter.write_text("0")

    def bump() -> None:
        for _ in range(15):
            with file_lock(str(counter)):
                n = int(counter.read_text())
                time.sleep(0.0005)  # (a lost update without the lock)
                counter.write_text(str(n + 1))

    threads = [threading.Thread(target=bump) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "90"
    assert not os.path.exists(lock_path(str(counter)))
    with file_lock(str(counter)), pytest.raises(BlockingIOError):
        with file_lock(str(counter), blocking=False):
            pass


def test_o_excl_lock_of_a_killed_holder_is_taken(tmp_path: Path, no_fcntl: None) -> None:
    guarded = str(tmp_path / "journal")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from voxgate.storage import locking
        locking._FLOCK = False
        with locking.file_lock(sys.argv[1]):
            print("held", flush=True)
            time.sleep(60)
    """), guarded], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        holder = json.loads(Path(lock_path(guarded)).read_text())
        assert holder["pid"] == child.pid
        with pytest.raises(BlockingIOError):  # alive: not taken
            with file_lock(guarded, blocking=False):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    assert os.path.exists(lock_path(guarded))  # left by the kill
    with file_lock(guarded, blocking=False):  # its holder is gone: removed and taken
        assert json.loads(Path(lock_path(guarded)).read_text())["pid"] == os.getpid()
    assert not os.path.exists(lock_path(guarded))


def _counts(tmp_path: Path) -> voxgate.Volume:
    v = voxgate.create(f"zarr://{tmp_path}/counts.zarr", shape=(8, 32, 32), dtype="uint16",
                       chunks=(8, 16, 16), voxel_size=(40, 8, 8))
    v[:] = 1
    return v


def test_map_blocks_journal_locked_without_fcntl_and_forget_leaves_it(
        tmp_path: Path, no_fcntl: None) -> None:
    v = _counts(tmp_path)
    entered, release = threading.Event(), threading.Event()

    def slow_add_one(a: np.ndarray) -> np.ndarray:
        entered.set()
        release.wait(20)
        return a + 1

    errors: list[BaseException] = []

    def first() -> None:
        try:
            voxgate.map_blocks(slow_add_one, v, out=v, block=(8, 16, 16), workers=1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert entered.wait(20)
        with pytest.raises(InvalidRequestError, match="another run is writing into it now"):
            voxgate.map_blocks(lambda a: a + 1, v, out=v, block=(8, 16, 16), workers=1)
        status = CliRunner().invoke(main, ["cp", "--status"])
        assert status.exit_code == 0, status.output
        assert "map_blocks in place" in status.output and "slow_add_one" in status.output
        res = CliRunner().invoke(main, ["cp", "--forget-map-blocks", v.url])
        assert res.exit_code == 0, res.output
        assert "a map_blocks run is writing into it now" in res.output
        assert list((Path(os.environ["VOXGATE_STATE_DIR"]) / "map_blocks").glob("*.journal"))
    finally:
        release.set()
        t.join()
    assert not errors
    np.testing.assert_array_equal(v.read(), 2)  # once per voxel


def test_cp_status_lists_and_forgets_map_blocks_journals(tmp_path: Path) -> None:
    v = _counts(tmp_path)
    calls = 0

    def add_one_then_fail(a: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("stopped")
        return a + 1

    with pytest.raises(RuntimeError, match="stopped"):
        voxgate.map_blocks(add_one_then_fail, v, out=v, block=(8, 16, 16), workers=1)
    folder = Path(os.environ["VOXGATE_STATE_DIR"]) / "map_blocks"
    (journal,) = folder.glob("*.journal")
    # a journal an older voxgate wrote, with credentials in its URL
    old = folder / "0123456789abcdef01234567.journal"
    old.write_text(json.dumps({
        "url": "precomputed://https://alice:hunter2@example.org/em?token=s3cr3t",
        "plan": {"scale": 0, "region": "Box(...)", "block": [8, 8, 8], "dtype": "|u1",
                 "blocks": 9},
        "fn": "mod.f:0011223344556677"}) + "\n0 0 0 8 8 8 00000000\n")

    res = CliRunner().invoke(main, ["cp", "--status"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("no unfinished copies")  # (the copies' part first)
    lines = [ln for ln in res.output.splitlines() if ln.startswith("map_blocks in place")]
    assert len(lines) == 2, res.output
    mine = next(ln for ln in lines if "counts.zarr" in ln)
    assert "add_one_then_fail" in mine and "2/4 blocks done" in mine and str(journal) in mine
    theirs = next(ln for ln in lines if "example.org" in ln)
    assert "1/9 blocks done" in theirs
    assert "hunter2" not in res.output and "s3cr3t" not in res.output

    # the volume as typed (a bare path) finds the journal its absolute zarr:// URL keys
    res = CliRunner().invoke(main, ["cp", "--forget-map-blocks", f"{tmp_path}/counts.zarr"])
    assert res.exit_code == 0, res.output
    assert "forgot map_blocks in place" in res.output and "2/4 blocks were done" in res.output
    assert not journal.exists() and not journal.with_suffix(".blocks").exists()
    assert old.exists()
    res = CliRunner().invoke(main, ["cp", "--forget-map-blocks", f"{tmp_path}/counts.zarr"])
    assert res.exit_code == 0 and "nothing to forget" in res.output

    # forgotten: the same call now applies fn to every block (the two done get it twice)
    calls = -100
    voxgate.map_blocks(add_one_then_fail, v, out=v, block=(8, 16, 16), workers=1)
    assert calls == -96
    got = v.read()
    assert sorted(np.unique(got).tolist()) == [2, 3]

    res = CliRunner().invoke(main, ["cp", "--forget-all"])
    assert res.exit_code == 0, res.output
    assert "forgot map_blocks in place" in res.output and "hunter2" not in res.output
    assert not list(folder.glob("*.journal"))
    for args in (["cp", "--forget-map-blocks", v.url, "x"],
                 ["cp", "--forget-map-blocks", v.url, "--status"]):
        assert CliRunner().invoke(main, args).exit_code == 2, args


# -- webknossos:// locations --------------------------------------------------------------------

_GEOM: dict[str, Any] = dict(shape=(8, 16, 16), chunks=(8, 16, 16), dtype="uint8",
                             voxel_size=(24, 11, 11))


def _peer(code: str, *args: str) -> str:
    assert PEER, "CI must run these: scripts/test.sh sets VOXGATE_WEBKNOSSOS_PYTHON"
    out = subprocess.run([PEER, "-W", "ignore", "-c", textwrap.dedent(code), *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_webknossos_create_and_copy_agree_on_location(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    voxgate.create(f"webknossos://{ds}", layer="color", **_GEOM)[:] = 9
    src = voxgate.create(f"zarr://{tmp_path}/src.zarr", **_GEOM)
    src[:] = 5
    props = (ds / "datasource-properties.json").read_text()
    # a layer= other than the layer the URL names: refused by create and copy alike, as
    # opening it is (create made the URL's layer "f", dropping layer="g")
    for attempt in (lambda: voxgate.create(f"webknossos://{ds}/f", layer="g", **_GEOM),
                    lambda: voxgate.copy(src, f"webknossos://{ds}/f", layer="g",
                                         progress=False)):
        with pytest.raises(InvalidRequestError, match="layer='g'"):
            attempt()
    with pytest.raises(InvalidRequestError, match="layer='g'"):
        voxgate.open(f"webknossos://{ds}/color", layer="g")
    assert (ds / "datasource-properties.json").read_text() == props
    assert not (ds / "f").exists() and not (ds / "g").exists()
    # the same name twice is that layer: the copy made it, and the same copy run again
    # (was refused: "options only apply when copy creates the destination")
    for _ in range(2):
        report = voxgate.copy(src, f"webknossos://{ds}/e", layer="e", progress=False)
        assert report.dst == f"webknossos://{ds}/e"
    np.testing.assert_array_equal(voxgate.open(f"webknossos://{ds}/e").read(), 5)


@pytest.mark.skipif(not PEER and not os.environ.get("CI"),
                    reason="VOXGATE_WEBKNOSSOS_PYTHON names no Python with webknossos")
def test_webknossos_reads_layers_created_under_every_spelling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tmp_path / "ds"
    _peer("""
        import sys, numpy as np, webknossos as wk
        ds = wk.Dataset(sys.argv[1], voxel_size=(11, 11, 24))
        layer = ds.add_layer("color", "color", dtype_per_channel="uint8",
                             bounding_box=wk.BoundingBox((0, 0, 0), (16, 16, 8)))
        layer.add_mag(1, chunk_shape=32, shard_shape=64).write(
            np.full((16, 16, 8), 9, np.uint8), absolute_offset=(0, 0, 0))
    """, str(ds))
    monkeypatch.chdir(tmp_path)
    src = voxgate.create(f"zarr://{tmp_path}/src.zarr", **_GEOM)
    spellings: list[tuple[str, dict[str, Any], str]] = [
        (f"webknossos://{ds}/", {"layer": "a"}, "a"),              # trailing slash
        (f"webknossos://file://{ds}/b", {}, "b"),                  # file://, layer in the URL
        ("webknossos://ds/c/", {}, "c"),                           # relative, trailing slash
        ("webknossos://./ds", {"layer": "d"}, "d"),                # ./
        (f"webknossos://file://{ds}/", {"layer": "e"}, "e"),
    ]
    for value, (url, opts, name) in enumerate(spellings, start=1):
        v = voxgate.create(url, **opts, **_GEOM)
        v[:] = value
        assert v.remote.layer == name, url
        # reopened from the URL as typed and from the canonical one: the same layer
        np.testing.assert_array_equal(voxgate.open(url, **opts).read(), value)
        np.testing.assert_array_equal(voxgate.open(f"webknossos://{ds}/{name}").read(), value)
    with pytest.raises(InvalidRequestError, match="layer='x'"):  # (made "f", unlisted in wk)
        voxgate.create("webknossos://ds/f/", layer="x", **_GEOM)
    # copy's destination, by the same rule (create_location)
    src[:] = 6
    voxgate.copy(src, "webknossos://file://ds/", layer="g", progress=False)
    voxgate.copy(src, f"webknossos://{ds}/h/", progress=False)
    out = _peer("""
        import sys, json, webknossos as wk
        ds = wk.Dataset.open(sys.argv[1])
        print(json.dumps({name: [int(v) for v in (layer.get_finest_mag().read().min(),
                                                   layer.get_finest_mag().read().max())]
                          for name, layer in ds.layers.items()}))
    """, str(ds))
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"color": [9, 9], "a": [1, 1], "b": [2, 2], "c": [3, 3], "d": [4, 4],
                   "e": [5, 5], "g": [6, 6], "h": [6, 6]}
    assert sorted(p.name for p in ds.iterdir() if p.is_dir()) == sorted(got)
