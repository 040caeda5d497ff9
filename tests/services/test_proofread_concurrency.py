"""Two edits of one volume at once: in threads of one process, and in two processes.

Every edit reads the blocks it rewrites and writes them whole, so two edits whose blocks meet
must not run at the same time: the later write would put back what the other one changed.
Before edits were serialized, two merges started together lost one of them in 9 runs of 10.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.services.proofread.core import _one_edit, _volume_key

from ..relay.test_write_races import _in_thread, _joined


def _interleaved(path: Path) -> str:
    """ids 2 and 4 in alternate columns of every block, 1 and 3 one voxel each."""
    lab = np.zeros((8, 48, 48), np.uint64)
    lab[:, :, ::2] = 2
    lab[:, :, 1::2] = 4
    lab[0, 0, 0], lab[0, 0, 1] = 1, 3
    url = f"zarr://{path}"
    v = voxgate.create(url, shape=lab.shape, chunks=(8, 16, 16), dtype="uint64",
                       voxel_size=(40, 8, 8), kind="segmentation")
    v[:] = lab
    return url


def test_two_merges_at_once_in_threads_both_land(tmp_path: Path) -> None:
    for trial in range(4):
        url = _interleaved(tmp_path / f"s{trial}.zarr")
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def merge(ids: list[int], url: str = url, start: threading.Barrier = start,
                  errors: list[BaseException] = errors) -> None:
            try:
                start.wait()
                voxgate.merge(url, ids)
            except BaseException as exc:  # handed to the test
                errors.append(exc)

        threads = [threading.Thread(target=merge, args=(ids,)) for ids in ([1, 2], [3, 4])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        left = set(np.unique(voxgate.open(url).read()).tolist())
        assert left == {1, 3}, f"trial {trial}: ids left {left}: an edit was lost"
        hist = voxgate.history(url)
        assert sorted(hist["n"]) == [1, 2] and set(hist["status"]) == {"done"}, hist


def test_an_edit_in_another_process_waits_for_the_one_in_progress(tmp_path: Path) -> None:
    url = _interleaved(tmp_path / "s.zarr")
    code = textwrap.dedent("""
        import sys, voxgate
        voxgate.merge(sys.argv[1], [3, 4])
        print("merged")
        """)
    vol = voxgate.open(url, mode="r+")
    with _one_edit(vol, None):  # an edit of this process, in progress
        other = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)  # (far longer than the other process needs to merge)
        waited = other.poll() is None
        voxgate.merge(url, [1, 2])  # nested inside this process's own lock: no deadlock
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err[-2000:]
    assert waited, f"the other process's merge did not wait: {out!r}"
    assert set(np.unique(voxgate.open(url).read()).tolist()) == {1, 3}
    assert sorted(voxgate.history(url)["n"]) == [1, 2]


def test_two_merges_with_different_history_dirs_in_threads_both_land(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first merge (history in h1) has read a block it rewrites and waits before writing it
    (gate); a second merge of the same volume (history in h2) must wait for the whole first
    one: edits of one volume run one at a time in a process whatever their history_dir.  On
    the old code (a lock per history folder) the second one ran meanwhile and the first then
    wrote back its stale block, bringing id 4 back."""
    url = _interleaved(tmp_path / "s.zarr")
    vol = voxgate.open(url, mode="r+")
    held, release = threading.Event(), threading.Event()
    armed = [True]
    write = vol.remote.write

    def gated_write(box: Any, array: np.ndarray, scale: int = 0) -> None:
        if armed[0]:  # (the first write: the first merge's, after it read the block)
            armed[0] = False
            held.set()
            assert release.wait(60)
        write(box, array, scale)

    monkeypatch.setattr(vol.remote, "write", gated_write)
    h1, h2 = tmp_path / "h1", tmp_path / "h2"
    first = _in_thread(lambda: voxgate.merge(vol, [1, 2], history_dir=h1))
    try:
        assert held.wait(60), "the first merge never wrote a block"
        second = _in_thread(lambda: voxgate.merge(vol, [3, 4], history_dir=h2))
        second[0].join(2.0)  # (on the old code the second merge is done well before this)
        ran_during = not second[0].is_alive()
    finally:
        release.set()
    _joined(*first)
    _joined(*second)
    left = set(np.unique(voxgate.open(url).read()).tolist())
    assert left == {1, 3}, f"ids left {left}: an edit was lost"
    assert not ran_during, "the second merge ran while the first one held its edit"
    for h in (h1, h2):
        hist = voxgate.history(url, history_dir=h)
        assert list(hist["operation"]) == ["merge"] and list(hist["status"]) == ["done"], hist


def test_a_volume_has_one_edit_lock_whatever_its_url_view_or_scale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = _interleaved(tmp_path / "s.zarr")
    _interleaved(tmp_path / "t.zarr")
    keys = {_volume_key(voxgate.open(u, mode="r+"))
            for u in (url, "zarr://s.zarr", "zarr://./s.zarr", f"zarr://file://{tmp_path}/s.zarr",
                      str(tmp_path / "s.zarr"))}
    vol = voxgate.open(url, mode="r+")
    keys |= {_volume_key(vol[2:6, 0:16, 8:40]), _volume_key(vol.at_scale(0))}
    assert keys == {str(tmp_path / "s.zarr" / ".voxgate")}
    assert _volume_key(voxgate.open(str(tmp_path / "t.zarr"))) != keys.pop()


def test_the_history_of_a_named_or_hosted_volume_is_never_a_folder_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mem://name and dvid://host:port/... name no folder: a folder of the same name in the
    working directory is not theirs (their history went into it before)."""
    from voxgate.services.proofread_history import HISTORY_ENV, history_location

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(HISTORY_ENV, str(tmp_path / "state"))
    (tmp_path / "seg").mkdir()
    (tmp_path / "127.0.0.1:8000" / "abc" / "seg").mkdir(parents=True)
    for url in ("mem://seg", "dvid://127.0.0.1:8000/abc/seg"):
        where = history_location(url, 0, None)
        assert where.parent == tmp_path / "state", (url, where)
    # a zarr path relative to the working directory is still that folder's
    (tmp_path / "s.zarr").mkdir()
    assert history_location("zarr://s.zarr", 0, None) == tmp_path / "s.zarr" / ".voxgate"


def test_edits_through_two_spellings_of_one_volume_share_its_ids(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The statistics new ids come from are the volume's, not its URL's as typed: a split
    through zarr://s.zarr and then one through the absolute path, then one through the first
    again, give out three different ids (the cached statistics of the first spelling did not
    know the second's new id before)."""
    from voxgate.services.proofread import _STATS

    monkeypatch.chdir(tmp_path)
    labels = np.zeros((4, 16, 64), np.uint64)
    for i, x in enumerate(range(0, 60, 10)):  # segments 1, 2, 3: two pieces each
        labels[:, 2:14, x:x + 4] = 1 + i // 2
    voxgate.create(f"zarr://{tmp_path}/s.zarr", shape=labels.shape, chunks=(4, 16, 32),
                   dtype="uint64", voxel_size=(8, 8, 8), kind="segmentation")[:] = labels
    try:
        a = voxgate.open("zarr://s.zarr", mode="r+")
        b = voxgate.open(str(tmp_path / "s.zarr"), mode="r+")
        new = [list(voxgate.split(v, i, history_dir=tmp_path / "h").new_ids)
               for v, i in ((a, 1), (b, 2), (a, 3))]
        assert new == [[4], [5], [6]], new
        final = voxgate.open(str(tmp_path / "s.zarr")).read()
        assert sorted(np.unique(final).tolist()) == [0, 1, 2, 3, 4, 5, 6]
    finally:
        _STATS.clear()
