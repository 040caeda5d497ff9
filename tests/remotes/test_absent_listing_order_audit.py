"""Absent chunks are asked for in pieces cut along the axis the store's chunk names list first.

``voxgate.absence.absent_in`` cuts a region into pieces of at most ``_ABSENT_PIECE`` chunks and
asks each.  The cut was along x for every store (a precomputed layer names its chunks x
first), but a zarr array names them ``c/z/y/x``: a piece of one x column could not be narrowed
by a key prefix, so each piece listed every key of the array (8 pieces of a 512-chunk array:
4096 keys listed, not 512).  Now each store says its order (``Remote.listing_order``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.absence as absence
from voxgate.remotes import _tensorstore

SHAPE = (24, 40, 56)  # 8 x 8 x 8 chunks of (3, 5, 7)
CHUNKS = (3, 5, 7)


def _filled(url: str, skip: set[tuple[int, int, int]]) -> Any:
    vol = voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=CHUNKS, voxel_size=(1, 1, 1))
    for g in np.ndindex(8, 8, 8):
        if g in skip:
            continue
        z, y, x = (a * c for a, c in zip(g, CHUNKS, strict=True))
        vol[z:z + 3, y:y + 5, x:x + 7] = 1
    return voxgate.open(url)


@pytest.mark.parametrize("scheme,order", [("zarr", (0, 1, 2)), ("n5", (2, 1, 0))])
def test_pieces_follow_the_order_keys_are_named_in(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   scheme: str, order: tuple[int, ...]) -> None:
    skip = {(0, 0, 0), (3, 7, 1), (7, 7, 7)}
    vol = _filled(f"{scheme}://{tmp_path}/a.{scheme}", skip)
    assert vol.remote.listing_order(0) == order
    parsed = 0
    real = _tensorstore._ChunkKeys._parse

    def parse(self: Any, raw: bytes, n: int) -> Any:
        nonlocal parsed
        parsed += 1
        return real(self, raw, n)

    monkeypatch.setattr(_tensorstore._ChunkKeys, "_parse", parse)
    monkeypatch.setattr(absence, "_ABSENT_PIECE", 64)  # (8 pieces of one slab each)
    found, total = absence.absent_in(vol.remote, vol.bounds, 0)
    assert total == 3 and {tuple(g) for g in found} == skip
    # each stored key once in all (x-first pieces of the zarr array listed all 509 eight times)
    assert parsed <= 512 + 16, parsed


def test_precomputed_keeps_x_first(tmp_path: Path) -> None:
    vol = voxgate.create(f"precomputed://{tmp_path}/p", shape=SHAPE, dtype="uint8",
                         chunks=CHUNKS, voxel_size=(1, 1, 1))
    assert vol.remote.listing_order(0) == (2, 1, 0)
