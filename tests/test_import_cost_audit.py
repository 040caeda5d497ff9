"""What a new process imports to read a volume, and to start a relay (benchmarks/bench_startup.py).

Every CLI call, relay worker, Dask worker and notebook kernel pays its imports once.  A plain
zarr or precomputed read needs numpy, tensorstore and voxgate's read path; the modules below
are needed only on other paths (writes, a misspelt option, a notebook repr, plugins, journals,
Services) and are imported there.  Each case runs a fresh interpreter and looks at
``sys.modules``, so an eager import added later shows up here, not as a slower start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate import registry

#: imported only where used, never by a plain read (each was imported by one before)
NOT_FOR_A_READ = (
    "importlib.metadata",  # plugin entry points: only for a scheme not built in (~30 ms)
    "email",  # (importlib.metadata's)
    "zipfile",  # (importlib.metadata's)
    "difflib",  # "did you mean" for a misspelt option or scheme
    "tempfile",  # atomic writes
    "shutil",  # removing a tree
    "bz2",  # .bz2 / .xz files (CloudFiles' suffixes)
    "lzma",
    "uuid",  # lock files
    "html",  # the notebook repr
    "pathlib",  # the state directory (journals)
    "voxgate.volume.writing",  # Volume.write
    "voxgate.parallel",
)

#: heavy packages some Remotes and Services use; a read never needed them (a guard only)
HEAVY = ("dask", "distributed", "rich", "httpx", "starlette", "scipy", "skimage", "kimimaro",
         "zmesh", "onnxruntime", "cloudvolume", "h5py", "urllib3", "blosc", "fastremap",
         "uvicorn", "click", "voxgate.services", "voxgate.relay", "voxgate.cli")


def _modules_after(code: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after it ran ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, timeout=120).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("import_cost")
    data = np.arange(32**3, dtype=np.uint32).reshape(32, 32, 32) % 251
    zarr_url = f"zarr://{root}/em.zarr"
    voxgate.create(zarr_url, shape=data.shape, dtype="uint8", chunks=(16, 16, 16),
                   voxel_size=(8, 8, 8))[...] = data.astype(np.uint8)
    pre_url = f"precomputed://file://{root}/em"
    voxgate.copy(zarr_url, pre_url, progress=False)
    return {"zarr": zarr_url, "precomputed": pre_url}


def _read(url: str) -> str:
    return (f"import voxgate\nv = voxgate.open({url!r})\n"
            "assert v[:16, :16, :16].read().shape == (16, 16, 16)\n")


@pytest.mark.parametrize("fmt", ["zarr", "precomputed"])
def test_a_plain_read_imports_only_what_it_needs(volumes: dict[str, str], fmt: str) -> None:
    loaded = _modules_after(_read(volumes[fmt]))
    assert "tensorstore" in loaded and "voxgate.volume.core" in loaded  # (the read ran)
    assert sorted(m for m in NOT_FOR_A_READ if m in loaded) == []


@pytest.mark.parametrize("fmt", ["zarr", "precomputed"])
def test_a_plain_read_imports_no_heavy_package(volumes: dict[str, str], fmt: str) -> None:
    loaded = _modules_after(_read(volumes[fmt]))
    assert sorted(m for m in HEAVY if m in loaded) == []


def test_a_write_and_a_misspelt_option_still_find_their_modules(
        volumes: dict[str, str]) -> None:
    """The lazy imports are there when needed: a write (tempfile, voxgate.volume.writing) and
    the "did you mean" of a misspelt option (difflib)."""
    loaded = _modules_after(textwrap.dedent(f"""
        import voxgate
        from voxgate.errors import InvalidRequestError
        v = voxgate.open({volumes["zarr"]!r}, mode="r+")
        v[:16, :16, :16] = 7
        assert (v[:16, :16, :16].read() == 7).all()
        v[:16, :16, :16] = 0
        try:
            voxgate.open({volumes["zarr"]!r}, missng="error")
        except InvalidRequestError as exc:
            assert "did you mean 'missing'" in str(exc), exc
        else:
            raise AssertionError("a misspelt option was taken")
    """))
    assert {"voxgate.volume.writing", "difflib"} <= loaded


def test_the_relay_does_not_import_the_services(tmp_path: Path,
                                                volumes: dict[str, str]) -> None:
    """A relay's start reads its configuration and builds its app without the Services (the
    label-stats kernel is imported by the first stats request) or the entry points."""
    config = tmp_path / "relay.toml"
    config.write_text(f'[[channel]]\nname = "lab/em/raw"\nupstream = "{volumes["zarr"]}"\n')
    loaded = _modules_after(textwrap.dedent(f"""
        from voxgate.relay import load_config
        from voxgate.relay.app import build_app
        build_app(load_config({str(config)!r}))
    """))
    assert "voxgate.relay.app" in loaded
    assert sorted(m for m in ("voxgate.services", "voxgate.blockwise", "importlib.metadata")
                  if m in loaded) == []


def _plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry_points: str) -> None:
    """An installed package ``vgplugin2`` whose entry points are ``entry_points``."""
    pkg = tmp_path / "site"
    (pkg / "vgplugin2").mkdir(parents=True)
    (pkg / "vgplugin2" / "__init__.py").write_text(textwrap.dedent("""
        import numpy as np
        from voxgate.meta import VolumeMeta
        from voxgate.remotes.base import Remote

        class TwosRemote(Remote):
            scheme = "twos"
            open_options = ()

            @classmethod
            def open(cls, location, *, mode="r", **options):
                self = cls()
                self.url = "twos://" + location
                self.mode = mode
                self.meta = VolumeMeta.build(shape=(2, 2, 2), dtype="uint8", chunks=(2, 2, 2),
                                             voxel_size=(1, 1, 1))
                return self

            def read(self, box, scale=0):
                return np.full(tuple(box.shape), 2, dtype="uint8")
    """))
    dist = pkg / "vgplugin2-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vgplugin2\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[voxgate.remotes]\n{entry_points}\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_registered", {})


def test_a_plugin_scheme_is_found_without_listing_the_schemes_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a scheme that is not built in reads the entry points then (no earlier
    known_schemes() call needed)."""
    _plugin(tmp_path, monkeypatch, "twos = vgplugin2:TwosRemote")
    try:
        assert int(voxgate.open("twos://x").read().sum()) == 16
        assert registry.is_known_scheme("twos")
    finally:
        sys.modules.pop("vgplugin2", None)


def test_an_entry_point_does_not_replace_a_built_in_scheme(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, volumes: dict[str, str]) -> None:
    """zarr:// stays voxgate's ZarrRemote (opening it reads no package's metadata); the entry
    point that names it is reported when the entry points are read."""
    _plugin(tmp_path, monkeypatch, "zarr = vgplugin2:TwosRemote")
    try:
        assert type(voxgate.open(volumes["zarr"]).remote).__name__ == "ZarrRemote"
        with pytest.warns(UserWarning, match=r"vgplugin2:TwosRemote.*built-in scheme zarr://"):
            assert "zarr" in registry.known_schemes()
        assert type(voxgate.open(volumes["zarr"]).remote).__name__ == "ZarrRemote"
    finally:
        sys.modules.pop("vgplugin2", None)
