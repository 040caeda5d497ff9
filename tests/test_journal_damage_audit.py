"""Copy journals on disk that are damaged or unexpected (a line cut short, garbage, bytes that
are not UTF-8, an empty file, a foreign header, indices out of range, a directory, an
unreadable file, a broken link, two journals of one pair): a rerun of the copy never crashes
with a raw traceback and never skips a block it cannot be sure was copied (the destination ends
equal to the source, or the copy refuses naming the file and what to do); ``list_journals`` /
``voxgate cp --status`` still list the good journals and name the damaged files, and forget
deletes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import voxgate
import voxgate.transfer
from voxgate.cli import main
from voxgate.errors import InvalidRequestError
from voxgate.geometry import Box
from voxgate.remotes.zarr import ZarrRemote
from voxgate.transfer import CopyInterrupted, forget_journals, list_journals

SHAPE = (8, 32, 32)  # chunks of 8: 16 blocks of one chunk each (BLOCK_BYTES = 1)


def _data(seed: int = 0) -> np.ndarray:
    return ((np.arange(np.prod(SHAPE)) * (seed + 1) + seed) % 251 + 1).astype(
        np.uint8).reshape(SHAPE)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(state))
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    return tmp_path


def _source(root: Path, name: str = "src", seed: int = 0) -> str:
    url = f"zarr://{root}/{name}.zarr"
    vol = voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=(8, 8, 8), voxel_size=(8, 8, 8))
    vol[:] = _data(seed)
    return url


def _interrupted(monkeypatch: pytest.MonkeyPatch, src: str, dst: str, after: int = 4,
                 **kw: object) -> CopyInterrupted:
    """The copy ``src`` -> ``dst`` stopped by a KeyboardInterrupt from the destination's
    ``after + 1``-th write (``after`` blocks written this run, one thread)."""
    real = ZarrRemote.write
    n = [0]
    name = dst.split("://", 1)[1]

    def write(self: ZarrRemote, *args: object, **kwargs: object) -> object:
        if name in self.url:
            n[0] += 1
            if n[0] == after + 1:
                raise KeyboardInterrupt
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(ZarrRemote, "write", write)
        with pytest.raises(CopyInterrupted) as info:
            voxgate.copy(src, dst, workers=1, progress=False, **kw)  # type: ignore[arg-type]
    assert n[0] == after + 1
    return info.value


def _finish(src: str, dst: str, **kw: object) -> voxgate.transfer.CopyReport:
    report = voxgate.copy(src, dst, workers=1, progress=False, **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(voxgate.open(dst).read(), voxgate.open(src).read())
    assert list(Path(os.environ["VOXGATE_STATE_DIR"], "transfers").iterdir()) == []
    return report


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voxgate", "cp", *args], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=120)


def _lines(journal: Path) -> list[str]:
    return journal.read_text().splitlines(keepends=True)


def test_a_last_line_cut_short_is_passed_over_and_the_next_lines_are_whole(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill mid-write leaves "0 0 0" for "0 0 0 3": the rerun skips the 3 whole blocks and
    copies the rest; the lines it appends start on a line of their own (they were glued to the
    cut one, "0 0 00 0 0 3", and lost: the journal then counted fewer blocks than
    CopyInterrupted.blocks_done, and a third run copied them again)."""
    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    stop = _interrupted(monkeypatch, src, dst)
    text = stop.journal.read_bytes()
    assert text.endswith(b"0 0 0 3\n")
    stop.journal.write_bytes(text[:-3])  # "0 0 0"
    [status] = list_journals()
    assert status.blocks_done == 3
    again = _interrupted(monkeypatch, src, dst, after=2)
    assert again.journal == stop.journal
    [status] = list_journals()
    assert status.blocks_done == again.blocks_done == 5
    report = _finish(src, dst)
    assert report.resumed and report.blocks_skipped == 5 and report.blocks_written == 11


def test_a_garbage_line_and_duplicates_are_passed_over(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    stop = _interrupted(monkeypatch, src, dst)
    lines = _lines(stop.journal)
    lines.insert(3, "xx yy zz\n")
    lines.insert(4, "0 1 2\n")
    lines.append("0 0 0 1\n")
    lines.append("0 0 0 1\n")
    stop.journal.write_text("".join(lines))
    [status] = list_journals()
    assert status.blocks_done == 4
    report = _finish(src, dst)
    assert report.resumed and report.blocks_skipped == 4 and report.blocks_written == 12


@pytest.mark.parametrize("bad", ["0 0 0 \u00b2", "0 0 0 --5", "0 0 \u0663 1", "0 0 0 +1"])
def test_a_line_of_odd_digits_is_passed_over_not_a_raw_value_error(
        env: Path, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    """"²".isdigit() and "--5".lstrip("-").isdigit() are True but int() refuses them: the
    rerun died with a raw ValueError (and --status hid the journal)."""
    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    stop = _interrupted(monkeypatch, src, dst)
    with open(stop.journal, "a", encoding="utf-8") as f:
        f.write(bad + "\n")
    [status] = list_journals()
    assert status.blocks_done == 4
    report = _finish(src, dst)
    assert report.blocks_skipped == 4 and report.blocks_written == 12


def test_a_line_of_bytes_that_are_not_utf8_is_passed_over(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rerun died with a raw UnicodeDecodeError; --status hid the journal."""
    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    stop = _interrupted(monkeypatch, src, dst)
    lines = stop.journal.read_bytes().splitlines(keepends=True)
    lines.insert(3, b"\xff\xfe 0 0\n")
    stop.journal.write_bytes(b"".join(lines))
    [status] = list_journals()
    assert status.blocks_done == 4 and status.path == stop.journal
    report = _finish(src, dst)
    assert report.resumed and report.blocks_skipped == 4 and report.blocks_written == 12


@pytest.mark.parametrize("content", [b"", b'{"src": "zarr://'])
def test_an_empty_journal_or_a_header_cut_short_starts_over(
        env: Path, monkeypatch: pytest.MonkeyPatch, content: bytes) -> None:
    """A kill as the copy started (the file made, its header not or not all written): nothing
    was recorded, the rerun starts from the first block and writes a header of its own (with
    a cut header the rerun appended to it, and its journal was then unreadable: --status hid
    it).  --status names the file meanwhile."""
    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    stop = _interrupted(monkeypatch, src, dst)
    stop.journal.write_bytes(content)
    assert list_journals() == []
    [(path, why)] = voxgate.transfer.damaged_journals()
    assert path == stop.journal and "empty" in why
    again = _interrupted(monkeypatch, src, dst, after=3)
    assert again.journal == stop.journal
    assert json.loads(_lines(again.journal)[0])["dst"] == dst
    [status] = list_journals()
    assert status.blocks_done == 3
    report = _finish(src, dst)
    assert report.blocks_skipped == 3 and report.blocks_written == 13


def test_a_header_that_is_not_json_is_refused_naming_the_file(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rerun trusted the lines under a header it could not read (another copy's for all it
    knew), and --status said "no unfinished copies"; now the copy refuses (a voxgate error
    naming the file and what to do, from the CLI too, no traceback), --status names the file,
    and --forget-all deletes it."""
    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    stop = _interrupted(monkeypatch, src, dst)
    lines = _lines(stop.journal)
    lines[0] = "{not json at all\n"
    stop.journal.write_text("".join(lines))
    with pytest.raises(InvalidRequestError) as info:
        voxgate.copy(src, dst, workers=1, progress=False)
    assert str(stop.journal) in str(info.value) and "--forget-all" in str(info.value)
    assert list_journals() == []
    out = _cli("--status")
    assert out.returncode == 0
    assert f"damaged journal {stop.journal}" in out.stdout
    assert "no unfinished copies" not in out.stdout
    # (in this process: the copy's BLOCK_BYTES, so its journal name, is this test's)
    run = CliRunner().invoke(main, ["cp", "--no-progress", src, dst])
    assert run.exit_code == 1 and not isinstance(run.exception, InvalidRequestError)
    assert "Error: InvalidRequestError" in run.output and str(stop.journal) in run.output
    gone = _cli("--forget-all")
    assert gone.returncode == 0 and f"deleted damaged journal {stop.journal}" in gone.stdout
    assert not stop.journal.exists()
    report = _finish(src, dst)
    assert not report.resumed


def test_another_copys_header_under_this_copys_name_is_refused(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal of src1 -> dst (4 blocks of src1 written into dst) put where src2 -> dst
    keeps its own: the rerun of src2 -> dst skipped those 4 blocks, leaving src1's voxels in
    dst.  Now it refuses, naming the file and the copy it belongs to; --forget of that copy
    deletes it and the copy then ends equal to src2."""
    src1, src2 = _source(env, "src1", seed=1), _source(env, "src2", seed=2)
    dst = f"zarr://{env}/dst.zarr"
    first = _interrupted(monkeypatch, src1, dst)
    theirs = first.journal.read_bytes()
    first.journal.unlink()
    mine = _interrupted(monkeypatch, src2, dst, after=0).journal
    assert mine != first.journal
    mine.write_bytes(theirs)
    with pytest.raises(InvalidRequestError) as info:
        voxgate.copy(src2, dst, workers=1, progress=False)
    msg = str(info.value)
    assert str(mine) in msg and "another copy" in msg and src1 in msg
    [status] = list_journals()
    assert (status.src, status.dst, status.path) == (src1, dst, mine)
    out = _cli("--forget", src1, dst)
    assert out.returncode == 0 and f"forgot {src1} -> {dst}" in out.stdout
    assert not mine.exists()
    _finish(src2, dst)


def test_block_indices_out_of_the_plan_are_passed_over_and_the_file_named(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative and huge indices: the rerun skips only the 4 real blocks.  --status passed
    over the file without a word (the range it names is wider than its plan); now it names
    it as damaged, and --forget SRC DST (its header names them) deletes it."""
    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    stop = _interrupted(monkeypatch, src, dst)
    with open(stop.journal, "a", encoding="utf-8") as f:
        f.write("0 -1 0 0\n0 0 0 99999999999999999999\n7 0 0 0\n")
    out = _cli("--status")
    assert f"damaged journal {stop.journal}" in out.stdout and "outside" in out.stdout
    keep = stop.journal.read_bytes()
    report = _finish(src, dst)
    assert report.resumed and report.blocks_skipped == 4 and report.blocks_written == 12
    stop.journal.write_bytes(keep)  # (the journal of a copy done: as if unfinished)
    forget_journals(src, dst)
    assert not stop.journal.exists()


def test_a_fill_line_for_a_block_of_data_is_trusted_and_verify_copies_it(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal is trusted (docs/copy.md): a "fill" line for a block that holds data is
    skipped on a plain rerun; with verify=True it is read from both stores and copied."""
    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    stop = _interrupted(monkeypatch, src, dst)
    with open(stop.journal, "a", encoding="utf-8") as f:
        f.write("0 0 3 3 fill\n")
    [status] = list_journals()
    assert status.blocks_done == 5
    report = _finish(src, dst, verify=True)
    assert report.blocks_changed >= 1 and report.blocks_written == 12


@pytest.mark.parametrize("kind", ["directory", "dangling link", "link elsewhere"])
def test_a_journal_that_is_a_directory_or_a_broken_link_is_refused_and_forgotten(
        env: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The rerun died with a raw IsADirectoryError / FileNotFoundError, or (a link to a file
    that is not there, in a folder that is) wrote its journal through it; --status passed over
    it.  Now: a voxgate error naming it, --status names it, forget_journals() deletes it."""
    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    stop = _interrupted(monkeypatch, src, dst)
    stop.journal.unlink()
    if kind == "directory":
        stop.journal.mkdir()
    elif kind == "dangling link":
        stop.journal.symlink_to(env / "nowhere" / "x.journal")
    else:
        stop.journal.symlink_to(env / "x.journal")
    with pytest.raises(InvalidRequestError) as info:
        voxgate.copy(src, dst, workers=1, progress=False)
    assert str(stop.journal) in str(info.value) and "delete" in str(info.value)
    assert not (env / "x.journal").exists()
    assert list_journals() == []
    [(path, why)] = voxgate.transfer.damaged_journals()
    assert path == stop.journal
    assert ("directory" in why) if kind == "directory" else ("link" in why)
    forget_journals()
    assert not stop.journal.exists() and not stop.journal.is_symlink()
    report = _finish(src, dst)
    assert not report.resumed


def test_an_unreadable_journal(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000: as root it is still read (resumed); else the copy refuses naming it (it died
    with a raw PermissionError) and --status names it."""
    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    stop = _interrupted(monkeypatch, src, dst)
    stop.journal.chmod(0)
    try:
        try:
            stop.journal.open("rb").close()
            readable = True
        except PermissionError:
            readable = False
        if readable:  # (root)
            [status] = list_journals()
            assert status.blocks_done == 4
        else:
            with pytest.raises(InvalidRequestError) as info:
                voxgate.copy(src, dst, workers=1, progress=False)
            assert str(stop.journal) in str(info.value)
            [(path, why)] = voxgate.transfer.damaged_journals()
            assert path == stop.journal and "ermission" in why
    finally:
        stop.journal.chmod(0o644)
    report = _finish(src, dst)
    assert report.resumed and report.blocks_skipped == 4


def test_two_journals_of_one_pair_for_two_regions(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies of two regions of one source into one destination: two journals, both listed;
    each rerun resumes its own and leaves the other's; forget SRC DST deletes what is left."""
    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    top, bottom = Box((0, 0, 0), (8, 16, 32)), Box((0, 16, 0), (8, 32, 32))
    a = _interrupted(monkeypatch, src, dst, after=3, box=top)
    b = _interrupted(monkeypatch, src, dst, after=2, box=bottom)
    assert a.journal != b.journal
    found = {j.path: j for j in list_journals()}
    assert set(found) == {a.journal, b.journal}
    assert (found[a.journal].blocks_done, found[b.journal].blocks_done) == (3, 2)
    assert found[a.journal].box == str(top) and found[b.journal].box == str(bottom)
    out = _cli("--status")
    assert str(a.journal) in out.stdout and str(b.journal) in out.stdout
    report = voxgate.copy(src, dst, box=top, workers=1, progress=False)
    assert report.resumed and report.blocks_skipped == 3 and report.blocks_written == 5
    [left] = list_journals()
    assert left.path == b.journal
    [gone] = forget_journals(src, dst)
    assert gone.path == b.journal and list_journals() == []
    report = voxgate.copy(src, dst, box=bottom, workers=1, progress=False)
    assert not report.resumed and report.blocks_written == 8
    np.testing.assert_array_equal(voxgate.open(dst).read(), _data())


def test_a_map_blocks_journal_with_garbage_odd_bytes_and_a_cut_line(env: Path) -> None:
    """An in-place map_blocks run stopped after 2 of 4 blocks; its journal then gets a line of
    garbage, one of bytes that are not UTF-8 and a last line cut short.  The rerun died with a
    raw ValueError / UnicodeDecodeError (and --status counted the garbage as blocks done); it
    now passes them over, its own lines start on a line of their own (glued to the cut one
    they were lost, and the next run applied fn to that block a second time), and fn is
    applied to every block exactly once."""
    url = f"zarr://{env}/counts.zarr"
    v = voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=(8, 8, 8), voxel_size=(8, 8, 8))
    v[:] = 1
    calls = [0]
    fail_at = [3]

    def add_one(a: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if calls[0] == fail_at[0]:
            raise RuntimeError("stopped")
        return a + 1

    with pytest.raises(RuntimeError, match="stopped"):
        voxgate.map_blocks(add_one, v, out=v, block=(8, 16, 16), workers=1)
    [journal] = (Path(os.environ["VOXGATE_STATE_DIR"]) / "map_blocks").glob("*.journal")
    with open(journal, "ab") as f:
        f.write(b"garbage\n\xff\xfe 1 2\n0 0")
    res = CliRunner().invoke(main, ["cp", "--status"])
    assert res.exit_code == 0 and "2/4 blocks done" in res.output, res.output
    calls[0], fail_at[0] = 0, 2
    with pytest.raises(RuntimeError, match="stopped"):  # (one more block done)
        voxgate.map_blocks(add_one, v, out=v, block=(8, 16, 16), workers=1)
    res = CliRunner().invoke(main, ["cp", "--status"])
    assert res.exit_code == 0 and "3/4 blocks done" in res.output, res.output
    calls[0], fail_at[0] = 0, -1
    voxgate.map_blocks(add_one, v, out=v, block=(8, 16, 16), workers=1)
    assert calls[0] == 1
    assert np.unique(v.read()).tolist() == [2]
    assert not journal.exists()


def test_a_directory_at_the_journal_of_a_copy_that_creates_its_destination(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy that creates its destination removes the journal an earlier run left; where a
    directory stands in its place that removal raised a raw IsADirectoryError.  Now a voxgate
    error naming the file and what to do; once it is forgotten the copy runs."""
    import shutil

    src, dst = _source(env), f"zarr://{env}/dst.zarr"
    stop = _interrupted(monkeypatch, src, dst)
    shutil.rmtree(env / "dst.zarr")  # the rerun creates the destination again
    stop.journal.unlink()
    stop.journal.mkdir()
    with pytest.raises(InvalidRequestError) as info:
        voxgate.copy(src, dst, workers=1, progress=False)
    assert str(stop.journal) in str(info.value) and "delete" in str(info.value)
    [(path, why)] = voxgate.transfer.damaged_journals()
    assert path == stop.journal and "directory" in why
    forget_journals()
    report = _finish(src, dst)
    assert not report.resumed and report.blocks_written == 16
