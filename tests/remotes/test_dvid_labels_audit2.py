"""Follow-ups of the DVID labels audit, checked against numpy and DVID's Go source.

1. ``DVIDLabels`` on a legacy labelblk (labelblk.go ServeHTTP serves help, metadata,
   resolution, info, sync, label, labels, blocks, pseudocolor, raw, isotropic): every call
   that needs a label index reached DVID and came back as its raw 400 "Bad API call"; now it
   is refused before anything is sent, naming the instance, its type and the types that
   serve it.  Point queries still work; one at a coarser scale was answered at scale 0 (the
   labelblk handlers read no ``scale=``) and is now refused.
2. ``DVIDLabels.split(..., splitlabel=)``: a labelarray's ``?splitlabel=`` (labelarray.go
   handleSplit, mutate.go SplitLabels: updateMaxLabel, nothing else checked).  A labelmap's
   split has no such parameter (handlers.go handleSplit never reads it; mutate.go
   SplitLabels always takes a new label), so it is refused there.
3. labelarray ``POST split-coarse/<label>[?splitlabel=]`` (labelarray.go handleSplitCoarse,
   mutate.go SplitCoarseLabels / processSplit / splitBlock / splitIndices): the test server
   answered it 400 "not served by the voxgate DVID test server"."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

import voxgate
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError
from voxgate.formats.dvid_block import decode_rles, encode_rles, rles_from_mask
from voxgate.remotes.dvid import DVIDLabels, DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess

from .dvid_labels_reference import (
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


@pytest.fixture
def client(server: DVIDServerProcess) -> Iterator[CountingClient]:
    c = CountingClient(server.url)
    yield c
    c.close()


def _post_raw(http: httpx.Client, repo: DVIDRepo, name: str, data: np.ndarray,
              start: tuple[int, int, int]) -> None:
    (sz, sy, sx), (oz, oy, ox) = data.shape, start
    r = http.post(f"/api/node/{repo.root}/{name}/raw/0_1_2/{sx}_{sy}_{sz}/{ox}_{oy}_{oz}",
                  content=data.astype("<u8").tobytes())
    assert r.status_code == 200, r.text


def _coords(mask: np.ndarray, start: tuple[int, int, int]) -> np.ndarray:
    """(n, 3) z, y, x of ``mask``'s voxels, sorted, as DVIDLabels.sparsevol gives them."""
    return np.argwhere(mask).astype(np.int64) + np.array(start, dtype=np.int64)


def _coarse(http: httpx.Client, repo: DVIDRepo, name: str, label: int
            ) -> set[tuple[int, int, int]]:
    """The (z, y, x) blocks of ``label``'s index (``GET sparsevol-coarse``), none on 404."""
    r = http.get(f"/api/node/{repo.root}/{name}/sparsevol-coarse/{label}")
    if r.status_code == 404:
        return set()
    assert r.status_code == 200, r.text
    return {(z, y, x + i) for x, y, z, n in decode_rles(r.content).tolist() for i in range(n)}


def _maxlabel(http: httpx.Client, repo: DVIDRepo, name: str) -> int:
    r = http.get(f"/api/node/{repo.root}/{name}/maxlabel")
    return int(json.loads(r.content, parse_int=int)["maxlabel"])


# -- 1. labelblk ------------------------------------------------------------------------------
def test_labelblk_refuses_label_index_calls_before_sending(
        repo: DVIDRepo, http: httpx.Client, client: CountingClient) -> None:
    name = f"lb{next(_names)}"
    repo.create_instance(name, "labelblk", block_size=(BS, BS, BS))
    start = (BS, 0, BS)
    seg = blob_labels((BS, 2 * BS, 2 * BS), 3)
    _post_raw(http, repo, name, seg, start)
    labels = DVIDLabels(client, repo.root, name)  # the type comes from GET info
    assert labels.typename == "labelblk"
    assert client.sent == [("GET", f"/api/node/{repo.root}/{name}/info")]

    # what a labelblk serves still works: labels at points (supervoxels: each label is its own)
    pts = [(BS, 0, BS), (BS + 9, 21, 2 * BS + 3), (BS + 15, 2 * BS - 1, 3 * BS - 1), (0, 0, 0)]
    want = [int(seg[z - BS, y, x - BS]) if z >= BS else 0 for z, y, x in pts]
    assert [labels.label_at(p) for p in pts] == want
    assert labels.labels_at(pts).tolist() == want
    assert labels.labels_at(pts, supervoxels=True).tolist() == want
    # ... and a labelblk maps nothing, without asking
    client.sent.clear()
    assert labels.mappings() == {} and labels.agglomerated() is False
    assert labels.mapping([BIG1, 5], nolookup=True).tolist() == [BIG1, 5]
    assert client.sent == []

    # a coarser scale: labelblk.go's label / labels read no scale= and answer scale 0
    for call in (lambda: labels.label_at(pts[1], scale=1),
                 lambda: labels.labels_at(pts, scale=2)):
        with pytest.raises(CapabilityNotSupportedError) as err:
            call()
        msg = str(err.value)
        assert f"/{repo.root}/{name} is a DVID labelblk" in msg and "one scale" in msg
        assert "labelmap and labelarray" in msg and "Nothing was sent" in msg
    assert client.sent == []

    rles = encode_rles(rles_from_mask(seg == BIG1, start))
    both = "only labelmap and labelarray instances serve"
    calls: list[tuple[str, Any]] = [
        (both, lambda: labels.size(BIG1)),
        (both, lambda: labels.sizes([BIG1, SMALL])),
        (both, lambda: labels.supervoxels(BIG1)),
        (both, lambda: labels.mapping([BIG1])),
        (both, lambda: labels.sparsevol(BIG1)),
        (both, lambda: labels.sparsevol_runs(BIG1)),
        (both, lambda: labels.sparsevol_mask(BIG1)),
        (both, lambda: labels.has_label(BIG1)),
        (both, lambda: labels.sparsevol_size(BIG1)),
        (both, lambda: labels.maxlabel()),
        (both, lambda: labels.next_label()),
        (both, lambda: labels.merge(BIG1, [SMALL])),
        (both, lambda: labels.split(BIG1, rles)),
        (both, lambda: labels.split(BIG1, rles, splitlabel=BIG2 + 1)),
        ("only a labelmap serves", lambda: labels.cleave(BIG1, [SMALL])),
        ("only a labelmap serves", lambda: labels.renumber({BIG2 + 1: BIG1})),
        ("only a labelmap serves", lambda: labels.post_mappings([(BIG1, [SMALL])])),
        ("only a labelmap serves", lambda: labels.reserve_ids(3)),
    ]
    for served, call in calls:
        with pytest.raises(CapabilityNotSupportedError) as err:
            call()
        msg = str(err.value)
        assert f"/{repo.root}/{name} is a DVID labelblk, which cannot" in msg, msg
        assert served in msg and "labelblk.go ServeHTTP" in msg, msg
        assert msg.endswith("Nothing was sent"), msg
    assert client.sent == []
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), seg)  # untouched

    # through the Remote (which knows the type from the repo's info): the same refusals
    vol = voxgate.open(repo.url(name))
    remote_labels = vol.remote.labels  # type: ignore[attr-defined]
    with pytest.raises(CapabilityNotSupportedError, match="DVID labelblk, which cannot"):
        remote_labels.sizes([BIG1])
    with pytest.raises(CapabilityNotSupportedError, match="one scale"):
        vol.remote.label_at(pts[1], scale=1)  # type: ignore[attr-defined]
    assert vol.remote.label_at(pts[1]) == want[1]  # type: ignore[attr-defined]


# -- 2. splitlabel ----------------------------------------------------------------------------
def test_labelarray_split_into_a_chosen_label(repo: DVIDRepo, http: httpx.Client,
                                              client: CountingClient) -> None:
    start = (0, BS, 0)
    seg = blob_labels((2 * BS, BS, 2 * BS), 21)
    name = make_labelarray(repo, http, seg, start, levels=1)
    labels = DVIDLabels(client, repo.root, name, "labelarray")
    assert labels.maxlabel() == BIG2

    # refused before anything is sent: not a label id, or the label itself
    sel = np.zeros(seg.shape, dtype=bool)
    sel[3:20, :9, 4:27] = True
    rles = encode_rles(rles_from_mask(sel, start))
    client.sent.clear()
    for bad in (0, -1, 2**64, True, 1.5, "77"):
        with pytest.raises(InvalidRequestError, match="a label is an integer"):
            labels.split(BIG1, rles, splitlabel=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="into itself"):
        labels.split(BIG1, rles, splitlabel=BIG1)
    assert client.sent == []

    # a label above maxlabel: the runs' voxels of BIG1 get it, maxlabel follows
    chosen = BIG2 + 1000
    assert labels.split(BIG1, rles, splitlabel=chosen) == (chosen, 0)
    assert client.sent[-1] == ("POST", f"/api/node/{repo.root}/{name}/split/{BIG1}")
    want = seg.copy()
    want[sel & (seg == BIG1)] = chosen
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    assert np.array_equal(read_raw(http, repo, name, (BS, BS // 2, BS), (0, BS // 2, 0), 1),
                          mode2(want))
    assert labels.maxlabel() == chosen
    assert np.array_equal(labels.sparsevol(chosen), _coords(want == chosen, start))
    # a label below maxlabel that has voxels takes the split voxels in (DVID checks nothing:
    # help NOTE 2, the caller's part), and maxlabel stays
    sel2 = np.zeros(seg.shape, dtype=bool)
    sel2[20:, 2:, 16:] = True
    got = labels.split(SMALL, encode_rles(rles_from_mask(sel2, start)), splitlabel=9)
    assert got == (9, 0)
    want[sel2 & (want == SMALL)] = 9
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    assert labels.maxlabel() == chosen
    # no splitlabel: a new label, as before
    sel3 = np.zeros(seg.shape, dtype=bool)
    sel3[:4] = True
    new, _ = labels.split(BIG2, encode_rles(rles_from_mask(sel3, start)))
    assert new == chosen + 1


def test_labelmap_split_takes_no_splitlabel(repo: DVIDRepo, http: httpx.Client,
                                            client: CountingClient) -> None:
    name = f"lm{next(_names)}"
    repo.create_instance(name, "labelmap", block_size=(BS, BS, BS))
    seg = np.zeros((BS, BS, 2 * BS), dtype=np.uint64)
    seg[:, :, :] = 5
    seg[:, 8:, BS:] = 6
    _post_raw(http, repo, name, seg, (0, 0, 0))
    labels = DVIDLabels(client, repo.root, name)
    sel = np.zeros(seg.shape, dtype=bool)
    sel[2:6, :4, 3:9] = True
    rles = encode_rles(rles_from_mask(sel))
    with pytest.raises(CapabilityNotSupportedError) as err:
        labels.split(5, rles, splitlabel=1000)
    msg = str(err.value)
    assert f"/{repo.root}/{name} is a DVID labelmap" in msg and "splitlabel=1000" in msg
    assert "handleSplit" in msg and "renumber" in msg and msg.endswith("Nothing was sent")
    assert client.sent == [("GET", f"/api/node/{repo.root}/{name}/info")]  # (its type)
    assert np.array_equal(read_raw(http, repo, name, seg.shape, (0, 0, 0)), seg)
    assert _maxlabel(http, repo, name) == 6

    # what DVID's labelmap does with the parameter: nothing (a new label all the same)
    r = http.post(f"/api/node/{repo.root}/{name}/split/5?splitlabel=1000", content=rles)
    assert r.status_code == 200, r.text
    assert json.loads(r.content)["label"] == 7
    # without it, through DVIDLabels: the next new label (after the split's new supervoxels)
    top = _maxlabel(http, repo, name)
    sel[:] = False
    sel[10:, 10:, :4] = True
    new, mutation = labels.split(5, encode_rles(rles_from_mask(sel)))
    assert new == top + 1 and mutation > 0


# -- 3. labelarray split-coarse ---------------------------------------------------------------
def test_labelarray_split_coarse_against_numpy(repo: DVIDRepo, http: httpx.Client) -> None:
    start = (BS, 0, BS)  # blocks z 1..2, y 0..1, x 1..3
    seg = blob_labels((2 * BS, 2 * BS, 3 * BS), 11)
    blk = (slice(BS, None), slice(BS, None), slice(2 * BS, None))  # block (2, 1, 3)
    seg[blk][seg[blk] == BIG1] = 9  # a listed block without the label
    name = make_labelarray(repo, http, seg, start, levels=1)
    labels = repo.labels(name)
    base = f"/api/node/{repo.root}/{name}"
    assert labels.maxlabel() == BIG2
    before = _coarse(http, repo, name, BIG1)
    # block runs (x, y, z, length): three written blocks, one never written (x 4), and two
    # written ones of which the last lacks BIG1
    runs = np.array([[1, 0, 1, 3], [4, 0, 1, 1], [2, 1, 2, 2]], dtype=np.int32)
    listed = {(1, 0, 1), (1, 0, 2), (1, 0, 3), (1, 0, 4), (2, 1, 2), (2, 1, 3)}
    assert before & listed and (2, 1, 3) not in before

    r = http.post(f"{base}/split-coarse/{BIG1}", content=encode_rles(runs))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert json.loads(r.content, parse_int=int) == {"label": BIG2 + 1}
    new = BIG2 + 1
    want = seg.copy()
    for z, y, x in listed:
        part = want[(z - 1) * BS:z * BS, y * BS:(y + 1) * BS, (x - 1) * BS:x * BS]
        part[part == BIG1] = new
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    half = tuple(s // 2 for s in start)
    assert np.array_equal(read_raw(http, repo, name, (BS, BS, 3 * BS // 2), half, 1),
                          mode2(want))
    # splitIndices: the old label loses every listed block, the new one gets every one
    assert _coarse(http, repo, name, BIG1) == before - listed
    assert _coarse(http, repo, name, new) == listed
    assert np.array_equal(labels.sparsevol(new), _coords(want == new, start))
    assert np.array_equal(labels.sparsevol(BIG1), _coords(want == BIG1, start))
    assert labels.maxlabel() == new

    # the chain DVID's help describes: a voxel split into the label the coarse split made
    sel = np.zeros(seg.shape, dtype=bool)
    sel[:BS, BS:, :] = True  # blocks (1, 1, 1..3), none listed above
    assert labels.split(BIG1, encode_rles(rles_from_mask(sel, start)), splitlabel=new) == \
        (new, 0)
    want[sel & (want == BIG1)] = new
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    assert np.array_equal(labels.sparsevol(new), _coords(want == new, start))

    # ?splitlabel=: that label, maxlabel following it
    chosen = 2**63 + 99
    r = http.post(f"{base}/split-coarse/{BIG2}?splitlabel={chosen}",
                  content=encode_rles(np.array([[1, 1, 2, 1]], dtype=np.int32)))
    assert r.status_code == 200, r.text
    assert json.loads(r.content, parse_int=int) == {"label": chosen}
    part = want[BS:, BS:, :BS]
    part[part == BIG2] = chosen
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    assert labels.maxlabel() == chosen


def test_labelarray_split_coarse_refusals(repo: DVIDRepo, http: httpx.Client) -> None:
    seg = blob_labels((BS, BS, 2 * BS), 4)
    name = make_labelarray(repo, http, seg, (0, 0, 0), levels=0)
    base = f"/api/node/{repo.root}/{name}"
    top = _maxlabel(http, repo, name)
    one = encode_rles(np.array([[0, 0, 0, 1]], dtype=np.int32))
    r = http.get(f"{base}/split-coarse/{BIG1}")
    assert (r.status_code, r.text) == (
        400, f"Split-coarse requests must be POST actions. ({base}/split-coarse/{BIG1}).\n")
    r = http.post(f"{base}/split-coarse", content=one)
    assert (r.status_code, r.text) == (
        400, f"ERROR: DVID requires label ID to follow 'split' command ({base}/split-coarse).\n")
    r = http.post(f"{base}/split-coarse/0", content=one)
    assert r.status_code == 400 and r.text.startswith("Label 0 is protected background")
    assert _maxlabel(http, repo, name) == top  # (nothing taken yet)
    # the label is taken before the runs are read (mutate.go SplitCoarseLabels)
    r = http.post(f"{base}/split-coarse/{BIG1}", content=b"")
    assert (r.status_code, r.text) == (400, f"split-coarse: EOF ({base}/split-coarse/{BIG1}).\n")
    assert _maxlabel(http, repo, name) == top + 1
    # a run of negative length: Go's block slice is the wrong length, a panic (500)
    bad = encode_rles(np.array([[0, 0, 0, -1]], dtype=np.int32))
    r = http.post(f"{base}/split-coarse/{BIG1}", content=bad)
    assert r.status_code == 500 and "makeslice: len out of range" in r.text
    bad = encode_rles(np.array([[0, 0, 0, 3], [1, 0, 0, -1]], dtype=np.int32))
    r = http.post(f"{base}/split-coarse/{BIG1}", content=bad)
    assert r.status_code == 500 and "index out of range [2] with length 2" in r.text
    assert _maxlabel(http, repo, name) == top + 3
    assert np.array_equal(read_raw(http, repo, name, seg.shape, (0, 0, 0)), seg)
    # a splitlabel that does not parse: 400, and the split runs all the same, into a new label
    r = http.post(f"{base}/split-coarse/{BIG1}?splitlabel=x", content=one)
    assert r.status_code == 400
    assert r.text == ("Bad parameter for 'splitlabel' query string (\"x\").  Must be uint64.\n"
                      f" ({base}/split-coarse/{BIG1}).\n" + f'{{"label": {top + 4}}}')
    want = seg.copy()
    want[:, :, :BS][want[:, :, :BS] == BIG1] = top + 4
    assert np.array_equal(read_raw(http, repo, name, seg.shape, (0, 0, 0)), want)
