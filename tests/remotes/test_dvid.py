"""dvid:// against the DVID-dialect test server (a subprocess on 127.0.0.1), with faults injected,
cross-checked with the independent client dvidtools, and against a real DVID when
VOXGATE_DVID_URL is set."""

from __future__ import annotations

import gzip
import json
import os
import re
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import lz4.block
import numpy as np
import pytest
from hypothesis import settings

import voxgate
from voxgate.errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    PartialWriteError,
    ReadOnlyError,
    RemoteExistsError,
    RemoteNotFoundError,
    RemoteUnavailableError,
)
from voxgate.formats import mesh as mesh_mod
from voxgate.formats import skeleton as skel_mod
from voxgate.formats.dvid_block import (
    decode_label_block,
    encode_label_block,
    pack_block_records,
    unpack_block_records,
)
from voxgate.geometry import Box
from voxgate.remotes.base import Capability, has_capability
from voxgate.remotes.dvid import (
    DVIDRepo,
    LabelNotFoundError,
    decode_ngmesh,
    parse_location,
)
from voxgate.testing import RemoteTests, remote_state_machine
from voxgate.testing.dvid import DVIDServerProcess, start_server

from .flaky_proxy import FlakyProxy, Rule, flaky_proxy


@pytest.fixture(scope="module")
def dvid_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DVIDServerProcess]:
    d = tmp_path_factory.mktemp("dvid")
    server = start_server(log=d / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def repo(dvid_server: DVIDServerProcess) -> DVIDRepo:
    return DVIDRepo.create(dvid_server.url, alias="tests", description="voxgate tests")


def _name(tmp_path: Path, name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{tmp_path.name}_{name}")


class TestDVIDRemote(RemoteTests):
    dtypes = ("uint8", "uint16", "uint32", "uint64", "float32")
    has_chunk_files = False  # blocks live in the server; corrupt answers are tested below

    @pytest.fixture(autouse=True)
    def _server(self, repo: DVIDRepo) -> None:
        self.repo = repo

    def url(self, tmp_path: Path, name: str) -> str:
        return self.repo.url(_name(tmp_path, name))

    def test_metadata(self, tmp_path: Path) -> None:
        # the suite's, with a labelmap's blocks: DVID takes only multiples of 16 there
        # (labelmap.go NewData), not the suite's (8, 16, 16), which create refuses
        with pytest.raises(InvalidRequestError, match="multiples of 16"):
            self.make(tmp_path, "refused", kind="segmentation", dtype="uint64")
        vol = self.make(tmp_path, kind="segmentation", dtype="uint64", chunks=(16, 16, 32))
        again = voxgate.open(self.url(tmp_path, "vol"))
        assert again.shape == (20, 40, 50) and again.dtype == np.uint64
        assert tuple(again.chunks) == (16, 16, 32)
        assert again.voxel_size.zyx() == (40.0, 8.0, 8.0) and again.voxel_size.unit == "nm"
        assert again.kind == "segmentation" and tuple(again.offset) == (0, 0, 0)
        assert len(again.scales) == 1 and vol.url == again.url


_SM_REPO: list[DVIDRepo] = []


def _sm_url(name: str) -> str:
    return _SM_REPO[0].url(name.replace("-", "_"))


@pytest.fixture(autouse=True)
def _state_machine_repo(repo: DVIDRepo) -> Iterator[None]:
    _SM_REPO.insert(0, repo)
    yield
    _SM_REPO.remove(repo)


TestDVIDStateMachine = remote_state_machine(_sm_url, dtype="uint16").TestCase
TestDVIDStateMachine.settings = settings(max_examples=5, stateful_step_count=8, deadline=None)

TestDVIDLabelStateMachine = remote_state_machine(
    lambda n: _sm_url("lbl_" + n), dtype="uint64", kind="segmentation",
    block_size=(16, 16, 16)).TestCase  # DVID labelmap blocks are multiples of 16
TestDVIDLabelStateMachine.settings = settings(max_examples=4, stateful_step_count=6,
                                              deadline=None)


# -- URLs ---------------------------------------------------------------------------------------
def test_url_forms() -> None:
    assert parse_location("127.0.0.1:8000/3f8a/seg") == ("http://127.0.0.1:8000", "3f8a", "seg")
    assert parse_location("https://dvid.org/3f8a:proof/gray") == (
        "https://dvid.org", "3f8a:proof", "gray")
    assert parse_location("http://h:1/prefix/api/abc:master~2/x") == (
        "http://h:1/prefix/api", "abc:master~2", "x")
    for bad in ("127.0.0.1:8000/onlyone", "h/not-a-uuid!/x", "h/abc/bad name"):
        with pytest.raises(InvalidRequestError):
            parse_location(bad)
    with pytest.raises(InvalidRequestError, match="accepts"):
        voxgate.open("dvid://127.0.0.1:9/abc/seg", colour="red")


# -- the issue's example, versioning --------------------------------------------------------------
def test_issue_example_versioned_proofreading(dvid_server: DVIDServerProcess) -> None:
    repo = DVIDRepo.create(dvid_server.url, alias="fly", description="example")
    repo.create_instance("grayscale", "uint8blk")
    repo.create_instance("segmentation", "labelmap")
    server = dvid_server.url.removeprefix("http://")
    vol = voxgate.open(f"dvid://{server}/{repo.root[:6]}/segmentation", mode="r+")
    labels = np.zeros((64, 128, 128), np.uint64)
    labels[:, :64] = 2**60 + 1
    labels[:, 64:] = 7
    vol[0:64, 0:128, 0:128] = labels  # unaligned: 64^3 blocks, 128 is fine, 0:64 z fine
    vol[3:5, 100:101, 0:3] = 9  # unaligned inside a block: read-modify-write
    expected = labels.copy()
    expected[3:5, 100:101, 0:3] = 9
    np.testing.assert_array_equal(vol[0:64, 0:128, 0:128].read(), expected)
    gray = voxgate.open(f"dvid://{server}/{repo.root}/grayscale", mode="r+")
    img = np.random.default_rng(1).integers(0, 255, (40, 50, 70), dtype=np.uint8)
    gray[5:45, 7:57, 9:79] = img
    np.testing.assert_array_equal(gray[5:45, 7:57, 9:79].read(), img)

    repo.commit(repo.root, note="imported")
    with pytest.raises(ReadOnlyError, match="committed"):
        voxgate.open(f"dvid://{server}/{repo.root}/segmentation", mode="r+")
    with pytest.raises(ReadOnlyError, match="locked node"):
        vol[0:1, 0:1, 0:1] = 3  # opened before the commit: the server refuses
    child = repo.branch(repo.root, "proofread", note="proofreading")
    repo.add_log(child, "fixing body 7")
    on_child = voxgate.open(f"dvid://{server}/{child}/segmentation", mode="r+")
    np.testing.assert_array_equal(on_child[0:64, 0:128, 0:128].read(), expected)
    on_child[10:20, 70:80, 70:80] = 11
    changed = expected.copy()
    changed[10:20, 70:80, 70:80] = 11
    by_branch = voxgate.open(f"dvid://{server}/{repo.root[:5]}:proofread/segmentation")
    np.testing.assert_array_equal(by_branch[0:64, 0:128, 0:128].read(), changed)
    assert by_branch.remote.uuid == child
    parent = voxgate.open(f"dvid://{server}/{repo.root}/segmentation")
    np.testing.assert_array_equal(parent[0:64, 0:128, 0:128].read(), expected)
    # grayscale was not touched in the child: it reads the parent's
    np.testing.assert_array_equal(
        voxgate.open(f"dvid://{server}/{child}/grayscale")[5:45, 7:57, 9:79].read(), img)

    log = repo.log(child)
    assert len(log) == 1 and log[0].endswith("  fixing body 7")
    assert re.match(r"\d{4}-\d\d-\d\dT", log[0])
    dag = repo.info()["DAG"]
    assert dag["Root"] == repo.root and set(dag["Nodes"]) == {repo.root, child}
    versions = repo.versions()
    assert versions[child].parents == (repo.root,) and versions[repo.root].children == (child,)
    assert versions[repo.root].locked and not versions[child].locked
    assert versions[child].branch == "proofread" and versions[repo.root].note == "imported"
    assert repo.branch_versions("proofread") == [child, repo.root]
    assert repo.resolve(f"{repo.root[:4]}:proofread") == child
    assert has_capability(on_child.remote, Capability.VERSIONING)


def test_versioning_rules(repo: DVIDRepo, dvid_server: DVIDServerProcess) -> None:
    r = DVIDRepo.create(dvid_server.url, alias="rules")
    r.create_instance("kv", "keyvalue")
    kv = r.keyvalue("kv")
    kv["a"] = b"1"
    kv["b"] = b"2"
    with pytest.raises(InvalidRequestError, match="unlocked node"):
        r.branch(r.root, "x")
    with pytest.raises(InvalidRequestError, match="master"):
        r.commit(r.root) and r.branch(r.root, "master")
    assert r.is_locked(r.root)
    with pytest.raises(ReadOnlyError):
        r.commit(r.root)  # a committed node refuses every POST
    with pytest.raises(ReadOnlyError):
        kv["c"] = b"3"
    with pytest.raises(ReadOnlyError, match="locked node"):
        r.create_instance("late", "keyvalue")
    child = r.new_version(r.root, note="next")
    with pytest.raises(InvalidRequestError, match="branch already exists"):
        r.new_version(r.root)
    b1 = r.branch(r.root, "b1")
    with pytest.raises(InvalidRequestError, match="branch already exists"):
        r.branch(r.root, "b1")
    kvc = r.keyvalue("kv", child)
    assert kvc["a"] == b"1"  # read through to the parent
    del kvc["a"]  # a tombstone in the child only
    kvc["b"] = b"22"
    assert "a" not in kvc and sorted(kvc) == ["b"] and kvc["b"] == b"22"
    assert kv["a"] == b"1" and kv["b"] == b"2"
    assert r.keyvalue("kv", b1)["b"] == b"2"  # the sibling branch sees only the root
    assert r.versions()[child].branch == "" and r.branch_versions("master") == [child, r.root]
    fixed = "ab" * 16
    with pytest.raises(InvalidRequestError, match="already exists"):
        DVIDRepo.create(dvid_server.url, root=r.root)
    r2 = DVIDRepo.create(dvid_server.url, root=fixed)
    assert r2.root == fixed


def test_unversioned_instance_ignores_versions(dvid_server: DVIDServerProcess) -> None:
    r = DVIDRepo.create(dvid_server.url)
    r.create_instance("notes", "keyvalue", versioned=False)
    r.commit(r.root)
    child = r.new_version(r.root)
    r.keyvalue("notes", child)["k"] = b"v"
    assert r.keyvalue("notes", r.root)["k"] == b"v"  # written to the root, lock skipped


# -- bad input and faults -------------------------------------------------------------------------
def test_unknown_uuid_prefix_instance(dvid_server: DVIDServerProcess, repo: DVIDRepo,
                                      tmp_path: Path) -> None:
    server = dvid_server.url
    with pytest.raises(RemoteNotFoundError, match="could not find UUID"):
        voxgate.open(f"dvid://{server}/0123456789abcdef/seg")
    DVIDRepo.create(server, root="cafe" + "0" * 28)
    DVIDRepo.create(server, root="cafe" + "1" * 28)
    with pytest.raises(InvalidRequestError, match="more than one UUID matches cafe"):
        voxgate.open(f"dvid://{server}/cafe/seg")
    with pytest.raises(RemoteNotFoundError, match="no data instance 'nope'"):
        voxgate.open(repo.url("nope"))
    with pytest.raises(RemoteNotFoundError, match="branch"):
        voxgate.open(f"dvid://{server}/{repo.root}:nobranch/seg")
    repo.create_instance(_name(tmp_path, "kv"), "keyvalue")
    with pytest.raises(CapabilityNotSupportedError, match="keyvalue"):
        voxgate.open(repo.url(_name(tmp_path, "kv")))


def test_block_endpoints_unaligned_and_bad_bodies(dvid_server: DVIDServerProcess,
                                                   repo: DVIDRepo, tmp_path: Path) -> None:
    name = _name(tmp_path, "seg")
    repo.create_instance(name, "labelmap")
    img = _name(tmp_path, "img")
    repo.create_instance(img, "uint8blk")
    c = httpx.Client(base_url=dvid_server.url)
    base = f"/api/node/{repo.root}/{name}"
    r = c.post(f"{base}/raw/0_1_2/64_64_64/0_0_1", content=bytes(8 * 64**3))
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text.startswith(f'cannot store labels for data "{name}" in non-block aligned '
                             "geometry (0,0,1) -> (63,63,64)")
    assert r.text.rstrip().endswith(f"({base}/raw/0_1_2/64_64_64/0_0_1).")
    r = c.post(f"/api/node/{repo.root}/{img}/raw/0_1_2/10_32_32/0_0_0", content=bytes(10240))
    assert r.status_code == 400 and "non-block aligned" in r.text
    r = c.get(f"{base}/blocks/64_64_10/0_0_0")
    assert r.status_code == 400 and "non-block aligned" in r.text
    r = c.post(f"{base}/raw/0_1_2/64_64_64/0_0_0", content=bytes(100))
    assert r.status_code == 400 and f"expected {8 * 64**3} bytes" in r.text
    r = c.post(f"{base}/raw/0_1_2/64_64_64/0_0_0?compression=lz4", content=b"\xff" * 100)
    assert r.status_code == 400 and "lz4" in r.text
    r = c.post(f"{base}/blocks", content=pack_block_records([((0, 0, 0), b"not gzip")]))
    assert r.status_code == 400 and "gzip" in r.text
    r = c.get(f"{base}/nosuchthing")  # labelmap.go ServeHTTP default: web.go BadAPIRequest
    assert r.status_code == 400
    assert r.text.startswith(f'Bad API call ({base}/nosuchthing) for data "{name}".  See API '
                             "help at http://") and "/api/help/labelmap" in r.text
    for path in (f"{base}/size/5", f"{base}/sparsevol/5", f"{base}/sparsevol-size/5",
                 f"{base}/supervoxels/5"):
        assert c.get(path).status_code == 404, path
    assert c.head(f"{base}/sparsevol/5").status_code == 204
    assert c.get(f"{base}/size/0").status_code == 400
    assert c.get(f"{base}/raw/0_1_2/4_4_4/0_0_0?scale=3").status_code == 400
    # through the Remote: a label that does not exist
    labels = repo.labels(name)
    with pytest.raises(LabelNotFoundError, match="label 5"):
        labels.size(5)
    with pytest.raises(LabelNotFoundError):
        labels.sparsevol(5)
    with pytest.raises(LabelNotFoundError):
        labels.supervoxels(5)
    with pytest.raises(InvalidRequestError):
        labels.size(0)
    c.close()


@pytest.fixture
def proxy(dvid_server: DVIDServerProcess) -> Iterator[FlakyProxy]:
    with flaky_proxy(dvid_server.url) as p:
        yield p


@pytest.fixture
def seg(repo: DVIDRepo, tmp_path: Path) -> tuple[str, np.ndarray]:
    url = repo.url(_name(tmp_path, "seg"))
    vol = voxgate.create(url, shape=(64, 128, 128), chunks=(64, 64, 64), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation")
    rng = np.random.default_rng(3)
    data = rng.integers(1, 6, (64, 128, 128)).astype(np.uint64) * np.uint64(2**55 + 3)
    vol[:] = data
    return url, data


def test_lz4_gzip_none_agree(seg: tuple[str, np.ndarray]) -> None:
    url, data = seg
    for comp in ("lz4", "gzip", "none"):
        np.testing.assert_array_equal(voxgate.open(url, compression=comp)[3:61, 5:120, 1:99]
                                      .read(), data[3:61, 5:120, 1:99], err_msg=comp)
    w = voxgate.open(url, mode="r+", compression="gzip")
    w[0:64, 0:64, 0:64] = 2
    assert (voxgate.open(url, compression="none")[0:64, 0:64, 0:64].read() == 2).all()
    with pytest.raises(InvalidRequestError, match="compression"):
        voxgate.open(url, compression="zstd")


def test_corrupt_and_truncated_answers(proxy: FlakyProxy, seg: tuple[str, np.ndarray]) -> None:
    url, data = seg
    via = url.replace(proxy.target, proxy.url)
    v = voxgate.open(via)
    proxy.add(Rule("/raw/0_1_2/", "garbage", times=1))
    with pytest.raises(CorruptChunkError, match="lz4"):
        v[0:8, 0:8, 0:8].read()
    proxy.add(Rule("/raw/0_1_2/", "truncate", times=1))  # closed mid-body: retried
    np.testing.assert_array_equal(v[0:8, 0:8, 0:8].read(), data[0:8, 0:8, 0:8])
    proxy.add(Rule("/raw/0_1_2/", "status", times=2, status=503))
    np.testing.assert_array_equal(v[0:8, 0:8, 0:8].read(), data[0:8, 0:8, 0:8])
    proxy.add(Rule("/raw/0_1_2/", "close"))
    with pytest.raises(RemoteUnavailableError):
        v[0:8, 0:8, 0:8].read()


def test_down_and_slow_server(proxy: FlakyProxy, seg: tuple[str, np.ndarray]) -> None:
    url, _ = seg
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailableError, match="attempts"):
        voxgate.open(url.replace(proxy.target, dead))
    assert time.monotonic() - t0 < 60  # bounded retries (a generous ceiling, not a window)
    v = voxgate.open(url.replace(proxy.target, proxy.url), timeout=0.5)
    proxy.add(Rule("/raw/0_1_2/", "slow", delay=3.0))
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailableError, match="timed out"):
        v[0:8, 0:8, 0:8].read()
    assert time.monotonic() - t0 < 60  # gave up (a generous ceiling, not a window)


def test_big_reads_split_on_block_grid(proxy: FlakyProxy, seg: tuple[str, np.ndarray]) -> None:
    url, data = seg
    v = voxgate.open(url.replace(proxy.target, proxy.url), concurrency=4)
    import voxgate.remotes.dvid.remote as mod  # where the Remote reads REQUEST_BYTES

    old = mod.REQUEST_BYTES
    mod.REQUEST_BYTES = 64**3 * 8
    try:
        np.testing.assert_array_equal(v[1:63, 3:127, 5:128].read(), data[1:63, 3:127, 5:128])
    finally:
        mod.REQUEST_BYTES = old
    gets = [r for r in proxy.requests if "/raw/0_1_2/" in r and r.startswith("GET")]
    assert len(gets) == 4
    for line in gets:
        size, off = line.split("/raw/0_1_2/")[1].split("?")[0].split("/")
        for s, o in zip(size.split("_"), off.split("_"), strict=True):
            assert int(o) + int(s) <= 128 and (int(o) % 64 == 0 or int(o) in (1, 3, 5))


# -- labels ---------------------------------------------------------------------------------------
def test_label_queries_match_numpy(seg: tuple[str, np.ndarray], repo: DVIDRepo) -> None:
    url, data = seg
    vol = voxgate.open(url)
    labels = vol.remote.labels
    assert labels is not None
    pts = [(0, 0, 0), (63, 127, 127), (10, 20, 30)]
    assert labels.label_at(pts[2]) == int(data[10, 20, 30])
    np.testing.assert_array_equal(labels.labels_at(pts), [data[p] for p in pts])
    ids, counts = np.unique(data, return_counts=True)
    np.testing.assert_array_equal(labels.sizes([*ids.tolist(), 12345]), [*counts, 0])
    big = int(ids[-1])
    assert big > 2**53 and labels.size(big) == counts[-1]
    coords = labels.sparsevol(big)
    np.testing.assert_array_equal(coords, np.argwhere(data == big))
    box = Box((5, 6, 7), (20, 40, 90))
    np.testing.assert_array_equal(labels.sparsevol(big, box=box),
                                  np.argwhere(data[5:20, 6:40, 7:90] == big) + np.array([5, 6, 7]))
    tight, mask = labels.sparsevol_mask(big, box=box)
    sub = data[5:20, 6:40, 7:90] == big
    nz = np.argwhere(sub)
    assert tight == Box(nz.min(0) + np.array([5, 6, 7]), nz.max(0) + np.array([6, 7, 8]))
    np.testing.assert_array_equal(mask, sub[tight.slices((5, 6, 7))])
    size = labels.sparsevol_size(big)
    assert size.voxels == counts[-1] and size.blocks == 4
    assert size.box == Box((0, 0, 0), (64, 128, 128))
    assert labels.has_label(big) and not labels.has_label(77)
    m = labels.maxlabel()
    assert m == big
    first = vol.remote.reserve_ids(10)
    assert first == m + 1 and labels.reserve_ids(1) == m + 11 and labels.next_label() == m + 12


def test_mapping_merge_cleave_and_supervoxel_reads(repo: DVIDRepo, tmp_path: Path) -> None:
    url = repo.url(_name(tmp_path, "seg"))
    vol = voxgate.create(url, shape=(16, 32, 32), chunks=(16, 16, 16), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation")
    sv = np.zeros((16, 32, 32), np.uint64)
    sv[:, :16] = 1
    sv[:, 16:, :16] = 2
    sv[:, 16:, 16:] = 3
    vol[:] = sv
    labels = repo.labels(_name(tmp_path, "seg"))
    labels.merge(1, [2])
    bodies = voxgate.open(url).read()
    assert set(np.unique(bodies).tolist()) == {1, 3}
    np.testing.assert_array_equal(voxgate.open(url, supervoxels=True).read(), sv)
    np.testing.assert_array_equal(labels.supervoxels(1), [1, 2])
    np.testing.assert_array_equal(labels.mapping([1, 2, 3, 99]), [1, 1, 3, 0])
    assert labels.mappings() == {2: 1}
    assert labels.size(1) == 16 * 16 * 32 + 16 * 16 * 16
    assert labels.size(2, supervoxels=True) == 16 * 16 * 16
    assert len(labels.sparsevol(1)) == labels.size(1)
    assert len(labels.sparsevol(2, supervoxels=True)) == 16 * 16 * 16
    new = labels.cleave(1, [2])
    assert new > 3 and labels.mapping([2]).tolist() == [new]
    with pytest.raises(InvalidRequestError, match="all supervoxels"):
        labels.cleave(1, [1])
    with pytest.raises(InvalidRequestError, match="non-existent"):
        labels.merge(1, [4242])
    # an unaligned write stores supervoxels: the mapping of untouched voxels survives
    w = voxgate.open(url, mode="r+")
    w[0:2, 0:2, 0:2] = 3
    np.testing.assert_array_equal(voxgate.open(url, supervoxels=True)[2:, 16:, :16].read(), 2)


def test_labelmap_scales(repo: DVIDRepo, tmp_path: Path) -> None:
    url = repo.url(_name(tmp_path, "seg"))
    vol = voxgate.create(url, shape=(40, 70, 90), chunks=(16, 16, 16), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation", num_scales=3)
    again = voxgate.open(url)
    assert [tuple(s.shape) for s in again.scales] == [(40, 70, 90), (20, 35, 45), (10, 18, 23)]
    assert again.scales[2].voxel_size.zyx() == (32.0, 32.0, 32.0)
    s1 = np.arange(20 * 35 * 45, dtype=np.uint64).reshape(20, 35, 45)
    vol.at_scale(1)[:] = s1
    np.testing.assert_array_equal(voxgate.open(url, scale=1).read(), s1)
    assert not voxgate.open(url).read().any()
    assert repo.labels(_name(tmp_path, "seg")).label_at((3, 4, 5), scale=1) == s1[3, 4, 5]
    with pytest.raises(InvalidRequestError, match="halve every axis"):
        voxgate.create(repo.url(_name(tmp_path, "aniso")), shape=(40, 70, 90),
                       chunks=(16, 16, 16), dtype="uint64", voxel_size=(40, 8, 8),
                       kind="segmentation", num_scales=2)


def test_label_block_codec_and_blocks_endpoint(seg: tuple[str, np.ndarray], repo: DVIDRepo,
                                               dvid_server: DVIDServerProcess) -> None:
    url, data = seg
    rng = np.random.default_rng(5)
    for nlab in (1, 2, 3, 17, 600):
        blk = rng.integers(0, nlab, (64, 64, 64)).astype(np.uint64) * np.uint64(2**63 - 25)
        np.testing.assert_array_equal(decode_label_block(encode_label_block(blk)), blk)
    node = voxgate.open(url).remote.uuid
    name = url.rsplit("/", 1)[1]
    c = httpx.Client(base_url=dvid_server.url)
    got: dict[tuple[int, int, int], np.ndarray] = {}
    for comp in ("blocks", "lz4", "gzip", "uncompressed"):
        r = c.get(f"/api/node/{node}/{name}/blocks/128_128_64/0_0_0?compression={comp}")
        assert r.status_code == 200
        for (x, y, z), payload in unpack_block_records(r.content):
            raw = bytes(payload)
            if comp == "blocks":
                arr = decode_label_block(gzip.decompress(raw))
            elif comp == "lz4":
                arr = np.frombuffer(lz4.block.decompress(raw, uncompressed_size=8 * 64**3),
                                    "<u8").reshape(64, 64, 64)
            else:
                raw = gzip.decompress(raw) if comp == "gzip" else raw
                arr = np.frombuffer(raw, "<u8").reshape(64, 64, 64)
            np.testing.assert_array_equal(arr, data[z * 64:(z + 1) * 64, y * 64:(y + 1) * 64,
                                                    x * 64:(x + 1) * 64])
            got[(x, y, z)] = arr
    assert len(got) == 4
    # POST blocks (gzip'd label blocks) and read them back through the Remote
    new = np.full((64, 64, 64), 2**62 + 9, np.uint64)
    new[:32] = 4
    body = pack_block_records([((1, 1, 0), gzip.compress(encode_label_block(new)))])
    assert c.post(f"/api/node/{node}/{name}/blocks", content=body).status_code == 200
    np.testing.assert_array_equal(voxgate.open(url)[0:64, 64:128, 64:128].read(), new)
    c.close()


# -- keyvalue -------------------------------------------------------------------------------------
def test_keyvalue(repo: DVIDRepo, tmp_path: Path) -> None:
    name = _name(tmp_path, "kv")
    repo.create_instance(name, "keyvalue")
    kv = repo.keyvalue(name)
    kv["a/b c"] = b"\x00\x01" * 100
    kv["b"] = b"two"
    kv["c"] = json.dumps({"x": 1}).encode()
    assert kv["a/b c"] == b"\x00\x01" * 100 and "b" in kv and "zz" not in kv
    assert sorted(kv) == ["a/b c", "b", "c"] and len(kv) == 3
    assert kv.keys_between("b", "c") == ["b", "c"]
    assert kv.items_between("a", "b") == {"a/b c": b"\x00\x01" * 100, "b": b"two"}
    assert kv.get_many(["b", "c", "missing"]) == {"b": b"two", "c": b'{"x": 1}'}
    kv.put_many({"d": b"4", "e": b""})
    assert kv["d"] == b"4" and kv["e"] == b""
    assert kv.get_range("a/b c", 1, 4) == b"\x01\x00\x01"
    del kv["b"]
    with pytest.raises(KeyError):
        kv["b"]
    with pytest.raises(KeyError):
        del kv["b"]
    with pytest.raises(InvalidRequestError):
        kv[""] = b"x"


# -- meshes and skeletons -------------------------------------------------------------------------
SWC = "# a skeleton\n1 0 10.0 20.0 30.0 2.0 -1\n2 0 12.0 20.0 30.0 2.0 1\n"


def test_meshes_and_skeletons(seg: tuple[str, np.ndarray]) -> None:
    url, _ = seg
    w = voxgate.open(url, mode="r+")
    r = w.remote
    assert not has_capability(r, Capability.SERVER_MESH)
    with pytest.raises(CapabilityNotSupportedError, match="_meshes"):
        r.get_mesh(5)
    verts = np.array([[0, 0, 0], [8, 0, 0], [0, 8, 0], [0, 0, 8]], np.float32)
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.uint32)
    r.put_mesh(5, (verts, faces))
    r.put_skeleton(5, SWC)
    again = voxgate.open(url).remote
    assert has_capability(again, Capability.SERVER_MESH)
    assert has_capability(again, Capability.SERVER_SKELETON)
    v, f = again.get_mesh_arrays(5)
    np.testing.assert_array_equal(v, verts)
    np.testing.assert_array_equal(f, faces)
    assert again.has_mesh(5) and not again.has_mesh(6) and again.mesh_ids() == [5]
    assert again.get_skeleton(5) == SWC and again.skeleton_ids() == [5]
    with pytest.raises(RemoteNotFoundError, match="body 6"):
        again.get_mesh(6)
    repo = again.repo
    name = url.rsplit("/", 1)[1]
    assert repo.keyvalue(f"{name}_meshes")["5.ngmesh"] == again.get_mesh(5)
    assert repo.keyvalue(f"{name}_skeletons")["5_swc"] == SWC.encode()
    with pytest.raises(ReadOnlyError):
        again.put_mesh(7, (verts, faces))  # opened read-only
    r.delete_mesh(5)
    assert not again.has_mesh(5)
    with pytest.raises(CorruptChunkError):
        decode_ngmesh(b"\x05\x00\x00\x00abc")


def test_meshes_for_the_services(seg: tuple[str, np.ndarray]) -> None:
    url, _ = seg
    r = voxgate.open(url, mode="r+").remote
    verts = np.array([[0, 0, 0], [8, 0, 0], [0, 8, 0]], np.float32)
    r.put_mesh(9, (verts, np.array([[0, 1, 2]], np.uint32)))
    r.put_skeleton(9, SWC)
    got = r.meshes([9, 10])
    assert list(got) == [9] and isinstance(got[9], mesh_mod.Mesh)
    np.testing.assert_allclose(got[9].vertices, verts)
    skels = r.skeletons([9])
    assert isinstance(skels[9], skel_mod.Skeleton) and len(skels[9].vertices) == 2
    r.put_mesh(10, got[9])  # a Mesh goes back as .ngmesh
    assert r.get_mesh(10) == r.get_mesh(9)


# -- persistence and the command line -------------------------------------------------------------
def test_data_dir_persists_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "store"
    s = start_server(data=data, log=tmp_path / "a.log")
    try:
        r = DVIDRepo.create(s.url, alias="kept")
        r.create_instance("kv", "keyvalue")
        r.keyvalue("kv")["k"] = b"v"
        vol = voxgate.create(r.url("img"), shape=(10, 20, 30), chunks=(8, 8, 8),
                             dtype="uint16", voxel_size=(4, 4, 4))
        vol[:] = 7
        r.commit(r.root, note="saved")
        child = r.branch(r.root, "b")
        r.keyvalue("kv", child)["k"] = b"w"
    finally:
        s.stop()
    s = start_server(port=s.port, data=data, log=tmp_path / "b.log")
    try:
        r2 = DVIDRepo(s.url, r.root)
        assert r2.keyvalue("kv")["k"] == b"v" and r2.keyvalue("kv", child)["k"] == b"w"
        assert (voxgate.open(r2.url("img")).read() == 7).all()
        assert r2.versions()[r.root].locked and r2.versions()[child].branch == "b"
    finally:
        s.stop()


# -- an independent client: dvidtools -------------------------------------------------------------
def test_dvidtools_gets_the_same_answers(dvid_server: DVIDServerProcess, repo: DVIDRepo,
                                         seg: tuple[str, np.ndarray]) -> None:
    """dvidtools (an independent client) reads back exactly what voxgate wrote."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import dvid  # dvidtools' import name
    url, data = seg
    vol = voxgate.open(url, mode="r+")
    r = vol.remote
    name = url.rsplit("/", 1)[1]
    verts = np.array([[0, 0, 0], [8, 0, 0], [0, 8, 0], [0, 0, 8]], np.float32)
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.uint32)
    big = int(np.unique(data)[-1])
    r.put_mesh(big, (verts, faces))
    r.put_skeleton(big, SWC)
    old = dvid.config.segmentation
    dvid.config.segmentation = name
    dvid.setup(dvid_server.url, repo.root)
    try:
        projects = dvid.list_projects()
        row = projects[projects["Root"] == repo.root]
        assert len(row) == 1
        assert (row["Alias"].iloc[0], row["Description"].iloc[0]) == ("tests", "voxgate tests")
        assert name in row["DataInstances"].iloc[0]
        assert dvid.get_master_node(repo.root) == repo.branch_versions("master")[0]
        info = dvid.get_segmentation_info()
        assert (info["Base"]["Name"], info["Base"]["TypeName"]) == (name, "labelmap")
        assert info["Extended"]["BlockSize"] == [64, 64, 64]
        assert [float(v) for v in info["Extended"]["VoxelSize"]] == [8.0, 8.0, 8.0]
        pts_xyz = [[30, 20, 10], [127, 127, 63], [0, 0, 0]]
        want = [int(data[z, y, x]) for x, y, z in pts_xyz]
        # dvidtools casts ids through int64; these all fit
        assert np.asarray(dvid.locs_to_ids(pts_xyz, progress=False)).tolist() == want
        ids = np.unique(data)
        small = [int(i) for i in ids if i < 2**63]
        assert small == [int(i) for i in ids]
        counts = [int((data == i).sum()) for i in ids]
        assert np.asarray(dvid.get_sizes(small, progress=False)).tolist() == counts
        assert dvid.ids_exist([*small, 77], progress=False).tolist() == [True] * len(small) + \
            [False]
        # the label's voxels, as x, y, z, sorted (z, y, x) like ours
        zyx = np.argwhere(data == big)
        blocks_xyz = {tuple(b) for b in (zyx[:, ::-1] // 64).tolist()}
        svs = dvid.get_sparsevol_size(big)
        assert (svs["voxels"], svs["numblocks"]) == (len(zyx), len(blocks_xyz))
        lo = np.min(list(blocks_xyz), axis=0) * 64
        hi = (np.max(list(blocks_xyz), axis=0) + 1) * 64 - 1
        assert (list(svs["minvoxel"]), list(svs["maxvoxel"])) == (lo.tolist(), hi.tolist())
        xyz = dvid.get_sparsevol(big, scale=0, ret_type="INDEX")
        theirs = np.asarray(xyz, dtype=np.int64)[:, ::-1]
        theirs = theirs[np.lexsort((theirs[:, 2], theirs[:, 1], theirs[:, 0]))]
        np.testing.assert_array_equal(theirs, zyx)
        coarse = np.asarray(dvid.get_sparsevol(big, scale="COARSE", ret_type="INDEX"))
        assert {tuple(c) for c in coarse.tolist()} == blocks_xyz
        bbox = [3, 40, 5, 30, 2, 20]  # x0, x1, y0, y1, z0, z1 (inclusive)
        sub = np.asarray(dvid.get_sparsevol(big, scale=0, ret_type="INDEX", bbox=bbox),
                         dtype=np.int64)
        inside = zyx[(zyx[:, 2] >= 3) & (zyx[:, 2] <= 40) & (zyx[:, 1] >= 5) & (zyx[:, 1] <= 30)
                     & (zyx[:, 0] >= 2) & (zyx[:, 0] <= 20)]
        assert len(inside) > 0
        assert sorted(map(tuple, sub[:, ::-1].tolist())) == sorted(map(tuple, inside.tolist()))
        mesh = dvid.get_meshes(big, fix=False, output="trimesh", progress=False,
                               on_error="raise")
        mesh = mesh[0] if isinstance(mesh, list) else mesh
        np.testing.assert_array_equal(np.asarray(mesh.vertices, np.float32), verts)
        np.testing.assert_array_equal(np.asarray(mesh.faces), faces)
        assert dvid.has_mesh([big, big - 1], progress=False).tolist() == [True, False]
        assert dvid.has_skeleton([big, big - 1], progress=False).tolist() == [True, False]
        swc = dvid.get_skeletons(big, output="swc", progress=False, on_error="raise")
        swc = swc[0] if isinstance(swc, list) else swc
        rows = [line.split() for line in SWC.splitlines() if not line.startswith("#")]
        cols = ["node_id", "label", "x", "y", "z", "radius", "parent_id"]
        got = [[float(v) for v in rec] for rec in swc[cols].itertuples(index=False)]
        assert got == [[float(v) for v in rec] for rec in rows]
        # a write through voxgate moves the label's last-modification record forward
        before = dvid.get_last_mod(big)
        vol[0:8, 0:8, 0:8] = np.uint64(big)
        after = dvid.get_last_mod(big)
        assert int(after["mutation id"]) > int(before["mutation id"])
        if before["last mod time"]:
            assert datetime.fromisoformat(after["last mod time"]) >= \
                datetime.fromisoformat(before["last mod time"])
    finally:
        dvid.config.segmentation = old


# -- a real DVID, when there is one ---------------------------------------------------------------
REAL = os.environ.get("VOXGATE_DVID_URL")


@pytest.mark.skipif(not REAL, reason="set VOXGATE_DVID_URL=http://host:port to test against "
                                     "a real DVID server (it creates a new repo there)")
def test_against_a_real_dvid() -> None:
    assert REAL is not None
    repo = DVIDRepo.create(REAL, alias="voxgate-test", description="created by voxgate tests")
    repo.create_instance("segmentation", "labelmap", block_size=(64, 64, 64))
    repo.create_instance("grayscale", "uint8blk", block_size=(32, 32, 32))
    seg = voxgate.open(repo.url("segmentation"), mode="r+")
    labels = np.zeros((64, 128, 128), np.uint64)
    labels[:, :64] = 2**60 + 1
    labels[:, 64:] = 7
    seg[0:64, 0:128, 0:128] = labels
    seg[3:5, 100:101, 0:3] = 9
    labels[3:5, 100:101, 0:3] = 9
    np.testing.assert_array_equal(seg[0:64, 0:128, 0:128].read(), labels)
    lab = seg.remote.labels
    assert lab is not None and lab.size(7) == int((labels == 7).sum())
    np.testing.assert_array_equal(lab.sparsevol(9), np.argwhere(labels == 9))
    repo.commit(repo.root, note="voxgate test")
    child = repo.branch(repo.root, f"voxgate-{int(time.time())}")
    on_child = voxgate.open(repo.url("segmentation", child), mode="r+")
    on_child[0:64, 0:64, 0:64] = 5
    np.testing.assert_array_equal(seg[0:64, 0:128, 0:128].read(), labels)
    with pytest.raises((ReadOnlyError, RemoteExistsError)):
        seg[0:64, 0:64, 0:64] = 5


# -- the paper's transfer case: bossDB -> DVID (proofread at a branch) -> bossDB ------------------
def test_bossdb_to_dvid_and_back(dvid_server: DVIDServerProcess, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from ..relay.conftest import RW, free_port, make_upstreams, start_relay, write_config

    ups = make_upstreams(tmp_path / "upstreams")
    cfg = write_config(tmp_path / "relay.toml", ups.root)
    relay = start_relay(cfg, free_port(), "--data-root", str(tmp_path / "relay-data"))
    monkeypatch.setenv("VOXGATE_BOSS_TOKEN", RW)
    try:
        src = f"bossdb://{relay.url}/lab/em/seg"
        repo = DVIDRepo.create(dvid_server.url, alias="paper", description="transfer case")
        dst = repo.url("segmentation")
        # bossDB's scale 1 halves only x and y; a DVID labelmap halves every axis: copy scale 0
        report = voxgate.copy(src, dst, scales=[0], block_size=(64, 64, 64), progress=False)
        assert report.created
        imported = voxgate.open(dst)
        assert imported.shape == ups.labels.shape and imported.voxel_size.zyx() == (40, 8, 8)
        np.testing.assert_array_equal(imported.read(), ups.labels)
        repo.commit(repo.root, note="imported from bossDB")
        child = repo.branch(repo.root, "proofread")

        # proofread at the branch: merge two bodies, paint a region a new id
        labels = repo.labels("segmentation", child)
        a, b = (int(v) for v in np.unique(ups.labels)[:2])
        labels.merge(a, [b])
        new_id = labels.reserve_ids(1)
        edit = voxgate.open(repo.url("segmentation", child), mode="r+")
        edit[10:20, 100:150, 30:90] = new_id
        expected = ups.labels.copy()
        expected[expected == b] = a
        expected[10:20, 100:150, 30:90] = new_id

        # back to bossDB as a new channel; the original and the DVID root are unchanged
        back = f"bossdb://{relay.url}/proofread/em/seg"
        voxgate.copy(voxgate.open(repo.url("segmentation", child)), back, progress=False)
        np.testing.assert_array_equal(voxgate.open(back).read(), expected)
        np.testing.assert_array_equal(voxgate.open(src).read(), ups.labels)
        np.testing.assert_array_equal(voxgate.open(dst).read(), ups.labels)
        np.testing.assert_array_equal(
            voxgate.open(repo.url("segmentation", child)).read(), expected)
        assert repo.versions()[child].parents == (repo.root,)
    finally:
        relay.stop()


def test_unresolvable_host_fails_at_once_and_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DVID server whose name does not resolve is not retried, and the error names it (the
    lookup of *.invalid fails as an unknown name does, without asking any DNS server)."""
    import socket

    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if isinstance(host, str) and host.endswith(".invalid"):
            lookups.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(RemoteUnavailableError) as info:
        voxgate.open("dvid://nonexistent.invalid:8000/3f8a/segmentation")
    assert lookups == ["nonexistent.invalid"]  # one attempt
    msg = str(info.value)
    assert "could not reach nonexistent.invalid:8000 (the DVID server)" in msg
    assert "does not resolve" in msg
    with pytest.raises(RemoteUnavailableError, match=r"nonexistent\.invalid"):
        DVIDRepo.create("http://nonexistent.invalid", alias="x")
    assert lookups == ["nonexistent.invalid"] * 2


def test_refused_connection_names_the_server() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteUnavailableError, match=f"could not reach 127.0.0.1:{port} "
                                                     r"\(the DVID server\)"):
        voxgate.open(f"dvid://127.0.0.1:{port}/3f8a/segmentation")


def test_create_exist_ok_checks_the_instance(repo: DVIDRepo, tmp_path: Path) -> None:
    """create(..., exist_ok=True) on an instance that exists hands it back only when it holds
    what was asked for (it returned any instance of the name)."""
    from .test_create_existing import assert_exist_ok_checks

    assert_exist_ok_checks(repo.url(_name(tmp_path, "gray")), (8, 40, 30), (8, 16, 16))


def test_downsample_of_a_labelmap_at_an_odd_offset(repo: DVIDRepo, tmp_path: Path) -> None:
    """A labelmap's scales lie on DVID's block grid through 0 (create checks that their
    extents are those), and DVID rebuilds them itself on every write, by its own rule:
    voxgate.downsample leaves them so (it POSTed voxgate's mode over them), and with
    prefer="local" computes them on that grid (with the first-voxel grid it refused them as
    inconsistent at an odd offset)."""
    from tests.services.numpy_reference import downsample_mode
    from voxgate.services.downsample import downsample_provenance

    from ..services.numpy_reference import dvid_mode2

    url = repo.url(_name(tmp_path, "seg"))
    offset = (8, 7, 45)
    labels = np.random.default_rng(5).integers(1, 4, (6, 21, 26)).astype(np.uint64)
    vol = voxgate.create(url, shape=labels.shape, chunks=(16, 16, 16), dtype="uint64",
                         voxel_size=(8, 8, 8), offset=offset, kind="segmentation",
                         num_scales=2)
    vol[:] = labels
    # DVID's rule on its grid through 0: the labels placed in whole 2x2x2 cells, zeros around
    padded = np.zeros((6, 22, 28), np.uint64)
    padded[0:6, 1:22, 1:27] = labels
    dvids = dvid_mode2(padded)
    ours = downsample_mode(labels, (2, 2, 2), start=offset)
    assert dvids.shape == ours.shape and not np.array_equal(dvids, ours)  # the rules differ

    done = voxgate.downsample(url)
    prov = downsample_provenance(done)
    assert prov is not None and prov.path == "server" and prov.details["derived_by_store"]
    got = voxgate.open(url).at_scale(1)
    assert tuple(got.offset) == (4, 3, 22) and got.shape == dvids.shape
    np.testing.assert_array_equal(got.read(), dvids)  # DVID's own scale, left alone

    voxgate.downsample(url, prefer="local")
    np.testing.assert_array_equal(voxgate.open(url).at_scale(1).read(), ours)


def test_a_write_failing_part_way_names_what_it_wrote(proxy: FlakyProxy,
                                                      seg: tuple[str, np.ndarray]) -> None:
    """A write split into several requests, one refused: PartialWriteError with the parts of
    the box that hold the new data (.written) and the part that holds the old (.failed), as the
    server then holds them (before, the first error came with a note that "no partial data is
    returned", as for reads)."""
    url, data = seg
    v = voxgate.open(url.replace(proxy.target, proxy.url), mode="r+")
    import voxgate.remotes.dvid.remote as mod

    old = mod.REQUEST_BYTES
    mod.REQUEST_BYTES = 64**3 * 8  # four requests of one 64^3 block each
    new = data + np.uint64(1)
    try:
        box = (slice(0, 64), slice(0, 128), slice(0, 128))  # (aligned: no reads)
        proxy.add(Rule("64_0_0", "status", status=400))  # the block at x 64, y 0, z 0
        with pytest.raises(PartialWriteError, match="1 of 4 requests failed") as err:
            v[box] = new[box]
    finally:
        mod.REQUEST_BYTES = old
    posts = [r for r in proxy.requests if r.startswith("POST")]
    assert len(posts) == 4, posts
    assert len(err.value.written) == 3 and len(err.value.failed) == 1
    assert err.value.failed[0] == Box((0, 0, 64), (64, 64, 128))
    expect = data.copy()
    for b in err.value.written:
        expect[b.slices()] = new[b.slices()]
    proxy.rules.clear()
    np.testing.assert_array_equal(voxgate.open(url).read(), expect)
    # every voxel of the box is in exactly one of the two lists
    cover = np.zeros(data.shape, np.int8)
    for b in [*err.value.written, *err.value.failed]:
        cover[b.slices()] += 1
    want = np.zeros(data.shape, np.int8)
    want[box] = 1
    np.testing.assert_array_equal(cover, want)
