"""Models shipped with voxgate and how to find and load them.

``BUILTIN`` names the models inside the package (ONNX files, package data): today
``"synapse-unet"``, a small 3-D U-Net for synapses in EM at 40 x 8 x 8 nm (docs/models.md).
:func:`resolve_model` turns a built-in name or a path into the file, :func:`model_info` tells
what a model expects, :func:`load_session` opens it in onnxruntime (CPU, or CUDA with
``onnxruntime-gpu``).  Training (:mod:`voxgate.models.train`) needs PyTorch, the ``train``
extra; nothing here imports it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    MissingDependencyError,
    RemoteNotFoundError,
)

__all__ = ["BUILTIN", "DEVICES", "load_session", "model_info", "resolve_model"]

#: built-in model name -> its ONNX file in this package (a ``.json`` card lies beside it)
BUILTIN: dict[str, str] = {"synapse-unet": "synapse_unet.onnx"}

#: what ``device=`` accepts: "auto" takes CUDA when onnxruntime offers it, else the CPU
DEVICES = ("auto", "cpu", "cuda")


def _builtins() -> str:
    return ", ".join(repr(n) for n in sorted(BUILTIN))


def resolve_model(name_or_path: str | Path) -> Path:
    """The ONNX file of a built-in model name, or ``name_or_path`` checked to be a file."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN:
        path = Path(str(resources.files(__name__) / BUILTIN[name_or_path]))
        if not path.is_file():
            raise RemoteNotFoundError(
                f"built-in model {name_or_path!r} is missing from the installed package (looked "
                f"for {path}): reinstall voxgate, or train it with python -m "
                f"voxgate.models.train --out {path}")
        return path
    if not isinstance(name_or_path, str | Path):
        raise InvalidRequestError(
            f"model {name_or_path!r}: give a built-in model name ({_builtins()}) or the path of "
            f"an .onnx file")
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise InvalidRequestError(f"model {str(path)!r} is a directory: give the path of an "
                                  f".onnx file or a built-in model name ({_builtins()})")
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith(".onnx"):
        raise RemoteNotFoundError(f"no model file at {text!r}: give an existing .onnx file or a "
                                  f"built-in model name ({_builtins()})")
    raise InvalidRequestError(f"unknown model {text!r}: the built-in models are {_builtins()}; "
                              f"or give the path of an .onnx file")


def model_info(name_or_path: str | Path) -> dict[str, Any]:
    """What a model expects and how good it is.

    For a built-in model, its card (``name``, ``inputs``, ``outputs``, ``valid_shape``,
    ``channels``, ``voxel_size``, ``training`` with its ``seed``, ``accuracy`` ...); for any other
    ONNX file, the card its trainer stored in the metadata key ``voxgate`` if there is one, and
    always ``inputs`` / ``outputs`` as the file declares them.  Plus ``path`` and ``size_bytes``.
    """
    path = resolve_model(name_or_path)
    card_path = path.with_suffix(".json")
    info: dict[str, Any]
    if isinstance(name_or_path, str) and name_or_path in BUILTIN and card_path.is_file():
        info = json.loads(card_path.read_text())
    else:
        session = load_session(path, device="cpu")
        meta = session.get_modelmeta().custom_metadata_map
        info = json.loads(meta["voxgate"]) if "voxgate" in meta else {"name": path.stem}
        info["inputs"] = [{"name": i.name, "shape": list(i.shape), "dtype": i.type}
                          for i in session.get_inputs()]
        info["outputs"] = [{"name": o.name, "shape": list(o.shape), "dtype": o.type}
                           for o in session.get_outputs()]
    info["path"] = str(path)
    info["size_bytes"] = path.stat().st_size
    return info


def load_session(model: str | Path, *, device: str = "cpu") -> Any:
    """An ``onnxruntime.InferenceSession`` on the model (cached per file content and device:
    a file saved again is loaded again, even within one tick of a coarse file time stamp).

    ``device``: "cpu"; "cuda" (onnxruntime's CUDA provider, from ``onnxruntime-gpu``); "auto"
    (CUDA when available, else the CPU).
    """
    if device not in DEVICES:
        raise InvalidRequestError(f"device={device!r}: use one of {', '.join(DEVICES)}")
    path = resolve_model(model).resolve()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return _session(str(path), digest, device)


@functools.lru_cache(maxsize=8)
def _session(path: str, digest: str, device: str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError("running a model needs onnxruntime: pip install "
                                     "onnxruntime (or onnxruntime-gpu for CUDA)") from exc
    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not cuda:
        raise CapabilityNotSupportedError(
            f"device='cuda' but onnxruntime offers only {', '.join(available)}: install "
            f"onnxruntime-gpu (and not onnxruntime beside it) on a machine with CUDA, or use "
            f"device='cpu' / 'auto'")
    providers = ["CPUExecutionProvider"]
    if device in ("cuda", "auto") and cuda:
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime's own errors (InvalidProtobuf, Fail, ...)
        raise InvalidRequestError(f"{path} is not a model onnxruntime can load ({exc}): give "
                                  f"an ONNX file, e.g. one written by python -m "
                                  f"voxgate.models.train") from exc
