"""Relative local paths name one place whatever the working directory: a Volume's URL and spec
are absolute for every file store (zarr, n5, tiff, knossos, webknossos kept the relative
spelling, as precomputed and hdf5 did not), so a spec handed to a Dask worker or another
process, and a copy's journal, mean the same store from any directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import voxgate
import voxgate.transfer
from voxgate.remotes.zarr import ZarrRemote
from voxgate.transfer import CopyInterrupted

SHAPE = (8, 16, 16)
STORES = {"zarr": "v.zarr", "n5": "v.n5", "precomputed": "v", "hdf5": "v.h5", "tiff": "v.tif",
          "knossos": "k", "webknossos": "w"}


def _data(seed: int) -> np.ndarray:
    return ((np.arange(np.prod(SHAPE)) * (seed + 3) + seed) % 251 + 1).astype(
        np.uint8).reshape(SHAPE)


def _make(url: str, seed: int) -> voxgate.Volume:
    vol = voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=(8, 8, 8), voxel_size=(4, 4, 4))
    vol[:] = _data(seed)
    return vol


@pytest.mark.parametrize("scheme", STORES)
@pytest.mark.parametrize("bare", [False, True])
def test_a_relative_path_gives_an_absolute_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               scheme: str, bare: bool) -> None:
    """Made (and opened) in one directory, the URL and the spec reopen the same voxels from
    another directory that holds a store of the same name with other voxels."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    name = STORES[scheme]
    for folder, seed in ((two, 2), (one, 1)):
        monkeypatch.chdir(folder)
        vol = _make(f"{scheme}://{name}", seed)
    assert vol.url.startswith(f"{scheme}://{one}/"), vol.url
    if bare and scheme in ("zarr", "n5", "tiff"):  # (detected from the path alone)
        vol = voxgate.open(name)
        assert vol.url.startswith(f"{scheme}://{one}/"), vol.url
    spec = vol.spec()
    monkeypatch.chdir(two)
    np.testing.assert_array_equal(voxgate.open(vol.url).read(), _data(1))
    np.testing.assert_array_equal(voxgate.open(**spec).read(), _data(1))
    np.testing.assert_array_equal(voxgate.open(f"{scheme}://{name}").read(), _data(2))


def test_a_copy_between_relative_paths_never_resumes_another_directorys_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two experiment folders with the same layout (raw.zarr, out.zarr): a copy interrupted in
    the first and the same command run in the second: the second starts from the first block
    (a resume of the first's journal would skip blocks it never copied, its out.zarr keeping
    the voxels it held before), and the first's rerun resumes its own."""
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)  # a block per chunk: 4 blocks
    for k, exp in enumerate(("exp1", "exp2")):
        (tmp_path / exp).mkdir()
        monkeypatch.chdir(tmp_path / exp)
        _make("zarr://raw.zarr", 10 + k)
        _make("zarr://out.zarr", 20 + k)  # (an earlier result: the copy does not create it)
    monkeypatch.chdir(tmp_path / "exp1")
    real, n = ZarrRemote.write, [0]

    def write(self: ZarrRemote, *args: object, **kwargs: object) -> object:
        if "out.zarr" in self.url:
            n[0] += 1
            if n[0] > 2:
                raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ZarrRemote, "write", write)
    with pytest.raises(CopyInterrupted):
        voxgate.copy("zarr://raw.zarr", "zarr://out.zarr", workers=1, progress=False)
    monkeypatch.setattr(ZarrRemote, "write", real)
    monkeypatch.chdir(tmp_path / "exp2")
    report = voxgate.copy("zarr://raw.zarr", "zarr://out.zarr", workers=1, progress=False)
    assert not report.resumed
    np.testing.assert_array_equal(voxgate.open("zarr://out.zarr").read(), _data(11))
    monkeypatch.chdir(tmp_path / "exp1")
    report = voxgate.copy("zarr://raw.zarr", "zarr://out.zarr", workers=1, progress=False)
    assert report.resumed and report.blocks_skipped == 2
    np.testing.assert_array_equal(voxgate.open("zarr://out.zarr").read(), _data(10))
