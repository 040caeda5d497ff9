"""Reference label data and DVID's label downsampling in numpy, and labelarray instances made
and read by raw HTTP, for the labelarray tests."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import numpy as np

from voxgate.remotes._http import HTTPClient
from voxgate.remotes.dvid import DVIDRepo

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


#: the labelarrays' block size
BS = 16
_names = itertools.count()


def make_labelarray(repo: DVIDRepo, http: httpx.Client, data: np.ndarray,
                    start: tuple[int, int, int], levels: int, status: int = 200) -> str:
    """A new labelarray of ``levels`` coarser scales holding ``data`` at ``start`` (z, y, x),
    POSTed raw; the POST must answer ``status``."""
    name = f"la{next(_names)}"
    repo.create_instance(name, "labelarray", block_size=(BS, BS, BS), max_scale=levels)
    (sz, sy, sx), (oz, oy, ox) = data.shape, start
    r = http.post(f"/api/node/{repo.root}/{name}/raw/0_1_2/{sx}_{sy}_{sz}/{ox}_{oy}_{oz}",
                  content=data.astype("<u8").tobytes())
    assert r.status_code == status, r.text
    return name


def read_raw(http: httpx.Client, repo: DVIDRepo, name: str, shape: tuple[int, int, int],
             start: tuple[int, int, int], scale: int = 0) -> np.ndarray:
    """A raw GET of ``shape`` at ``start`` (z, y, x) of a scale, as uint64."""
    (sz, sy, sx), (oz, oy, ox) = shape, start
    r = http.get(f"/api/node/{repo.root}/{name}/raw/0_1_2/{sx}_{sy}_{sz}/{ox}_{oy}_{oz}"
                 + (f"?scale={scale}" if scale else ""))
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, "<u8").reshape(shape)


class CountingClient(HTTPClient):
    """An HTTPClient that records each request it sends (method, path without the query)."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url, retries=0)
        self.sent: list[tuple[str, str]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.sent.append((method, path.split("?")[0]))
        return super().request(method, path, **kwargs)
