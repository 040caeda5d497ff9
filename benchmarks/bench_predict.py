"""voxgate.predict vs onnxruntime called directly on the whole in-memory volume (issue 12).

    python benchmarks/bench_predict.py [--shape 64,512,512] [--block 64,512,256]
                                       [--model synapse-unet] [--repeats 3] [--device cpu]

The model is the built-in ``synapse-unet`` when it is installed, else (or with ``--model
conv``) a stand-in: four 3x3x3 convolutions, 8 channels, ReLU, Sigmoid, built with the onnx
package.  The image is a float32 volume in 0..1 (the synthetic synapse generator's).  Rows,
medians of ``--repeats`` interleaved rounds:

- direct: one ``InferenceSession.run`` on the whole volume (zero-padded to the model's size
  step), default session options (onnxruntime's intra-op threads = all cores);
- predict, one block: ``predict(..., block=<whole volume>, workers=1)``: voxgate's overhead
  alone (the same one run plus reading, scaling, cropping and the uint8 output);
- predict, 1 and 2 workers: ``block=--block`` with the model's default halo; one worker's
  session has onnxruntime's default threads, two workers' one intra-op thread each.

``--accuracy N`` instead runs ``detect_synapses`` on the last N of the held-out seeds
(``voxgate.models.evaluate.HELD_OUT_SEEDS``) and reports precision and recall against the
generator's synapses (matched one-to-one within 250 nm) and how often both cells are right.

The ratio is each row's time over direct's (target <= 1.15 for 1 worker); voxels per second
count output voxels.  ``--device cuda`` runs both sides on onnxruntime-gpu's CUDA provider.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import voxgate
from voxgate.services.predict import load_model, providers_for


def stand_in_model(path: Path) -> Path:
    from tests.services.onnx_models import conv_model

    return conv_model(path, layers=4, seed=0)


def accuracy(n: int, model: str, device: str) -> None:
    """detect_synapses against the generator's ground truth on held-out seeds."""
    from scipy.optimize import linear_sum_assignment

    from voxgate.models.evaluate import HELD_OUT_SEEDS
    from voxgate.synthetic import synapses

    voxel = np.asarray((40.0, 8.0, 8.0))
    tp = fp = fn = right = 0
    seconds = 0.0
    seeds = HELD_OUT_SEEDS[-n:]
    for seed in seeds:
        g = synapses((32, 256, 256), seed=seed, density=2.0)
        t0 = time.perf_counter()
        found = voxgate.detect_synapses(g.image, model=model, segmentation=g.labels,
                                        voxel_size=tuple(voxel), device=device, progress=False)
        seconds += time.perf_counter() - t0
        truth, det = g.centres * voxel, found[["z", "y", "x"]].to_numpy() * voxel
        dist = np.sqrt(((truth[:, None, :] - det[None, :, :]) ** 2).sum(-1))
        rows, cols = linear_sum_assignment(np.where(dist <= 250, dist, 1e9))
        ok = dist[rows, cols] <= 250
        hits = int(ok.sum())
        tp, fp, fn = tp + hits, fp + len(det) - hits, fn + len(truth) - hits
        right += sum(int(found["post_id"].iloc[c]) == int(g.post_id[r])
                     and int(found["pre_id"].iloc[c]) == int(g.pre_id[r])
                     for r, c in zip(rows[ok], cols[ok], strict=True))
    print(f"seeds {list(seeds)}, (32, 256, 256) at density 2/um^3, matched within 250 nm")
    print(f"synapses {tp + fn}, detections {tp + fp}: precision {tp / max(1, tp + fp):.3f}, "
          f"recall {tp / max(1, tp + fn):.3f}; pre and post cells right for {right} of {tp} "
          f"matches; {seconds:.1f} s in detect_synapses")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="64,512,512")
    ap.add_argument("--block", default="64,512,256")
    ap.add_argument("--model", default="synapse-unet",
                    help="a built-in name, an .onnx path, or 'conv' for the stand-in")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--accuracy", type=int, default=0, metavar="N",
                    help="instead: detect_synapses on the last N held-out seeds, precision / "
                         "recall within 250 nm and the pre/post cells of the matches")
    args = ap.parse_args()
    if args.accuracy:
        accuracy(args.accuracy, args.model, args.device)
        return
    z, y, x = (int(v) for v in args.shape.split(","))
    shape = (z, y, x)
    block = tuple(int(v) for v in args.block.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    model: str = args.model
    if model == "conv":
        model = str(stand_in_model(tmp / "conv.onnx"))
    else:
        try:
            load_model(model, device=args.device)
        except voxgate.errors.VoxgateError as exc:
            print(f"{model}: {exc}; using the stand-in conv model", file=sys.stderr)
            model = str(stand_in_model(tmp / "conv.onnx"))

    from voxgate.synthetic import synapses

    image = synapses(shape, seed=1234).image.astype(np.float32) / 255
    runner = load_model(model, device=args.device)
    step = runner.step
    print(f"model {runner.name}: size step {tuple(step)}, receptive radius "
          f"{tuple(runner.radius or ())}, providers {providers_for(args.device)}")

    import onnxruntime as ort

    data = runner.onnx or b""
    sess = ort.InferenceSession(data, providers=list(providers_for(args.device)))
    name = sess.get_inputs()[0].name
    pad = [(0, -(-n // s) * s - n) for n, s in zip(shape, step, strict=True)]
    feed = np.pad(image, pad)[None, None]

    def direct() -> None:
        out = sess.run(None, {name: feed})[0]
        _ = (np.clip(out[0, 0, :shape[0], :shape[1], :shape[2]], 0, 1) * 255).round()

    def blockwise(blk: tuple[int, ...], workers: int) -> Callable[[], None]:
        def run() -> None:
            voxgate.predict(model, image, block=blk, workers=workers, device=args.device,
                            progress=False)
        return run

    rows: dict[str, Callable[[], None]] = {
        "onnxruntime direct, whole volume": direct,
        "predict, one block, 1 worker": blockwise(shape, 1),
        f"predict, {block} blocks, 1 worker": blockwise(block, 1),
        f"predict, {block} blocks, 2 workers": blockwise(block, 2),
    }
    for fn in rows.values():  # warm-up: sessions, probes, page faults
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.repeats):
        for label, fn in rows.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    voxels = int(np.prod(shape))
    base = statistics.median(times["onnxruntime direct, whole volume"])
    halo = voxgate.predict(model, image[:8, :32, :32], progress=False).provenance.details["halo"]
    print(f"\nvolume {shape} float32, block {block}, default halo {halo}, "
          f"median of {args.repeats}\n")
    print("| run | seconds | vs direct | voxels/s |")
    print("|---|---|---|---|")
    for label, ts in times.items():
        med = statistics.median(ts)
        print(f"| {label} | {med:.2f} | {med / base:.2f}x | {voxels / med / 1e6:.1f} M |")


if __name__ == "__main__":
    main()
