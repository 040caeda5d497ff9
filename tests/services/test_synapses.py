"""detect_synapses: block-wise equals whole-volume, the same detections from every store
(numpy, zarr, precomputed, N5, HDF5, bossdb:// through the relay, dvid://), the segment rule
against the generator's pre/post cells, annotation output, and accuracy of the built-in
model on held-out seeds."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.services.synapses import synapse_segments
from voxgate.synthetic import SyntheticSynapses, synapses

from ..relay.conftest import RelayProcess, free_port, start_relay

SHAPE = (24, 200, 184)
VOXEL = (40, 8, 8)


def builtin_model() -> str | None:
    try:
        models = importlib.import_module("voxgate.models")
        models.resolve_model("synapse-unet")
    except Exception:
        return None
    return "synapse-unet"


def darkness(a: np.ndarray) -> np.ndarray:
    """A stand-in 'model' for store equivalence: the darkest voxels (densities, membranes)."""
    return np.clip((0.16 - a) * 20, 0, 1).astype(np.float32)


#: the built-in model where it is installed (the store comparisons then run the U-Net, halos
#: and all), else the stand-in
MODEL: Any = builtin_model() or darkness


@pytest.fixture(scope="module")
def volume() -> SyntheticSynapses:
    return synapses(SHAPE, seed=21, voxel_size=VOXEL, density=2.0)


@pytest.fixture(scope="module")
def reference(volume: SyntheticSynapses) -> pd.DataFrame:
    return voxgate.detect_synapses(volume.image, model=MODEL, segmentation=volume.labels,
                                   voxel_size=VOXEL, min_size=20, progress=False)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_blockwise_equals_whole_volume(volume: SyntheticSynapses,
                                       reference: pd.DataFrame) -> None:
    assert len(reference) >= 4  # enough detections for the comparison to mean something
    assert list(reference.columns) == ["id", "z", "y", "x", "x_nm", "y_nm", "z_nm", "size",
                                       "score", "pre_id", "post_id"]
    whole = voxgate.detect_synapses(volume.image, model=MODEL, segmentation=volume.labels,
                                    voxel_size=VOXEL, min_size=20, block=SHAPE, progress=False)
    assert whole.attrs["provenance"].details["detections"] == len(whole)
    blocks = voxgate.detect_synapses(volume.image, model=MODEL, segmentation=volume.labels,
                                     voxel_size=VOXEL, min_size=20, block=(8, 48, 40),
                                     progress=False)
    _same(whole, reference)
    _same(blocks, reference)
    # the table's facts, recomputed from the whole-volume components
    from scipy import ndimage

    whole_prob = voxgate.predict(MODEL, volume.image, block=SHAPE, progress=False)  # one run
    comp, _ = ndimage.label(whole_prob >= 128, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(comp.ravel())[1:]
    crossing = [sl for sl in ndimage.find_objects(comp)
                if any(s.start // b != (s.stop - 1) // b
                       for s, b in zip(sl, (8, 48, 40), strict=True))]
    assert len(crossing) >= 2  # detections cut by block faces, joined again
    assert sorted(sizes[sizes >= 20].tolist()) == sorted(reference["size"].tolist())
    for row in reference.itertuples():
        assert comp[row.z, row.y, row.x] > 0  # the position lies on its detection
        assert row.x_nm == (row.x + 0.5) * VOXEL[2] and row.z_nm == (row.z + 0.5) * VOXEL[0]
        assert 0.5 <= row.score <= 1.0


def test_min_size_threshold_and_bad_input(volume: SyntheticSynapses,
                                          reference: pd.DataFrame) -> None:
    few = voxgate.detect_synapses(volume.image, model=MODEL, min_size=200, progress=False)
    assert len(few) == int((reference["size"] >= 200).sum())
    assert "pre_id" not in few.columns
    strict = voxgate.detect_synapses(volume.image, model=MODEL, min_size=20, threshold=0.99,
                                     progress=False)
    assert strict["size"].sum() < reference["size"].sum()
    with pytest.raises(InvalidRequestError, match="threshold"):
        voxgate.detect_synapses(volume.image, model=darkness, threshold=1.5, progress=False)
    with pytest.raises(InvalidRequestError, match="min_size"):
        voxgate.detect_synapses(volume.image, model=darkness, min_size=0, progress=False)
    with pytest.raises(InvalidRequestError, match="must cover the image"):
        voxgate.detect_synapses(volume.image, model=darkness, segmentation=volume.labels[:5],
                                progress=False)
    with pytest.raises(InvalidRequestError, match="one synapse probability"):
        voxgate.detect_synapses(volume.image, model=lambda a: np.stack([a, a]), progress=False)


def test_segment_rule_matches_the_generator() -> None:
    """post_id: the cell holding most of the synapse's voxels; pre_id: the other cell most
    present within 100 nm (the generator's pre cell holds the vesicles, post the density)."""
    g = synapses((32, 224, 224), seed=11, voxel_size=VOXEL, density=2.0)
    assert len(g.centres) >= 4
    for i in range(len(g.centres)):
        found = synapse_segments(g.instances == i + 1, g.labels, VOXEL, 100.0)
        assert found == (int(g.pre_id[i]), int(g.post_id[i]))


@pytest.fixture(scope="module")
def stores(volume: SyntheticSynapses, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, Any]]:
    """The image (and the segmentation) in every store; the relay serves the zarr copies as
    bossdb://, the DVID test server holds its own."""
    from voxgate.remotes.dvid import DVIDRepo
    from voxgate.testing.dvid import start_server

    d = tmp_path_factory.mktemp("stores")
    urls = {
        "zarr": f"zarr://{d}/img.zarr",
        "precomputed": f"precomputed://file://{d}/img",
        "n5": f"n5://{d}/img.n5",
        "hdf5": f"hdf5://{d}/img.h5#/em",
    }
    for url in urls.values():
        v = voxgate.create(url, shape=SHAPE, chunks=(8, 64, 64), dtype="uint8",
                           voxel_size=VOXEL)
        v[:] = volume.image
    seg_url = f"zarr://{d}/seg.zarr"
    seg = voxgate.create(seg_url, shape=SHAPE, chunks=(8, 64, 64), dtype="uint64",
                         voxel_size=VOXEL, kind="segmentation")
    seg[:] = volume.labels
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
state_path = "{d / 'state.json'}"
[cache]
memory_bytes = "32 MiB"
[[channel]]
name = "lab/syn/em"
upstream = "{urls['zarr']}"
[[channel]]
name = "lab/syn/seg"
upstream = "{seg_url}"
""")
    relay: RelayProcess = start_relay(cfg, free_port())
    dvid = start_server(log=d / "dvid.log")
    try:
        repo = DVIDRepo.create(dvid.url, alias="synapses", description="voxgate synapse tests")
        dv = voxgate.create(repo.url("em"), shape=SHAPE, chunks=(64, 64, 64), dtype="uint8",
                            voxel_size=VOXEL)
        dv[:] = volume.image
        urls["bossdb"] = f"bossdb://{relay.url}/lab/syn/em"
        urls["dvid"] = repo.url("em")
        yield {"urls": urls, "segmentation": seg_url,
               "bossdb_segmentation": f"bossdb://{relay.url}/lab/syn/seg"}
    finally:
        relay.stop()
        dvid.stop()


@pytest.mark.parametrize("store", ["numpy", "zarr", "precomputed", "n5", "hdf5", "bossdb",
                                   "dvid"])
def test_same_detections_from_every_store(store: str, stores: dict[str, Any],
                                          volume: SyntheticSynapses,
                                          reference: pd.DataFrame) -> None:
    source = volume.image if store == "numpy" else stores["urls"][store]
    segmentation = stores["bossdb_segmentation"] if store == "bossdb" else (
        volume.labels if store == "numpy" else stores["segmentation"])
    got = voxgate.detect_synapses(source, model=MODEL, segmentation=segmentation,
                                  min_size=20, block=(8, 64, 64), progress=False,
                                  voxel_size=VOXEL if store == "numpy" else None)
    _same(got, reference)


def test_outputs_annotations_and_probabilities(volume: SyntheticSynapses, tmp_path: Path,
                                               reference: pd.DataFrame) -> None:
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=SHAPE, chunks=(8, 64, 64),
                         dtype="uint8", voxel_size=VOXEL, offset=(100, 0, 50))
    src[:] = volume.image
    seg = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=SHAPE, chunks=(8, 64, 64),
                         dtype="uint64", voxel_size=VOXEL, kind="segmentation",
                         offset=(100, 0, 50))
    seg[:] = volume.labels
    out = f"precomputed://file://{tmp_path}/synapses"
    got = voxgate.detect_synapses(src, model=MODEL, segmentation=seg, min_size=20,
                                  out=out, probabilities=f"zarr://{tmp_path}/prob.zarr",
                                  progress=False)
    # dataset coordinates include the offset
    moved = reference.assign(z=reference.z + 100, x=reference.x + 50)
    moved = moved.assign(x_nm=(moved.x + 0.5) * 8.0, z_nm=(moved.z + 0.5) * 40.0)
    _same(got, moved)
    prob = voxgate.open(f"zarr://{tmp_path}/prob.zarr")
    assert prob.bounds == src.bounds and prob.dtype == np.uint8
    np.testing.assert_array_equal(prob.read(), voxgate.predict(MODEL, volume.image,
                                                               progress=False))
    from voxgate.formats.annotation import read_annotations

    back = read_annotations(out).sort_values("id").reset_index(drop=True)
    for col in ("z", "y", "x"):  # the points at the voxels' centres
        np.testing.assert_allclose(back[col].to_numpy(), got[col].to_numpy() + 0.5)
    np.testing.assert_array_equal(back["size"].to_numpy(), got["size"].to_numpy())
    np.testing.assert_array_equal(back["post_id"].to_numpy().astype(np.uint64),
                                  got["post_id"].to_numpy())


@pytest.mark.skipif(builtin_model() is None, reason="the built-in synapse model is not installed")
def test_builtin_model_accuracy_on_a_held_out_seed() -> None:
    """Precision and recall of detect_synapses against the generator's synapses on a seed the
    model was not trained on (the last of voxgate.models.evaluate's held-out seeds), a
    detection matching a true synapse within 250 nm, one-to-one (an optimal assignment); and
    the pre/post cells of the matched detections."""
    from scipy.optimize import linear_sum_assignment

    evaluate = importlib.import_module("voxgate.models.evaluate")
    seed = evaluate.HELD_OUT_SEEDS[-1]
    within = 250.0
    g = synapses((32, 256, 256), seed=seed, voxel_size=VOXEL, density=2.0)
    found = voxgate.detect_synapses(g.image, model="synapse-unet", segmentation=g.labels,
                                    voxel_size=VOXEL, progress=False)
    truth = g.centres * np.asarray(VOXEL)
    det = found[["z", "y", "x"]].to_numpy() * np.asarray(VOXEL)
    dist = np.sqrt(((truth[:, None, :] - det[None, :, :]) ** 2).sum(-1))
    rows, cols = linear_sum_assignment(np.where(dist <= within, dist, 1e9))
    ok = dist[rows, cols] <= within
    hits = int(ok.sum())
    precision, recall = hits / max(1, len(det)), hits / max(1, len(truth))
    assert len(truth) >= 5
    assert precision >= 0.9 and recall >= 0.9, (precision, recall, len(truth), len(det))
    right = sum(int(found["post_id"].iloc[c]) == int(g.post_id[r])
                and int(found["pre_id"].iloc[c]) == int(g.pre_id[r])
                for r, c in zip(rows[ok], cols[ok], strict=True))
    assert right >= 0.9 * hits, (right, hits)


def test_cli_synapses(stores: dict[str, Any], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from voxgate.cli import main

    from .onnx_models import conv_model

    model = conv_model(tmp_path / "conv.onnx", seed=7)
    src = stores["urls"]["zarr"]
    direct = voxgate.detect_synapses(src, model=str(model), segmentation=stores["segmentation"],
                                     min_size=5, threshold=0.6, progress=False)
    assert len(direct) > 0
    csv = tmp_path / "synapses.csv"
    out = f"precomputed://file://{tmp_path}/synapses"
    res = CliRunner().invoke(main, ["synapses", src, "--out", out, "--csv", str(csv),
                                    "--segmentation", stores["segmentation"], "--threshold",
                                    "0.6", "--min-size", "5", "--model", str(model)])
    assert res.exit_code == 0, res.output
    assert f"{len(direct)} synapses written to {csv}" in res.output
    table = pd.read_csv(csv)
    np.testing.assert_array_equal(table[["z", "y", "x", "size"]].to_numpy(),
                                  direct[["z", "y", "x", "size"]].to_numpy())
    np.testing.assert_array_equal(table["post_id"].to_numpy(), direct["post_id"].astype(int))
    from voxgate.formats.annotation import read_annotations

    assert len(read_annotations(out)) == len(direct)


def test_large_volume_path_and_cluster(volume: SyntheticSynapses, reference: pd.DataFrame,
                                       stores: dict[str, Any],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Past IN_MEMORY_VOXELS (lowered here) the probabilities, mask and components live in
    temporary zarr volumes, as they do for a dask.distributed client; same table."""
    from distributed import Client, LocalCluster

    from voxgate.blockwise import scheduler_name

    synapses_module = importlib.import_module("voxgate.services.synapses")
    monkeypatch.setattr(synapses_module, "IN_MEMORY_VOXELS", 1000)
    src = stores["urls"]["zarr"]
    got = voxgate.detect_synapses(src, model=MODEL, segmentation=stores["segmentation"],
                                  min_size=20, block=(8, 64, 64), progress=False)
    _same(got, reference)
    monkeypatch.undo()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as c, Client(c) as client:
        on_cluster = voxgate.detect_synapses(src, model=MODEL,
                                             segmentation=stores["segmentation"], min_size=20,
                                             block=(8, 64, 64), client=client, progress=False)
    _same(on_cluster, reference)
    # every block-wise step ran on the cluster, the connected components included
    assert on_cluster.attrs["provenance"].details["components_scheduler"] == \
        scheduler_name(client)
