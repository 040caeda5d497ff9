"""Accuracy of a synapse model on held-out synthetic volumes (onnxruntime, no torch).

``python -m voxgate.models.evaluate [--model synapse-unet] [--volumes 4]`` runs the model on
:func:`voxgate.synthetic.synapses` volumes whose seeds training never uses
(:data:`HELD_OUT_SEEDS`) and reports voxel-level precision / recall (probability >= 0.5 against
the ground-truth mask) and detection-level precision / recall: the thresholded map's
26-connected components (cc3d) of at least ``min_size`` voxels, each component's centroid
matched to the nearest unmatched ground-truth centre within ``max_distance_nm`` (nm, greedy,
closest pairs first).  :func:`match_detections` is the matching rule for any detector.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..synthetic import SyntheticSynapses, synapses
from . import load_session, resolve_model

__all__ = [
    "BLACK_MARGIN",
    "DEFAULT_MATCH_NM",
    "DEFAULT_MIN_SIZE",
    "EVAL_SHAPE",
    "HELD_OUT_SEEDS",
    "black_response",
    "detect",
    "evaluate",
    "match_detections",
    "predict_volume",
    "score",
]

#: seeds of the held-out volumes (training uses seed * 1000 + i for small seeds and i)
HELD_OUT_SEEDS: tuple[int, ...] = tuple(range(900_000, 900_016))
#: shape of each held-out volume (z, y, x); density 1 synapse per cubic micrometre
EVAL_SHAPE = (64, 256, 256)
#: a detection within this distance (nm) of a ground-truth centre matches it; synapses are
#: at least 700 nm apart, so one detection can never be near two
DEFAULT_MATCH_NM = 250.0
#: :func:`black_response`: the share of x (the far side) made black in each held-out volume
BLACK_MARGIN = 0.375
#: components smaller than this (voxels) are not detections: a true density has 300 or more
DEFAULT_MIN_SIZE = 30


def predict_volume(model: str | Path, image: np.ndarray, *, device: str = "cpu") -> np.ndarray:
    """The model's float32 probabilities for a whole uint8 (Z, Y, X) ``image``.

    Y and X are padded (reflected) up to multiples of 4 and the padding cropped off again.
    """
    session = load_session(model, device=device)
    z, y, x = image.shape
    py, px = -y % 4, -x % 4
    padded = np.pad(image, ((0, 0), (0, py), (0, px)), mode="reflect") if py or px else image
    feed = (padded.astype(np.float32) / 255.0)[None, None]
    name = session.get_inputs()[0].name
    out = session.run(None, {name: feed})[0]
    return np.asarray(out[0, 0, :z, :y, :x], dtype=np.float32)


def detect(probability: np.ndarray, *, threshold: float = 0.5, min_size: int = DEFAULT_MIN_SIZE,
           voxel_size: Sequence[float] = (40.0, 8.0, 8.0)) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (N, 3) in nm and sizes (voxels) of the components of ``probability >= threshold``
    with at least ``min_size`` voxels (26-connected)."""
    import cc3d

    labels = cc3d.connected_components(probability >= threshold, connectivity=26)
    stats = cc3d.statistics(labels)
    sizes = np.asarray(stats["voxel_counts"])[1:]
    centroids = np.asarray(stats["centroids"], dtype=np.float64)[1:].reshape(-1, 3)
    keep = sizes >= min_size
    return centroids[keep] * np.asarray(voxel_size, dtype=np.float64), sizes[keep]


def match_detections(found_nm: np.ndarray, truth_nm: np.ndarray, *,
                     max_distance_nm: float = DEFAULT_MATCH_NM) -> dict[str, float]:
    """True / false positives, false negatives, precision and recall of ``found_nm`` (N, 3)
    against ``truth_nm`` (M, 3): closest pairs first, each point matched at most once."""
    found = np.asarray(found_nm, dtype=np.float64).reshape(-1, 3)
    truth = np.asarray(truth_nm, dtype=np.float64).reshape(-1, 3)
    tp = 0
    if len(found) and len(truth):
        dist = np.sqrt(((found[:, None, :] - truth[None, :, :]) ** 2).sum(-1))
        pairs = np.argwhere(dist <= max_distance_nm)
        order = np.argsort(dist[pairs[:, 0], pairs[:, 1]], kind="stable")
        used_f: set[int] = set()
        used_t: set[int] = set()
        for i, j in pairs[order]:
            if int(i) not in used_f and int(j) not in used_t:
                used_f.add(int(i))
                used_t.add(int(j))
        tp = len(used_f)
    fp, fn = len(found) - tp, len(truth) - tp
    return {"tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / (tp + fn) if tp + fn else 1.0}


def score(probability: np.ndarray, truth: SyntheticSynapses, *, threshold: float = 0.5,
          min_size: int = DEFAULT_MIN_SIZE,
          max_distance_nm: float = DEFAULT_MATCH_NM) -> dict[str, float]:
    """Voxel- and detection-level counts, precision and recall of one probability map."""
    pred = probability >= threshold
    vtp = int((pred & truth.mask).sum())
    vfp, vfn = int(pred.sum()) - vtp, int(truth.mask.sum()) - vtp
    found, _ = detect(probability, threshold=threshold, min_size=min_size,
                      voxel_size=truth.voxel_size)
    det = match_detections(found, truth.centres * np.asarray(truth.voxel_size),
                           max_distance_nm=max_distance_nm)
    return {"voxel_tp": vtp, "voxel_fp": vfp, "voxel_fn": vfn,
            "voxel_precision": vtp / (vtp + vfp) if vtp + vfp else 1.0,
            "voxel_recall": vtp / (vtp + vfn) if vtp + vfn else 1.0,
            "tp": det["tp"], "fp": det["fp"], "fn": det["fn"],
            "precision": det["precision"], "recall": det["recall"]}


def evaluate(model: str | Path = "synapse-unet", *, seeds: Sequence[int] = HELD_OUT_SEEDS[:4],
             shape: tuple[int, int, int] = EVAL_SHAPE, density: float = 1.0,
             threshold: float = 0.5, min_size: int = DEFAULT_MIN_SIZE,
             max_distance_nm: float = DEFAULT_MATCH_NM) -> dict[str, Any]:
    """Pooled voxel- and detection-level precision / recall over the volumes of ``seeds``."""
    totals = {"voxel_tp": 0, "voxel_fp": 0, "voxel_fn": 0, "tp": 0, "fp": 0, "fn": 0}
    for seed in seeds:
        vol = synapses(shape, seed=seed, density=density)
        one = score(predict_volume(model, vol.image), vol, threshold=threshold,
                    min_size=min_size, max_distance_nm=max_distance_nm)
        for key in totals:
            totals[key] += int(one[key])
    t = totals

    def ratio(a: int, b: int) -> float:
        return round(a / (a + b), 4) if a + b else 1.0

    return {"seeds": list(seeds), "shape": list(shape), "density_per_um3": density,
            "threshold": threshold, "min_size": min_size, "synapses": t["tp"] + t["fn"],
            **t,
            "voxel_precision": ratio(t["voxel_tp"], t["voxel_fp"]),
            "voxel_recall": ratio(t["voxel_tp"], t["voxel_fn"]),
            "precision": ratio(t["tp"], t["fp"]), "recall": ratio(t["tp"], t["fn"])}


def black_response(model: str | Path = "synapse-unet", *,
                   seeds: Sequence[int] = HELD_OUT_SEEDS[:2],
                   shape: tuple[int, int, int] = EVAL_SHAPE, density: float = 1.0,
                   threshold: float = 0.5,
                   min_size: int = DEFAULT_MIN_SIZE,
                   max_distance_nm: float = DEFAULT_MATCH_NM) -> dict[str, Any]:
    """What the model marks where EM data is black (0): an all-black volume of ``shape``, and
    held-out volumes whose far :data:`BLACK_MARGIN` of x (an unimaged margin) and one section
    are black.  Voxels at or above ``threshold`` in black space (0 is right), and the
    detections' precision / recall on the rest against the synapses whose centres lie there
    (a detection whose centroid lies in the margin counts as a false one)."""
    cut = int(shape[2] * (1 - BLACK_MARGIN))
    black = predict_volume(model, np.zeros(shape, np.uint8))
    marked = int((black >= threshold).sum())
    totals = {"tp": 0, "fp": 0, "fn": 0}
    for seed in seeds:
        vol = synapses(shape, seed=seed, density=density)
        image = vol.image.copy()
        image[..., cut:] = 0
        section = shape[0] // 2
        image[section] = 0
        prob = predict_volume(model, image)
        marked += int((prob[..., cut:] >= threshold).sum() + (prob[section] >= threshold).sum())
        found, _ = detect(prob, threshold=threshold, min_size=min_size,
                          voxel_size=vol.voxel_size)
        truth = vol.centres[vol.centres[:, 2] < cut] * np.asarray(vol.voxel_size)
        det = match_detections(found, truth, max_distance_nm=max_distance_nm)
        for key in totals:
            totals[key] += int(det[key])
    t = totals
    return {"seeds": list(seeds), "shape": list(shape), "margin": BLACK_MARGIN,
            "black_voxels_marked": marked, **t,
            "precision": round(t["tp"] / (t["tp"] + t["fp"]), 4) if t["tp"] + t["fp"] else 1.0,
            "recall": round(t["tp"] / (t["tp"] + t["fn"]), 4) if t["tp"] + t["fn"] else 1.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m voxgate.models.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="synapse-unet", help="a built-in name or an .onnx path")
    ap.add_argument("--volumes", type=int, default=4, help=f"held-out volumes of {EVAL_SHAPE}")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE)
    ap.add_argument("--max-distance-nm", type=float, default=DEFAULT_MATCH_NM)
    args = ap.parse_args(argv)
    result = evaluate(resolve_model(args.model), seeds=HELD_OUT_SEEDS[: args.volumes],
                      threshold=args.threshold, min_size=args.min_size,
                      max_distance_nm=args.max_distance_nm)
    result["black"] = black_response(resolve_model(args.model), threshold=args.threshold,
                                     min_size=args.min_size,
                                     max_distance_nm=args.max_distance_nm)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
