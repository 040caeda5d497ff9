"""The same Service call on stores with server-side operations: DVID (stored meshes and
skeletons) and bossDB through a relay (ids and bounding boxes).  Each runs both ways and the
results agree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.remotes.dvid import DVIDRepo
from voxgate.synthetic import synthetic_labels
from voxgate.testing.dvid import DVIDServerProcess, start_server

from ..relay.conftest import RW, RelayProcess, free_port, start_relay


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return synthetic_labels((32, 64, 64), cell=(10, 20, 20), seed=8) + np.uint64(2**40)


@pytest.fixture(scope="module")
def dvid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DVIDServerProcess]:
    server = start_server(log=tmp_path_factory.mktemp("dvid") / "server.log")
    yield server
    server.stop()


def test_dvid_meshes_and_skeletons_both_ways(dvid: DVIDServerProcess, labels: np.ndarray
                                             ) -> None:
    repo = DVIDRepo.create(dvid.url, alias="services")
    url = repo.url("seg")
    seg = voxgate.create(url, shape=labels.shape, chunks=(32, 64, 64), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation")
    seg[:] = labels
    assert not voxgate.has_capability(seg.remote, "server_mesh")
    ids = [int(i) for i in np.unique(labels)[:5]]
    local = voxgate.mesh(seg, ids=ids)
    assert local.provenance.path == "local"
    skels = voxgate.skeletonize(seg, ids=ids[:2], dust_threshold=10)
    for i in ids:
        seg.remote.put_mesh(i, local[i])  # type: ignore[attr-defined]
    for i in ids[:2]:
        seg.remote.put_skeleton(i, skels[i])  # type: ignore[attr-defined]
    again = voxgate.open(url)
    assert voxgate.has_capability(again.remote, "server_mesh")
    served = voxgate.mesh(again, ids=ids)
    assert served.provenance.path == "server"
    for i in ids:  # .ngmesh keeps float32 exactly
        np.testing.assert_array_equal(served[i].vertices, local[i].vertices)
        np.testing.assert_array_equal(served[i].faces, local[i].faces)
    forced = voxgate.mesh(again, ids=ids, prefer="local")
    assert forced.provenance.path == "local"
    stored = voxgate.skeletonize(again, ids=ids[:2])
    assert stored.provenance.path == "server"
    for i in ids[:2]:  # SWC orders vertices parent-first: compare them as sets
        a = np.unique(np.round(stored[i].vertices, 2), axis=0)
        b = np.unique(np.round(skels[i].vertices, 2), axis=0)
        np.testing.assert_allclose(a, b, atol=1e-2)
        assert len(stored[i].edges) == len(skels[i].edges)


@pytest.fixture(scope="module")
def boss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("boss")
    cfg = d / "relay.toml"
    cfg.write_text(f'[server]\nstate_path = "{d / "state.json"}"\n'
                   f'[auth]\ntokens = {{ "{RW}" = "read-write" }}\n')
    r = start_relay(cfg, free_port(), "--data-root", str(d / "data"))
    yield r
    r.stop()


def test_bossdb_label_stats_both_ways(boss: RelayProcess, labels: np.ndarray) -> None:
    url = f"bossdb://{boss.url}/svc/stats/seg"
    seg = voxgate.create(url, shape=labels.shape, chunks=(16, 512, 512), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation", token=RW)
    seg[:] = labels
    seg = voxgate.open(url, token=RW)
    server = voxgate.label_stats(seg)
    assert server.attrs["provenance"].path == "server"
    local = voxgate.label_stats(seg, prefer="local")
    assert local.attrs["provenance"].path == "local"
    np.testing.assert_array_equal(server["id"].to_numpy(), local["id"].to_numpy())
    for col in ("z0", "y0", "x0", "z1", "y1", "x1"):
        np.testing.assert_array_equal(server[col].to_numpy(), local[col].to_numpy(), err_msg=col)
    assert server["voxel_count"].isna().all() and (local["voxel_count"] > 0).all()
    # for part of the volume the server's whole-object boxes do not answer: local runs
    part = voxgate.label_stats(seg[4:20, 10:50, 5:60])
    assert part.attrs["provenance"].path == "local"
    with pytest.raises(voxgate.errors.CapabilityNotSupportedError, match="whole objects"):
        voxgate.label_stats(seg[4:20, 10:50, 5:60], prefer="server")


def test_numpy_inputs_work_everywhere(labels: np.ndarray, tmp_path: Path) -> None:
    import cc3d

    from .numpy_reference import downsample_mode
    from .test_blockwise import assert_same_partition

    small = labels[:16, :32, :32]
    ids = np.unique(small)
    meshes = voxgate.mesh(small, voxel_size=(8, 8, 8))
    assert sorted(int(i) for i in meshes) == [int(i) for i in ids]
    assert_same_partition(voxgate.connected_components(small),
                          cc3d.connected_components(small, connectivity=26))
    stats = voxgate.label_stats(small)
    assert stats["id"].tolist() == [int(i) for i in ids]
    assert stats["voxel_count"].tolist() == [int((small == i).sum()) for i in ids]
    np.testing.assert_array_equal(voxgate.downsample(small, 2).at_scale(1).read(),
                                  downsample_mode(small, (2, 2, 2)))
    np.testing.assert_array_equal(voxgate.map_blocks(lambda a: a + 1, small, block=(8, 8, 8)),
                                  small + 1)


@pytest.mark.parametrize("kind", ["segmentation", "image"])
def test_bossdb_downsample_on_the_server(boss: RelayProcess, labels: np.ndarray,
                                         kind: str) -> None:
    """The relay's downsample job against a brute-force numpy reference (not against the local
    kernel the relay itself calls); the image frame has odd y and x extents."""
    from voxgate.remotes.boss import BossProject
    from voxgate.services.downsample import downsample_provenance

    from .numpy_reference import downsample_scales

    if kind == "segmentation":
        data, coll, datatype, ch_type = labels, "ds", "uint64", "annotation"
    else:
        data = np.random.default_rng(4).integers(0, 256, (6, 45, 51), dtype=np.uint8)
        coll, datatype, ch_type = "dsimg", "uint8", "image"
    p = BossProject(boss.url, token=RW)
    p.create_collection(coll)
    p.create_coordinate_frame(f"{coll}frame", voxgate.Box((0, 0, 0), data.shape), (40, 8, 8))
    p.create_experiment(coll, "e", f"{coll}frame", num_hierarchy_levels=3)
    p.create_channel(coll, "e", "ch", type=ch_type, datatype=datatype)
    url = f"bossdb://{boss.url}/{coll}/e/ch"
    vol = voxgate.open(url, mode="r+", token=RW)
    vol[:] = data
    assert p.downsample_status(coll, "e", "ch")["status"] == "NOT_DOWNSAMPLED"
    out = voxgate.downsample(vol)  # auto: the server offers it
    assert downsample_provenance(out).path == "server"  # type: ignore[union-attr]
    assert p.downsample_status(coll, "e", "ch")["status"] == "DOWNSAMPLED"
    # anisotropic (40, 8, 8) nm: each level halves y and x only
    expected = downsample_scales(data, [(1, 2, 2), (1, 2, 2)], kind)
    fresh = voxgate.open(url, token=RW)  # through the relay's cache, which the job refreshed
    for k in (1, 2):
        assert fresh.at_scale(k).shape == expected[k - 1].shape
        np.testing.assert_array_equal(fresh.at_scale(k).read(), expected[k - 1],
                                      err_msg=f"scale {k}")
    # the same call on the local path gives the same scales
    local = voxgate.downsample(vol, prefer="local")
    assert downsample_provenance(local).path == "local"  # type: ignore[union-attr]
    for k in (1, 2):
        np.testing.assert_array_equal(voxgate.open(url, token=RW).at_scale(k).read(),
                                      expected[k - 1], err_msg=f"scale {k}")
