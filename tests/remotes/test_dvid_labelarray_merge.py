"""``POST merge`` on a DVID labelarray (labelarray.go handleMerge, mutate.go MergeLabels): the
test server answered 404; DVID answers an empty 200 and rewrites every block of the target's
and the merged labels' index, then the coarser scales.  voxgate's DVIDLabels.merge expected a
JSON body, and sent merges DVID turns into zeros (a target among the merged ids) or that end
the server (a block its downres cannot take)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.remotes.dvid import DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess

from .dvid_labels_reference import (
    BIG1,
    BIG2,
    BS,
    SMALL,
    blob_labels,
    make_labelarray,
    mode2,
    read_raw,
)


def test_merge_rewrites_every_voxel_and_the_coarser_scale(
        repo: DVIDRepo, http: httpx.Client) -> None:
    start = (BS, 0, BS)  # blocks z 1..2, y 0..1, x 1..2 (odd block coordinates)
    seg = blob_labels((2 * BS, 2 * BS, 2 * BS), 1)
    name = make_labelarray(repo, http, seg, start, levels=1)
    labels = repo.labels(name)
    maxlabel = labels.maxlabel()
    assert maxlabel == BIG2

    assert labels.merge(BIG1, [BIG2, SMALL]) == 0  # labelarray names no mutation id
    want = np.where(np.isin(seg, [BIG2, SMALL]), np.uint64(BIG1), seg)
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    assert np.array_equal(read_raw(http, repo, name, (BS, BS, BS), (BS // 2, 0, BS // 2), 1),
                          mode2(want))
    # through the Remote, at an odd voxel offset, both scales
    vol = voxgate.open(repo.url(name))
    assert tuple(vol.meta.scale(0).offset) == start  # (indexed from the extents' MinPoint)
    assert np.array_equal(vol[3:29, 5:30, 1:31].read(), want[3:29, 5:30, 1:31])
    # point queries, the label index, maxlabel
    pts = np.argwhere(want == BIG1)[:5]
    got = labels.labels_at([tuple(p + np.array(start)) for p in pts])
    assert got.tolist() == [BIG1] * len(pts)
    z, y, x = (int(v) for v in np.argwhere(seg == SMALL)[0] + np.array(start))
    assert labels.label_at((z, y, x)) == BIG1
    for gone in (BIG2, SMALL):
        assert not labels.has_label(gone)
    coords = labels.sparsevol(BIG1)
    assert np.array_equal(coords, np.argwhere(want == BIG1) + np.array(start))
    assert labels.maxlabel() == maxlabel


def test_merge_into_a_new_id_and_missing_ids(repo: DVIDRepo, http: httpx.Client) -> None:
    """The target may have no voxels (the merged ids take it); merged ids with no voxels
    change nothing; maxlabel does not follow the target."""
    seg = blob_labels((BS, BS, 2 * BS), 2)
    name = make_labelarray(repo, http, seg, (0, 0, 0), levels=0)
    labels = repo.labels(name)
    new = 2**62 + 11
    labels.merge(new, [SMALL, 12345])
    want = np.where(seg == SMALL, np.uint64(new), seg)
    assert np.array_equal(read_raw(http, repo, name, seg.shape, (0, 0, 0)), want)
    assert labels.maxlabel() == BIG2
    assert np.array_equal(labels.sparsevol(new), np.argwhere(want == new))


def test_dvid_dialect_of_refusals_and_a_merge_into_itself(
        repo: DVIDRepo, http: httpx.Client) -> None:
    seg = blob_labels((BS, BS, BS), 3)
    name = make_labelarray(repo, http, seg, (0, 0, 0), levels=0)
    path = f"/api/node/{repo.root}/{name}/merge"
    r = http.post(path, content=f"[{BIG1}, 0]")
    assert r.status_code == 400 and "cannot contain background label 0" in r.text
    r = http.post(path, content=f"[{BIG1}]")
    assert r.status_code == 400 and "need at least target and to-merge labels" in r.text
    assert http.get(path).status_code == 400
    # labels/compressed.go Block.MergeLabels: the target among the merged ids becomes 0
    r = http.post(path, content=f"[{SMALL}, {SMALL}]")
    assert r.status_code == 200 and r.content == b""
    want = np.where(seg == SMALL, np.uint64(0), seg)
    assert np.array_equal(read_raw(http, repo, name, seg.shape, (0, 0, 0)), want)


def test_voxgate_refuses_what_dvid_gets_wrong(repo: DVIDRepo, http: httpx.Client,
                                              server: DVIDServerProcess) -> None:
    seg = blob_labels((BS, BS, 2 * BS), 4)
    start = (0, 0, -BS)  # blocks x -1..0: -1 is odd and negative
    # (DVID's downres of the raw POST itself panics there: 500 after storing scale 0)
    name = make_labelarray(repo, http, seg, start, levels=1, status=500)
    labels = repo.labels(name)
    with pytest.raises(InvalidRequestError, match="into itself"):
        labels.merge(SMALL, [BIG1, SMALL])
    with pytest.raises(InvalidRequestError, match=r"downres.*Nothing was merged"):
        labels.merge(BIG1, [SMALL])
    assert server.proc.poll() is None  # the server lives on
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), seg)  # nothing changed
    # without coarser scales there is no downres: the same merge runs
    name0 = make_labelarray(repo, http, seg, start, levels=0)
    repo.labels(name0).merge(BIG1, [SMALL])
    want = np.where(seg == SMALL, np.uint64(BIG1), seg)
    assert np.array_equal(read_raw(http, repo, name0, seg.shape, start), want)


def test_the_test_server_dies_as_dvid_does(tmp_path: Path) -> None:
    """A panic in labelarray's merge goroutine (its downres) has no recover: DVID answers 200
    and then its process exits."""
    from voxgate.testing.dvid import start_server

    srv = start_server(log=tmp_path / "server.log")
    try:
        repo = DVIDRepo.create(srv.url, alias="crash")
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            seg = blob_labels((BS, BS, 2 * BS), 5)
            name = make_labelarray(repo, http, seg, (0, 0, -BS), levels=1, status=500)
            r = http.post(f"/api/node/{repo.root}/{name}/merge", content=f"[{BIG1}, {SMALL}]")
            assert r.status_code == 200 and r.content == b""
        assert srv.proc.wait(timeout=5) == 2
    finally:
        srv.stop()
