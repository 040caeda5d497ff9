"""Unusual local file paths through every file store and the main journeys: names with spaces,
non-ASCII, '%' sequences (taken literally, as CloudVolume takes file:// paths), URL punctuation,
'#' in a directory's name (part of the name for every store but hdf5://, where '#' starts the
object path and a '#' that cannot is refused clearly), relative paths, '..', symbolic links,
trailing slashes, file:// spellings and '~'."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import voxgate
from voxgate.cli import main
from voxgate.errors import InvalidRequestError, RemoteNotFoundError

SHAPE, CHUNKS, VS = (8, 20, 24), (4, 8, 8), (4, 4, 4)
DATA = (np.arange(8 * 20 * 24) % 200 + 1).astype(np.uint8).reshape(SHAPE)
LABELS = np.zeros(SHAPE, np.uint32)
LABELS[2:6, 4:14, 5:17] = 7
LABELS[1:7, 14:19, 2:9] = 9

#: a store's scheme and the name of a volume of it
STORES = {"zarr": "v.zarr", "n5": "v.n5", "precomputed": "v", "hdf5": "v.h5", "tiff": "v.tif",
          "knossos": "v", "webknossos": "v"}
ODD = {"spaces_unicode": "d ü 日本", "percent": "p%20q%41", "punctuation": "q?a&b=c+d;e,f@[1]",
       "long": "L" * 200, "hash": "h #3"}


def make(url: str, data: np.ndarray = DATA) -> voxgate.Volume:
    kind = "segmentation" if data.dtype == np.uint32 else "image"
    vol = voxgate.create(url, shape=SHAPE, dtype=data.dtype.name, chunks=CHUNKS, voxel_size=VS,
                         kind=kind)
    vol[:] = data
    return vol


def close(vol: voxgate.Volume) -> None:
    if hasattr(vol.remote, "close"):
        vol.remote.close()


@pytest.mark.parametrize(("scheme", "odd"), [
    (s, o) for s in STORES for o in ODD
    if (s, o) != ("hdf5", "hash")])  # (hdf5:// reads '#' as the object path: test_hdf5_hash_*)
def test_odd_names_write_where_named(tmp_path: Path, scheme: str, odd: str) -> None:
    """Each store writes at the literal path and reads back; the URL, the spec and (for a
    volume detected from its path) the bare path reopen the same voxels."""
    folder = tmp_path / ODD[odd]
    folder.mkdir()
    path = folder / STORES[scheme]
    vol = make(f"{scheme}://{path}")
    close(vol)
    assert path.exists() and sorted(os.listdir(tmp_path)) == [ODD[odd]]
    assert np.array_equal(voxgate.open(vol.url)[:], DATA)
    assert np.array_equal(voxgate.open(**vol.spec())[:], DATA)
    bare = voxgate.open(str(path))
    assert bare.url == vol.url and np.array_equal(bare[:], DATA)


@pytest.mark.parametrize("scheme", ["zarr", "n5", "precomputed", "tiff", "knossos",
                                    "webknossos"])
def test_bare_path_with_hash_in_directory_opens(tmp_path: Path, scheme: str) -> None:
    """A '#' in a directory's name is part of the name for a bare path too (it was cut there,
    as if it started an HDF5 object path: "'.../run ' does not exist")."""
    folder = tmp_path / "run #3"
    folder.mkdir()
    path = folder / STORES[scheme]
    make(f"{scheme}://{path}")
    vol = voxgate.open(str(path))
    assert vol.url.startswith(f"{scheme}://{path}") and np.array_equal(vol[:], DATA)


@pytest.mark.parametrize("name", ["v.zarr", "v.n5", "v.tif"])
def test_bare_create_with_hash_in_directory(tmp_path: Path, name: str) -> None:
    """Creating at a bare path whose directory holds '#' names the store by the extension (it
    was 'cannot tell which format to create')."""
    path = tmp_path / "run #3" / name
    vol = make(str(path))
    close(vol)
    assert path.exists() and sorted(os.listdir(tmp_path)) == ["run #3"]
    assert np.array_equal(voxgate.open(str(path))[:], DATA)


# -- hdf5: '#' starts the object path -------------------------------------------------------------
def test_hdf5_hash_in_directory_create_refused_nothing_written(tmp_path: Path) -> None:
    """``hdf5:///x/d #h/v.h5`` wrote an HDF5 file named '/x/d ' holding a dataset 'h/v.h5'."""
    with pytest.raises(InvalidRequestError) as info:
        make(f"hdf5://{tmp_path}/d #h/v.h5")
    text = str(info.value)
    assert "'#' starts the object path" in text and repr(f"{tmp_path}/d ") in text
    assert ".h5" in text and "rename" in text
    assert os.listdir(tmp_path) == []


def test_hdf5_hash_bare_create_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="'#' starts the object path"):
        make(f"{tmp_path}/d #h/v.h5")
    assert os.listdir(tmp_path) == []


def test_hdf5_hash_part_before_is_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for call in (lambda: make(f"hdf5://{tmp_path}/d#h/v.h5"),
                 lambda: voxgate.open(f"hdf5://{tmp_path}/d#h/v.h5"),
                 lambda: voxgate.open(f"{tmp_path}/d#h/v.h5")):
        with pytest.raises(InvalidRequestError) as info:
            call()
        assert "'#' starts the object path" in str(info.value)
        assert f"{str(tmp_path / 'd')!r} is a directory, not an HDF5 file" in str(info.value)
    assert os.listdir(tmp_path / "d") == []


def test_hdf5_hash_file_existing_as_written(tmp_path: Path) -> None:
    """An HDF5 file under a directory named with '#' (made by h5py): the message says the path
    exists as written and how to reach it (it was "HDF5 file /x/e  does not exist")."""
    import h5py

    (tmp_path / "e #h").mkdir()
    path = tmp_path / "e #h" / "v.h5"
    with h5py.File(path, "w") as f:
        f["volume"] = DATA
    for url in (f"hdf5://{path}", str(path)):
        with pytest.raises(InvalidRequestError) as info:
            voxgate.open(url)
        assert f"{str(path)!r} exists as written" in str(info.value)
        assert "symbolic link" in str(info.value)
    link = tmp_path / "e_h"
    link.symlink_to(tmp_path / "e #h")
    assert np.array_equal(voxgate.open(f"hdf5://{link}/v.h5")[:], DATA)


def test_hdf5_documented_spellings_still_work(tmp_path: Path) -> None:
    """'#' after a file named .h5, a file:// spelling, a bare path with a fragment, and an
    existing HDF5 file without an extension (a new dataset in it too)."""
    import h5py

    vol = make(f"hdf5://{tmp_path}/a b.h5#/g/raw")
    close(vol)
    assert vol.url == f"hdf5://{tmp_path}/a b.h5#/g/raw"
    for url in (f"hdf5://file://{tmp_path}/a b.h5#/g/raw", f"{tmp_path}/a b.h5#g/raw"):
        assert np.array_equal(voxgate.open(url)[:], DATA)
    with h5py.File(tmp_path / "a b.h5", "r") as f:
        assert np.array_equal(f["g/raw"][:], DATA)
    with h5py.File(tmp_path / "noext", "w") as f:
        f["raw"] = DATA
    assert np.array_equal(voxgate.open(f"hdf5://{tmp_path}/noext#/raw")[:], DATA)
    other = make(f"hdf5://{tmp_path}/noext#/more")
    close(other)
    with h5py.File(tmp_path / "noext", "r") as f:
        assert np.array_equal(f["more"][:], DATA)
    # a new file without an extension is created when no '#' is given
    plain = make(f"hdf5://{tmp_path}/plain")
    close(plain)
    assert (tmp_path / "plain").is_file()


def test_hdf5_new_file_without_extension_before_hash_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match=r"hdf5://.*/new\.h5#/raw"):
        make(f"hdf5://{tmp_path}/new#/raw")
    assert os.listdir(tmp_path) == []
    with pytest.raises(RemoteNotFoundError):
        voxgate.open(f"hdf5://{tmp_path}/new#/raw")


# -- peers read what voxgate wrote ----------------------------------------------------------------
def test_peers_read_odd_paths(tmp_path: Path) -> None:
    import h5py
    import tensorstore as ts
    import tifffile
    import zarr
    from cloudvolume import CloudVolume

    folder = tmp_path / "d ü日本 %20%41 ?&=+;,@[x] #h"
    folder.mkdir()
    for scheme in ("zarr", "n5", "precomputed", "tiff"):
        close(make(f"{scheme}://{folder}/{STORES[scheme]}"))
    h5dir = tmp_path / "h ü %41 ?&=+;,@[x]"
    h5dir.mkdir()
    close(make(f"hdf5://{h5dir}/a b.h5"))

    def ts_read(spec: dict[str, object]) -> np.ndarray:
        return np.asarray(ts.open(spec).result().read().result())

    z = f"{folder}/v.zarr/0"
    assert np.array_equal(ts_read({"driver": "zarr3", "kvstore": {"driver": "file",
                                                                  "path": z}}), DATA)
    assert np.array_equal(zarr.open_array(z, mode="r")[:], DATA)
    n5 = ts_read({"driver": "n5", "kvstore": {"driver": "file", "path": f"{folder}/v.n5/s0"}})
    assert np.array_equal(n5.T, DATA)
    p = f"{folder}/v"
    cv = CloudVolume("file://" + p, mip=0, progress=False)
    assert np.array_equal(np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0), DATA)
    pc = ts_read({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": p}})
    assert np.array_equal(pc[..., 0].transpose(2, 1, 0), DATA)
    with h5py.File(h5dir / "a b.h5", "r") as f:
        assert np.array_equal(f["volume"][:], DATA)
    with tifffile.TiffFile(folder / "v.tif") as t:  # (imread takes '[x]' for a glob pattern)
        assert np.array_equal(t.asarray(), DATA)


# -- spellings of one place -----------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["zarr", "n5", "precomputed", "hdf5", "tiff"])
def test_spellings_reach_the_same_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        scheme: str) -> None:
    """Relative, '..', symbolic link, trailing slash (directory stores), file:// and '~' (home
    expansion, as every voxgate path does) all write where the path names."""
    real = tmp_path / "real ü"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    name = STORES[scheme]
    spelled = {
        "rel": (f"real ü/1{name}", real / f"1{name}"),
        "dotdot": (f"{real}/sub/../2{name}", real / f"2{name}"),
        "link": (f"{tmp_path}/link/3{name}", real / f"3{name}"),
        "file": (f"file://{real}/4{name}", real / f"4{name}"),
        "tilde": (f"~/5{name}", tmp_path / "home" / f"5{name}"),
    }
    if scheme not in ("hdf5", "tiff"):
        spelled["slash"] = (f"{real}/6{name}/", real / f"6{name}")
    for kind, (where, literal) in spelled.items():
        vol = make(f"{scheme}://{where}")
        close(vol)
        assert literal.exists(), kind
        assert np.array_equal(voxgate.open(vol.url)[:], DATA), kind
        assert np.array_equal(voxgate.open(f"{scheme}://{literal}")[:], DATA), kind


# -- services -------------------------------------------------------------------------------------
def test_downsample_mesh_skeleton_in_odd_directory(tmp_path: Path) -> None:
    from cloudvolume import CloudVolume

    from voxgate.formats.skeleton import write_skeletons

    folder = tmp_path / "seg ü %20 #1 [a]"
    folder.mkdir()
    url = f"precomputed://{folder}/seg"
    make(url, LABELS)
    voxgate.downsample(url, 2)
    assert voxgate.open(url, scale=1).shape == (4, 10, 12)
    voxgate.write_meshes(url, voxgate.mesh(url))
    write_skeletons(url, voxgate.skeletonize(url, dust_threshold=0))
    assert sorted(voxgate.mesh(url, prefer="server")) == [7, 9]
    cv = CloudVolume(f"file://{folder}/seg", progress=False)
    assert cv.info["scales"][1]["size"] == [12, 10, 4]
    assert sorted(cv.mesh.get([7, 9])) == [7, 9]
    assert all(len(cv.skeleton.get(i).vertices) > 0 for i in (7, 9))
    for scheme in ("zarr", "n5", "hdf5"):
        other = f"{scheme}://{folder if scheme != 'hdf5' else tmp_path / 'h ü'}/x.{scheme}"
        if scheme == "hdf5":
            other = other.replace(".hdf5", ".h5")
        close(make(other))
        voxgate.downsample(other, 2)
        assert voxgate.open(voxgate.open(other).url, scale=1).shape == (4, 10, 12)


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_info_and_cp_bare_paths_with_hash(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`voxgate info` and `voxgate cp` on bare paths whose directory holds '#' (both refused
    with "does not exist" before)."""
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))
    folder = tmp_path / "run #3 ü"
    folder.mkdir()
    close(make(f"zarr://{folder}/a.zarr"))
    res = CliRunner().invoke(main, ["info", "--json", str(folder / "a.zarr")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["dtype"] == "uint8"
    for dst in (str(folder / "b.n5"), f"precomputed://{folder}/c",
                str(tmp_path / "h ü" / "c d.h5")):
        res = CliRunner().invoke(main, ["cp", str(folder / "a.zarr"), dst, "--no-progress"])
        assert res.exit_code == 0, res.output
        assert np.array_equal(voxgate.open(dst)[:], DATA)
    assert sorted(os.listdir(folder)) == ["a.zarr", "b.n5", "c"]


# -- relay ----------------------------------------------------------------------------------------
def test_relay_serves_odd_paths(tmp_path: Path) -> None:
    """The relay serves upstreams at paths with spaces, unicode, '%20' and '#' (a bare N5 path
    in such a directory too) in both dialects: CloudVolume over HTTP and bossdb://."""
    from cloudvolume import CloudVolume

    from .ports import free_port
    from .relay.conftest import start_relay

    odd = tmp_path / "d ü日本 %20 #h&=+"
    odd.mkdir()
    h5dir = tmp_path / "h ü %41"
    h5dir.mkdir()
    upstreams = {"c/e/z": f"zarr://{odd}/a.zarr", "c/e/h": f"hdf5://{h5dir}/a b.h5",
                 "c/e/n": f"{odd}/a.n5"}
    for url in upstreams.values():
        close(make(url if not url.startswith("/") else "n5://" + url))
    cfg = tmp_path / "relay.toml"
    cfg.write_text('[server]\nhost = "127.0.0.1"\n' + "".join(
        f'[[channel]]\nname = "{name}"\nupstream = {json.dumps(url)}\n'
        for name, url in upstreams.items()))
    relay = start_relay(cfg, free_port())
    try:
        for name in upstreams:
            cv = CloudVolume(f"precomputed://{relay.url}/precomputed/{name}", progress=False)
            got = np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0)
            assert np.array_equal(got, DATA), name
            assert np.array_equal(voxgate.open(f"bossdb://{relay.url}/{name}")[:], DATA), name
    finally:
        relay.stop()
