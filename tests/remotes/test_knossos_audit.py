"""An audit of knossos:// read and written directly, against the KNOSSOS dataset format as the
KNOSSOS program (dataset.cpp: fromLegacyConf, parsePyKnossosConf, parseToml, knossosCubeUrl,
Network::checkOnlineMags) and knossos_utils / knossos_cuber define it.  Datasets are built here
by hand following their source, and every voxel is compared with a brute-force reader of the
cube files (x%04d/y%04d/z%04d/NAME_magM_x%04d_y%04d_z%04d.raw, x fastest), missing cubes 0."""

from __future__ import annotations

import io
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import voxgate
from voxgate.errors import (
    CapabilityNotSupportedError,
    DtypeError,
    InvalidRequestError,
    OutOfBoundsError,
)
from voxgate.geometry import Box

RNG = np.random.default_rng(20240611)


# -- the format, by hand -------------------------------------------------------------------------
def cube_file(root: Path, name: str, mag: int, x: int, y: int, z: int, ext: str = "raw") -> Path:
    return (root / f"mag{mag}" / f"x{x:04d}" / f"y{y:04d}" / f"z{z:04d}" /
            f"{name}_mag{mag}_x{x:04d}_y{y:04d}_z{z:04d}.{ext}")


def write_cubes(root: Path, name: str, mag: int, data_xyz: np.ndarray,
                cube_xyz: tuple[int, int, int] = (128, 128, 128),
                skip: frozenset[tuple[int, int, int]] = frozenset()) -> None:
    """Raw cubes of an x, y, z array, each x fastest, zero-padded at the dataset's edge."""
    cx, cy, cz = cube_xyz
    gx, gy, gz = (-(-n // c) for n, c in zip(data_xyz.shape, cube_xyz, strict=True))
    for x in range(gx):
        for y in range(gy):
            for z in range(gz):
                if (x, y, z) in skip:
                    continue
                cube = np.zeros(cube_xyz, np.uint8)
                part = data_xyz[x * cx:(x + 1) * cx, y * cy:(y + 1) * cy, z * cz:(z + 1) * cz]
                cube[: part.shape[0], : part.shape[1], : part.shape[2]] = part
                f = cube_file(root, name, mag, x, y, z)
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(cube.tobytes(order="F"))


def brute_read(root: Path, name: str, mag: int, shape_zyx: tuple[int, ...],
               cube_xyz: tuple[int, int, int] = (128, 128, 128)) -> np.ndarray:
    """Every .raw cube file of one mag placed by its file name, z y x, absent cubes 0."""
    cx, cy, cz = cube_xyz
    grid = [-(-n // c) for n, c in zip(shape_zyx, (cz, cy, cx), strict=True)]
    full = np.zeros((grid[0] * cz, grid[1] * cy, grid[2] * cx), np.uint8)
    pat = re.compile(rf"{re.escape(name)}_mag{mag}_x(\d{{4}})_y(\d{{4}})_z(\d{{4}})\.raw")
    for f in (root / f"mag{mag}").rglob("*.raw"):
        m = pat.fullmatch(f.name)
        assert m, f
        x, y, z = (int(v) for v in m.groups())
        assert f.parent.relative_to(root / f"mag{mag}") == Path(f"x{x:04d}/y{y:04d}/z{z:04d}")
        cube = np.frombuffer(f.read_bytes(), np.uint8).reshape(cx, cy, cz, order="F")
        if z < grid[0] and y < grid[1] and x < grid[2]:
            full[z * cz:(z + 1) * cz, y * cy:(y + 1) * cy, x * cx:(x + 1) * cx] = cube.T
    return full[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]


def classic_conf(name: str, boundary: tuple[int, ...], scale: tuple[float, ...],
                 mag: int = 1, extra: str = "") -> str:
    """As knossos_cuber's write_knossos_conf writes it."""
    return (f'experiment name "{name}";\nboundary x {boundary[0]};\nboundary y {boundary[1]};\n'
            f"boundary z {boundary[2]};\nscale x {scale[0]};\nscale y {scale[1]};\n"
            f"scale z {scale[2]};\nmagnification {mag};\n" + extra)


def downsample_xyz(data: np.ndarray, f: int) -> np.ndarray:
    """Any mag-f array whose shape is the mag-1 shape divided by f, rounded up."""
    return np.ascontiguousarray(data[::f, ::f, ::f])


def knossos_cuber_dataset(root: Path, name: str = "exp1",
                          boundary: tuple[int, int, int] = (200, 150, 130),
                          scale: tuple[float, float, float] = (9.0, 9.0, 21.0),
                          mags: tuple[int, ...] = (1, 2, 4),
                          skip: frozenset[tuple[int, int, int]] = frozenset(),
                          root_conf: bool = True) -> dict[int, np.ndarray]:
    """A dataset as knossos_cuber lays it out: knossos.conf at the root and in every magM
    (boundary // M, scale * M, experiment NAME_magM), raw cubes; returns mag -> x, y, z data."""
    data = {1: RNG.integers(1, 255, boundary, dtype=np.uint8)}
    if root_conf:
        root.mkdir(parents=True, exist_ok=True)
        (root / "knossos.conf").write_text(classic_conf(name, boundary, scale))
    for m in mags:
        data[m] = downsample_xyz(data[1], m)
        write_cubes(root, name, m, data[m], skip=skip if m == 1 else frozenset())
        (root / f"mag{m}").mkdir(parents=True, exist_ok=True)
        (root / f"mag{m}" / "knossos.conf").write_text(classic_conf(
            name if m == 1 else f"{name}_mag{m}", tuple(b // m for b in boundary),
            tuple(s * m for s in scale), m))
    return data


ODD_BOXES = [  # z, y, x: across cube corners, at the far edges, single voxels
    ((120, 125, 127), (130, 150, 200)),
    ((0, 0, 0), (130, 150, 200)),
    ((127, 127, 127), (129, 129, 129)),
    ((3, 101, 57), (128, 128, 199)),
    ((129, 149, 199), (130, 150, 200)),
]


# -- reading ---------------------------------------------------------------------------------------
def test_classic_every_mag_against_brute_force(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    knossos_cuber_dataset(root, skip=frozenset({(1, 0, 1), (0, 1, 0)}))
    vol = voxgate.open(str(root))
    assert [tuple(s.shape) for s in vol.scales] == [(130, 150, 200), (65, 75, 100),
                                                    (33, 38, 50)]
    # the voxel size of each mag is the one its own magM/knossos.conf gives
    for sc, m in zip(vol.scales, (1, 2, 4), strict=True):
        conf = (root / f"mag{m}" / "knossos.conf").read_text()
        sx, sy, sz = (float(re.search(rf"scale {a} ([0-9.]+);", conf).group(1))  # type: ignore[union-attr]
                      for a in "xyz")
        assert sc.voxel_size.zyx() == (sz, sy, sx)
        ref = brute_read(root, "exp1", m, tuple(sc.shape))
        np.testing.assert_array_equal(vol.at_scale(sc.index).read(), ref)
        for start, stop in ODD_BOXES:
            b = Box(start, stop).intersect(sc.bounds)
            if b.is_empty():
                continue
            np.testing.assert_array_equal(vol.at_scale(sc.index).read(b), ref[b.slices()])
    assert sorted(vol.missing_chunks()) == [(0, 1, 0), (1, 0, 1)]


def test_a_mag_conf_opens_the_dataset(tmp_path: Path) -> None:
    """magM/knossos.conf holds mag M's boundary and voxel size (knossos_cuber) and names the
    experiment NAME_magM: KNOSSOS multiplies the boundary by M and divides the voxel size.  The
    old code took mag 2's boundary for mag 1's and read cubes named exp1_mag2_mag1_...: zeros."""
    root = tmp_path / "ds"
    data = knossos_cuber_dataset(root, boundary=(201, 150, 130), mags=(1, 2))
    vol = voxgate.open(f"knossos://{root}/mag2/knossos.conf")
    assert vol.shape == (130, 150, 201)  # the root conf's exact boundary, not 2 * (201 // 2)
    assert vol.voxel_size.zyx() == (21.0, 9.0, 9.0)
    np.testing.assert_array_equal(vol.read(), data[1].transpose(2, 1, 0))
    np.testing.assert_array_equal(vol.at_scale(1).read(), data[2].transpose(2, 1, 0))

    # no dataset-level conf at all: the mag 2 conf alone describes the dataset, as in KNOSSOS
    solo = tmp_path / "solo"
    knossos_cuber_dataset(solo, mags=(2,), root_conf=False)
    vol = voxgate.open(f"knossos://{solo}/mag2/knossos.conf")
    assert vol.shape == (130, 150, 200)
    assert vol.scales[1].voxel_size.zyx() == (42.0, 18.0, 18.0)
    np.testing.assert_array_equal(vol.at_scale(1).read(), brute_read(solo, "exp1", 2,
                                                                     (65, 75, 100)))
    assert vol.at_scale(1).read().all()


def jpeg_cube(data_zyx: np.ndarray, quality: int = 95) -> bytes:
    """As knossos_cuber compresses a cube: the raw bytes as a (z*y, x) grey image."""
    cz, cy, cx = data_zyx.shape
    buf = io.BytesIO()
    Image.fromarray(data_zyx.reshape(cz * cy, cx)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_compression_ratio_1000_reads_jpg_cubes(tmp_path: Path) -> None:
    """KNOSSOS: compression_ratio 1000 means .jpg cubes (the old code looked for .raw only and
    read zeros)."""
    root = tmp_path / "ds"
    root.mkdir()
    (root / "knossos.conf").write_text(
        classic_conf("j", (140, 128, 128), (10, 10, 10), extra="compression_ratio 1000;\n"))
    smooth = np.broadcast_to((np.arange(128, dtype=np.uint8) // 2 + 40)[None, None, :],
                             (128, 128, 128)).copy()
    f = cube_file(root, "j", 1, 1, 0, 0, "jpg")
    f.parent.mkdir(parents=True)
    f.write_bytes(jpeg_cube(smooth))
    with Image.open(f) as im:  # the reference decoder
        ref = np.asarray(im.convert("L")).reshape(128, 128, 128).astype(int)
    got = voxgate.open(str(root))[0:128, 0:128, 128:140].read().astype(int)
    assert np.abs(got - ref[:, :, :12]).max() <= 2
    assert not voxgate.open(str(root))[0:128, 0:128, 0:128].read().any()  # absent cube


def test_jpeg2000_cubes_are_refused_not_zeros(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "knossos.conf").write_text(
        classic_conf("j", (140, 20, 20), (10, 10, 10), extra="compression_ratio 6;\n"))
    write_cubes(root, "j", 1, np.full((128, 20, 20), 9, np.uint8))  # cube x0 as raw
    f = cube_file(root, "j", 1, 1, 0, 0, "6.jp2")
    f.parent.mkdir(parents=True)
    f.write_bytes(b"\0\0\0\x0cjP  \r\n\x87\n")
    vol = voxgate.open(str(root))
    assert (vol[:, :, 0:128].read() == 9).all()  # KNOSSOS' raw layer of the same dataset
    with pytest.raises(CapabilityNotSupportedError, match="JPEG 2000"):
        vol[:, :, 128:140].read()


def test_conf_spellings(tmp_path: Path) -> None:
    """Spellings KNOSSOS reads: no ';', CRLF, a float boundary, NAME_mag1, and the .k.conf that
    knossos_utils' initialize_without_conf writes (unquoted name, '%.2f' scales, empty
    magM/knossos.conf files).  The old code refused the first and the last."""
    data = RNG.integers(0, 255, (140, 30, 20), dtype=np.uint8)
    variants = {
        "nosemi": ("knossos.conf", 'experiment name "e"\nboundary x 140\nboundary y 30\n'
                   "boundary z 20\nscale x 5\nscale y 5\nscale z 30\n"),
        "crlf": ("knossos.conf", classic_conf("e", (140.0, 30, 20), (5, 5, 30))  # type: ignore[arg-type]
                 .replace("\n", "\r\n")),
        "mag1name": ("knossos.conf", classic_conf("e_mag1", (140, 30, 20), (5, 5, 30))),
        "kutils": ("e.k.conf", "experiment name e;\nboundary x 140;\nboundary y 30;\n"
                   "boundary z 20;\nscale x 5.00;\nscale y 5.00;\nscale z 30.00;\n"
                   "magnification 1;\n"),
    }
    for d, (fname, text) in variants.items():
        root = tmp_path / d
        write_cubes(root, "e", 1, data)
        (root / fname).write_text(text)
        (root / "mag1" / "knossos.conf").touch()  # empty, as knossos_utils leaves it
        vol = voxgate.open(f"knossos://{root}")
        assert vol.shape == (20, 30, 140), d
        assert vol.voxel_size.zyx() == (30.0, 5.0, 5.0), d
        np.testing.assert_array_equal(vol.read(), data.transpose(2, 1, 0), err_msg=d)


@pytest.mark.parametrize(("line", "new", "what"), [
    ("boundary x 200;", "boundary x 0;", "boundary x"),
    ("boundary x 200;", "boundary x -5;", "boundary x"),
    ("boundary y 150;", "boundary y 12.5;", "boundary y"),
    ("boundary z 130;", "", "boundary z"),
    ("scale y 10;", "scale y 0;", "scale"),
    ('experiment name "e";', "", "experiment name"),
    ('experiment name "e";', "experiment name;", "experiment name"),
    ("magnification 1;", "magnification 3;", "magnification"),
    ("magnification 1;", "compression_ratio -1;", "compression_ratio"),
])
def test_bad_classic_conf(tmp_path: Path, line: str, new: str, what: str) -> None:
    """Each gives InvalidRequestError naming the entry (the old code made a 0 or negative
    boundary one voxel, divided by a zero scale, and named a dataset 'True')."""
    (tmp_path / "mag1").mkdir()
    text = classic_conf("e", (200, 150, 130), (10, 10, 10))
    assert line in text
    (tmp_path / "knossos.conf").write_text(text.replace(line, new))
    with pytest.raises(InvalidRequestError, match=re.escape(what)):
        voxgate.open(f"knossos://{tmp_path}")


def png_cube(data_zyx: np.ndarray) -> bytes:
    cz, cy, cx = data_zyx.shape
    buf = io.BytesIO()
    Image.fromarray(data_zyx.reshape(cz * cy, cx)).save(buf, format="PNG")
    return buf.getvalue()


def test_pyknossos_conf_first_section(tmp_path: Path) -> None:
    """A PyKNOSSOS conf of an image layer and a segmentation layer: the first is the dataset
    (the old code merged the sections and refused the overlay's extension); _FileType 1 is
    PNG, as KNOSSOS reads it (the old code looked for .raw cubes)."""
    root = tmp_path / "pyk"
    root.mkdir()
    (root / "ds.pyk.conf").write_text(
        "[Dataset]\n_BaseName = img\n_DataScale = 8,8,20,16,16,40\n_Extent = 70,50,40\n"
        "_CubeSize = 32,32,32\n_FileType = 1\n\n"
        "[Dataset 2]\n_BaseName = seg\n_BaseExt = .seg.sz.zip\n_CubeSize = 64,64,64\n"
        "_DataScale = 8,8,20\n_Extent = 70,50,40\n"
    )
    cube = RNG.integers(0, 255, (32, 32, 32), dtype=np.uint8)  # z, y, x
    f = cube_file(root, "img", 1, 2, 1, 0, "png")
    f.parent.mkdir(parents=True)
    f.write_bytes(png_cube(cube))
    vol = voxgate.open(f"knossos://{root}")
    assert vol.shape == (40, 50, 70) and tuple(vol.chunks) == (32, 32, 32)
    assert [s.voxel_size.zyx() for s in vol.scales] == [(20.0, 8.0, 8.0), (40.0, 16.0, 16.0)]
    ref = np.zeros((40, 50, 70), np.uint8)
    ref[0:32, 32:50, 64:70] = cube[:, :18, :6]
    np.testing.assert_array_equal(vol.read(), ref)


@pytest.mark.parametrize(("text", "what"), [
    ("_BaseName = a\n_DataScale = 1,1,1\n_Extent = 100,90\n", "_Extent"),
    ("_BaseName = a\n_DataScale = 1,1,x\n_Extent = 100,90,5\n", "_DataScale"),
    ("_BaseName = a\n_DataScale = 1,1,1,2\n_Extent = 100,90,5\n", "_DataScale"),
    ("_BaseName = a\n_DataScale = 1,1,1\n_Extent = 100,0,5\n", "_Extent"),
    ("_BaseName = a\n_DataScale = 1,1,1\n_Extent = 10,10,5\n_CubeSize = 64,64\n", "_CubeSize"),
    ("_BaseName = a\n_DataScale = 1,1,1\n_Extent = 10,10,5\n_FileType = 7\n", "_FileType"),
])
def test_bad_pyknossos_conf(tmp_path: Path, text: str, what: str) -> None:
    (tmp_path / "a.pyk.conf").write_text("[Dataset]\n" + text)
    with pytest.raises(InvalidRequestError, match=what):
        voxgate.open(f"knossos://{tmp_path}")


def toml_layer(**keys: object) -> str:
    def val(v: object) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        return repr(v) if not isinstance(v, list) else "[" + ", ".join(val(x) for x in v) + "]"

    return "[[Layer]]\n" + "".join(f"{k} = {val(v)}\n" for k, v in keys.items())


def test_toml_as_knossos_utils_writes_it(tmp_path: Path) -> None:
    """LayerConfig.to_toml_string: single-quoted strings, DataType, NumChannels, Description,
    png cubes; URL file:// naming where the cubes are."""
    cubes = tmp_path / "cubes"
    data = RNG.integers(0, 255, (50, 40, 30), dtype=np.uint8)  # x, y, z
    cube = np.zeros((32, 64, 64), np.uint8)  # z, y, x
    cube[:30, :40, :50] = data.transpose(2, 1, 0)
    f = cube_file(cubes, "t", 1, 0, 0, 0, "png")
    f.parent.mkdir(parents=True)
    f.write_bytes(png_cube(cube))
    conf = tmp_path / "conf" / "t.k.toml"
    conf.parent.mkdir()
    conf.write_text(toml_layer(URL=f"file://{cubes}/", Name="t", FileExtension=[".png"],
                               Extent_px=[50, 40, 30], VoxelSize_nm=[[4.5, 4.5, 35.0]],
                               CubeShape_px=[64, 64, 32], DataType="uint8", NumChannels=1,
                               Description="a test"))
    vol = voxgate.open(f"knossos://{conf}")
    assert vol.voxel_size.zyx() == (35.0, 4.5, 4.5)
    np.testing.assert_array_equal(vol.read(), data.transpose(2, 1, 0))


@pytest.mark.parametrize(("keys", "what"), [
    ({"ServerFormat": "precomputed"}, "precomputed://"),
    ({"URL": "https://example.org/ds/"}, "local datasets only"),
    ({"URL": "http://user:pw@example.org/ds/"}, "local datasets only"),
    ({"URL": "file:///somewhere/info"}, "precomputed://"),
    ({"DataType": "uint16"}, "uint16"),
    ({"NumChannels": 3}, "NumChannels"),
])
def test_toml_layers_voxgate_cannot_read(tmp_path: Path, keys: dict[str, object],
                                         what: str) -> None:
    """The old code opened each of these and read zeros (or uint8 of uint16 cubes)."""
    base: dict[str, object] = dict(Name="t", FileExtension=[".raw"], Extent_px=[10, 10, 10],
                                   VoxelSize_nm=[[1, 1, 1]], CubeShape_px=[128, 128, 128])
    (tmp_path / "t.k.toml").write_text(toml_layer(**base, **keys))
    with pytest.raises(CapabilityNotSupportedError, match=re.escape(what)) as info:
        voxgate.open(f"knossos://{tmp_path}")
    assert "pw" not in str(info.value)


def test_pyknossos_remote_base_url(tmp_path: Path) -> None:
    """_BaseURL: KNOSSOS streams the cubes from there (the old code read zeros from disk)."""
    text = "[Dataset]\n_BaseName = a\n_DataScale = 1,1,1\n_Extent = 10,10,5\n"
    (tmp_path / "a.pyk.conf").write_text(text + "_BaseURL = https://example.org/a/\n")
    with pytest.raises(CapabilityNotSupportedError, match="local datasets only"):
        voxgate.open(f"knossos://{tmp_path}")
    elsewhere = tmp_path / "cubes"
    write_cubes(elsewhere, "a", 1, np.full((10, 10, 5), 3, np.uint8))
    (tmp_path / "a.pyk.conf").write_text(text + f"_BaseURL = file://{elsewhere}\n")
    assert (voxgate.open(f"knossos://{tmp_path}").read() == 3).all()


# -- writing ---------------------------------------------------------------------------------------
def test_writes_read_back_by_brute_force(tmp_path: Path) -> None:
    """Partial cubes, cubes at the boundary, new cubes, two scales, an odd cube shape and an
    offset; every cube file decoded by hand equals a numpy reference."""
    shape, offset, chunks = (37, 70, 90), (3, 5, 7), (16, 32, 40)
    vol = voxgate.create(f"knossos://{tmp_path}/w", shape=shape, chunks=chunks, dtype="uint8",
                         voxel_size=(30, 6, 6), num_scales=2, offset=offset)
    refs = [np.zeros(tuple(s.shape), np.uint8) for s in vol.scales]
    writes = [  # (scale, start z y x, stop) in volume coordinates
        (0, (3, 5, 7), (40, 75, 97)),
        (0, (10, 30, 40), (25, 40, 60)),   # inside, across cube corners
        (0, (18, 36, 46), (19, 37, 47)),   # one voxel
        (0, (35, 60, 90), (40, 75, 97)),   # at the far boundary
        (1, (4, 3, 4), (20, 18, 30)),
    ]
    for scale, start, stop in writes:
        sc = vol.scales[scale]
        box = Box(start, stop)
        block = RNG.integers(0, 255, tuple(box.shape), dtype=np.uint8)
        vol.at_scale(scale).write(block, box)
        local = box.translate([-o for o in sc.offset])
        refs[scale][local.slices()] = block
    for sc, ref in zip(vol.scales, refs, strict=True):
        got = brute_read(tmp_path / "w", "w", sc.index + 1, tuple(sc.shape),
                         tuple(sc.chunks.xyz()))  # type: ignore[arg-type]
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(voxgate.open(f"knossos://{tmp_path}/w")
                                      .at_scale(sc.index).read(), ref)
    conf = tomllib.loads((tmp_path / "w" / "w.k.toml").read_text())["Layer"][0]
    # the keys KNOSSOS' parseToml requires (toml::find), of the types it asks for
    for key in ("Name", "Extent_px", "CubeShape_px", "VoxelSize_nm", "FileExtension",
                "Description"):
        assert key in conf, key
    assert conf["Extent_px"] == [90, 70, 37] and conf["CubeShape_px"] == [40, 32, 16]
    assert all(isinstance(v, int) for v in conf["Extent_px"] + conf["CubeShape_px"])


def knossos_legacy_conf(text: str) -> dict[str, object]:
    """KNOSSOS' fromLegacyConf, line by line: tokens split on ' ' and ';'."""
    info: dict[str, object] = {}
    for line in text.splitlines():
        tok = re.split(r"[ ;]", line)
        if tok[0] == "experiment":
            info["name"] = line.split('"')[1]
        elif tok[0] in ("scale", "boundary"):
            info[f"{tok[0]} {tok[1]}"] = float(tok[2])
        elif tok[0] == "magnification":
            info["magnification"] = int(tok[1])
    return info


def test_classic_create_is_found_by_knossos(tmp_path: Path) -> None:
    """KNOSSOS finds a classic dataset's mags by probing magM/knossos.conf
    (Network::checkOnlineMags); voxgate wrote only the root conf and empty mag folders, so
    KNOSSOS found no mag at all."""
    vol = voxgate.create(f"knossos://{tmp_path}/c", shape=(130, 150, 201),
                         chunks=(128, 128, 128), dtype="uint8", voxel_size=(10, 10, 10),
                         num_scales=3, conf="knossos.conf", experiment="cexp")
    data = RNG.integers(0, 255, (130, 150, 201), dtype=np.uint8)
    vol.write(data[5:130, 7:150, 11:201], Box((5, 7, 11), (130, 150, 201)))
    vol.write(data[0:5, 0:150, 0:201], Box((0, 0, 0), (5, 150, 201)))
    vol.write(data[5:130, 0:7, 0:201], Box((5, 0, 0), (130, 7, 201)))
    vol.write(data[5:130, 7:150, 0:11], Box((5, 7, 0), (130, 150, 11)))
    np.testing.assert_array_equal(brute_read(tmp_path / "c", "cexp", 1, (130, 150, 201)), data)
    root = knossos_legacy_conf((tmp_path / "c" / "knossos.conf").read_text())
    assert root == {"name": "cexp", "boundary x": 201, "boundary y": 150, "boundary z": 130,
                    "scale x": 10, "scale y": 10, "scale z": 10, "magnification": 1}
    for m, sc in zip((1, 2, 4), vol.scales, strict=True):
        f = tmp_path / "c" / f"mag{m}" / "knossos.conf"
        assert f.is_file(), f
        info = knossos_legacy_conf(f.read_text())
        assert info["magnification"] == m
        assert str(info["name"]).split("_mag")[0] == "cexp"
        assert [info[f"scale {a}"] for a in "xyz"] == [10.0 * m] * 3
        assert [info[f"boundary {a}"] for a in "xyz"] == list(sc.shape.xyz())
        # opening a mag's conf opens the dataset
        again = voxgate.open(f"knossos://{f}")
        assert again.shape == (130, 150, 201) and len(again.scales) == 3


def test_writes_to_image_cube_datasets(tmp_path: Path) -> None:
    """voxgate writes .raw cubes: a dataset whose configuration lists only .png refuses the
    write (the old code wrote .raw cubes nobody reads: the write was lost)."""
    root = tmp_path / "png"
    root.mkdir()
    (root / "p.k.toml").write_text(toml_layer(
        Name="p", FileExtension=[".png"], Extent_px=[40, 40, 40], VoxelSize_nm=[[1, 1, 1]],
        CubeShape_px=[32, 32, 32], Description=""))
    old = RNG.integers(0, 255, (32, 32, 32), dtype=np.uint8)
    f = cube_file(root, "p", 1, 0, 0, 0, "png")
    f.parent.mkdir(parents=True)
    f.write_bytes(png_cube(old))
    vol = voxgate.open(f"knossos://{root}", mode="r+")
    with pytest.raises(CapabilityNotSupportedError, match="does not write"):
        vol[0:40, 0:40, 0:40] = 7
    assert not list(root.rglob("*.raw"))
    np.testing.assert_array_equal(vol[0:32, 0:32, 0:32].read(), old)


def test_write_over_a_jpg_cube_reads_back(tmp_path: Path) -> None:
    """FileExtension ['.jpg', '.raw']: the written .raw cube is read, not the older .jpg (the
    old code read the .jpg: the write was invisible)."""
    root = tmp_path / "jr"
    root.mkdir()
    (root / "j.k.toml").write_text(toml_layer(
        Name="j", FileExtension=[".jpg", ".raw"], Extent_px=[40, 40, 40],
        VoxelSize_nm=[[1, 1, 1]], CubeShape_px=[32, 32, 32], Description=""))
    f = cube_file(root, "j", 1, 0, 0, 0, "jpg")
    f.parent.mkdir(parents=True)
    f.write_bytes(jpeg_cube(np.full((32, 32, 32), 50, np.uint8)))
    vol = voxgate.open(f"knossos://{root}", mode="r+")
    assert (vol[0:32, 0:32, 0:32].read() == 50).all()
    vol[0:40, 0:40, 0:40] = 200
    assert (vol.read() == 200).all()
    assert (brute_read(root, "j", 1, (40, 40, 40), (32, 32, 32)) == 200).all()


def test_bad_requests_leave_cubes_as_they_were(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    data = knossos_cuber_dataset(root, mags=(1,))
    before = {p: p.read_bytes() for p in root.rglob("*.raw")}
    vol = voxgate.open(str(root), mode="r+")
    with pytest.raises(OutOfBoundsError):
        vol[120:140, 0:5, 0:5].read()
    with pytest.raises(OutOfBoundsError):
        vol.write(np.ones((20, 5, 5), np.uint8), Box((120, 0, 0), (140, 5, 5)))
    with pytest.raises(DtypeError, match="uint16"):
        vol[0:2, 0:2, 0:2] = np.full((2, 2, 2), 300, np.uint16)
    with pytest.raises(DtypeError, match="float64"):
        vol[0:2, 0:2, 0:2] = np.full((2, 2, 2), 1.5)
    with pytest.raises(InvalidRequestError, match="shape"):
        vol[0:2, 0:2, 0:2] = np.zeros((2, 2, 3), np.uint8)
    assert {p: p.read_bytes() for p in root.rglob("*.raw")} == before
    np.testing.assert_array_equal(vol.read(), data[1].transpose(2, 1, 0))


def test_write_removes_the_stale_image_copy(tmp_path: Path) -> None:
    """FileExtension ['.jpg', '.raw'] (KNOSSOS' own datasets): KNOSSOS makes one layer per
    extension and shows the first, the .jpg.  A written cube's .jpg holds the old voxels: it
    is removed once the .raw is written, so no layer shows them (the old code left it)."""
    root = tmp_path / "jr"
    root.mkdir()
    (root / "j.k.toml").write_text(toml_layer(
        Name="j", FileExtension=[".jpg", ".raw"], Extent_px=[64, 32, 32],
        VoxelSize_nm=[[1, 1, 1]], CubeShape_px=[32, 32, 32], Description=""))
    for x in (0, 1):
        f = cube_file(root, "j", 1, x, 0, 0, "jpg")
        f.parent.mkdir(parents=True)
        f.write_bytes(jpeg_cube(np.full((32, 32, 32), 50, np.uint8)))
    vol = voxgate.open(f"knossos://{root}", mode="r+")
    vol[0:32, 0:32, 40:48] = 200  # part of cube x1: the rest comes from its .jpg
    assert not cube_file(root, "j", 1, 1, 0, 0, "jpg").exists()
    assert cube_file(root, "j", 1, 0, 0, 0, "jpg").exists()  # a cube not written keeps it
    ref = np.full((32, 32, 32), 50, np.uint8)
    ref[:, :, 8:16] = 200
    got = brute_read(root, "j", 1, (32, 32, 64), (32, 32, 32))[:, :, 32:]
    assert np.abs(got.astype(int) - ref).max() <= 2  # the unwritten part, decoded from .jpg
    np.testing.assert_array_equal(vol[:, :, 32:64].read(), got)


def knossos_server_dataset(root: Path, folders: tuple[int, ...]) -> list[np.ndarray]:
    """A .k.toml layer of ServerFormat 'knossos' with three scales whose cubes are in
    ``folders`` (one mag folder per scale); returns each scale's data, z y x."""
    root.mkdir()
    (root / "s.k.toml").write_text(toml_layer(
        URL=f"file://{root}", Name="s", Description="", FileExtension=[".raw"],
        ServerFormat="knossos", Extent_px=[80, 64, 40], CubeShape_px=[32, 32, 32],
        VoxelSize_nm=[[10, 10, 20], [20, 20, 40], [40, 40, 80]], Color="red", Visible=True))
    data = []
    for k, m in enumerate(folders):
        shape_xyz = tuple(-(-n // 2**k) for n in (80, 64, 40))
        d = RNG.integers(1, 255, shape_xyz, dtype=np.uint8)
        write_cubes(root, "s", m, d, (32, 32, 32))
        data.append(d.transpose(2, 1, 0))
    return data


@pytest.mark.parametrize("folders", [(1, 2, 4), (1, 2, 3)], ids=["knossos", "knossos_utils"])
def test_toml_server_format_knossos_mag_folders(tmp_path: Path,
                                                folders: tuple[int, int, int]) -> None:
    """ServerFormat 'knossos': KNOSSOS reads scale k from mag(2**k) (knossosCubeUrl, e2006.k.toml),
    knossos_utils writes and reads it in mag(k+1).  Either layout on disk reads back (the old
    code read scale 2 of KNOSSOS' layout from an absent mag3: zeros)."""
    root = tmp_path / "ds"
    data = knossos_server_dataset(root, folders)
    vol = voxgate.open(str(root))
    assert [tuple(s.shape) for s in vol.scales] == [d.shape for d in data]
    for sc, m, d in zip(vol.scales, folders, data, strict=True):
        ref = brute_read(root, "s", m, tuple(sc.shape), (32, 32, 32))
        np.testing.assert_array_equal(ref, d)
        np.testing.assert_array_equal(vol.at_scale(sc.index).read(), ref)
        b = Box((3, 5, 9), (17, 30, 33)).intersect(sc.bounds)  # across cube corners
        np.testing.assert_array_equal(vol.at_scale(sc.index).read(b), ref[b.slices()])


def test_toml_server_format_knossos_both_layouts_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    knossos_server_dataset(root, (1, 2, 4))
    write_cubes(root, "s", 3, np.ones((20, 16, 10), np.uint8), (32, 32, 32))
    with pytest.raises(InvalidRequestError, match=r"mag3.*mag4"):
        voxgate.open(str(root))


def test_add_scales_keeps_what_voxgate_does_not_read(tmp_path: Path) -> None:
    """add_scales rewrote the .k.toml from voxgate's own fields: ServerFormat, URL, Color,
    Visible and a second (segmentation) layer were dropped, and the new scale of a KNOSSOS
    (power-of-two) layout went to mag4, scale 2's folder.  Now the file keeps them and the new
    scale is mag8, where KNOSSOS reads it."""
    root = tmp_path / "ds"
    knossos_server_dataset(root, (1, 2, 4))
    conf = root / "s.k.toml"
    conf.write_text(conf.read_text() + "AdditionalQuery = 'a=\"1\"'\n[[Layer]]\n"
                    "Name = 'seg'\nFileExtension = ['.seg.sz.zip']\nExtent_px = [80, 64, 40]\n"
                    "CubeShape_px = [128, 128, 128]\nVoxelSize_nm = [[10, 10, 20]]\n"
                    "Description = ''\nDataType = 'uint64'\nTags = {kind = 'overlay'}\n")
    before = tomllib.loads(conf.read_text())
    vol = voxgate.open(str(root), mode="r+")
    voxgate.downsample(vol, num_scales=4)
    after = tomllib.loads(conf.read_text())
    assert after["Layer"][1] == before["Layer"][1]
    first = dict(after["Layer"][0])
    sizes = first.pop("VoxelSize_nm")
    assert sizes[:3] == before["Layer"][0]["VoxelSize_nm"] and len(sizes) == 4
    assert first == {k: v for k, v in before["Layer"][0].items() if k != "VoxelSize_nm"}
    again = voxgate.open(str(root))
    assert len(again.scales) == 4
    for sc, m in zip(again.scales, (1, 2, 4, 8), strict=True):
        ref = brute_read(root, "s", m, tuple(sc.shape), (32, 32, 32))
        np.testing.assert_array_equal(again.at_scale(sc.index).read(), ref)
    assert not (root / "mag3").exists()
    assert brute_read(root, "s", 8, tuple(again.scales[3].shape), (32, 32, 32)).any()
