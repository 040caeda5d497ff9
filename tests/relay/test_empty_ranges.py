"""Empty byte ranges: what CloudFiles sends for an empty level of detail, and what it must get.

CloudFiles turns the half-open range ``[a, a)`` into ``Range: bytes=a-(a-1)`` (``bytes=0--1``
when ``a = 0``) and slices nothing it gets back: a 416 makes it retry and raise, a 200 with the
whole file hands CloudVolume the whole file.  A multi-resolution mesh whose first, a middle and
last level of detail are empty is read by CloudVolume through a relay (local files and an HTTP
upstream) and must read as CloudVolume reads the files; raw requests check the 204 and that
every other reversed or past-the-end range keeps its 416.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cloudfiles import CloudFiles
from cloudvolume import CloudVolume
from cloudvolume.datasource.precomputed.mesh.multilod import MultiLevelPrecomputedMeshManifest

import voxgate
from voxgate.formats.mesh import write_meshes
from voxgate.synthetic import synthetic_labels

from .conftest import RelayProcess, free_port, start_relay

SHAPE = (32, 64, 64)  # z, y, x
#: the levels of detail of the rewritten segment: None is an empty one (no bytes in the file)
LODS = (None, 0, None, 1, None)


@dataclass
class Layer:
    root: Path
    path: Path
    ids: list[int]  # ids[0] has the empty levels of detail
    size: int  # bytes of ids[0]'s fragment file
    lod1_start: int  # where the second (empty) level of detail starts in that file


def _with_empty_lods(index: bytes, segid: int) -> tuple[bytes, int]:
    """A manifest with the levels of ``index`` at :data:`LODS`, empty ones in between (one
    zero-size fragment, or none), and where the middle empty level starts in the file."""
    m = MultiLevelPrecomputedMeshManifest.from_binary(index, segid)
    positions: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    for k, lod in enumerate(LODS):
        if lod is None:  # an empty level: no fragments, or one fragment of zero bytes
            n = k % 2
            positions.append(np.zeros((n, 3), dtype="<u4"))
            sizes.append(np.zeros(n, dtype="<u4"))
        else:
            positions.append(np.asarray(m.fragment_positions[lod], dtype="<u4"))
            sizes.append(np.asarray(m.fragment_offsets[lod], dtype="<u4"))
    scales = [float(m.lod_scales[lod if lod is not None else 0]) * (k + 1)
              for k, lod in enumerate(LODS)]
    offsets = np.array([m.vertex_offsets[lod if lod is not None else 0] for lod in LODS],
                       dtype="<f4")
    out = [np.asarray(m.chunk_shape, "<f4").tobytes(), np.asarray(m.grid_origin, "<f4").tobytes(),
           struct.pack("<I", len(LODS)), np.asarray(scales, "<f4").tobytes(), offsets.tobytes(),
           np.array([len(s) for s in sizes], "<u4").tobytes()]
    for pos, size in zip(positions, sizes, strict=True):
        out += [pos.tobytes(order="F"), size.tobytes()]
    return b"".join(out), int(sizes[1].sum())


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Layer:
    root = tmp_path_factory.mktemp("data")
    labels = synthetic_labels(SHAPE, cell=(16, 32, 32), seed=5)
    ids = [int(i) for i in np.unique(labels) if i][:3]
    path = root / "lab" / "em" / "multires"
    seg = voxgate.create(f"precomputed://file://{path}", shape=labels.shape, chunks=(32, 64, 64),
                         dtype="uint64", voxel_size=(40, 8, 8), kind="segmentation")
    seg[:] = labels
    write_meshes(seg.url, voxgate.mesh(seg, ids=ids), format="multires", lods=2)
    index = path / "mesh" / f"{ids[0]}.index"
    rewritten, lod1_start = _with_empty_lods(index.read_bytes(), ids[0])
    index.write_bytes(rewritten)
    size = (path / "mesh" / str(ids[0])).stat().st_size
    return Layer(root, path, ids, size, lod1_start)


def _config(path: Path, extra: str = "") -> Path:
    path.write_text(f"""
[server]
host = "127.0.0.1"
upstream_timeout = 10
state_path = "{path.parent / 'state.json'}"
[cache]
memory_bytes = "16 MiB"
{extra}""")
    return path


@pytest.fixture(scope="module")
def relay(layer: Layer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("empty-range-relay")
    r = start_relay(_config(d / "relay.toml"), free_port(), "--data-root", str(layer.root))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def chained(relay: RelayProcess, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[RelayProcess]:
    """A relay whose upstream is the first relay's layer over HTTP (tensorstore's kvstore)."""
    d = tmp_path_factory.mktemp("empty-range-chained")
    upstream = f"{relay.url}/precomputed/lab/em/multires"
    cfg = _config(d / "relay.toml", f'[[channel]]\nname = "far/em/multires"\n'
                                    f'upstream = "precomputed://{upstream}"\n')
    r = start_relay(cfg, free_port())
    yield r
    r.stop()


def _cv(url: str) -> Any:
    return CloudVolume(url, progress=False, cache=False)


def _lod(cv: Any, segid: int, lod: int) -> tuple[str, Any]:
    """What CloudVolume reads of one level of detail: the mesh, or the error's type."""
    try:
        got = cv.mesh.get(segid, lod=lod)
    except Exception as exc:  # compared with what the files give, not hidden
        return "error", type(exc).__name__
    mesh = got.get(segid) if isinstance(got, dict) else got
    if mesh is None:
        return "none", None
    return "mesh", (np.asarray(mesh.vertices).round(3).tolist(),
                    np.asarray(mesh.faces).tolist())


@pytest.mark.parametrize("where", ["relay", "chained"])
def test_cloudvolume_reads_empty_levels_of_detail_as_from_the_files(
        layer: Layer, relay: RelayProcess, chained: RelayProcess, where: str) -> None:
    served = (f"{relay.url}/precomputed/lab/em/multires" if where == "relay"
              else f"{chained.url}/precomputed/far/em/multires")
    files, through = _cv(f"precomputed://file://{layer.path}"), _cv(f"precomputed://{served}")
    segid = layer.ids[0]
    for lod, kept in enumerate(LODS):
        want, got = _lod(files, segid, lod), _lod(through, segid, lod)
        assert got == want, (lod, got[0], want[0])
        assert (want[0] == "mesh") == (kept is not None), (lod, want[0])
    # the other segments and the whole-mesh read are untouched
    for segid in layer.ids[1:]:
        assert _lod(through, segid, 0) == _lod(files, segid, 0)


@pytest.mark.parametrize("where", ["relay", "chained"])
def test_cloudfiles_empty_ranges_read_as_from_the_files(layer: Layer, relay: RelayProcess,
                                                        chained: RelayProcess,
                                                        where: str) -> None:
    served = (f"{relay.url}/precomputed/lab/em/multires" if where == "relay"
              else f"{chained.url}/precomputed/far/em/multires")
    name = f"mesh/{layer.ids[0]}"
    local, http = CloudFiles(f"file://{layer.path}"), CloudFiles(served)
    for start in (0, layer.lod1_start, layer.size, layer.size + 10):
        want = local.get({"path": name, "start": start, "end": start})
        assert want == b""
        assert http.get({"path": name, "start": start, "end": start}) == want, start
    # and a non-empty range still reads its bytes
    assert http.get({"path": name, "start": 1, "end": 9}) == local.get(
        {"path": name, "start": 1, "end": 9})
    # an absent file is absent, as from the files
    assert http.get({"path": "mesh/999999", "start": 3, "end": 3}) is None
    assert local.get({"path": "mesh/999999", "start": 3, "end": 3}) is None


@pytest.mark.parametrize("where", ["relay", "chained"])
def test_raw_answers(layer: Layer, relay: RelayProcess, chained: RelayProcess,
                     where: str) -> None:
    base = (f"{relay.url}/precomputed/lab/em/multires" if where == "relay"
            else f"{chained.url}/precomputed/far/em/multires")
    url, size = f"{base}/mesh/{layer.ids[0]}", layer.size
    for header in ("bytes=0--1", f"bytes={layer.lod1_start}-{layer.lod1_start - 1}",
                   f"bytes={size}-{size - 1}", "bytes=99-98"):
        for method in ("GET", "HEAD"):
            res = httpx.request(method, url, headers={"Range": header})
            assert res.status_code == 204, (header, method, res.text)
            assert res.content == b"" and "content-range" not in res.headers, header
            assert "content-length" not in res.headers, header
            assert res.headers["cache-control"] == "no-store", header
    assert httpx.get(f"{base}/mesh/999999", headers={"Range": "bytes=4-3"}).status_code == 404
    # every other reversed, malformed or past-the-end range keeps its 416
    for header in ("bytes=5-3", "bytes=1--1", "bytes=--1", "bytes=0--2", "bytes=x-y"):
        res = httpx.get(url, headers={"Range": header})
        assert res.status_code == 416 and "Range" in res.json()["message"], header
    for header in (f"bytes={size}-", f"bytes={size}-{size + 5}", "bytes=-0"):
        assert httpx.get(url, headers={"Range": header}).status_code == 416, header
    # a range that is not empty: 206 with its bytes
    data = (layer.path / "mesh" / str(layer.ids[0])).read_bytes()
    res = httpx.get(url, headers={"Range": "bytes=2-2"})
    assert res.status_code == 206 and res.content == data[2:3]
