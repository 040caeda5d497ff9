"""Every Service on ``bossdb://relay/c/e/ch`` against the same call on the relay's upstream.

A real relay process on 127.0.0.1 serves a zarr segmentation and a precomputed image (both of
anisotropic (40, 8, 8) nm voxels and a non-zero offset) as bossDB channels: each Service gives
the same answer through it as on the upstream's own URL, outputs written to bossDB channels
made through the relay read back (by voxgate and by the real ``intern`` client) as the local
output, and bad input (a read-only token, an output of another dtype, three image channels, a
relay that stops mid-run) is refused or reported as what it is.  Each pair is timed and printed
(``-s``); nothing asserts on time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from intern.remote.boss import BossRemote

import voxgate
from voxgate.errors import (
    AuthenticationError,
    CapabilityNotSupportedError,
    DtypeError,
    InvalidRequestError,
    RemoteExistsError,
    RemoteUnavailableError,
)
from voxgate.remotes.boss import BossProject
from voxgate.services.downsample import downsample_provenance
from voxgate.synthetic import synthetic_em, synthetic_labels

from ..ports import free_port
from ..relay.conftest import RO, RW, RelayProcess, start_relay
from .onnx_models import conv_model

SHAPE = (48, 160, 160)
OFFSET = (4, 24, 40)
VOXEL = (40, 8, 8)
CHUNKS = (16, 64, 64)


@dataclass
class Setup:
    root: Path
    relay: RelayProcess
    labels: np.ndarray
    image: np.ndarray
    seg_url: str
    raw_url: str

    def boss(self, path: str, token: str = RW, mode: str = "r") -> Any:
        return voxgate.open(f"bossdb://{self.relay.url}/{path}", token=token, mode=mode)

    def url(self, path: str) -> str:
        return f"bossdb://{self.relay.url}/{path}"


def relay_config(root: Path, seg_url: str, raw_url: str) -> Path:
    cfg = root / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
state_path = "{root / 'state.json'}"
[cache]
memory_bytes = "64 MiB"
[[channel]]
name = "c/e/seg"
upstream = "{seg_url}"
[[channel]]
name = "c/e/raw"
upstream = "{raw_url}"
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write", "{RO}" = "read" }}
""")
    return cfg


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("svc_relay")
    labels = synthetic_labels(SHAPE, cell=(16, 48, 48), seed=4).astype(np.uint64)
    labels[labels > 0] += np.uint64(2**40)  # ids far from 0..n
    image, _ = synthetic_em(SHAPE, seed=5, cell=(8, 32, 32))
    seg_url, raw_url = f"zarr://{root}/seg.zarr", f"precomputed://file://{root}/raw"
    seg = voxgate.create(seg_url, shape=SHAPE, chunks=CHUNKS, dtype="uint64", voxel_size=VOXEL,
                         kind="segmentation", offset=OFFSET)
    seg[:] = labels
    raw = voxgate.create(raw_url, shape=SHAPE, chunks=CHUNKS, dtype="uint8", voxel_size=VOXEL,
                         offset=OFFSET)
    raw[:] = image
    relay = start_relay(relay_config(root, seg_url, raw_url), free_port(),
                        "--data-root", str(root / "data"))
    yield Setup(root, relay, labels, image, seg_url, raw_url)
    relay.stop()


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))




def pair(name: str, fn: Callable[[Any], Any], local: Any, relayed: Any) -> tuple[Any, Any]:
    """``fn`` on the upstream's own Volume and on the relay's, each timed once (printed)."""
    t0 = time.perf_counter()
    a = fn(local)
    t1 = time.perf_counter()
    b = fn(relayed)
    t2 = time.perf_counter()
    print(f"\n{name:<22} local {t1 - t0:7.3f} s  relay {t2 - t1:7.3f} s")
    return a, b


def same_frames(a: Any, b: Any) -> None:
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b) > 20
    for col in a.columns:
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)


def test_every_service_answers_the_same_through_the_relay(setup: Setup) -> None:
    seg, raw = voxgate.open(setup.seg_url), voxgate.open(setup.raw_url)
    bseg, braw = setup.boss("c/e/seg"), setup.boss("c/e/raw")
    assert bseg.bounds == seg.bounds and bseg.voxel_size == seg.voxel_size
    assert tuple(seg.offset) == OFFSET

    a, b = pair("label_stats auto", voxgate.label_stats, seg, bseg)
    assert b.attrs["provenance"].path == "server"
    same_frames(a, b)
    a, b = pair("label_stats local", lambda v: voxgate.label_stats(v, prefer="local"), seg, bseg)
    same_frames(a, b)

    ids = [int(i) for i in np.unique(setup.labels) if i]
    a, b = pair("mesh", voxgate.mesh, seg, bseg)
    assert sorted(a) == sorted(b) == ids
    for i in ids:  # the same kernel over the same voxels: the same mesh
        np.testing.assert_array_equal(a[i].vertices, b[i].vertices)
        np.testing.assert_array_equal(a[i].faces, b[i].faces)

    a, b = pair("skeletonize", lambda v: voxgate.skeletonize(v, ids=ids[:6], dust_threshold=10),
                seg, bseg)
    assert sorted(a) == sorted(b) and len(a) >= 4
    for i in a:
        np.testing.assert_allclose(np.unique(a[i].vertices, axis=0),
                                   np.unique(b[i].vertices, axis=0), atol=1e-3)
        assert len(a[i].edges) == len(b[i].edges)

    a, b = pair("connected_components", voxgate.connected_components, seg, bseg)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def odd(v: Any) -> Any:
        return voxgate.map_blocks(lambda x: (x % 7).astype(np.uint8), v, block=(16, 64, 64),
                                  dtype="uint8")

    a, b = pair("map_blocks", odd, seg, bseg)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), (setup.labels % 7).astype(np.uint8))

    model = conv_model(setup.root / "conv.onnx")
    a, b = pair("predict", lambda v: voxgate.predict(model, v, progress=False), raw, braw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(a).any()

    def synapses(v: Any) -> Any:
        s = seg if v is raw else bseg
        return voxgate.detect_synapses(v, model=model, segmentation=s, progress=False)

    a, b = pair("detect_synapses", synapses, raw, braw)
    assert len(a) > 3
    assert a.equals(b)


def test_downsample_server_levels_equal_the_local_levels(setup: Setup) -> None:
    """The relay's downsample job (the server path) writes the levels the local path writes
    on a zarr copy: the same rule (mean / mode), the same anisotropic halving."""
    for kind, data, dtype in (("segmentation", setup.labels, "uint64"),
                              ("image", setup.image, "uint8")):
        name = f"ds/{kind[:3]}/v"
        b = voxgate.create(setup.url(name), shape=SHAPE, chunks=(16, 512, 512), dtype=dtype,
                           voxel_size=VOXEL, kind=kind, offset=OFFSET, num_scales=3, token=RW)
        b[:] = data
        z = voxgate.create(f"zarr://{setup.root}/ds_{kind}.zarr", shape=SHAPE, chunks=CHUNKS,
                           dtype=dtype, voxel_size=VOXEL, kind=kind, offset=OFFSET)
        z[:] = data
        t0 = time.perf_counter()
        done = voxgate.downsample(b)
        t1 = time.perf_counter()
        voxgate.downsample(z, 3)
        t2 = time.perf_counter()
        print(f"\ndownsample {kind:<12} local {t2 - t1:7.3f} s  relay {t1 - t0:7.3f} s")
        assert downsample_provenance(done).path == "server"
        back, local = setup.boss(name), voxgate.open(f"zarr://{setup.root}/ds_{kind}.zarr")
        for k in (1, 2):
            assert back.meta.scales[k].voxel_size == local.meta.scales[k].voxel_size
            assert back.meta.scales[k].offset == local.meta.scales[k].offset
            np.testing.assert_array_equal(back.at_scale(k).read(), local.at_scale(k).read())


def test_downsample_asked_for_other_levels_is_not_answered_with_the_servers(setup: Setup
                                                                              ) -> None:
    """num_scales or factors other than the channel's levels: the server's job cannot compute
    them, so "auto" takes the local path, which refuses them as on any store, rather than
    return the server's levels as if they were the ones asked for."""
    name = "dsx/img/v"
    b = voxgate.create(setup.url(name), shape=SHAPE, chunks=(16, 512, 512), dtype="uint8",
                       voxel_size=VOXEL, offset=OFFSET, num_scales=3, token=RW)
    b[:] = setup.image
    jobs = BossProject(setup.relay.url, token=RW)
    with pytest.raises(InvalidRequestError, match=r"factors \(1, 2, 2\), not \(2, 2, 2\)"):
        voxgate.downsample(b, factors=[(2, 2, 2), (2, 2, 2)])
    with pytest.raises(CapabilityNotSupportedError, match="cannot add scales"):
        voxgate.downsample(b, 5)
    with pytest.raises(CapabilityNotSupportedError, match="prefer='local'"):
        voxgate.downsample(b, 5, prefer="server")
    # nothing was started on the server, nothing written
    assert jobs.downsample_status("dsx", "img", "v")["status"] == "NOT_DOWNSAMPLED"
    assert not setup.boss(name).at_scale(1).read().any()
    # the channel's own levels still take the server path
    done = voxgate.downsample(b, 3)
    assert downsample_provenance(done).path == "server"
    assert setup.boss(name).at_scale(1).read().any()


def intern_read(relay: RelayProcess, c: str, e: str, ch: str) -> np.ndarray:
    rmt = BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RO})
    chan = rmt.get_channel(ch, c, e)
    z0, y0, x0 = OFFSET
    z, y, x = SHAPE
    return np.asarray(rmt.get_cutout(chan, 0, [x0, x0 + x], [y0, y0 + y], [z0, z0 + z]))


def test_outputs_written_to_bossdb_channels_with_a_token(setup: Setup) -> None:
    """out= a new bossDB channel, the token given as the create option: the Service creates it
    (the existence check and the create both send the token) and intern reads the local
    output back."""
    bseg = setup.boss("c/e/seg")
    local = np.asarray(voxgate.connected_components(voxgate.open(setup.seg_url)))
    got = voxgate.connected_components(bseg, out=setup.url("out/e/cc"), token=RW)
    assert got.url.endswith("out/e/cc")
    np.testing.assert_array_equal(setup.boss("out/e/cc").read(), local)
    np.testing.assert_array_equal(intern_read(setup.relay, "out", "e", "cc"), local)

    want = (setup.image // 3).astype(np.uint8)
    voxgate.map_blocks(lambda x: x // 3, setup.boss("c/e/raw"), out=setup.url("out/e/third"),
                       block=(16, 64, 64), token=RW)
    np.testing.assert_array_equal(intern_read(setup.relay, "out", "e", "third"), want)
    # the same out= again: it exists (asked with the token), refused without overwrite
    with pytest.raises(RemoteExistsError, match="overwrite=True"):
        voxgate.connected_components(bseg, out=setup.url("out/e/cc"), token=RW)
    again = voxgate.connected_components(bseg, out=setup.url("out/e/cc"), token=RW,
                                         overwrite=True)
    np.testing.assert_array_equal(again.read(), local)


def test_a_read_only_token_writes_nothing(setup: Setup) -> None:
    ro = setup.boss("c/e/seg", token=RO)
    for run in (lambda: voxgate.connected_components(ro, out=setup.url("ro/e/cc"), token=RO),
                lambda: voxgate.map_blocks(lambda x: x, ro, out=setup.url("ro/e/mb"), token=RO,
                                           block=(16, 64, 64))):
        with pytest.raises(AuthenticationError, match="may not write"):
            run()
    assert "ro" not in BossProject(setup.relay.url, token=RW).list_collections()
    # downsample writes its levels: refused by the relay before a job starts
    with pytest.raises(AuthenticationError, match="may not write"):
        voxgate.downsample(setup.boss("c/e/seg", token=RO, mode="r+"))


def test_an_output_of_another_dtype_is_refused(setup: Setup) -> None:
    b = voxgate.create(setup.url("dt/e/img8"), shape=SHAPE, chunks=(16, 512, 512),
                       dtype="uint8", voxel_size=VOXEL, offset=OFFSET, token=RW)
    b[:] = 9
    with pytest.raises(DtypeError, match="output is uint8"):
        voxgate.map_blocks(lambda x: x.astype(np.uint16) * 300, setup.boss("c/e/raw"),
                           out=setup.url("dt/e/img8"), block=(16, 64, 64), dtype="uint16",
                           token=RW, overwrite=True)
    with pytest.raises(InvalidRequestError, match=r"uint64|dtype|segmentation"):
        voxgate.connected_components(setup.boss("c/e/seg"), out=setup.url("dt/e/img8"),
                                     token=RW, overwrite=True)
    assert (setup.boss("dt/e/img8").read() == 9).all()  # nothing written


def test_three_image_channels_are_refused_before_anything_is_made(setup: Setup) -> None:
    with pytest.raises(InvalidRequestError, match="one value per voxel"):
        voxgate.create(setup.url("rgb/e/v"), shape=SHAPE, chunks=(16, 512, 512), dtype="uint8",
                       voxel_size=VOXEL, num_channels=3, token=RW)
    assert "rgb" not in BossProject(setup.relay.url, token=RW).list_collections()
    # a Service whose output has three channels: refused, no channel left behind
    model = conv_model(setup.root / "conv3.onnx", channels_out=3)
    with pytest.raises(InvalidRequestError, match="one value per voxel"):
        voxgate.predict(model, setup.boss("c/e/raw"), out=setup.url("rgb/e/pred"),
                        progress=False, token=RW)
    assert "rgb" not in BossProject(setup.relay.url, token=RW).list_collections()


def test_a_relay_that_stops_mid_run_is_reported_and_the_journal_resumes(setup: Setup
                                                                        ) -> None:
    """An in-place map_blocks on a channel of the relay's data root; the relay stops after the
    second block: RemoteUnavailableError, the blocks written so far kept in the journal; the
    relay started again (same data root), the same call finishes, adding 1 once per voxel."""
    root = setup.root / "stop"
    root.mkdir()
    cfg = root / "relay.toml"
    cfg.write_text(f'[server]\nhost = "127.0.0.1"\nstate_path = "{root / "state.json"}"\n'
                   f'[auth]\ntokens = {{ "{RW}" = "read-write" }}\n')
    port = free_port()
    relay = start_relay(cfg, port, "--data-root", str(root / "data"))
    url = f"bossdb://{relay.url}/st/e/img"
    try:
        vol = voxgate.create(url, shape=SHAPE, chunks=(16, 512, 512), dtype="uint8",
                             voxel_size=VOXEL, offset=OFFSET, token=RW)
        base = (setup.image // 2).astype(np.uint8)
        vol[:] = base
        calls = [0]

        def plus_one(x: np.ndarray) -> np.ndarray:
            calls[0] += 1
            if calls[0] == 3:
                relay.stop()
            return x + 1

        with pytest.raises(RemoteUnavailableError) as err:
            voxgate.map_blocks(plus_one, vol, out=vol, block=(16, 160, 160), workers=1,
                               retries=0)
        said = "\n".join([str(err.value), *getattr(err.value, "__notes__", [])])
        assert "journal" in said and "st/e/img" in said, said
        relay = start_relay(cfg, port, "--data-root", str(root / "data"))
        vol = voxgate.open(url, token=RW, mode="r+")
        # another function is refused, saying how far the run got
        with pytest.raises(InvalidRequestError, match="2 of 4 blocks done"):
            voxgate.map_blocks(lambda x: x + 1, vol, out=vol, block=(16, 160, 160), workers=1)
        np.testing.assert_array_equal(vol.read()[:12], base[:12] + 1)  # (the first 2 blocks)
        np.testing.assert_array_equal(vol.read()[28:], base[28:])
        voxgate.map_blocks(lambda x: x + 1, vol, out=vol, block=(16, 160, 160), workers=1,
                           resume=True)
        np.testing.assert_array_equal(vol.read(), base + 1)
    finally:
        relay.stop()


def test_copy_to_a_bossdb_channel_with_a_token(setup: Setup) -> None:
    """voxgate.copy into bossdb:// with the token as its option: the destination is looked
    for with it (without, a relay that needs a token answered 401 to the look), made with
    it, and a copy into it once it exists finds and opens it with it (the token is no
    create option an existing destination refuses)."""
    want = setup.image
    first = voxgate.copy(voxgate.open(setup.raw_url), setup.url("cp/e/raw"), token=RW,
                         progress=False)
    np.testing.assert_array_equal(intern_read(setup.relay, "cp", "e", "raw"), want)
    again = voxgate.copy(voxgate.open(setup.raw_url), setup.url("cp/e/raw"), token=RW,
                         progress=False)
    assert (first.created, again.created) == (True, False) and again.dst == first.dst
    assert again.blocks_written + again.blocks_skipped == again.blocks_total > 0
    np.testing.assert_array_equal(setup.boss("cp/e/raw").read(), want)
