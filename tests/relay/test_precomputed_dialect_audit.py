"""The precomputed dialect read by the strict readers, over upstreams the other tests leave out.

tensorstore's ``neuroglancer_precomputed`` driver (every ``scale_index``) and CloudVolume read
whole scales through a real relay and must get the upstream's voxels, as numpy holds them.
The upstreams have odd extents (several chunks, partial at the far edges) and **negative, odd
voxel offsets**, the usual case for OME-Zarr translations, N5 and HDF5 volumes placed in a
shared frame, and precomputed layers cut from a larger one.  Neuroglancer, tensorstore and
CloudVolume all name such chunks by their real bounds, minus signs included (``-7-121``,
``-30--20``); the relay used to refuse every one of those names with a 400, so no reader
could show any voxel of such a layer.

The info's ``resolution`` is in nanometres whatever unit the upstream keeps: a volume made
with ``VoxelSize(..., unit="μm")`` (Greek mu), ``"micron"`` (ImageJ's name) or
``"micrometers"`` keeps that spelling in N5 and TIFF metadata, and the relay used to serve
those voxel sizes as if they were nanometres (1000 times too small).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import tensorstore as ts
from cloudvolume import CloudVolume

import voxgate
from voxgate.geometry import VoxelSize

from .conftest import RelayProcess, free_port, start_relay


@dataclass(frozen=True)
class Case:
    url: str            # {root} is the upstreams' directory
    dtype: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    offset: tuple[int, int, int]
    kind: str = "image"
    num_scales: int = 1
    options: tuple[tuple[str, Any], ...] = ()


# z, y, x; shapes large enough that a relay cell (about 1 MiB) does not hold the whole scale
CASES = {
    "zarr2": Case("zarr://{root}/v2.zarr", "uint8", (45, 150, 300), (32, 64, 128), (-3, -5, -7),
                  options=(("zarr_format", 2),)),
    "omezarr": Case("zarr://{root}/v3.zarr", "uint16", (37, 70, 150), (16, 32, 64), (2, -4, -11),
                    num_scales=3),
    "n5": Case("n5://{root}/seg.n5", "uint32", (37, 70, 150), (16, 32, 64), (-1, 3, -2),
               kind="segmentation"),
    "precomputed": Case("precomputed://file://{root}/pc", "uint64", (37, 70, 150), (16, 64, 64),
                        (-13, -37, -101), kind="segmentation", num_scales=2),
    "sharded": Case("precomputed://file://{root}/sh", "float32", (37, 50, 90), (16, 32, 32),
                    (-5, -9, -17), options=(("sharded", True),)),
    "hdf5": Case("hdf5://{root}/vol.h5#/vol", "int16", (45, 80, 150), (16, 64, 64),
                 (-9, -5, -3)),
}


def _data(rng: np.random.Generator, case: Case, shape: tuple[int, ...]) -> np.ndarray:
    dtype = np.dtype(case.dtype)
    if case.kind == "segmentation":  # few ids, some above 2**32 (uint64) or 2**53
        ids = rng.integers(0, 6, shape).astype(dtype)
        return ids * dtype.type(2**53 + 3 if dtype.itemsize == 8 else 65537)
    if dtype.kind == "f":
        return (rng.random(shape) * 2000 - 1000).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@dataclass
class Served:
    relay: RelayProcess
    data: dict[str, list[np.ndarray]]  # every scale of every channel, (z, y, x)
    offsets: dict[str, list[tuple[int, int, int]]]  # every scale's offset, (z, y, x)


#: (channel, store URL, unit): volumes made in micrometres or angstroms, by the unit's spellings
UNITS = [("n5_greek_mu", "n5://{root}/mu.n5", "μm"),
         ("n5_micrometers", "n5://{root}/um.n5", "micrometers"),
         ("tiff_micron", "tiff://{root}/micron.tif", "micron"),
         ("n5_angstrom", "n5://{root}/a.n5", "Å")]
#: what each is made with, z, y, x in its unit
UNIT_SIZES = {"μm": (0.04, 0.008, 0.006), "micrometers": (0.04, 0.008, 0.006),
              "micron": (0.04, 0.008, 0.006), "Å": (400.0, 80.0, 60.0)}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("upstreams")
    rng = np.random.default_rng(17)
    data: dict[str, list[np.ndarray]] = {}
    offsets: dict[str, list[tuple[int, int, int]]] = {}
    channels: dict[str, str] = {}
    for name, case in CASES.items():
        url = case.url.format(root=root)
        vol = voxgate.create(url, shape=case.shape, chunks=case.chunks, dtype=case.dtype,
                             voxel_size=(40, 8, 6), kind=case.kind, offset=case.offset,
                             num_scales=case.num_scales, **dict(case.options))
        data[name], offsets[name] = [], []
        for k in range(case.num_scales):
            level = vol.at_scale(k)
            arr = _data(rng, case, level.shape)
            level[...] = arr
            data[name].append(arr)
            offsets[name].append(tuple(int(v) for v in vol.meta.scales[k].offset))
        if url.startswith("hdf5://"):
            vol.remote.close()  # HDF5 lets one process write a file: the relay opens it next
        channels[name] = url
    for name, url, unit in UNITS:
        url = url.format(root=root)
        vol = voxgate.create(url, shape=(3, 5, 7), chunks=(3, 5, 7), dtype="uint8",
                             voxel_size=VoxelSize(*UNIT_SIZES[unit], unit=unit))
        vol[...] = 1
        channels[name] = url
    text = f'[server]\nhost = "127.0.0.1"\nstate_path = "{root / "state.json"}"\n'
    for name, url in channels.items():
        text += f'[[channel]]\nname = "lab/em/{name}"\nupstream = "{url}"\n'
    (root / "relay.toml").write_text(text)
    relay = start_relay(root / "relay.toml", free_port())
    try:
        yield Served(relay, data, offsets)
    finally:
        relay.stop()


def layer(served: Served, name: str) -> str:
    return f"{served.relay.url}/precomputed/lab/em/{name}"


SCALES = [(name, k) for name, case in CASES.items() for k in range(case.num_scales)]


@pytest.mark.parametrize(("name", "scale"), SCALES, ids=[f"{n}-s{k}" for n, k in SCALES])
def test_tensorstore_reads_every_scale_of_a_layer_with_a_negative_offset(
        served: Served, name: str, scale: int) -> None:
    store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": scale,
                     "kvstore": layer(served, name) + "/"}, read=True).result()
    want = served.data[name][scale]
    z, y, x = served.offsets[name][scale]
    assert list(store.domain.inclusive_min) == [x, y, z, 0]
    assert list(store.domain.exclusive_max) == [x + want.shape[2], y + want.shape[1],
                                                z + want.shape[0], 1]
    got = np.asarray(store.read().result())[..., 0].transpose(2, 1, 0)
    np.testing.assert_array_equal(got, want, err_msg=f"tensorstore {name} s{scale}")


@pytest.mark.parametrize(("name", "scale"), SCALES, ids=[f"{n}-s{k}" for n, k in SCALES])
def test_cloudvolume_reads_every_scale_of_a_layer_with_a_negative_offset(
        served: Served, name: str, scale: int) -> None:
    cv = CloudVolume(f"precomputed://{layer(served, name)}", mip=scale, progress=False,
                     fill_missing=False, bounded=True, cache=False)
    want = served.data[name][scale]
    z, y, x = served.offsets[name][scale]
    assert tuple(int(v) for v in cv.voxel_offset) == (x, y, z)
    got = np.asarray(cv[x:x + want.shape[2], y:y + want.shape[1], z:z + want.shape[0]])
    np.testing.assert_array_equal(got[..., 0].transpose(2, 1, 0), want,
                                  err_msg=f"CloudVolume {name} s{scale}")
    # a box around the origin of the frame (negative to positive), unaligned to any chunk
    lo = (max(x, -3), max(y, -2), max(z, -1))
    got = np.asarray(cv[lo[0]:lo[0] + 5, lo[1]:lo[1] + 4, lo[2]:lo[2] + 3])
    np.testing.assert_array_equal(
        got[..., 0].transpose(2, 1, 0),
        want[lo[2] - z:lo[2] - z + 3, lo[1] - y:lo[1] - y + 4, lo[0] - x:lo[0] - x + 5])


def test_chunk_names_with_negative_bounds_over_raw_http(served: Served) -> None:
    """The first and the last (clipped) chunk of a layer whose offset is negative on every
    axis, by the names the readers send; and a name outside the bounds is a 404, not a 400."""
    url = layer(served, "precomputed")
    info = httpx.get(url + "/info").json()
    s0 = info["scales"][0]
    (cx, cy, cz), (ox, oy, oz) = s0["chunk_sizes"][0], s0["voxel_offset"]
    sx, sy, sz = s0["size"]
    assert (ox, oy, oz) == (-101, -37, -13)
    assert cx < sx and cz < sz  # several chunks along x and z
    first = (ox, ox + cx, oy, min(oy + cy, oy + sy), oz, oz + cz)
    nx, nz = (sx - 1) // cx, (sz - 1) // cz
    last = (ox + nx * cx, ox + sx, oy, min(oy + cy, oy + sy), oz + nz * cz, oz + sz)
    want = served.data["precomputed"][0]
    for x0, x1, y0, y1, z0, z1 in (first, last):
        name = f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"
        res = httpx.get(f"{url}/s0/{name}", headers={"Accept-Encoding": "gzip"})
        assert res.status_code == 200, (name, res.text)
        store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": 0,
                         "kvstore": url + "/"}, read=True).result()
        got = np.asarray(store[x0:x1, y0:y1, z0:z1].read().result())[..., 0].transpose(2, 1, 0)
        np.testing.assert_array_equal(
            got, want[z0 - oz:z1 - oz, y0 - oy:y1 - oy, x0 - ox:x1 - ox])
    outside = f"{ox - 16}-{ox}_{oy}-{oy + cy}_{oz}-{oz + cz}"
    res = httpx.get(f"{url}/s0/{outside}")
    assert res.status_code == 404 and "is outside scale s0" in res.json()["message"]
    # -30--20 style names: both bounds negative (not a chunk of this grid: a 400 saying so)
    res = httpx.get(f"{url}/s0/{ox}-{ox + 3}_{oy}-{oy + 2}_{oz}-{oz + 1}")
    assert res.status_code == 400 and "is not a chunk of scale s0" in res.json()["message"]


@pytest.mark.parametrize(("name", "unit"), [(n, u) for n, _, u in UNITS])
def test_the_resolution_is_in_nanometres_whatever_the_unit_is_spelled(
        served: Served, name: str, unit: str) -> None:
    nm = {"μm": 1e3, "micrometers": 1e3, "micron": 1e3, "Å": 0.1}[unit]
    z, y, x = (v * nm for v in UNIT_SIZES[unit])
    info = httpx.get(layer(served, name) + "/info").json()
    np.testing.assert_allclose(info["scales"][0]["resolution"], [x, y, z], rtol=1e-9)
    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": layer(served, name) + "/"},
                    read=True).result()
    units = store.dimension_units[:3]
    assert [u.base_unit for u in units] == ["nm"] * 3
    np.testing.assert_allclose([u.multiplier for u in units], [x, y, z], rtol=1e-9)
    cv = CloudVolume(f"precomputed://{layer(served, name)}", progress=False, cache=False)
    np.testing.assert_allclose(list(cv.resolution), [x, y, z], rtol=1e-9)
