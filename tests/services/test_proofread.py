"""Proofreading (issue 13): merge, split (seeded and by connected pieces), relabel, history and
undo on every writable store — zarr, precomputed compressed_segmentation, N5, HDF5, bossdb://
through a relay, dvid:// (DVID's own merge / split) — and the bad inputs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import (
    AuthenticationError,
    CapabilityNotSupportedError,
    InvalidRequestError,
    ReadOnlyError,
)
from voxgate.remotes.dvid import DVIDRepo
from voxgate.services.proofread import split_kernel
from voxgate.testing.dvid import DVIDServerProcess, start_server

SHAPE = (24, 40, 40)
CHUNKS = (8, 16, 16)
DUMBBELL_A = (slice(14, 20), slice(28, 36), slice(2, 10))
DUMBBELL_B = (slice(14, 20), slice(28, 36), slice(14, 22))


def labels() -> np.ndarray:
    a = np.zeros(SHAPE, dtype=np.uint64)
    a[:, 38:40, :] = 5                      # a bystander everywhere along z and x
    a[1:7, 1:15, 1:15] = 10
    a[12:20, 12:26, 26:38] = 20             # far from 10: a merge touches only 20's blocks
    a[2:6, 20:30, 2:10] = 30                # 30: two pieces apart (320 and 640 voxels)
    a[14:22, 2:10, 20:30] = 30
    a[DUMBBELL_A] = 40                      # 40: two cubes joined by a thin bar
    a[DUMBBELL_B] = 40
    a[16:18, 31:33, 10:14] = 40
    return a


# -- stores ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dvid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DVIDServerProcess]:
    server = start_server(log=tmp_path_factory.mktemp("dvid") / "server.log")
    yield server
    server.stop()


def _file_store(url: str, **kw: Any) -> voxgate.Volume:
    # a DVID labelmap's blocks are multiples of 16 (labelmap.go NewData)
    chunks = (16, 16, 16) if url.startswith("dvid://") else CHUNKS
    v = voxgate.create(url, shape=SHAPE, chunks=chunks, dtype="uint64", voxel_size=(8, 8, 8),
                       kind="segmentation", **kw)
    v[:] = labels()
    return voxgate.open(url, mode="r+")


@pytest.fixture
def relay_seg(tmp_path: Path) -> Iterator[Callable[[str], voxgate.Volume]]:
    from tests.relay.conftest import RO, RW, free_port, one_channel_config, start_relay

    up = tmp_path / "up.zarr"
    _file_store(f"zarr://{up}")
    cfg = one_channel_config(tmp_path, f"zarr://{up}")
    relay = start_relay(cfg, free_port())
    tokens = {"rw": RW, "ro": RO}

    def open_(which: str = "rw") -> voxgate.Volume:
        return voxgate.open(f"bossdb://{relay.url}/lab/em/seg", mode="r+",
                            token=tokens[which])

    yield open_
    relay.stop()


def make_store(kind: str, tmp: Path, dvid: DVIDServerProcess | None = None,
               relay: Callable[[str], voxgate.Volume] | None = None) -> voxgate.Volume:
    if kind == "zarr":
        return _file_store(f"zarr://{tmp}/seg.zarr")
    if kind == "precomputed":
        return _file_store(f"precomputed://{tmp}/seg", encoding="compressed_segmentation")
    if kind == "n5":
        return _file_store(f"n5://{tmp}/seg.n5")
    if kind == "hdf5":
        return _file_store(f"hdf5://{tmp}/seg.h5/seg")
    if kind == "bossdb":
        assert relay is not None
        return relay("rw")
    assert kind == "dvid" and dvid is not None
    repo = DVIDRepo.create(dvid.url, alias=f"proofread-{tmp.name}")
    return _file_store(repo.url("seg"))


STORES = ["zarr", "precomputed", "n5", "hdf5", "bossdb", "dvid"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> voxgate.Volume:
    kind = request.param
    dv = request.getfixturevalue("dvid") if kind == "dvid" else None
    rl = request.getfixturevalue("relay_seg") if kind == "bossdb" else None
    return make_store(kind, tmp_path, dv, rl)


# -- the same edits on every store ----------------------------------------------------------------
def test_merge_split_undo_on_every_store(store: voxgate.Volume) -> None:
    orig = labels()
    before = store.read()
    assert np.array_equal(before, orig)
    server = voxgate.has_capability(store.remote, "server_proofread")

    m = voxgate.merge(store, [10, 20])
    a = store.read()
    assert (a[(orig == 10) | (orig == 20)] == 10).all()
    assert np.array_equal(a[(orig != 10) & (orig != 20)], orig[(orig != 10) & (orig != 20)])
    assert m.provenance is not None and m.provenance.path == ("server" if server else "local")
    if not server:  # only the write-grid blocks of 20's box were rewritten
        g = store.remote.write_grid(0)
        box = ((12, 20), (12, 26), (26, 38))
        want = int(np.prod([(b - 1) // c - a // c + 1 for (a, b), c in zip(box, g, strict=True)]))
        total = np.prod([-(-n // c) for n, c in zip(SHAPE, g, strict=True)])
        assert m.blocks == want and want <= total

    s = voxgate.split(store, 30)
    b = store.read()
    big = np.zeros(SHAPE, dtype=bool)
    big[14:22, 2:10, 20:30] = True
    small = (orig == 30) & ~big
    assert (b[big] == 30).all()                                 # the larger piece keeps 30
    assert len(s.new_ids) == 1 and (b[small] == s.new_ids[0]).all()
    assert s.new_ids[0] not in np.unique(orig)
    assert np.array_equal(b[orig != 30], a[orig != 30])

    w = voxgate.split(store, 40, seeds={141: [(17, 32, 4)], 142: [(17, 32, 19)]})
    c = store.read()
    assert w.new_ids == (141, 142)
    assert (c[DUMBBELL_A] == 141).all() and (c[DUMBBELL_B] == 142).all()
    assert set(np.unique(c[orig == 40]).tolist()) == {141, 142}
    assert np.array_equal(c[orig != 40], b[orig != 40])

    h = voxgate.history(store)
    assert list(h["operation"]) == ["merge", "split", "split"]
    assert list(h["status"]) == ["done"] * 3
    assert {"time", "user", "params", "ids", "boxes"} <= set(h.columns)
    assert h["ids"][0] == [10, 20]

    voxgate.undo(store)
    assert np.array_equal(store.read(), b)                      # the seeded split undone only
    voxgate.undo(store, n=2)
    after = store.read()
    assert after.tobytes() == orig.tobytes()
    h = voxgate.history(store)
    assert list(h["status"][:3]) == ["undone"] * 3
    assert list(h["undoes"][3:]) == [3, 2, 1]
    with pytest.raises(InvalidRequestError, match="edit"):
        voxgate.undo(store)


def test_relabel_and_big_ids_stay_exact(tmp_path: Path) -> None:
    url = f"zarr://{tmp_path}/big.zarr"
    vol = _file_store(url)
    big = 2**53 + 1                                             # not a float: one above 2^53
    r = voxgate.relabel(vol, {10: big, 30: 2**63 + 7})
    got = vol.read()
    orig = labels()
    assert (got[orig == 10] == np.uint64(big)).all()
    assert (got[orig == 30] == np.uint64(2**63 + 7)).all()
    assert r.mapping == {10: big, 30: 2**63 + 7}
    voxgate.merge(vol, [big, 20], into=big)
    assert (vol.read()[orig == 20] == np.uint64(big)).all()
    line = (tmp_path / "big.zarr" / ".voxgate" / "history.jsonl").read_text().splitlines()[0]
    assert str(2**63 + 7) in line and json.loads(line)["params"]["mapping"]["30"] == 2**63 + 7
    voxgate.undo(vol, n=2)
    assert vol.read().tobytes() == orig.tobytes()


@pytest.mark.parametrize("how", ["volume", "copy", "view of another spelling"])
def test_new_ids_after_a_plain_write_never_collide(tmp_path: Path, how: str) -> None:
    """The ids the edits keep track of (largest id, boxes) are forgotten when this process
    writes the volume another way (a Volume write, a copy into it): a split after painting a
    new segment 50 gave out 50 again (two segments under one id), and a merge then left part
    of the painted one behind."""
    url = f"zarr://{tmp_path}/w.zarr"
    vol = _file_store(url)
    voxgate.merge(vol, [10, 20], into=10)  # the statistics are computed (largest id: 40)
    painted = np.zeros(SHAPE, dtype=np.uint64)
    painted[20:24, 28:36, 2:8] = 50  # a new segment (on background), above the largest id
    painted[20:24, 28:36, 30:36] = 50
    want = vol.read()
    want[painted == 50] = 50
    if how == "copy":
        src = voxgate.create(f"zarr://{tmp_path}/src.zarr", shape=SHAPE, chunks=CHUNKS,
                             dtype="uint64", voxel_size=(8, 8, 8), kind="segmentation")
        src[:] = want
        voxgate.copy(src, url, progress=False)
    else:
        target = vol if how == "volume" else voxgate.open(str(tmp_path / "w.zarr"), mode="r+")
        target[20:24, 28:36, :] = want[20:24, 28:36, :]
    r = voxgate.split(vol, 30)  # two pieces apart: one new id
    assert r.new_ids and 50 not in r.new_ids and min(r.new_ids) > 50, r.new_ids
    got = vol.read()
    assert int((got == 50).sum()) == int((painted == 50).sum())
    voxgate.merge(vol, [50, 5], into=5)  # 50's box is known: all of it
    assert not (vol.read() == 50).any()


def test_edits_touch_only_the_blocks_of_their_ids(tmp_path: Path) -> None:
    vol = _file_store(f"zarr://{tmp_path}/t.zarr")
    root = tmp_path / "t.zarr"
    chunk_files = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
                   and ".voxgate" not in p.parts and not p.name.startswith(".z")}
    r = voxgate.merge(vol, [20, 10], into=20)  # 10's blocks: z 0:8, y 0:16, x 0:16 -> one
    assert r.blocks == 1
    changed = [p for p, t in chunk_files.items() if p.exists() and p.stat().st_mtime_ns != t]
    assert len(changed) == 1
    saved = list((root / ".voxgate" / "undo" / "1").glob("*.npz"))
    assert [p.name for p in saved] == ["0_0_0.npz"]
    with np.load(saved[0], allow_pickle=False) as z:
        assert np.array_equal(z["data"], labels()[0:8, 0:16, 0:16])


def test_undo_after_a_partial_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vol = _file_store(f"zarr://{tmp_path}/p.zarr")
    real = vol.remote.write
    calls = {"n": 0}

    def flaky(box, array, scale=0):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real(box, array, scale)

    monkeypatch.setattr(vol.remote, "write", flaky)
    from voxgate.errors import PartialWriteError

    with pytest.raises(PartialWriteError) as err:
        voxgate.merge(vol, [10, 40], into=20, workers=1)
    assert len(err.value.written) == 2 and len(err.value.failed) == 1
    assert "undo" in str(err.value)
    assert voxgate.history(vol)["status"][0] == "partial"
    monkeypatch.setattr(vol.remote, "write", real)
    voxgate.undo(vol)
    assert vol.read().tobytes() == labels().tobytes()


def test_seeded_split_on_an_image(tmp_path: Path) -> None:
    vol = _file_store(f"zarr://{tmp_path}/s.zarr")
    img = np.zeros(SHAPE, dtype=np.uint8)
    img[:, :, 12] = 255  # a bright wall at x = 12 inside the dumbbell's bar: the cut goes there
    im = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=SHAPE, chunks=CHUNKS,
                        dtype="uint8", voxel_size=(8, 8, 8))
    im[:] = img
    r = voxgate.split(vol, 40, seeds=[[(17, 32, 4)], [(17, 32, 19)]], image=im)
    got = vol.read()
    new = r.new_ids[0]
    orig = labels()
    assert (got[:, :, :12][orig[:, :, :12] == 40] == 40).all()   # first group keeps the id
    assert (got[:, :, 13:][orig[:, :, 13:] == 40] == new).all()
    assert new == int(orig.max()) + 1                            # max + 1 without reservation


def test_split_inside_a_box(tmp_path: Path) -> None:
    vol = _file_store(f"zarr://{tmp_path}/x.zarr")
    with pytest.raises(InvalidRequestError, match="one connected piece"):
        voxgate.split(vol, 30, box=voxgate.Box((10, 0, 16), (24, 12, 32)))  # one piece inside
    r = voxgate.split(vol, 40, box=voxgate.Box((14, 28, 0), (20, 36, 12)),
                      seeds=[[(17, 32, 4)], [(16, 31, 11)]])
    got, orig = vol.read(), labels()
    assert (got[:, :, 12:][orig[:, :, 12:] == 40] == 40).all()     # outside the box: kept
    new = r.new_ids[0]
    assert got[16, 31, 11] == new and (got[DUMBBELL_A] == 40).all()
    x = np.nonzero(got == new)[2]
    assert x.max() < 12 and x.min() >= 10                        # only the bar inside the box
    assert np.array_equal(got[orig != 40], orig[orig != 40])


def test_split_kernel() -> None:
    a = labels()
    pieces, k = split_kernel(a, 30, None)
    assert k == 2 and set(np.unique(pieces[a == 30]).tolist()) == {1, 2}
    assert (pieces[14:22, 2:10, 20:30] == 1).all()              # largest first
    assert (pieces[a != 30] == 0).all()
    ws, k = split_kernel(a, 40, [[(17, 32, 4)], [(17, 32, 19)]])
    assert k == 2 and (ws[DUMBBELL_A] == 1).all() and (ws[DUMBBELL_B] == 2).all()


# -- DVID: parity, versioning --------------------------------------------------------------------
def test_dvid_server_and_local_paths_agree(dvid: DVIDServerProcess, tmp_path: Path) -> None:
    vols = {}
    for path in ("server", "local"):
        repo = DVIDRepo.create(dvid.url, alias=f"parity-{path}")
        vols[path] = _file_store(repo.url("seg"))
    for path, vol in vols.items():
        r = voxgate.merge(vol, [10, 20], prefer=path)  # type: ignore[arg-type]
        assert r.provenance is not None and r.provenance.path == path
        voxgate.split(vol, 40, seeds={141: [(17, 32, 4)], 142: [(17, 32, 19)]},
                      prefer=path)
        voxgate.split(vol, 30, prefer=path)
    s, loc = vols["server"].read(), vols["local"].read()
    orig = labels()
    assert np.array_equal(s[orig != 30], loc[orig != 30])
    # the unseeded split's new id is DVID's next label on both paths: the same pieces
    for a in (s, loc):
        assert len(np.unique(a[orig == 30])) == 2 and (a[14:22, 2:10, 20:30] == 30).all()
    assert np.array_equal(s == 30, loc == 30)
    log = vols["server"].remote.repo.log(vols["server"].remote.uuid)  # type: ignore[attr-defined]
    assert sum("voxgate-proofread" in line for line in log) == 3
    for vol in vols.values():
        voxgate.undo(vol, n=3)
        assert vol.read().tobytes() == orig.tobytes()


def test_dvid_server_path_equals_zarr(dvid: DVIDServerProcess, tmp_path: Path) -> None:
    """The same edits through DVID's endpoints and on a zarr copy: identical voxels (the split
    piece's new id is DVID's next label there and max + 1 here: both 41)."""
    repo = DVIDRepo.create(dvid.url, alias="parity-zarr")
    vols = {"dvid": _file_store(repo.url("seg")), "zarr": _file_store(f"zarr://{tmp_path}/z")}
    for name, vol in vols.items():
        m = voxgate.merge(vol, [10, 20, 5], into=20)
        s = voxgate.split(vol, 30)
        w = voxgate.split(vol, 40, seeds={141: [(17, 32, 4)], 40: [(17, 32, 19)]})
        assert s.new_ids == (41,) and w.new_ids == (141,)
        assert {r.provenance.path for r in (m, s, w)  # type: ignore[union-attr]
                } == {"server" if name == "dvid" else "local"}
    assert np.array_equal(vols["dvid"].read(), vols["zarr"].read())


def test_dvid_committed_node_is_refused(dvid: DVIDServerProcess) -> None:
    repo = DVIDRepo.create(dvid.url, alias="locked")
    vol = _file_store(repo.url("seg"))
    repo.commit(repo.root, note="published")
    with pytest.raises(ReadOnlyError, match="branch"):
        voxgate.merge(repo.url("seg"), [10, 20])
    ro = voxgate.open(repo.url("seg"))
    with pytest.raises(ReadOnlyError, match=r"committed.*branch"):
        voxgate.merge(ro, [10, 20])
    child = repo.branch(repo.root, "proofread")
    edit = voxgate.open(repo.url("seg", child), mode="r+")
    voxgate.merge(edit, [10, 20])
    assert (edit.read()[labels() == 20] == 10).all()
    assert np.array_equal(vol.read(), labels())                 # the committed node as it was


# -- bad input -----------------------------------------------------------------------------------
def test_bad_input(tmp_path: Path) -> None:
    vol = _file_store(f"zarr://{tmp_path}/b.zarr")
    with pytest.raises(InvalidRequestError, match=r"\[99\] have no voxels"):
        voxgate.merge(vol, [10, 99])
    with pytest.raises(InvalidRequestError, match="float"):
        voxgate.merge(vol, [10, float(2**53 + 2)])
    with pytest.raises(InvalidRequestError, match="background"):
        voxgate.merge(vol, [10, 0])
    with pytest.raises(InvalidRequestError, match="at least two"):
        voxgate.merge(vol, [10])
    with pytest.raises(InvalidRequestError, match="outside segment 40"):
        voxgate.split(vol, 40, seeds={41: [(17, 32, 4)], 42: [(0, 0, 0)]})
    with pytest.raises(InvalidRequestError, match="outside segment 40"):
        voxgate.split(vol, 40, seeds={41: [(17, 32, 4)], 42: [(23, 39, 39)]})
    with pytest.raises(InvalidRequestError, match="already label"):
        voxgate.split(vol, 40, seeds={41: [(17, 32, 4)], 20: [(17, 32, 19)]})
    with pytest.raises(InvalidRequestError, match="one connected piece"):
        voxgate.split(vol, 10)
    with pytest.raises(CapabilityNotSupportedError, match="meshes directory"):
        voxgate.merge(vol, [10, 20], remesh=True)  # zarr has no mesh directory: refused first
    assert voxgate.history(vol).empty
    ro = voxgate.open(f"zarr://{tmp_path}/b.zarr")
    with pytest.raises(ReadOnlyError, match="mode='r\\+'"):
        voxgate.merge(ro, [10, 20])
    img = voxgate.create(f"zarr://{tmp_path}/i.zarr", shape=SHAPE, chunks=CHUNKS,
                         dtype="uint8", voxel_size=(8, 8, 8))
    with pytest.raises(InvalidRequestError, match="image"):
        voxgate.merge(img, [1, 2])
    with pytest.raises(InvalidRequestError, match="numpy"):
        voxgate.merge(labels(), [10, 20])
    assert vol.read().tobytes() == labels().tobytes()


def test_read_only_token_through_the_relay(relay_seg: Callable[[str], voxgate.Volume]) -> None:
    ro = relay_seg("ro")
    with pytest.raises(AuthenticationError):
        voxgate.merge(ro, [10, 20])
    rw = relay_seg("rw")  # boxes come from bossDB's boundingbox (no label_stats pass)
    with pytest.raises(InvalidRequestError, match=r"\[99\] have no voxels"):
        voxgate.merge(rw, [10, 99])
    with pytest.raises(InvalidRequestError, match="already label"):
        voxgate.split(rw, 40, seeds={141: [(17, 32, 4)], 20: [(17, 32, 19)]})
    from voxgate.services import proofread
    from voxgate.services.proofread.core import _stats_key

    assert _stats_key(rw) not in proofread._STATS
    assert np.array_equal(relay_seg("rw").read(), labels())


def test_cli_merge_split_history_undo(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from voxgate.cli import main

    url = f"zarr://{tmp_path}/c.zarr"
    _file_store(url)
    run = CliRunner().invoke
    r = run(main, ["merge", url, "10", "20", "--into", "20", "--user", "ana"])
    assert r.exit_code == 0, r.output
    assert "edit 1: merged" in r.output
    r = run(main, ["split", url, "40", "--seed", "141:17,32,4", "--seed", "142:17,32,19",
                   "--seed", "142:17,33,20"])
    assert r.exit_code == 0, r.output
    assert "new ids 141, 142" in r.output
    got = voxgate.open(url).read()
    assert (got[labels() == 10] == 20).all() and (got[DUMBBELL_B] == 142).all()
    r = run(main, ["history", url])
    assert r.exit_code == 0 and "ana" in r.output and "split" in r.output
    r = run(main, ["split", url, "40", "--seed", "nonsense"])
    assert r.exit_code != 0 and "ID:z,y,x" in r.output
    r = run(main, ["undo", url, "-n", "2"])
    assert r.exit_code == 0, r.output
    assert voxgate.open(url).read().tobytes() == labels().tobytes()
    r = run(main, ["undo", url])
    assert r.exit_code != 0 and "0 edit(s) left" in r.output


@pytest.mark.parametrize("fmt", ["legacy", "multires"])
def test_remesh_follows_the_edits(tmp_path: Path, fmt: str) -> None:
    from voxgate.formats.mesh import read_meshes

    url = f"precomputed://{tmp_path}/m"
    vol = _file_store(url, encoding="compressed_segmentation")
    voxgate.write_meshes(url, voxgate.mesh(vol, ids=[10, 20, 40]), format=fmt)
    voxgate.merge(vol, [10, 20], remesh=True)
    r = voxgate.split(vol, 40, seeds={141: [(17, 32, 4)], 142: [(17, 32, 19)]}, remesh=True)
    got = read_meshes(url, [10, 141, 142])
    assert set(got) == {10, 141, 142}
    hi = got[10].vertices.max(axis=0)          # x, y, z nm: the merged mesh reaches 20's corner
    assert hi[0] >= 37 * 8 and hi[2] >= 19 * 8
    assert got[141].vertices[:, 0].max() < got[142].vertices[:, 0].min() + 8 * 8
    fresh = voxgate.mesh(vol, ids=list(r.new_ids))
    for i in r.new_ids:
        assert abs(len(got[i].vertices) - len(fresh[i].vertices)) <= len(fresh[i].vertices) // 4


def test_remesh_on_dvid(dvid: DVIDServerProcess) -> None:
    repo = DVIDRepo.create(dvid.url, alias="remesh")
    vol = _file_store(repo.url("seg"))
    voxgate.merge(vol, [10, 20], remesh="both")
    assert vol.remote.has_mesh(10)  # type: ignore[attr-defined]
    assert vol.remote.has_skeleton(10)  # type: ignore[attr-defined]
    verts, _ = vol.remote.get_mesh_arrays(10)  # type: ignore[attr-defined]
    assert verts[:, 0].max() >= 37 * 8


def test_dvid_history_lives_in_the_node_log(dvid: DVIDServerProcess, tmp_path: Path) -> None:
    repo = DVIDRepo.create(dvid.url, alias="node-log")
    vol = _file_store(repo.url("seg"))
    voxgate.merge(vol, [10, 20], user="ana", history_dir=tmp_path / "laptop")
    voxgate.split(vol, 30, user="ana", history_dir=tmp_path / "laptop")
    # another machine (no local history): the node's log holds the edits, and undo works
    h = voxgate.history(vol, history_dir=tmp_path / "elsewhere")
    assert list(h["operation"]) == ["merge", "split"] and list(h["user"]) == ["ana", "ana"]
    assert list(h["status"]) == ["done", "done"]
    voxgate.undo(vol, n=2, history_dir=tmp_path / "elsewhere")
    assert vol.read().tobytes() == labels().tobytes()
    h = voxgate.history(vol, history_dir=tmp_path / "elsewhere")
    assert list(h["status"][:2]) == ["undone", "undone"]


def test_remesh_skeletons_too(tmp_path: Path) -> None:
    from voxgate.formats.skeleton import read_skeletons, write_skeletons

    url = f"precomputed://{tmp_path}/k"
    vol = _file_store(url, encoding="compressed_segmentation")
    voxgate.write_meshes(url, voxgate.mesh(vol, ids=[10, 20]), format="legacy")
    with pytest.raises(CapabilityNotSupportedError, match="skeletons directory"):
        voxgate.merge(vol, [10, 20], remesh="both")
    write_skeletons(url, voxgate.skeletonize(vol, ids=[10, 20], dust_threshold=0))
    with pytest.raises(InvalidRequestError, match="remesh must be"):
        voxgate.merge(vol, [10, 20], remesh="yes")
    voxgate.merge(vol, [10, 20], remesh="both")
    sk = read_skeletons(url, [10])[10]
    assert sk.vertices[:, 0].max() >= 26 * 8  # x nm: the merged skeleton reaches 20's voxels


def test_history_sits_beside_the_data(tmp_path: Path) -> None:
    h5 = _file_store(f"hdf5://{tmp_path}/f.h5#/a/seg")
    voxgate.merge(h5, [10, 20])
    assert (tmp_path / "f.h5.voxgate" / "a" / "seg" / "history.jsonl").is_file()
    assert list((tmp_path / "f.h5.voxgate" / "a" / "seg" / "undo" / "1").glob("*.npz"))
    n5 = _file_store(f"n5://{tmp_path}/s.n5")
    voxgate.merge(n5, [10, 20], user="ana")
    rec = json.loads((tmp_path / "s.n5" / ".voxgate" / "history.jsonl").read_text()
                     .splitlines()[0])
    assert rec["user"] == "ana" and rec["operation"] == "merge" and rec["ids"] == [10, 20]
    assert rec["boxes"] == [[12, 12, 26, 20, 26, 38]]
    mem = _file_store("mem://proofread/x")  # no folder of its own: under the state folder
    voxgate.merge(mem, [10, 20])
    assert len(voxgate.history("mem://proofread/x")) == 1


def test_blockwise_edits_equal_whole_array_edits(tmp_path: Path) -> None:
    """Odd chunks (5, 7, 9): blocks cut every segment; the result is the numpy edit of the
    whole array."""
    orig = labels()
    vol = voxgate.create(f"zarr://{tmp_path}/odd.zarr", shape=SHAPE, chunks=(5, 7, 9),
                         dtype="uint64", voxel_size=(8, 8, 8), kind="segmentation")
    vol[:] = orig
    vol = voxgate.open(vol.url, mode="r+")
    voxgate.relabel(vol, {10: 77, 5: 20}, workers=2)
    want = orig.copy()
    want[orig == 10] = 77
    want[orig == 5] = 20
    assert np.array_equal(vol.read(), want)
    s = voxgate.split(vol, 40, seeds={141: [(17, 32, 4)], 142: [(17, 32, 19)]}, workers=2)
    pieces, _ = split_kernel(orig, 40, [[(17, 32, 4)], [(17, 32, 19)]])
    want[pieces == 1] = 141
    want[pieces == 2] = 142
    assert s.new_ids == (141, 142) and np.array_equal(vol.read(), want)
    voxgate.undo(vol, n=2)
    assert vol.read().tobytes() == orig.tobytes()
