"""Block-wise meshes stitched as blocks arrive: any arrival order gives the arrays of the plan
order, every segment has zmesh's whole-volume triangles, ids in disjoint parts of the volume
included (stitched again when a later piece comes)."""

from __future__ import annotations

import importlib
import random
from typing import Any

import numpy as np
import zmesh

from voxgate.blockwise import plan_blocks
from voxgate.geometry import Box, Vec
from voxgate.services._common import as_volume
from voxgate.services._mesh_stitch import Stitcher, touches
from voxgate.synthetic import synthetic_labels

mesh_module = importlib.import_module("voxgate.services.mesh")

VS = (40, 8, 4)


def _labels() -> np.ndarray:
    lab = synthetic_labels((13, 22, 31), cell=(5, 9, 11), seed=3).astype(np.uint64)
    # one id in two far corners: its pieces never touch, so it is stitched before all come
    lab[:3, :4, :5] = 99
    lab[-3:, -4:, -5:] = 99
    return lab


def _triangles(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    t = vertices[faces].reshape(len(faces), 3, 3)
    t = t[np.arange(len(t))[:, None], np.lexsort(t.transpose(2, 0, 1)[::-1])]
    return np.unique(t.reshape(len(faces), 9), axis=0)


def _pieces(labels: np.ndarray, block: tuple[int, int, int]) -> tuple[Any, Box, list[Any]]:
    vol = as_volume(labels, voxel_size=VS, kind="segmentation")
    region = vol.bounds
    blocks = plan_blocks(region, Vec.of(block))
    return vol, region, [(b, mesh_module._block_pieces(vol, region, VS, None, True, b))
                         for b in blocks]


def test_any_arrival_order_gives_the_plan_order_arrays() -> None:
    labels = _labels()
    _, region, got = _pieces(labels, (4, 7, 10))
    order = {b.index: n for n, (b, _) in enumerate(got)}
    results = []
    for seed in (None, 1, 2):
        seq = list(got) if seed is None else random.Random(seed).sample(got, len(got))
        st = Stitcher(order, region, VS)
        for b, packed in seq:
            st.add(b.index, b.box, *mesh_module._unpack(packed))
        results.append(st.finish())
    m = zmesh.Mesher((VS[2], VS[1], VS[0]))
    m.mesh(labels.T)
    ref = {int(i): m.get(i, normals=False, voxel_centered=True) for i in m.ids()}
    first = results[0]
    assert set(first) == set(ref) and list(first) == sorted(first)
    for i, r in ref.items():
        assert len(first[i].vertices) == len(r.vertices) and len(first[i].faces) == len(r.faces)
        np.testing.assert_array_equal(_triangles(first[i].vertices, first[i].faces),
                                      _triangles(r.vertices, r.faces))
    for other in results[1:]:
        assert all(first[i] == other[i] for i in first)


def test_a_later_piece_stitches_again() -> None:
    labels = _labels()
    _, region, got = _pieces(labels, (4, 7, 10))
    order = {b.index: n for n, (b, _) in enumerate(got)}
    st = Stitcher(order, region, VS)
    for b, packed in got:
        st.add(b.index, b.box, *mesh_module._unpack(packed))
        if b.index == got[0][0].index:
            assert 99 in st.done  # its corner piece reaches no neighbour: stitched at once
    assert st.stitches == len(st.done) + 1  # 99 once more, with its far piece
    assert len(st.parts[99]) == 2


def test_touches_are_the_ids_on_each_inner_face() -> None:
    lab = np.zeros((4, 4, 4), np.uint64)
    lab[0, 1, 1] = 5  # on the block's lower z face
    lab[3, 2, 2] = 6  # on the extra layer: the upper z face
    lab[1, 1, 3] = 7  # on the upper x face
    region = Box(Vec(0, 0, 0), Vec(9, 9, 9))
    box = Box(Vec(2, 2, 2), Vec(5, 5, 5))
    ext = Box(box.start, box.stop + Vec(1, 1, 1))
    bits = touches(lab, ext, box, region, [5, 6, 7, 8])
    assert bits.tolist() == [1, 2, 32, 0]
