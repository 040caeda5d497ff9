"""predict over a mostly absent source reads only the windows that touch stored chunks, and
writes only the output chunks that hold something other than the fill value (or held older
data).

Before, every block's input window was read, absent chunks included (on object storage a
GET answered 404 per chunk), and every block's output was written, zeros included.  Now a
window (block, halo and padding) that touches no stored chunk of the source
(``voxgate.absence.background_groups``) is the fill value 0, not read, and takes the model's
answer for a window of 0 (computed once per key); output chunks of only 0 are left absent in
a store the call created, and written where an existing output held a chunk (never stale).
Every result is compared with the same predict reading everything (a store that cannot tell
absent chunks), and with the model run on the whole image.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate import Box, Vec
from voxgate.remotes.zarr import ZarrRemote
from voxgate.services.predict import probability_to_uint8, to_unit_float

from ..test_copy_sparse_skip_audit import _chunk_reads, _counting_proxy

predict_module = importlib.import_module("voxgate.services.predict")

#: odd shape at an odd offset: 5 x 6 x 7 blocks of one chunk each, partial at the far faces
SHAPE = (37, 181, 213)
OFFSET = (3, 5, 7)
CHUNKS = (8, 32, 32)
#: boxes (relative to the volume's start) holding data: a corner, one across a chunk border
#: in the middle, the far (partial) corner; everything else absent
STORED = [((0, 0, 0), (5, 20, 17)), ((18, 90, 100), (22, 100, 110)),
          ((35, 170, 200), (37, 181, 213))]
#: the object-storage source: smaller, blocks of one chunk, no halo (one GET per block)
S3_SHAPE, S3_CHUNKS = (16, 64, 64), (4, 16, 16)
S3_STORED = [((0, 0, 0), (2, 3, 4)), ((9, 20, 40), (11, 37, 47))]
UNET_HALO = Vec(4, 24, 24)
CHUNK_FILE = re.compile(r"/c/\d+/\d+/\d+$")


def _image(shape: tuple[int, ...] = SHAPE, stored: list[Any] = STORED) -> np.ndarray:
    img = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(7)
    for a, b in stored:
        sl = tuple(slice(x, y) for x, y in zip(a, b, strict=True))
        img[sl] = rng.integers(0, 256, tuple(y - x for x, y in zip(a, b, strict=True)),
                               dtype=np.uint8)
    return img


def _make_source(url: str, shape: tuple[int, ...] = SHAPE, chunks: tuple[int, ...] = CHUNKS,
                 stored: list[Any] = STORED) -> voxgate.Volume:
    src = voxgate.create(url, shape=shape, dtype="uint8", chunks=chunks, voxel_size=(40, 8, 8),
                         offset=OFFSET)
    img = _image(shape, stored)
    o = src.bounds.start
    for a, b in stored:
        box = Box(o + Vec(*a), o + Vec(*b))
        src.remote.write(box, img[box.slices(o)], 0)
    return src


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> voxgate.Volume:
    return _make_source(f"zarr://{tmp_path_factory.mktemp('src')}/src.zarr")


class _Reads:
    """The boxes read from the store at ``url`` (ZarrRemote.read wrapped)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
        self.boxes: list[Box] = []
        real = ZarrRemote.read

        def read(remote: Any, box: Box, scale: int = 0) -> np.ndarray:
            if remote.url == url:
                self.boxes.append(box)
            return real(remote, box, scale)

        monkeypatch.setattr(ZarrRemote, "read", read)


def _brute(monkeypatch: pytest.MonkeyPatch, model: Any, src: Any, **kw: Any) -> np.ndarray:
    """The same predict reading every window and writing every block whole: as on a store
    that cannot tell absent chunks."""
    with monkeypatch.context() as m:
        m.setattr(predict_module, "background_groups", lambda *a, **k: None, raising=False)
        return np.asarray(voxgate.predict(model, src, progress=False, **kw))


def _chunk_files(path: Path) -> set[tuple[int, int, int]]:
    """The chunk files of a zarr v3 array's scale 0, by grid index."""
    out = set()
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if CHUNK_FILE.search(p):
                z, y, x = p.split("/c/")[1].split("/")
                out.add((int(z), int(y), int(x)))
    return out


def _nonzero_chunks(arr: np.ndarray) -> set[tuple[int, int, int]]:
    """The chunks (grid anchored at the volume's start) of ``arr`` holding a non-zero voxel."""
    out = set()
    for idx in np.ndindex(*(-(-s // c) for s, c in zip(arr.shape, CHUNKS, strict=True))):
        sl = tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, CHUNKS, strict=True))
        if arr[sl].any():
            out.add(idx)
    return out


def _all_chunks() -> set[tuple[int, int, int]]:
    return set(np.ndindex(*(-(-s // c) for s, c in zip(SHAPE, CHUNKS, strict=True))))


def _windows_touching_data(src: voxgate.Volume, block: Vec, halo: Vec,
                           step: Vec) -> tuple[int, int]:
    """How many blocks (whole chunks from the volume's start) have an input window (as
    ``_infer`` widens it, clipped) touching a chunk that holds data, and how many blocks."""
    region = src.bounds
    o = region.start
    held = [Box(o + Vec(*(a // c * c for a, c in zip(a0, CHUNKS, strict=True))),
                o + Vec(*(-(-b // c) * c for b, c in zip(b0, CHUNKS, strict=True))))
            for a0, b0 in STORED]
    n = total = 0
    for z in range(o.z, region.stop.z, block.z):
        for y in range(o.y, region.stop.y, block.y):
            for x in range(o.x, region.stop.x, block.x):
                b = Box(Vec(z, y, x), Vec(z, y, x) + block).intersect(region)
                lo = Vec(*(r + (a - r) // s * s for a, r, s in zip(b.start - halo, o, step,
                                                                    strict=True)))
                hi = Vec(*(r + -(-(a - r) // s) * s for a, r, s in zip(b.stop + halo, o, step,
                                                                        strict=True)))
                ext = Box(lo, hi).intersect(region)
                total += 1
                n += any(not ext.intersect(h).is_empty() for h in held)
    return n, total


@pytest.fixture(scope="module")
def whole_unet() -> np.ndarray:
    """synapse-unet run once on the whole image by onnxruntime (zero padding to its step)."""
    import onnxruntime as ort

    from voxgate.models import resolve_model

    sess = ort.InferenceSession(str(resolve_model("synapse-unet")),
                                providers=["CPUExecutionProvider"])
    x = _image().astype(np.float32) / 255
    xp = np.pad(x, [(0, 0), (0, -x.shape[1] % 4), (0, -x.shape[2] % 4)])
    p = sess.run(None, {sess.get_inputs()[0].name: xp[None, None]})[0][0, 0]
    return np.asarray(p[:, :x.shape[1], :x.shape[2]])


# -- 1. zarr on local disk ------------------------------------------------------------------------

def test_unet_reads_only_windows_touching_data_and_writes_only_nonzero_chunks(
        source: voxgate.Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        whole_unet: np.ndarray) -> None:
    want = _brute(monkeypatch, "synapse-unet", source, block=CHUNKS)
    # (and the model on the whole image: block-wise output is it up to float rounding)
    whole = probability_to_uint8(whole_unet)
    assert int(np.abs(want.astype(int) - whole.astype(int)).max()) <= 1
    reads = _Reads(monkeypatch, source.url)
    out = voxgate.predict("synapse-unet", source, f"zarr://{tmp_path}/out.zarr", block=CHUNKS,
                          progress=False)
    np.testing.assert_array_equal(out.read(), want)
    touching, blocks = _windows_touching_data(source, Vec(*CHUNKS), UNET_HALO, Vec(1, 4, 4))
    assert blocks == 210 and touching < blocks // 3
    # the windows touching stored chunks, and the one absent chunk read to know the fill value
    assert len(reads.boxes) == touching + 1, reads.boxes
    # the model answers 0 (uint8) over black: only the chunks of non-zero output are stored
    assert out.remote.grid_bounds(0).start == source.bounds.start
    nonzero = _nonzero_chunks(want)
    assert 0 < len(nonzero) < len(_all_chunks())
    assert _chunk_files(tmp_path / "out.zarr") == nonzero


def _sqrt_model(x: np.ndarray) -> np.ndarray:
    return np.sqrt(x)


def test_callable_reads_only_windows_touching_data(
        source: voxgate.Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    halo = (2, 8, 8)
    img = _image()
    want = probability_to_uint8(np.sqrt(to_unit_float(img)))  # (pointwise: exact)
    np.testing.assert_array_equal(_brute(monkeypatch, _sqrt_model, source, block=CHUNKS,
                                         halo=halo), want)
    reads = _Reads(monkeypatch, source.url)
    out = voxgate.predict(_sqrt_model, source, f"zarr://{tmp_path}/out.zarr", block=CHUNKS,
                          halo=halo, progress=False)
    np.testing.assert_array_equal(out.read(), want)
    touching, blocks = _windows_touching_data(source, Vec(*CHUNKS), Vec(*halo), Vec(1, 1, 1))
    assert len(reads.boxes) == touching + 1 and touching < blocks // 3, reads.boxes
    assert _chunk_files(tmp_path / "out.zarr") == _nonzero_chunks(want)
    # the in-memory result too
    np.testing.assert_array_equal(
        voxgate.predict(_sqrt_model, source, block=CHUNKS, halo=halo, progress=False), want)


# -- 2. object storage: chunk GETs --------------------------------------------------------------

def test_s3_source_chunk_gets_drop(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"zarr://s3://{s3_bucket}/img"
    src = _make_source(url, S3_SHAPE, S3_CHUNKS, S3_STORED)
    want = probability_to_uint8(np.sqrt(to_unit_float(_image(S3_SHAPE, S3_STORED))))

    def run(full: bool) -> tuple[np.ndarray, int]:
        proxy, log = _counting_proxy(os.environ["VOXGATE_S3_ENDPOINT"])
        try:
            with monkeypatch.context() as m:
                m.setenv("VOXGATE_S3_ENDPOINT", proxy.url)
                if full:
                    m.setattr(predict_module, "background_groups", lambda *a, **k: None,
                              raising=False)
                got = np.asarray(voxgate.predict(_sqrt_model, voxgate.open(url),
                                                 block=S3_CHUNKS, progress=False))
        finally:
            proxy.close()
        return got, _chunk_reads(log)

    got_full, gets_full = run(True)
    got, gets = run(False)
    np.testing.assert_array_equal(got_full, want)
    np.testing.assert_array_equal(got, want)
    assert src.bounds == voxgate.open(url).bounds
    # every chunk read (64, all but 3 answered 404) before; now the 3 stored ones and the
    # absent one read to know the fill value
    assert gets_full == 64 and gets == 4, (gets, gets_full)


# -- 3. an existing output holding older data ----------------------------------------------------

@pytest.mark.parametrize("how", ["volume", "overwrite"])
def test_old_data_where_the_new_output_is_zero_is_overwritten(
        source: voxgate.Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        how: str) -> None:
    halo = (2, 8, 8)
    want = probability_to_uint8(np.sqrt(to_unit_float(_image())))
    url = f"zarr://{tmp_path}/out.zarr"
    old = voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=CHUNKS, voxel_size=(40, 8, 8),
                         offset=OFFSET)
    o = old.bounds.start
    # old data in chunks where the new output is 0 (one of them cut by a block's halo), in
    # one where it is not, and absent elsewhere
    old_chunks = {(3, 4, 3), (1, 2, 0), (2, 2, 2), (0, 0, 0)}
    for idx in old_chunks:
        start = o + Vec(*(i * c for i, c in zip(idx, CHUNKS, strict=True)))
        box = Box(start, start + Vec(*CHUNKS)).intersect(old.bounds)
        old.remote.write(box, np.full(tuple(box.shape), 77, np.uint8), 0)
    assert _chunk_files(tmp_path / "out.zarr") == old_chunks
    out: Any = voxgate.open(url, mode="r+") if how == "volume" else url
    got = voxgate.predict(_sqrt_model, source, out, block=CHUNKS, halo=halo, progress=False,
                          overwrite=how == "overwrite")
    np.testing.assert_array_equal(got.read(), want)
    np.testing.assert_array_equal(voxgate.open(url).read(), want)
    # the old chunks rewritten (zeros and all), the absent ones of 0 left absent
    assert _chunk_files(tmp_path / "out.zarr") == old_chunks | _nonzero_chunks(want)


# -- 4. outputs that are not 0 over black --------------------------------------------------------

def test_float32_unet_output_over_black_is_written(
        source: voxgate.Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        whole_unet: np.ndarray) -> None:
    want = _brute(monkeypatch, "synapse-unet", source, block=CHUNKS, dtype="float32")
    np.testing.assert_allclose(want, whole_unet, rtol=0, atol=2e-3)
    reads = _Reads(monkeypatch, source.url)
    out = voxgate.predict("synapse-unet", source, f"zarr://{tmp_path}/out.zarr", block=CHUNKS,
                          dtype="float32", progress=False)
    got = out.read()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # (about 1e-5 over black, not the fill value: a chunk whose window holds no data)
    assert float(got[0:8, 160:181, 128:160].min()) > 0
    touching, _ = _windows_touching_data(source, Vec(*CHUNKS), UNET_HALO, Vec(1, 4, 4))
    assert len(reads.boxes) == touching + 1
    assert _chunk_files(tmp_path / "out.zarr") == _all_chunks()


def _inverse_model(x: np.ndarray) -> np.ndarray:
    return 1.0 - x


@pytest.mark.parametrize("out", ["zarr", "memory"])
def test_model_not_zero_on_black(source: voxgate.Volume, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, out: str) -> None:
    want = probability_to_uint8(1.0 - to_unit_float(_image()))
    assert int(want.min()) == 0 < int(want[tuple(s // 2 for s in SHAPE)])
    np.testing.assert_array_equal(_brute(monkeypatch, _inverse_model, source, block=CHUNKS),
                                  want)
    reads = _Reads(monkeypatch, source.url)
    target = None if out == "memory" else f"zarr://{tmp_path}/out.zarr"
    got = voxgate.predict(_inverse_model, source, target, block=CHUNKS, progress=False)
    np.testing.assert_array_equal(np.asarray(got) if target is None else got.read(), want)
    touching, _ = _windows_touching_data(source, Vec(*CHUNKS), Vec(0, 0, 0), Vec(1, 1, 1))
    assert len(reads.boxes) == touching + 1
    if target is not None:
        assert _chunk_files(tmp_path / "out.zarr") == _all_chunks()


# -- 5. a precomputed output: written whole -----------------------------------------------------

def test_precomputed_output_is_written_whole(
        source: voxgate.Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = probability_to_uint8(np.sqrt(to_unit_float(_image())))
    writes: list[Box] = []
    from voxgate.remotes.precomputed.remote import PrecomputedRemote

    real: Callable[..., None] = PrecomputedRemote.write

    def write(remote: Any, box: Box, data: np.ndarray, scale: int = 0) -> None:
        writes.append(box)
        real(remote, box, data, scale)

    monkeypatch.setattr(PrecomputedRemote, "write", write)
    out = voxgate.predict(_sqrt_model, source, f"precomputed://{tmp_path}/out", block=CHUNKS,
                          halo=(2, 8, 8), progress=False)
    np.testing.assert_array_equal(out.read(), want)
    # every block written whole, zeros and all (CloudVolume's readers refuse absent chunks)
    region = source.bounds
    assert sorted(writes, key=lambda b: tuple(b.start)) == sorted(
        (Box(Vec(z, y, x), Vec(z, y, x) + Vec(*CHUNKS)).intersect(region)
         for z in range(region.start.z, region.stop.z, CHUNKS[0])
         for y in range(region.start.y, region.stop.y, CHUNKS[1])
         for x in range(region.start.x, region.stop.x, CHUNKS[2])),
        key=lambda b: tuple(b.start))
    names = [f for _, _, files in os.walk(tmp_path / "out") for f in files
             if re.fullmatch(r"\d+-\d+_\d+-\d+_\d+-\d+", f)]
    assert len(names) == len(_all_chunks())
