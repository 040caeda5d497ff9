"""voxgate.copy: every pair of Remotes, regions, scales, resuming after Ctrl-C and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import voxgate
import voxgate.transfer  # tests patch its BLOCK_BYTES; also when run alone (-k)
from voxgate.errors import InvalidRequestError, OutOfBoundsError
from voxgate.geometry import Box
from voxgate.remotes.zarr import ZarrRemote
from voxgate.synthetic import synthetic_em

SCHEMES = {
    "mem": lambda root, name: f"mem://{root.name}-{name}",
    "zarr3": lambda root, name: f"zarr://{root}/{name}.zarr",
    "zarr2": lambda root, name: f"zarr://{root}/{name}.zarr",
    "n5": lambda root, name: f"n5://{root}/{name}.n5",
    "hdf5": lambda root, name: f"hdf5://{root}/{name}.h5#/volume",
    "precomputed": lambda root, name: f"precomputed://file://{root}/{name}",
}
OPTIONS = {"zarr2": {"zarr_format": 2}}
SHAPE = (24, 40, 56)


@pytest.fixture(scope="module")
def em() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_em(SHAPE, seed=3, cell=(8, 16, 16))


def _make(scheme: str, root: Path, name: str, data: np.ndarray, kind: str) -> voxgate.Volume:
    vol = voxgate.create(SCHEMES[scheme](root, name), shape=data.shape, dtype=data.dtype,
                         chunks=(8, 16, 16), voxel_size=(40, 8, 8), kind=kind, num_scales=2,
                         offset=(0, 8, 16), **OPTIONS.get(scheme, {}))
    vol[:] = data
    vol.at_scale(1)[:] = data[:, ::2, ::2][: vol.at_scale(1).shape[0]]
    return vol


@pytest.mark.parametrize("src", list(SCHEMES))
@pytest.mark.parametrize("dst", list(SCHEMES))
def test_copy_between_every_pair(tmp_path: Path, src: str, dst: str,
                                 em: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = em
    for kind, data in (("image", image), ("segmentation", labels)):
        s = _make(src, tmp_path, f"src-{kind}", data, kind)
        dst_url = SCHEMES[dst](tmp_path, f"dst-{kind}")
        report = voxgate.copy(s.url, dst_url, progress=False, **OPTIONS.get(dst, {}))
        assert report.created
        assert report.scales == [0, 1]
        out = voxgate.open(dst_url)
        assert out.kind == kind
        assert out.dtype == data.dtype
        assert out.voxel_size.zyx() == (40.0, 8.0, 8.0)
        assert tuple(out.offset) == (0, 8, 16)
        assert len(out.scales) == 2
        np.testing.assert_array_equal(out.read(), data)
        np.testing.assert_array_equal(out.at_scale(1).read(), s.at_scale(1).read())
        assert out.at_scale(1).voxel_size.zyx() == s.at_scale(1).voxel_size.zyx()


def test_copy_report_and_region(tmp_path: Path, em: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = em
    src = _make("zarr3", tmp_path, "src", image, "image")
    box = Box((4, 12, 20), (20, 40, 60))  # dataset coordinates (offset 0, 8, 16)
    report = voxgate.copy(src, f"zarr://{tmp_path}/part.zarr", box=box, scales=[0],
                          progress=False)
    assert report.scales == [0]
    assert report.bytes_written > 0
    out = voxgate.open(f"zarr://{tmp_path}/part.zarr")
    expected = np.zeros_like(image)
    expected[4:20, 4:32, 4:44] = image[4:20, 4:32, 4:44]
    np.testing.assert_array_equal(out.read(), expected)
    # a view of a Volume copies just that view
    report = voxgate.copy(src[0:8], f"zarr://{tmp_path}/view.zarr", scales=[0], progress=False)
    out = voxgate.open(f"zarr://{tmp_path}/view.zarr").read()
    assert (out[0:8] == image[0:8]).all() and not out[8:].any()
    assert "chunks written" in str(report)


def test_copy_into_existing_destination_overwrites(tmp_path: Path,
                                                   em: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = em
    src = _make("zarr3", tmp_path, "src", image, "image")
    dst = _make("zarr3", tmp_path, "dst", np.full_like(image, 9), "image")
    src[0:8] = 0  # zeros in the source must overwrite the 9s: nothing is skipped as "empty"
    report = voxgate.copy(src, dst.url, progress=False)
    assert not report.created
    np.testing.assert_array_equal(dst.read(), src.read())


def test_copy_bad_input(tmp_path: Path, em: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = em
    src = _make("zarr3", tmp_path, "src", image, "image")
    other = _make("zarr3", tmp_path, "seg", labels, "segmentation")
    with pytest.raises(InvalidRequestError, match="dtype"):
        voxgate.copy(src, other.url, progress=False)
    with pytest.raises(InvalidRequestError, match="same"):
        voxgate.copy(src.url, src.url, progress=False)
    with pytest.raises(OutOfBoundsError):
        voxgate.copy(src, f"zarr://{tmp_path}/x.zarr", box=Box((0, 0, 0), (100, 8, 8)),
                     progress=False)
    with pytest.raises(InvalidRequestError, match="scale 5"):
        voxgate.copy(src, f"zarr://{tmp_path}/y.zarr", scales=[5], progress=False)
    small = voxgate.create(f"zarr://{tmp_path}/small.zarr", shape=(4, 4, 4), chunks=(4, 4, 4),
                           dtype="uint8", voxel_size=(1, 1, 1))
    with pytest.raises(InvalidRequestError, match="must match"):
        voxgate.copy(src, small.url, scales=[0], progress=False)
    with pytest.raises(InvalidRequestError, match="options"):
        voxgate.copy(src, small.url, zarr_format=2, progress=False)


# The child copies with two workers.  Its source lets the first READS_BEFORE_PAUSE reads through
# and holds every later read until it is released; once both workers are held it prints
# "paused".  Each worker finishes a block (read, write) before taking the next, and the copy's
# own thread records it in the journal a moment later, so from then on exactly
# READS_BEFORE_PAUSE blocks are done, and recorded once the parent has seen them all in the
# journal, whatever the machine's load.  A SIGINT releases the held reads (as in-flight reads
# finish on their own after a Ctrl-C) and then raises KeyboardInterrupt as Python's default
# handler does; a SIGKILL never releases them.
READS_BEFORE_PAUSE = 8
WORKERS = 2
_CHILD = textwrap.dedent("""
    import signal, sys, threading
    import voxgate, voxgate.transfer
    from voxgate.remotes.zarr import ZarrRemote
    voxgate.transfer.BLOCK_BYTES = 1
    allowed, workers = int(sys.argv[3]), int(sys.argv[4])
    release = threading.Event()
    lock = threading.Lock()
    state = {"reads": 0, "held": 0}
    real_read = ZarrRemote.read
    def read(self, box, scale=0):
        with lock:
            state["reads"] += 1
            hold = state["reads"] > allowed
            if hold:
                state["held"] += 1
                if state["held"] == workers:
                    print("paused", flush=True)
        if hold:
            release.wait()
        return real_read(self, box, scale)
    ZarrRemote.read = read
    def on_sigint(signum, frame):
        release.set()
        signal.default_int_handler(signum, frame)
    signal.signal(signal.SIGINT, on_sigint)
    print("started", flush=True)
    voxgate.copy(sys.argv[1], sys.argv[2], workers=workers, progress=False)
    print("finished", flush=True)
""")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_interrupted_copy_resumes(tmp_path: Path, how: str, em: tuple[np.ndarray, np.ndarray],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, labels = em
    src = _make("zarr3", tmp_path, "src", labels, "segmentation")
    dst_url = f"precomputed://file://{tmp_path}/dst"
    state = Path(os.environ["VOXGATE_STATE_DIR"])
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    proc = subprocess.Popen([sys.executable, str(script), src.url, dst_url,
                             str(READS_BEFORE_PAUSE), str(WORKERS)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    assert proc.stdout is not None
    watchdog = threading.Timer(300, proc.kill)  # a hung child fails the test instead of hanging it
    watchdog.start()
    try:
        first = [proc.stdout.readline(), proc.stdout.readline()]
    finally:
        watchdog.cancel()
    if first != [b"started\n", b"paused\n"]:  # the copy ended (or failed) without pausing
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"child did not pause: {first!r} {out!r} {err.decode()[-2000:]}")
    # the last finished block may not be recorded yet (its record is written by the copy's
    # thread after the worker is done): wait until all of them are, and never more
    recorded, deadline = -1, time.monotonic() + 60
    while recorded < READS_BEFORE_PAUSE and time.monotonic() < deadline:
        found = list((state / "transfers").glob("*.journal"))
        recorded = len(found[0].read_text().splitlines()) - 2 if found else -1
        time.sleep(0.02)
    assert recorded == READS_BEFORE_PAUSE
    proc.send_signal(getattr(signal, how))
    out, _ = proc.communicate(timeout=60)
    assert b"finished" not in out
    assert proc.returncode != 0
    journal = next((state / "transfers").glob("*.journal"))
    lines = journal.read_text().splitlines()
    assert lines[1] == "created"
    done_before = len(lines) - 2
    if how == "SIGKILL":
        # exactly the blocks finished before the pause are recorded
        assert done_before == READS_BEFORE_PAUSE
    else:
        # Ctrl-C: the two held blocks finish and are recorded, and nothing new starts beyond
        # what was already queued (at most 2 * WORKERS blocks in flight or queued)
        assert READS_BEFORE_PAUSE + WORKERS <= done_before <= READS_BEFORE_PAUSE + 2 * WORKERS

    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    report = voxgate.copy(src.url, dst_url, workers=2, progress=False)
    assert report.resumed
    assert report.blocks_skipped == done_before
    assert report.blocks_skipped + report.blocks_written == report.blocks_total
    assert report.blocks_written < report.blocks_total
    assert not list((state / "transfers").glob("*.journal"))  # cleaned up when complete
    out_vol = voxgate.open(dst_url)
    np.testing.assert_array_equal(out_vol.read(), labels)
    np.testing.assert_array_equal(out_vol.at_scale(1).read(), src.at_scale(1).read())
    # a repeat after completion starts over (no journal) and changes nothing
    again = voxgate.copy(src.url, dst_url, progress=False)
    assert not again.resumed
    np.testing.assert_array_equal(out_vol.read(), labels)


def test_ctrl_c_raises_copy_interrupted_and_the_journal_is_listed_and_forgotten(
    tmp_path: Path, em: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (SIGINT to the process, taken by the main thread while workers write) ends the
    copy with CopyInterrupted, a KeyboardInterrupt naming the journal; list_journals shows
    it, forget_journals deletes it, and the copy run again then starts from the beginning."""
    from voxgate.remotes.precomputed import PrecomputedRemote
    from voxgate.transfer import CopyInterrupted, forget_journals, list_journals

    img, _ = em
    src = _make("zarr3", tmp_path, "src", img, "image")
    dst_url = f"precomputed://file://{tmp_path}/dst"
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)  # one block per chunk
    real = PrecomputedRemote.write
    writes = [0]

    def write(self: PrecomputedRemote, *args: object, **kwargs: object) -> None:
        writes[0] += 1
        if writes[0] == 4:
            signal.raise_signal(signal.SIGINT)  # handled by the main thread, as Ctrl-C is
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PrecomputedRemote, "write", write)
    # Python's own Ctrl-C handler, whatever an earlier test or library left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(CopyInterrupted) as info:
            voxgate.copy(src, dst_url, workers=2, progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    stop = info.value
    assert isinstance(stop, KeyboardInterrupt)
    assert stop.journal.exists() and f"journal at {stop.journal}" in str(stop)
    lines = stop.journal.read_text().splitlines()
    assert stop.blocks_done == len(lines) - 2 >= 4  # header, "created", one line per block
    assert stop.blocks_done < stop.blocks_total
    assert "run the same copy again to resume" in str(stop)

    [status] = list_journals()
    assert (status.src, status.dst) == (src.url, dst_url)
    assert (status.blocks_done, status.blocks_total) == (stop.blocks_done, stop.blocks_total)
    assert status.path == stop.journal and status.age >= 0
    assert f"{stop.blocks_done}/{stop.blocks_total} blocks done" in str(status)

    assert forget_journals(src.url, f"zarr://{tmp_path}/other.zarr") == []
    with pytest.raises(InvalidRequestError, match="both"):
        forget_journals(src.url)
    [gone] = forget_journals(src.url, dst_url)
    assert gone.path == stop.journal and not stop.journal.exists()
    assert list_journals() == []
    monkeypatch.setattr(PrecomputedRemote, "write", real)
    report = voxgate.copy(src, dst_url, workers=2, progress=False)
    assert not report.resumed and report.blocks_skipped == 0
    np.testing.assert_array_equal(voxgate.open(dst_url).read(), img)


def test_a_relative_destination_in_another_directory_is_another_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy into ``zarr://x.zarr`` stopped in one directory, then a copy into
    ``zarr://x.zarr`` in another, where such a volume exists already: the second is another
    volume and copies every block (the journal was keyed by the relative URL, so the second
    copy resumed the first one's journal and skipped the blocks it had copied elsewhere)."""
    data = (np.arange(16 * 64 * 64) % 251).astype(np.uint8).reshape(16, 64, 64)
    src = voxgate.create(f"zarr://{tmp_path}/src.zarr", shape=data.shape, dtype="uint8",
                         chunks=(16, 16, 16), voxel_size=(8, 8, 8))
    src[:] = data
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path / "b")
    voxgate.create("zarr://x.zarr", shape=data.shape, dtype="uint8", chunks=(16, 16, 16),
                   voxel_size=(8, 8, 8))
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)  # one block per chunk: 16
    real_read = ZarrRemote.read
    reads = [0]

    def failing(self: ZarrRemote, box: Box, scale: int = 0) -> np.ndarray:
        if "src.zarr" in self.url:
            reads[0] += 1
            if reads[0] > 5:
                raise RuntimeError("the source went away")
        return real_read(self, box, scale)

    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setattr(ZarrRemote, "read", failing)
    with pytest.raises(Exception, match="the source went away"):
        voxgate.copy(src.url, "zarr://x.zarr", workers=1, progress=False)
    monkeypatch.setattr(ZarrRemote, "read", real_read)
    assert list((Path(os.environ["VOXGATE_STATE_DIR"]) / "transfers").glob("*.journal"))
    monkeypatch.chdir(tmp_path / "b")
    report = voxgate.copy(src.url, "zarr://x.zarr", workers=1, progress=False)
    assert not report.resumed and report.blocks_skipped == 0
    np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path}/b/x.zarr").read(), data)
