"""``--scheduler ADDRESS`` on the Service commands (mesh, skeletonize, downsample, cc, stats,
predict, synapses): each run on a 2-process dask LocalCluster writes exactly what the same
command writes without it, and the cluster did run its blocks; an unreachable address fails
at once naming it, ``--workers`` beside ``--scheduler`` is a usage error; ``cc --dtype``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

import voxgate
from voxgate.cli import main
from voxgate.synthetic import synapses, synthetic_labels

from .ports import free_port
from .services.onnx_models import conv_model

SHAPE = (24, 48, 64)
CHUNKS = (8, 16, 32)
VOXEL = (40, 8, 8)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as c:
        yield c


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return synthetic_labels(SHAPE, cell=(8, 16, 16), seed=5)


def _seg(url: str, labels: np.ndarray) -> str:
    vol = voxgate.create(url, shape=labels.shape, chunks=CHUNKS, dtype="uint64",
                         voxel_size=VOXEL, kind="segmentation")
    vol[:] = labels
    return vol.url


@pytest.fixture(scope="module")
def seg(labels: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _seg(f"zarr://{tmp_path_factory.mktemp('seg')}/seg.zarr", labels)


def _run(args: list[str]) -> Result:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res


def _on(cluster: Any, args: list[str]) -> Result:
    """The command with --scheduler; asserts that the scheduler ran tasks for it."""
    before = cluster.scheduler.transition_counter
    res = _run([*args, "--scheduler", cluster.scheduler_address])
    assert cluster.scheduler.transition_counter > before, "no task ran on the cluster"
    return res


def _same_files(a: Path, b: Path) -> int:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and names
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    return len(names)


def test_stats(cluster: Any, seg: str, labels: np.ndarray, tmp_path: Path) -> None:
    _run(["stats", seg, "--csv", str(tmp_path / "here.csv")])
    _on(cluster, ["stats", seg, "--csv", str(tmp_path / "there.csv")])
    here = (tmp_path / "here.csv").read_text()
    assert here == (tmp_path / "there.csv").read_text()
    assert len(here.splitlines()) == len(np.unique(labels[labels != 0])) + 1


def test_mesh_and_skeletonize(cluster: Any, seg: str, tmp_path: Path) -> None:
    # a volume this small is done in one piece here unless --block asks for blocks
    block = ["--block", "8,16,32"]
    _run(["mesh", seg, "--obj-dir", str(tmp_path / "obj-here"), *block])
    res = _on(cluster, ["mesh", seg, "--obj-dir", str(tmp_path / "obj-there"), *block])
    n = _same_files(tmp_path / "obj-here", tmp_path / "obj-there")
    assert f"wrote {n} OBJ files" in res.output
    _run(["mesh", seg, "--obj-dir", str(tmp_path / "obj-whole")])
    # the same ids as the whole volume in one piece (whose vertices come in another order)
    assert sorted(os.listdir(tmp_path / "obj-whole")) == sorted(os.listdir(tmp_path / "obj-there"))

    args = ["--dust", "10", *block]
    _run(["skeletonize", seg, "--swc-dir", str(tmp_path / "swc-here"), *args])
    _on(cluster, ["skeletonize", seg, "--swc-dir", str(tmp_path / "swc-there"), *args])
    _same_files(tmp_path / "swc-here", tmp_path / "swc-there")


def test_downsample(cluster: Any, labels: np.ndarray, tmp_path: Path) -> None:
    here = _seg(f"zarr://{tmp_path}/here.zarr", labels)
    there = _seg(f"zarr://{tmp_path}/there.zarr", labels)
    args = ["--num-scales", "3", "--block", "8,16,32"]
    _run(["downsample", here, *args])
    res = _on(cluster, ["downsample", there, *args])
    assert "scale 2: 24 x 12 x 16 voxels" in res.output
    a, b = voxgate.open(here), voxgate.open(there)
    assert [s.shape for s in a.scales] == [s.shape for s in b.scales]
    for s in range(3):
        got = b.at_scale(s).read()
        np.testing.assert_array_equal(got, a.at_scale(s).read())
        assert got.dtype == np.uint64


def test_cc_and_its_dtype(cluster: Any, seg: str, tmp_path: Path) -> None:
    whole = voxgate.connected_components(seg)  # the whole-volume answer (cc3d in one piece)
    block = ["--block", "8,16,32"]
    res = _run(["cc", seg, f"zarr://{tmp_path}/here.zarr", *block])
    assert f"{int(whole.max())} components" in res.output and "(uint64)" in res.output
    res = _on(cluster, ["cc", seg, f"zarr://{tmp_path}/there.zarr", *block])
    assert "(uint64)" in res.output
    here, there = voxgate.open(f"zarr://{tmp_path}/here.zarr"), \
        voxgate.open(f"zarr://{tmp_path}/there.zarr")
    np.testing.assert_array_equal(there.read(), here.read())
    np.testing.assert_array_equal(there.read(), np.asarray(whole))

    # uint32 ids, here and on the cluster
    _run(["cc", seg, f"zarr://{tmp_path}/u32-here.zarr", "--dtype", "uint32", *block])
    res = _on(cluster, ["cc", seg, f"zarr://{tmp_path}/u32.zarr", "--dtype", "uint32", *block])
    assert "(uint32)" in res.output
    u32 = voxgate.open(f"zarr://{tmp_path}/u32.zarr")
    assert u32.dtype == np.uint32
    np.testing.assert_array_equal(u32.read(), voxgate.open(
        f"zarr://{tmp_path}/u32-here.zarr").read())
    np.testing.assert_array_equal(u32.read(), np.asarray(whole))

    # auto: a new OUT is uint64 (its type is fixed before the count is known); an existing
    # uint32 OUT rewritten with --overwrite stays uint32 (uint64, the default, refuses it)
    res = _on(cluster, ["cc", seg, f"zarr://{tmp_path}/auto.zarr", "--dtype", "auto", *block])
    assert "(uint64)" in res.output
    res = _on(cluster, ["cc", seg, u32.url, "--dtype", "auto", "--overwrite", *block])
    assert "(uint32)" in res.output
    np.testing.assert_array_equal(voxgate.open(u32.url).read(), np.asarray(whole))
    res = CliRunner().invoke(main, ["cc", seg, u32.url, "--overwrite", *block])
    assert res.exit_code == 1 and "uint64 volume" in res.output and "uint32" in res.output

    res = CliRunner().invoke(main, ["cc", seg, f"zarr://{tmp_path}/bad.zarr", "--dtype", "int16"])
    assert res.exit_code == 2 and "'int16' is not one of 'uint64', 'uint32', 'auto'" in res.output
    assert not (tmp_path / "bad.zarr").exists()


@pytest.fixture(scope="module")
def em(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("em")
    syn = synapses((16, 96, 96), seed=21, voxel_size=VOXEL, density=2.0)
    img = voxgate.create(f"zarr://{d}/img.zarr", shape=syn.image.shape, chunks=(8, 32, 32),
                         dtype="uint8", voxel_size=VOXEL)
    img[:] = syn.image
    seg = _seg(f"zarr://{d}/seg.zarr", syn.labels)
    return {"img": img.url, "seg": seg, "model": str(conv_model(d / "conv.onnx", seed=7))}


def test_predict(cluster: Any, em: dict[str, str], tmp_path: Path) -> None:
    args = ["--block", "8,32,32", "--device", "cpu"]
    _run(["predict", em["model"], em["img"], f"zarr://{tmp_path}/here.zarr", *args])
    res = _on(cluster, ["predict", em["model"], em["img"], f"zarr://{tmp_path}/there.zarr",
                        *args])
    assert "blocks of (8, 32, 32)" in res.output
    there = voxgate.open(f"zarr://{tmp_path}/there.zarr").read()
    assert there.dtype == np.uint8 and there.any()
    np.testing.assert_array_equal(there, voxgate.open(f"zarr://{tmp_path}/here.zarr").read())


def test_synapses(cluster: Any, em: dict[str, str], tmp_path: Path) -> None:
    args = ["--model", em["model"], "--segmentation", em["seg"], "--threshold", "0.6",
            "--min-size", "5", "--block", "8,32,32", "--device", "cpu"]
    _run(["synapses", em["img"], "--csv", str(tmp_path / "here.csv"), *args])
    res = _on(cluster, ["synapses", em["img"], "--csv", str(tmp_path / "there.csv"), *args])
    here = (tmp_path / "here.csv").read_text()
    assert here == (tmp_path / "there.csv").read_text()
    n = len(here.splitlines()) - 1
    assert n > 0 and f"{n} synapses written" in res.output


def _closed_port() -> int:
    """A port nothing listens on, which no other process takes during the test
    (tests/ports.py)."""
    return free_port()


def test_an_unreachable_scheduler_fails_at_once_naming_it(seg: str, tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_closed_port()}"
    commands = [["stats", seg], ["mesh", seg, "--obj-dir", str(tmp_path / "obj")],
                ["cc", seg, f"zarr://{tmp_path}/cc.zarr"], ["downsample", seg]]
    for args in commands:
        res = CliRunner().invoke(main, [*args, "--scheduler", address])
        assert res.exit_code == 1, (args, res.output)
        # refused at once by the probe (not after dask's 30 s connect timeout)
        assert f"cannot reach a dask scheduler at '{address}'" in res.output
        assert "Connection refused" in res.output
    assert not (tmp_path / "cc.zarr").exists() and not (tmp_path / "obj").exists()
    assert len(voxgate.open(seg).scales) == 1
    res = CliRunner().invoke(main, ["stats", seg, "--scheduler", "no-port-here"])
    assert res.exit_code == 1 and "'no-port-here'" in res.output
    assert "missing port number" in res.output


def test_workers_with_scheduler_is_a_usage_error(cluster: Any, seg: str, em: dict[str, str],
                                                 tmp_path: Path) -> None:
    address = cluster.scheduler_address
    commands = [
        ["downsample", seg],
        ["skeletonize", seg, "--swc-dir", str(tmp_path / "swc")],
        ["predict", em["model"], em["img"], f"zarr://{tmp_path}/p.zarr"],
        ["synapses", em["img"], "--model", em["model"]],
    ]
    before = cluster.scheduler.transition_counter
    for args in commands:
        res = CliRunner().invoke(main, [*args, "--workers", "2", "--scheduler", address])
        assert res.exit_code == 2, (args, res.output)
        assert "--workers" in res.output and "--scheduler" in res.output
    assert cluster.scheduler.transition_counter == before  # nothing ran
    assert not (tmp_path / "p.zarr").exists() and not (tmp_path / "swc").exists()
    assert len(voxgate.open(seg).scales) == 1
