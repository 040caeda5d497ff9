"""A sweep of the public entry points with bad input: every case must give a voxgate error of
the right class whose message says what was wrong (never a bare numpy / tensorstore / Python
error, a hang or a silent wrong result), a refused write must leave the store as it was, and a
bad command line must end with exit code 2 (usage) or 1 and one "Error: ..." line, never a
traceback.

Cases already covered elsewhere (tests/test_volume.py, tests/test_transfer.py, tests/test_cli.py,
tests/services/*, tests/remotes/*) are not repeated here.  Small real stores (zarr, precomputed,
N5, HDF5, mem://) on tmp_path.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import voxgate
from voxgate.cli import main
from voxgate.errors import (
    CorruptChunkError,
    DtypeError,
    IndexingError,
    InvalidRequestError,
    OutOfBoundsError,
    ReadOnlyError,
    RemoteExistsError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    UnknownSchemeError,
    VoxgateError,
)
from voxgate.geometry import Box
from voxgate.remotes.memory import MemoryRemote

SHAPE = (8, 16, 16)
CHUNKS = (4, 8, 8)
NAN, INF = float("nan"), float("inf")
HUGE = 2**70
#: the store kinds swept, and the dtype each holds (one of each family)
KINDS = {"zarr": "uint8", "precomputed": "uint64", "n5": "uint16", "hdf5": "float32",
         "mem": "uint32"}


def _url(kind: str, root: Path, name: str) -> str:
    return {
        "zarr": f"zarr://{root}/{name}.zarr",
        "precomputed": f"precomputed://file://{root}/{name}",
        "n5": f"n5://{root}/{name}.n5",
        "hdf5": f"hdf5://{root}/{name}.h5#/volume",
        "mem": f"mem://{name}",
    }[kind]


def _reference(dtype: str) -> np.ndarray:
    return (np.arange(math.prod(SHAPE)).reshape(SHAPE) % 200 + 1).astype(dtype)


def _make(kind: str, root: Path, name: str = "sweep") -> voxgate.Volume:
    url = _url(kind, root, name)
    try:
        return voxgate.open(url, mode="r+")
    except RemoteNotFoundError:
        pass
    vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype=KINDS[kind], voxel_size=(1, 1, 1),
                         kind="segmentation" if kind == "precomputed" else "image")
    vol[:] = _reference(KINDS[kind])
    return vol


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of stores for the module (the refusals below never change them)."""
    path = tmp_path_factory.mktemp("sweep")
    for kind in KINDS:
        if kind != "mem":
            _make(kind, path)
    return path


@pytest.fixture(params=list(KINDS))
def store(request: pytest.FixtureRequest, root: Path) -> Iterator[voxgate.Volume]:
    """Each kind of store, opened read-write; the test fails if its data changed."""
    vol = _make(request.param, root)
    yield vol
    _unchanged(vol, _reference(KINDS[request.param]))


def _unchanged(vol: voxgate.Volume, expected: np.ndarray) -> None:
    """Fail if ``vol`` no longer holds ``expected`` (restored first, so one failure does not
    cascade into the next tests)."""
    vol = voxgate.open(vol.url, mode="r+")
    same = np.array_equal(vol.read(), expected)
    if not same:
        vol[:] = expected
    assert same, f"a refused call changed {vol.url}"


@pytest.fixture
def zvol(root: Path) -> Iterator[voxgate.Volume]:
    vol = _make("zarr", root)
    yield vol
    _unchanged(vol, _reference("uint8"))


def _raises(call: Callable[[], Any], exc: type[BaseException], match: str) -> BaseException:
    """``call`` raises ``exc`` (a voxgate error) with ``match`` in its message."""
    assert issubclass(exc, VoxgateError), exc
    with pytest.raises(exc, match=match) as info:
        call()
    return info.value


# -- Volume indexing --------------------------------------------------------------------------

INDEX_CASES = [
    (1.5, IndexingError, "must be an integer, a slice or '...', got float 1.5"),
    (NAN, IndexingError, "got float nan"),
    (b"x", IndexingError, "got bytes"),
    ({1: 2}, IndexingError, "got dict"),
    ({1}, IndexingError, "got set"),
    (complex(1, 0), IndexingError, "got complex"),
    (np.float64(1), IndexingError, "got float64"),
    (np.array(3), IndexingError, "fancy"),
    (slice(0.5, 3), IndexingError, "slice start must be an integer"),
    (slice(0, 3, 1.0), IndexingError, "slice step must be an integer"),
    (slice("a", 3), IndexingError, "slice start must be an integer"),
    (slice(0, "b"), IndexingError, "slice stop must be an integer"),
    (HUGE, OutOfBoundsError, "out of bounds for axis z of size 8"),
    (-HUGE, OutOfBoundsError, "out of bounds for axis z"),
    (np.int64(-9), OutOfBoundsError, "index -9 is out of bounds"),
    (slice(0, HUGE), OutOfBoundsError, "outside 0:8"),
    (slice(-HUGE, 3), OutOfBoundsError, "outside 0:8"),
    ((0, 0, 0, 0), IndexingError, "too many indices"),
]


@pytest.mark.parametrize(("key", "exc", "match"), INDEX_CASES,
                         ids=[repr(c[0])[:30] for c in INDEX_CASES])
def test_index(zvol: voxgate.Volume, key: Any, exc: type[Exception], match: str) -> None:
    _raises(lambda: zvol[key], exc, match)


def test_index_of_a_0d_view(zvol: voxgate.Volume) -> None:
    _raises(lambda: zvol[0, 0, 0][0], IndexingError, r"0 dimensions \(\), 1 were given")


# -- Volume: read, at_scale, with_bounds, missing_chunks, to_dask ----------------------------

VIEW_CASES: list[tuple[str, Callable[[voxgate.Volume], Any], type[Exception], str]] = [
    ("read tuple", lambda v: v.read((0, 0, 0)), InvalidRequestError,
     "expected a voxgate.Box, got tuple"),
    ("read str", lambda v: v.read("0:1,0:1,0:1"), InvalidRequestError, "got str"),
    ("read int", lambda v: v.read(box=1), InvalidRequestError, "got int"),
    ("read before start", lambda v: v.read(Box((-1, 0, 0), (1, 1, 1))), OutOfBoundsError,
     r"outside the volume's bounds Box\[0:8, 0:16, 0:16\]"),
    ("read far away", lambda v: v.read(Box((20, 20, 20), (21, 21, 21))), OutOfBoundsError,
     "outside the volume's bounds"),
    ("fill read of 1 EiB", lambda v: v.with_bounds("fill").read(Box((0, 0, 0), (2**20,) * 3)),
     InvalidRequestError, "more than can be allocated"),
    ("fill read of a 2**62 view", lambda v: v.with_bounds("fill")[0:2**62].read(),
     InvalidRequestError, "more than can be allocated"),
    ("at_scale 1", lambda v: v.at_scale(1), InvalidRequestError, "scale 1 does not exist"),
    ("at_scale -1", lambda v: v.at_scale(-1), InvalidRequestError, "scale -1 does not exist"),
    ("at_scale 1.0", lambda v: v.at_scale(1.0), InvalidRequestError, "must be an integer, got 1.0"),
    ("at_scale True", lambda v: v.at_scale(True), InvalidRequestError, "got True"),
    ("at_scale '0'", lambda v: v.at_scale("0"), InvalidRequestError, "got '0'"),
    ("at_scale None", lambda v: v.at_scale(None), InvalidRequestError, "got None"),
    ("at_scale huge", lambda v: v.at_scale(HUGE), InvalidRequestError, "does not exist"),
    ("with_bounds None", lambda v: v.with_bounds(None), InvalidRequestError,
     r"one of \('error', 'clip', 'fill'\)"),
    ("with_bounds 'ERROR'", lambda v: v.with_bounds("ERROR"), InvalidRequestError, "'ERROR'"),
    ("with_bounds list", lambda v: v.with_bounds(["error"]), InvalidRequestError, "bounds"),
    ("missing_chunks tuple", lambda v: v.missing_chunks((0, 0, 0)), InvalidRequestError,
     "expected a voxgate.Box"),
    ("missing_chunks int", lambda v: v.missing_chunks(1), InvalidRequestError, "got int"),
    ("to_dask 0", lambda v: v.to_dask(0), InvalidRequestError, "chunks 0 not understood"),
    ("to_dask zeros", lambda v: v.to_dask((0, 0, 0)), InvalidRequestError, "chunks"),
    ("to_dask 2 axes", lambda v: v.to_dask((1, 2)), InvalidRequestError,
     "one positive block length per axis"),
    ("to_dask words", lambda v: v.to_dask("nope"), InvalidRequestError, "'nope' not understood"),
    ("to_dask float", lambda v: v.to_dask(1.5), InvalidRequestError, "not understood"),
    ("to_dask negative", lambda v: v.to_dask((-2, 4, 4)), InvalidRequestError, "chunks"),
]


@pytest.mark.parametrize(("call", "exc", "match"), [c[1:] for c in VIEW_CASES],
                         ids=[c[0] for c in VIEW_CASES])
def test_view_calls(zvol: voxgate.Volume, call: Callable[[voxgate.Volume], Any],
                    exc: type[Exception], match: str) -> None:
    _raises(lambda: call(zvol), exc, match)


# -- Volume writes, on every kind of store; the data is checked unchanged after each --------

INT_ONLY = {"zarr", "precomputed", "n5", "mem"}
WRITE_CASES: list[tuple[str, Callable[[voxgate.Volume], Any], type[Exception], str, set[str]]] = [
    ("nan", lambda v: v.__setitem__(slice(None), NAN), DtypeError, "cannot store the float nan",
     INT_ONLY),
    ("inf", lambda v: v.__setitem__(slice(None), INF), DtypeError, "float inf", INT_ONLY),
    ("1.5", lambda v: v.__setitem__(slice(None), 1.5), DtypeError, "float 1.5", INT_ONLY),
    ("-1", lambda v: v.__setitem__(slice(None), -1), DtypeError, "-1 does not fit", INT_ONLY),
    ("2**64", lambda v: v.__setitem__(slice(None), 2**64), DtypeError, "does not fit", INT_ONLY),
    ("np.float64 nan", lambda v: v.__setitem__(slice(None), np.float64("nan")), DtypeError,
     "cannot store", set(KINDS)),
    ("np.int64 negative", lambda v: v.__setitem__(slice(None), np.int64(-1)), DtypeError,
     "cannot store", INT_ONLY),
    ("float64 array", lambda v: v.__setitem__(slice(None), np.zeros(SHAPE)), DtypeError,
     "cannot write float64 data", set(KINDS)),
    ("int8 array", lambda v: v.__setitem__(slice(None), np.zeros(SHAPE, np.int8)), DtypeError,
     "cannot write int8 data", INT_ONLY),
    ("str", lambda v: v.__setitem__(slice(None), "a"), DtypeError, "str", set(KINDS)),
    ("None", lambda v: v.__setitem__(slice(None), None), DtypeError, "object array",
     set(KINDS)),
    ("dict", lambda v: v.__setitem__(slice(None), {}), DtypeError, "object array", set(KINDS)),
    ("complex", lambda v: v.__setitem__(slice(None), 1j), DtypeError, "complex128",
     set(KINDS)),
    ("datetime", lambda v: v.__setitem__(slice(None), np.datetime64("2020-01-01")), DtypeError,
     "datetime64", set(KINDS)),
    ("bytes", lambda v: v.__setitem__(slice(None), b"ab"), DtypeError, "bytes", set(KINDS)),
    ("python ints too big", lambda v: v.__setitem__(0, [[300] * 16] * 16), DtypeError,
     r"300 does not fit in uint8 \(range 0\.\.255\)", {"zarr"}),
    ("wrong shape", lambda v: v.__setitem__(slice(None), np.zeros((3, 3, 3), v.dtype)),
     InvalidRequestError, r"shape \(3, 3, 3\) into a region of shape \(8, 16, 16\)", set(KINDS)),
    ("empty array", lambda v: v.__setitem__(slice(None), np.zeros((0,), v.dtype)),
     InvalidRequestError, r"shape \(0,\)", set(KINDS)),
    ("a view of another shape", lambda v: v.__setitem__(slice(None), v[0:2]),
     InvalidRequestError, r"shape \(2, 16, 16\)", set(KINDS)),
    ("box a tuple", lambda v: v.write(1, (0, 0, 0)), InvalidRequestError,
     "expected a voxgate.Box", set(KINDS)),
    ("box past the end", lambda v: v.write(1, Box((0, 0, 0), (9, 1, 1))), OutOfBoundsError,
     "outside the volume's bounds", set(KINDS)),
    ("box before the start", lambda v: v.write(1, Box((-1, 0, 0), (1, 1, 1))),
     OutOfBoundsError, "outside the volume's bounds", set(KINDS)),
    ("slice past the end", lambda v: v.__setitem__(slice(0, 9), 1), OutOfBoundsError,
     "outside 0:8", set(KINDS)),
    ("fill mode past the end", lambda v: v.with_bounds("fill").__setitem__(slice(0, 9), 1),
     OutOfBoundsError, r"cannot write Box\[0:9", set(KINDS)),
    ("fill mode before the start", lambda v: v.with_bounds("fill").__setitem__(slice(-20, 2), 1),
     OutOfBoundsError, r"cannot write Box\[-12:2", set(KINDS)),
    ("workers 0", lambda v: v.write(v.read(), workers=0), InvalidRequestError,
     "workers must be an integer >= 1, got 0", set(KINDS)),
    ("workers -1", lambda v: v.write(v.read(), workers=-1), InvalidRequestError,
     "workers must be", set(KINDS)),
    ("workers 1.5", lambda v: v.write(v.read(), workers=1.5), InvalidRequestError, "got 1.5",
     set(KINDS)),
    ("workers True", lambda v: v.write(v.read(), workers=True), InvalidRequestError,
     "got True", set(KINDS)),
    ("workers '2'", lambda v: v.write(v.read(), workers="2"), InvalidRequestError, "got '2'",
     set(KINDS)),
    ("read-only", lambda v: voxgate.open(v.url).__setitem__(0, 1), ReadOnlyError,
     "opened read-only", set(KINDS) - {"mem"}),
]


@pytest.mark.parametrize(
    ("store", "call", "exc", "match"),
    [(kind, *c[1:4]) for c in WRITE_CASES for kind in KINDS if kind in c[4]],
    ids=[f"{kind}-{c[0]}" for c in WRITE_CASES for kind in KINDS if kind in c[4]],
    indirect=["store"])
def test_refused_writes_leave_the_store_unchanged(
        store: voxgate.Volume, call: Callable[[voxgate.Volume], Any], exc: type[Exception],
        match: str) -> None:
    _raises(lambda: call(store), exc, match)
    # the store fixture checks the data after the test


# -- voxgate.open ------------------------------------------------------------------------------

def _open_cases(root: Path) -> list[tuple[str, Callable[[], Any], type[Exception], str]]:
    z = _url("zarr", root, "sweep")
    return [
        ("None", lambda: voxgate.open(None), InvalidRequestError,
         "must be a string, a path or a Volume, got NoneType"),
        ("int", lambda: voxgate.open(1), InvalidRequestError, "got int 1"),
        ("bytes", lambda: voxgate.open(b"zarr://x"), InvalidRequestError, "got bytes"),
        ("list", lambda: voxgate.open([z]), InvalidRequestError, "got list"),
        ("empty", lambda: voxgate.open(""), InvalidRequestError, "empty URL"),
        ("no location", lambda: voxgate.open("zarr://"), InvalidRequestError,
         "names no location after zarr://"),
        ("mem no name", lambda: voxgate.open("mem://"), InvalidRequestError, "names no location"),
        ("unknown scheme", lambda: voxgate.open("nosuch://x"), UnknownSchemeError,
         "known schemes: .*zarr://"),
        ("no scheme", lambda: voxgate.open("://x"), UnknownSchemeError, "unknown scheme"),
        ("missing mem", lambda: voxgate.open("mem://nonexist"), RemoteNotFoundError,
         "create it first"),
        ("missing zarr", lambda: voxgate.open(f"zarr://{root}/nope.zarr"), RemoteNotFoundError,
         "no zarr array or group"),
        ("zarr on an h5 file", lambda: voxgate.open(f"zarr://{root}/sweep.h5"),
         RemoteNotFoundError, "no zarr array or group"),
        ("n5 on a zarr", lambda: voxgate.open(f"n5://{root}/sweep.zarr"), RemoteNotFoundError,
         "no N5 dataset"),
        ("precomputed on a zarr", lambda: voxgate.open(f"precomputed://file://{root}/sweep.zarr"),
         RemoteNotFoundError, "it has no info file"),
        ("hdf5 on a directory", lambda: voxgate.open(f"hdf5://{root}/sweep.zarr#/x"),
         InvalidRequestError, "is a directory, not an HDF5 file"),
        ("hdf5 missing dataset", lambda: voxgate.open(f"hdf5://{root}/sweep.h5#/nope"),
         RemoteNotFoundError, "holds /volume"),
        ("garbage zarr.json", lambda: voxgate.open(f"zarr://{root}/garbage.zarr"),
         CorruptChunkError, "zarr.json is not valid JSON"),
        ("info without data_type", lambda: voxgate.open(f"precomputed://file://{root}/noinfo"),
         InvalidRequestError, "not a valid Neuroglancer precomputed info"),
        ("info not an object", lambda: voxgate.open(f"precomputed://file://{root}/listinfo"),
         InvalidRequestError, "is not a JSON object"),
        ("a plain file", lambda: voxgate.open(root / "file.txt"), UnknownSchemeError,
         "cannot tell the format"),
        ("http without host", lambda: voxgate.open("http://"), InvalidRequestError,
         "'http://' names no host"),
        ("https without host", lambda: voxgate.open("https://"), InvalidRequestError,
         "names no host"),
        ("gs without bucket", lambda: voxgate.open("gs://"), InvalidRequestError,
         "names no bucket"),
        ("s3 without bucket", lambda: voxgate.open("zarr://s3://"), InvalidRequestError,
         "names no bucket"),
        ("zarr over http without host", lambda: voxgate.open("zarr://http:///x"),
         InvalidRequestError, "names no host"),
        ("precomputed over https without host", lambda: voxgate.open("precomputed://https://"),
         InvalidRequestError, "names no host"),
        ("bad tensorstore json", lambda: voxgate.open("tensorstore://{bad"), InvalidRequestError,
         "is not JSON"),
        ("tensorstore spec without driver", lambda: voxgate.open({"no": 1}), InvalidRequestError,
         "with a 'driver'"),
        ("bossdb 2 parts", lambda: voxgate.open("bossdb://a/b"), InvalidRequestError,
         "expected collection/experiment/channel"),
        ("dvid without uuid", lambda: voxgate.open("dvid://host"), InvalidRequestError,
         "expected dvid://HOST:PORT/UUID/INSTANCE"),
        ("scale 1.0", lambda: voxgate.open(z, scale=1.0), InvalidRequestError,
         "scale must be an integer, got 1.0"),
        ("scale True", lambda: voxgate.open(z, scale=True), InvalidRequestError, "got True"),
        ("scale None", lambda: voxgate.open(z, scale=None), InvalidRequestError, "got None"),
        ("scale -1", lambda: voxgate.open(z, scale=-1), InvalidRequestError,
         "scale -1 does not exist"),
        ("mode None", lambda: voxgate.open(z, mode=None), InvalidRequestError,
         "mode must be 'r' or 'r\\+'"),
        ("mode 'R'", lambda: voxgate.open(z, mode="R"), InvalidRequestError, "got 'R'"),
        ("bounds None", lambda: voxgate.open(z, bounds=None), InvalidRequestError,
         "bounds must be one of"),
        ("missing 'zero'", lambda: voxgate.open(z, missing="zero"), InvalidRequestError,
         "missing must be 'fill'"),
        ("missing True", lambda: voxgate.open(z, missing=True), InvalidRequestError, "got True"),
        ("unknown zarr option", lambda: voxgate.open(z, bogus=1), InvalidRequestError,
         "zarr:// got unknown option"),
        ("unknown mem option", lambda: voxgate.open(_make("mem", root).url, bogus=1),
         InvalidRequestError, "mem:// got unknown option"),
        ("reopen with options", lambda: voxgate.open(voxgate.open(z), bogus=1),
         InvalidRequestError, "options cannot be given when reopening"),
        ("reopen with a bad mode", lambda: voxgate.open(voxgate.open(z), mode="x"),
         InvalidRequestError, "mode must be"),
        ("reopen at a missing scale", lambda: voxgate.open(voxgate.open(z), scale=5),
         InvalidRequestError, "scale 5 does not exist"),
    ]


OPEN_IDS = [c[0] for c in _open_cases(Path("/x"))]


@pytest.fixture(scope="module")
def bad_files(root: Path) -> Path:
    (root / "garbage.zarr").mkdir()
    (root / "garbage.zarr" / "zarr.json").write_text("garbage{")
    (root / "noinfo").mkdir()
    (root / "noinfo" / "info").write_text('{"type": "image"}')
    (root / "listinfo").mkdir()
    (root / "listinfo" / "info").write_text("[1, 2]")
    (root / "file.txt").write_text("hi")
    return root


@pytest.mark.parametrize("case", OPEN_IDS)
def test_open(bad_files: Path, case: str) -> None:
    _, call, exc, match = next(c for c in _open_cases(bad_files) if c[0] == case)
    _raises(call, exc, match)


def test_open_of_a_refused_port_fails_fast() -> None:
    """Before: tensorstore's default retries (32, up to 32 s apart) held it for minutes."""
    t0 = time.monotonic()
    # (its first request to the host: "could not be reached"; after a relay in this process
    # set its own retry policy, tensorstore's "unavailable": either way not "no array there")
    _raises(lambda: voxgate.open("zarr://http://127.0.0.1:1/x.zarr"), RemoteUnavailableError,
            "could not be reached|storage unavailable")
    assert time.monotonic() - t0 < 30


# -- voxgate.create ----------------------------------------------------------------------------

CREATE_CASES: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("shape 0", {"shape": (0, 8, 8)}, InvalidRequestError, "shape must be positive"),
    ("shape negative", {"shape": (-1, 8, 8)}, InvalidRequestError, "shape must be positive"),
    ("shape 2 axes", {"shape": (8, 8)}, InvalidRequestError, "shape must have 3 entries"),
    ("shape empty", {"shape": ()}, InvalidRequestError, "got 0: \\[\\]"),
    ("shape None", {"shape": None}, InvalidRequestError, "shape must be a \\(z, y, x\\) sequence"),
    ("shape int", {"shape": 8}, InvalidRequestError, "sequence, got 8"),
    ("shape str", {"shape": "888"}, InvalidRequestError, "sequence, got '888'"),
    ("shape float", {"shape": (8.0, 8, 8)}, InvalidRequestError, "must be an integer, got 8.0"),
    ("shape bool", {"shape": (True, 8, 8)}, InvalidRequestError, "got True"),
    ("shape nan", {"shape": (NAN, 8, 8)}, InvalidRequestError, "got nan"),
    ("shape 2**70", {"shape": (HUGE, 8, 8)}, InvalidRequestError, "out of range.*2\\*\\*62"),
    ("offset 2**70", {"offset": (HUGE, 0, 0)}, InvalidRequestError, "offset .* out of range"),
    ("offset + shape too far", {"offset": (2**62 - 4, 0, 0)}, InvalidRequestError,
     "offset \\+ shape .* out of range"),
    ("offset 2 axes", {"offset": (0, 0)}, InvalidRequestError, "offset must have 3 entries"),
    ("offset float", {"offset": (0.5, 0, 0)}, InvalidRequestError, "offset must be an integer"),
    ("chunks 0", {"chunks": (0, 4, 4)}, InvalidRequestError, "chunks must be positive"),
    ("chunks negative", {"chunks": (-4, 4, 4)}, InvalidRequestError, "chunks must be positive"),
    ("chunks None", {"chunks": None}, InvalidRequestError, "chunks must be a"),
    ("chunks float", {"chunks": (4.5, 4, 4)}, InvalidRequestError, "chunks must be an integer"),
    ("dtype None", {"dtype": None}, InvalidRequestError, "dtype is required"),
    ("dtype unknown", {"dtype": "foo"}, InvalidRequestError, "unknown dtype 'foo'"),
    ("dtype int", {"dtype": 5}, InvalidRequestError, "unknown dtype 5"),
    ("dtype complex", {"dtype": "complex64"}, InvalidRequestError, "complex64 is not supported"),
    ("dtype object", {"dtype": "object"}, InvalidRequestError, "object is not supported"),
    ("dtype str", {"dtype": "U8"}, InvalidRequestError, "is not supported"),
    ("dtype bool", {"dtype": "bool"}, InvalidRequestError, "bool is not supported"),
    ("dtype float16", {"dtype": "float16"}, InvalidRequestError, "float16 is not supported"),
    ("dtype datetime", {"dtype": "datetime64[s]"}, InvalidRequestError, "is not supported"),
    ("voxel size 0", {"voxel_size": (0, 1, 1)}, InvalidRequestError, "positive finite numbers"),
    ("voxel size negative", {"voxel_size": (-1, 1, 1)}, InvalidRequestError, "positive finite"),
    ("voxel size nan", {"voxel_size": (NAN, 1, 1)}, InvalidRequestError, "positive finite"),
    ("voxel size inf", {"voxel_size": (INF, 1, 1)}, InvalidRequestError, "positive finite"),
    ("voxel size bool", {"voxel_size": (True, 1, 1)}, InvalidRequestError, "positive finite"),
    ("voxel size 2 axes", {"voxel_size": (1, 1)}, InvalidRequestError, "3 entries"),
    ("voxel size None", {"voxel_size": None}, InvalidRequestError, "voxel_size must be a"),
    ("voxel size str", {"voxel_size": "abc"}, InvalidRequestError, "voxel_size must be a"),
    ("kind 'seg'", {"kind": "seg"}, InvalidRequestError, "kind must be 'image' or 'segmentation'"),
    ("kind None", {"kind": None}, InvalidRequestError, "kind must be"),
    ("num_scales 0", {"num_scales": 0}, InvalidRequestError, "num_scales must be an integer >= 1"),
    ("num_scales 1.5", {"num_scales": 1.5}, InvalidRequestError, "got 1.5"),
    ("num_scales True", {"num_scales": True}, InvalidRequestError, "got True"),
    ("num_scales '2'", {"num_scales": "2"}, InvalidRequestError, "got '2'"),
    ("num_scales past one voxel", {"num_scales": 100}, InvalidRequestError,
     "scale 3 is already one voxel: this volume has at most 4 scales"),
    ("num_channels 0", {"num_channels": 0}, InvalidRequestError,
     "num_channels must be an integer >= 1, got 0"),
    ("num_channels None", {"num_channels": None}, InvalidRequestError, "got None"),
    ("num_channels 1.5", {"num_channels": 1.5}, InvalidRequestError, "got 1.5"),
    ("num_channels True", {"num_channels": True}, InvalidRequestError, "got True"),
    ("num_channels 2**40", {"num_channels": 2**40}, InvalidRequestError,
     "x 1099511627776 channel\\(s\\) of uint8 is 70368744177664 bytes; a chunk is at most "
     "2147483647"),
    ("chunks of 4 GiB", {"shape": (1024, 2048, 2048), "chunks": (1024, 2048, 2048)},
     InvalidRequestError, "is 4294967296 bytes; a chunk is at most 2147483647"),
    ("encoding 'jpeg'", {"encoding": "jpeg"}, InvalidRequestError,
     "applies to precomputed:// volumes only"),
    ("encoding 1", {"encoding": 1}, InvalidRequestError, "precomputed:// volumes only"),
]
CREATE_BASE = {"shape": (8, 8, 8), "dtype": "uint8", "chunks": (4, 4, 4), "voxel_size": (1, 1, 1)}


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "precomputed"])
@pytest.mark.parametrize(("args", "exc", "match"), [c[1:] for c in CREATE_CASES],
                         ids=[c[0] for c in CREATE_CASES])
def test_create(tmp_path: Path, kind: str, args: dict[str, Any], exc: type[Exception],
                match: str) -> None:
    url = _url(kind, tmp_path, "new")
    _raises(lambda: voxgate.create(url, **{**CREATE_BASE, **args}), exc, match)
    assert not os.listdir(tmp_path), "a refused create left files behind"
    assert not MemoryRemote.exists("new")


PRECOMPUTED_CREATE = [
    ("dtype None", {"dtype": None}, "dtype is required"),
    ("dtype int64", {"dtype": "int64"}, "precomputed volumes hold .* not int64"),
    ("shape 2**70", {"shape": (HUGE, 8, 8)}, "out of range"),
    ("num_channels 1.5", {"num_channels": 1.5}, "num_channels must be an integer"),
    ("num_channels 2**40", {"num_channels": 2**40}, "a chunk is at most 2147483647"),
    ("num_scales past one voxel", {"num_scales": 100}, "already one voxel"),
    ("encoding unknown", {"encoding": "nope"}, "voxgate writes precomputed encodings"),
    ("compressed_segmentation of uint8", {"encoding": "compressed_segmentation"},
     "holds uint32 or uint64 data, not uint8"),
]


@pytest.mark.parametrize(("args", "match"), [c[1:] for c in PRECOMPUTED_CREATE],
                         ids=[c[0] for c in PRECOMPUTED_CREATE])
def test_create_precomputed(tmp_path: Path, args: dict[str, Any], match: str) -> None:
    url = _url("precomputed", tmp_path, "new")
    _raises(lambda: voxgate.create(url, **{**CREATE_BASE, **args}), InvalidRequestError, match)
    assert not (tmp_path / "new" / "info").exists()


def test_create_urls_and_places(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    cases = [
        (lambda: voxgate.create(None, **CREATE_BASE), InvalidRequestError,
         "must be a string, a path or a TensorStore spec dict, got NoneType"),
        (lambda: voxgate.create(5, **CREATE_BASE), InvalidRequestError, "got int 5"),
        (lambda: voxgate.create("", **CREATE_BASE), InvalidRequestError, "empty URL"),
        (lambda: voxgate.create("nosuch://a", **CREATE_BASE), UnknownSchemeError,
         "unknown scheme"),
        (lambda: voxgate.create(str(tmp_path / "noext"), **CREATE_BASE), InvalidRequestError,
         "cannot tell which format to create"),
        (lambda: voxgate.create("mem://", **CREATE_BASE), InvalidRequestError,
         "names no location"),
        (lambda: voxgate.create(f"zarr://{tmp_path}/file.txt", **CREATE_BASE),
         InvalidRequestError, "it is a file, not a directory"),
        (lambda: voxgate.create(f"zarr://{tmp_path}/file.txt/a.zarr", **CREATE_BASE),
         InvalidRequestError, "lies inside .*file.txt', which is a file"),
        (lambda: voxgate.create(f"{tmp_path}/file.txt/a.n5", **CREATE_BASE),
         InvalidRequestError, "which is a file"),
        (lambda: voxgate.create(f"precomputed://file://{tmp_path}/file.txt/p", **CREATE_BASE),
         InvalidRequestError, "which is a file"),
        (lambda: voxgate.create(f"hdf5://{tmp_path}/file.txt#/v", **CREATE_BASE),
         InvalidRequestError, "is not an HDF5 file"),
        (lambda: voxgate.create(f"zarr://{tmp_path}/a.zarr", zarr_format=2, shards=(8, 8, 8),
                                **CREATE_BASE), InvalidRequestError, "shards need zarr_format=3"),
        (lambda: voxgate.create(f"zarr://{tmp_path}/b.zarr", shards=(0, 0, 0), **CREATE_BASE),
         InvalidRequestError, "shards \\(0, 0, 0\\) must be positive multiples of the chunks"),
        (lambda: voxgate.create(f"zarr://{tmp_path}/c.zarr", shards=(6, 4, 4), num_scales=2,
                                **CREATE_BASE), InvalidRequestError, "multiples of the chunks"),
        (lambda: voxgate.create(f"zarr://{tmp_path}/d.zarr", bogus=1, **CREATE_BASE),
         InvalidRequestError, "zarr:// got unknown option\\(s\\) to create 'bogus'"),
        (lambda: voxgate.create("mem://e", bogus=1, **CREATE_BASE), InvalidRequestError,
         "unknown option"),
        (lambda: voxgate.create("mem://big", **{**CREATE_BASE, "shape": (2**40,) * 3}),
         InvalidRequestError, "more than can be allocated"),
    ]
    for call, exc, match in cases:
        _raises(call, exc, match)
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]
    assert not MemoryRemote.exists("big") and not MemoryRemote.exists("e")


def test_create_over_an_existing_volume(root: Path) -> None:
    for kind in KINDS:
        vol = _make(kind, root)
        _raises(lambda: voxgate.create(vol.url, **CREATE_BASE), RemoteExistsError,  # noqa: B023
                "exist")
        np.testing.assert_array_equal(vol.read(), _reference(KINDS[kind]))
    _raises(lambda: voxgate.create(_url("zarr", root, "sweep"),
                                   **{**CREATE_BASE, "dtype": "uint16"}, exist_ok=True),
            RemoteExistsError, "already holds a uint8 volume")


# -- voxgate.copy ------------------------------------------------------------------------------

COPY_CASES: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("box past the end", {"box": Box((0, 0, 0), (9, 1, 1))}, OutOfBoundsError,
     "outside the source's bounds"),
    ("box before the start", {"box": Box((-1, 0, 0), (1, 1, 1))}, OutOfBoundsError,
     "outside the source's bounds"),
    ("box a tuple", {"box": (0, 0, 0)}, InvalidRequestError, "box must be a voxgate.Box"),
    ("box a str", {"box": "0:1,0:1,0:1"}, InvalidRequestError, "got str"),
    ("scales empty", {"scales": []}, InvalidRequestError,
     "scales must be a non-empty list of scale indices"),
    ("scales an int", {"scales": 5}, InvalidRequestError, "non-empty list"),
    ("scales a str", {"scales": "0"}, InvalidRequestError, "non-empty list"),
    ("scales float", {"scales": [1.5]}, InvalidRequestError, "scale must be an integer, got 1.5"),
    ("scales str entry", {"scales": ["0"]}, InvalidRequestError, "got '0'"),
    ("scales bool", {"scales": [True]}, InvalidRequestError, "got True"),
    ("scales None entry", {"scales": [None]}, InvalidRequestError, "got None"),
    ("scales repeated", {"scales": [0, 0]}, InvalidRequestError, "more than once"),
    ("scales negative", {"scales": [-1]}, InvalidRequestError, "scale -1 does not exist"),
    ("workers 0", {"workers": 0}, InvalidRequestError, "workers must be an integer >= 1, got 0"),
    ("workers -1", {"workers": -1}, InvalidRequestError, "got -1"),
    ("workers 1.5", {"workers": 1.5}, InvalidRequestError, "got 1.5"),
    ("workers True", {"workers": True}, InvalidRequestError, "got True"),
    ("retries -1", {"retries": -1}, InvalidRequestError, "retries must be an integer >= 0"),
    ("retries 1.5", {"retries": 1.5}, InvalidRequestError, "got 1.5"),
    ("client an int", {"client": 5}, InvalidRequestError,
     "client must be a dask.distributed Client"),
    ("missing 'zero'", {"missing": "zero"}, InvalidRequestError, "missing must be"),
    ("zarr_format 7", {"zarr_format": 7}, InvalidRequestError, "zarr_format must be 2 or 3"),
    ("zarr_format '2'", {"zarr_format": "2"}, InvalidRequestError, "got '2'"),
    ("compression unknown", {"compression": "nope"}, InvalidRequestError,
     "compression must be one of"),
    ("shards 0", {"shards": (0, 0, 0)}, InvalidRequestError, "must be positive multiples"),
    ("unknown option", {"bogus": 1}, InvalidRequestError, "unknown option"),
]


@pytest.mark.parametrize(("args", "exc", "match"), [c[1:] for c in COPY_CASES],
                         ids=[c[0] for c in COPY_CASES])
def test_copy_refused_creates_nothing(zvol: voxgate.Volume, tmp_path: Path, args: dict[str, Any],
                                      exc: type[Exception], match: str) -> None:
    dst = f"zarr://{tmp_path}/dst.zarr"
    _raises(lambda: voxgate.copy(zvol, dst, progress=False, **args), exc, match)
    assert not (tmp_path / "dst.zarr").exists(), "a refused copy created its destination"


def test_copy_endpoints(zvol: voxgate.Volume, root: Path, tmp_path: Path) -> None:
    cases = [
        (lambda: voxgate.copy(None, f"zarr://{tmp_path}/a.zarr", progress=False),
         InvalidRequestError, "the copy's source must be a URL, a path or a Volume"),
        (lambda: voxgate.copy(zvol, None, progress=False), InvalidRequestError,
         "the copy's destination must be"),
        (lambda: voxgate.copy(zvol, 5, progress=False), InvalidRequestError, "got int 5"),
        (lambda: voxgate.copy(zvol, zvol, progress=False), InvalidRequestError,
         "source and destination are the same volume"),
        (lambda: voxgate.copy(zvol, voxgate.open(zvol.url), progress=False), InvalidRequestError,
         "the same volume"),
        (lambda: voxgate.copy(zvol, "nosuch://x", progress=False), UnknownSchemeError,
         "unknown scheme"),
        (lambda: voxgate.copy(zvol, str(tmp_path / "noext"), progress=False),
         InvalidRequestError, "cannot tell which format to create"),
        (lambda: voxgate.copy(f"zarr://{tmp_path}/nope.zarr", f"zarr://{tmp_path}/b.zarr",
                              progress=False), RemoteNotFoundError, "no zarr array or group"),
        (lambda: voxgate.copy(zvol, _make("n5", root).url, progress=False), InvalidRequestError,
         "destination dtype uint16 differs from the source's uint8"),
        (lambda: voxgate.copy(zvol, _make("hdf5", root).url, progress=False),
         InvalidRequestError, "destination dtype float32 differs"),
    ]
    for call, exc, match in cases:
        _raises(call, exc, match)
    assert not os.listdir(tmp_path)


# -- Services -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seg_labels() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint64)
    lab[1:6, 2:10, 2:10] = 5
    lab[2:7, 11:15, 3:14] = 7
    return lab


@pytest.fixture
def seg(root: Path, seg_labels: np.ndarray) -> Iterator[voxgate.Volume]:
    url = f"zarr://{root}/seg.zarr"
    if not (root / "seg.zarr").exists():
        vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype="uint64",
                             voxel_size=(1, 1, 1), kind="segmentation")
        vol[:] = seg_labels
    vol = voxgate.open(url, mode="r+")
    yield vol
    _unchanged(vol, seg_labels)


SegCall = Callable[[voxgate.Volume, voxgate.Volume], Any]
SERVICE_CASES: list[tuple[str, SegCall, type[Exception], str]] = [
    # mesh
    ("mesh ids float", lambda s, i: voxgate.mesh(s, [1.5]), InvalidRequestError,
     "got 1.5 of type float; a float or a boolean is not taken as an id"),
    ("mesh ids bool", lambda s, i: voxgate.mesh(s, [True]), InvalidRequestError, "got True"),
    ("mesh ids str", lambda s, i: voxgate.mesh(s, "57"), InvalidRequestError,
     "ids must be a list of segment ids"),
    ("mesh ids int", lambda s, i: voxgate.mesh(s, 5), InvalidRequestError, "got 5"),
    ("mesh ids str entry", lambda s, i: voxgate.mesh(s, ["a"]), InvalidRequestError, "got 'a'"),
    ("mesh ids nan", lambda s, i: voxgate.mesh(s, [NAN]), InvalidRequestError, "got nan"),
    ("mesh ids 2**64", lambda s, i: voxgate.mesh(s, [2**64]), InvalidRequestError,
     "is not a uint64 segment id"),
    ("mesh simplify nan", lambda s, i: voxgate.mesh(s, simplify=NAN), InvalidRequestError,
     "reduction factor must be a whole number >= 1, got nan"),
    ("mesh simplify inf", lambda s, i: voxgate.mesh(s, simplify=INF), InvalidRequestError,
     "got inf"),
    ("mesh max_error negative", lambda s, i: voxgate.mesh(s, simplify=(2, -1)),
     InvalidRequestError, "max_error must be a finite distance >= 0"),
    ("mesh max_error nan", lambda s, i: voxgate.mesh(s, simplify=(2, NAN)), InvalidRequestError,
     "max_error must be"),
    ("mesh simplify str pair", lambda s, i: voxgate.mesh(s, simplify=("a", 1)),
     InvalidRequestError, "of numbers"),
    ("mesh block 0", lambda s, i: voxgate.mesh(s, block=(0, 8, 8)), InvalidRequestError,
     "block must be three positive integers"),
    ("mesh block negative", lambda s, i: voxgate.mesh(s, block=(-1, 8, 8)), InvalidRequestError,
     "block must be three positive integers"),
    ("mesh voxel_size with a volume", lambda s, i: voxgate.mesh(s, voxel_size=(0, 1, 1)),
     InvalidRequestError, "voxel_size is for a numpy source"),
    ("mesh float array", lambda s, i: voxgate.mesh(np.zeros((4, 4, 4), np.float32)),
     InvalidRequestError, "a segmentation needs integer labels"),
    ("mesh object array", lambda s, i: voxgate.mesh(np.zeros((4, 4, 4), object)),
     InvalidRequestError, "must hold numbers"),
    # skeletonize
    ("skeletonize ids float", lambda s, i: voxgate.skeletonize(s, [1.5]), InvalidRequestError,
     "got 1.5"),
    ("skeletonize ids negative", lambda s, i: voxgate.skeletonize(s, [-1]), InvalidRequestError,
     "-1 is not a uint64 segment id"),
    ("skeletonize ids int", lambda s, i: voxgate.skeletonize(s, 5), InvalidRequestError,
     "ids must be a list"),
    ("skeletonize dust -1", lambda s, i: voxgate.skeletonize(s, dust_threshold=-1),
     InvalidRequestError, "dust_threshold \\(voxels\\) must be an integer >= 0"),
    ("skeletonize dust nan", lambda s, i: voxgate.skeletonize(s, dust_threshold=NAN),
     InvalidRequestError, "got nan"),
    ("skeletonize dust None", lambda s, i: voxgate.skeletonize(s, dust_threshold=None),
     InvalidRequestError, "got None"),
    ("skeletonize dust True", lambda s, i: voxgate.skeletonize(s, dust_threshold=True),
     InvalidRequestError, "got True"),
    ("skeletonize teasar unknown key", lambda s, i: voxgate.skeletonize(
        s, teasar_params={"bogus": 1}), InvalidRequestError, "unknown key\\(s\\) \\['bogus'\\]"),
    ("skeletonize teasar not a dict", lambda s, i: voxgate.skeletonize(s, teasar_params=5),
     InvalidRequestError, "teasar_params must be a dict"),
    ("skeletonize teasar nan", lambda s, i: voxgate.skeletonize(
        s, teasar_params={"scale": NAN}), InvalidRequestError, "must be a finite number"),
    ("skeletonize parallel float", lambda s, i: voxgate.skeletonize(s, parallel=1.5),
     InvalidRequestError, "parallel must be an integer"),
    ("skeletonize voxel_size with a volume", lambda s, i: voxgate.skeletonize(
        s, voxel_size=(1, 1, 1)), InvalidRequestError, "voxel_size is for a numpy source"),
    ("skeletonize float array", lambda s, i: voxgate.skeletonize(
        np.zeros((4, 4, 4), np.float32)), InvalidRequestError, "integer labels"),
    # connected components
    ("cc connectivity 26.0", lambda s, i: voxgate.connected_components(s, connectivity=26.0),
     InvalidRequestError, "connectivity must be 6, 18 or 26, got 26.0"),
    ("cc options without out", lambda s, i: voxgate.connected_components(s, bogus=1),
     InvalidRequestError, "options \\['bogus'\\] need an out= URL"),
    ("cc workers 0", lambda s, i: voxgate.connected_components(s, workers=0),
     InvalidRequestError, "workers must be an integer >= 1"),
    ("cc client an int", lambda s, i: voxgate.connected_components(s, client=5),
     InvalidRequestError, "client must be a dask.distributed Client"),
    ("cc into its own source", lambda s, i: voxgate.connected_components(s, s.url,
                                                                         overwrite=True),
     InvalidRequestError, "out is the source"),
    ("cc into an image", lambda s, i: voxgate.connected_components(s, i.url, overwrite=True),
     InvalidRequestError, "out must be a uint64 volume"),
    # label_stats
    ("label_stats block 0", lambda s, i: voxgate.label_stats(s, block=(0, 8, 8)),
     InvalidRequestError, "block must be three positive integers"),
    ("label_stats client an int", lambda s, i: voxgate.label_stats(s, client=5),
     InvalidRequestError, "client must be a dask.distributed Client"),
    ("label_stats float array", lambda s, i: voxgate.label_stats(np.zeros((4, 4, 4), np.float32)),
     InvalidRequestError, "integer labels"),
    # map_blocks
    ("map_blocks fn not callable", lambda s, i: voxgate.map_blocks(5, i), InvalidRequestError,
     "fn must be callable, got int"),
    ("map_blocks dtype unknown", lambda s, i: voxgate.map_blocks(lambda a: a, i, dtype="foo"),
     InvalidRequestError, "unknown dtype 'foo'"),
    ("map_blocks workers 0", lambda s, i: voxgate.map_blocks(lambda a: a, i, workers=0),
     InvalidRequestError, "workers must be"),
    ("map_blocks client an int", lambda s, i: voxgate.map_blocks(lambda a: a, i, client=5),
     InvalidRequestError, "client must be"),
    ("map_blocks halo in place", lambda s, i: voxgate.map_blocks(
        lambda a: a, s, s.url, halo=(1, 1, 1), block=(4, 8, 8), overwrite=True),
     InvalidRequestError, "out is the source .* with a halo"),
    # downsample
    ("downsample a view", lambda s, i: voxgate.downsample(i[0:4], 2), InvalidRequestError,
     "computes whole scales of a volume"),
    ("downsample num_scales 2**70", lambda s, i: voxgate.downsample(i, HUGE),
     InvalidRequestError, "already one voxel"),
    ("downsample num_scales 100", lambda s, i: voxgate.downsample(i, 100), InvalidRequestError,
     "scale 5 is already one voxel: this volume has at most 6 scales"),
    ("downsample factors an int", lambda s, i: voxgate.downsample(i, 2, factors=5),
     InvalidRequestError, "factors must be a list"),
    ("downsample block 0", lambda s, i: voxgate.downsample(i, 2, block=(0, 8, 8)),
     InvalidRequestError, "block must be three positive integers"),
    ("downsample workers 0", lambda s, i: voxgate.downsample(i, 2, workers=0),
     InvalidRequestError, "workers must be"),
    ("downsample client an int", lambda s, i: voxgate.downsample(i, 2, client=5),
     InvalidRequestError, "client must be"),
    # predict, synapses
    ("predict dtype unknown", lambda s, i: voxgate.predict("synapse-unet", i, dtype="foo",
                                                           progress=False),
     InvalidRequestError, "dtype must be 'uint8' .* or 'float32', got 'foo'"),
    ("predict workers '2'", lambda s, i: voxgate.predict("synapse-unet", i, workers="2",
                                                         progress=False),
     InvalidRequestError, "workers must be an integer >= 1, got '2'"),
    ("synapses threshold str", lambda s, i: voxgate.detect_synapses(i, threshold="0.5",
                                                                    progress=False),
     InvalidRequestError, "threshold must be a probability in \\(0, 1\\], got '0.5'"),
    ("synapses on a segmentation", lambda s, i: voxgate.detect_synapses(s, progress=False),
     InvalidRequestError, "needs an EM image; .* is a segmentation"),
    # proofreading
    ("merge no ids", lambda s, i: voxgate.merge(s, []), InvalidRequestError,
     "a merge needs at least two ids, got none"),
    ("merge history_dir int", lambda s, i: voxgate.merge(s, [5, 7], history_dir=5),
     InvalidRequestError, "history_dir must be a directory path"),
    ("history history_dir int", lambda s, i: voxgate.history(s, history_dir=5),
     InvalidRequestError, "history_dir must be a directory path"),
    ("split box an int", lambda s, i: voxgate.split(s, 5, box=5), InvalidRequestError,
     "box must be a voxgate.Box or a \\(start, stop\\) pair"),
    ("split box a str", lambda s, i: voxgate.split(s, 5, box="0:1,0:1,0:1"),
     InvalidRequestError, "box must be a voxgate.Box"),
    ("split box a triple", lambda s, i: voxgate.split(s, 5, box=((0, 0, 0), (8, 8, 8), (1, 1, 1))),
     InvalidRequestError, "\\(start, stop\\) pair"),
    ("split one voxel in two groups", lambda s, i: voxgate.split(
        s, 5, seeds={8: [(1, 2, 2)], 9: [(1, 2, 2)]}), InvalidRequestError,
     "is in two seed groups \\(8 and 9\\)"),
    ("undo n True", lambda s, i: voxgate.undo(s, True), InvalidRequestError,
     "n must be an integer >= 1, got True"),
    # view
    ("view port -1", lambda s, i: voxgate.view(s, port=-1), InvalidRequestError,
     "port must be an integer 0..65535"),
    ("view port 99999", lambda s, i: voxgate.view(s, port=99999), InvalidRequestError,
     "got 99999"),
    ("view port float", lambda s, i: voxgate.view(s, port=1.5), InvalidRequestError, "got 1.5"),
    ("view segments of an unknown layer", lambda s, i: voxgate.view(s, segments={"x": [1]}),
     InvalidRequestError, "segments names layer\\(s\\) \\['x'\\], which are not segmentation"),
    ("view segments of an image layer", lambda s, i: voxgate.view(s, i, names=["s", "i"],
                                                                  segments={"i": [1]}),
     InvalidRequestError, "the segmentation layers are \\['s'\\]"),
    ("view segment ids str", lambda s, i: voxgate.view(s, names=["s"], segments={"s": ["a"]}),
     InvalidRequestError, "segments\\['s'\\] must hold integers"),
]


@pytest.fixture
def img(tmp_path: Path) -> voxgate.Volume:
    vol = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=SHAPE, chunks=CHUNKS, dtype="uint8",
                         voxel_size=(40, 8, 8))
    vol[:] = 3
    return vol


@pytest.mark.parametrize(("call", "exc", "match"), [c[1:] for c in SERVICE_CASES],
                         ids=[c[0] for c in SERVICE_CASES])
def test_services(seg: voxgate.Volume, img: voxgate.Volume, tmp_path: Path, call: SegCall,
                  exc: type[Exception], match: str) -> None:
    before = sorted(os.listdir(tmp_path))
    scales = len(img.scales)
    _raises(lambda: call(seg, img), exc, match)
    assert sorted(os.listdir(tmp_path)) == before, "a refused Service created files"
    assert len(voxgate.open(img.url).scales) == scales, "a refused downsample added scales"
    assert (img.read() == 3).all()


SERVICE_OUTPUT_CASES: list[tuple[str, Callable[[voxgate.Volume, str], Any], str]] = [
    ("map_blocks workers 0", lambda i, o: voxgate.map_blocks(lambda a: a, i, o, workers=0),
     "workers must be"),
    ("map_blocks retries -1", lambda i, o: voxgate.map_blocks(lambda a: a, i, o, retries=-1),
     "retries must be"),
    ("map_blocks client an int", lambda i, o: voxgate.map_blocks(lambda a: a, i, o, client=5),
     "client must be"),
    ("cc workers -1", lambda i, o: voxgate.connected_components(i, o, workers=-1),
     "workers must be"),
    ("cc client an int", lambda i, o: voxgate.connected_components(i, o, client=5),
     "client must be"),
    ("cc block 0", lambda i, o: voxgate.connected_components(i, o, block=(0, 4, 4)),
     "block must be three positive integers"),
]


@pytest.mark.parametrize(("call", "match"), [c[1:] for c in SERVICE_OUTPUT_CASES],
                         ids=[c[0] for c in SERVICE_OUTPUT_CASES])
def test_refused_services_create_no_output(img: voxgate.Volume, tmp_path: Path,
                                           call: Callable[[voxgate.Volume, str], Any],
                                           match: str) -> None:
    """Before: the out= URL was created, then the bad option refused."""
    _raises(lambda: call(img, f"zarr://{tmp_path}/out.zarr"), InvalidRequestError, match)
    assert not (tmp_path / "out.zarr").exists()


def test_annotations_and_meshes(tmp_path: Path) -> None:
    table = pd.DataFrame({"z": [1.0], "y": [2.0], "x": [3.0]})
    layer = f"precomputed://file://{tmp_path}/ann"
    voxgate.write_annotations(layer, table, voxel_size=(1, 1, 1))
    cases = [
        (lambda: voxgate.read_annotations(layer, ids=5), "ids must be a list of segment ids"),
        (lambda: voxgate.read_annotations(layer, ids=["a"]), "got 'a' of type str"),
        (lambda: voxgate.read_annotations(layer, ids=[1.5]), "got 1.5"),
        (lambda: voxgate.read_annotations(layer, ids=[-1]), "-1 is not a uint64 segment id"),
        (lambda: voxgate.read_annotations(None), "must be a string or path, got None"),
        (lambda: voxgate.write_meshes(5, {}), "must be a string or path, got 5"),
    ]
    for call, match in cases:
        _raises(call, InvalidRequestError, match)


# -- the command line ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli")
    seg = voxgate.create(f"zarr://{path}/seg.zarr", shape=SHAPE, chunks=CHUNKS, dtype="uint64",
                         voxel_size=(1, 1, 1), kind="segmentation")
    lab = np.zeros(SHAPE, np.uint64)
    lab[1:6, 2:10, 2:10] = 5
    seg[:] = lab
    img = voxgate.create(f"zarr://{path}/img.zarr", shape=SHAPE, chunks=CHUNKS, dtype="uint8",
                         voxel_size=(1, 1, 1), num_scales=2)
    img[:] = 3
    (path / "file.txt").write_text("x")
    return path


CLI_CASES: list[tuple[str, str, int, str]] = [
    ("info no host", "info http://", 1, "'http://' names no host"),
    ("cp scales word", "cp {img} {out} --scales x", 2, "scales are comma-separated scale indices"),
    ("cp scales empty", "cp {img} {out} --scales=", 2, "got ''"),
    ("cp scales comma", "cp {img} {out} --scales ,", 2, "got ','"),
    ("cp workers 0", "cp {img} {out} --workers 0 --no-progress", 1,
     "workers must be an integer >= 1, got 0"),
    ("cp option without key", "cp {img} {out} -o =3", 2, "options are KEY=VALUE, got '=3'"),
    ("cp shards 0", "cp {img} {out} -o shards=[0,0,0] --no-progress", 1,
     "must be positive multiples of the chunks"),
    ("cp box outside", "cp {img} {out} --box 0:99,0:1,0:1 --no-progress", 1,
     "OutOfBoundsError"),
    ("mesh ids float", "mesh {seg} --ids 1.5 --obj-dir {root}/objs", 2,
     "ids are comma-separated integers"),
    ("mesh ids negative", "mesh {seg} --ids -1 --obj-dir {root}/objs", 1,
     "-1 is not a uint64 segment id"),
    ("mesh block 0", "mesh {seg} --block 0,8,8 --obj-dir {root}/objs", 1,
     "block must be three positive integers"),
    ("mesh block negative", "mesh {seg} --block -1,8,8 --obj-dir {root}/objs", 1,
     "block must be three positive integers"),
    ("mesh simplify nan", "mesh {seg} --simplify nan --obj-dir {root}/objs", 1,
     "reduction factor must be a whole number"),
    ("mesh simplify inf", "mesh {seg} --simplify inf --obj-dir {root}/objs", 1, "got inf"),
    ("mesh max-error negative", "mesh {seg} --simplify 2 --max-error -1 --obj-dir {root}/objs",
     1, "max_error must be a finite distance >= 0"),
    ("skeletonize dust -1", "skeletonize {seg} --dust -1 --swc-dir {root}/swc", 1,
     "dust_threshold \\(voxels\\) must be an integer >= 0"),
    ("skeletonize ids negative", "skeletonize {seg} --ids -1 --swc-dir {root}/swc", 1,
     "is not a uint64 segment id"),
    ("cc into its source", "cc {seg} {seg} --overwrite", 1, "out is the source"),
    ("stats csv in a missing folder", "stats {seg} --csv {root}/nodir/x.csv", 1,
     "Cannot save file into a non-existent directory"),
    ("history csv in a missing folder", "history {seg} --csv {root}/nodir/x.csv", 1,
     "non-existent directory"),
    ("synapses on a segmentation", "synapses {seg}", 1, "needs an EM image"),
    ("serve port -1", "serve --port -1 --data-root {root}", 2,
     "-1 is not in the range 1<=x<=65535"),
    ("serve port 99999", "serve --port 99999 --data-root {root}", 2,
     "99999 is not in the range"),
    ("serve port 0", "serve --port 0 --data-root {root}", 2, "0 is not in the range"),
    ("view port -1", "view {seg} --no-browser --port -1", 2, "-1 is not in the range 0<=x<=65535"),
    ("view port 99999", "view {seg} --no-browser --port 99999", 2, "not in the range"),
]


@pytest.mark.parametrize(("args", "code", "match"), [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_cli(cli_root: Path, tmp_path: Path, args: str, code: int, match: str) -> None:
    from .test_cli_audit import _one_error

    urls = {"img": f"zarr://{cli_root}/img.zarr", "seg": f"zarr://{cli_root}/seg.zarr",
            "out": f"zarr://{tmp_path}/out.zarr", "root": str(cli_root)}
    argv = [a.format(**urls) for a in args.split(" ")]
    before = voxgate.open(urls["seg"]).read()
    _one_error(CliRunner().invoke(main, argv), code, match)
    assert not (tmp_path / "out.zarr").exists()
    np.testing.assert_array_equal(voxgate.open(urls["seg"]).read(), before)
