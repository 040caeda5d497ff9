"""``POST split/<label>`` on a DVID labelarray (labelarray.go handleSplit, mutate.go
SplitLabels / processSplit / splitBlock / splitIndices), checked against numpy.

The test server answered every labelarray split 400 "not served by the voxgate DVID test
server"; DVID takes a new label (or ``?splitlabel=``), relabels the label's voxels among the
posted runs block by block, leaves every other voxel alone, updates the label index and the
coarser scales, and answers ``{"label": N}``."""

from __future__ import annotations

import gzip
import itertools
import struct

import httpx
import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.formats.dvid_block import (
    encode_label_block,
    encode_rles,
    pack_block_records,
    rles_from_mask,
)
from voxgate.remotes.dvid import DVIDRepo

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

_names = itertools.count()


def _blocks(mask: np.ndarray, start: tuple[int, int, int]) -> set[tuple[int, int, int]]:
    """The (z, y, x) blocks holding a voxel of ``mask`` (whose first voxel is at ``start``)."""
    return {tuple(int(v) for v in (p + np.array(start)) // BS) for p in np.argwhere(mask)}


def _size_doc(blocks: set[tuple[int, int, int]]) -> dict[str, object]:
    lo = [min(b[i] for b in blocks) for i in range(3)]
    hi = [max(b[i] for b in blocks) for i in range(3)]
    return {"numblocks": len(blocks), "minvoxel": [lo[2] * BS, lo[1] * BS, lo[0] * BS],
            "maxvoxel": [(hi[2] + 1) * BS - 1, (hi[1] + 1) * BS - 1, (hi[0] + 1) * BS - 1]}


def test_split_relabels_the_runs_voxels_of_the_label_only(
        repo: DVIDRepo, http: httpx.Client) -> None:
    start = (BS, 0, BS)  # blocks z 1..2, y 0..1, x 1..3
    seg = blob_labels((2 * BS, 2 * BS, 3 * BS), 11)
    name = make_labelarray(repo, http, seg, start, levels=1)
    labels = repo.labels(name)
    assert labels.maxlabel() == BIG2
    # the posted runs: a pattern over the data (BIG1's voxels and others' too, which DVID
    # leaves alone), runs across block boundaries, and one row running on into block x 4,
    # never written
    box_shape = (2 * BS, 2 * BS, 4 * BS)
    sel = np.zeros(box_shape, dtype=bool)
    zz, yy, xx = np.indices(box_shape)
    sel[(zz + 2 * yy + xx) % 5 < 2] = True
    sel[:, :, 3 * BS:] = False
    sel[5, 7, 10:3 * BS + 9] = True
    in_data = sel[:, :, :3 * BS]

    new, mutation = labels.split(BIG1, encode_rles(rles_from_mask(sel, start)))
    assert (new, mutation) == (BIG2 + 1, 0)  # {"label": N}: a labelarray names no mutation
    want = seg.copy()
    want[in_data & (seg == BIG1)] = new
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    half = tuple(s // 2 for s in start)
    assert np.array_equal(read_raw(http, repo, name, (BS, BS, 3 * BS // 2), half, 1), mode2(want))
    # through the Remote, at an odd voxel offset
    vol = voxgate.open(repo.url(name))
    assert np.array_equal(vol[3:29, 5:30, 1:45].read(), want[3:29, 5:30, 1:45])
    # ids, points, sparse volumes
    assert labels.maxlabel() == new and labels.next_label() == new + 1
    pts = [tuple(int(v) for v in p + np.array(start)) for p in np.argwhere(want == new)[:4]]
    assert labels.labels_at(pts).tolist() == [new] * 4
    assert labels.label_at(pts[0]) == new
    for lab in (BIG1, new, BIG2):
        assert np.array_equal(labels.sparsevol(lab), np.argwhere(want == lab) + np.array(start))
        assert labels.size(lab) == int((want == lab).sum())
    # the label index (sparsevol-size): BIG1 keeps the blocks it still holds; the new label
    # gets every block the runs touch (splitIndices), those where it has no voxel too
    r = http.get(f"/api/node/{repo.root}/{name}/sparsevol-size/{BIG1}")
    assert r.json() == _size_doc(_blocks(want == BIG1, start))
    r = http.get(f"/api/node/{repo.root}/{name}/sparsevol-size/{new}")
    assert r.json() == _size_doc(_blocks(sel, start))
    assert _blocks(sel, start) != _blocks(want == new, start)  # (the case is exercised)


def test_split_by_raw_http_splitlabel_and_refusals(repo: DVIDRepo, http: httpx.Client) -> None:
    seg = np.zeros((BS, BS, 2 * BS), dtype=np.uint64)
    seg[:, :, :20] = SMALL
    seg[:, :, 20:] = 9
    name = make_labelarray(repo, http, seg, (0, 0, 0), levels=0)
    path = f"/api/node/{repo.root}/{name}/split/{SMALL}"
    sel = np.zeros(seg.shape, dtype=bool)
    sel[:, :4, :] = True  # SMALL's voxels there move; 9's stay
    body = encode_rles(rles_from_mask(sel))

    r = http.post(path + f"?splitlabel={BIG1}", content=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == f'{{"label": {BIG1}}}'.encode()
    want = seg.copy()
    want[sel & (seg == SMALL)] = BIG1
    assert np.array_equal(read_raw(http, repo, name, seg.shape, (0, 0, 0)), want)
    ml = json_int(http.get(f"/api/node/{repo.root}/{name}/maxlabel").content, "maxlabel")
    assert ml == BIG1  # updateMaxLabel follows the given label

    # the new label is taken before the body is read: a refused split still moves maxlabel
    for bad, why in ((b"", "EOF"), (b"\x01" + bytes(11), "sparse vol is not binary: 1"),
                     (bytes(10), "unexpected EOF"),  # a part of the span count
                     # the runs' int32s are read one by one (binary.Read): a cut between two
                     # is io.EOF, a cut inside one io.ErrUnexpectedEOF
                     (bytes(8) + struct.pack("<I", 2) + bytes(20), "EOF"),
                     (bytes(8) + struct.pack("<I", 2) + bytes(22), "unexpected EOF")):
        r = http.post(path, content=bad)
        assert r.status_code == 400
        assert r.text == f"split label {SMALL} -> 0: {why} ({path}).\n"
        ml += 1
        assert json_int(http.get(f"/api/node/{repo.root}/{name}/maxlabel").content,
                        "maxlabel") == ml
    # what the header's other bytes say and bytes after the runs are not looked at
    odd = bytearray(body)
    odd[1:8] = b"\x07\x02\x09\xff\xff\xff\xff"
    sel2 = np.zeros(seg.shape, dtype=bool)
    sel2[3, 9, 2:5] = True
    odd = bytes(odd[:8]) + struct.pack("<I", 1) + encode_rles(rles_from_mask(sel2))[12:] + b"xy"
    r = http.post(path, content=odd)
    assert r.status_code == 200 and r.json() == {"label": ml + 1}
    want[sel2 & (want == SMALL)] = ml + 1
    assert np.array_equal(read_raw(http, repo, name, seg.shape, (0, 0, 0)), want)
    # no check that the label exists or keeps any voxel: a split of a missing label changes
    # no voxel, and its new label's index lists the blocks the runs touch
    r = http.post(f"/api/node/{repo.root}/{name}/split/12345", content=body)
    assert r.status_code == 200 and r.json() == {"label": ml + 2}
    assert np.array_equal(read_raw(http, repo, name, seg.shape, (0, 0, 0)), want)
    r = http.get(f"/api/node/{repo.root}/{name}/sparsevol-size/{ml + 2}")
    assert r.json()["numblocks"] == 2
    assert http.get(f"/api/node/{repo.root}/{name}/sparsevol/{ml + 2}").status_code == 404
    # a splitlabel that does not parse: 400, and the split runs all the same (handleSplit
    # writes the error and goes on), its JSON after the error text
    sel3 = np.zeros(seg.shape, dtype=bool)
    sel3[10, 10, 0:3] = True
    r = http.post(path + "?splitlabel=x1", content=encode_rles(rles_from_mask(sel3)))
    assert r.status_code == 400
    assert r.text == ("Bad parameter for 'splitlabel' query string (\"x1\").  Must be uint64.\n"
                      f" ({path}).\n{{\"label\": {ml + 3}}}")
    want[sel3 & (want == SMALL)] = ml + 3
    assert np.array_equal(read_raw(http, repo, name, seg.shape, (0, 0, 0)), want)
    # the request's own refusals
    r = http.get(path)
    assert (r.status_code, r.text) == (400, f"Split requests must be POST actions. ({path}).\n")
    short = f"/api/node/{repo.root}/{name}/split"
    r = http.post(short, content=body)
    assert r.status_code == 400
    assert r.text == f"ERROR: DVID requires label ID to follow 'split' command ({short}).\n"
    r = http.post(f"/api/node/{repo.root}/{name}/split/0", content=body)
    assert r.status_code == 400 and r.text.startswith("Label 0 is protected background")


def json_int(content: bytes, key: str) -> int:
    import json

    return int(json.loads(content, parse_int=int)[key])


def test_labelmap_split_answers_a_get_and_an_empty_split_as_dvid(
        repo: DVIDRepo, http: httpx.Client) -> None:
    """labelmap handlers.go handleSplit refuses any method but POST with 400 (the test server
    answered 404), and mutate.go SplitLabels checks the split's size before the label: a
    zero-voxel split of a missing label is refused for its size (the test server said the
    label is missing, quoting the instance name Python's way)."""
    name = f"lm{next(_names)}"
    repo.create_instance(name, "labelmap", block_size=(BS, BS, BS))
    path = f"/api/node/{repo.root}/{name}/split/77"
    r = http.get(path)
    assert (r.status_code, r.text) == (400, f"Split requests must be POST actions. ({path}).\n")
    r = http.post(path, content=encode_rles(np.zeros((0, 4), np.int32)))
    assert r.status_code == 400
    assert r.text == f"split label 77: bad split since split volume was zero voxels ({path}).\n"
    one = encode_rles(np.array([[0, 0, 0, 1]], np.int32))
    r = http.post(path, content=one)
    assert r.status_code == 400
    assert r.text == (f'split label 77: unable to modify split index for data "{name}": '
                      f"missing label 77 ({path}).\n")


def test_split_a_downres_cannot_take_is_refused_before_it_is_sent(
        repo: DVIDRepo, http: httpx.Client) -> None:
    """With coarser scales, DVID's labelarray split recomputes them in the request
    (downres.Mutation.Execute): a rewritten block at a negative odd coordinate panics there
    (500) after scale 0 and the index were rewritten.  DVIDLabels.split refuses such a split
    before sending it, as it does a merge; a split whose rewritten blocks are safe goes."""
    start = (-2 * BS, 0, -2 * BS)  # blocks z -2..-1, x -2..-1 (-1 is odd), y 0
    seg = np.zeros((2 * BS, BS, 2 * BS), dtype=np.uint64)
    seg[:, :, BS:] = 9  # blocks x -1
    seg[BS:, :, :BS] = SMALL  # block z -1, x -2
    seg[:BS, :4, :BS] = BIG1  # block z -2, x -2: even coordinates, safe
    # (a raw POST there would panic in its own downres: the blocks go in by POST blocks,
    # which stores and indexes scale 0 only)
    name = f"las{next(_names)}"
    repo.create_instance(name, "labelarray", block_size=(BS, BS, BS), max_scale=1)
    records = [((bx - 2, 0, bz - 2), gzip.compress(encode_label_block(
        seg[bz * BS:(bz + 1) * BS, :, bx * BS:(bx + 1) * BS]))) for bz in (0, 1) for bx in (0, 1)]
    r = http.post(f"/api/node/{repo.root}/{name}/blocks", content=pack_block_records(records))
    assert r.status_code == 200, r.text
    labels = repo.labels(name)
    before = labels.maxlabel()
    sel = np.zeros(seg.shape, dtype=bool)
    sel[BS + 5, 6, :] = True  # a row over blocks x -2 and -1 at z -1: SMALL's block is odd
    rles = encode_rles(rles_from_mask(sel, start))
    with pytest.raises(InvalidRequestError, match=r"block -1 along z.*Nothing was split"):
        labels.split(SMALL, rles)
    assert labels.maxlabel() == before  # nothing was sent
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), seg)
    # what DVID does with it: a 500 after scale 0 was rewritten
    r = http.post(f"/api/node/{repo.root}/{name}/split/{SMALL}", content=rles)
    assert r.status_code == 500 and "Panic" in r.text
    want = seg.copy()
    want[sel & (seg == SMALL)] = before + 1
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    # a row over both x blocks at z -2: the label's only block there is x -2 (even), and a
    # block without the label is not rewritten, so the split goes
    sel2 = np.zeros(seg.shape, dtype=bool)
    sel2[3, 2, :] = True
    new, _ = labels.split(BIG1, encode_rles(rles_from_mask(sel2, start)))
    assert new == before + 2
    want[sel2 & (want == BIG1)] = new
    assert np.array_equal(read_raw(http, repo, name, seg.shape, start), want)
    # its downres ran: octant 0 of the coarse block over blocks -2..-1 is the split block's
    assert np.array_equal(read_raw(http, repo, name, (BS // 2,) * 3, (-BS, 0, -BS), 1),
                          mode2(want[:BS, :, :BS]))


def test_labelblk_raw_label_and_labels_against_numpy(repo: DVIDRepo, http: httpx.Client) -> None:
    """The legacy labelblk (labelblk.go ServeHTTP): the test server had no such type, so
    voxgate's labelblk reads and writes were never run.  uint64 voxels, raw GET and POST in
    "", lz4 and gzip, label/<x_y_z> and GET labels, GET/POST/DELETE only, and none of a
    label index's endpoints."""
    import lz4.block

    name = f"lb{next(_names)}"
    repo.create_instance(name, "labelblk", block_size=(BS, BS, BS))
    base = f"/api/node/{repo.root}/{name}"
    rng = np.random.default_rng(5)
    seg = rng.integers(0, 2**64, size=(BS, 2 * BS, 2 * BS), dtype=np.uint64)
    seg[:, :, :BS] = BIG1
    raw = seg.astype("<u8").tobytes()
    (sz, sy, sx), (oz, oy, ox) = seg.shape, (BS, 0, 2 * BS)
    where = f"{sx}_{sy}_{sz}/{ox}_{oy}_{oz}"
    # one POST per compression, each read back in each compression
    for comp, data in (("", raw), ("lz4", lz4.block.compress(raw, store_size=False)),
                       ("gzip", gzip.compress(raw))):
        r = http.post(f"{base}/raw/0_1_2/{where}" + (f"?compression={comp}" if comp else ""),
                      content=data)
        assert r.status_code == 200, r.text
        for rcomp in ("", "lz4", "gzip"):
            r = http.get(f"{base}/raw/0_1_2/{where}" + (f"?compression={rcomp}" if rcomp
                                                        else ""))
            got = r.content
            if rcomp == "lz4":
                got = lz4.block.decompress(got, uncompressed_size=len(raw))
            elif rcomp == "gzip":
                got = gzip.decompress(got)
            assert got == raw
    info = http.get(f"{base}/info").json()
    assert info["Base"]["TypeName"] == "labelblk" and info["Extended"]["Interpolable"] is False
    assert info["Extended"]["Values"][0]["DataType"] == "uint64"
    # points (x, y, z); a point in a block never written is 0
    pts = [(ox, oy, oz), (ox + 27, oy + 5, oz + 15), (ox + 3, oy + 31, oz + 2), (0, 0, 0)]
    want = [int(seg[z - oz, y - oy, x - ox]) if (x, y, z) != (0, 0, 0) else 0
            for x, y, z in pts]
    assert [http.get(f"{base}/label/{x}_{y}_{z}").json()["Label"] for x, y, z in pts] == want
    r = http.request("GET", f"{base}/labels", content=str([list(p) for p in pts]))
    assert json_list(r.content) == want
    r = http.post(f"{base}/labels", content="[[0,0,0]]")
    assert (r.status_code, r.text) == (
        400, f"Batch labels query must be a GET request ({base}/labels).\n")
    # refusals: not aligned, wrong size, a verb it does not take, a label index's endpoint
    r = http.post(f"{base}/raw/0_1_2/{sx}_{sy}_{sz}/1_0_0", content=raw)
    assert r.status_code == 400 and "non-block aligned" in r.text
    r = http.post(f"{base}/raw/0_1_2/{where}", content=raw[:-8])
    assert r.status_code == 400 and r.text.startswith(f"labels data was {len(raw) - 8} bytes")
    r = http.request("PUT", f"{base}/raw/0_1_2/{where}", content=raw)
    assert r.status_code == 400
    assert r.text == f"labelblk only handles GET, POST, and DELETE HTTP verbs ({base}/raw/0_1_2/" \
        f"{where}).\n"
    for kw in ("sparsevol/5", "maxlabel", "split/5", "merge"):
        assert "Bad API call" in http.get(f"{base}/{kw}").text

    # through voxgate: a labelblk opens as a segmentation of its extents, reads exact uint64
    # and takes writes that are not block aligned (read, patch, write back)
    vol = voxgate.open(repo.url(name), mode="r+")
    assert vol.dtype == np.uint64 and vol.meta.kind == "segmentation"
    assert tuple(vol.bounds.start) == (oz, oy, ox) and tuple(vol.bounds.shape) == seg.shape
    assert np.array_equal(vol[1:15, 3:29, 5:30].read(), seg[1:15, 3:29, 5:30])
    patch = np.full((3, 20, 7), BIG2, dtype=np.uint64)
    vol[2:5, 6:26, 13:20] = patch  # (indices from the volume's start)
    seg[2:5, 6:26, 13:20] = patch
    assert np.array_equal(vol.read(), seg)
    labels = vol.remote.labels  # type: ignore[attr-defined]
    assert labels.label_at((oz + 3, 10, ox + 15)) == BIG2
    assert labels.labels_at([(oz, 0, ox), (oz + 2, 6, ox + 13)]).tolist() == [BIG1, BIG2]


def json_list(content: bytes) -> list[int]:
    import json

    return [int(v) for v in json.loads(content, parse_int=int)]
