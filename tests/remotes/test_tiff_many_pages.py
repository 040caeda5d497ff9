"""Long multipage TIFF stacks (one page per z slice): reads in bulk at open stay exact, and
stacks whose pages disagree are refused or read page by page, as when every page was parsed.

The pages of a stack are read in bulk at open (``remotes/tiff/ifds.py``: one page per layout
parsed by tifffile, the rest compared with it byte for byte); tifffile writes every input and
reads every expected value.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

import voxgate
from voxgate.errors import CorruptChunkError, InvalidRequestError

N = 5000
SHAPE = (40, 24)


def _stack(n: int, shape: tuple[int, int] = SHAPE, dtype: str = "uint16") -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 60000, (n, *shape)).astype(dtype)


@pytest.fixture(scope="module")
def long_stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,000 uncompressed pages of 5 strips each (the strip tables lie outside the entries)."""
    path = tmp_path_factory.mktemp("many") / "stack.tif"
    tifffile.imwrite(path, _stack(N), photometric="minisblack", metadata=None, rowsperstrip=8)
    return path


def _expected(path: Path, z0: int, z1: int) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        return np.asarray(tf.asarray(key=range(z0, z1))).reshape(z1 - z0, *SHAPE)


def _page_by_page(path: Path, n: int) -> np.ndarray:
    """tifffile's reading of each page on its own (its stack reading takes them all alike)."""
    with tifffile.TiffFile(path) as tf:
        return np.stack([tf.pages[i].asarray() for i in range(n)])


@pytest.mark.parametrize("z0", [0, N // 2 - 7, N - 16])
def test_reads_at_start_middle_end_match_tifffile(long_stack: Path, z0: int) -> None:
    vol = voxgate.open(f"tiff://{long_stack}")
    assert vol.shape == (N, *SHAPE)
    expect = _expected(long_stack, z0, z0 + 16)
    assert np.array_equal(vol[z0:z0 + 16].read(), expect)
    # rows across strip boundaries, columns inside the page
    assert np.array_equal(vol[z0:z0 + 16, 5:33, 3:21].read(), expect[:, 5:33, 3:21])


def test_open_parses_few_pages_whole(long_stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The open parses a handful of pages with tifffile, not all 5,000 (it parsed every page
    whole, the 20 s open of a 70,000-page stack)."""
    parsed = []
    init = tifffile.TiffPage.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        parsed.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffPage, "__init__", counting)
    vol = voxgate.open(f"tiff://{long_stack}")
    assert len(parsed) <= 10, len(parsed)
    assert np.array_equal(vol[N - 1:].read(), _expected(long_stack, N - 1, N))


def test_compressed_stack_and_unpickled_reads(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """zlib pages share their first page's decoder; an unpickled volume (a Dask worker's)
    parses one directory for its first read, not every page."""
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, _stack(300), photometric="minisblack", metadata=None,
                     compression="zlib", rowsperstrip=16)
    vol = voxgate.open(f"tiff://{path}")
    assert vol.meta.scale(0).encoding is not None
    for z0 in (0, 142, 284):
        assert np.array_equal(vol[z0:z0 + 16].read(), _expected(path, z0, z0 + 16))
    again = pickle.loads(pickle.dumps(vol))
    parsed = []
    init = tifffile.TiffPage.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        parsed.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffPage, "__init__", counting)
    assert np.array_equal(again[150:166].read(), _expected(path, 150, 166))
    assert len(parsed) <= 2, len(parsed)


def _write_pages(path: Path, pages: list[tuple[np.ndarray, dict[str, Any]]]) -> None:
    with tifffile.TiffWriter(path) as tw:
        for data, kw in pages:
            tw.write(data, photometric="minisblack", metadata=None, contiguous=False, **kw)


def _odd_stack(path: Path, at: int, data: np.ndarray, **kw: Any) -> np.ndarray:
    """40 uint16 pages with page ``at`` replaced by ``data`` written with ``kw``."""
    base = _stack(40)
    pages: list[tuple[np.ndarray, dict[str, Any]]] = [(p, {}) for p in base]
    pages[at] = (data, kw)
    _write_pages(path, pages)
    return base


# page 20 is none of those tifffile samples to call a stack uniform (1, 7 and the last): the
# bulk read alone sees it; the last page sends the file down tifffile's generic series
@pytest.mark.parametrize("at", [20, 39])
def test_page_of_another_shape_is_refused(tmp_path: Path, at: int) -> None:
    path = tmp_path / "shape.tif"
    _odd_stack(path, at, _stack(1, (40, 32))[0])
    with pytest.raises(InvalidRequestError, match="shape"):
        voxgate.open(f"tiff://{path}")


@pytest.mark.parametrize("at", [20, 39])
def test_page_of_another_dtype_is_refused(tmp_path: Path, at: int) -> None:
    path = tmp_path / "dtype.tif"
    _odd_stack(path, at, _stack(1, SHAPE, "uint8")[0])
    with pytest.raises(InvalidRequestError, match="dtype"):
        voxgate.open(f"tiff://{path}")


def test_compressed_page_at_the_end_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "comp_end.tif"
    _odd_stack(path, 39, _stack(1)[0], compression="zlib")
    with pytest.raises(InvalidRequestError, match="different shapes or dtypes"):
        voxgate.open(f"tiff://{path}")


def test_compressed_page_inside_is_read_with_its_own_codec(tmp_path: Path) -> None:
    """A page compressed among raw ones (where tifffile's uniform check does not look) is read
    with its own compression, as when every page was parsed whole; so is one with other strips."""
    path = tmp_path / "comp_mid.tif"
    odd = _stack(3)[1]
    base = _stack(40)
    pages: list[tuple[np.ndarray, dict[str, Any]]] = [(p, {}) for p in base]
    pages[20] = (odd, {"compression": "zlib"})
    pages[25] = (base[25], {"rowsperstrip": 5})
    _write_pages(path, pages)
    vol = voxgate.open(f"tiff://{path}")
    got = vol.read()
    assert np.array_equal(got, _page_by_page(path, 40))
    assert np.array_equal(got[20], odd)


def test_short_strip_deep_in_the_stack_is_refused(tmp_path: Path) -> None:
    """An uncompressed strip whose byte count is too small for its rows (a corrupt table) is
    refused at open, in a page read in bulk as in one parsed whole."""
    path = tmp_path / "short.tif"
    _write_pages(path, [(p, {"rowsperstrip": 8}) for p in _stack(400)])
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[300].tags["StripByteCounts"]
        at, fmt = tag.valueoffset, tf.byteorder + {3: "u2", 4: "u4", 16: "u8"}[int(tag.dtype)]
    with open(path, "r+b") as fh:
        fh.seek(at + 2 * np.dtype(fmt).itemsize)  # the third strip
        fh.write(np.array([100], fmt).tobytes())
    with pytest.raises(CorruptChunkError, match=r"page 300 .* segment 2"):
        voxgate.open(f"tiff://{path}")
