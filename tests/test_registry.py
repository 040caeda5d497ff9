from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate import registry
from voxgate.errors import InvalidRequestError, RemoteNotFoundError, UnknownSchemeError


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        voxgate.open("nosuch://x/y")
    msg = str(info.value)
    for scheme in ("zarr://", "n5://", "precomputed://", "hdf5://", "mem://"):
        assert scheme in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", ["", "zarr://", 42, None])
def test_malformed_urls(bad: object) -> None:
    with pytest.raises(InvalidRequestError):
        voxgate.open(bad)  # type: ignore[arg-type]


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(RemoteNotFoundError):
        voxgate.open(tmp_path / "nothing-here")
    with pytest.raises(RemoteNotFoundError):
        voxgate.open(f"zarr://{tmp_path}/nothing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RemoteNotFoundError, match=r"empty directory.*marker"):
        voxgate.open(tmp_path / "plain")  # nothing there (an empty s3:// prefix is the same)
    (tmp_path / "plain" / "notes.txt").write_text("x")
    with pytest.raises(UnknownSchemeError, match="marker"):
        voxgate.open(tmp_path / "plain")


def test_bare_path_detection(tmp_path: Path) -> None:
    voxgate.create(f"zarr://{tmp_path}/a.zarr", shape=(4, 4, 4), chunks=(2, 2, 2), dtype="uint8",
                   voxel_size=(1, 1, 1))
    assert voxgate.open(tmp_path / "a.zarr").url.startswith("zarr://")
    assert voxgate.open(f"file://{tmp_path}/a.zarr").url.startswith("zarr://")
    v2 = voxgate.create(f"zarr://{tmp_path}/b.zarr", shape=(4, 4, 4), chunks=(2, 2, 2),
                        dtype="uint8", voxel_size=(1, 1, 1), zarr_format=2)
    v2[:] = 3
    assert (voxgate.open(str(tmp_path / "b.zarr")).read() == 3).all()
    # a dataset inside an OME-Zarr group opens as a plain array
    assert (voxgate.open(f"{tmp_path}/b.zarr/0").read() == 3).all()


def test_unknown_options_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="colour"):
        voxgate.create(f"zarr://{tmp_path}/c.zarr", shape=(4, 4, 4), chunks=(2, 2, 2),
                       dtype="uint8", voxel_size=(1, 1, 1), colour="red")
    with pytest.raises(InvalidRequestError, match="colour"):
        voxgate.open("mem://x", colour="red")


def test_third_party_remote_through_entry_point(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that declares a voxgate.remotes entry point is found without touching voxgate."""
    pkg = tmp_path / "site"
    (pkg / "vgplugin").mkdir(parents=True)
    (pkg / "vgplugin" / "__init__.py").write_text(textwrap.dedent("""
        import numpy as np
        from voxgate.meta import VolumeMeta
        from voxgate.remotes.base import Remote

        class OnesRemote(Remote):
            scheme = "ones"

            @classmethod
            def open(cls, location, *, mode="r", **options):
                self = cls()
                self.url = "ones://" + location
                self.mode = mode
                self.meta = VolumeMeta.build(shape=(2, 3, 4), dtype="uint8", chunks=(2, 3, 4),
                                             voxel_size=(1, 1, 1))
                return self

            def read(self, box, scale=0):
                return np.ones(tuple(box.shape), dtype="uint8")
    """))
    dist = pkg / "vgplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vgplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[voxgate.remotes]\nones = vgplugin:OnesRemote\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_registered", {})
    assert "ones" in registry.known_schemes()
    vol = voxgate.open("ones://anything")
    assert vol.shape == (2, 3, 4)
    assert vol[1:, :2].read().sum() == 8
    sys.modules.pop("vgplugin", None)


def test_broken_plugin_is_a_warning_and_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registered", {"broken": "no_such_module_xyz:Thing"})
    monkeypatch.setattr(registry, "_entry_points_loaded", True)
    with pytest.warns(UserWarning, match="no_such_module_xyz"), pytest.raises(UnknownSchemeError):
        voxgate.open("broken://x")
    # the other schemes still work
    v = voxgate.create("mem://fine", shape=(1, 1, 1), chunks=(1, 1, 1), dtype="uint8",
                       voxel_size=(1, 1, 1))
    assert v.read().shape == (1, 1, 1)
    assert np.asarray(v).sum() == 0


def test_bare_path_detects_knossos_k_conf(tmp_path: Path) -> None:
    """A directory holding only NAME.k.conf (the classic conf knossos_utils'
    initialize_without_conf writes) and its cubes is KNOSSOS, as knossos://DIR already read it;
    so is a configuration file named directly (both were UnknownSchemeError)."""
    ds = tmp_path / "ds"
    cube = ds / "mag1" / "x0000" / "y0000" / "z0000" / "e_mag1_x0000_y0000_z0000.raw"
    cube.parent.mkdir(parents=True)
    data = np.arange(128**3, dtype=np.uint64).astype(np.uint8)
    cube.write_bytes(data.tobytes())
    (ds / "e.k.conf").write_text("experiment name e;\nboundary x 128;\nboundary y 128;\n"
                                 "boundary z 128;\nscale x 5.00;\nscale y 5.00;\n"
                                 "scale z 30.00;\nmagnification 1;\n")
    for where in (ds, f"file://{ds}", ds / "e.k.conf"):
        vol = voxgate.open(where)
        assert vol.url.startswith("knossos://"), where
        assert vol.voxel_size.zyx() == (30.0, 5.0, 5.0)
        np.testing.assert_array_equal(vol.read().ravel(), data)
