"""An N5 dataset written as other writers write one, for the N5 tests: the data through
tensorstore's N5 driver (x-first ``dimensions`` and ``blockSize``, as zarr-python v2's N5Store
and every N5 writer store them), then attributes of another writer (funlib.persistence's,
Paintera's, N5's ``resolution``) added to its attributes.json as they would put them."""

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
