"""predict: run a model over any volume block by block, with halos, seam-free.

The model is an ONNX file (run with onnxruntime), the name of a built-in model
(``voxgate.models``) or a Python callable taking a float32 (z, y, x) array in 0..1 and
returning (z, y, x) or (c, z, y, x).  Blocks are planned as ``map_blocks`` plans them (whole
output chunks per block, so no two blocks write one chunk) and run on the local threaded
scheduler or a ``dask.distributed`` client.

Seams: each block is read with ``halo`` voxels of context, clipped to the volume (the model
sees the volume's own faces exactly as a whole-volume run does, not a band of fill), padded
with zeros at the volume's upper faces to the model's size step, and cropped back.  With a
halo at least the model's receptive radius, a block's output equals the whole-volume output
up to float rounding (1 grey level in uint8).  An ONNX model's size step (the product of its
poolings, 1 for a plain convolution stack) and receptive radius are measured once per model
by probing it on small volumes: the smallest step whose sizes come back with their own
spatial shape, then the farthest output voxel that changes when a step-sized cube of input
changes (in noise, all dark, all bright and black-and-white inputs, so that units silent on
one of them do not hide their reach).  The default halo is that radius rounded up to the
step.  A change that reaches the largest probe's faces (a wider view, or statistics of the
whole input) has no halo: such a model runs only as one block, unless ``halo`` is given.

A numpy array (an in-memory source, one chunk) of more than a block's voxels is cut as a store
of 64^3 chunks is (without ``block``): its peak holds a few blocks in flight, not the array
as float32 in and out.  A block whose input window (the block, its halo, the padding) holds
one value everywhere (absent chunks read as the fill value, black margins around sections)
gives the model the same tensor as every window of that value, shape and place of the block
in it: the model runs once per such key and its answer is reused (a handful of keys kept per
run; a constant answer is kept as one value per channel).

A block whose input window touches no stored chunk of a store that tells absent chunks from
stored ones (:func:`voxgate.absence.background_groups`, asked once per run) is not read at
all: its input is the fill value 0 everywhere, and its answer is the reused answer for a
window of 0.  Output chunks (write units) of only the output's fill value are not written
where the output holds nothing (:func:`voxgate.absence.write_sparse`): everywhere in an
``out=`` store this call creates (or the in-memory result), and where a given or overwritten
output held no chunk before the run; a chunk holding older data is written, zeros and all.

Every check of the model (file present, ONNX, input rank and dtype, output shape) happens
before any block runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..absence import (
    StoredGroups,
    background_groups,
    chunk_blocks,
    group_for,
    holds_nothing,
    read_stored,
    write_sparse,
)
from ..blockwise import (
    check_client,
    check_for_cluster,
    check_output_for_cluster,
    count_blocks,
    iter_blocks,
    run_blocks,
    scheduler_name,
)
from ..errors import CapabilityNotSupportedError, InvalidRequestError, MissingDependencyError
from ..geometry import Box, Vec, grow_block, whole_at_least
from ..lru import make_newest
from ..meta import Scale, VolumeMeta
from ..remotes.base import same_volume
from ..remotes.memory import MemoryRemote
from ..volume import Volume
from ._common import (
    Provenance,
    ProvenanceLog,
    as_volume,
    block_boxes,
    check_output_options,
    noting_partial_output,
    resolve_created_output,
    scratch_result,
)

__all__ = ["ModelRunner", "load_model", "no_server_path", "predict", "predict_provenance",
           "probability_to_uint8", "providers_for", "to_unit_float"]

#: a default block holds about this many voxels (16 MiB of float32 input)
BLOCK_VOXELS = 2**22
#: poolings up to this product per axis are found by the shape probe
_MAX_STEP = 32
#: the receptive-field probe grows its cube up to this edge
_MAX_PROBE = 128
_ONES = Vec(1, 1, 1)
#: an in-memory source of more than a block is cut as a store of these chunks is
_ARRAY_GRID = Vec(64, 64, 64)
#: model answers for constant input windows kept at once (per run), and their bytes at most
#: this many blocks of float32 output
_REUSE_ENTRIES = 8
_REUSE_BLOCKS = 4


def probability_to_uint8(p: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Probabilities in 0..1 as grey levels: round(p * 255), clipped (``inplace``: a float32
    ``p`` is used as the scratch space)."""
    q = p if inplace and p.dtype == np.float32 else np.array(p, dtype=np.float32)
    np.clip(q, 0.0, 1.0, out=q)
    q *= 255.0
    np.rint(q, out=q)
    return q.astype(np.uint8)


def to_unit_float(data: np.ndarray) -> np.ndarray:
    """An image as float32 in 0..1: integers divided by their type's maximum, floats as they
    are, booleans as 0 / 1."""
    if data.dtype.kind in "ui":
        return data.astype(np.float32) / np.float32(np.iinfo(data.dtype).max)
    return data.astype(np.float32, copy=False)


# -- models -----------------------------------------------------------------------------------

#: each thread's onnxruntime sessions, by model, the last :data:`_SESSIONS_KEPT` used: a
#: session holds the model's weights, its memory arena and its intra-op threads, so a script
#: predicting with one model after another (a checkpoint per epoch) keeps a few, not all
_SESSIONS = threading.local()
_SESSIONS_KEPT = 2
_PROBED: OrderedDict[tuple[str, tuple[str, ...]], tuple[Vec, Vec, int, bool]] = OrderedDict()
_PROBED_LOCK = threading.Lock()
#: models (by content and providers) that passed every check: not loaded and checked again
#: (each holds its model's bytes; the last :data:`_MODELS_KEPT` checked, as are their probes)
_CHECKED: OrderedDict[tuple[str, tuple[str, ...]], ModelRunner] = OrderedDict()
_MODELS_KEPT = 8


def _keep(cache: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """``cache[key] = value`` as its newest entry, the oldest dropped beyond ``limit``."""
    cache[key] = value
    make_newest(cache, key, limit=limit)


@dataclass
class ModelRunner:
    """A checked model, picklable to other processes: call it on a float32 (z, y, x) array
    to get a float32 (c, z, y, x) array of the same spatial shape.

    An ONNX model travels as its bytes; each thread (or process) that calls it builds its own
    onnxruntime InferenceSession once and keeps it (with those of the thread's other models
    used last, up to :data:`_SESSIONS_KEPT`).
    """

    name: str
    fn: Callable[[np.ndarray], Any] | None = None
    onnx: bytes | None = field(default=None, repr=False)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0
    input_rank: int = 3
    output_rank: int = 3
    #: input sizes must be multiples of this (product of the model's poolings)
    step: Vec = _ONES
    #: the farthest an input voxel reaches in the output (measured), per axis
    radius: Vec | None = None
    #: False when the measured radius is only a lower bound: a change reached the faces of
    #: the largest probe (a wider field of view, or statistics over the whole input)
    bounded: bool = True
    #: output channels (None until a callable has run once)
    channels: int | None = None
    #: what the model's card says (built-in models, files written by voxgate.models.train)
    card: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.onnx or b"").hexdigest()[:16]

    def session(self) -> Any:
        key = (self.digest, self.providers, self.threads)
        cache: OrderedDict[Any, Any] | None = getattr(_SESSIONS, "sessions", None)
        if cache is None:
            cache = _SESSIONS.sessions = OrderedDict()
        sess = cache.get(key)
        if sess is None:
            sess = _make_session(self.onnx or b"", self.providers, self.threads)
        _keep(cache, key, sess, _SESSIONS_KEPT)
        return sess

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.fn is not None:
            y = np.asarray(self.fn(x))
            if y.ndim == 3:
                y = y[None]
            if y.ndim != 4 or y.shape[1:] != x.shape:
                raise InvalidRequestError(
                    f"model {self.name} returned shape {y.shape} for input {x.shape}; it must "
                    "return (z, y, x) or (c, z, y, x) of the shape it was given")
            return y
        sess = self.session()
        feed = x.reshape((1,) * (self.input_rank - 3) + x.shape)
        y = sess.run(None, {sess.get_inputs()[0].name: feed})[0]
        y = np.asarray(y, dtype=np.float32)
        y = y.reshape(y.shape[-4:] if y.ndim >= 4 else (1, *y.shape))
        if y.shape[1:] != x.shape:
            raise InvalidRequestError(
                f"model {self.name} returned spatial shape {y.shape[1:]} for an input of "
                f"{x.shape}; predict needs an output of the input's spatial shape (a network "
                "with 'same' padding)")
        return y


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise MissingDependencyError(
            "predict needs onnxruntime for ONNX models: pip install onnxruntime "
            "(onnxruntime-gpu for CUDA)") from exc
    return onnxruntime


def _make_session(data: bytes, providers: tuple[str, ...], threads: int) -> Any:
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the shape probes' refusals are expected, not news
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, sess_options=opts, providers=list(providers))


def providers_for(device: str) -> tuple[str, ...]:
    """onnxruntime execution providers for ``device`` ("cpu", "cuda" or "auto")."""
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidRequestError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    available = _ort().get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not cuda:
        raise CapabilityNotSupportedError(
            "device='cuda' needs onnxruntime's CUDAExecutionProvider, which this onnxruntime "
            f"does not offer (it has {', '.join(available)}); install onnxruntime-gpu on a "
            "machine with CUDA, or use device='cpu' / 'auto'")
    if cuda and device != "cpu":
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    return ("CPUExecutionProvider",)


def _model_path(model: str | os.PathLike[str]) -> tuple[Path, str, dict[str, Any]]:
    """The file of an ONNX path or a built-in name, its display name and built-in facts."""
    text = os.fspath(model)
    path = Path(text).expanduser()
    looks_like_path = path.suffix == ".onnx" or os.sep in text or "/" in text
    if path.exists() or looks_like_path:
        if not path.is_file():
            raise InvalidRequestError(
                f"model file {path} does not exist; pass the path of an ONNX file, the name of "
                "a built-in model or a Python callable")
        return path, str(path), {}
    try:
        from ..models import model_info, resolve_model
    except ImportError as exc:
        raise InvalidRequestError(
            f"{text!r} is neither an existing ONNX file nor a built-in model (this voxgate has "
            "no built-in models)") from exc
    try:
        found = Path(resolve_model(text))
        info = dict(model_info(text))
    except (KeyError, LookupError, ValueError, FileNotFoundError) as exc:
        raise InvalidRequestError(
            f"{text!r} is neither an existing ONNX file nor a built-in model: {exc}") from exc
    return found, text, info


def load_model(model: Any, *, device: str = "auto", workers: int = 1) -> ModelRunner:
    """Check ``model`` and make its runner; raises InvalidRequestError naming what does not fit
    (a missing or non-ONNX file, an input that is not one float tensor of rank 3 or 5, an
    output of another spatial shape than its input)."""
    if callable(model) and not isinstance(model, (str, os.PathLike)):
        if device not in ("auto", "cpu", "cuda"):
            raise InvalidRequestError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        return ModelRunner(name=getattr(model, "__name__", type(model).__name__), fn=model)
    if not isinstance(model, (str, os.PathLike)):
        raise InvalidRequestError(
            f"model must be an ONNX file path, a built-in model name or a callable, got "
            f"{type(model).__name__}")
    path, name, info = _model_path(model)
    data = path.read_bytes()
    providers = providers_for(device)
    # one worker: onnxruntime's own default (as a direct InferenceSession); several share
    # the cores
    threads = 0 if "CUDAExecutionProvider" in providers or workers <= 1 else max(
        1, (os.cpu_count() or 1) // workers)
    key = (hashlib.sha256(data).hexdigest(), providers)
    with _PROBED_LOCK:
        checked = _CHECKED.get(key)
    if checked is not None:  # the same bytes passed every check before
        return dataclasses.replace(checked, name=name, threads=threads,
                                   card={**checked.card, **info})
    try:
        sess = _make_session(data, providers, threads)
    except Exception as exc:
        raise InvalidRequestError(
            f"{path} is not an ONNX model onnxruntime can load ({type(exc).__name__}: "
            f"{str(exc).strip()[:200]}); pass an .onnx file exported with a 3-D input") from exc
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if len(inputs) != 1:
        raise InvalidRequestError(
            f"model {name} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "predict feeds one image tensor")
    inp, out = inputs[0], outputs[0]
    if inp.type != "tensor(float)":
        raise InvalidRequestError(
            f"model {name} takes {inp.type} input {inp.name!r}; predict feeds float32 "
            "(tensor(float)) images scaled to 0..1")
    if out.type not in ("tensor(float)", "tensor(double)", "tensor(float16)"):
        raise InvalidRequestError(
            f"model {name} returns {out.type}; predict needs float probabilities")
    shape = list(inp.shape)
    if len(shape) not in (3, 5) or any(isinstance(d, int) and d != 1 for d in shape[:-3]):
        raise InvalidRequestError(
            f"model {name} takes input of shape {shape}; predict needs rank 5 (1, 1, z, y, x) "
            "or rank 3 (z, y, x)")
    if len(out.shape) not in (3, 4, 5):
        raise InvalidRequestError(
            f"model {name} returns rank {len(out.shape)} ({out.shape}); predict needs "
            "(1, c, z, y, x), (c, z, y, x) or (z, y, x)")
    runner = ModelRunner(name=name, onnx=data, providers=providers, threads=threads,
                         input_rank=len(shape), output_rank=len(out.shape))
    fixed = [d for d in shape[-3:] if isinstance(d, int)]
    if fixed:
        raise InvalidRequestError(
            f"model {name} takes a fixed input shape {shape}; predict runs blocks of any size "
            "and needs dynamic spatial axes (export with dynamic_axes for z, y, x)")
    try:  # a card its trainer stored in the file (voxgate.models.train does)
        stored = sess.get_modelmeta().custom_metadata_map.get("voxgate")
        in_file = dict(json.loads(stored)) if stored else {}
    except (ValueError, TypeError, AttributeError):
        in_file = {}
    runner.card = card = {**in_file, **info}
    probe_key = (runner.digest, providers)
    with _PROBED_LOCK:
        probed = _PROBED.get(probe_key)
    if probed is None:
        probed = _from_card(runner, card) or _probe(runner)
    runner.step, runner.radius, runner.channels, runner.bounded = probed
    with _PROBED_LOCK:
        _keep(_PROBED, probe_key, probed, _MODELS_KEPT)
        # (kept under the key looked up above, with the file's own card: the name it is
        # loaded by next time adds its own; kept under the short digest, it never served)
        _keep(_CHECKED, key, dataclasses.replace(runner, card=in_file), _MODELS_KEPT)
    return runner


def _try(runner: ModelRunner, shape: tuple[int, int, int]) -> np.ndarray | None:
    try:
        return runner(np.zeros(shape, np.float32))
    except Exception:  # onnxruntime refuses shapes its poolings cannot join back up
        return None


def _from_card(runner: ModelRunner,
               card: dict[str, Any]) -> tuple[Vec, Vec, int, bool] | None:
    """Size step and halo as the model's card states them (``valid_shape.multiple_of``,
    ``halo``), checked on one small input; None when the card does not say."""
    multiple = (card.get("valid_shape") or {}).get("multiple_of")
    halo = card.get("halo", card.get("recommended_halo"))
    if multiple is None or halo is None:
        return None
    step = Vec.of(multiple, "the card's valid_shape.multiple_of")
    shape = (3 * step.z, 3 * step.y, 3 * step.x)
    y = _try(runner, shape)
    if y is None:
        raise InvalidRequestError(
            f"model {runner.name} does not return the spatial shape {shape} of its input (a "
            f"multiple of its card's size step {tuple(step)}); predict needs a model whose "
            "output has the input's spatial shape")
    return step, Vec.of(halo, "the card's halo"), int(y.shape[0]), True


def _refusal(runner: ModelRunner, shape: tuple[int, int, int]) -> str:
    """What onnxruntime said when it refused an input of ``shape`` ("" when it did not)."""
    try:
        runner(np.zeros(shape, np.float32))
    except Exception as exc:
        return f" (on {shape} it said: {str(exc).strip()[:300]})"
    return ""


def _probe_bases(edge: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Inputs the receptive-field probe changes a cube of.  Uniform noise alone leaves units
    that only fire on bright (or dark, or high-contrast) input silent, and a silent unit
    hides its reach: so also all dark, all bright, and random black and white."""
    return [rng.random(edge, dtype=np.float32), np.zeros(edge, np.float32),
            np.ones(edge, np.float32), (rng.random(edge) < 0.5).astype(np.float32)]


def _probe(runner: ModelRunner) -> tuple[Vec, Vec, int, bool]:
    """The model's size step (per axis), receptive radius (per axis), output channels and
    whether that radius is bounded (False: a change reached the faces of the largest probe,
    so the model sees farther than the probe, or sees statistics of its whole input)."""
    m = 1
    while m <= _MAX_STEP and (_try(runner, (3 * m,) * 3) is None
                              or _try(runner, (5 * m,) * 3) is None):
        m *= 2
    if m > _MAX_STEP:
        raise InvalidRequestError(
            f"model {runner.name} does not return its input's spatial shape for any size "
            f"3·2^k or 5·2^k (k <= 5){_refusal(runner, (3, 3, 3))}; predict needs a fully "
            "convolutional model taking one channel, with 'same' padding, whose output has "
            "the input's spatial shape")
    step = [m, m, m]
    for ax in range(3):  # anisotropic poolings: the smallest step per axis
        while step[ax] > 1:
            trial = [3 * m] * 3
            trial[ax] = 3 * (step[ax] // 2)
            if _try(runner, (trial[0], trial[1], trial[2])) is None:
                break
            step[ax] //= 2
    sv = Vec(*step)
    rng = np.random.default_rng(0)
    size = 32
    while True:
        edge = [max(size, 4 * s) // s * s for s in sv]
        centre = [e // 2 // s * s for e, s in zip(edge, sv, strict=True)]
        cube = tuple(slice(c, c + s) for c, s in zip(centre, sv, strict=True))
        radius = [0, 0, 0]
        touching = False
        for base in _probe_bases(edge, rng):
            moved = base.copy()
            moved[cube] = 1.0 - moved[cube]
            a, b = runner(base), runner(moved)
            # NaN where both runs give NaN is no change (NaN != NaN would say "everywhere")
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            changed = np.nonzero(~np.all(same, axis=0))
            for ax in range(3):
                if changed[ax].size:
                    lo = centre[ax] - int(changed[ax].min())
                    hi = int(changed[ax].max()) - (centre[ax] + sv[ax] - 1)
                    radius[ax] = max(radius[ax], lo, hi)
                    touching |= bool(changed[ax].min() == 0
                                     or changed[ax].max() == edge[ax] - 1)
        if not touching or size >= _MAX_PROBE:
            return sv, Vec(*radius), int(a.shape[0]), not touching
        size *= 2


# -- blocks -----------------------------------------------------------------------------------


def _round_up(v: Vec, m: Sequence[int]) -> Vec:
    return Vec(*(-(-a // b) * b for a, b in zip(v, m, strict=True)))


def _lcm(a: Sequence[int], b: Sequence[int]) -> Vec:
    return Vec(*(math.lcm(x, y) for x, y in zip(a, b, strict=True)))


class _Reuse:
    """The model's answers for blocks whose input window holds one value, by what makes the
    model's input and the block's part of its output: (dtype, the value's bytes, window
    shape, the block's offset and shape in it).  Least recently used first out, at most
    ``_REUSE_ENTRIES`` answers and ``limit`` bytes; a key is computed by one thread at a time
    (the others wait for its answer).  Pickled (to dask workers) it is the one cache of its
    run in each process."""

    def __init__(self, limit: int, token: str | None = None) -> None:
        self.limit = limit
        self.token = token or uuid.uuid4().hex
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple[Any, ...], tuple[np.ndarray, tuple[int, ...]]] = (
            OrderedDict())
        self._gates: dict[tuple[Any, ...], threading.Lock] = {}
        self._bytes = 0

    def __reduce__(self) -> tuple[Any, ...]:
        return _reuse_in_process, (self.limit, self.token)

    def _hit(self, key: tuple[Any, ...]) -> np.ndarray | None:
        with self._lock:
            found = self._answers.get(key)
            if found is None:
                return None
            self._answers.move_to_end(key)
        kept, shape = found
        out = np.empty(shape, kept.dtype)
        out[...] = kept  # a fresh array: the caller scales it in place
        return out

    def get(self, key: tuple[Any, ...], compute: Callable[[], np.ndarray]) -> np.ndarray:
        hit = self._hit(key)
        if hit is not None:
            return hit
        with self._lock:
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:
            hit = self._hit(key)
            if hit is not None:
                return hit
            y = compute()
            kept = _compact(y)
            with self._lock:
                if kept.nbytes <= self.limit and key not in self._answers:
                    self._answers[key] = (kept, y.shape)
                    self._bytes += kept.nbytes
                while self._answers and (len(self._answers) > _REUSE_ENTRIES
                                         or self._bytes > self.limit):
                    old, _ = self._answers.popitem(last=False)[1]
                    self._bytes -= old.nbytes
                self._gates.pop(key, None)
        return y


#: the caches of the runs whose blocks this process ran (a dask worker's), last few only
_REUSES: OrderedDict[str, _Reuse] = OrderedDict()
_REUSES_LOCK = threading.Lock()


def _reuse_in_process(limit: int, token: str) -> _Reuse:
    with _REUSES_LOCK:
        found = _REUSES.get(token)
        if found is None:
            found = _REUSES[token] = _Reuse(limit, token)
            while len(_REUSES) > 4:
                _REUSES.popitem(last=False)
        return found


def _compact(y: np.ndarray) -> np.ndarray:
    """``y`` as kept: one value per channel when each channel holds one value (bit for bit),
    else a copy (``y`` may be a view of the whole window's output)."""
    first = y[:, :1, :1, :1]
    if y.size and y.dtype.itemsize in (1, 2, 4, 8) and bool(
            (_bits(y) == _bits(first)).all()):
        return first.copy()
    return y.copy()


def _bits(a: np.ndarray) -> np.ndarray:
    """``a`` viewed as unsigned integers of its item size: equal values are equal bits."""
    return a.view(f"u{a.dtype.itemsize}")


def _one_value(raw: np.ndarray) -> bytes | None:
    """The bytes of the one value every voxel of ``raw`` holds (compared bit for bit), else
    None.  A cheap look at its first and last voxels turns most windows of data away."""
    if raw.size == 0 or raw.dtype.itemsize not in (1, 2, 4, 8):
        return None
    bits = _bits(raw)
    first = bits.flat[0]
    if bits.flat[-1] != first or bits.min() != first or bits.max() != first:
        return None
    return bytes(raw.flat[0:1].tobytes())


def _infer(runner: ModelRunner, src: Volume, block: Box, halo: Vec, region: Box,
           reuse: _Reuse | None = None, stored: StoredGroups | None = None) -> np.ndarray:
    """The model's float32 (c, z, y, x) output over ``block``.

    The block's halo is widened to the model's size step on a grid anchored at the region's
    start, where a whole-volume run has its poolings: a block that starts off that grid (one
    on the output's chunk grid, when the output's origin is not the region's) then sees the
    poolings the whole volume does, and padding is needed at the region's upper faces only.

    With ``reuse``, a window of one value takes the model's answer for its key (the model's
    input is that value over the window's shape, zero-padded to the size step: nothing else)
    from there, computed once.  A window that touches no stored chunk of the source's groups
    ``stored`` (:func:`voxgate.absence.background_groups`: absent chunks read as 0 there) is
    not read: it is that window of 0, and takes the answer for its key."""
    step = runner.step
    lo = Vec(*(r + (a - r) // s * s for a, r, s in zip(block.start - halo, region.start, step,
                                                        strict=True)))
    hi = Vec(*(r + -(-(a - r) // s) * s for a, r, s in zip(block.stop + halo, region.start,
                                                            step, strict=True)))
    ext = Box(lo, hi).intersect(region)
    absent = holds_nothing(stored, ext)
    # (np.zeros: pages the model's input never touches when the answer is reused)
    if absent:
        raw = np.zeros(tuple(ext.shape), src.dtype)
    elif stored is not None and src._plain:  # (only its stored chunks: the rest reads as 0)
        raw = read_stored(src.remote, ext, src.scale, stored)
    else:
        raw = src.read(ext)

    def run() -> np.ndarray:
        x = to_unit_float(raw)
        need = _round_up(ext.shape, runner.step)
        if need != ext.shape:  # only at the volume's upper faces, as the whole-volume run pads
            x = np.pad(x, [(0, n - s) for n, s in zip(need, ext.shape, strict=True)])
        y = runner(x)
        return y[(slice(None), *block.slices(ext.start))]

    if reuse is None:
        one = None
    elif absent:  # every voxel is 0 bits, as _one_value of the window read would find
        one = _one_value(raw[:1, :1, :1])
    else:
        one = _one_value(raw)
    if reuse is None or one is None:
        return run()
    key = (raw.dtype.str, one, tuple(ext.shape), tuple(block.start - ext.start),
           tuple(block.shape))
    return reuse.get(key, run)


class _Output:
    """The output Volume as :func:`_store` writes it: a block's write units of only the fill
    value are left out where ``held`` says the store holds nothing (True: a store this run
    created, or the in-memory result; a :class:`~voxgate.absence.StoredGroups` of a given
    store, asked before any block was written; None: every block written whole), see
    :func:`voxgate.absence.write_sparse`.  Small: it travels to a cluster's workers."""

    def __init__(self, vol: Volume, held: bool | StoredGroups | None) -> None:
        self.vol, self.held = vol, held
        self.dtype, self.meta = vol.dtype, vol.meta

    def write(self, data: np.ndarray, block: Box) -> None:
        if self.held is None or self.held is False:
            self.vol.write(data, block)
        else:
            # (each write made through the Volume: its guards, hooks and partial-write report)
            write_sparse(self.vol.remote, block, data, self.vol.scale, self.held,
                         write=lambda part, piece: self.vol.write(piece, part))


def _store(y: np.ndarray, out: Volume | _Output, block: Box) -> None:
    """Write a block's output ``y``, scaled to ``out``'s dtype (an :class:`_Output`: units of
    only the fill value left out where it holds nothing)."""
    # y is this block's own (cropped) model output: scale it in place
    if out.dtype == np.uint8 and np.isnan(y).any():  # a uint8 cast would make them 0
        raise InvalidRequestError(
            f"the model returned NaN in block {block!r}; uint8 output has no value for it "
            "(it would be stored as 0): fix the model or its input, or use dtype='float32' "
            "to keep NaN")
    data = probability_to_uint8(y, inplace=True) if out.dtype == np.uint8 else y.astype(
        out.dtype, copy=False)
    out.write(np.ascontiguousarray(data if out.meta.num_channels > 1 else data[0]), block)


def _run_block(runner: ModelRunner, src: Volume, out: Volume | _Output, block: Box, halo: Vec,
               region: Box, reuse: _Reuse | None = None,
               stored: StoredGroups | None = None) -> Box:
    _store(_infer(runner, src, block, halo, region, reuse, stored), out, block)
    return block


def predict(
    model: Any,
    source: Any,
    out: Any = None,
    *,
    block: Sequence[int] | None = None,
    halo: Sequence[int] | None = None,
    client: Any = None,
    workers: int | None = None,
    device: str = "auto",
    dtype: Any = None,
    progress: bool = True,
    overwrite: bool = False,
    prefer: str = "auto",
    retries: int = 2,
    **create_options: Any,
) -> Any:
    """Run ``model`` over every block of ``source`` and return or write its output.

    ``model``: an ONNX file, a built-in model name or a callable (float32 (z, y, x) in 0..1 ->
    (z, y, x) or (c, z, y, x) probabilities).  ``dtype``: "uint8" (default; round(p * 255))
    or "float32" (values as returned).  ``out``: None returns a numpy array ((c, z, y, x) for
    several channels); a URL is created like the source (same region, voxel size and chunks);
    a writable Volume is written in place.  ``halo`` defaults to the ONNX model's measured
    receptive radius rounded up to its size step (0 for a callable: pass the radius of a
    callable that looks at neighbours); ``block`` to about 4 Mi voxels, rounded up to whole
    output chunks and to the model's size step.  ``workers`` blocks run at once on local
    threads (each with its own onnxruntime session), or on ``client`` (dask.distributed).
    ``device``: "cpu", "cuda" (onnxruntime-gpu's CUDA provider) or "auto" (CUDA when there).
    No store runs models on its server: ``prefer="server"`` is refused.
    """
    t0 = time.perf_counter()
    check_output_options(predict, out, create_options)
    no_server_path(prefer)
    try:
        dt = np.dtype("uint8" if dtype is None else dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.uint8), np.dtype(np.float32)):
        if dt is None:
            raise InvalidRequestError(
                f"dtype must be 'uint8' (probabilities as 0..255) or 'float32', got {dtype!r}")
        raise InvalidRequestError(
            f"dtype must be 'uint8' (probabilities as 0..255) or 'float32', got {dt.name}")
    src = as_volume(source)
    if src.ndim != 3 or any(a.step != 1 for a in src._axes):
        raise InvalidRequestError(
            f"predict needs a 3-D single-channel view with step 1, got shape {src.shape}")
    if src.kind == "segmentation":
        raise InvalidRequestError(
            f"predict runs a model on an image; {src.url} is a segmentation, whose ids would be "
            f"scaled as intensities (divided by {src.dtype.name}'s maximum).  Give the image, "
            "or a numpy array made from the labels for the model (e.g. (seg > 0) as float32)")
    if workers is not None:
        workers = whole_at_least(workers, 1, "workers")
    check_client(client, "predict")
    if client is not None:  # before a callable's first block runs and out= is created
        check_for_cluster(src.url, "source", "predict")
        check_output_for_cluster(out, "predict")
    nworkers = workers or (1 if client is not None else 2)
    runner = load_model(model, device=device, workers=nworkers)
    region = src.bounds
    # a model that sees farther than its probe (or its whole input) is exact in one block only
    unbounded = halo is None and not runner.bounded
    if unbounded:
        h = Vec(0, 0, 0)
    elif halo is None:
        h = _round_up(runner.radius or Vec(0, 0, 0), runner.step)
    else:
        h = Vec.of(halo, "halo")
        if any(v < 0 for v in h):
            raise InvalidRequestError(f"halo must not be negative, got {tuple(h)}")
        h = _round_up(h, runner.step)
    chunks = src.chunks
    if (block is None and not unbounded and isinstance(src.remote, MemoryRemote)
            and math.prod(chunks) > BLOCK_VOXELS):
        # a numpy array is one chunk: as one block its peak held the array as float32 in and
        # out (a 64 MiB uint8 image, 596 MiB with an identity model); its reads are slices
        chunks = _ARRAY_GRID
    if block is None:  # at least the halo, so that a block is mostly its own voxels
        b = grow_block(chunks, 4, region.shape, 4 * BLOCK_VOXELS)
        b = Vec(*(max(v, hv) for v, hv in zip(b, h, strict=True)))
    else:
        b = Vec.of(block, "block")
        if any(v <= 0 for v in b):
            raise InvalidRequestError(f"block must be positive in every axis, got {tuple(b)}")
    if any(hv > bv for hv, bv in zip(h, b, strict=True)):
        raise InvalidRequestError(
            f"halo {tuple(h)} is larger than the block {tuple(b)}: each block would read more "
            "of its neighbours than of itself; use a larger block")
    b = _round_up(b, runner.step)
    if all(c <= v for c, v in zip(chunks, b, strict=True)):
        b = _round_up(b, _lcm(chunks, runner.step))  # blocks read whole source chunks
    else:  # source chunks larger than a block (a numpy array is one chunk): output chunks
        chunks = b  # of one block
    if unbounded and count_blocks(region, b) > 1:
        raise _unbounded_error(runner, region, b)
    first_box = next(block_boxes(region, b))
    first: np.ndarray | None = None
    reuse = _Reuse(_REUSE_BLOCKS * 4 * math.prod(b) * max(1, runner.channels or 1))
    # where the source stores chunks (a bit per chunk where few enough): windows of none are
    # not read, and of the others only the stored chunks
    stored: StoredGroups | None = None
    asked = False
    if runner.channels is None:  # a callable: its first block tells the output's channels
        stored, asked = background_groups(src.remote, region, src.scale,
                                          chunk_blocks(src.remote, src.scale, b),
                                          region.start), True
        first = _infer(runner, src, first_box, h, region, reuse, stored)
        reuse.limit *= int(first.shape[0])
        runner.channels = int(first.shape[0])
    channels = runner.channels
    meta = VolumeMeta(dt, (Scale(0, region.shape, chunks, src.voxel_size, region.start),),
                      "image", num_channels=channels)

    def fits(vol: Volume) -> None:
        if same_volume(vol.remote, src.remote) and vol.scale == src.scale:
            raise InvalidRequestError(
                f"out is the source {src.url}: each block reads its neighbours (the model's "
                "halo), which earlier blocks would already have overwritten, and a block run "
                "again would read its own output; write to another volume")
        if (vol.dtype != dt or vol.meta.num_channels != channels
                or not vol.bounds.contains(region)):
            raise InvalidRequestError(
                f"out {vol.url} is {vol.dtype.name} with {vol.meta.num_channels} channel(s) "
                f"covering {vol.bounds!r}; predict writes {dt.name} with {channels} "
                f"channel(s) covering {region!r}")

    # (fresh: a store made by this call, which holds nothing until its blocks are written)
    target, fresh = resolve_created_output(
        out, meta, overwrite=overwrite, options=create_options, check=fits,
        scale_of=None if isinstance(source, np.ndarray) else src)
    grid = target.remote.write_grid(target.scale)
    if any(v % g for v, g in zip(b, grid, strict=True)):  # whole output chunks (or shards)
        b = _round_up(b, _lcm(grid, runner.step))
    # on the output's chunk grid (anchored at its store's origin, which is not the region's
    # when the output is a larger given Volume, nor a view's start), so no two blocks write
    # one chunk
    # (walked as the blocks are sent, never listed: it would grow with the volume)
    anchor = target.remote.grid_bounds(target.scale)
    sc = src.scale_meta
    fine = chunk_blocks(src.remote, src.scale, b)  # (a bit per chunk where few enough)
    if not asked or (stored is not None and stored.group != group_for(
            fine, anchor.start, sc.chunks, sc.bounds.start)):  # (on the blocks' grid)
        stored = background_groups(src.remote, region, src.scale, fine, anchor.start)
    # where the output holds nothing, so that its write units of only the fill value need not
    # be written: all of the in-memory result and of a store this call created; of a given or
    # overwritten one, where its chunks are absent now (asked before any block is written; a
    # unit holding older data is written, zeros and all)
    held: bool | StoredGroups | None = True
    if not fresh and out is not None:
        # (a bit per chunk where it has few enough: see voxgate.absence.chunk_blocks)
        held = background_groups(target.remote, region, target.scale,
                                 chunk_blocks(target.remote, target.scale, b),
                                 anchor.start) if target._plain else None
    sink = _Output(target, held)
    n_blocks = count_blocks(region, b, anchor)
    if unbounded and n_blocks > 1:
        raise _unbounded_error(runner, region, b)
    todo: Iterator[Box] = (p.box for p in iter_blocks(region, b, anchor, order="row"))
    head = next(todo, None)
    if head != first_box:
        first = None
    left = region.intersect(anchor).size
    with noting_partial_output("predict", target, out, overwrite):
        if first is not None and head is not None:
            # the callable's first block, computed above to learn its channels
            _store(first, sink, head)
            left -= head.size
        elif head is not None:
            todo = itertools.chain((head,), todo)
        if client is not None:
            check_for_cluster(src.url, "source", "predict")
            check_for_cluster(target.url, "output", "predict", writes=True)
        # the runner (and its model bytes) travels to each worker once, with the two Volumes
        fn = functools.partial(_run_block, _for_cluster(runner) if client is not None else runner,
                               src, sink, halo=h, region=region, reuse=reuse, stored=stored)
        run_blocks(fn, todo, name="predict", client=client, workers=nworkers, progress=progress,
                   retries=retries, total=n_blocks - int(first is not None),
                   total_bytes=left * src.dtype.itemsize)
    prov = Provenance("predict", "local", src.url, {
        "model": runner.name, "providers": list(runner.providers) if runner.onnx else [],
        "block": tuple(b), "halo": tuple(h), "step": tuple(runner.step),
        "blocks": n_blocks, "channels": channels,
        "scheduler": scheduler_name(client),
        "seconds": round(time.perf_counter() - t0, 3)})
    if out is None:
        return scratch_result(target, prov)
    _PROVENANCE[target.url] = prov
    return target


def _unbounded_error(runner: ModelRunner, region: Box, block: Vec) -> InvalidRequestError:
    return InvalidRequestError(
        f"model {runner.name}'s output changes more than {_MAX_PROBE // 2} voxels away from "
        "a changed input (it sees farther than predict's probe, or statistics of its whole "
        "input, such as instance normalization), so no halo predict can measure makes its "
        f"blocks equal one whole-volume run; pass halo= (its receptive radius, if bounded), "
        f"or a block of at least {tuple(region.shape)} to run it once on the whole region "
        f"(block {tuple(block)} would cut it)")


def no_server_path(prefer: str) -> None:
    """Refuse ``prefer="server"``: no store runs a model on its server."""
    if prefer not in ("auto", "server", "local"):
        raise InvalidRequestError(f"prefer must be 'auto', 'server' or 'local', got {prefer!r}")
    if prefer == "server":
        raise CapabilityNotSupportedError(
            "no store runs models on its server; use prefer='local' or 'auto'")


def _for_cluster(runner: ModelRunner) -> ModelRunner:
    """The runner as workers get it: their threads share the worker's cores (onnxruntime's
    default threads), not this process's split."""
    if runner.onnx is None:
        return runner
    return ModelRunner(**{**runner.__dict__, "threads": 0})


_PROVENANCE = ProvenanceLog()  # (the last ProvenanceLog.KEPT volumes written)


def predict_provenance(vol: Volume) -> Provenance | None:
    """How the last ``predict`` into this volume's URL in this process ran."""
    return _PROVENANCE.get(vol.url)
