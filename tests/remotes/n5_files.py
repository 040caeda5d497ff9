"""An N5 dataset written as other writers write one, for the N5 tests: the data through
tensorstore's N5 driver (x-first ``dimensions`` and ``blockSize``, as zarr-python v2's N5Store
and every N5 writer store them), then attributes of another writer (funlib.persistence's,
Paintera's, N5's ``resolution``) added to its attributes.json as they would put them; and a
2-D n5-viewer multiscale group written the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts


def n5_dataset(root: Path, data: np.ndarray, attrs: dict[str, Any]) -> tuple[str, Path]:
    """A container ``root`` holding a dataset ``raw`` of ``data`` (C order: [c,] [z,] y, x;
    blocks of at most 2, 2, 6, 10 of its last axes) with ``attrs`` added to its
    attributes.json: the dataset's n5:// URL and the path of that attributes.json."""
    chunks = [min(n, c) for n, c in zip(data.shape, (2, 2, 6, 10)[4 - data.ndim:], strict=True)]
    store = ts.open({
        "driver": "n5", "kvstore": {"driver": "file", "path": str(root / "raw")},
        "metadata": {"dimensions": list(data.shape[::-1]), "blockSize": chunks[::-1],
                     "dataType": str(data.dtype), "compression": {"type": "raw"}},
        "create": True}).result()
    store.write(data.T).result()
    path = root / "raw" / "attributes.json"
    meta = json.loads(path.read_text())
    meta.update(attrs)
    path.write_text(json.dumps(meta))
    (root / "attributes.json").write_text(json.dumps({"n5": "2.0.0"}))
    return f"n5://{root / 'raw'}", path


def n5_viewer_2d(root: Path, data: np.ndarray, *, group_factors: bool = False,
                 scale_factors: bool = False) -> list[np.ndarray]:
    """An n5-viewer multiscale group ``root`` of two 2-D uint8 scales (tensorstore's N5 driver,
    blocks of 8 x 8, raw): s0 ``data`` as stored ([x, y]), s1 every other voxel of it;
    ``pixelResolution`` 5 nm, and the factors ``[[1, 1], [2, 2]]`` in the group's
    attributes.json (``group_factors``) and/or each scale's own ``downsamplingFactors``
    (``scale_factors``).  The two scales' arrays, [x, y]."""
    levels = [data, data[::2, ::2].copy()]
    for i, lv in enumerate(levels):
        store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(root / f"s{i}")},
                         "metadata": {"dimensions": list(lv.shape), "blockSize": [8, 8],
                                      "dataType": "uint8", "compression": {"type": "raw"}}},
                        create=True).result()
        store[...] = lv
        if scale_factors:
            attrs = json.loads((root / f"s{i}" / "attributes.json").read_text())
            attrs["downsamplingFactors"] = [2**i, 2**i]
            (root / f"s{i}" / "attributes.json").write_text(json.dumps(attrs))
    group: dict[str, Any] = {"n5": "2.5.1", "multiScale": True}
    if group_factors:
        group["downsamplingFactors"] = [[1, 1], [2, 2]]
    group["pixelResolution"] = {"unit": "nm", "dimensions": [5.0, 5.0]}
    (root / "attributes.json").write_text(json.dumps(group))
    return levels
