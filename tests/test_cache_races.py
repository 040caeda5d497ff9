"""Writes racing reads on the client side's caches: what a process keeps between calls must
never make a later call miss an acknowledged write, a recreated resource, or new metadata.

- ``voxgate.compat.intern.BossRemote`` keeps one Remote (and its metadata) per channel name: a
  channel deleted and created again through it must be read with the new channel's metadata;
- proofreading keeps each volume's label statistics (boxes, largest id) per process: a pass
  that read the volume before an edit and ends after it must not replace the edited ones;
- ``blockwise.worker_remote`` keeps Remotes reopened on workers: a store recreated under the
  same URL must not be read through the old store's handle by a later run;
- ``models.load_session`` keeps onnxruntime sessions per file: a model saved again must be
  loaded again.

Races are pinned with ``threading.Event`` gates in front of real stores; relays are real
``voxgate serve`` processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.api import open_remote
from voxgate.volume import Volume

from .relay.conftest import RW, RelayProcess, free_port, start_relay
from .relay.test_consistency import GatedRemote
from .relay.test_write_races import _in_thread, _joined


# -- compat.intern: a channel deleted and created again ------------------------------------------
@pytest.fixture
def data_root_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
[server]
state_path = "{tmp_path / 'state.json'}"
[cache]
memory_bytes = "16 MiB"
[auth]
tokens = {{ "{RW}" = "read-write" }}
""")
    relay = start_relay(cfg, free_port(), "--data-root", str(tmp_path / "data"))
    yield relay
    relay.stop()


def test_intern_compat_reads_a_recreated_channel_with_its_new_metadata(
        data_root_relay: RelayProcess) -> None:
    from voxgate.compat import intern as compat

    rmt = compat.BossRemote({"protocol": "http", "host": f"127.0.0.1:{data_root_relay.port}",
                             "token": RW})
    rmt.create_project(compat.CollectionResource("lab"))
    rmt.create_project(compat.CoordinateFrameResource(
        "frame", x_stop=64, y_stop=48, z_stop=8, x_voxel_size=4, y_voxel_size=4,
        z_voxel_size=40))
    rmt.create_project(compat.ExperimentResource("exp", "lab", coord_frame="frame"))
    image = compat.ChannelResource("ch", "lab", "exp", type="image", datatype="uint8")
    chan = rmt.create_project(image)
    assert isinstance(chan, compat.ChannelResource)
    old = np.random.default_rng(1).integers(1, 255, (8, 48, 64), dtype=np.uint8)
    rmt.create_cutout(chan, 0, [0, 64], [0, 48], [0, 8], old)
    np.testing.assert_array_equal(rmt.get_cutout(chan, 0, [0, 64], [0, 48], [0, 8]), old)

    rmt.delete_project(chan)  # acknowledged (204) ...
    chan = rmt.create_project(compat.ChannelResource(  # ... and created again: uint64 now
        "ch", "lab", "exp", type="annotation", datatype="uint64"))
    assert isinstance(chan, compat.ChannelResource) and chan.datatype == "uint64"
    new = np.full((8, 48, 64), 2**40 + 3, np.uint64)
    new[:, :, :10] = 0
    rmt.create_cutout(chan, 0, [0, 64], [0, 48], [0, 8], new)
    got = rmt.get_cutout(chan, 0, [0, 64], [0, 48], [0, 8])
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, new)


# -- proofreading: label statistics computed across an edit --------------------------------------
def test_label_stats_read_before_an_edit_never_replace_the_edited_ones(tmp_path: Path) -> None:
    """Two splits in two threads of one process: the first one's label-statistics pass reads
    the volume, then waits (gate).  The second split must wait for the whole first edit (edits
    of one volume run one at a time: services/proofread/core._one_edit), and then take a new
    id the first one did not give out; the first one's pass, which read the volume before the
    second edit, is never what the second one's new id comes from."""
    from voxgate.services.proofread import _STATS

    shape = (8, 32, 64)
    labels = np.zeros(shape, np.uint64)
    labels[:, 2:30, 0:10] = 1  # segment 1: two pieces
    labels[:, 2:30, 20:30] = 1
    labels[:, 2:30, 34:44] = 2  # segment 2: two pieces
    labels[:, 2:30, 54:64] = 2
    url = "mem://cache-races-proofread"
    voxgate.create(url, shape=shape, chunks=(8, 32, 32), dtype="uint64",
                   voxel_size=(40, 8, 8), kind="segmentation")[:] = labels
    gate = GatedRemote(open_remote(url, mode="r+"))
    vol = Volume(gate)
    history = tmp_path / "history"
    try:
        gate.arm()  # the first read (the first split's statistics pass) waits
        first, out = _in_thread(lambda: voxgate.split(vol, 2, history_dir=history))
        second: tuple[threading.Thread, dict[str, Any]] | None = None
        try:
            assert gate.entered.wait(60), "the first split's pass never read the volume"
            second = _in_thread(lambda: voxgate.split(vol, 1, history_dir=history))
            second[0].join(1.0)
            assert second[0].is_alive(), "the second split ran during the first one"
        finally:
            gate.release.set()
        done = _joined(first, out)
        assert second is not None
        later = _joined(*second)
        taken = set(later.new_ids)
        assert taken and set(done.new_ids), (later, done)
        assert not taken & set(done.new_ids), \
            f"both splits gave out id(s) {sorted(taken & set(done.new_ids))}"
        final = voxgate.open(url).read()
        for i in (*later.new_ids, *done.new_ids):
            assert int((final == i).sum()) == 8 * 28 * 10  # one piece each, no shared id
    finally:
        _STATS.clear()


def test_label_stats_read_before_an_undo_are_not_kept_after_it(tmp_path: Path) -> None:
    """A relabel's label-statistics pass reads the volume, then waits (gate); an undo asked for
    meanwhile waits for the relabel (edits of one volume run one at a time) and then undoes
    it.  What the relabel's pass and edit kept (id 5 has voxels) must not outlive the undo:
    an edit made after it is told that 5 has no voxels."""
    from voxgate.errors import InvalidRequestError
    from voxgate.services.proofread import _STATS

    shape = (8, 32, 64)
    labels = np.zeros(shape, np.uint64)
    labels[:, 2:30, 0:10] = 1
    labels[:, 2:30, 40:60] = 2
    url = "mem://cache-races-undo"
    voxgate.create(url, shape=shape, chunks=(8, 32, 32), dtype="uint64",
                   voxel_size=(40, 8, 8), kind="segmentation")[:] = labels
    gate = GatedRemote(open_remote(url, mode="r+"))
    vol = Volume(gate)
    history = tmp_path / "history"
    try:
        gate.arm()  # the relabel's pass reads the volume, then waits
        relabel, out = _in_thread(lambda: voxgate.relabel(vol, {2: 5}, history_dir=history))
        undo: tuple[threading.Thread, dict[str, Any]] | None = None
        try:
            assert gate.entered.wait(60), "the relabel's pass never read the volume"
            undo = _in_thread(lambda: voxgate.undo(vol, history_dir=history))
            undo[0].join(1.0)
            assert undo[0].is_alive(), "the undo ran during the relabel"
        finally:
            gate.release.set()
        _joined(relabel, out)
        assert undo is not None
        (undone,) = _joined(*undo)
        assert undone.operation == "undo"
        np.testing.assert_array_equal(voxgate.open(url).read(), labels)
        with pytest.raises(InvalidRequestError, match="have no voxels"):
            voxgate.relabel(vol, {5: 9}, history_dir=history)
    finally:
        _STATS.clear()


# -- models.load_session: a model file rewritten in place -------------------------------------
def test_a_model_rewritten_within_one_timestamp_tick_is_loaded_anew(tmp_path: Path) -> None:
    """``load_session`` keeps sessions per file: a model saved again at the same path (other
    weights, the same size) must give the new model's session, also when the file's
    modification time did not move (a filesystem with coarse timestamps, two saves within one
    tick: emulated by putting the old time back)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from voxgate.models import load_session

    from .services.onnx_models import conv_model

    path = tmp_path / "model.onnx"
    conv_model(path, seed=0)
    x = np.random.default_rng(0).random((1, 1, 4, 8, 8), dtype=np.float32)
    (before,) = load_session(path).run(None, {"x": x})
    st = path.stat()
    conv_model(path, seed=1)  # saved again: acknowledged
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # within the same timestamp tick
    (expected,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    assert not np.allclose(before, expected)  # (the two models differ)
    (got,) = load_session(path).run(None, {"x": x})
    np.testing.assert_allclose(got, expected)


# -- blockwise.worker_remote: a store recreated between runs -------------------------------------
def test_a_store_recreated_between_cluster_runs_is_read_anew(tmp_path: Path) -> None:
    """Skeletonize on a dask cluster, recreate the store at the same URL with another chunk
    grid and other labels, skeletonize again on the same cluster: the second run's workers
    must read the new store (a worker's Remote of the first run holds the old metadata)."""
    distributed = pytest.importorskip("distributed")
    block = (16, 24, 48)  # two blocks: run block-wise on the workers

    url = f"zarr://{tmp_path / 'seg.zarr'}"

    def make(chunks: tuple[int, int, int], x0: int) -> None:
        shutil.rmtree(tmp_path / "seg.zarr", ignore_errors=True)
        labels = np.zeros((16, 48, 48), np.uint32)
        labels[4:12, 20:28, x0:x0 + 30] = 7  # a rod along x
        voxgate.create(url, shape=labels.shape, chunks=chunks, dtype="uint32",
                       voxel_size=(8, 8, 8), kind="segmentation")[:] = labels

    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=":0") as client:
        make((16, 48, 48), 2)
        first = voxgate.skeletonize(url, client=client, block=block)
        make((8, 16, 16), 16)  # the same URL: other chunks, the rod moved
        again = voxgate.skeletonize(url, client=client, block=block)
        local = voxgate.skeletonize(url, block=block)
    assert set(first) == set(again) == set(local) == {7}
    np.testing.assert_allclose(np.sort(again[7].vertices, axis=0),
                               np.sort(local[7].vertices, axis=0))
    assert again[7].vertices[:, 0].max() > first[7].vertices[:, 0].max()  # x: the rod moved
