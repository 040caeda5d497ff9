"""The endpoints a DVID labelarray serves, and voxgate's label queries on one.

labelarray.go ``(d *Data) ServeHTTP`` answers help, metadata, resolution, info,
specificblocks, sync, label, labels, blocks, pseudocolor, raw, isotropic, sparsevol-size,
sparsevol, sparsevol-by-point, sparsevol-coarse, sparsevols-coarse, maxlabel, nextlabel,
split, split-coarse and merge; every other keyword reaches server/web.go BadAPIRequest (400,
"Bad API call (<path>) for data "<name>".  See API help at http://<host>/api/help/labelarray").
Its sparsevol-size (handleSparsevolSize) has numblocks, minvoxel and maxvoxel but no voxel
count; maxlabel and POST nextlabel are refused (handleMaxlabel, handleNextlabel).  The test
server answered size, sizes, listlabels, lastmod, extents, set-nextlabel, POST maxlabel and
POST nextlabel on a labelarray and put "voxels" in its sparsevol-size, so voxgate's
DVIDLabels used them there, which a real labelarray refuses."""

from __future__ import annotations

import itertools
import json

import httpx
import numpy as np
import pytest

import voxgate
from voxgate.errors import CapabilityNotSupportedError
from voxgate.geometry import Box
from voxgate.remotes.base import Capability, has_capability
from voxgate.remotes.dvid import DVIDRepo
from voxgate.remotes.dvid.client import LabelNotFoundError
from voxgate.testing.dvid import DVIDServerProcess

BIG1, BIG2, SMALL = 2**53 + 1, 2**63 + 5, 7  # ids a float64 cannot hold, and a small one
ABSENT = 2**60 + 3
BS = 16
START = (BS, 0, 3 * BS)  # (z, y, x): odd block coordinates
_names = itertools.count()


def _seg() -> np.ndarray:
    rng = np.random.default_rng(3)
    ids = np.array([0, BIG1, BIG2, SMALL], dtype=np.uint64)
    coarse = ids[rng.integers(0, len(ids), size=(4, 4, 8))]
    seg = coarse.repeat(4, 0).repeat(4, 1).repeat(4, 2)  # (16, 16, 32): 2 blocks along x
    seg[3, 5, 7] = SMALL  # a lone voxel, so sizes are not multiples of 64
    return seg


def _instance(repo: DVIDRepo, http: httpx.Client, typename: str, seg: np.ndarray) -> str:
    name = f"{typename[:5]}{next(_names)}"
    repo.create_instance(name, typename, block_size=(BS, BS, BS))
    (sz, sy, sx), (oz, oy, ox) = seg.shape, START
    r = http.post(f"/api/node/{repo.root}/{name}/raw/0_1_2/{sx}_{sy}_{sz}/{ox}_{oy}_{oz}",
                  content=seg.astype("<u8").tobytes())
    assert r.status_code == 200, r.text
    return name


@pytest.fixture(scope="module")
def seg() -> np.ndarray:
    return _seg()


@pytest.fixture(scope="module")
def pair(repo: DVIDRepo, server: DVIDServerProcess, seg: np.ndarray) -> dict[str, str]:
    """A labelarray and a labelmap holding the same labels at START."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        return {t: _instance(repo, c, t, seg) for t in ("labelarray", "labelmap")}


def _bad_api(text: str, path: str, name: str, typename: str) -> bool:
    return text.startswith(f'Bad API call ({path}) for data "{name}".  See API help at http://') \
        and text.rstrip("\n").endswith(f"/api/help/{typename}")


# -- the server: which endpoints, what they answer --------------------------------------------
LACKING = [  # (method, keyword path, body): labelmap endpoints a labelarray has no case for
    ("GET", f"size/{BIG1}", b""),
    ("GET", "sizes", json.dumps([BIG1, SMALL]).encode()),
    ("GET", "listlabels", b""),
    ("GET", f"lastmod/{BIG1}", b""),
    ("GET", f"supervoxels/{BIG1}", b""),
    ("GET", "mapping", json.dumps([BIG1]).encode()),
    ("GET", "mappings", b""),
    ("GET", "supervoxel-splits", b""),
    ("POST", f"cleave/{BIG1}", json.dumps([BIG1]).encode()),
    ("POST", "renumber", json.dumps([99, ABSENT]).encode()),  # (no such label: no change)
    ("POST", "set-nextlabel/100", b""),
    ("POST", "extents", json.dumps({"MinPoint": [0, 0, 0], "MaxPoint": [9, 9, 9]}).encode()),
]


@pytest.mark.parametrize(("method", "kw", "body"), LACKING, ids=[k for _, k, _ in LACKING])
def test_labelarray_lacks_what_labelmap_has(http: httpx.Client, repo: DVIDRepo,
                                            pair: dict[str, str], method: str, kw: str,
                                            body: bytes) -> None:
    arr = pair["labelarray"]
    path = f"/api/node/{repo.root}/{arr}/{kw}"
    r = http.request(method, path, content=body)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("text/plain")
    assert _bad_api(r.text, path, arr, "labelarray"), r.text
    if kw != "set-nextlabel/100":  # (a labelmap's set-nextlabel would move its counter)
        r = http.request(method, f"/api/node/{repo.root}/{pair['labelmap']}/{kw}",
                         content=body)
        assert "Bad API call" not in r.text


def test_unknown_keyword_is_a_bad_api_call_on_both(http: httpx.Client, repo: DVIDRepo,
                                                   pair: dict[str, str]) -> None:
    for typename, name in pair.items():
        path = f"/api/node/{repo.root}/{name}/nosuchthing"
        r = http.get(path)
        assert r.status_code == 400 and _bad_api(r.text, path, name, typename), r.text


def test_sparsevol_size_fields(http: httpx.Client, repo: DVIDRepo, pair: dict[str, str],
                               seg: np.ndarray) -> None:
    (oz, oy, ox) = START
    zs, ys, xs = np.nonzero(seg == BIG2)
    blocks = {((z + oz) // BS, (y + oy) // BS, (x + ox) // BS)
              for z, y, x in zip(zs, ys, xs, strict=True)}
    lo = [min(b[i] for b in blocks) * BS for i in range(3)]
    hi = [(max(b[i] for b in blocks) + 1) * BS - 1 for i in range(3)]
    want = {"numblocks": len(blocks), "minvoxel": lo[::-1], "maxvoxel": hi[::-1]}
    r = http.get(f"/api/node/{repo.root}/{pair['labelarray']}/sparsevol-size/{BIG2}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert json.loads(r.content) == want  # no "voxels"
    r = http.get(f"/api/node/{repo.root}/{pair['labelmap']}/sparsevol-size/{BIG2}")
    assert json.loads(r.content) == {"voxels": int((seg == BIG2).sum()), **want}
    for name in pair.values():
        assert http.get(f"/api/node/{repo.root}/{name}/sparsevol-size/{ABSENT}"
                        ).status_code == 404


def test_labelarray_ids_are_not_handed_out(http: httpx.Client, repo: DVIDRepo,
                                           pair: dict[str, str]) -> None:
    base = f"/api/node/{repo.root}/{pair['labelarray']}"
    r = http.post(f"{base}/nextlabel/5")
    assert r.status_code == 400
    assert r.text == f"POST on maxlabel is not supported yet.\n ({base}/nextlabel/5).\n"
    r = http.post(f"{base}/maxlabel/{2**40}")
    assert r.status_code == 400
    assert r.text.startswith(f'Unknown action "POST" requested: {base}/maxlabel/{2**40}\n')
    assert http.get(f"{base}/maxlabel").json() == {"maxlabel": BIG2}
    nxt = json.loads(http.get(f"{base}/nextlabel").content, parse_int=int)
    assert nxt == {"nextlabel": BIG2 + 1}  # MaxRepoLabel + 1


# -- voxgate's DVIDLabels on a labelarray, against numpy ------------------------------------------
def test_labels_queries_on_labelarray_match_numpy(repo: DVIDRepo, pair: dict[str, str],
                                                  seg: np.ndarray) -> None:
    arr, lmap = repo.labels(pair["labelarray"]), repo.labels(pair["labelmap"])
    assert arr.typename == "labelarray" and lmap.typename == "labelmap"
    counts = {lab: int((seg == lab).sum()) for lab in (BIG1, BIG2, SMALL)}
    for lab, n in counts.items():
        assert arr.size(lab) == n == lmap.size(lab)
        assert arr.size(lab, supervoxels=True) == n
    ask = [BIG2, ABSENT, SMALL, BIG1, BIG2]
    want = np.array([counts.get(i, 0) for i in ask], dtype=np.uint64)
    got = arr.sizes(ask)
    assert got.dtype == np.uint64 and np.array_equal(got, want)
    assert np.array_equal(lmap.sizes(ask), want)
    with pytest.raises(LabelNotFoundError, match=str(ABSENT)):
        arr.size(ABSENT)

    for lab in (BIG1, BIG2, SMALL):
        s_arr, s_map = arr.sparsevol_size(lab), lmap.sparsevol_size(lab)
        assert s_arr == s_map and s_arr.voxels == counts[lab]
        zz, yy, xx = np.nonzero(seg == lab)
        tight = Box((zz.min() + START[0], yy.min() + START[1], xx.min() + START[2]),
                    (zz.max() + 1 + START[0], yy.max() + 1 + START[1], xx.max() + 1 + START[2]))
        assert s_arr.box.intersect(tight) == tight
        assert all(a % BS == 0 for a in (*s_arr.box.start, *s_arr.box.stop))
    with pytest.raises(LabelNotFoundError):
        arr.sparsevol_size(ABSENT)

    # no agglomeration: each label is its own supervoxel and body
    assert arr.supervoxels(BIG2).tolist() == [BIG2]
    with pytest.raises(LabelNotFoundError):
        arr.supervoxels(ABSENT)
    m = arr.mapping([BIG1, ABSENT, BIG2])
    assert m.dtype == np.uint64 and m.tolist() == [BIG1, 0, BIG2]
    assert arr.mapping([BIG1, ABSENT], nolookup=True).tolist() == [BIG1, ABSENT]
    assert arr.mappings() == {} and arr.agglomerated() is False


def test_sparse_volumes_and_points_on_labelarray(repo: DVIDRepo, pair: dict[str, str],
                                                 seg: np.ndarray) -> None:
    arr = repo.labels(pair["labelarray"])
    (oz, oy, ox) = START
    box = Box((oz + 3, oy + 5, ox + 7), (oz + 13, oy + 11, ox + 29))  # odd, unaligned
    sub = seg[box.slices(START)]
    for lab in (BIG1, BIG2, SMALL):
        got = arr.sparsevol(lab, box=box)
        zz, yy, xx = np.nonzero(sub == lab)
        want = np.stack([zz + box.start[0], yy + box.start[1], xx + box.start[2]], axis=1)
        assert np.array_equal(got, want)
        tight, mask = arr.sparsevol_mask(lab)
        full = np.zeros(seg.shape, dtype=bool)
        full[tight.slices(START)] = mask
        assert np.array_equal(full, seg == lab)
        assert arr.has_label(lab) and arr.has_label(lab, box=box) == bool(len(want))
    assert not arr.has_label(ABSENT)
    pts = [(oz + 3, oy + 5, ox + 7), (oz + 15, oy + 0, ox + 31), (oz, oy, ox)]
    want_pts = [int(seg[p[0] - oz, p[1] - oy, p[2] - ox]) for p in pts]
    assert arr.labels_at(pts).tolist() == want_pts
    assert [arr.label_at(p) for p in pts] == want_pts


def test_labelarray_refusals_name_the_datatype(repo: DVIDRepo, pair: dict[str, str]) -> None:
    arr = repo.labels(pair["labelarray"])
    before = arr.maxlabel()
    calls = {
        "cleave": lambda: arr.cleave(BIG1, [BIG1]),
        "renumber": lambda: arr.renumber({99: SMALL}),
        "mappings": lambda: arr.post_mappings([(BIG1, [SMALL])]),
        "nextlabel": lambda: arr.reserve_ids(3),
    }
    for endpoint, call in calls.items():
        with pytest.raises(CapabilityNotSupportedError, match=f"labelarray.*{endpoint}"):
            call()
    assert arr.maxlabel() == before and arr.next_label() == before + 1
    assert arr.size(SMALL) > 0  # nothing changed


def test_labelarray_remote_creates_and_counts_its_own_ids(repo: DVIDRepo) -> None:
    url = repo.url(f"larr{next(_names)}")
    vol = voxgate.create(url, shape=(32, 16, 48), chunks=(BS, BS, BS), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation", typename="labelarray",
                         offset=(BS, 0, 3 * BS))  # (it POSTed extents, which DVID refuses)
    data = np.zeros((32, 16, 48), dtype=np.uint64)
    data[2:9, 3:7, 5:40] = BIG2
    vol[...] = data
    again = voxgate.open(url)
    assert np.array_equal(again.read(), data)
    assert tuple(again.bounds.start) == (BS, 0, 3 * BS)
    remote = again.remote
    assert not has_capability(remote, Capability.RESERVE_IDS)
    with pytest.raises(CapabilityNotSupportedError, match="labelarray"):
        remote.reserve_ids(2)  # type: ignore[attr-defined]
    assert remote.labels.sizes([BIG2]).tolist() == [int((data == BIG2).sum())]  # type: ignore
