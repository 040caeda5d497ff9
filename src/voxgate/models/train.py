"""Train the built-in synapse model: ``python -m voxgate.models.train --out PATH --seed 0``.

A small anisotropic 3-D U-Net (PyTorch, the ``train`` extra: ``pip install voxgate[train]``)
learns per-voxel synapse probability on :func:`voxgate.synthetic.synapses` volumes, is exported
to ONNX (input ``image`` (1, 1, Z, Y, X) float32 scaled 0..1, output ``probability`` of the same
shape, sigmoid; Z, Y and X dynamic, Y and X multiples of 4) and measured with onnxruntime on
held-out seeds (:mod:`voxgate.models.evaluate`).  Beside the ``.onnx`` file it writes a
``.json`` card with what :func:`voxgate.models.model_info` reports.  Deterministic for a seed
on one machine (torch's CPU kernels; threads pinned with ``--threads``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..synthetic import SyntheticSynapses, synapses

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("training needs PyTorch: pip install 'voxgate[train]' (CPU: a torch "
                      "CPU wheel; torch is not needed to run the model)") from exc

__all__ = ["Trained", "UNet3D", "export_onnx", "main", "train"]

#: training volumes: seeds seed * 1000 + i; evaluate.HELD_OUT_SEEDS start far beyond
VOLUME_SHAPE = (48, 256, 256)
VOXEL_SIZE = (40.0, 8.0, 8.0)
DENSITY = 2.0


def _block(cin: int, cout: int, k1: tuple[int, int, int],
           k2: tuple[int, int, int]) -> nn.Sequential:
    """Two convolutions (kernels ``k1`` then ``k2``, padded to keep the shape), BatchNorm, ReLU."""
    def pad(k: tuple[int, int, int]) -> tuple[int, int, int]:
        return (k[0] // 2, k[1] // 2, k[2] // 2)

    return nn.Sequential(
        nn.Conv3d(cin, cout, k1, padding=pad(k1), bias=False),
        nn.BatchNorm3d(cout), nn.ReLU(),
        nn.Conv3d(cout, cout, k2, padding=pad(k2), bias=False),
        nn.BatchNorm3d(cout), nn.ReLU())


class UNet3D(nn.Module):
    """Three levels, pooled in y and x only (voxels 40 x 8 x 8 nm are 5 times longer in z).

    Level 1 (full resolution) uses 1x3x3 kernels, level 2 a 1x3x3 and a 3x3x3 one, the bottom
    two 3x3x3: a receptive field of 9 sections by 44 x 44 voxels (360 x 350 x 350 nm), enough
    to see a density and its vesicles together.
    """

    def __init__(self, channels: tuple[int, int, int] = (8, 16, 32)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.channels = channels
        flat, full = (1, 3, 3), (3, 3, 3)
        self.enc1 = _block(1, c1, flat, flat)
        self.enc2 = _block(c1, c2, flat, full)
        self.bottom = _block(c2, c3, full, full)
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.up2 = nn.ConvTranspose3d(c3, c2, (1, 2, 2), stride=(1, 2, 2))
        self.dec2 = _block(2 * c2, c2, flat, full)
        self.up1 = nn.ConvTranspose3d(c2, c1, (1, 2, 2), stride=(1, 2, 2))
        self.dec1 = _block(2 * c1, c1, flat, flat)
        self.head = nn.Conv3d(c1, 1, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x - 0.5)
        e2 = self.enc2(self.pool(e1))
        b = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        out: torch.Tensor = self.head(d1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def _volumes(seed: int, count: int) -> list[SyntheticSynapses]:
    return [synapses(VOLUME_SHAPE, seed=seed * 1000 + i, voxel_size=VOXEL_SIZE, density=DENSITY)
            for i in range(count)]


def _batch(vols: list[SyntheticSynapses], rng: np.random.Generator, size: int,
           patch: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` patches, 70% of them around a synapse, flipped / transposed, gain-jittered."""
    images, masks = [], []
    for _ in range(size):
        v = vols[int(rng.integers(len(vols)))]
        shape = np.asarray(v.image.shape)
        if len(v.centres) and rng.random() < 0.7:
            c = v.centres[int(rng.integers(len(v.centres)))]
            lo = c - np.asarray(patch) // 2 + rng.integers(-np.asarray(patch) // 3,
                                                           np.asarray(patch) // 3 + 1)
        else:
            lo = rng.integers(0, shape - np.asarray(patch) + 1)
        lo = np.clip(lo, 0, shape - np.asarray(patch))
        region = tuple(slice(a, a + p) for a, p in zip(lo, patch, strict=True))
        img = v.image[region].astype(np.float32) / 255.0
        msk = v.mask[region].astype(np.float32)
        for axis in (0, 1, 2):
            if rng.random() < 0.5:
                img, msk = np.flip(img, axis), np.flip(msk, axis)
        if patch[1] == patch[2] and rng.random() < 0.5:
            img, msk = img.transpose(0, 2, 1), msk.transpose(0, 2, 1)
        img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)
        img, msk = _blacken(np.ascontiguousarray(img), np.ascontiguousarray(msk), rng)
        images.append(img)
        masks.append(msk)
    return (torch.from_numpy(np.stack(images)[:, None]),
            torch.from_numpy(np.stack(masks)[:, None]))


#: how often a training patch gets black space (after the gain jitter: black stays 0.0):
#: a margin from one face, every voxel, or a missing section
BLACK_MARGIN, BLACK_ALL, BLACK_SECTION = 0.2, 0.04, 0.1


def _blacken(img: np.ndarray, msk: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """Black (0, no synapse) where EM data is black: an unimaged margin reaching in from one
    face of the patch, the whole patch (space outside the tissue, absent chunks read as 0),
    or a missing section.  Without such patches the model took black for the darkest thing it
    had seen, the postsynaptic density, and answered about 1.0 on black everywhere."""
    r = rng.random()
    if r < BLACK_ALL:
        img[...] = 0.0
        msk[...] = 0.0
    elif r < BLACK_ALL + BLACK_MARGIN:
        axis = int(rng.choice(3, p=[0.2, 0.4, 0.4]))  # (z is 5x coarser: fewer margins)
        depth = int(rng.integers(1, max(2, int(img.shape[axis] * 0.6)) + 1))
        cut = [slice(None)] * 3
        cut[axis] = slice(0, depth) if rng.random() < 0.5 else slice(img.shape[axis] - depth,
                                                                      None)
        img[tuple(cut)] = 0.0
        msk[tuple(cut)] = 0.0
    if rng.random() < BLACK_SECTION:
        z = int(rng.integers(img.shape[0]))
        img[z] = 0.0
        msk[z] = 0.0
    return img, msk


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice (the synapse voxels are about 1% of a patch)."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + dice


def train(*, seed: int = 0, steps: int = 700, patch: tuple[int, int, int] = (12, 64, 64),
          batch: int = 4, volumes: int = 8, lr: float = 5e-3,
          channels: tuple[int, int, int] = (8, 16, 32), threads: int = 2,
          log: Any = None) -> Trained:
    """Train a :class:`UNet3D` from ``seed``: the model (in eval mode), the loss per step, and
    the loss on a fixed probe batch (eval mode) before and after training."""
    if patch[1] % 4 or patch[2] % 4:
        raise ValueError(f"patch {patch}: y and x must be multiples of 4 (two 2x poolings)")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng([seed, 7])
    vols = _volumes(seed, volumes)
    model = UNet3D(channels)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.1)
    probe = _batch(vols, np.random.default_rng([seed, 99]), batch, patch)
    before = _probe_loss(model, probe)
    losses: list[float] = []
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        x, y = _batch(vols, rng, batch, patch)
        loss = _loss(model.logits(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % 25 == 0 or step == steps - 1):
            recent = np.mean(losses[-25:])
            print(f"step {step + 1}/{steps} loss {recent:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", file=log, flush=True)
    model.eval()
    return Trained(model, losses, (before, _probe_loss(model, probe)))


@dataclass
class Trained:
    """What :func:`train` returns."""

    model: UNet3D
    losses: list[float]  # per step
    probe_loss: tuple[float, float]  # on a fixed batch, eval mode: before and after training


def _probe_loss(model: UNet3D, probe: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        return float(_loss(model.logits(probe[0]), probe[1]))


def export_onnx(model: UNet3D, path: Path, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as ONNX (opset 17, dynamic Z, Y, X) with ``metadata`` in its props."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros((1, 1, 8, 64, 64), dtype=torch.float32)
    axes = {0: "batch", 2: "z", 3: "y", 4: "x"}
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter (dynamo=False) needs no onnxscript; torch warns it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (dummy,), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["probability"],
                          dynamic_axes={"image": axes, "probability": axes})
    if metadata:
        import onnx

        proto = onnx.load(str(path))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(proto, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    from .evaluate import (
        DEFAULT_MATCH_NM,
        DEFAULT_MIN_SIZE,
        HELD_OUT_SEEDS,
        black_response,
        evaluate,
    )

    ap = argparse.ArgumentParser(prog="python -m voxgate.models.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--patch", type=int, default=64, help="patch y and x (multiple of 4)")
    ap.add_argument("--patch-z", type=int, default=12, help="patch z (sections)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--volumes", type=int, default=8, help="training volumes of 48x256x256")
    ap.add_argument("--channels", type=int, nargs=3, default=(8, 16, 32))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-3, help="Adam's peak (one-cycle) rate")
    ap.add_argument("--eval-volumes", type=int, default=4,
                    help="held-out volumes measured after training (0: none)")
    args = ap.parse_args(argv)
    patch = (args.patch_z, args.patch, args.patch)
    started = time.perf_counter()
    trained = train(seed=args.seed, steps=args.steps, patch=patch, batch=args.batch,
                          volumes=args.volumes, lr=args.lr, channels=tuple(args.channels),
                          threads=args.threads, log=sys.stdout)
    model, losses = trained.model, trained.losses
    seconds = time.perf_counter() - started
    card: dict[str, Any] = {
        "name": args.out.stem.replace("_", "-"),
        "architecture": "3-D U-Net, 3 levels pooled 1x2x2 (z kept), 2 convolutions a level: "
                        "1x3x3 at level 1, 1x3x3 + 3x3x3 at level 2, 3x3x3 at the bottom; "
                        "BatchNorm + ReLU, ConvTranspose up, sigmoid output",
        "inputs": [{"name": "image", "shape": ["batch", 1, "z", "y", "x"], "dtype": "float32",
                    "scale": "uint8 image / 255"}],
        "outputs": [{"name": "probability", "shape": ["batch", 1, "z", "y", "x"],
                     "dtype": "float32", "range": [0, 1]}],
        "valid_shape": {"multiple_of": [1, 4, 4], "min": [1, 4, 4]},
        # receptive radius (z, y, x voxels): predict's halo; detections below min_size dropped
        "halo": [4, 24, 24],
        "threshold": 0.5,
        "min_size": DEFAULT_MIN_SIZE,
        "voxel_size": list(VOXEL_SIZE),
        "channels": list(args.channels),
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": {"seed": args.seed, "steps": args.steps, "patch": list(patch),
                     "batch": args.batch, "lr": args.lr, "volumes": args.volumes,
                     "volume_shape": list(VOLUME_SHAPE), "density_per_um3": DENSITY,
                     "volume_seeds": f"seed * 1000 + i, i < {args.volumes}",
                     "seconds": round(seconds), "final_loss": float(np.mean(losses[-25:])),
                     "probe_loss_before_after": list(trained.probe_loss),
                     "torch": torch.__version__, "machine": platform.machine(),
                     "command": "python -m voxgate.models.train " + " ".join(
                         sys.argv[1:] if argv is None else argv)},
    }
    path = export_onnx(model, args.out)
    if args.eval_volumes:
        seeds = HELD_OUT_SEEDS[: args.eval_volumes]
        card["accuracy"] = evaluate(path, seeds=seeds)
        print(json.dumps(card["accuracy"], indent=1))
        card["accuracy"]["match_distance_nm"] = DEFAULT_MATCH_NM
        card["black"] = black_response(path)
        print(json.dumps(card["black"], indent=1))
    export_onnx(model, args.out, metadata={"voxgate": card})
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {seconds:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
