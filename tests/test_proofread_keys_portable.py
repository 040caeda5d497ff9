"""Proofreading histories keyed by what the open options choose, and the file locks of
proofreading, the relay's state file and write generations and TIFF writes without ``fcntl``.

1. Two multiscales of one OME-Zarr group share its URL.  Their edit histories were one (kept
   by URL), so ``undo`` of multiscale "a" undid an edit of "b" by writing "b"'s saved voxels
   into "a"; and they shared one label-statistics cache, so an edit of "a" looked its ids up in
   "b"'s boxes.  The stores are real zarr directories on disk and a real DVID test server.
2. Each module that locked a file imported ``fcntl`` at its top, so ``import voxgate`` failed
   on Windows.  Each test here runs real processes with ``fcntl`` made unimportable (which
   selects the ``O_EXCL`` lock files of :mod:`voxgate.storage.locking`): the module imports,
   and a second process's writer waits for the first's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.services.proofread_history import history_location, history_options

SHAPE = (8, 16, 16)


# -- 1. histories keyed by the chosen multiscale --------------------------------------------------
def _two_multiscales(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An OME-Zarr group with multiscales "a" (dataset ``0``) and "b" (dataset ``b0``) of the
    same shape and chunks, labelled differently; returns their labels."""
    url = f"zarr://{path}"
    a = np.zeros(SHAPE, np.uint64)
    a[:, 2:6, 2:6], a[:, 10:14, 10:14], a[:, 2:6, 10:14] = 1, 2, 3
    b = np.zeros(SHAPE, np.uint64)
    b[:, :8, :], b[:, 8:, :] = 1, 2  # (no id 3)
    voxgate.create(url, shape=SHAPE, chunks=(8, 8, 8), dtype="uint64", voxel_size=(8, 8, 8),
                   kind="segmentation")[:] = a
    zarr.create_array(str(path / "b0"), shape=SHAPE, chunks=(8, 8, 8), dtype="uint64",
                      fill_value=0)[:] = b
    doc = json.loads((path / "zarr.json").read_text())
    ms = doc["attributes"]["ome"]["multiscales"]
    ms[0]["name"] = "a"
    ms.append({**ms[0], "name": "b", "datasets": [{**ms[0]["datasets"][0], "path": "b0"}]})
    (path / "zarr.json").write_text(json.dumps(doc))
    return a, b


def test_undo_of_one_multiscale_never_touches_the_other(tmp_path: Path) -> None:
    path = tmp_path / "two.zarr"
    a0, b0 = _two_multiscales(path)
    url = f"zarr://{path}"
    a = voxgate.open(url, mode="r+", multiscale="a")
    b = voxgate.open(url, mode="r+", multiscale="b")
    assert np.array_equal(a.read(), a0) and np.array_equal(b.read(), b0)

    voxgate.merge(b, [1, 2])  # (b's label statistics are computed and cached)
    b1 = np.where(b0 == 2, np.uint64(1), b0)
    assert np.array_equal(b.read(), b1)
    assert len(voxgate.history(b)) == 1 and voxgate.history(a).empty
    with pytest.raises(InvalidRequestError, match="has 0 edit"):
        voxgate.undo(a)  # nothing of "a" to undo (it undid "b"'s merge, writing "b" into "a")
    assert np.array_equal(a.read(), a0) and np.array_equal(b.read(), b1)

    # an edit of "a" finds its ids in "a"'s statistics ("b" has no id 3)
    voxgate.merge(a, [1, 3])
    a1 = np.where(a0 == 3, np.uint64(1), a0)
    assert np.array_equal(a.read(), a1) and np.array_equal(b.read(), b1)

    voxgate.undo(b)
    assert np.array_equal(b.read(), b0) and np.array_equal(a.read(), a1)
    voxgate.undo(a)
    assert np.array_equal(a.read(), a0) and np.array_equal(b.read(), b0)
    with pytest.raises(InvalidRequestError, match="has 0 edit"):
        voxgate.undo(b)

    # "b"'s history is one folder down, and its records name the option
    hist_b = history_location(url, 0, None, {"multiscale": "b"})
    assert hist_b.parent == path / ".voxgate" and hist_b.name.startswith("options-")
    records = [json.loads(line) for line in (hist_b / "history.jsonl").read_text().splitlines()]
    assert records[0]["options"] == {"multiscale": "b"}
    # an explicit history_dir keeps them apart too
    voxgate.merge(b, [1, 2], history_dir=tmp_path / "h")
    with pytest.raises(InvalidRequestError, match="has 0 edit"):
        voxgate.undo(a, history_dir=tmp_path / "h")
    voxgate.undo(b, history_dir=tmp_path / "h")
    assert np.array_equal(b.read(), b0)


def test_a_volume_opened_without_options_keeps_its_history_where_it_was(
        tmp_path: Path) -> None:
    url = f"zarr://{tmp_path}/one.zarr"
    vol = voxgate.create(url, shape=SHAPE, chunks=(8, 8, 8), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation")
    labels = np.zeros(SHAPE, np.uint64)
    labels[:, :8], labels[:, 8:] = 1, 2
    vol[:] = labels
    vol = voxgate.open(url, mode="r+")
    assert history_options(vol.remote) == {}
    voxgate.merge(vol, [1, 2])
    assert (tmp_path / "one.zarr" / ".voxgate" / "history.jsonl").is_file()
    voxgate.undo(vol)
    assert np.array_equal(voxgate.open(url).read(), labels)


def test_transport_options_and_defaults_choose_no_other_history(tmp_path: Path) -> None:
    """A DVID labelmap's spec always lists timeout, concurrency, compression and supervoxels:
    none of them at their defaults (nor a timeout) moves its history from where it was."""
    from voxgate.remotes.dvid import DVIDRepo
    from voxgate.testing.dvid import start_server

    server = start_server(log=tmp_path / "dvid.log")
    try:
        url = DVIDRepo.create(server.url, alias="keys").url("seg")
        voxgate.create(url, shape=(16, 16, 16), chunks=(16, 16, 16), dtype="uint64",
                       voxel_size=(8, 8, 8), kind="segmentation")
        for kw in ({}, {"timeout": 5.0, "concurrency": 2, "compression": "gzip"}):
            remote = voxgate.open(url, mode="r+", **kw).remote
            assert set(remote.spec()["options"]) >= {"timeout", "supervoxels"}
            assert history_options(remote) == {}, kw
        sv = voxgate.open(url, mode="r+", supervoxels=True).remote
        assert history_options(sv) == {"supervoxels": True}  # (other voxels: its own)
    finally:
        server.stop()


# -- 2. the file locks without fcntl --------------------------------------------------------------
#: run in each child process: fcntl made unimportable before voxgate is imported
_PRELUDE = """
import sys, time, os
sys.modules["fcntl"] = None
from voxgate.storage import locking
assert not locking._FLOCK
def stamp(name):
    with open(os.path.join(OUT, name), "w") as f:
        f.write(repr(time.monotonic()))
def wait(name):
    while not os.path.exists(os.path.join(OUT, name)):
        time.sleep(0.01)
"""


def _child(out: Path, body: str) -> subprocess.Popen[bytes]:
    code = f"OUT = {str(out)!r}\n" + _PRELUDE + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


#: how long :func:`_done` waits for each child
_WAIT = 60.0


def _done(*procs: subprocess.Popen[bytes]) -> None:
    """Wait for every child (``_WAIT`` s each at most; one still running then is killed) and then
    assert they all succeeded: a child that failed first never leaves the other running into
    later tests (its Popen would warn in whichever test runs when it is collected)."""
    failures = []
    try:
        for p in procs:
            try:
                _, err = p.communicate(timeout=_WAIT)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                failures.append(f"still running after {_WAIT} s (killed): {err.decode()}")
                continue
            if p.returncode != 0:
                failures.append(err.decode())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert not failures, "\n".join(failures)


def test_done_leaves_no_child_running_when_one_fails(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_WAIT", 2.0)
    failing = _child(tmp_path, "raise SystemExit('refused')\n")
    waiting = _child(tmp_path, "wait('never')\n")
    try:
        with pytest.raises(AssertionError, match="refused"):
            _done(failing, waiting)
        assert waiting.poll() is not None  # killed, not left running into later tests
    finally:
        waiting.kill()
        waiting.communicate()


def _stamp(out: Path, name: str) -> float:
    return float((out / name).read_text())


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def _exclusion(tmp_path: Path, hold: str, wait: str, setup: str = "", after: str = "") -> None:
    """Process A holds a module's lock (``hold``, a with-statement head) until process B is
    about to take it (``wait``) and 0.5 s more: B gets in only after A let go.  Then both run
    ``after`` (at once)."""
    for name in ("a_in", "a_out", "b_try", "b_in"):
        (tmp_path / name).unlink(missing_ok=True)
    a = _child(tmp_path, f"""{setup}
with {hold}:
    stamp("a_in")
    wait("b_try")
    time.sleep(0.5)
    stamp("a_out")
{after}""")
    b = _child(tmp_path, f"""{setup}
wait("a_in")
stamp("b_try")
with {wait}:
    stamp("b_in")
{after}""")
    _done(a, b)
    assert _stamp(tmp_path, "b_in") >= _stamp(tmp_path, "a_out")


def test_proofreading_edits_of_two_processes_take_turns_without_fcntl(tmp_path: Path) -> None:
    url = f"zarr://{tmp_path}/seg.zarr"
    voxgate.create(url, shape=SHAPE, chunks=(8, 8, 8), dtype="uint64", voxel_size=(8, 8, 8),
                   kind="segmentation")[:] = 1
    setup = f"""
import voxgate
from voxgate.services.proofread.core import _one_edit
vol = voxgate.open({url!r}, mode="r+")
"""
    # and then both relabel 1 as 5 at once: one does, the other (after it) finds no 1
    relabel = """
from voxgate.errors import InvalidRequestError
try:
    voxgate.relabel(vol, {1: 5})
except InvalidRequestError as exc:
    assert "have no voxels" in str(exc)
"""
    _exclusion(tmp_path, "_one_edit(vol, None)", "_one_edit(vol, None)", setup, relabel)
    assert np.unique(voxgate.open(url).read()).tolist() == [5]
    assert voxgate.history(url)["status"].tolist() == ["done"]


def test_relay_state_transactions_of_two_processes_take_turns_without_fcntl(
        tmp_path: Path) -> None:
    setup = f"""
from pathlib import Path
from voxgate.relay.statefile import StateFile
state = StateFile(Path({str(tmp_path / "state.json")!r}), {{"reserved": {{}}}})
"""
    # and then reserving ids (read, change, save under the lock) from both at once loses none
    bump = """
for _ in range(20):
    with state.transaction() as doc:
        n = doc["reserved"].get("n", 0)
        time.sleep(0.002)
        doc["reserved"]["n"] = n + 1
        state.save()
"""
    _exclusion(tmp_path, "state.transaction()", "state.transaction()", setup, bump)
    assert json.loads((tmp_path / "state.json").read_text())["reserved"]["n"] == 40


def test_write_generations_lock_without_fcntl(tmp_path: Path) -> None:
    setup = f"""
from pathlib import Path
from voxgate.relay.generations import Generations
gens = Generations(Path({str(tmp_path / "gens")!r}))
"""
    # a delete (exclusive) waits for a write in progress in another process, a write for a
    # delete
    a = _child(tmp_path, setup + """
with gens.write_lock("t"):
    stamp("a_in")
    wait("b_try")
    time.sleep(0.5)
    stamp("a_out")
wait("b_in")
stamp("a_try")
with gens.write_lock("t"):
    stamp("a_in2")
""")
    b = _child(tmp_path, setup + """
wait("a_in")
stamp("b_try")
with gens.exclusive("t"):
    stamp("b_in")
    wait("a_try")
    time.sleep(0.5)
    stamp("b_out")
""")
    _done(a, b)
    assert _stamp(tmp_path, "b_in") >= _stamp(tmp_path, "a_out")
    assert _stamp(tmp_path, "a_in2") >= _stamp(tmp_path, "b_out")
    # writers share the lock (two at once, in two processes); a store is refused meanwhile,
    # and allowed after (and a write that died holding it stops nothing: killed below);
    # bumps of two processes at once (another channel), none lost
    bump = "\nfor _ in range(25):\n    gens.bump('u')\n"
    a = _child(tmp_path, setup + bump + """
with gens.write_lock("t"):
    stamp("w1")
    time.sleep(30)
""")
    check = _child(tmp_path, setup + bump + """
wait("w1")
with gens.write_lock("t"):
    with gens.store_lock("t") as free:
        assert not free
with gens.store_lock("t") as free:
    assert not free  # (the first writer is still writing)
""")
    try:
        _done(check)
    finally:
        a.kill()
        a.communicate()
    _done(_child(tmp_path, setup + """
with gens.store_lock("t") as free:
    assert free  # (its writer died: its lock is taken and removed)
with gens.exclusive("t"):
    pass
"""))
    from voxgate.relay.generations import Generations

    doc = json.loads((tmp_path / "gens" / Generations._name("u")).read_text())
    assert doc["generation"] == 49  # (the first bump makes the file, at 0)


def test_tiff_writers_of_two_processes_take_turns_without_fcntl(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    voxgate.create(f"tiff://{path}", shape=(2, 8, 8), dtype="uint8", chunks=(1, 8, 8),
                   voxel_size=(8, 8, 8))
    setup = f"""
from voxgate.remotes.tiff.pages import _File
f = _File({str(path)!r}, True)
"""
    _exclusion(tmp_path, "f.exclusive()", "f.exclusive()", setup)
