"""Volume indexing, reads and writes against a numpy model of the same semantics (docs/index.md,
"The Volume" and ``bounds``), on every tensorstore store and mem://.

Random volumes (1 and 3 channels, odd shapes and chunks, non-zero offsets, two scales) and
random keys: slices with None, negative and out-of-range ends and steps, integers, ``...``,
fewer keys than axes, bad keys, views of views in every bounds mode; each view is read (also
through np.asarray, pickle, to_dask, another bounds mode), a Box is read, or the view is
written and the whole scale read back.  The strided read and the write blocks are made tiny
in some examples so their block paths run on small volumes.

The model keeps, per axis, the scale index of the view's first voxel, its step, its length and
whether it is kept; a voxel outside the scale reads as 0 (only a "fill" view has those).
"""

from __future__ import annotations

import pickle
import tempfile
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import voxgate
import voxgate.remotes.memory
import voxgate.volume.core as core
import voxgate.volume.writing as writing
from voxgate.geometry import Box

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Refused(Exception):
    """What the model says the Volume refuses: ``name`` is the error class."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _int(v: Any) -> int:
    if v is None or isinstance(v, (bool, np.bool_, list, np.ndarray, float)):
        raise Refused("IndexingError")
    return int(v)


class Model:
    """A view: ``axes`` holds ``[first, step, length, keep]`` per axis ((c,) z, y, x)."""

    def __init__(self, full: tuple[int, ...], mode: str, axes: list[list[Any]]) -> None:
        self.full, self.mode, self.axes = full, mode, axes

    @classmethod
    def whole(cls, full: tuple[int, ...], mode: str) -> Model:
        return cls(full, mode, [[0, 1, n, True] for n in full])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a[2] for a in self.axes if a[3])

    def index(self, key: Any) -> Model:
        key = key if isinstance(key, tuple) else (key,)
        kept = [i for i, a in enumerate(self.axes) if a[3]]
        n_ell = sum(k is Ellipsis for k in key)
        if n_ell > 1 or any(k is None or isinstance(k, (bool, np.bool_, list, np.ndarray))
                            for k in key):
            raise Refused("IndexingError")
        real = len(key) - n_ell
        if real > len(kept):
            raise Refused("IndexingError")
        i = next((j for j, k in enumerate(key) if k is Ellipsis), len(key))
        key = key[:i] + (slice(None),) * (len(kept) - real) + key[i + n_ell:]
        axes = [list(a) for a in self.axes]
        for pos, k in zip(kept, key, strict=True):
            first, d, n, _ = axes[pos]
            numpy_rule = self.mode == "clip" or (pos == 0 and len(axes) == 4)  # channels: numpy's
            if isinstance(k, slice):
                step = 1 if k.step is None else _int(k.step)
                if step <= 0:
                    raise Refused("InvalidRequestError")
                if numpy_rule:
                    p0, p1, _ = slice(k.start, k.stop, step).indices(n)
                else:
                    p0 = 0 if k.start is None else _int(k.start)
                    p1 = n if k.stop is None else _int(k.stop)
                    p0, p1 = p0 + n if p0 < 0 else p0, p1 + n if p1 < 0 else p1
                    if self.mode == "error" and (p0 < 0 or p1 > n or p0 > n):
                        raise Refused("OutOfBoundsError")
                    if p1 < p0:  # ends before it starts: refused, not numpy's empty selection
                        raise Refused("IndexingError")
                axes[pos] = [first + p0 * d, d * step, len(range(p0, p1, step)), True]
            else:
                j = _int(k)
                j = j + n if j < 0 else j
                if not 0 <= j < n and not (self.mode == "fill" and not numpy_rule):
                    raise Refused("OutOfBoundsError")
                axes[pos] = [first + j * d, 1, 1, False]
        return Model(self.full, self.mode, axes)

    def _where(self) -> list[np.ndarray]:
        return [a[0] + np.arange(a[2]) * a[1] for a in self.axes]

    def read(self, ref: np.ndarray) -> np.ndarray:
        where = self._where()
        if any(len(w) == 0 for w in where):
            return np.empty(self.shape, ref.dtype)
        inside = np.ones([len(w) for w in where], bool)
        for ax, (w, n) in enumerate(zip(where, self.full, strict=True)):
            inside &= ((w >= 0) & (w < n)).reshape([-1 if i == ax else 1
                                                    for i in range(len(where))])
        out = ref[np.ix_(*[np.clip(w, 0, n - 1) for w, n in zip(where, self.full,
                                                                  strict=True)])]
        out[~inside] = 0
        return out.reshape(self.shape)

    def write(self, ref: np.ndarray, value: Any) -> None:
        try:
            arr = np.broadcast_to(np.asarray(value, dtype=ref.dtype), self.shape)
        except ValueError:
            raise Refused("InvalidRequestError") from None
        where = self._where()
        if any(len(w) == 0 for w in where):
            return
        if any(w[0] < 0 or w[-1] >= n for w, n in zip(where, self.full, strict=True)):
            raise Refused("OutOfBoundsError")
        if len(self.axes) == 4 and not (self.axes[0][3] and self.axes[0][2] == self.full[0]):
            raise Refused("InvalidRequestError")
        ref[np.ix_(*where)] = arr.reshape([a[2] for a in self.axes])

    @staticmethod
    def read_box(ref: np.ndarray, offset: tuple[int, ...], mode: str, box: Box) -> np.ndarray:
        lead = ref.shape[:-3]
        lo = [b - o for b, o in zip(box.start, offset, strict=True)]
        hi = [b - o for b, o in zip(box.stop, offset, strict=True)]
        if mode == "error" and any(a < 0 or b > n for a, b, n in zip(lo, hi, ref.shape[-3:],
                                                                    strict=True)):
            raise Refused("OutOfBoundsError")
        if mode == "clip":
            lo = [max(a, 0) for a in lo]
            hi = [max(a, min(b, n)) for a, b, n in zip(lo, hi, ref.shape[-3:], strict=True)]
        axes = [[0, 1, c, True] for c in lead] + [[a, 1, b - a, True]
                                                  for a, b in zip(lo, hi, strict=True)]
        return Model(ref.shape, "fill", axes).read(ref)


def outcome(fn: Any) -> tuple[Any, ...]:
    """("ok", array) or ("error", class name), for the Volume and the model alike."""
    try:
        return ("ok", np.asarray(fn()))
    except Refused as e:
        return ("error", e.name)
    except Exception as e:  # (the class is what is compared)
        return ("error", type(e).__name__)


def same(got: tuple[Any, ...], want: tuple[Any, ...], what: str) -> None:
    assert got[0] == want[0], f"{what}: {got} != {want}"
    if got[0] == "error":
        assert got[1] == want[1], what
        return
    a, b = got[1], want[1]
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape} {a.dtype} {b.shape}"
    np.testing.assert_array_equal(a, b, err_msg=what)


# -- keys --------------------------------------------------------------------------------------
# (st.sampled_from, not st.integers, which favours its ends: 0 and 1 hide most mistakes)
def bound(n: int) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.sampled_from(range(-n - 3, n + 5)))


def a_slice(n: int) -> st.SearchStrategy[slice]:
    usual = st.sampled_from(range(max(1, n))).flatmap(lambda a: st.builds(
        slice, st.just(a), st.sampled_from(range(a + 1, max(a + 1, n) + 1)),
        st.sampled_from([None, None, 1, 2, 3])))
    wild = st.builds(slice, bound(n), bound(n),
                     st.sampled_from([None, None, 1, 2, 5, n + 2, 0, -1, np.int64(2)]))
    return st.sampled_from([usual, usual, wild]).flatmap(lambda s: s)


def an_index(n: int) -> st.SearchStrategy[Any]:
    return st.sampled_from([*range(-n - 2, n + 2), np.int64(max(0, n - 1)), True, None,
                            [0, 1], 1.5, np.array([0])])


@st.composite
def keys(draw: st.DrawFn, shape: tuple[int, ...]) -> Any:
    n = draw(st.sampled_from([*range(len(shape) + 1)] * 8 + [len(shape) + 1]))
    key: list[Any] = [
        draw(a_slice(shape[i] if i < len(shape) else 3) if draw(st.sampled_from(range(5)))
             else an_index(shape[i] if i < len(shape) else 3))
        for i in range(n)
    ]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        key.insert(draw(st.integers(0, len(key))), Ellipsis)
    return key[0] if len(key) == 1 and draw(st.booleans()) else tuple(key)


# -- volumes -----------------------------------------------------------------------------------
STORES = ("mem", "zarr", "precomputed", "compressed_segmentation", "n5")


@st.composite
def volumes(draw: st.DrawFn, stores: tuple[str, ...]) -> dict[str, Any]:
    store = draw(st.sampled_from(stores))
    cseg = store == "compressed_segmentation"
    shape = tuple(draw(st.sampled_from([1, 3, 5, 6, 8, 9, 11])) for _ in range(3))
    return {
        "store": store,
        "dtype": draw(st.sampled_from(["uint32", "uint64"] if cseg else
                                      ["uint8", "uint16", "uint64", "float32"])),
        "channels": 1 if cseg else draw(st.sampled_from([1, 3])),
        "shape": shape,
        "chunks": tuple(draw(st.sampled_from([1, 2, 3, 4, 5])) for _ in range(3)),
        "offset": tuple(draw(st.integers(0 if store == "n5" else -5, 7)) for _ in range(3)),
        "scales": 1 if shape == (1, 1, 1) else draw(st.sampled_from([1, 1, 2])),
    }


def _random(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype == "float32":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def _create(p: dict[str, Any], where: str, rng: np.random.Generator) -> tuple[str, list[Any]]:
    url = {"mem": "mem://model", "zarr": f"zarr://{where}/v.zarr", "n5": f"n5://{where}/v.n5"
           }.get(p["store"], f"precomputed://{where}/v")
    vol = voxgate.create(
        url, shape=p["shape"], dtype=p["dtype"], chunks=p["chunks"], voxel_size=(1, 1, 1),
        offset=p["offset"], num_channels=p["channels"], num_scales=p["scales"],
        encoding="compressed_segmentation" if p["store"] == "compressed_segmentation" else None,
        kind="segmentation" if p["store"] == "compressed_segmentation" else "image")
    refs = []
    for k in range(p["scales"]):
        lead = (p["channels"],) if p["channels"] > 1 else ()
        ref = _random(p["dtype"], lead + tuple(vol.scales[k].shape), rng)
        vol.at_scale(k)[...] = ref
        refs.append(ref)
    return url, refs


@settings(SETTINGS, max_examples=300)
@given(p=volumes(("mem",)), data=st.data())
def test_mem_volume_matches_numpy_model(p: dict[str, Any], data: st.DataObject,
                                        monkeypatch_module: Any) -> None:
    """mem:// is cheap: many examples of the Volume's own indexing and reading."""
    _run(p, data, monkeypatch_module)


@SETTINGS
@given(p=volumes(STORES[1:]), data=st.data())
def test_stores_match_numpy_model(p: dict[str, Any], data: st.DataObject,
                                  monkeypatch_module: Any) -> None:
    """The same through zarr, precomputed (raw, compressed_segmentation) and N5."""
    _run(p, data, monkeypatch_module)


def _run(p: dict[str, Any], data: st.DataObject, monkeypatch_module: Any) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), "seed"))
    monkeypatch_module.setattr(core, "STRIDED_READ_BYTES",
                               data.draw(st.sampled_from([8 * 2**20, 1, 64]), "strided bytes"))
    monkeypatch_module.setattr(writing, "WRITE_BLOCK_BYTES",
                               data.draw(st.sampled_from([8 * 2**20, 1, 64]), "block bytes"))
    with tempfile.TemporaryDirectory() as where:
        url, refs = _create(p, where, rng)
        try:
            for _ in range(data.draw(st.integers(1, 6), "ops")):
                _one_op(url, refs, data, rng)
        finally:
            voxgate.remotes.memory.delete("model")


def _one_op(url: str, refs: list[np.ndarray], data: st.DataObject,
            rng: np.random.Generator) -> None:
    mode = data.draw(st.sampled_from(["error", "clip", "fill"]), "bounds")
    k = data.draw(st.integers(0, len(refs) - 1), "scale")
    vol = voxgate.open(url, mode="r+", bounds=mode,
                       missing=data.draw(st.sampled_from(["fill", "error"]), "missing"))
    vol = vol.at_scale(k) if k else vol
    ref = refs[k]
    sc = vol.scale_meta
    view, model, keys_so_far = vol, Model.whole(ref.shape, mode), []
    for _ in range(data.draw(st.sampled_from([1, 2, 2, 3]), "chain")):
        key = data.draw(keys(view.shape), "key")
        keys_so_far.append(key)
        what = f"{url} scale {k} bounds={mode} keys {keys_so_far!r}"
        got = outcome(lambda v=view, i=key: v[i])
        want = outcome(lambda m=model, i=key: m.index(i))
        assert got[0] == want[0] and (got[0] == "ok" or got[1] == want[1]), (what, got, want)
        if got[0] == "error":
            return
        view, model = view[key], model.index(key)
        assert view.shape == model.shape, what
        assert view.dtype == ref.dtype, what
        assert tuple(view.offset) == tuple(
            o + a[0] for o, a in zip(sc.offset, model.axes[-3:], strict=True)), what
    action = data.draw(st.sampled_from(["read", "asarray", "pickle", "dask", "rebound",
                                        "box", "write", "write"]), "action")
    if action == "box":
        lo = [data.draw(st.integers(o - 3, o + n)) for o, n in zip(sc.offset, sc.shape,
                                                                    strict=True)]
        box = Box(lo, [a + data.draw(st.integers(0, n + 3)) for a, n in zip(lo, sc.shape,
                                                                          strict=True)])
        same(outcome(lambda: view.read(box)),
             outcome(lambda: Model.read_box(ref, tuple(sc.offset), mode, box)), f"{what} {box}")
    elif action == "write":
        value: Any
        if data.draw(st.booleans(), "scalar"):
            value = ref.dtype.type(ref.flat[-1]) if data.draw(st.booleans()) else ref.flat[0].item()
        else:
            value = _random(str(ref.dtype), view.shape, rng)
            if view.ndim and data.draw(st.booleans(), "broadcast"):
                value = value[..., :1]
        got = outcome(lambda: view.write(value))
        want = outcome(lambda: model.write(ref, value))
        assert got[0] == want[0] and (got[0] == "ok" or got[1] == want[1]), (what, got, want)
        same(outcome(lambda: vol.read(sc.bounds)), ("ok", ref), f"{what} written back")
    else:
        other = data.draw(st.sampled_from(["error", "clip", "fill"]), "other bounds")
        blocks = tuple(data.draw(st.integers(1, 4), "dask chunks") for _ in view.shape)
        read = {
            "read": view.read,
            "asarray": lambda: np.asarray(view),
            "pickle": lambda: pickle.loads(pickle.dumps(view)).read(),
            "dask": lambda: view.to_dask(chunks=blocks).compute(scheduler="sync"),
            "rebound": lambda: view.with_bounds(other)[...].read(),
        }[action]
        got = outcome(read)
        same(got, outcome(lambda: model.read(ref)), f"{what} {action}")
        assert got[1].flags.c_contiguous, what


@pytest.fixture(scope="module")
def monkeypatch_module() -> Any:
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
