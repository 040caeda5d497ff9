"""Reference label data and DVID's label downsampling in numpy, for the labelarray tests."""

from __future__ import annotations

import numpy as np

BIG1, BIG2, SMALL = 2**53 + 1, 2**63 + 5, 7  # ids a float64 cannot hold, and a small one


def mode2(a: np.ndarray) -> np.ndarray:
    """Reference 2x label downsampling: most frequent non-zero id of each 2x2x2 cell, the
    smaller on a tie, 0 when all are 0 (labels/compressed.go downresArray)."""
    out = np.zeros(tuple(s // 2 for s in a.shape), dtype=a.dtype)
    for z, y, x in np.ndindex(out.shape):
        cell = a[2 * z:2 * z + 2, 2 * y:2 * y + 2, 2 * x:2 * x + 2].ravel()
        ids, counts = np.unique(cell[cell != 0], return_counts=True)
        if len(ids):
            out[z, y, x] = ids[counts == counts.max()].min()
    return out


def blob_labels(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Labels in blobs of 4^3 (so every id spans several blocks and survives the
    downsampling) drawn from 0, BIG1, BIG2, SMALL and 9."""
    rng = np.random.default_rng(seed)
    ids = np.array([0, BIG1, BIG2, SMALL, 9], dtype=np.uint64)
    coarse = ids[rng.integers(0, len(ids), size=tuple(s // 4 for s in shape))]
    return coarse.repeat(4, 0).repeat(4, 1).repeat(4, 2)
