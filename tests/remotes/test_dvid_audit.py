"""An audit of dvid:// and of the DVID test server against real DVID's source
(janelia-flyem/dvid): negative and unaligned geometry, labelmap scales against a numpy reference
of DVID's own downsampling, single-block reads of blocks never written, versioned nodes, and the
answers to bad requests.  Each server-side check names the DVID source it follows."""

from __future__ import annotations

import uuid as uuidlib
import warnings

import httpx
import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError, ReadOnlyError
from voxgate.geometry import Box
from voxgate.remotes.dvid import DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess

from ..services.numpy_reference import dvid_mode2

BS = 16  # the block size of every instance here


def _name(prefix: str) -> str:
    return f"{prefix}_{uuidlib.uuid4().hex[:10]}"


def _labelmap(repo: DVIDRepo, levels: int = 0) -> tuple[str, str]:
    """A new labelmap at the root: (name, URL path ``/api/node/<root>/<name>``)."""
    name = _name("lm")
    repo.create_instance(name, "labelmap", block_size=(BS, BS, BS), max_scale=levels)
    return name, f"/api/node/{repo.root}/{name}"


# -- single-block reads of blocks never written ---------------------------------------------------
def test_single_aligned_block_of_an_unwritten_labelmap_region(repo: DVIDRepo,
                                                              http: httpx.Client) -> None:
    """labelmap blocks.go writeBlockToHTTP serves a raw GET of exactly one aligned block from
    that block alone; a block never written gives 400 (compressed) or a nil-pointer panic, 500
    (uncompressed).  dvid:// read such boxes, and the whole blocks under an unaligned write, as
    one request each, so on a fresh labelmap a chunk-sized read or a small write failed."""
    url = repo.url(_name("seg"))
    # (at non-negative coordinates: DVID's downres cannot take writes to negative odd blocks)
    voxgate.create(url, shape=(6 * BS, 2 * BS, 3 * BS), chunks=(BS, BS, BS), dtype="uint64",
                   voxel_size=(8, 8, 8), kind="segmentation", num_scales=2)
    name = url.rsplit("/", 1)[1]
    base = f"/api/node/{repo.root}/{name}"
    r = http.get(f"{base}/raw/0_1_2/{BS}_{BS}_{BS}/-{BS}_0_{BS}?compression=lz4")
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/plain")
    assert r.text == (f"unable to get label block (-1, 0, 1) "
                      f"({base}/raw/0_1_2/{BS}_{BS}_{BS}/-{BS}_0_{BS}).\n")
    assert http.get(f"{base}/raw/0_1_2/{BS}_{BS}_{BS}/0_0_0").status_code == 500
    assert http.get(f"{base}/raw/0_1_2/{BS}_{BS}_{BS}/0_0_0?scale=1&compression=gzip") \
        .status_code == 400
    r = http.get(f"{base}/raw/0_1_2/{BS + 1}_{BS}_{BS}/0_0_0")  # the general path: zeros
    assert r.status_code == 200 and r.content == bytes(8 * (BS + 1) * BS * BS)

    for comp in ("lz4", "gzip", "none"):
        vol = voxgate.open(url, mode="r+", compression=comp)
        z0 = {"lz4": 0, "gzip": 2 * BS, "none": 4 * BS}[comp]
        block = Box((z0, 0, BS), (z0 + BS, BS, 2 * BS))
        assert not vol.read(block).any()
        assert not vol.at_scale(1).read(Box((z0 // 2, 0, 0), (z0 // 2 + BS, BS, BS))).any()
        # an unaligned write inside one unwritten block: read the block, patch it, write it
        vol.write(9, Box((z0 + 3, 5, 2 * BS - 7), (z0 + 5, 10, 2 * BS - 2)))
        want = np.zeros((BS, BS, BS), np.uint64)
        want[3:5, 5:10, BS - 7:BS - 2] = 9
        np.testing.assert_array_equal(vol.read(block), want)
        # the block exists now: DVID's one-block path serves it, and agrees
        r = http.get(f"{base}/raw/0_1_2/{BS}_{BS}_{BS}/{BS}_0_{z0}")
        assert r.status_code == 200
        np.testing.assert_array_equal(np.frombuffer(r.content, "<u8").reshape(BS, BS, BS), want)


# -- negative, unaligned geometry; labelmap scales against numpy; dvidtools -----------------------
def test_negative_unaligned_volumes_and_labelmap_scales(repo: DVIDRepo,
                                                        server: DVIDServerProcess) -> None:
    rng = np.random.default_rng(11)
    # images: a uint8blk and a uint16blk at negative, unaligned offsets, written in pieces
    for dtype in ("uint8", "uint16"):
        url = repo.url(_name("img"))
        off, shape = (-37, -5, 11), (29, 41, 53)
        vol = voxgate.create(url, shape=shape, chunks=(BS, BS, BS), dtype=dtype,
                             voxel_size=(8, 8, 8), offset=off)
        model = np.zeros(shape, dtype)
        for _ in range(4):
            lo = rng.integers(0, shape)
            hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, shape, strict=True)]
            piece = rng.integers(1, 200, [h - a for a, h in zip(lo, hi, strict=True)],
                                 dtype=dtype)
            sl = tuple(slice(int(a), h) for a, h in zip(lo, hi, strict=True))
            model[sl] = piece
            vol.write(piece, Box([o + int(a) for o, a in zip(off, lo, strict=True)],
                                 [o + h for o, h in zip(off, hi, strict=True)]))
        again = voxgate.open(url)
        assert tuple(again.offset) == off and again.shape == shape
        np.testing.assert_array_equal(again.read(), model)
        np.testing.assert_array_equal(again.read(Box((-30, 0, 40), (-20, 17, 60))),
                                      model[7:17, 5:22, 29:49])

    # a labelmap at a negative, unaligned offset: one scale (DVID's downres cannot take writes
    # to negative odd blocks, see test_labelmap_scales_at_negative_odd_blocks)
    url = repo.url(_name("seg"))
    off, shape = (-21, -3, 5), (21, 19, 35)
    vol = voxgate.create(url, shape=shape, chunks=(BS, BS, BS), dtype="uint64",
                         voxel_size=(8, 8, 8), offset=off, kind="segmentation")
    model = rng.integers(1, 5, shape).astype(np.uint64)
    vol[...] = model
    model[2:9, 4:15, 3:30] = 2**60 + 7  # crosses blocks on every axis
    vol.write(2**60 + 7, Box((off[0] + 2, off[1] + 4, off[2] + 3),
                             (off[0] + 9, off[1] + 15, off[2] + 30)))
    got = voxgate.open(url)
    np.testing.assert_array_equal(got.read(), model)
    np.testing.assert_array_equal(got.read(Box((-20, 0, 7), (-3, 13, 33))),
                                  model[1:18, 3:16, 2:28])
    neg_url, neg_off, neg_shape, neg_model = url, off, shape, model

    # a labelmap at an unaligned offset with two coarser scales computed by the server
    url = repo.url(_name("seg"))
    off, shape = (43, 61, 5), (21, 19, 35)
    vol = voxgate.create(url, shape=shape, chunks=(BS, BS, BS), dtype="uint64",
                         voxel_size=(8, 8, 8), offset=off, kind="segmentation", num_scales=3)
    model = rng.integers(1, 5, shape).astype(np.uint64)
    vol[...] = model
    model[2:9, 4:15, 3:30] = 2**60 + 7  # crosses blocks on every axis
    vol.write(2**60 + 7, Box((off[0] + 2, off[1] + 4, off[2] + 3),
                             (off[0] + 9, off[1] + 15, off[2] + 30)))
    # the reference on DVID's block grid through 0: a frame of whole 4-block cells
    g = 4 * BS
    lo = [o // g * g for o in off]
    hi = [-(-(o + s) // g) * g for o, s in zip(off, shape, strict=True)]
    frame = np.zeros([h - a for a, h in zip(lo, hi, strict=True)], np.uint64)
    frame[tuple(slice(o - a, o - a + s) for o, a, s in zip(off, lo, shape, strict=True))] = model
    got = voxgate.open(url)
    np.testing.assert_array_equal(got.read(), model)
    ref = frame
    for k in (1, 2):
        ref = dvid_mode2(ref)
        sc = got.scales[k]
        f = 2**k
        assert tuple(sc.offset) == tuple(o // f for o in off)
        sl = tuple(slice(o - a // f, o - a // f + s)
                   for o, a, s in zip(sc.offset, lo, sc.shape, strict=True))
        np.testing.assert_array_equal(got.at_scale(k).read(), ref[sl])
    # an unaligned box of scale 1 that crosses blocks
    s1 = got.at_scale(1)
    z0, y0, x0 = s1.offset
    np.testing.assert_array_equal(s1.read(Box((z0 + 1, y0 + 2, x0 + 3), (z0 + 9, y0 + 9,
                                                                          x0 + 17))),
                                  dvid_mode2(frame)[z0 + 1 - lo[0] // 2:z0 + 9 - lo[0] // 2,
                                                y0 + 2 - lo[1] // 2:y0 + 9 - lo[1] // 2,
                                                x0 + 3 - lo[2] // 2:x0 + 17 - lo[2] // 2])

    # dvidtools reads the same labels at negative coordinates, and the same sparse volume
    url, off, shape, model = neg_url, neg_off, neg_shape, neg_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import dvid  # dvidtools' import name
    old = dvid.config.segmentation
    dvid.config.segmentation = url.rsplit("/", 1)[1]
    dvid.setup(server.url, repo.root)
    try:
        zyx = np.argwhere(np.ones(shape, bool))[::97] + np.array(off)
        xyz = zyx[:, ::-1].tolist()
        theirs = np.asarray(dvid.locs_to_ids(xyz, progress=False)).astype(np.uint64)
        np.testing.assert_array_equal(theirs, model[tuple((zyx - np.array(off)).T)])
        # (dvidtools decodes sparse volumes into uint32: it cannot take negative coordinates,
        # so the label's size and block-accurate bounds are compared instead)
        mine = np.argwhere(model == 3) + np.array(off)
        size = dvid.get_sparsevol_size(3)
        blocks = mine // BS
        assert (size["voxels"], size["numblocks"]) == (len(mine), len({*map(tuple, blocks)}))
        assert list(size["minvoxel"]) == (blocks.min(axis=0) * BS)[::-1].tolist()
        assert list(size["maxvoxel"]) == ((blocks.max(axis=0) + 1) * BS - 1)[::-1].tolist()
    finally:
        dvid.config.segmentation = old


# -- DVID's downres shortcut for solid octants ----------------------------------------------------
def test_downres_of_solid_zero_octants_clears_the_coarse_block(repo: DVIDRepo,
                                                               http: httpx.Client) -> None:
    """labels/compressed.go Block.Downres first tries setBlank: octants that did not change
    count as solid label 0, so a write whose changed blocks are all solid 0 clears the whole
    coarse block, the unchanged octants' part included."""
    _, base = _labelmap(repo, levels=1)

    def post(data: np.ndarray, x: int) -> None:
        r = http.post(f"{base}/raw/0_1_2/{data.shape[2]}_{BS}_{BS}/{x}_0_0?mutate=true",
                      content=np.ascontiguousarray(data, "<u8").tobytes())
        assert r.status_code == 200, r.text

    def scale1() -> np.ndarray:
        r = http.get(f"{base}/raw/0_1_2/{BS}_{BS // 2}_{BS // 2}/0_0_0?scale=1")
        return np.frombuffer(r.content, "<u8").reshape(BS // 2, BS // 2, BS)

    two = np.zeros((BS, BS, 2 * BS), np.uint64)
    two[..., :BS] = 5
    two[..., BS:] = 6
    post(two, 0)
    h = BS // 2
    assert (scale1()[..., :h] == 5).all() and (scale1()[..., h:] == 6).all()
    post(np.full((BS, BS, BS), 7, np.uint64), BS)  # one solid non-0 octant: recomputed alone
    assert (scale1()[..., :h] == 5).all() and (scale1()[..., h:] == 7).all()
    post(np.zeros((BS, BS, BS), np.uint64), BS)  # the only changed octant is solid 0
    assert not scale1().any()
    r = http.get(f"{base}/raw/0_1_2/{BS}_{BS}_{BS}/0_0_0")
    assert (np.frombuffer(r.content, "<u8") == 5).all()  # scale 0 keeps its label 5


# -- versioned nodes ------------------------------------------------------------------------------
def test_locked_node_refuses_writes_and_branches_see_their_own_data(
        repo: DVIDRepo, server: DVIDServerProcess, http: httpx.Client) -> None:
    r = DVIDRepo.create(server.url, alias="audit-versions")
    url = r.url("gray")
    off, shape = (-9, 3, -17), (13, 22, 31)
    vol = voxgate.create(url, shape=shape, chunks=(BS, BS, BS), dtype="uint8",
                         voxel_size=(8, 8, 8), offset=off)
    first = np.random.default_rng(2).integers(1, 255, shape, dtype=np.uint8)
    vol[...] = first
    writer = voxgate.open(url, mode="r+")
    r.commit(r.root, note="v1")
    # server/web.go instanceSelector: a mutation on a locked node of a versioned instance
    path = f"/api/node/{r.root}/gray/raw/0_1_2/{BS}_{BS}_{BS}/0_0_0"
    resp = http.post(path, content=bytes(BS**3))
    assert resp.status_code == 400
    assert resp.text == f'Cannot do POST on endpoint "raw" of locked node {r.root} ({path}).\n'
    # the handle opened before the commit: refused, aligned or not, and nothing changed
    with pytest.raises(ReadOnlyError, match="locked node"):
        writer.write(1, Box((off[0], 5, -3), (off[0] + 2, 7, -1)))
    with pytest.raises(ReadOnlyError, match="locked node"):
        writer.write(1, Box((-5, 5, 0), (0, 10, 14)))
    # a write over several blocks, every one refused: the refusal itself (it was a
    # PartialWriteError with no block written, wrapping the ReadOnlyError)
    with pytest.raises(ReadOnlyError, match=r"(?s)locked node.*make a child"):
        writer.write(1, Box((off[0], 5, -3), (off[0] + 2, 7, 4)))
    with pytest.raises(ReadOnlyError, match="locked node"):
        writer.write(np.ones((13, 22, 31), np.uint8), Box(off, (off[0] + 13, 25, 14)))
    np.testing.assert_array_equal(voxgate.open(url).read(), first)
    # nodeSelector refuses every other POST on the locked node, commit included
    resp = http.post(f"/api/node/{r.root}/commit", json={"note": "again"})
    assert resp.status_code == 400
    assert resp.text.startswith(f"Cannot do post on locked node {r.root} (")
    child = r.branch(r.root, "edits")
    on_child = voxgate.open(r.url("gray", child), mode="r+")
    on_child.write(200, Box((off[0] + 1, 4, -16), (off[0] + 12, 20, 10)))
    second = first.copy()
    second[1:12, 1:17, 1:27] = 200
    np.testing.assert_array_equal(voxgate.open(r.url("gray", child)).read(), second)
    np.testing.assert_array_equal(voxgate.open(url).read(), first)
    np.testing.assert_array_equal(voxgate.open(r.url("gray", f"{r.root[:6]}:edits")).read(),
                                  second)


# -- answers to bad requests ----------------------------------------------------------------------
def test_bad_requests_answer_as_dvid(repo: DVIDRepo, http: httpx.Client) -> None:
    def bad(resp: httpx.Response, text: str) -> None:
        assert resp.status_code == 400, resp.text
        assert resp.headers["content-type"].startswith("text/plain")
        assert resp.text == f"{text} ({resp.request.url.path}).\n"

    img = _name("img")
    repo.create_instance(img, "uint8blk", block_size=(BS, BS, BS))
    ibase = f"/api/node/{repo.root}/{img}"
    # imageblk.go: NewVoxels checks the byte count before write.go PutVoxels the alignment
    bad(http.post(f"{ibase}/raw/0_1_2/5_{BS}_{BS}/1_0_0", content=bytes(7)),
        f"voxels data was 7 bytes, expected {5 * BS * BS} bytes for 3d volume (5,{BS},{BS}) "
        "at offset (1,0,0)")
    bad(http.post(f"{ibase}/raw/0_1_2/5_{BS}_{BS}/1_0_0", content=bytes(5 * BS * BS)),
        f"cannot store voxels in non-block aligned geometry (1,0,0) -> (5,{BS - 1},{BS - 1})")
    # imageblk takes no ?compression= on POST: the body is the voxels as they are
    vox = np.arange(BS**3, dtype=np.uint64).astype(np.uint8).reshape(BS, BS, BS)
    r = http.post(f"{ibase}/raw/0_1_2/{BS}_{BS}_{BS}/-{BS}_0_0?compression=lz4",
                  content=vox.tobytes())
    assert r.status_code == 200, r.text
    r = http.get(f"{ibase}/raw/0_1_2/{BS}_{BS}_{BS}/-{BS}_0_0")
    assert r.content == vox.tobytes()
    bad(http.get(f"{ibase}/raw/0_1_2/0_{BS}_{BS}/0_0_0"),
        f"Illegal geometry requested: 3d volume (0,{BS},{BS}) at offset (0,0,0)")

    _, base = _labelmap(repo)
    seg = np.full((BS, BS, BS), 4, np.uint64)
    assert http.post(f"{base}/raw/0_1_2/{BS}_{BS}_{BS}/0_0_0", content=seg.tobytes()) \
        .status_code == 200
    # compression.go writeCompressedToHTTP: "uncompressed" is a /blocks option, not a raw one
    bad(http.get(f"{base}/raw/0_1_2/{BS}_{BS}_2/0_0_0?compression=uncompressed"),
        'unknown compression type "uncompressed"')
    # handleDataRequest decompresses before write.go PutLabels checks the alignment
    bad(http.post(f"{base}/raw/0_1_2/{BS}_{BS}_{BS}/1_0_0?compression=lz4", content=b""),
        "received 0 LZ4 compressed bytes")
    bad(http.post(f"{base}/raw/0_1_2/{BS}_{BS}_{BS}/1_0_0?compression=snappy", content=b"x"),
        'unknown compression type "snappy"')
    # the supervoxels flag is on only for the exact value "true"
    other = np.full((BS, BS, BS), 6, np.uint64)
    assert http.post(f"{base}/raw/0_1_2/{BS}_{BS}_{BS}/{BS}_0_0", content=other.tobytes()) \
        .status_code == 200
    assert http.post(f"{base}/merge", content=b"[4, 6]").status_code == 200
    for flag, want in (("true", 6), ("1", 4), ("on", 4)):
        r = http.get(f"{base}/raw/0_1_2/{BS}_{BS}_{BS}/{BS}_0_0?supervoxels={flag}")
        assert (np.frombuffer(r.content, "<u8") == want).all(), flag
    # server/web.go repoCommitHandler unmarshals the body without a length check
    r2 = DVIDRepo.create(repo.server)
    bad(http.post(f"/api/node/{r2.root}/commit", content=b""),
        "Malformed JSON request in body: unexpected end of JSON input")
    assert not r2.is_locked(r2.root)


# -- labelmap block sizes -------------------------------------------------------------------------
def test_labelmap_block_size_must_be_multiples_of_16(repo: DVIDRepo, http: httpx.Client) -> None:
    """labelmap.go NewData: Sscanf("%d,%d,%d") then "BlockSize must be multiples of 16"; the
    imageblk types and labelarray take other sizes.  dvid:// took labelmaps of 8^3 blocks,
    which real DVID refuses."""
    path = f"/api/repo/{repo.root}/instance"

    def new(typename: str, bs: str) -> httpx.Response:
        return http.post(path, json={"typename": typename, "dataname": _name("bs"),
                                     "BlockSize": bs})

    for bs in ("8,8,8", "16,16,24", "32,8,16"):
        r = new("labelmap", bs)
        assert r.status_code == 400 and r.text == f"BlockSize must be multiples of 16 ({path}).\n"
    for typename, bs in (("labelmap", "16,32,48"), ("uint8blk", "8,8,8"),
                         ("labelarray", "8,8,8")):
        assert new(typename, bs).status_code == 200, (typename, bs)

    for chunks in ((8, 8, 8), (16, 16, 24)):
        url = repo.url(_name("seg"))
        with pytest.raises(InvalidRequestError, match=r"labelmap blocks must be multiples of 16"):
            voxgate.create(url, shape=(16, 16, 16), chunks=chunks, dtype="uint64",
                           voxel_size=(8, 8, 8), kind="segmentation")
        assert url.rsplit("/", 1)[1] not in repo.instances()
    name = _name("seg")
    with pytest.raises(InvalidRequestError, match="BlockSize must be multiples of 16"):
        repo.create_instance(name, "labelmap", block_size=(8, 8, 8))
    assert name not in repo.instances()
    img = voxgate.create(repo.url(_name("img")), shape=(16, 16, 16), chunks=(8, 8, 8),
                         dtype="uint8", voxel_size=(8, 8, 8))
    img[...] = 3
    assert (img.read() == 3).all()


# -- labelmap downres at negative odd block coordinates -------------------------------------------
def test_labelmap_scales_at_negative_odd_blocks(repo: DVIDRepo, http: httpx.Client) -> None:
    """labelmap downres.go getHiresChanges indexes a block's octant with Go's %, negative for
    a negative odd coordinate: a negative index panics (500) once scale 0 is stored; one that
    lands in 0..7 puts the block in another octant.  dvid:// refuses what would reach it."""
    h = BS // 2

    def post(base: str, value: int, x: int, z: int = 0) -> httpx.Response:
        return http.post(f"{base}/raw/0_1_2/{BS}_{BS}_{BS}/{x}_0_{z}?mutate=true",
                         content=np.full(BS**3, value, "<u8").tobytes())

    def get(base: str, x: int, z: int = 0, scale: int = 0) -> np.ndarray:
        # one voxel wider than a block: DVID's general path (a never-written block reads 0)
        r = http.get(f"{base}/raw/0_1_2/{BS + 1}_{BS}_{BS}/{x}_0_{z}?scale={scale}")
        assert r.status_code == 200, r.text
        return np.frombuffer(r.content, "<u8").reshape(BS, BS, BS + 1)[..., :BS]

    _, base = _labelmap(repo, levels=1)
    r = post(base, 5, -BS)  # block x = -1: octant index -1
    assert r.status_code == 500 and "runtime error: index out of range [-1]" in r.text
    assert (get(base, -BS) == 5).all()  # scale 0 was stored before the downres
    assert not get(base, -BS, scale=1).any()
    # block (x, y, z) = (-1, 0, 1): index 4 - 1 = 3, octant (x 1, y 1, z 0), not (1, 0, 1)
    assert post(base, 6, -BS, z=BS).status_code == 200
    s1 = get(base, -BS, scale=1)
    assert (s1[:h, h:, h:] == 6).all() and not s1[h:, :h, h:].any()
    # two levels: block x = -2 is even at scale 0, its parent -1 odd at scale 1
    _, base = _labelmap(repo, levels=2)
    r = post(base, 7, -2 * BS)
    assert r.status_code == 500 and "index out of range [-1]" in r.text
    s1 = get(base, -BS, scale=1)  # scale 1 was stored before the panic at level 1
    assert (s1[:h, :h, :h] == 7).all() and s1[h:].sum() + s1[:, h:].sum() + s1[..., h:].sum() == 0
    assert not get(base, -BS, scale=2).any()

    # dvid:// refuses to make a labelmap with scales over such blocks: nothing is made
    for offset, shape, scales in (((0, 0, -2 * BS), (BS, BS, 2 * BS), 2),
                                  ((-3, 0, 0), (BS, BS, BS), 2),
                                  ((0, -2 * BS, 0), (BS, BS, BS), 3)):
        url = repo.url(_name("seg"))
        with pytest.raises(InvalidRequestError, match=r"Go's %.*Nothing was created"):
            voxgate.create(url, shape=shape, chunks=(BS, BS, BS), dtype="uint64",
                           voxel_size=(8, 8, 8), offset=offset, kind="segmentation",
                           num_scales=scales)
        assert url.rsplit("/", 1)[1] not in repo.instances()
    # at a block at a multiple of 2^levels, and with one scale, negative is fine
    ok = voxgate.create(repo.url(_name("seg")), shape=(BS, BS, BS), chunks=(BS, BS, BS),
                        dtype="uint64", voxel_size=(8, 8, 8), offset=(0, 0, -2 * BS),
                        kind="segmentation", num_scales=2)
    ok[...] = 4
    assert (ok.at_scale(1).read() == 4).all()

    # an instance made elsewhere, its geometry from DVID's extents: the write is refused
    # before anything is sent; a write at safe blocks goes through
    name, base = _labelmap(repo, levels=1)
    assert http.post(f"{base}/extents", json={"MinPoint": [-2 * BS, 0, 0],
                                              "MaxPoint": [BS - 1, BS - 1, BS - 1]}) \
        .status_code == 200
    vol = voxgate.open(repo.url(name), mode="r+")
    assert tuple(vol.offset) == (0, 0, -2 * BS)
    with pytest.raises(InvalidRequestError, match=r"block -1 along x.*Nothing was written"):
        vol.write(8, Box((0, 0, -2 * BS), (BS, BS, BS)))
    with pytest.raises(InvalidRequestError, match=r"block -1 along x"):
        vol.write(8, Box((1, 2, -3), (2, 3, -2)))
    assert not get(base, -2 * BS).any() and not get(base, -BS).any() and not get(base, 0).any()
    vol.write(8, Box((0, 0, -2 * BS), (BS, BS, -BS)))
    vol.write(9, Box((0, 0, 0), (BS, BS, BS)))
    assert (get(base, -2 * BS) == 8).all() and (get(base, 0) == 9).all()
    s1 = vol.at_scale(1).read()
    assert (s1[:h, :h, :h] == 8).all() and (s1[:h, :h, BS:BS + h] == 9).all()
