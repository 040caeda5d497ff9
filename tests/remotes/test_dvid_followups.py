"""Follow-ups of the DVID audit, each checked against DVID's source (janelia-flyem/dvid):
the BlockSize each data type takes at creation, and splits that would reach a negative odd
block of a labelmap with coarser scales.  (The relay's downsample job on a DVID labelmap is
in tests/relay/test_downsample_job.py.)"""

from __future__ import annotations

import re
import uuid as uuidlib
from pathlib import Path

import httpx
import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.remotes.dvid import DVIDRepo


def _name(prefix: str) -> str:
    return f"{prefix}_{uuidlib.uuid4().hex[:10]}"


# -- BlockSize at creation ------------------------------------------------------------------------
def test_block_sizes_dvid_takes_at_creation(repo: DVIDRepo, http: httpx.Client) -> None:
    """Only labelmap.go NewData checks BlockSize ("BlockSize must be multiples of 16");
    labelarray.go NewData and imageblk's setByConfig (dvid.StringToPoint) take any size.  The
    test server refused labelarray sizes that are not multiples of 8 with a message of its own."""
    path = f"/api/repo/{repo.root}/instance"

    def new(typename: str, bs: str) -> httpx.Response:
        return http.post(path, json={"typename": typename, "dataname": _name("bs"),
                                     "BlockSize": bs})

    for typename, bs in (("labelarray", "12,20,28"), ("labelarray", "8,8,8"),
                         ("labelarray", "4,4,4"), ("uint8blk", "5,7,9"),
                         ("uint16blk", "3,3,3"), ("labelmap", "16,48,32")):
        r = new(typename, bs)
        assert r.status_code == 200, (typename, bs, r.text)
    r = new("labelmap", "24,16,16")
    assert r.status_code == 400 and r.text == f"BlockSize must be multiples of 16 ({path}).\n"


def test_a_labelarray_whose_blocks_dvid_cannot_encode_stores_nothing(
        repo: DVIDRepo, http: httpx.Client) -> None:
    """labelarray write.go putChunk builds each block with labels.SubvolumeToBlock, whose
    setSubvolume refuses blocks not multiples of 8 or under 16 ("Blocks must be at least
    16x16x16"); putChunk logs that and returns: the raw POST answers 200 and stores nothing.
    The test server stored such blocks."""
    name = _name("la")
    repo.create_instance(name, "labelarray", block_size=(8, 8, 8))
    base = f"/api/node/{repo.root}/{name}/raw/0_1_2/8_8_8/0_0_0"
    r = http.post(base, content=np.full((8, 8, 8), 7, "<u8").tobytes())
    assert r.status_code == 200, r.text
    got = np.frombuffer(http.get(base).content, "<u8")
    assert (got == 0).all()


def test_create_refuses_a_labelarray_dvid_would_never_store(repo: DVIDRepo) -> None:
    """DVID creates a labelarray of any BlockSize but stores none of its blocks unless they
    are multiples of 8 and at least 16 (labels/compressed.go setSubvolume), answering 200 to
    every write: voxgate.create refuses such a labelarray before anything is made.  It made
    8^3 ones, whose every write DVID silently drops."""
    for chunks in ((8, 8, 8), (16, 16, 12)):
        url = repo.url(_name("la"))
        with pytest.raises(InvalidRequestError, match="at least 16"):
            voxgate.create(url, shape=(16, 16, 16), chunks=chunks, dtype="uint64",
                           voxel_size=(8, 8, 8), kind="segmentation", typename="labelarray")
        assert url.rsplit("/", 1)[1] not in repo.instances()
    url = repo.url(_name("la"))
    vol = voxgate.create(url, shape=(24, 16, 32), chunks=(24, 16, 32), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation", typename="labelarray")
    vol[...] = 5
    assert (voxgate.open(url).read() == 5).all()
    # images take any block size, as DVID does
    img = voxgate.create(repo.url(_name("img")), shape=(7, 9, 5), chunks=(3, 5, 7),
                         dtype="uint8", voxel_size=(8, 8, 8))
    img[...] = 4
    assert (img.read() == 4).all()


# -- splits that reach a negative odd block -------------------------------------------------------
BS = 16


def _ingest(http: httpx.Client, path: str, blocks: dict[tuple[int, int, int], np.ndarray]
            ) -> None:
    """Scale-0 blocks ((x, y, z) block coordinates) through ``POST blocks`` without downres
    (write.go storeBlocks: indexed, no coarser scales computed, so no panic)."""
    import gzip

    from voxgate.formats.dvid_block import encode_label_block, pack_block_records

    records = [(bk, gzip.compress(encode_label_block(np.ascontiguousarray(b, "<u8"))))
               for bk, b in blocks.items()]
    r = http.post(f"{path}/blocks", content=pack_block_records(records))
    assert r.status_code == 200, r.text


def _two_pieces(repo: DVIDRepo, http: httpx.Client, sv_b: int) -> tuple[str, str]:
    """A labelmap (16^3 blocks, MaxDownresLevel 1) holding body 1 in two pieces: A (4^3
    voxels of supervoxel 1) in block x=0 and B (supervoxel ``sv_b``, merged into body 1) in
    block x=-1, a negative odd block.  Returns (URL, URL path)."""
    name = _name("lm")
    repo.create_instance(name, "labelmap", block_size=(BS, BS, BS), max_scale=1)
    path = f"/api/node/{repo.root}/{name}"
    a = np.zeros((BS, BS, BS), np.uint64)
    a[:4, :4, :4] = 1
    b = np.zeros((BS, BS, BS), np.uint64)
    b[:2, :2, :2] = sv_b  # x -16..-15: apart from A (x 0..3)
    if sv_b != 1:  # make B the larger piece, so that A is the one split off
        b[:6, :6, :6] = sv_b
    _ingest(http, path, {(0, 0, 0): a, (-1, 0, 0): b})
    if sv_b != 1:
        repo.labels(name).merge(1, [sv_b])
    return repo.url(name), path


def _state(http: httpx.Client, path: str) -> tuple[bytes, bytes, bytes]:
    """Scale 0 as supervoxels, body 1's supervoxels, and the max label."""
    raw = http.get(f"{path}/raw/0_1_2/32_16_16/-16_0_0?supervoxels=true").content
    return raw, http.get(f"{path}/supervoxels/1").content, http.get(f"{path}/maxlabel").content


@pytest.mark.parametrize("prefer", ["auto", "local"])
def test_a_split_that_would_reach_a_negative_odd_block_is_refused(
        repo: DVIDRepo, http: httpx.Client, prefer: str) -> None:
    """labelmap mutate.go SplitLabels rewrites every block of the supervoxels the split volume
    touches (splitPass2, getAffectedBlocks: the remainder of a split supervoxel gets a new id
    too) and hands each to the downres (modifyBlocks -> downres.Mutation.BlockMutated), which
    runs last (Execute), after scale 0, the label index and the mapping changed: block x=-1
    gives a negative octant index in getHiresChanges, a panic (500) with the split half done
    (and voxgate's retry of the 500 then met "missing label 1").
    voxgate.split now refuses it before sending anything, naming the block, as writes are
    refused; the local path (prefer="local") too, whose scale-0 writes would reach it."""
    url, path = _two_pieces(repo, http, sv_b=1)
    before = _state(http, path)
    with pytest.raises(InvalidRequestError, match=r"block -1 along x \(voxels -16\.\.-1\)"):
        voxgate.split(url, 1, prefer=prefer)  # type: ignore[arg-type]
    assert _state(http, path) == before


def test_a_split_whose_blocks_are_safe_goes_through(repo: DVIDRepo, http: httpx.Client) -> None:
    """Only the blocks DVID rewrites count: splitting off piece A (supervoxel 1, block x=0)
    leaves supervoxel 2 in block x=-1 alone, so DVID splits it and downsamples block 0 only."""
    url, _ = _two_pieces(repo, http, sv_b=2)
    res = voxgate.split(url, 1)
    (new,) = res.new_ids
    seg = voxgate.open(url)
    assert tuple(seg.bounds.start) == (0, 0, -16)
    got = seg.read()  # x -16..15
    assert (got[:4, :4, 16:20] == new).all() and (got[:6, :6, :6] == 1).all()


# -- scales DVID derives itself -------------------------------------------------------------------
def test_an_edit_leaves_the_coarser_scales_to_dvid(repo: DVIDRepo, tmp_path: Path) -> None:
    """A labelmap with scales is rebuilt by DVID from every scale-0 write (labelmap write.go
    PutLabels ends with downres.Mutation.Execute), by DVID's rule.  A merge on voxgate's local
    path rewrote the coarser blocks after DVID had, by voxgate's rule (zeros vote, the first
    label wins a tie), saving them for undo; now it reports coarser_scales="derived" and leaves
    them to DVID, and undo (a scale-0 write) has DVID rebuild them again."""
    from voxgate.remotes.base import Capability

    from ..services.numpy_reference import dvid_mode2

    url = repo.url(_name("derived"))
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 5, (16, 32, 32)).astype(np.uint64)
    vol = voxgate.create(url, shape=labels.shape, chunks=(16, 16, 16), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation", num_scales=2)
    vol[:] = labels
    seg = voxgate.open(url, mode="r+")
    assert Capability.DERIVED_SCALES in seg.remote.capabilities
    np.testing.assert_array_equal(seg.at_scale(1).read(), dvid_mode2(labels))

    m = voxgate.merge(seg, [3, 4], prefer="local", history_dir=tmp_path / "history")
    merged = np.where(labels == 4, np.uint64(3), labels)
    assert m.provenance is not None and m.provenance.details["coarser_scales"] == "derived"
    assert m.provenance.details["coarse_blocks"] == 0
    np.testing.assert_array_equal(seg.read(), merged)
    np.testing.assert_array_equal(seg.at_scale(1).read(), dvid_mode2(merged))

    voxgate.undo(seg, history_dir=tmp_path / "history")
    np.testing.assert_array_equal(seg.read(), labels)
    np.testing.assert_array_equal(seg.at_scale(1).read(), dvid_mode2(labels))


# -- the local path once DVID agglomerates supervoxels ------------------------------------------
def test_a_local_edit_after_dvid_split_supervoxels_is_refused(repo: DVIDRepo,
                                                               tmp_path: Path) -> None:
    """A local-path edit writes the body ids it read back into DVID as supervoxels.  After a
    split on the server (even undone), DVID has retired the split supervoxel, which then reads
    as 0: a local split of that segment turned all its voxels to 0 and undo did not bring them
    back (found by the server-path benchmark).  Such edits are refused once the labelmap maps
    any supervoxel elsewhere, and nothing changes; on an unagglomerated labelmap they run."""
    url = repo.url(_name("agglo"))
    labels = np.zeros((16, 32, 32), np.uint64)
    labels[:, :, 0:8] = 3
    labels[:, :, 8:16] = 4
    labels[:, :, 18:24] = 7
    labels[:, :, 26:32] = 7  # segment 7: two pieces
    vol = voxgate.create(url, shape=labels.shape, chunks=(16, 16, 16), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation")
    vol[:] = labels
    seg = voxgate.open(url, mode="r+")
    hist = tmp_path / "history"
    merged = voxgate.merge(seg, [3, 4], prefer="local", history_dir=hist)  # allowed here
    assert merged.provenance is not None and merged.provenance.path == "local"
    after_merge = np.where(labels == 4, np.uint64(3), labels)
    np.testing.assert_array_equal(seg.read(), after_merge)

    s = voxgate.split(seg, 7, history_dir=hist)  # DVID splits supervoxel 7
    assert s.provenance is not None and s.provenance.path == "server"
    voxgate.undo(seg, history_dir=hist)  # the server split, undone on the server
    np.testing.assert_array_equal(seg.read(), after_merge)

    for edit in (lambda: voxgate.split(seg, 7, prefer="local", history_dir=hist),
                 lambda: voxgate.merge(seg, [3, 7], prefer="local", history_dir=hist)):
        with pytest.raises(InvalidRequestError, match=r"as supervoxels.*Nothing was changed"):
            edit()
        np.testing.assert_array_equal(seg.read(), after_merge)
    assert list(voxgate.history(url, history_dir=hist)["status"]) == ["done", "undone", "done"]
    # the local merge's undo rewrites only blocks of supervoxel 3 and writes 4 back, each its
    # own body (mapping?nolookup=true): it runs (the node-wide check refused it)
    voxgate.undo(seg, history_dir=hist)
    np.testing.assert_array_equal(seg.read(), labels)
    np.testing.assert_array_equal(voxgate.open(url, supervoxels=True)[:, :, :16].read(),
                                  labels[:, :, :16])
    # the same edit through DVID goes on
    voxgate.merge(seg, [3, 7], history_dir=hist)
    np.testing.assert_array_equal(seg.read(), np.where(labels == 7, np.uint64(3), labels))


# -- merges and cleaves at negative odd blocks ----------------------------------------------------
def test_merges_and_cleaves_at_negative_odd_blocks_go_through(repo: DVIDRepo,
                                                              http: httpx.Client) -> None:
    """labelmap mutate.go MergeLabels and CleaveLabel change only the mapping and the label
    indices (addMergeToMapping, addCleaveToMapping): no block is rewritten, so nothing reaches
    the downres that a split's negative odd blocks break, and voxgate refuses neither (only
    split and split-supervoxel rewrite blocks; voxgate does not call split-supervoxel).  A
    guard against refusing them too: the blocks, at every scale, stay as they were."""
    url, path = _two_pieces(repo, http, sv_b=2)  # supervoxel 2 (block x=-1) merged into 1
    labels = repo.labels(url.rsplit("/", 1)[1])

    def blocks() -> tuple[bytes, bytes]:
        return (http.get(f"{path}/raw/0_1_2/32_16_16/-16_0_0?supervoxels=true").content,
                http.get(f"{path}/raw/0_1_2/16_8_8/-8_0_0?supervoxels=true&scale=1").content)

    before = blocks()
    new = labels.cleave(1, [2])  # supervoxel 2, in block x=-1, to a new body
    assert list(labels.mapping([1, 2])) == [1, new]
    voxgate.merge(url, [1, new])  # DVID's merge, back into body 1
    assert list(labels.mapping([1, 2])) == [1, 1]
    assert blocks() == before
    seg = voxgate.open(url)
    assert (seg.read()[:6, :6, :6] == 1).all()


# -- BlockSize that is not positive ---------------------------------------------------------------
def test_block_sizes_that_are_not_positive(repo: DVIDRepo, http: httpx.Client) -> None:
    """imageblk setByConfig parses BlockSize with dvid.StringToPoint (split at commas,
    strconv.ParseInt each part) and checks no value; labelmap.go NewData only wants multiples
    of 16, which 0 is.  So DVID creates instances of BlockSize 0,0,0 (and -8,64,64 but for a
    labelmap), and a request that cuts voxels into their blocks divides by zero: a panic,
    answered 500 by recoverHandler.  The test server refused them at creation with a message
    of its own ("expected 3 positive numbers").  voxgate refuses to open such an instance,
    which opened and then failed a read with numpy's "array is too big" (a plain ValueError),
    and refuses to make one (DVIDRepo.create_instance sent it)."""
    path = f"/api/repo/{repo.root}/instance"

    def new(typename: str, bs: str) -> tuple[str, httpx.Response]:
        name = _name("bs")
        return name, http.post(path, json={"typename": typename, "dataname": name,
                                           "BlockSize": bs})

    made = []
    for typename, bs in (("uint8blk", "0,0,0"), ("labelarray", "-8,64,64"),
                         ("labelmap", "0,0,0"), ("labelmap", "-16,64,64")):
        name, r = new(typename, bs)
        assert r.status_code == 200, (typename, bs, r.text)
        assert r.json() == {"result": f"Added {name} [{typename}] to node {repo.root}"}
        info = http.get(f"/api/node/{repo.root}/{name}/info").json()
        assert info["Extended"]["BlockSize"] == [int(v) for v in bs.split(",")]
        made.append((name, bs))
    for typename, bs, said in (("labelmap", "-8,64,64", "BlockSize must be multiples of 16"),
                               ("uint8blk", "64", "cannot convert '64' into a Point."),
                               ("uint8blk", "8,x,8",
                                'strconv.ParseInt: parsing "x": invalid syntax')):
        _, r = new(typename, bs)
        assert r.status_code == 400 and r.text == f"{said} ({path}).\n", (typename, bs)

    zero = made[0][0]
    r = http.get(f"/api/node/{repo.root}/{zero}/raw/0_1_2/8_8_8/0_0_0")
    assert r.status_code == 500 and "runtime error: integer divide by zero" in r.text
    for name, bs in made:
        shown = "[" + bs.replace(",", ", ") + "]"
        with pytest.raises(InvalidRequestError, match=rf"BlockSize {re.escape(shown)}"):
            voxgate.open(repo.url(name))
    for block in ((0, 0, 0), (64, 64, -8)):
        name = _name("bs")
        with pytest.raises(InvalidRequestError, match=r"block_size is 3 positive sizes"):
            repo.create_instance(name, "uint8blk", block_size=block)
        assert name not in repo.instances()
