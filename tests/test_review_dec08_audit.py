"""Fresh-eyes review of the Dec 8 changes (helper h16): the one time-point step of zarr://,
n5:// and tensorstore:// (``remotes._tensorstore.at_time_point``) on axis layouts its tests
did not take, and the advice of bossdb:// create's refusal of a narrower segmentation when a
copy (which keeps the source's dtype) asked for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
import zarr

import voxgate
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError
from voxgate.remotes.boss import BossProject
from voxgate.remotes.tensorstore_spec import TensorStoreRemote

from .relay.conftest import RW, RelayProcess, token_relay_in_env


def _zarr(root: Path, name: str, shape: tuple[int, ...], dims: list[str | None]
          ) -> tuple[str, np.ndarray]:
    data = (np.arange(int(np.prod(shape))) % 251).astype(np.uint8).reshape(shape)
    arr = zarr.create_array(str(root / name), shape=shape, dtype="uint8", chunks=shape,
                            dimension_names=dims, zarr_format=3)
    arr[...] = data
    return f"zarr://{root / name}", data


def _n5(root: Path, name: str, shape: tuple[int, ...], axes: list[str]
        ) -> tuple[str, np.ndarray]:
    data = np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(root / name)},
                     "metadata": {"dataType": "uint16", "dimensions": list(shape),
                                  "blockSize": list(shape), "compression": {"type": "raw"},
                                  "axes": axes}}, create=True).result()
    store[...] = data
    return f"n5://{root / name}", data


def _expected(data: np.ndarray, names: list[str], t: int) -> np.ndarray:
    """``data`` (dimensions ``names``) at time point ``t`` as voxgate reads it: [c,] z, y, x."""
    at = np.take(data, t, axis=names.index("t"))
    rest = [n for n in names if n != "t"]
    return at.transpose([rest.index(a) for a in (["c"] if "c" in rest else []) + ["z", "y", "x"]])


# -- time points: zarr:// --------------------------------------------------------------------------
def test_zarr_two_channel_axes_refused(tmp_path: Path) -> None:
    """A zarr array with two channel-named axes ('c' and 'channel') failed with an IndexError
    from deep in the axis reordering; refused now, as n5:// and tensorstore:// refuse it."""
    url, _ = _zarr(tmp_path, "twoch", (2, 1, 4, 5, 6), ["c", "channel", "z", "y", "x"])
    with pytest.raises(InvalidRequestError, match="more than one channel axis"):
        voxgate.open(url)


def test_zarr_two_time_axes_refused(tmp_path: Path) -> None:
    """A zarr array with a 't' and a 'time' axis read time=1 of both (a diagonal of the two,
    given as one time series, and time=2 refused by the shorter); refused now."""
    url, _ = _zarr(tmp_path, "tt", (3, 3, 4, 5, 6), ["t", "time", "z", "y", "x"])
    with pytest.raises(InvalidRequestError, match="more than one time axis"):
        voxgate.open(url, time=1)


def test_unnamed_extra_axis_is_named_in_the_refusal(tmp_path: Path) -> None:
    """An unnamed (null) extra axis longer than 1 was refused as "a '' axis"; the refusal
    now says it is unnamed and which dimension (same error type); one of length 1 is dropped
    (guard)."""
    url, _ = _zarr(tmp_path, "unnamed3", (3, 4, 5, 6), [None, "z", "y", "x"])
    with pytest.raises(CapabilityNotSupportedError, match=r"an unnamed axis \(dimension 0\) "
                                                          "of length 3"):
        voxgate.open(url)
    url, data = _zarr(tmp_path, "unnamed1", (1, 4, 5, 6), [None, "z", "y", "x"])
    vol = voxgate.open(url)
    assert vol.meta.num_channels == 1
    np.testing.assert_array_equal(vol.read(), data[0])


def test_zarr_time_axis_last_and_extra_axis_refused(tmp_path: Path) -> None:
    """Guard: a 't' axis after x is read at the time point asked for; a named extra axis
    longer than 1 is a CapabilityNotSupportedError naming it."""
    url, data = _zarr(tmp_path, "zyxt", (4, 5, 6, 3), ["z", "y", "x", "t"])
    np.testing.assert_array_equal(voxgate.open(url, time=2).read(), data[..., 2])
    with pytest.raises(InvalidRequestError, match=r"time=0\.\.2"):
        voxgate.open(url)
    url, _ = _zarr(tmp_path, "q", (3, 4, 5, 6), ["q", "z", "y", "x"])
    with pytest.raises(CapabilityNotSupportedError, match="'q' axis of length 3"):
        voxgate.open(url)


# -- time points: n5:// ----------------------------------------------------------------------------
@pytest.mark.parametrize("axes", [["x", "y", "z", "c", "t"], ["t", "c", "x", "y", "z"],
                                  ["c", "t", "x", "y", "z"], ["x", "t", "y", "c", "z"]])
def test_n5_time_and_channel_axes_in_any_order(tmp_path: Path, axes: list[str]) -> None:
    """Guard: an N5 dataset with a 't' and a 'c' axis, in several orders, reads the time
    point asked for with its channels."""
    sizes = {"x": 6, "y": 5, "z": 4, "c": 2, "t": 3}
    url, data = _n5(tmp_path, "".join(axes), tuple(sizes[a] for a in axes), axes)
    vol = voxgate.open(url, time=1)
    assert vol.meta.num_channels == 2
    np.testing.assert_array_equal(np.asarray(vol.read(vol.bounds)), _expected(data, axes, 1))
    with pytest.raises(InvalidRequestError, match=r"time=0\.\.2"):
        voxgate.open(url)


def test_n5_extra_axis_refused(tmp_path: Path) -> None:
    """Guard: n5:// refuses an extra axis longer than 1 as zarr:// does."""
    url, _ = _n5(tmp_path, "q", (6, 5, 4, 3), ["x", "y", "z", "q"])
    with pytest.raises(CapabilityNotSupportedError, match="'q' axis of length 3"):
        voxgate.open(url)


# -- time points: tensorstore:// -------------------------------------------------------------------
def _ts_spec(root: Path, name: str, shape: tuple[int, ...], labels: list[str]
             ) -> tuple[dict[str, object], np.ndarray]:
    spec: dict[str, object] = {"driver": "zarr3",
                               "kvstore": {"driver": "file", "path": str(root / name)}}
    data = (np.arange(int(np.prod(shape))) % 251).astype(np.uint8).reshape(shape)
    store = ts.open({**spec, "metadata": {"shape": list(shape), "data_type": "uint8",
                                          "dimension_names": labels}}, create=True).result()
    store[...] = data
    return spec, data


def test_tensorstore_time_label_last_and_exists(tmp_path: Path) -> None:
    """Guard: a spec whose labels end with 't' reads the time point asked for; exists() says
    a timelapse is there (it is opened at time 0) and an extra axis longer than 1 is the same
    CapabilityNotSupportedError as in zarr:// and n5://."""
    spec, data = _ts_spec(tmp_path, "zyxt", (4, 5, 6, 3), ["z", "y", "x", "t"])
    url = f"tensorstore://{json.dumps(spec)}"
    np.testing.assert_array_equal(voxgate.open(url, time=1).read(), data[..., 1])
    assert TensorStoreRemote.exists(json.dumps(spec))
    spec, _ = _ts_spec(tmp_path, "q", (3, 4, 5, 6), ["q", "z", "y", "x"])
    with pytest.raises(CapabilityNotSupportedError, match="'q' axis of length 3"):
        voxgate.open(f"tensorstore://{json.dumps(spec)}")


def test_tensorstore_two_time_axes_refused(tmp_path: Path) -> None:
    """A spec labelled 't' and 'time' read time=1 of both; refused now, as in zarr://."""
    spec, _ = _ts_spec(tmp_path, "tt", (2, 2, 4, 5, 6), ["t", "time", "z", "y", "x"])
    with pytest.raises(InvalidRequestError, match="more than one time axis"):
        voxgate.open(f"tensorstore://{json.dumps(spec)}", time=1)


# -- bossdb:// create's refusals name what a copy can do -------------------------------------------
@pytest.fixture(scope="module")
def boss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with token_relay_in_env(tmp_path_factory.mktemp("boss"), "64 MiB") as r:
        yield r


def test_bossdb_copy_of_narrow_segmentation_says_how(boss: RelayProcess,
                                                      tmp_path: Path) -> None:
    """A copy of a uint32 segmentation into bossdb:// was refused with "ask for
    dtype='uint64'", which a copy cannot (it keeps the source's dtype, and an existing
    uint64 channel is refused as another dtype); the refusal now says how (a map_blocks
    cast), and that advice followed gets the ids into bossDB."""
    shape = (4, 32, 32)
    seg32 = voxgate.create(f"zarr://{tmp_path}/seg32.zarr", shape=shape, chunks=(4, 16, 16),
                           dtype="uint32", kind="segmentation", voxel_size=(8, 4, 4))
    ids = np.random.default_rng(1).integers(0, 2**32 - 1, shape, dtype=np.uint32)
    seg32[:] = ids
    url = f"bossdb://{boss.url}/widen/exp/seg"
    with pytest.raises(InvalidRequestError, match=r"uint64 ids.*voxgate\.map_blocks") as err:
        voxgate.copy(seg32, url, progress=False)
    assert "widen" not in BossProject(boss.url, RW).list_collections()
    assert "astype('uint64')" in str(err.value)
    voxgate.map_blocks(lambda a: a.astype("uint64"), seg32, out=url, dtype="uint64")
    got = voxgate.open(url)
    assert got.dtype == np.uint64 and got.meta.kind == "segmentation"
    np.testing.assert_array_equal(got.read(), ids.astype(np.uint64))


def test_http_clients_share_one_ssl_context(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """Every HTTPClient (one per bossdb:// or dvid:// volume opened, and the relay's upstream
    clients) built its own SSL context, loading the CA bundle again: about 40 ms per volume
    opened.  They share one per SSL_CERT_FILE / SSL_CERT_DIR value now, and a changed value
    still gets its own."""
    import ssl

    from voxgate.remotes import _http

    built: list[object] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(kwargs.get("cafile"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    _http._ssl_context_for.cache_clear()
    clients = [_http.HTTPClient(f"https://127.0.0.1:{9000 + i}") for i in range(5)]
    try:
        assert len(built) == 1, built
        import certifi

        bundle = tmp_path / "ca.pem"
        bundle.write_bytes(Path(certifi.where()).read_bytes())
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        clients.append(_http.HTTPClient("https://127.0.0.1:9100"))
        assert built == [certifi.where(), str(bundle)], built
    finally:
        for c in clients:
            c.close()
        _http._ssl_context_for.cache_clear()
