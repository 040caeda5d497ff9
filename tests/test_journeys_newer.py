"""Journeys across the newer parts (TIFF, KNOSSOS, predict, proofreading) and the relay, each
step checked by a reader that is not voxgate.

Odd shapes everywhere (37 x 45 x 29 voxels, x y z), offsets that are no multiple of any chunk,
anisotropic voxels (40 x 8 x 8 nm, z y x):

1. a TIFF stack written by tifffile (image) and one written by voxgate at an offset
   (segmentation) -> ``voxgate.copy`` to precomputed -> ``voxgate.downsample`` -> ``voxgate
   serve`` -> CloudVolume (precomputed dialect) and intern (bossDB dialect) at every scale, held
   to the brute-force numpy pyramid of tests/services/numpy_reference.py;
2. a KNOSSOS dataset written by voxgate and downsampled -> the relay -> CloudVolume and
   tensorstore read the same voxels at every scale; intern writes through the relay into it and
   the write is read back at once through both dialects (the cache was warm) and from the raw
   cube files; the relay's downsample job brings the coarser scales up to date;
3. the built-in ONNX model (``voxgate.predict``, block-wise) against onnxruntime run on the
   whole image -> threshold -> ``connected_components`` against cc3d -> ``mesh`` ->
   ``write_meshes`` -> the relay serves the layer -> CloudVolume's ``mesh.get`` bounds are the
   labels' voxel boxes;
4. proofreading through the relay (``bossdb://`` on it): merge and split are seen at the next
   read by CloudVolume and intern although their cells were cached; undo brings the original
   back through both.

One relay process serves every journey (no ``[auth]``: CloudVolume sends no boss token).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import pytest
import tifffile

import voxgate
from tests.relay.conftest import RelayProcess, free_port, start_relay
from tests.remotes.test_knossos import cube_file
from tests.services.numpy_reference import downsample_scales
from voxgate.synthetic import synapses

SHAPE = (29, 45, 37)           # z, y, x
OFFSET = (3, 5, 7)             # no multiple of any chunk below
VOXEL = (40.0, 8.0, 8.0)       # nm, z y x
FACTORS = [(1, 2, 2), (1, 2, 2)]  # voxgate's default for 40 x 8 x 8 nm, 3 scales
TOKEN = "any"                  # an open relay: any token reads and writes
#: large enough for a few synapses (they are 700 nm apart at least): the image of journey 3
#: holds 4, which the built-in model finds (the first weights also marked black and the dark
#: edges of a smaller image, and the journey ran on those)
PRED_SHAPE = (19, 149, 203)


def _offsets(offset: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    """Each scale's offset: floor(offset / cumulative factor), as the downsample docs say."""
    out, cum = [tuple(offset)], (1, 1, 1)
    for f in FACTORS[:n - 1]:
        cum = tuple(c * k for c, k in zip(cum, f, strict=True))
        out.append(tuple(o // c for o, c in zip(offset, cum, strict=True)))
    return out


@dataclass
class World:
    d: Path
    relay: RelayProcess
    image: list[np.ndarray]        # journey 1: the TIFF image's numpy pyramid
    labels: list[np.ndarray]       # journey 1: the TIFF segmentation's numpy pyramid
    knossos: np.ndarray            # journey 2: scale 0 of the KNOSSOS dataset
    em: np.ndarray                 # journey 3: the image predicted on
    cc: np.ndarray                 # journey 3: the connected components (uint64)
    meshes: dict[int, Any]


def _build(d: Path) -> dict[str, Any]:
    rng = np.random.default_rng(20240611)
    out: dict[str, Any] = {}

    # 1. an OME-TIFF from tifffile (strips of 7 rows), anisotropic: copied into a precomputed
    # layer of 8 x 16 x 16 chunks made beforehand, then downsampled
    img = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    tifffile.imwrite(d / "stack.ome.tif", img, ome=True, rowsperstrip=7,
                     photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 0.04, "PhysicalSizeY": 0.008,
                               "PhysicalSizeX": 0.008})
    voxgate.create(f"precomputed://file://{d}/img", shape=SHAPE, chunks=(8, 16, 16),
                   dtype="uint8", voxel_size=VOXEL)
    voxgate.copy(f"tiff://{d}/stack.ome.tif", f"precomputed://file://{d}/img", progress=False)
    voxgate.downsample(f"precomputed://file://{d}/img", num_scales=3)
    out["image"] = [img, *downsample_scales(img, FACTORS, "image")]

    # ... and a uint32 segmentation TIFF written by voxgate at an offset (a small alphabet of
    # ids above 2**31: ties in many mode blocks), copied (created by the copy) and downsampled
    ids = np.array([0, 1, 2, 3], np.uint32) + np.uint32(2**31 + 5)
    lab = ids[rng.integers(0, 4, SHAPE)]
    seg = voxgate.create(f"tiff://{d}/seg.tif", shape=SHAPE, chunks=(4, 16, 16),
                         dtype="uint32", voxel_size=VOXEL, offset=OFFSET, kind="segmentation")
    seg[:] = lab
    voxgate.copy(f"tiff://{d}/seg.tif", f"precomputed://file://{d}/seg", progress=False)
    voxgate.downsample(f"precomputed://file://{d}/seg", num_scales=3)
    out["labels"] = [lab, *downsample_scales(lab, FACTORS, "segmentation")]

    # 2. a KNOSSOS dataset (.k.toml, 8 x 16 x 16 cubes) at an offset, downsampled in place
    kn = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    vol = voxgate.create(f"knossos://{d}/kn", shape=SHAPE, chunks=(8, 16, 16), dtype="uint8",
                         voxel_size=VOXEL, offset=OFFSET)
    vol[:] = kn
    voxgate.downsample(f"knossos://{d}/kn", num_scales=3)
    out["knossos"] = kn

    # 3. predict -> threshold -> connected components -> mesh -> write_meshes
    em = synapses(PRED_SHAPE, seed=4, density=8, cell=(8, 24, 24)).image
    emv = voxgate.create(f"precomputed://file://{d}/em", shape=PRED_SHAPE, chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=VOXEL, offset=OFFSET)
    emv[:] = em
    voxgate.predict("synapse-unet", f"precomputed://file://{d}/em",
                    f"precomputed://file://{d}/prob", block=(8, 32, 32), progress=False)
    prob = voxgate.open(f"precomputed://file://{d}/prob")
    mask = voxgate.create(f"precomputed://file://{d}/mask", shape=PRED_SHAPE,
                          chunks=(8, 16, 16), dtype="uint8", voxel_size=VOXEL, offset=OFFSET)
    mask[:] = (prob.read() > 127).astype(np.uint8)
    voxgate.connected_components(f"precomputed://file://{d}/mask",
                                 out=f"precomputed://file://{d}/cc", block=(8, 16, 16))
    cc = voxgate.open(f"precomputed://file://{d}/cc")
    meshes = voxgate.mesh(cc)
    voxgate.write_meshes(f"precomputed://file://{d}/cc", meshes)
    out.update(em=em, cc=cc.read(), meshes=meshes)

    # 4. the segmentation proofread through the relay: a copy of journey 3's components
    voxgate.copy(f"precomputed://file://{d}/cc", f"precomputed://file://{d}/pf", progress=False)
    return out


CHANNELS = {"tifimg": "img", "tifseg": "seg", "pred": "cc", "pf": "pf"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("journeys")
    built = _build(d)
    channels = "".join(f'\n[[channel]]\nname = "j/{e}/ch"\nupstream = "precomputed://file://'
                       f'{d}/{p}"\n' for e, p in CHANNELS.items())
    channels += f'\n[[channel]]\nname = "j/kn/ch"\nupstream = "knossos://{d}/kn"\n'
    cfg = d / "relay.toml"
    cfg.write_text(f'[server]\nhost = "127.0.0.1"\nstate_path = "{d / "state.json"}"\n'
                   f'[cache]\nmemory_bytes = "32 MiB"\n{channels}')
    relay = start_relay(cfg, free_port())
    try:
        yield World(d, relay, **built)
    finally:
        relay.stop()


# -- clients ---------------------------------------------------------------------------------------
def _intern(w: World) -> Any:
    from intern.remote.boss import BossRemote

    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{w.relay.port}", "token": TOKEN})


def _intern_read(w: World, exp: str, scale: int, box: tuple[tuple[int, int], ...]) -> np.ndarray:
    rmt = _intern(w)
    ch = rmt.get_channel("ch", "j", exp)
    (z0, z1), (y0, y1), (x0, x1) = box
    return np.asarray(rmt.get_cutout(ch, scale, [x0, x1], [y0, y1], [z0, z1]))


def _cv(w: World, exp: str, mip: int = 0) -> Any:
    from cloudvolume import CloudVolume

    return CloudVolume(f"precomputed://{w.relay.url}/precomputed/j/{exp}/ch", mip=mip,
                       bounded=True, fill_missing=False, progress=False, cache=False)


def _cv_read(w: World, exp: str, mip: int, box: tuple[tuple[int, int], ...]) -> np.ndarray:
    (z0, z1), (y0, y1), (x0, x1) = box
    return np.asarray(_cv(w, exp, mip)[x0:x1, y0:y1, z0:z1])[..., 0].transpose(2, 1, 0)


def _ts_read(w: World, exp: str, scale: int) -> np.ndarray:
    """The whole scale through tensorstore's own precomputed driver over HTTP."""
    import tensorstore as ts

    store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": scale,
                     "kvstore": f"{w.relay.url}/precomputed/j/{exp}/ch/"}).result()
    return np.asarray(store.read().result())[..., 0].transpose(2, 1, 0)


def _whole(offset: tuple[int, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple((o, o + n) for o, n in zip(offset, shape, strict=True))


def _boxes(offset: tuple[int, ...], shape: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    """The whole scale, an unaligned interior box, a box at the far corner, one voxel."""
    (z0, z1), (y0, y1), (x0, x1) = _whole(offset, shape)
    nz, ny, nx = shape
    boxes = [((z0, z1), (y0, y1), (x0, x1)),
             ((z0 + nz // 3, z1 - nz // 4), (y0 + 3, y1 - ny // 3), (x0 + 5, x1 - 2)),
             ((z1 - max(1, nz // 2), z1), (y1 - max(1, ny // 3), y1), (x1 - max(1, nx // 2), x1)),
             ((z1 - 1, z1), (y1 - 1, y1), (x1 - 1, x1))]
    return [b for b in boxes if all(a < c for a, c in b)]


def _cut(arr: np.ndarray, offset: tuple[int, ...], box: tuple[tuple[int, int], ...]) -> np.ndarray:
    return arr[tuple(slice(a - o, b - o) for (a, b), o in zip(box, offset, strict=True))]


# -- journey 1: TIFF -> precomputed -> downsample -> relay -> CloudVolume, intern ------------------
@pytest.mark.parametrize(("exp", "offset", "kind"),
                         [("tifimg", (0, 0, 0), "image"), ("tifseg", OFFSET, "segmentation")])
def test_tiff_copy_downsample_served_at_every_scale(world: World, exp: str,
                                                    offset: tuple[int, int, int],
                                                    kind: str) -> None:
    pyramid = world.image if kind == "image" else world.labels
    offsets = _offsets(offset, len(pyramid))
    for mip, want in enumerate(pyramid):
        cv = _cv(world, exp, mip)
        assert tuple(int(v) for v in cv.volume_size) == want.shape[::-1], mip
        assert tuple(int(v) for v in cv.voxel_offset) == offsets[mip][::-1], mip
        cum = np.prod(FACTORS[:mip], axis=0) if mip else (1, 1, 1)
        assert tuple(float(v) for v in cv.resolution) == \
            tuple(float(v * c) for v, c in zip(VOXEL, cum, strict=True))[::-1]
        assert cv.dtype == want.dtype
        for box in _boxes(offsets[mip], want.shape):
            ref = _cut(want, offsets[mip], box)
            np.testing.assert_array_equal(_cv_read(world, exp, mip, box), ref,
                                          err_msg=f"CloudVolume {exp} mip {mip} {box}")
            got = _intern_read(world, exp, mip, box)
            # the bossDB dialect serves segmentations as uint64 annotation channels
            assert got.dtype == (np.uint64 if kind == "segmentation" else want.dtype)
            np.testing.assert_array_equal(got, ref, err_msg=f"intern {exp} res {mip} {box}")


# -- journey 2: KNOSSOS -> relay -> CloudVolume, tensorstore; intern writes through ---------------
def _cube_files(root: Path, scale: int, offset: tuple[int, ...],
                shape: tuple[int, ...]) -> np.ndarray:
    """A scale assembled from its raw cube files as the format lays them out (x fastest, one
    file per 8 x 16 x 16 cube, numbered from the dataset's first voxel), without voxgate."""
    del offset
    cz, cy, cx = 8, 16, 16
    nz, ny, nx = shape
    gz, gy, gx = -(-nz // cz), -(-ny // cy), -(-nx // cx)
    out = np.zeros((gz * cz, gy * cy, gx * cx), np.uint8)
    for z in range(gz):
        for y in range(gy):
            for x in range(gx):
                f = cube_file(root, "kn", scale + 1, x, y, z)
                if f.exists():
                    raw = f.read_bytes()
                    assert len(raw) == cz * cy * cx, f
                    out[z * cz:(z + 1) * cz, y * cy:(y + 1) * cy, x * cx:(x + 1) * cx] = \
                        np.frombuffer(raw, np.uint8).reshape(cz, cy, cx)
    return out[:nz, :ny, :nx]


def _check_knossos(w: World, pyramid: list[np.ndarray], scales: range) -> None:
    offsets = _offsets(OFFSET, len(pyramid))
    for k in scales:
        whole = _whole(offsets[k], pyramid[k].shape)
        np.testing.assert_array_equal(_cube_files(w.d / "kn", k, offsets[k], pyramid[k].shape),
                                      pyramid[k], err_msg=f"cube files, scale {k}")
        np.testing.assert_array_equal(_ts_read(w, "kn", k), pyramid[k],
                                      err_msg=f"tensorstore, scale {k}")
        np.testing.assert_array_equal(_cv_read(w, "kn", k, whole), pyramid[k],
                                      err_msg=f"CloudVolume, scale {k}")
        np.testing.assert_array_equal(_intern_read(w, "kn", k, whole), pyramid[k],
                                      err_msg=f"intern, scale {k}")


def test_knossos_served_then_written_through_the_relay(world: World) -> None:
    pyramid = [world.knossos.copy(), *downsample_scales(world.knossos, FACTORS, "image")]
    _check_knossos(world, pyramid, range(3))           # also warms the relay's cells
    rmt = _intern(world)
    ch = rmt.get_channel("ch", "j", "kn")
    rng = np.random.default_rng(7)
    (z0, z1), (y0, y1), (x0, x1) = _whole(OFFSET, SHAPE)
    # unaligned, across cubes, up to the far edges; then one voxel in the first cube
    for box in [((z0 + 5, z1), (y0 + 3, y1), (x0 + 9, x1)), ((z0, z0 + 1), (y0, y0 + 1),
                                                             (x0, x0 + 1))]:
        new = rng.integers(0, 256, tuple(b - a for a, b in box), dtype=np.uint8)
        (bz, by, bx) = box
        rmt.create_cutout(ch, 0, list(bx), list(by), list(bz), new)
        _cut(pyramid[0], OFFSET, box)[...] = new
        np.testing.assert_array_equal(_intern_read(world, "kn", 0, box), new)
        np.testing.assert_array_equal(_cv_read(world, "kn", 0, box), new)
    _check_knossos(world, pyramid, range(1))
    # the coarser scales are rebuilt by the relay's downsample job (voxgate.downsample of the
    # bossdb:// volume), through the relay's cache
    vol = voxgate.open(f"bossdb://{world.relay.url}/j/kn/ch", token=TOKEN, mode="r+")
    voxgate.downsample(vol)
    pyramid = [pyramid[0], *downsample_scales(pyramid[0], FACTORS, "image")]
    _check_knossos(world, pyramid, range(3))


# -- journey 3: predict -> threshold -> cc -> mesh -> write_meshes -> relay -> CloudVolume ---------
def test_predict_cc_meshes_served_through_the_relay(world: World) -> None:
    import onnxruntime as ort

    from voxgate.models import resolve_model

    # the model run once on the whole image by onnxruntime itself (zero padding up to the
    # model's size step of 4 in y and x, as docs/models.md says)
    sess = ort.InferenceSession(str(resolve_model("synapse-unet")),
                                providers=["CPUExecutionProvider"])
    x = world.em.astype(np.float32) / 255
    xp = np.pad(x, [(0, 0), (0, -x.shape[1] % 4), (0, -x.shape[2] % 4)])
    p = sess.run(None, {sess.get_inputs()[0].name: xp[None, None]})[0][0, 0]
    p = p[:, :x.shape[1], :x.shape[2]]
    want_prob = np.round(np.clip(p, 0, 1) * 255).astype(np.uint8)
    got_prob = voxgate.open(f"precomputed://file://{world.d}/prob").read()
    assert int(np.abs(got_prob.astype(int) - want_prob.astype(int)).max()) <= 1
    # threshold and components, against cc3d on the stored probabilities
    want_cc = cc3d.connected_components(got_prob > 127, connectivity=26, out_dtype=np.uint64)
    np.testing.assert_array_equal(world.cc, want_cc)
    ids = [int(i) for i in np.unique(world.cc) if i]
    assert len(ids) >= 3, "the journey needs a few segments"
    assert sorted(world.meshes) == ids
    # the relay's info names the mesh directory; CloudVolume's mesh.get through it
    cv = _cv(world, "pred")
    assert cv.info.get("mesh")
    got = cv.mesh.get(ids)
    res = np.array(VOXEL[::-1])
    off = np.array(OFFSET[::-1])
    # multi-resolution meshes are Draco-quantized: within a small fraction of a voxel
    tol = 0.02 * min(VOXEL)
    for i in ids:
        vox = np.argwhere(world.cc == i)[:, ::-1]      # x, y, z
        lo, hi = (vox.min(0) + off) * res, (vox.max(0) + 1 + off) * res
        verts = np.asarray(got[i].vertices)
        assert len(verts), i
        np.testing.assert_allclose(verts.min(0), lo, atol=tol, err_msg=f"segment {i} low")
        np.testing.assert_allclose(verts.max(0), hi, atol=tol, err_msg=f"segment {i} high")
        # the same vertices voxgate wrote (the relay served the files unchanged)
        np.testing.assert_allclose(np.sort(verts, axis=0),
                                   np.sort(world.meshes[i].vertices, axis=0), atol=tol)


# -- journey 4: proofreading through the relay ---------------------------------------------------
def test_proofreading_through_the_relay_is_seen_at_the_next_read(world: World) -> None:
    original = world.cc
    whole = _whole(OFFSET, original.shape)
    hist = world.d / "pf-history"

    def both() -> np.ndarray:
        a = _cv_read(world, "pf", 0, whole)
        b = _intern_read(world, "pf", 0, whole)
        np.testing.assert_array_equal(a.astype(np.uint64), b)
        return b

    np.testing.assert_array_equal(both(), original)    # the relay's cells are warm now
    vol = voxgate.open(f"bossdb://{world.relay.url}/j/pf/ch", token=TOKEN, mode="r+")
    ids = [int(i) for i in np.unique(original) if i]
    a, b = ids[0], ids[-1]
    voxgate.merge(vol, [a, b], history_dir=hist)
    merged = original.copy()
    merged[merged == b] = a
    np.testing.assert_array_equal(both(), merged)
    # split the largest segment with two seeds at its first and last voxel
    big = max(ids, key=lambda i: int((merged == i).sum()))
    pts = np.argwhere(merged == big)
    first = tuple(int(v) for v in pts[0] + OFFSET)
    last = tuple(int(v) for v in pts[-1] + OFFSET)
    s = voxgate.split(vol, big, seeds=[[first], [last]], history_dir=hist)
    (new,) = s.new_ids
    after = both()
    assert set(np.unique(after[merged == big]).tolist()) == {big, int(new)}
    assert (after[merged != big] == merged[merged != big]).all()
    np.testing.assert_array_equal(
        np.asarray(_files_read(world.d / "pf")), after)
    voxgate.undo(vol, n=2, history_dir=hist)
    np.testing.assert_array_equal(both(), original)
    np.testing.assert_array_equal(_files_read(world.d / "pf"), original)


def _files_read(layer: Path) -> np.ndarray:
    """The layer's scale 0 as CloudVolume reads it from the files (not through the relay)."""
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{layer}", progress=False, cache=False, fill_missing=False)
    return np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0)


def test_relay_info_names_no_stale_keys(world: World) -> None:
    """The precomputed info the relay serves for the mesh layer is the upstream's, scale for
    scale (key, size, offset, resolution)."""
    up = json.loads((world.d / "cc" / "info").read_text())
    served = _cv(world, "pred").info
    for a, b in zip(up["scales"], served["scales"], strict=True):
        for key in ("size", "voxel_offset", "resolution"):
            assert list(a[key]) == list(b[key]), key


# -- defects found on the way ------------------------------------------------------------------
def test_mesh_of_the_served_layer_without_ids_meshes_its_labels(world: World) -> None:
    """``voxgate.mesh`` of the layer read back through the relay's precomputed dialect, with no
    ids: the stored meshes cannot be listed over HTTP, so "auto" meshes the labels (it raised
    "pass the segment ids to read" before) and gets what it gets from the files."""
    served = voxgate.open(f"precomputed://{world.relay.url}/precomputed/j/pred/ch")
    got = voxgate.mesh(served)
    assert sorted(got) == sorted(world.meshes)
    for i, m in world.meshes.items():
        np.testing.assert_array_equal(got[i].vertices, m.vertices)
        np.testing.assert_array_equal(got[i].faces, m.faces)
    with pytest.raises(voxgate.errors.CapabilityNotSupportedError, match="pass the segment"):
        voxgate.mesh(served, prefer="server")
    # with ids, the stored meshes are read through the relay
    ids = sorted(world.meshes)[:2]
    stored = voxgate.mesh(served, ids=ids)
    assert stored.provenance.path == "server"
    assert sorted(stored) == ids


def test_mesh_of_a_view_of_a_layer_with_stored_meshes_meshes_the_view(world: World) -> None:
    """A view meshes only its region (docs/services/mesh.md), also where the layer stores
    meshes: "auto" returned every stored whole-segment mesh for any view."""
    layer = voxgate.open(f"precomputed://file://{world.d}/cc")
    view = layer[0:4]                  # a view indexes from the volume's first voxel
    inside = {int(i) for i in np.unique(world.cc[:4]) if i}
    got = voxgate.mesh(view)
    assert set(got) == inside
    assert got.provenance.path == "local"
    want = voxgate.mesh(world.cc[:4], voxel_size=VOXEL)
    res, off = np.array(VOXEL[::-1]), np.array(OFFSET[::-1])
    for i in inside:
        np.testing.assert_allclose(got[i].vertices, want[i].vertices + off * res)
    with pytest.raises(voxgate.errors.CapabilityNotSupportedError, match="whole segments"):
        voxgate.mesh(view, prefer="server")
    assert voxgate.mesh(layer).provenance.path == "server"   # the whole layer: stored meshes
