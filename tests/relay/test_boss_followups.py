"""Follow-ups of the bossDB dialect audit, each checked against bossDB's own source.

1. Whole-channel label statistics are bounded: a channel with more distinct ids than the cap
   (``VOXGATE_RELAY_STATS_MAX_IDS``) stops the pass and answers bossDB's 413 / 2000, and the
   ids held stay within the cap (counted by the relay, not timed).
2. ids / boundingbox / reserve on an image channel answer bossDB's words (bosscore/request.py),
   and bossdb:// refuses them client-side in the same words.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import voxgate
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError
from voxgate.geometry import Box
from voxgate.relay import stats as stats_module
from voxgate.relay.config import (
    RelayConfig,
    config_from_json,
    config_to_json,
    load_config,
)
from voxgate.relay.state import Relay
from voxgate.relay.stats import MAX_IDS_ENV, TooManyIdsError
from voxgate.remotes.base import Remote
from voxgate.remotes.boss import BossProject

from .conftest import (
    RW,
    RelayProcess,
    free_port,
    relay_over_zarr,
    start_relay,
    start_token_relay,
)


def boss_error(res: httpx.Response, status: int, code: int, message: str | None = None) -> str:
    assert res.status_code == status, res.text
    doc = res.json()
    assert (doc["status"], doc["code"]) == (status, code), doc
    if message is not None:
        assert doc["message"] == message, doc
    return str(doc["message"])


# -- 1. bounded label statistics ------------------------------------------------------------------
class Counting(Remote):
    """An upstream that counts its reads."""

    scheme = "counting"

    def __init__(self, inner: Remote) -> None:
        self.inner = inner
        self.meta = inner.meta
        self.url = inner.url
        self.reads = 0

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> Remote:
        raise NotImplementedError

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        self.reads += 1
        return self.inner.read(box, scale)


def _in_process(tmp_path: Path, labels: np.ndarray) -> tuple[Relay, Any, Counting]:
    relay, remote = relay_over_zarr(tmp_path, labels, (8, 32, 32))
    counting = Counting(remote.upstream)
    remote.upstream = counting
    return relay, remote, counting


@pytest.fixture
def one_cell_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # passes read blocks of one cache cell (16 x 64 x 128 here, 1 MiB of uint64)
    monkeypatch.setattr(stats_module, "SCAN_BYTES", 16 * 64 * 128 * 8)


def test_a_pass_stops_at_the_cap_and_holds_no_more(tmp_path: Path, one_cell_blocks: None
                                                   ) -> None:
    rng = np.random.default_rng(1)
    # 32 blocks of 131072 distinct ids each
    labels = rng.integers(1, 2**63, (64, 256, 256), dtype=np.uint64)
    relay, remote, counting = _in_process(tmp_path, labels)
    try:
        stats = relay.stats
        assert remote.grid(0) == (16, 64, 128)
        cap = 200_000
        stats.max_ids = cap
        with pytest.raises(TooManyIdsError) as info:
            stats.bounding_box(remote, int(labels[0, 0, 0]), 0)
        err = info.value
        assert (err.status, err.code) == (413, 2000)
        assert str(cap) in err.message and MAX_IDS_ENV in err.message
        m = stats.metrics()
        assert m["refused"] == 1
        # bounded: never more than twice the cap held, and the pass stopped early
        assert 0 < m["peak_ids"] <= 2 * cap, m
        assert counting.reads < 32 // 2, counting.reads
        # the refusal is kept until the channel is written: asking again reads nothing
        reads = counting.reads
        with pytest.raises(TooManyIdsError):
            stats.ids(remote, 0)
        assert counting.reads == reads and stats.metrics()["computations"] == 1
        with relay.stats.writing(remote):
            pass
        with pytest.raises(TooManyIdsError):
            stats.ids(remote, 0)
        assert counting.reads > reads
        # a block alone with more ids than the cap is refused before its statistics
        stats.max_ids = 100_000
        before = stats.metrics()["peak_ids"]
        stats.peak_ids = 0
        with pytest.raises(TooManyIdsError):
            stats.ids(remote, 0)
        assert stats.metrics()["peak_ids"] == 0
        stats.peak_ids = before
    finally:
        relay.cache.close()


def test_a_channel_under_the_cap_is_answered(tmp_path: Path, one_cell_blocks: None) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 500, (32, 128, 128)).astype(np.uint64)
    relay, remote, _ = _in_process(tmp_path, labels)
    try:
        relay.stats.max_ids = 600
        assert relay.stats.ids(remote, 0) == [int(i) for i in np.unique(labels) if i]
        assert relay.stats.metrics()["peak_ids"] <= 1200
    finally:
        relay.cache.close()


@pytest.fixture
def capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RelayProcess]:
    monkeypatch.setenv(MAX_IDS_ENV, "1000")
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'[server]\nstate_path = "{tmp_path / "state.json"}"\n'
                   f'[auth]\ntokens = {{ "{RW}" = "read-write" }}\n')
    r = start_relay(cfg, free_port(), "--data-root", str(tmp_path / "data"))
    yield r
    r.stop()


def test_the_relay_answers_413_past_the_cap_and_serves_on(capped: RelayProcess) -> None:
    shape = (16, 64, 64)
    rng = np.random.default_rng(3)
    labels = rng.integers(1, 2**63, shape, dtype=np.uint64)
    seg = voxgate.create(f"bossdb://{capped.url}/cap/e/seg", shape=shape, chunks=(16, 512, 512),
                         dtype="uint64", voxel_size=(8, 8, 8), kind="segmentation", token=RW)
    seg[:] = labels
    few = voxgate.create(f"bossdb://{capped.url}/cap/e/few", shape=shape,
                         chunks=(16, 512, 512), dtype="uint64", voxel_size=(8, 8, 8),
                         kind="segmentation", token=RW)
    few[:] = labels % np.uint64(50)
    with capped.client() as http:
        ident = int(labels[3, 4, 5])
        msg = boss_error(http.get(f"/v1/boundingbox/cap/e/seg/0/{ident}/"), 413, 2000)
        assert "more than 1000 distinct ids" in msg and MAX_IDS_ENV in msg
        boss_error(http.get("/v1/ids/cap/e/seg/0/0:64/0:64/0:16/"), 413, 2000)
        # a region short of the whole channel is capped too (it grew a Python set)
        msg = boss_error(http.get("/v1/ids/cap/e/seg/0/0:64/0:64/0:8/"), 413, 2000)
        assert msg.startswith("The region has more than 1000 distinct ids"), msg
        metrics = http.get("/metrics").json()["label_stats"]
        assert metrics["max_ids"] == 1000 and metrics["refused"] >= 1
        assert metrics["peak_ids"] <= 2000, metrics
        # the rest is served: a smaller region's ids, cutouts, a channel under the cap
        r = http.get("/v1/ids/cap/e/seg/0/0:4/0:4/0:1/")
        assert r.status_code == 200, r.text
        assert r.json()["ids"] == [str(i) for i in np.unique(labels[0:1, 0:4, 0:4])]
        np.testing.assert_array_equal(seg.read(), labels)
        r = http.get("/v1/boundingbox/cap/e/few/0/7/?type=tight")
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("value", ["0", "-5", "true", "2.5", '"many"'])
def test_stats_max_ids_in_the_config_must_be_a_count(tmp_path: Path, value: str) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text(f"[server]\nstats_max_ids = {value}\n")
    with pytest.raises(InvalidRequestError, match=r"\[server\] stats_max_ids must be a whole"):
        load_config(cfg)


def test_stats_max_ids_in_the_config_reaches_every_worker(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The [server] key wins over the environment, and travels in the JSON a worker gets."""
    monkeypatch.setenv(MAX_IDS_ENV, "1000")
    cfg = tmp_path / "r.toml"
    cfg.write_text("[server]\nstats_max_ids = 77\n")
    conf = load_config(cfg)
    assert conf.stats_max_ids == 77
    assert config_from_json(config_to_json(conf)).stats_max_ids == 77
    assert Relay(conf).stats.max_ids == 77
    assert Relay(RelayConfig()).stats.max_ids == 1000  # none in the config: the environment
    monkeypatch.setenv(MAX_IDS_ENV, "lots")
    with pytest.raises(InvalidRequestError, match=f"{MAX_IDS_ENV} must be a positive integer"):
        Relay(RelayConfig())


# -- 2. refusals on image channels ----------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    r = start_token_relay(tmp_path_factory.mktemp("followups"), "64 MiB")
    yield r
    r.stop()


@pytest.fixture(scope="module")
def frames(server: RelayProcess) -> dict[str, np.ndarray]:
    """Frames not starting at 0, anisotropic and isotropic, 3 levels, downsampled."""
    p = BossProject(server.url, token=RW)
    p.create_collection("fu")
    p.create_coordinate_frame("fu_aniso", Box((5, 100, 300), (45, 700, 900)), (40, 4, 4))
    p.create_coordinate_frame("fu_iso", Box((3, 20, 40), (40, 620, 600)), (8, 8, 8))
    p.create_experiment("fu", "aniso", "fu_aniso", num_hierarchy_levels=3)
    p.create_experiment("fu", "iso", "fu_iso", num_hierarchy_levels=3,
                        hierarchy_method="isotropic")
    rng = np.random.default_rng(7)
    out = {}
    for e in ("aniso", "iso"):
        p.create_channel("fu", e, "img", type="image", datatype="uint8")
        v = voxgate.open(f"bossdb://{server.url}/fu/{e}/img", token=RW, mode="r+")
        data = rng.integers(1, 256, v.shape).astype(np.uint8)
        v[:] = data
        p.start_downsample("fu", e, "img")
        out[e] = data
    for e in out:
        for _ in range(600):
            if p.downsample_status("fu", e, "img")["status"] == "DOWNSAMPLED":
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"fu/{e}/img was never downsampled")
    return out


def test_image_channel_refusals_in_bossdb_words(server: RelayProcess,
                                                frames: dict[str, np.ndarray]) -> None:
    reserve = "The channel in request has type image. Can only reserve IDs for annotation channels"
    bbox = ("The channel in request has type image. Can only perform bounding box operations on "
            "annotation channels")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Token {RW}"}) as http:
        # bosscore/request.py validate_reserve_service: the type before the count
        for n in (5, 0):
            boss_error(http.get(f"/v1/reserve/fu/aniso/img/{n}/"), 400, 2003, reserve)
        # validate_ids_service says the same words (copied from the reserve check)
        boss_error(http.get("/v1/ids/fu/aniso/img/0/300:310/100:110/5:6/"), 400, 2003, reserve)
        boss_error(http.get("/v1/boundingbox/fu/aniso/img/0/5/"), 400, 2003, bbox)
    img = voxgate.open(f"bossdb://{server.url}/fu/aniso/img", token=RW, mode="r+").remote
    region = Box((5, 100, 300), (6, 110, 310))
    for call, words in ((lambda: img.ids_in(region), reserve),  # type: ignore[attr-defined]
                        (lambda: img.bounding_box(5), bbox),  # type: ignore[attr-defined]
                        (lambda: img.reserve_ids(5), reserve),  # type: ignore[attr-defined]
                        (lambda: img.reserve_ids(0), reserve)):  # type: ignore[attr-defined]
        with pytest.raises(CapabilityNotSupportedError) as info:
            call()
        assert words in str(info.value)
