"""A relay over an HDF5 file shares it with the other processes that read it, and warnings keep
credentials out.

HDF5 locks a file for the whole time a handle has it open: many readers or one writer.  A
relay channel is writable by default, and the relay used to open an HDF5 upstream read-write
when it opened the channel, so it held the write lock for its whole run: a notebook that had
the file open (h5py's default, read-only, locking) made every read through the relay answer
502 "locked by another process", and while the relay ran no other process could open the
file at all.  The relay now opens it read-only and takes write access for each write only
(``hold_write=False``), giving it back once the write is flushed.

A warning whose text names a storage location or an exception (the scratch space a Service
could not remove, say) showed a ``?token=`` in it as it was; a VoxgateWarning's text now goes
through :func:`voxgate.errors.redact`, as a VoxgateError's does.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import blosc
import h5py
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.errors import VoxgateWarning
from voxgate.geometry import Box
from voxgate.services._common import remove_scratch

from .conftest import RW, RelayProcess, free_port, one_channel_config, start_relay

SHAPE = (8, 40, 48)
CHUNKS = (4, 16, 16)
CUTOUT = "/v1/cutout/lab/em/img/0"


def _url(box: Box) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"{CUTOUT}/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def _get(relay: RelayProcess, box: Box) -> httpx.Response:
    return httpx.get(relay.url + _url(box), headers={"Authorization": f"Token {RW}"},
                     timeout=60)


def _read(relay: RelayProcess, box: Box) -> np.ndarray:
    res = _get(relay, box)
    assert res.status_code == 200, res.text
    return np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(tuple(box.shape))


def _post(relay: RelayProcess, box: Box, arr: np.ndarray) -> httpx.Response:
    return httpx.post(relay.url + _url(box), content=blosc.compress(arr.tobytes(), typesize=1),
                      headers={"Authorization": f"Token {RW}",
                               "Content-Type": "application/blosc"}, timeout=60)


def _other_process(path: Path, dataset: str = "vol") -> str:
    """Another process (a notebook, a script) opening the file with h5py's defaults (file
    locking on) and reading the dataset: "ok <sum>", or the error it got."""
    code = (f"import h5py\nwith h5py.File({str(path)!r}, 'r') as f:\n"
            f"    print('ok', int(f[{dataset!r}][...].sum()))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    if done.returncode == 0:
        return done.stdout.strip()
    return done.stderr.strip().splitlines()[-1]


@pytest.fixture
def h5file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "up" / "vol.h5"
    data = np.random.default_rng(3).integers(1, 250, SHAPE, dtype=np.uint8)
    vol = voxgate.create(f"hdf5://{path}#/vol", shape=SHAPE, chunks=CHUNKS, dtype="uint8",
                         voxel_size=(40, 8, 8))
    vol[...] = data
    vol.remote.close()  # (this process is done with it: the relay opens it next)
    return path, data


@pytest.fixture
def relay(tmp_path: Path, h5file: tuple[Path, np.ndarray]) -> Iterator[RelayProcess]:
    cfg = one_channel_config(tmp_path, f"hdf5://{h5file[0]}#/vol", name="lab/em/img")
    r = start_relay(cfg, free_port())
    yield r
    r.stop()


def test_other_processes_read_the_file_while_the_relay_serves_it_and_see_its_writes(
        relay: RelayProcess, h5file: tuple[Path, np.ndarray]) -> None:
    path, data = h5file
    whole = Box((0, 0, 0), SHAPE)
    assert np.array_equal(_read(relay, whole), data)  # (the relay has the file open now)
    # the relay used to hold the file read-write: any other open was refused
    assert _other_process(path) == f"ok {int(data.sum())}"

    box = Box((2, 5, 7), (7, 33, 40))
    patch = np.full(tuple(box.shape), 251, np.uint8)
    res = _post(relay, box, patch)
    assert res.status_code == 201, res.text
    expected = data.copy()
    expected[box.slices()] = patch
    # read-your-writes through the relay, and the write is in the file for other processes
    assert np.array_equal(_read(relay, whole), expected)
    assert _other_process(path) == f"ok {int(expected.sum())}"
    with h5py.File(path, "r") as f:  # (this process is another one too)
        assert np.array_equal(f["vol"][...], expected)
    # a second write after the file was opened elsewhere still lands
    res = _post(relay, Box((0, 0, 0), (1, 2, 3)), np.zeros((1, 2, 3), np.uint8))
    assert res.status_code == 201, res.text
    expected[0, 0:2, 0:3] = 0
    assert np.array_equal(_read(relay, whole), expected)
    assert _other_process(path) == f"ok {int(expected.sum())}"


def test_a_notebook_holding_the_file_open_read_only_does_not_stop_the_relay_reading(
        tmp_path: Path, h5file: tuple[Path, np.ndarray]) -> None:
    path, data = h5file
    whole = Box((0, 0, 0), SHAPE)
    with h5py.File(path, "r") as notebook:  # h5py's default: file locking on
        assert np.array_equal(notebook["vol"][...], data)
        cfg = one_channel_config(tmp_path, f"hdf5://{path}#/vol", name="lab/em/img")
        relay = start_relay(cfg, free_port())
        try:
            # the relay used to answer 502 "locked by another process" here
            assert np.array_equal(_read(relay, whole), data)
            # a write needs the file to itself: refused while the notebook holds it, saying
            # why, and the relay goes on reading
            patch = np.full((2, 4, 4), 9, np.uint8)
            box = Box((1, 1, 1), (3, 5, 5))
            refused = _post(relay, box, patch)
            assert refused.status_code >= 400
            assert "locked by another process" in refused.text, refused.text
            assert np.array_equal(_read(relay, whole), data)
            assert np.array_equal(notebook["vol"][...], data)
            notebook.close()
            res = _post(relay, box, patch)  # the notebook is done with it: the write lands
            assert res.status_code == 201, res.text
            expected = data.copy()
            expected[box.slices()] = patch
            assert np.array_equal(_read(relay, whole), expected)
            assert _other_process(path) == f"ok {int(expected.sum())}"
        finally:
            relay.stop()


def test_hold_write_false_takes_write_access_per_write_and_a_holder_keeps_it(
        h5file: tuple[Path, np.ndarray]) -> None:
    """The Remote option the relay uses, in one process: ``hold_write=False`` leaves the file
    readable by others between writes (add_scales included); a Remote opened ``r+`` the
    default way holds the write lock until it is closed, and then gives it back."""
    from voxgate.meta import next_scales
    from voxgate.services import downsample

    path, data = h5file
    url = f"hdf5://{path}#/vol"
    vol = voxgate.open(url, mode="r+", hold_write=False)
    assert vol.remote.spec()["options"] == {"hold_write": False}
    assert _other_process(path) == f"ok {int(data.sum())}"
    vol[0:2, 0:3, 0:4] = 7
    expected = data.copy()
    expected[0:2, 0:3, 0:4] = 7
    assert _other_process(path) == f"ok {int(expected.sum())}"
    vol.remote.add_scales(next_scales(vol.meta, 1))
    assert _other_process(path, "vol/s0") == f"ok {int(expected.sum())}"
    assert _other_process(path, "vol/s1") == "ok 0"
    down = downsample(voxgate.open(url, mode="r+", hold_write=False), 2)  # (fills s1)
    assert len(down.meta.scales) == 2
    with h5py.File(path, "r") as f:
        assert f["vol/s1"].shape == (8, 20, 24)  # (z is 5 times coarser: kept)
        s1 = int(f["vol/s1"][...].sum())
    assert s1 > 0 and _other_process(path, "vol/s1") == f"ok {s1}"

    holder = voxgate.open(url, mode="r+")  # (hold_write=True, the library's default)
    assert "unable to lock file" in _other_process(path, "vol/s0")
    holder.remote.close()  # given back, though vol still has the file open
    assert _other_process(path, "vol/s0") == f"ok {int(expected.sum())}"
    vol[1, 1, 1] = 3
    assert voxgate.open(url).read()[1, 1, 1] == 3
    vol.remote.close()


def test_a_warning_naming_a_location_with_a_token_shows_no_token() -> None:
    # a Service's scratch space it cannot remove: an HTTP location is refused by remove_tree,
    # and the warning named the location (and its token) as it was
    with pytest.warns(VoxgateWarning) as caught:
        remove_scratch(None, "http://127.0.0.1:9/scratch/cc?token=s3cret-scratch",
                       "connected_components could not remove its scratch volume")
    text = str(caught[0].message)
    assert "s3cret-scratch" not in text, text
    assert "http://127.0.0.1:9/scratch/cc?token=***" in text, text


def test_every_voxgate_warning_is_redacted_whichever_way_it_is_given() -> None:
    for give in (lambda m: warnings.warn(m, VoxgateWarning, stacklevel=1),
                 lambda m: warnings.warn(VoxgateWarning(m), stacklevel=1)):
        with pytest.warns(VoxgateWarning) as caught:
            give("the destination zarr://https://u:pw-s3cret@h/v?token=tk-s3cret differs")
        text = str(caught[0].message)
        assert "s3cret" not in text, text
