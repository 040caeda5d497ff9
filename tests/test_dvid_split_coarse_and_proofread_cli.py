"""A labelarray's coarse split from the client, and ``-O`` on the proofreading commands.

1. ``DVIDLabels`` had no ``split_coarse``: a labelarray's ``POST split-coarse/<label>
   [?splitlabel=N]`` (labelarray.go handleSplitCoarse, mutate.go SplitCoarseLabels: the body
   is DVID's ``rles`` sparse volume of **block** coordinates, the answer ``{"label": N}``)
   could only be sent by hand.  Checked here against the DVID test server, with the labels
   after the split computed in numpy, and the refusals (bad bodies, a labelmap, which has no
   such endpoint, a labelblk, a block DVID's downres panics on) made before anything is sent.
2. ``voxgate merge / split / history / undo`` took no ``-O KEY=VALUE`` (every other command
   that opens volumes does), so the command line could not edit, list or undo one multiscale
   of an OME-Zarr group.  The group here is a real zarr directory on disk, read back by
   zarr-python.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import voxgate
from voxgate.cli import main
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError
from voxgate.formats.dvid_block import encode_rles, rles_from_mask
from voxgate.remotes.dvid import DVIDLabels, DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess, start_server

from .remotes.dvid_labels_reference import (
    BIG1,
    BIG2,
    BS,
    SMALL,
    CountingClient,
    blob_labels,
    make_labelarray,
    mode2,
    read_raw,
)

_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DVIDServerProcess]:
    srv = start_server(log=tmp_path_factory.mktemp("dvid") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def repo(server: DVIDServerProcess) -> DVIDRepo:
    return DVIDRepo.create(server.url, alias="split-coarse")


@pytest.fixture
def http(server: DVIDServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def client(server: DVIDServerProcess) -> Iterator[CountingClient]:
    c = CountingClient(server.url)
    yield c
    c.close()


def _maxlabel(http: httpx.Client, repo: DVIDRepo, name: str) -> int:
    r = http.get(f"/api/node/{repo.root}/{name}/maxlabel")
    assert r.status_code == 200, r.text
    return int(json.loads(r.content, parse_int=int)["maxlabel"])


def _coords(mask: np.ndarray, start: tuple[int, int, int]) -> np.ndarray:
    return np.argwhere(mask).astype(np.int64) + np.array(start, dtype=np.int64)


def _split_in_numpy(seg: np.ndarray, start: tuple[int, int, int], blocks: set[Any],
                    label: int, new: int) -> np.ndarray:
    """Brute force: every voxel of ``label`` whose block (z, y, x) is listed gets ``new``."""
    zz, yy, xx = np.meshgrid(*(np.arange(n) + s for n, s in zip(seg.shape, start, strict=True)),
                             indexing="ij")
    block_of = np.stack((zz // BS, yy // BS, xx // BS), axis=-1).reshape(-1, 3)
    listed = np.array([tuple(b) in blocks for b in block_of.tolist()]).reshape(seg.shape)
    out = seg.copy()
    out[listed & (seg == label)] = new
    return out


# -- 1. DVIDLabels.split_coarse -------------------------------------------------------------------
def test_split_coarse_agrees_with_numpy(repo: DVIDRepo, http: httpx.Client) -> None:
    start = (BS, 0, BS)  # blocks z 1..2, y 0..1, x 1..3
    seg = blob_labels((2 * BS, 2 * BS, 3 * BS), 21)
    name = make_labelarray(repo, http, seg, start, levels=1)
    labels = repo.labels(name)
    assert labels.typename == "labelarray"
    top = labels.maxlabel()
    # block runs (x, y, z, length): two written rows and one never-written block (x 4)
    runs = np.array([[1, 0, 1, 4], [2, 1, 2, 2]], dtype=np.int32)
    listed = {(1, 0, 1), (1, 0, 2), (1, 0, 3), (1, 0, 4), (2, 1, 2), (2, 1, 3)}
    assert (seg == BIG1).any()

    new = labels.split_coarse(np.uint64(BIG1), encode_rles(runs))  # a numpy id is an id too
    assert new == top + 1 and labels.maxlabel() == new
    want = _split_in_numpy(seg, start, listed, BIG1, new)
    assert (want == new).any() and (want == BIG1).any()  # a real split: both keep voxels
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    assert np.array_equal(read_raw(http, repo, name, (BS, BS, 3 * BS // 2),
                                   tuple(s // 2 for s in start), 1), mode2(want))
    assert np.array_equal(labels.sparsevol(new), _coords(want == new, start))
    assert np.array_equal(labels.sparsevol(BIG1), _coords(want == BIG1, start))

    # into a chosen label, the blocks given as a mask over the block grid (bytearray body)
    chosen = 2**63 + 77
    block_mask = np.zeros((2, 2, 3), dtype=bool)  # blocks z 1..2, y 0..1, x 1..3
    block_mask[0, 1, :] = True
    block_mask[1, 0, 0] = True
    first_block = (1, 0, 1)
    blocks = {tuple(int(v) for v in b) for b in np.argwhere(block_mask) + first_block}
    body = bytearray(encode_rles(rles_from_mask(block_mask, first_block)))
    assert labels.split_coarse(BIG2, body, splitlabel=chosen) == chosen
    want = _split_in_numpy(want, start, blocks, BIG2, chosen)
    assert (want == chosen).any()
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    assert labels.maxlabel() == chosen
    assert np.array_equal(labels.sparsevol(chosen), _coords(want == chosen, start))

    # DVID's chain: a coarse split into N, then a voxel split into the same N
    sel = np.zeros(seg.shape, dtype=bool)
    sel[BS:, :BS, :BS] = True  # block (2, 0, 1), not listed above
    assert (sel & (want == SMALL)).any()
    n2 = labels.split_coarse(SMALL, encode_rles(np.array([[3, 1, 1, 1]], dtype=np.int32)))
    want = _split_in_numpy(want, start, {(1, 1, 3)}, SMALL, n2)
    assert labels.split(SMALL, encode_rles(rles_from_mask(sel, start)), splitlabel=n2) == \
        (n2, 0)
    want[sel & (want == SMALL)] = n2
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    assert np.array_equal(labels.sparsevol(n2), _coords(want == n2, start))


def test_split_coarse_refuses_bad_input_before_sending(
        repo: DVIDRepo, http: httpx.Client, client: CountingClient) -> None:
    start = (0, 0, 0)
    seg = blob_labels((BS, BS, 2 * BS), 5)
    name = make_labelarray(repo, http, seg, start, levels=1)
    labels = DVIDLabels(client, repo.root, name)
    assert labels.typename == "labelarray"
    top = _maxlabel(http, repo, name)
    one = encode_rles(np.array([[0, 0, 0, 1]], dtype=np.int32))
    client.sent.clear()

    bad: list[tuple[Any, Any, dict[str, Any], str]] = [
        (BIG1, "0 0 0 1", {}, "rles bytes"),
        (BIG1, [[0, 0, 0, 1]], {}, "rles bytes"),
        (BIG1, np.array([[0, 0, 0, 1]], dtype=np.int32), {}, "rles bytes"),
        (BIG1, b"", {}, "do not decode"),
        (BIG1, one[:-3], {}, "do not decode"),
        (BIG1, encode_rles(np.array([[0, 0, 0, -1]], dtype=np.int32)), {}, "do not decode"),
        (BIG1, encode_rles(np.zeros((0, 4), dtype=np.int32)), {}, "lists no block"),
        (0, one, {}, "a label is an integer in 1"),
        (True, one, {}, "a label is an integer in 1"),
        ("7", one, {}, "a label is an integer in 1"),
        (BIG1, one, {"splitlabel": 0}, "a label is an integer in 1"),
        (BIG1, one, {"splitlabel": BIG1}, "into itself"),
        # block x -1: DVID's downres (1 coarser scale) takes no negative odd block
        (BIG1, encode_rles(np.array([[-1, 0, 0, 2]], dtype=np.int32)), {},
         "MaxDownresLevel 1"),
    ]
    for lab, body, kw, match in bad:
        with pytest.raises(InvalidRequestError, match=match):
            labels.split_coarse(lab, body, **kw)
    assert client.sent == []
    assert _maxlabel(http, repo, name) == top  # no label taken
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), seg)


def test_split_coarse_refusal_at_a_block_the_downres_cannot_take(
        repo: DVIDRepo, http: httpx.Client, client: CountingClient) -> None:
    """The refusal is DVID's answer: the same body sent by hand is answered 500 after the
    label was taken and the voxels relabelled."""
    start = (0, 0, -BS)  # blocks x -1..0
    seg = np.full((BS, BS, 2 * BS), BIG1, dtype=np.uint64)
    # (the raw POST itself runs the downres of block x -1: DVID answers 500 after storing it)
    name = make_labelarray(repo, http, seg, start, levels=1, status=500)
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), seg)
    labels = DVIDLabels(client, repo.root, name)
    body = encode_rles(np.array([[-1, 0, 0, 1]], dtype=np.int32))
    top = _maxlabel(http, repo, name)
    client.sent.clear()
    with pytest.raises(InvalidRequestError, match=r"block -1 along x .*Nothing was split"):
        labels.split_coarse(BIG1, body)
    assert [m for m, _ in client.sent] == ["GET"]  # (the info), no POST
    assert _maxlabel(http, repo, name) == top
    r = http.post(f"/api/node/{repo.root}/{name}/split-coarse/{BIG1}", content=body)
    assert r.status_code == 500 and "Panic" in r.text
    assert _maxlabel(http, repo, name) == top + 1


def test_split_coarse_only_on_a_labelarray(repo: DVIDRepo, http: httpx.Client,
                                           client: CountingClient) -> None:
    one = encode_rles(np.array([[0, 0, 0, 1]], dtype=np.int32))
    for typename in ("labelmap", "labelblk"):
        name = f"sc{typename}{next(_names)}"
        repo.create_instance(name, typename, block_size=(BS, BS, BS))
        seg = np.full((BS, BS, BS), SMALL, dtype="<u8")
        r = http.post(f"/api/node/{repo.root}/{name}/raw/0_1_2/{BS}_{BS}_{BS}/0_0_0",
                      content=seg.tobytes())
        assert r.status_code == 200, r.text
        labels = DVIDLabels(client, repo.root, name)
        client.sent.clear()
        with pytest.raises(CapabilityNotSupportedError,
                           match=f"is a DVID {typename}.*split-coarse.*Nothing was sent"):
            labels.split_coarse(SMALL, one)
        assert [m for m, _ in client.sent] == ["GET"]  # (the info), no POST
        # what the refusal spares: the server has no such endpoint for this type
        r = http.post(f"/api/node/{repo.root}/{name}/split-coarse/{SMALL}", content=one)
        assert r.status_code == 400 and "Bad API call" in r.text
        assert np.array_equal(read_raw(http, repo, name, seg.shape, (0, 0, 0)), seg)


# -- 2. -O on the proofreading commands -----------------------------------------------------------
SHAPE = (8, 16, 16)


def _two_multiscales(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An OME-Zarr group with multiscales "a" (dataset ``0``) and "b" (dataset ``b0``) of the
    same shape and chunks, labelled differently; returns their labels."""
    a = np.zeros(SHAPE, np.uint64)
    a[:, 2:6, 2:6], a[:, 10:14, 10:14] = 1, 2
    a[:, 2:6, 10:14], a[:, 10:14, 2:6] = 3, 3  # id 3: two pieces
    b = np.zeros(SHAPE, np.uint64)
    b[:, :8, :], b[:, 8:, :] = 1, 2  # (no id 3)
    voxgate.create(f"zarr://{path}", shape=SHAPE, chunks=(8, 8, 8), dtype="uint64",
                   voxel_size=(8, 8, 8), kind="segmentation")[:] = a
    zarr.create_array(str(path / "b0"), shape=SHAPE, chunks=(8, 8, 8), dtype="uint64",
                      fill_value=0)[:] = b
    doc = json.loads((path / "zarr.json").read_text())
    ms = doc["attributes"]["ome"]["multiscales"]
    ms[0]["name"] = "a"
    ms.append({**ms[0], "name": "b", "datasets": [{**ms[0]["datasets"][0], "path": "b0"}]})
    (path / "zarr.json").write_text(json.dumps(doc))
    return a, b


def _on_disk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The labels of "a" and "b" as zarr-python reads them."""
    return (np.asarray(zarr.open_array(str(path / "0"), mode="r")),
            np.asarray(zarr.open_array(str(path / "b0"), mode="r")))


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_proofreading_commands_edit_list_and_undo_the_chosen_multiscale(tmp_path: Path) -> None:
    path = tmp_path / "two.zarr"
    a0, b0 = _two_multiscales(path)
    url = f"zarr://{path}"

    res = _run("merge", "--no-progress", "-O", "multiscale=b", url, "1", "2")
    assert res.exit_code == 0, res.output
    b1 = np.where(b0 == 2, np.uint64(1), b0)
    a, b = _on_disk(path)
    assert np.array_equal(a, a0) and np.array_equal(b, b1)

    res = _run("history", "--open-option", "multiscale=b", url)
    assert res.exit_code == 0, res.output
    assert "merge" in res.output and "no edits" not in res.output
    res = _run("history", "-O", "multiscale=a", url)
    assert res.exit_code == 0 and "no edits recorded" in res.output, res.output
    # undo of "a" has nothing to undo ("b"'s merge is not "a"'s)
    res = _run("undo", "--no-progress", "-O", "multiscale=a", url)
    assert res.exit_code == 1 and "has 0 edit(s) left to undo" in res.output, res.output
    a, b = _on_disk(path)
    assert np.array_equal(a, a0) and np.array_equal(b, b1)

    # split of "a"'s id 3 (two pieces; "b" has no id 3)
    res = _run("split", "--no-progress", "-O", "multiscale=a", url, "3")
    assert res.exit_code == 0, res.output
    a, b = _on_disk(path)
    assert np.array_equal(b, b1)
    changed = a != a0
    pieces = [np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)]
    pieces[0][:, 2:6, 10:14], pieces[1][:, 10:14, 2:6] = True, True
    # one piece keeps 3, the other (whole) gets one new id unused before
    assert any(np.array_equal(changed, p) for p in pieces)
    new_ids = np.unique(a[changed]).tolist()
    assert len(new_ids) == 1 and new_ids[0] not in np.unique(a0).tolist()
    csv = tmp_path / "a.csv"
    res = _run("history", "-O", "multiscale=a", "--csv", str(csv), url)
    assert res.exit_code == 0 and "1 edits written" in res.output, res.output

    res = _run("undo", "--no-progress", "-O", "multiscale=b", url)
    assert res.exit_code == 0, res.output
    a, b = _on_disk(path)
    assert np.array_equal(b, b0) and not np.array_equal(a, a0)
    res = _run("undo", "--no-progress", "-O", "multiscale=a", url)
    assert res.exit_code == 0, res.output
    a, b = _on_disk(path)
    assert np.array_equal(a, a0) and np.array_equal(b, b0)


def test_proofreading_open_option_refusals(tmp_path: Path) -> None:
    path = tmp_path / "two.zarr"
    a0, b0 = _two_multiscales(path)
    url = f"zarr://{path}"
    # mode is the command's: a usage error, nothing opened
    for cmd in (["merge", url, "1", "2"], ["split", url, "3"], ["undo", url], ["history", url]):
        res = _run(cmd[0], "-O", "mode=r", *cmd[1:])
        assert res.exit_code == 2 and "leave mode out" in res.output, res.output
    # a choice the group does not have: the open's own refusal, one Error: line
    res = _run("merge", "--no-progress", "-O", "multiscale=c", url, "1", "2")
    assert res.exit_code == 1 and res.output.startswith("Error: "), res.output
    assert "Traceback" not in res.output
    a, b = _on_disk(path)
    assert np.array_equal(a, a0) and np.array_equal(b, b0)
