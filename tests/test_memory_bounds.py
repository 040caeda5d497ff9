"""Memory stays bounded: entry points that read (or allocated) a whole volume where a block-wise
stream was possible, each run in a subprocess on a large, mostly absent volume (cheap to make:
a few chunks written) whose peak RSS above the subprocess's baseline after its imports must stay
far below the volume's size.

Each of these peaked near the volume's full size before: a stepped read (``vol[::8, ::8,
::8].read()`` read the whole enclosing box for a 2 MiB result), a stepped write (it read the
whole enclosing box first), ``downsample`` with a deep pyramid (one block was the coarsest chunk
times its whole factor: the whole volume) and ``undo`` (it loaded every saved block of the edit
before writing any back).

The subprocess runs with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``), so its peak
RSS counts the buffers alive at once, not the ones glibc keeps after they were freed.  By
default glibc raises that threshold to the size of the largest mapped buffer freed so far: after
the first 16 MiB block is freed, every later one comes from a per-thread arena and stays resident
when freed, in as many arenas as threads touched blocks (workers, tensorstore's copy and file
threads).  How much that is depends on which threads the scheduler ran when: undo with 4
workers (at most 4 blocks in flight, about 85 MiB of numpy arrays at once by ``tracemalloc``)
peaked at 310-370 MiB with the default on a loaded machine (and at 448 once) and 140-155 MiB
with the threshold fixed, loaded or not; with one worker, one block in flight, it peaked at
about 190 MiB with the default and 70 MiB fixed.  A path that holds the whole volume peaks
above its size with either.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate import Box

from .peak_rss import peak_delta, prelude

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="peak RSS is read from /proc/self/status (Linux)")

#: peak RSS above the subprocess's baseline (after imports) allowed for every run here; the
#: volumes are 512 MiB and 1 GiB, and the paths before peaked at about their whole size
BOUND_MIB = 400

_PRELUDE = prelude("""
    import numpy as np
    import tensorstore
    import voxgate
    from voxgate import Box
    import voxgate.services.downsample, voxgate.services.label_stats
    import voxgate.services.proofread
""")


def _peak_delta(code: str, cwd: Path) -> float:
    """Run ``code`` in a fresh Python; its peak RSS (MiB) above its baseline after imports."""
    return peak_delta(code, cwd, prelude=_PRELUDE)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 GiB uint8 image (1024^3, 64^3 chunks): one random chunk at the origin, one chunk
    of 7 at the far corner, the rest absent (reads as 0)."""
    path = tmp_path_factory.mktemp("mem") / "img.zarr"
    vol = voxgate.create(f"zarr://{path}", shape=(1024, 1024, 1024), dtype="uint8",
                         chunks=(64, 64, 64), voxel_size=(8, 8, 8))
    vol[0:64, 0:64, 0:64] = np.random.default_rng(0).integers(0, 255, (64, 64, 64),
                                                               dtype=np.uint8)
    vol[960:1024, 960:1024, 960:1024] = 7
    return path


def _copy(src: Path, dst: Path) -> str:
    shutil.copytree(src, dst)
    return f"zarr://{dst}"


def test_strided_read_of_a_large_volume_reads_block_by_block(image: Path) -> None:
    peak = _peak_delta(f"""
        vol = voxgate.open("zarr://{image}")
        got = vol[::8, ::8, ::8].read()
        whole = vol[0:64, 0:64, 0:64].read()
        assert got.shape == (128, 128, 128), got.shape
        assert np.array_equal(got[:8, :8, :8], whole[::8, ::8, ::8])
        assert (got[120:, 120:, 120:] == 7).all() and got[8:120].max() == 0
        # one axis dropped, channels none: a plane with steps
        plane = vol[5, ::4, 1::4].read()
        assert plane.shape == (256, 256)
        assert np.array_equal(plane[:16, :16], whole[5, ::4, 1::4])
    """, image.parent)
    assert peak < BOUND_MIB, f"a 2 MiB strided read of a 1 GiB volume peaked at {peak} MiB"


def test_strided_write_of_a_large_volume_writes_block_by_block(image: Path,
                                                              tmp_path: Path) -> None:
    url = _copy(image, tmp_path / "w.zarr")
    before = voxgate.open(url)[0:2, 0:2, 0:2].read()
    peak = _peak_delta(f"""
        vol = voxgate.open("{url}", mode="r+")
        vol[::1000, ::2, ::2].write(3, workers=2)
    """, tmp_path)
    vol = voxgate.open(url)
    assert peak < BOUND_MIB, f"a strided write into a 1 GiB volume peaked at {peak} MiB"
    got = vol[0:2, 0:2, 0:2].read()
    want = before.copy()
    want[0, ::2, ::2] = 3
    assert np.array_equal(got, want)
    assert vol[1000, 1022, 1022].read() == 3 and vol[1000, 1023, 1022].read() == 7
    assert vol[999, 1022, 1022].read() == 7 and vol[500, 0, 0].read() == 0


def test_downsample_of_a_deep_pyramid_runs_in_bounded_blocks(image: Path,
                                                             tmp_path: Path) -> None:
    url = _copy(image, tmp_path / "d.zarr")
    peak = _peak_delta(f"""
        out = voxgate.downsample("{url}", workers=2)
        assert len(out.meta.scales) == 5, out.meta.scales
    """, tmp_path)
    assert peak < BOUND_MIB, f"downsampling a 1 GiB volume peaked at {peak} MiB"
    vol = voxgate.open(url)
    top = vol.at_scale(4)
    assert top.shape == (64, 64, 64)
    corner = top[60:64, 60:64, 60:64].read()
    assert (corner == 7).all()
    assert top[4:60].read().max() == 0
    # scale 1 from scale 0 (one pass) and scale 4 from scale 2 (the next): both the mean
    first = vol[0:64, 0:64, 0:64].read().astype(np.int64)
    s1 = first.reshape(32, 2, 32, 2, 32, 2).sum(axis=(1, 3, 5)) // 8
    assert np.array_equal(vol.at_scale(1)[0:32, 0:32, 0:32].read(), s1)
    s2 = vol.at_scale(2)[0:16, 0:16, 0:16].read().astype(np.int64)
    s3 = s2.reshape(8, 2, 8, 2, 8, 2).sum(axis=(1, 3, 5)) // 8
    s4 = s3.reshape(4, 2, 4, 2, 4, 2).sum(axis=(1, 3, 5)) // 8
    assert np.array_equal(top[0:4, 0:4, 0:4].read(), s4)


def test_undo_of_an_edit_across_a_large_volume_restores_block_by_block(
        tmp_path: Path) -> None:
    """A merge of two ids found in every chunk of a 512 MiB segmentation saves every chunk;
    its undo wrote them back after loading them all (512 MiB), now one at a time per worker.
    ``workers`` is given: the blocks in flight are as many as the workers (each two arrays of
    16 MiB and tensorstore's buffers), and the default is 8 on 4 cores and more."""
    url = f"zarr://{tmp_path}/seg.zarr"
    seg = voxgate.create(url, shape=(256, 512, 512), dtype="uint64", chunks=(128, 128, 128),
                         voxel_size=(8, 8, 8), kind="segmentation")
    cube = np.zeros((128, 128, 128), np.uint64)
    cube[5, 5, 5], cube[6, 6, 6] = 5, 9
    for z in range(0, 256, 128):
        for y in range(0, 512, 128):
            for x in range(0, 512, 128):
                seg.remote.write(Box((z, y, x), (z + 128, y + 128, x + 128)), cube, 0)
    hist = tmp_path / "history"
    merged = voxgate.merge(url, [5, 9], history_dir=hist)
    assert merged.blocks == 32
    assert voxgate.open(url)[134, 390, 262].read() == 5
    peak = _peak_delta(f"""
        (done,) = voxgate.undo("{url}", history_dir={str(hist)!r}, workers=4)
        assert done.blocks == 32, done
    """, tmp_path)
    assert peak < BOUND_MIB, f"undoing an edit of a 512 MiB volume peaked at {peak} MiB"
    vol = voxgate.open(url)
    assert vol[134, 390, 262].read() == 9 and vol[133, 389, 261].read() == 5
    assert vol[128:256, 384:512, 256:384].read().sum() == 14


def test_a_volume_written_into_another_streams_block_by_block(image: Path,
                                                             tmp_path: Path) -> None:
    """``dst[...] = src`` between two 512 MiB volumes read the whole source first."""
    url = f"zarr://{tmp_path}/dst.zarr"
    voxgate.create(url, shape=(512, 1024, 1024), dtype="uint8", chunks=(64, 64, 64),
                   voxel_size=(8, 8, 8))
    peak = _peak_delta(f"""
        src = voxgate.open("zarr://{image}")
        dst = voxgate.open("{url}", mode="r+")
        dst[...] = src[512:1024]
    """, tmp_path)
    assert peak < BOUND_MIB, f"writing a 512 MiB volume into another peaked at {peak} MiB"
    dst, src = voxgate.open(url), voxgate.open(f"zarr://{image}")
    assert (dst[448:512, 960:1024, 960:1024].read() == 7).all()
    assert dst[0:64, 0:64, 0:64].read().max() == 0
    np.testing.assert_array_equal(dst[440:512, 900:1024, 1000:1024].read(),
                                  src[952:1024, 900:1024, 1000:1024].read())


def test_map_blocks_into_memory_holds_its_result_once(image: Path, tmp_path: Path) -> None:
    """``map_blocks(fn, src)`` with no ``out`` returns the in-memory output itself: it returned
    a read of it, holding the 256 MiB result twice at the end."""
    peak = _peak_delta(f"""
        src = voxgate.open("zarr://{image}")[768:1024, 0:1024, 0:1024]
        got = voxgate.map_blocks(lambda a: a + 1, src, workers=2)
        assert got.shape == (256, 1024, 1024) and got.dtype == np.uint8
        assert got[0, 0, 0] == 1 and (got[192:, 960:, 960:] == 8).all()
        assert got.provenance.service == "map_blocks"
    """, tmp_path)
    assert peak < BOUND_MIB, f"a 256 MiB map_blocks result peaked at {peak} MiB"
