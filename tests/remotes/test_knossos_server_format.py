"""The ``ServerFormat`` of a .k.toml layer (``_ServerFormat`` of a .pyk.conf), as KNOSSOS reads
it (knossos-project/knossos dataset.cpp, parseToml and the pyk.conf parser): "knossos" is
Heidelbrain cubes (scale k in ``mag(2**k)``), "1" OpenConnectome (NeuroData's REST cutout
service, ``openConnectomeCubeUrl``: no cubes at all), anything else PyKnossos cubes in ordinal
``magN`` folders; knossos_utils adds "precomputed".  voxgate reads cube layers that name no
ServerFormat or "knossos" and refuses every other value, naming it, rather than reading the
zeros of cube files that are not there."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.errors import CapabilityNotSupportedError

from .test_knossos_audit import toml_layer, write_cubes

BASE: dict[str, object] = dict(Name="t", FileExtension=[".raw"], Extent_px=[10, 10, 10],
                               VoxelSize_nm=[[1, 1, 1]], CubeShape_px=[128, 128, 128],
                               Description="")


@pytest.mark.parametrize(("value", "what"), [
    ("1", "OpenConnectome"),
    (1, "1"),
    ("pyknossos", "'pyknossos'"),
    ("webknossos", "'webknossos'"),
    ("n5", "'n5'"),
    (True, "True"),
])
def test_toml_server_formats_voxgate_cannot_read(tmp_path: Path, value: object,
                                                 what: str) -> None:
    """The old code opened each of these as local cubes (zeros where there are none)."""
    write_cubes(tmp_path, "t", 1, np.full((10, 10, 10), 7, np.uint8))
    (tmp_path / "t.k.toml").write_text(toml_layer(**BASE, ServerFormat=value))
    with pytest.raises(CapabilityNotSupportedError, match=re.escape(what)) as info:
        voxgate.open(f"knossos://{tmp_path}")
    assert "ServerFormat" in str(info.value)


@pytest.mark.parametrize("value", [None, "", "knossos"])
def test_toml_server_formats_of_cubes(tmp_path: Path, value: str | None) -> None:
    write_cubes(tmp_path, "t", 1, np.full((10, 10, 10), 7, np.uint8))
    keys = dict(BASE) if value is None else {**BASE, "ServerFormat": value}
    (tmp_path / "t.k.toml").write_text(toml_layer(**keys))
    assert (voxgate.open(f"knossos://{tmp_path}").read() == 7).all()


@pytest.mark.parametrize(("value", "ok"), [
    ("1", False), ("webknossos", False), ("knossos", True), ("", True), (None, True)])
def test_pyknossos_server_format(tmp_path: Path, value: str | None, ok: bool) -> None:
    write_cubes(tmp_path, "a", 1, np.full((10, 10, 5), 3, np.uint8))
    text = "[Dataset]\n_BaseName = a\n_DataScale = 1,1,1\n_Extent = 10,10,5\n"
    if value is not None:
        text += f"_ServerFormat = {value}\n"
    (tmp_path / "a.pyk.conf").write_text(text)
    if ok:
        assert (voxgate.open(f"knossos://{tmp_path}").read() == 3).all()
    else:
        with pytest.raises(CapabilityNotSupportedError, match=re.escape(repr(value))):
            voxgate.open(f"knossos://{tmp_path}")
