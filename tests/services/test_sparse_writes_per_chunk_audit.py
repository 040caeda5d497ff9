"""Into an existing output, a Service leaves out the chunks of only 0 whose own chunks are
absent, whatever the rest of their block holds.

connected_components and predict write their output block by block, leaving out the write
units of only the fill value where the output holds nothing (``voxgate.absence.write_sparse``).
Of an output that already exists (``overwrite=True``, or a given Volume), "holds nothing" was
asked a bit per block: a block holding one stale chunk wrote every unit of only 0 it has,
zeros and all.  Now the output's scan keeps a bit per chunk (``voxgate.absence.chunk_blocks``):
only the stale chunk is written (with its zeros, so the old labels are gone); the block's other
chunks of 0 stay absent.  The results equal cc3d / the model run on the whole image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.services.predict import probability_to_uint8, to_unit_float

SHAPE = (16, 36, 30)
CHUNKS = (4, 6, 5)
BLOCK = (8, 12, 10)  # 2 x 2 x 2 chunks
#: a stale chunk (relative voxel box) in a block where the result is all 0
STALE = ((8, 24, 20), (12, 30, 25))
META = {"zarr.json", ".zarray", ".zgroup", ".zattrs", "attributes.json", "info"}


def _files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")
            if p.is_file() and p.name not in META}


def _chunks_holding(data: np.ndarray) -> int:
    n = 0
    for z in range(0, SHAPE[0], CHUNKS[0]):
        for y in range(0, SHAPE[1], CHUNKS[1]):
            for x in range(0, SHAPE[2], CHUNKS[2]):
                n += bool(data[z:z + CHUNKS[0], y:y + CHUNKS[1], x:x + CHUNKS[2]].any())
    return n


def _stale_output(url: str, dtype: str) -> None:
    """An existing output holding one chunk of old values, every other chunk absent."""
    out = voxgate.create(url, shape=SHAPE, dtype=dtype, chunks=CHUNKS, voxel_size=(8, 8, 8))
    (z0, y0, x0), (z1, y1, x1) = STALE
    out[z0:z1, y0:y1, x0:x1] = np.full((z1 - z0, y1 - y0, x1 - x0), 99, dtype)


@pytest.mark.parametrize("scheme,ext", [("zarr", ".zarr"), ("n5", ".n5")])
def test_connected_components_over_an_output_with_one_stale_chunk(
        tmp_path: Path, scheme: str, ext: str) -> None:
    import cc3d

    seg = np.zeros(SHAPE, np.uint64)
    seg[1:3, 2:5, 1:4] = 4  # one object, in the first chunk
    src = voxgate.create(f"{scheme}://{tmp_path}/seg{ext}", shape=SHAPE, dtype="uint64",
                         chunks=CHUNKS, voxel_size=(8, 8, 8), kind="segmentation")
    src[0:4, 0:6, 0:5] = seg[0:4, 0:6, 0:5]  # (only the chunk holding it is stored)
    url = f"{scheme}://{tmp_path}/cc{ext}"
    _stale_output(url, "uint64")
    stale_files = _files(tmp_path / f"cc{ext}")
    assert len(stale_files) == 1
    voxgate.connected_components(src, out=url, overwrite=True, block=BLOCK, progress=False)
    want = cc3d.connected_components(seg, connectivity=26)
    np.testing.assert_array_equal(voxgate.open(url).read(), want)
    # the object's chunk, and the stale chunk written over with its zeros: nothing else
    files = _files(tmp_path / f"cc{ext}")
    assert stale_files <= files and len(files) == _chunks_holding(want) + 1, sorted(files)


def _sqrt(x: np.ndarray) -> np.ndarray:
    return np.sqrt(x)


def test_predict_into_an_output_with_one_stale_chunk(tmp_path: Path) -> None:
    img = np.zeros(SHAPE, np.uint8)
    img[0:3, 0:5, 0:4] = np.arange(60, dtype=np.uint8).reshape(3, 5, 4) + 1
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=SHAPE, dtype="uint8",
                         chunks=CHUNKS, voxel_size=(8, 8, 8))
    src[0:4, 0:6, 0:5] = img[0:4, 0:6, 0:5]
    url = f"zarr://{tmp_path}/pred.zarr"
    _stale_output(url, "uint8")
    stale_files = _files(tmp_path / "pred.zarr")
    voxgate.predict(_sqrt, src, url, overwrite=True, block=BLOCK, progress=False)
    want = probability_to_uint8(np.sqrt(to_unit_float(img)))
    np.testing.assert_array_equal(voxgate.open(url).read(), want)
    files = _files(tmp_path / "pred.zarr")
    assert stale_files <= files and len(files) == _chunks_holding(want) + 1, sorted(files)
