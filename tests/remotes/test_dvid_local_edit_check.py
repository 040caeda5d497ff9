"""The check that lets voxgate's local proofreading path write a DVID labelmap's body view: it
asks DVID about the supervoxels of the blocks an edit rewrites and the ids it writes
(``GET mapping?nolookup=true``), not the node's whole mapping; and that endpoint as DVID
answers it (janelia-flyem/dvid datatype/labelmap handlers.go handleMapping, vcache.go
MappedLabels, labelidx.go verifyMappings)."""

from __future__ import annotations

import hashlib
import json
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.remotes._http import HTTPClient
from voxgate.remotes.dvid import DVIDRepo


def _name(prefix: str) -> str:
    return f"{prefix}_{uuidlib.uuid4().hex[:10]}"


def _seg(repo: DVIDRepo, labels: np.ndarray, prefix: str) -> tuple[str, str]:
    name = _name(prefix)
    url = repo.url(name)
    vol = voxgate.create(url, shape=labels.shape, chunks=(16, 16, 16), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation")
    vol[:] = labels
    return url, name


# -- GET mapping, with and without nolookup ------------------------------------------------------
def test_mapping_answers_as_dvid_with_and_without_nolookup(repo: DVIDRepo,
                                                           http: httpx.Client) -> None:
    """Without ``nolookup`` an id with no entry in the mapping answers itself only if the label
    index has it (verifyMappings), else 0; with ``nolookup=true`` (that exact string) it
    answers itself whether or not it has voxels.  Ids with an entry answer it either way: the
    body of a merged supervoxel, 0 for a supervoxel a split retired and for a cleaved body's
    new id (equiv.go addSplitToMapping, addCleaveToMapping)."""
    labels = np.zeros((16, 16, 64), np.uint64)
    labels[:, :, 0:8] = 1
    labels[:, :, 8:16] = 2
    labels[:, :, 16:24] = 3
    labels[:, :, 32:40] = 4
    labels[:, :, 48:56] = 4  # 4: two pieces, split on the server below
    url, name = _seg(repo, labels, "nolookup")
    lab = repo.labels(name)
    lab.merge(1, [2])                                 # 2 -> 1
    cleaved = lab.cleave(1, [2])                      # 2 -> cleaved, cleaved -> 0
    split = voxgate.split(voxgate.open(url, mode="r+"), 4)  # DVID retires supervoxel 4
    assert split.provenance is not None and split.provenance.path == "server"
    never = 2**60 + 1
    asked = [1, 2, 3, 4, cleaved, never, 0]
    path = f"/api/node/{repo.root}/{name}/mapping"

    def ask(query: str = "", body: Any = asked, method: str = "GET") -> httpx.Response:
        return http.request(method, path + query, content=json.dumps(body))

    assert ask("?nolookup=true").json() == [1, cleaved, 3, 0, 0, never, 0]
    for query in ("", "?nolookup=false", "?nolookup=1", "?nolookup=True"):
        assert ask(query).json() == [1, cleaved, 3, 0, 0, 0, 0], query
    assert list(lab.mapping([1, 2, 3, 4, never], nolookup=True)) == [1, cleaved, 3, 0, never]
    assert list(lab.mapping([1, 2, 3, 4, never])) == [1, cleaved, 3, 0, 0]
    # labelmap.go checkContentHash, and a mapping query that is not a GET
    body = json.dumps(asked).encode()
    good = hashlib.md5(body).hexdigest()
    assert ask(f"?nolookup=true&hash={good}").json() == [1, cleaved, 3, 0, 0, never, 0]
    r = ask("?hash=00")
    assert r.status_code == 400
    assert r.text == (f"content hash incorrect.  expected 00, got {good} ({path}).\n")
    r = ask(method="POST")
    assert r.status_code == 400
    assert r.text == f"Batch mapping query must be a GET request ({path}).\n"


# -- the local path asks about its own supervoxels only ------------------------------------------
@pytest.fixture
def requests_made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every request voxgate's HTTP client sends: method, path, the body sent, bytes received."""
    seen: list[dict[str, Any]] = []
    real = HTTPClient.request

    def counting(self: HTTPClient, method: str, path: str, **kw: Any) -> httpx.Response:
        resp = real(self, method, path, **kw)
        into = kw.get("into")
        seen.append({"method": method, "path": path, "sent": kw.get("content"),
                     "received": len(into) if into is not None else len(resp.content)})
        return resp

    monkeypatch.setattr(HTTPClient, "request", counting)
    yield seen


def _calls(seen: list[dict[str, Any]], endpoint: str) -> list[dict[str, Any]]:
    return [r for r in seen if r["path"].split("?")[0].rsplit("/", 1)[-1] == endpoint]


def test_a_local_edit_asks_only_about_its_own_supervoxels(
        repo: DVIDRepo, tmp_path: Path, requests_made: list[dict[str, Any]]) -> None:
    """A labelmap whose mapping holds 5,000 merged supervoxels elsewhere in the volume: a
    local merge of two bodies in blocks of their own runs (each supervoxel there is its own
    body) and asks DVID's mapping about those two ids only (one ``mapping?nolookup=true``),
    never ``GET mappings`` or ``supervoxel-splits`` (5,000 pairs: 80,000 bytes here, and
    millions of pairs on a production DVID).  Edits that would write over a merged
    supervoxel, or write an id DVID retired, are still refused and change nothing."""
    labels = np.zeros((16, 32, 128), np.uint64)
    labels[:, 0:16, 0:16] = 10
    labels[:, 16:32, 0:16] = 11
    labels[:, :, 32:48] = 20
    labels[:, :, 48:64] = 21
    labels[:, :, 64:72] = 30
    labels[:, :, 80:96] = 30                          # 30: two pieces, split on the server
    many = (1000 + np.arange(16 * 32 * 32) % 5000).astype(np.uint64)
    labels[:, :, 96:128] = many.reshape(16, 32, 32)   # 5,000 supervoxels, merged into 20
    url, name = _seg(repo, labels, "narrow")
    lab = repo.labels(name)
    lab.post_mappings([(20, [21, *range(1000, 6000)])])
    hist = tmp_path / "history"
    seg = voxgate.open(url, mode="r+")
    s = voxgate.split(seg, 30, history_dir=hist)      # DVID retires supervoxel 30
    assert s.provenance is not None and s.provenance.path == "server"
    bodies = seg.read()
    sv = voxgate.open(url, supervoxels=True).read()
    assert len(lab.mappings()) >= 5001

    requests_made.clear()
    r = voxgate.merge(seg, [10, 11], prefer="local", history_dir=hist)
    assert r.provenance is not None and r.provenance.path == "local"
    assert not _calls(requests_made, "mappings")
    assert not _calls(requests_made, "supervoxel-splits")
    asked = _calls(requests_made, "mapping")
    assert len(asked) == 1 and asked[0]["path"].endswith("/mapping?nolookup=true")
    assert sorted(json.loads(asked[0]["sent"])) == [10, 11]
    assert asked[0]["received"] < 16
    want = np.where(bodies == 11, np.uint64(10), bodies)
    np.testing.assert_array_equal(seg.read(), want)
    np.testing.assert_array_equal(voxgate.open(url, supervoxels=True).read(),
                                  np.where(sv == 11, np.uint64(10), sv))

    # the check of old, for comparison: the whole mapping, 16 bytes a pair
    requests_made.clear()
    with pytest.raises(InvalidRequestError, match="as supervoxels"):
        seg.remote.check_local_edit("a whole-node check")  # type: ignore[attr-defined]
    assert sum(r["received"] for r in _calls(requests_made, "mappings")) >= 5001 * 16

    # a merged supervoxel (21 reads as 20) in the blocks a relabel of 20 rewrites; supervoxel
    # 30, retired by DVID's split (it reads as 0), as the id a relabel writes
    for edit in (lambda: voxgate.merge(seg, [10, 20], prefer="local", history_dir=hist),
                 lambda: voxgate.relabel(seg, {10: 30}, history_dir=hist)):
        with pytest.raises(InvalidRequestError, match=r"as supervoxels.*Nothing was changed"):
            edit()
        np.testing.assert_array_equal(seg.read(), want)
    assert list(voxgate.history(url, history_dir=hist)["status"]) == ["done", "done"]


def test_a_local_split_asks_about_the_blocks_it_rewrites(
        repo: DVIDRepo, tmp_path: Path, requests_made: list[dict[str, Any]]) -> None:
    """A local split rewrites the blocks holding the voxels that get a new id, and writes the
    new ids: those supervoxels, then the reserved ids, are asked about, and the split runs
    although DVID merged supervoxels in blocks it does not rewrite.  Where a merged supervoxel
    sits in a block it rewrites, it is refused before any id is reserved."""
    labels = np.zeros((16, 32, 64), np.uint64)
    labels[:, :, 0:8] = 5
    labels[:, :, 24:32] = 5                           # 5: two pieces, in blocks x=0 and x=1
    labels[:, :, 16:20] = 6
    labels[:, :, 48:64] = 7
    url, name = _seg(repo, labels, "narrow_split")
    lab = repo.labels(name)
    lab.merge(7, [6])                                 # 6 -> 7: supervoxel 6 sits in block x=1
    hist = tmp_path / "history"
    seg = voxgate.open(url, mode="r+")
    bodies = seg.read()
    next_id = lab.next_label()
    # the pieces tie: the first in scan order (x 0:8) keeps 5, the other (x 24:32, in block
    # x=1 beside supervoxel 6) would get a new id
    with pytest.raises(InvalidRequestError, match=r"as supervoxels.*6 reads as body 7"):
        voxgate.split(seg, 5, prefer="local", history_dir=hist)
    assert lab.next_label() == next_id  # refused before an id was reserved
    np.testing.assert_array_equal(seg.read(), bodies)
    # seeds put the piece in block x=0 on the move instead: that block holds 5 only
    requests_made.clear()
    r = voxgate.split(seg, 5, seeds={5: [(0, 0, 24)], 9: [(0, 0, 0)]}, prefer="local",
                      history_dir=hist)
    assert r.provenance is not None and r.provenance.path == "local" and r.new_ids == (9,)
    asked = [json.loads(c["sent"]) for c in _calls(requests_made, "mapping")]
    assert asked == [[5, 9]], asked
    assert not _calls(requests_made, "mappings")
    want = bodies.copy()
    want[:, :, 0:8] = 9
    np.testing.assert_array_equal(seg.read(), want)

    # a piece with a new id: the id DVID reserves is asked about once reserved
    requests_made.clear()
    r = voxgate.split(seg, 9, seeds=[[(0, 0, 0)], [(15, 31, 7)]], prefer="local",
                      history_dir=hist)
    assert r.provenance is not None and r.provenance.path == "local" and len(r.new_ids) == 1
    asked = [json.loads(c["sent"]) for c in _calls(requests_made, "mapping")]
    assert asked == [[9], [r.new_ids[0]]], asked
    got = seg.read()
    assert set(np.unique(got[:, :, 0:8]).tolist()) == {9, r.new_ids[0]}
    np.testing.assert_array_equal(got[:, :, 8:], want[:, :, 8:])
