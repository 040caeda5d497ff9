"""The stores voxgate added last (KNOSSOS cubes, a TIFF stack), each written by its own kind of
writer, served by the relay, and read by the established clients of both dialects: the real
``intern`` client (bossDB REST), CloudVolume and tensorstore (Neuroglancer precomputed over
HTTP).  A write through intern lands in the KNOSSOS cube files themselves, which are checked
byte for byte as the format lays them out (x fastest, 128^3 cubes), and every client then reads
the write back through the relay.

Odd extents everywhere, so every read meets the partial cubes and tiles at the far edges.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from ..remotes.test_knossos import cube_file, write_classic
from .conftest import RelayProcess, free_port, start_relay

KN_XYZ = (150, 133, 70)  # x, y, z: 2 x 2 x 1 cubes of 128^3, the last ones partial
TIFF_ZYX = (13, 70, 91)
TOKEN = "any"  # an open relay


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[RelayProcess, Path, np.ndarray, np.ndarray]]:
    d = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(11)
    kn_xyz = rng.integers(1, 255, KN_XYZ, dtype=np.uint8)
    write_classic(d / "kn", "kn", {1: kn_xyz}, (8.0, 8.0, 40.0))
    stack = rng.integers(0, 60000, TIFF_ZYX, dtype=np.uint16)
    tifffile.imwrite(d / "stack.tif", stack, tile=(32, 32), compression="zlib")
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
state_path = "{d / 'state.json'}"
[[channel]]
name = "lab/em/kn"
upstream = "knossos://{d / 'kn'}"
[[channel]]
name = "lab/em/stack"
upstream = "tiff://{d / 'stack.tif'}"
""")
    r = start_relay(cfg, free_port())
    yield r, d, np.ascontiguousarray(kn_xyz.transpose(2, 1, 0)), stack
    r.stop()


def _intern(relay: RelayProcess) -> Any:
    from intern.remote.boss import BossRemote

    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": TOKEN})


def _cv_whole(relay: RelayProcess, channel: str) -> np.ndarray:
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"precomputed://{relay.url}/precomputed/lab/em/{channel}", mip=0,
                     progress=False, fill_missing=False, bounded=True, cache=False)
    x, y, z = (int(n) for n in cv.volume_size)
    return np.asarray(cv[0:x, 0:y, 0:z])[..., 0].transpose(2, 1, 0)


def _ts_whole(relay: RelayProcess, channel: str) -> np.ndarray:
    import tensorstore as ts

    store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": 0,
                     "kvstore": {"driver": "http",
                                 "base_url": f"{relay.url}/precomputed/lab/em/{channel}/"}},
                    read=True).result()
    return np.asarray(store.read().result())[..., 0].transpose(2, 1, 0)


def _intern_cutout(relay: RelayProcess, channel: str, z: tuple[int, int], y: tuple[int, int],
                   x: tuple[int, int]) -> np.ndarray:
    rmt = _intern(relay)
    ch = rmt.get_channel(channel, "lab", "em")
    return np.asarray(rmt.get_cutout(ch, 0, list(x), list(y), list(z)))


def _every_client_reads(relay: RelayProcess, channel: str, ref: np.ndarray) -> None:
    np.testing.assert_array_equal(_cv_whole(relay, channel), ref, err_msg="CloudVolume")
    np.testing.assert_array_equal(_ts_whole(relay, channel), ref, err_msg="tensorstore")
    nz, ny, nx = ref.shape
    # an unaligned box that reaches the far, partial edges
    z, y, x = (nz // 3, nz), (ny // 5, ny), (nx // 7, nx)
    np.testing.assert_array_equal(_intern_cutout(relay, channel, z, y, x),
                                  ref[z[0]:z[1], y[0]:y[1], x[0]:x[1]], err_msg="intern")


def test_a_tiff_stack_through_the_relay(served: Any) -> None:
    relay, _, _, stack = served
    info = _intern(relay).get_channel("stack", "lab", "em")
    assert info.datatype == "uint16"
    _every_client_reads(relay, "stack", stack)


def test_knossos_cubes_through_the_relay_and_an_intern_write_into_them(served: Any) -> None:
    relay, d, kn, _ = served
    _every_client_reads(relay, "kn", kn)
    # a write across the cube boundary at x = y = 128, and up to the far edge in z
    z0, z1, y0, y1, x0, x1 = 3, 70, 100, 133, 120, 141
    new = np.random.default_rng(12).integers(1, 255, (z1 - z0, y1 - y0, x1 - x0), np.uint8)
    rmt = _intern(relay)
    rmt.create_cutout(rmt.get_channel("kn", "lab", "em"), 0, [x0, x1], [y0, y1], [z0, z1],
                      new)
    expected = kn.copy()
    expected[z0:z1, y0:y1, x0:x1] = new
    # the cube files, read as the format lays them out (128^3, x fastest), not through voxgate
    on_disk = np.zeros((256, 256, 128), np.uint8)  # x, y, z
    for cx in range(2):
        for cy in range(2):
            raw = cube_file(d / "kn", "kn", 1, cx, cy, 0).read_bytes()
            assert len(raw) == 128**3
            on_disk[cx * 128:(cx + 1) * 128, cy * 128:(cy + 1) * 128, :] = \
                np.frombuffer(raw, np.uint8).reshape((128, 128, 128), order="F")
    np.testing.assert_array_equal(on_disk[:KN_XYZ[0], :KN_XYZ[1], :KN_XYZ[2]].transpose(2, 1, 0),
                                  expected, err_msg="the KNOSSOS cube files")
    _every_client_reads(relay, "kn", expected)
