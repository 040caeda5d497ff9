"""write_meshes(progress=True): a bar over the segments written, or over the shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.formats.mesh import Mesh, read_meshes, write_meshes
from voxgate.storage.sharding import ShardingSpec
from voxgate.synthetic import synthetic_labels

VOXEL = (40.0, 8.0, 8.0)


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Mesh]]:
    labels = synthetic_labels((24, 64, 64), cell=(12, 32, 32), seed=5)
    root = tmp_path_factory.mktemp("layer")
    seg = voxgate.create(f"precomputed://file://{root / 'seg'}", shape=labels.shape,
                         chunks=(16, 32, 32), dtype="uint64", voxel_size=VOXEL,
                         kind="segmentation")
    seg[:] = labels
    ids = [int(i) for i in np.unique(labels) if i][:8]
    return root / "seg", dict(voxgate.mesh(seg, ids=ids))


def output(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr()
    return out.out + out.err


@pytest.mark.parametrize("fmt", ["legacy", "multires"])
def test_a_bar_over_the_segments(layer: tuple[Path, dict[int, Mesh]], fmt: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    path, meshes = layer
    write_meshes(str(path), meshes, format=fmt, mesh_dir=f"quiet_{fmt}")
    assert "mesh write" not in output(capsys)
    write_meshes(str(path), meshes, format=fmt, mesh_dir=f"loud_{fmt}", progress=True)
    text = output(capsys)
    assert "mesh write" in text and f"{len(meshes)}/{len(meshes)}" in text
    back = read_meshes(str(path), mesh_dir=f"loud_{fmt}")
    assert sorted(back) == sorted(meshes)


def test_sharded_a_bar_over_the_shards_and_every_mesh_lands(
        layer: tuple[Path, dict[int, Mesh]], capsys: pytest.CaptureFixture[str]) -> None:
    path, meshes = layer
    spec = ShardingSpec(minishard_bits=1, shard_bits=2)
    shards = len(np.unique(spec.locate(np.array(sorted(meshes), np.uint64))[0]))
    assert shards > 1  # the ids spread over several shards
    mesh_dir = path / "sharded"
    mesh_dir.mkdir()
    (mesh_dir / "info").write_text(json.dumps({
        "@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": 16,
        "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0], "lod_scale_multiplier": 1.0,
        "sharding": spec.to_json()}))
    write_meshes(str(path), meshes, format="multires", mesh_dir="sharded", sharded=True,
                 progress=True)
    text = output(capsys)
    assert "mesh shards" in text and f"{shards}/{shards}" in text
    assert len(list(mesh_dir.glob("*.shard"))) == shards
    back = read_meshes(str(path), mesh_dir="sharded")
    assert sorted(back) == sorted(meshes)
    for i, m in meshes.items():
        assert len(back[i].faces) == len(m.faces)
