"""The DVID test server answers as real DVID (janelia-flyem/dvid) does, where voxgate's dvid://
Remote and the proofreading Service depend on it.  Each test names the DVID source it follows;
the requests go over HTTP to the server started on 127.0.0.1, as any DVID client's would."""

from __future__ import annotations

import gzip
import json
import uuid as uuidlib

import httpx
import numpy as np

import voxgate
from voxgate.formats.dvid_block import encode_label_block, encode_rles, pack_block_records
from voxgate.remotes.dvid import DVIDRepo

BS = 16  # block size of every instance here: small blocks keep the volumes small


def _labelmap(repo: DVIDRepo, levels: int = 0, **extra: str) -> str:
    """A new labelmap at the repo root; returns its URL path ``/api/node/<root>/<name>``."""
    name = "lm_" + uuidlib.uuid4().hex[:10]
    body = {"typename": "labelmap", "dataname": name, "BlockSize": f"{BS},{BS},{BS}",
            "MaxDownresLevel": str(levels), **extra}
    r = httpx.post(f"{repo.server}/api/repo/{repo.root}/instance", json=body)
    assert r.status_code == 200, r.text
    return f"/api/node/{repo.root}/{name}"


def _post_raw(http: httpx.Client, base: str, data: np.ndarray, offset: tuple[int, int, int],
              query: str = "") -> None:
    """POST ``data`` (z, y, x) at voxel ``offset`` (z, y, x)."""
    (sz, sy, sx), (oz, oy, ox) = data.shape, offset
    r = http.post(f"{base}/raw/0_1_2/{sx}_{sy}_{sz}/{ox}_{oy}_{oz}{query}",
                  content=np.ascontiguousarray(data, "<u8").tobytes())
    assert r.status_code == 200, r.text


def _get_raw(http: httpx.Client, base: str, shape: tuple[int, int, int],
             offset: tuple[int, int, int] = (0, 0, 0), query: str = "") -> np.ndarray:
    (sz, sy, sx), (oz, oy, ox) = shape, offset
    r = http.get(f"{base}/raw/0_1_2/{sx}_{sy}_{sz}/{ox}_{oy}_{oz}{query}")
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, "<u8").reshape(shape)


def _downres_reference(a: np.ndarray) -> np.ndarray:
    """labels/compressed.go downresArray, voxel by voxel: the most frequent non-zero label of
    each 2x2x2 cell, the smaller one on a tie, 0 only when the whole cell is 0."""
    out = np.zeros(tuple(s // 2 for s in a.shape), np.uint64)
    for z, y, x in np.ndindex(*out.shape):
        cell = a[2 * z:2 * z + 2, 2 * y:2 * y + 2, 2 * x:2 * x + 2].ravel().tolist()
        votes: dict[int, int] = {}
        for v in cell:
            if v:
                votes[v] = votes.get(v, 0) + 1
        if votes:
            out[z, y, x] = min(votes, key=lambda v: (-votes[v], v))
    return out


def _segmentation(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.choice(np.array([0, 0, 3, 5, 9], np.uint64), size=shape)
    a[:, :4, :4] = 7  # solid regions as well as noise
    return a


def test_raw_post_recomputes_the_coarser_scales(repo: DVIDRepo, http: httpx.Client) -> None:
    # labelmap write.go PutLabels: every raw POST ends with downresMut.Execute(), which
    # (downres.go StoreDownres) recomputes scales 1..MaxDownresLevel of the touched blocks
    # before the request returns; Block.Downres -> DownresSlow -> downresArray is the rule
    base = _labelmap(repo, levels=2)
    seg = _segmentation((32, 32, 64), seed=1)
    seg[0:2, 0:2, 0:2] = 0  # a cell with one label among zeros takes that label
    seg[1, 1, 1] = 11
    seg[0:2, 0, 2:4] = 6  # a 4:4 tie goes to the smaller label
    seg[0:2, 1, 2:4] = 2
    _post_raw(http, base, seg, (0, 0, 0))
    s1 = _downres_reference(seg)
    assert s1[0, 0, 0] == 11 and s1[0, 0, 1] == 2
    np.testing.assert_array_equal(_get_raw(http, base, (16, 16, 32), query="?scale=1"), s1)
    np.testing.assert_array_equal(_get_raw(http, base, (8, 8, 16), query="?scale=2"),
                                  _downres_reference(s1))
    # a later write of one block recomputes only its coarse octant; the rest stays
    patch = np.full((BS, BS, BS), 13, np.uint64)
    _post_raw(http, base, patch, (16, 16, 32), query="?mutate=true")
    seg[16:32, 16:32, 32:48] = 13
    np.testing.assert_array_equal(_get_raw(http, base, (16, 16, 32), query="?scale=1"),
                                  _downres_reference(seg))


def test_raw_post_ignores_scale(repo: DVIDRepo, http: httpx.Client) -> None:
    # labelmap handlers.go handleDataRequest reads ?scale= but passes only the subvolume to
    # write.go PutLabels, whose putChunk stores at putOperation.scale, never set: scale 0.
    # (Coarser scales are written with POST blocks?scale=, write.go storeBlocks.)
    base = _labelmap(repo, levels=1)
    data = np.full((BS, BS, BS), 21, np.uint64)
    _post_raw(http, base, data, (0, 0, 0), query="?scale=1")
    np.testing.assert_array_equal(_get_raw(http, base, (BS, BS, BS)), data)
    assert http.get(f"{base}/size/21").json() == {"voxels": BS**3}


def test_label_index_counts_overwrites_only_with_mutate(repo: DVIDRepo,
                                                        http: httpx.Client) -> None:
    # write.go putChunk: without ?mutate=true a raw POST is an ingest (labelidx.go
    # handleBlockIndexing: the new block's counts are added, CalcNumLabels(nil)); with it the
    # previous block is read and only the difference goes to the index (handleBlockMutate).
    # labels.Index.ModifyBlocks adds the deltas; handleSize / handleSparsevolSize answer
    # from the index, not from the voxels
    old = np.full((BS, BS, BS), 31, np.uint64)
    new = np.full((BS, BS, BS), 32, np.uint64)
    ingest, mutate = _labelmap(repo), _labelmap(repo)
    for base, query in ((ingest, ""), (mutate, "?mutate=true")):
        _post_raw(http, base, old, (0, 0, 0))
        _post_raw(http, base, new, (0, 0, 0), query=query)
        np.testing.assert_array_equal(_get_raw(http, base, (BS, BS, BS)), new)
        assert http.get(f"{base}/size/32").json() == {"voxels": BS**3}
    assert http.get(f"{ingest}/size/31").json() == {"voxels": BS**3}  # stale, as in DVID
    assert http.get(f"{ingest}/sparsevol-size/31").json()["numblocks"] == 1
    assert http.get(f"{mutate}/size/31").status_code == 404
    assert http.get(f"{mutate}/sparsevol-size/31").status_code == 404

    # so the dvid:// Remote sends mutate=true: its overwrites leave an exact index
    name = mutate.rsplit("/", 1)[1]
    vol = voxgate.open(repo.url(name), mode="r+")
    vol[0:BS, 0:BS, 0:BS] = np.full((BS, BS, BS), 33, np.uint64)
    vol[0:2, 0:2, 0:2] = 34  # unaligned: read, patch, write back the block
    labels = repo.labels(name)
    assert http.get(f"{mutate}/size/32").status_code == 404
    assert labels.sizes([32, 33, 34]).tolist() == [0, BS**3 - 8, 8]


def test_split_rewrites_the_coarser_scales_and_lists_supervoxel_splits(
        repo: DVIDRepo, http: httpx.Client) -> None:
    # mutate.go SplitLabels: the split relabels the supervoxels of the touched blocks
    # (splitPass2) and ends with downresMut.Execute(); equiv.go addSplitToMapping records
    # [mutid, supervoxel, remain, split] per version, which handlers.go
    # handleSupervoxelSplits sends as vcache.go SupervoxelSplitsJSON formats it
    base = _labelmap(repo, levels=1)
    seg = np.zeros((BS, BS, 2 * BS), np.uint64)
    seg[:, :, :BS] = 41
    seg[:, :, BS:] = 42
    _post_raw(http, base, seg, (0, 0, 0))
    assert http.post(f"{base}/merge", content=b"[41, 42]").status_code == 200
    assert http.get(f"{base}/supervoxel-splits").json() == []
    runs = np.array([[BS, y, z, BS] for z in range(BS) for y in range(BS)], np.int32)
    r = http.post(f"{base}/split/41", content=encode_rles(runs))
    assert r.status_code == 200, r.text
    new, mutid = r.json()["label"], r.json()["MutationID"]
    bodies = _get_raw(http, base, (BS // 2, BS // 2, BS), query="?scale=1")
    assert (bodies[:, :, :BS // 2] == 41).all() and (bodies[:, :, BS // 2:] == new).all()
    svs = _get_raw(http, base, (BS // 2, BS // 2, BS), query="?scale=1&supervoxels=true")
    split_sv = int(svs[0, 0, -1])
    assert http.get(f"{base}/supervoxels/{new}").json() == [split_sv] and 42 not in svs
    splits = http.get(f"{base}/supervoxel-splits").json()
    assert splits[0] == repo.root and len(splits) == 2
    [[mid, sv, remain, split]] = splits[1]
    assert (mid, sv, split) == (mutid, 42, split_sv)
    r = http.request("GET", f"{base}/mapping", content=json.dumps([42, remain, split]))
    assert r.json() == [0, 41, new]


def test_cleave_and_renumber_mappings_and_label_counters(repo: DVIDRepo,
                                                         http: httpx.Client) -> None:
    base = _labelmap(repo)
    seg = np.zeros((BS, BS, 2 * BS), np.uint64)
    seg[:, :, :BS] = 51
    seg[:, :, BS:] = 52
    _post_raw(http, base, seg, (0, 0, 0))
    assert http.post(f"{base}/merge", content=b"[51, 52]").status_code == 200
    assert http.get(f"{base}/maxlabel").json() == {"maxlabel": 52}
    # mutate.go CleaveLabel takes the new label (newLabel) before it reads or checks the
    # body: a refused cleave still uses up an id
    r = http.post(f"{base}/cleave/51", content=b"[99]")
    assert r.status_code == 400 and "cannot cleave supervoxel 99" in r.text
    assert http.get(f"{base}/nextlabel").json() == {"nextlabel": 54}
    cleaved = http.post(f"{base}/cleave/51", content=b"[52]").json()["CleavedLabel"]
    assert cleaved == 54
    # equiv.go addCleaveToMapping: the cleaved body's own id is mapped to 0
    lines = set(http.get(f"{base}/mappings").text.splitlines())
    assert lines == {"52 54", "54 0"}
    # mutate.go RenumberLabels / equiv.go addRenumberToMapping: the new id maps to 0 (it
    # had no mapping), the body's supervoxels to it; maxlabel is not raised
    assert http.post(f"{base}/renumber", content=b"[1000, 54]").status_code == 200
    lines = set(http.get(f"{base}/mappings").text.splitlines())
    assert lines == {"52 1000", "54 0", "1000 0"}
    assert http.get(f"{base}/maxlabel").json() == {"maxlabel": 54}
    assert http.get(f"{base}/nextlabel").json() == {"nextlabel": 55}


def test_post_blocks_scales_index_and_compression(repo: DVIDRepo, http: httpx.Client) -> None:
    # write.go storeBlocks: blocks at scale > 0 are stored as given (no index, no max label);
    # downres=true only at scale 0; the instance must store gzip (labelmap.go NewData's
    # default compression for labelmap)
    base = _labelmap(repo, levels=1)
    assert http.get(f"{base}/info").json()["Base"]["Compression"] == "gzip"
    def records(label: int) -> bytes:
        blk = np.full((BS, BS, BS), label, np.uint64)
        return pack_block_records([((0, 0, 0), gzip.compress(encode_label_block(blk)))])

    assert http.post(f"{base}/blocks?scale=1", content=records(62)).status_code == 200
    assert (_get_raw(http, base, (BS, BS, BS), query="?scale=1") == 62).all()
    assert http.get(f"{base}/size/62").status_code == 404
    assert http.get(f"{base}/maxlabel").json() == {"maxlabel": 0}
    r = http.post(f"{base}/blocks?scale=1&downres=true", content=records(61))
    assert r.status_code == 400 and "cannot downscale blocks of scale > 0" in r.text
    assert http.post(f"{base}/blocks?downres=true", content=records(61)).status_code == 200
    assert http.get(f"{base}/size/61").json() == {"voxels": BS**3}
    assert http.get(f"{base}/maxlabel").json() == {"maxlabel": 61}
    coarse = _get_raw(http, base, (BS, BS, BS), query="?scale=1")
    h = BS // 2  # the one changed octant is recomputed, the other seven are kept
    assert (coarse[:h, :h, :h] == 61).all() and (coarse[h:] == 62).all()
    body = records(61)
    lz4 = _labelmap(repo, Compression="lz4")
    r = http.post(f"{lz4}/blocks", content=body)
    assert r.status_code == 400 and "cannot accept GZIP /blocks POST" in r.text
