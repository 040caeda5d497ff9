"""map_blocks: halos, outputs, the threaded scheduler and a dask.distributed cluster."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.errors import DtypeError, InvalidRequestError, ReadOnlyError, RemoteExistsError
from voxgate.synthetic import synthetic_em


def blur(a: np.ndarray) -> np.ndarray:
    out = a.astype(np.float32)
    for ax in range(3):
        out = (np.roll(out, 1, ax) + out + np.roll(out, -1, ax)) / 3
    return out.astype(np.uint8)


def blockwise_reference(fn: Callable[[np.ndarray], np.ndarray], a: np.ndarray,
                        block: tuple[int, int, int], halo: tuple[int, int, int]) -> np.ndarray:
    """map_blocks' halo semantics in plain numpy: each block is ``fn`` of the block grown by
    the halo (outside the volume: 0), cropped back to the block; blocks at the far edges are
    clipped to the volume."""
    padded = np.pad(a, [(h, h) for h in halo])
    out: np.ndarray | None = None
    for z0 in range(0, a.shape[0], block[0]):
        for y0 in range(0, a.shape[1], block[1]):
            for x0 in range(0, a.shape[2], block[2]):
                lo = (z0, y0, x0)
                hi = tuple(min(s + b, n) for s, b, n in zip(lo, block, a.shape, strict=True))
                # padded index = volume index + halo, so the grown block starts at ``lo``
                grown = padded[tuple(slice(s, e + 2 * h) for s, e, h in zip(lo, hi, halo,
                                                                             strict=True))]
                res = np.asarray(fn(grown))
                if out is None:
                    out = np.zeros(a.shape, res.dtype)
                out[tuple(slice(s, e) for s, e in zip(lo, hi, strict=True))] = res[tuple(
                    slice(h, h + e - s) for s, e, h in zip(lo, hi, halo, strict=True))]
    assert out is not None
    return out


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_em((32, 80, 96), seed=1, cell=(8, 16, 16))[0]


@pytest.fixture
def src(tmp_path: Path, image: np.ndarray) -> voxgate.Volume:
    v = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=image.shape, chunks=(16, 32, 32),
                       dtype="uint8", voxel_size=(40, 8, 8))
    v[:] = image
    return v


def test_halo_blocks_equal_whole_volume(src: voxgate.Volume, image: np.ndarray) -> None:
    ref = blur(np.pad(image, 2))[2:-2, 2:-2, 2:-2]  # outside the volume reads as fill (0)
    got = voxgate.map_blocks(blur, src, block=(16, 32, 32), halo=(2, 2, 2))
    np.testing.assert_array_equal(got, ref)
    assert got.provenance.details["scheduler"] == "threads"
    no_halo = voxgate.map_blocks(blur, src, block=(16, 32, 32))
    assert not np.array_equal(no_halo, ref)  # the halo matters: without it block seams differ


def test_outputs(src: voxgate.Volume, image: np.ndarray, tmp_path: Path) -> None:
    out_url = f"precomputed://file://{tmp_path}/mask"
    out = voxgate.map_blocks(lambda a: (a > 100).astype(np.uint8), src, out=out_url,
                             block=(16, 40, 40))
    assert isinstance(out, voxgate.Volume)
    np.testing.assert_array_equal(out.read(), (image > 100).astype(np.uint8))
    with pytest.raises(RemoteExistsError):
        voxgate.map_blocks(blur, src, out=out_url)
    voxgate.map_blocks(lambda a: a // 2, src, out=out_url, overwrite=True)
    np.testing.assert_array_equal(voxgate.open(out_url).read(), image // 2)
    with pytest.raises(ReadOnlyError):
        voxgate.map_blocks(blur, src, out=voxgate.open(out_url))
    as_float = voxgate.map_blocks(lambda a: a.astype(np.float32) / 255, src, dtype="float32")
    assert as_float.dtype == np.float32
    np.testing.assert_array_equal(as_float, image.astype(np.float32) / 255)
    with pytest.raises(DtypeError, match="dtype="):
        voxgate.map_blocks(lambda a: a.astype(np.float32), src)


def test_an_output_at_another_scale_is_refused(src: voxgate.Volume, image: np.ndarray,
                                               tmp_path: Path) -> None:
    """map_blocks and connected_components wrote into a given (or existing) output at another
    voxel size, each voxel placed where the source's is not; it is refused before anything is
    written.  A numpy source has no voxel size of its own: any scale's volume takes it."""
    coarse = voxgate.create(f"zarr://{tmp_path}/coarse.zarr", shape=image.shape,
                            chunks=(16, 32, 32), dtype="uint8", voxel_size=(80, 16, 16))
    for out in (coarse, coarse.url):
        with pytest.raises(InvalidRequestError, match=r"voxels of .* source's scale"):
            voxgate.map_blocks(lambda a: a, src, out=out, overwrite=True)
    assert not coarse.read().any()
    ids = voxgate.create(f"zarr://{tmp_path}/ids.zarr", shape=image.shape, chunks=(16, 32, 32),
                         dtype="uint64", voxel_size=(80, 16, 16), kind="segmentation")
    with pytest.raises(InvalidRequestError, match="voxels of"):
        voxgate.connected_components(src, out=ids)
    assert not ids.read().any()
    voxgate.map_blocks(lambda a: a, image, out=coarse)
    np.testing.assert_array_equal(coarse.read(), image)
    same = voxgate.create(f"zarr://{tmp_path}/same.zarr", shape=image.shape,
                          chunks=(16, 32, 32), dtype="uint8", voxel_size=(40, 8, 8))
    voxgate.map_blocks(lambda a: a, src, out=same)
    np.testing.assert_array_equal(same.read(), image)


def test_bad_input(src: voxgate.Volume) -> None:
    with pytest.raises(InvalidRequestError, match="larger than the block"):
        voxgate.map_blocks(blur, src, block=(8, 8, 8), halo=(4, 16, 4))
    with pytest.raises(InvalidRequestError):
        voxgate.map_blocks(blur, src, block=(0, 8, 8))
    with pytest.raises(InvalidRequestError, match="shape"):
        voxgate.map_blocks(lambda a: a[:1], src, block=(16, 32, 32))


def _claim(marker: str) -> bool:
    """True for exactly one caller across processes: the one that creates ``marker``."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _killer(marker: str) -> object:
    def fn(a: np.ndarray) -> np.ndarray:
        # the first worker to reach a block dies mid-run, once (claimed atomically: both
        # workers start a block at the same moment, and both must not die)
        if _claim(marker):
            os._exit(1)
        return blur(a)
    return fn


def _all_killer(markers: list[str]) -> object:
    def fn(a: np.ndarray) -> np.ndarray:
        # the first block on each worker waits until every worker holds one, then all die
        # together: nothing the client sent them (the scattered function) survives
        for m in markers:
            if _claim(m):
                deadline = time.monotonic() + 30
                while (not all(os.path.exists(x) for x in markers)
                       and time.monotonic() < deadline):
                    time.sleep(0.01)
                os._exit(1)
        return blur(a)
    return fn


def test_distributed_cluster(cluster: object, src: voxgate.Volume, image: np.ndarray,
                             tmp_path: Path) -> None:
    ref = blur(np.pad(image, 1))[1:-1, 1:-1, 1:-1]
    out = voxgate.map_blocks(blur, src.url, out=f"zarr://{tmp_path}/out.zarr",
                             block=(16, 32, 32), halo=(1, 1, 1), client=cluster)
    np.testing.assert_array_equal(out.read(), ref)
    # a worker dies part way: the scheduler reruns its block elsewhere and the output is complete
    out2 = voxgate.map_blocks(_killer(str(tmp_path / "died")), src.url,
                              out=f"zarr://{tmp_path}/out2.zarr", block=(16, 32, 32),
                              halo=(1, 1, 1), client=cluster)
    assert (tmp_path / "died").exists()
    np.testing.assert_array_equal(out2.read(), ref)
    # every worker dies at once: the nannies start new ones, which get the function again
    markers = [str(tmp_path / f"all-died-{i}") for i in range(2)]
    out3 = voxgate.map_blocks(_all_killer(markers), src.url, out=f"zarr://{tmp_path}/out3.zarr",
                              block=(16, 32, 32), halo=(1, 1, 1), client=cluster)
    assert all(os.path.exists(m) for m in markers)
    np.testing.assert_array_equal(out3.read(), ref)
    with pytest.raises(InvalidRequestError, match="this process only"):
        voxgate.map_blocks(blur, image, client=cluster)


def test_blob_detector_example(src: voxgate.Volume, image: np.ndarray) -> None:
    """The docs' worked example: dark, compact blobs (synapse-like) over the whole volume."""
    def blobs(a: np.ndarray) -> np.ndarray:
        import cc3d

        dark = blur(blur(a)) < 60
        labels = cc3d.connected_components(dark, connectivity=26)
        sizes = np.bincount(labels.ravel())
        keep = (sizes >= 20) & (sizes <= 5000)
        keep[0] = False
        return keep[labels].astype(np.uint8)

    found = voxgate.map_blocks(blobs, src, block=(16, 40, 48), halo=(4, 8, 8))
    expected = blockwise_reference(blobs, image, (16, 40, 48), (4, 8, 8))
    assert expected.any()  # the example finds blobs in this volume
    np.testing.assert_array_equal(found, expected)
    # a block that is not whole chunks is rounded up to them (the output's chunks: the
    # source's (16, 32, 32) here), as documented; blocks that do not divide the volume are
    # clipped at the far edges, and still agree
    found = voxgate.map_blocks(blobs, src, block=(13, 30, 35), halo=(3, 5, 7))
    assert found.provenance.details["blocks"] == 2 * 3 * 2
    np.testing.assert_array_equal(found, blockwise_reference(blobs, image, (16, 32, 64),
                                                             (3, 5, 7)))


def test_blockwise_reference_is_the_whole_volume_for_a_local_function(image: np.ndarray) -> None:
    # the reference itself: a 1-voxel stencil with a halo of 1 is the whole-volume result
    ref = blur(np.pad(image, 1))[1:-1, 1:-1, 1:-1]
    np.testing.assert_array_equal(blockwise_reference(blur, image, (13, 30, 35), (1, 1, 1)), ref)
    assert not np.array_equal(blockwise_reference(blur, image, (13, 30, 35), (0, 0, 0)), ref)


def test_mesh_and_downsample_on_the_cluster(cluster: object, tmp_path: Path) -> None:
    from voxgate.services.downsample import downsample_provenance
    from voxgate.synthetic import synthetic_labels

    from .numpy_reference import downsample_scales

    labels = synthetic_labels((24, 64, 80), cell=(8, 20, 20), seed=5)
    seg = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=labels.shape, chunks=(8, 32, 32),
                         dtype="uint64", voxel_size=(40, 8, 8), kind="segmentation")
    seg[:] = labels
    whole = voxgate.mesh(labels, voxel_size=(40, 8, 8))
    spread = voxgate.mesh(seg.url, block=(8, 32, 40), client=cluster)
    assert set(spread) == set(whole)
    from .test_mesh_skeleton import _canon

    for i in whole:  # meshed and stitched on the workers: the same triangles
        np.testing.assert_array_equal(_canon(spread[i]), _canon(whole[i]))
    out = voxgate.downsample(seg.url, 3, block=(8, 32, 32), client=cluster)
    assert downsample_provenance(out).details["scheduler"] == "distributed"  # type: ignore[union-attr]
    expected = downsample_scales(labels, [(1, 2, 2), (1, 2, 2)], "segmentation")
    for k in (1, 2):
        np.testing.assert_array_equal(voxgate.open(seg.url).at_scale(k).read(), expected[k - 1])


@pytest.mark.parametrize("in_place", [False, True])
def test_blocks_own_whole_chunks_of_an_output_view(tmp_path: Path, in_place: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """out= a view starting off its store's chunk grid: the blocks were laid on a grid
    anchored at the view's start, so up to 8 blocks (run at once by the workers) rewrote
    each store chunk, where a store whose writes of one chunk are not atomic loses updates."""
    import importlib
    import itertools

    mb = importlib.import_module("voxgate.services.map_blocks")  # (the module, not the function)

    rng = np.random.default_rng(3)
    data = rng.integers(0, 200, (50, 60, 70), dtype=np.uint8)
    store = voxgate.create(f"zarr://{tmp_path}/store.zarr", shape=data.shape, chunks=(8, 8, 8),
                           dtype="uint8", voxel_size=(40, 8, 8))
    store.write(data)
    view = store[3:40, 5:50, 7:58]
    if in_place:
        source = view
    else:  # the same voxels in another store, in the same coordinates
        other = voxgate.create(f"zarr://{tmp_path}/other.zarr", shape=data.shape,
                               chunks=(7, 7, 7), dtype="uint8", voxel_size=(40, 8, 8))
        other.write(data)
        source = other[3:40, 5:50, 7:58]
    written: list[object] = []
    real = mb.run_block

    def recording(*args: object, **kw: object) -> object:
        box = real(*args, **kw)  # type: ignore[arg-type]
        written.append(box)
        return box

    monkeypatch.setattr(mb, "run_block", recording)
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))
    voxgate.map_blocks(lambda b: b + 1, source, out=view, block=(8, 8, 8), workers=3,
                       progress=False)
    owners: dict[tuple[int, ...], int] = {}
    for box in written:
        for chunk in itertools.product(*(range(a // 8, -(-b // 8)) for a, b in zip(
                box.start, box.stop, strict=True))):  # type: ignore[attr-defined]
            owners[chunk] = owners.get(chunk, 0) + 1
    assert len(written) > 1 and max(owners.values()) == 1
    want = data.copy()
    want[3:40, 5:50, 7:58] += 1
    assert np.array_equal(store.read(), want)
