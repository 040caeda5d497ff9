"""The paper's transfer use case as a tested example (issue 13, item 7; docs/services/
proofread.md runs the same steps): a segmentation served by a bossDB relay is copied to a
DVID branch, proofread there with DVID's own merge and split, and copied back; bossDB then
holds the proofread result and the DVID node it was branched from is unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import voxgate
from tests.relay.conftest import RW, free_port, one_channel_config, start_relay
from tests.services.test_proofread import DUMBBELL_A, DUMBBELL_B, _file_store, labels
from voxgate.remotes.dvid import DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess, start_server


@pytest.fixture
def dvid(tmp_path: Path) -> Iterator[DVIDServerProcess]:
    server = start_server(log=tmp_path / "dvid.log")
    yield server
    server.stop()


def test_bossdb_to_dvid_branch_and_back(tmp_path: Path, dvid: DVIDServerProcess) -> None:
    # a segmentation in bossDB (here: a relay serving a zarr upstream in the bossDB dialect)
    up = tmp_path / "lab.zarr"
    _file_store(f"zarr://{up}")
    cfg = one_channel_config(tmp_path, f"zarr://{up}")
    relay = start_relay(cfg, free_port())
    try:
        boss_url = f"bossdb://{relay.url}/lab/em/seg"
        boss = voxgate.open(boss_url, mode="r+", token=RW)

        # 1. copy into a new DVID repo and commit that node: the imported version
        repo = DVIDRepo.create(dvid.url, alias="proofreading")
        voxgate.copy(boss, repo.url("seg"), progress=False)
        repo.commit(repo.root, note="imported from bossDB")

        # 2. proofread on a branch: DVID's own merge and split (the server path)
        branch = repo.branch(repo.root, "proofread", note="proofreading session")
        seg = voxgate.open(repo.url("seg", branch), mode="r+")
        m = voxgate.merge(seg, [10, 20], user="ana")
        s = voxgate.split(seg, 40, seeds={141: [(17, 32, 4)], 142: [(17, 32, 19)]}, user="ana")
        assert m.provenance is not None and m.provenance.path == "server"
        assert s.provenance is not None and s.provenance.path == "server"
        proofread = seg.read()
        orig = labels()
        assert (proofread[orig == 20] == 10).all()
        assert (proofread[DUMBBELL_A] == 141).all() and (proofread[DUMBBELL_B] == 142).all()
        assert list(voxgate.history(seg)["user"]) == ["ana", "ana"]
        assert sum("voxgate-proofread" in line for line in repo.log(branch)) == 2

        # 3. copy the proofread branch back to bossDB
        voxgate.copy(seg, boss, progress=False)
        assert np.array_equal(voxgate.open(boss_url, token=RW).read(), proofread)
        assert np.array_equal(voxgate.open(f"zarr://{up}").read(), proofread)

        # the imported node is as it was
        assert np.array_equal(voxgate.open(repo.url("seg", repo.root)).read(), orig)
    finally:
        relay.stop()
