"""Voxel coordinates, scales and block-grid reads and writes shared by the DVID test
server's imageblk and label handlers."""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from .model import DVIDError, _Ctx


# -- voxels (imageblk, labelmap, labelarray) ----------------------------------------------------
def _xyz(text: str, what: str) -> tuple[int, int, int]:
    """dvid/point.go StringToPoint3d / NdString.Point3d: three parts, each
    strconv.ParseInt(strings.TrimSpace(part), 10, 32): ASCII digits with an optional sign,
    within int32 (Python's ``int`` alone takes "1_0" or other scripts' digits)."""
    items = text.split("_")
    vals = []
    for p in items:
        t = p.strip()
        if not re.fullmatch(r"[+-]?[0-9]+", t) or not -2**31 <= int(t) < 2**31:
            raise DVIDError(f"bad {what} {text!r}: expected x_y_z int32 integers")
        vals.append(int(t))
    if len(vals) != 3:
        raise DVIDError(f"bad {what} {text!r}: expected 3 values x_y_z, got {len(vals)}")
    return vals[0], vals[1], vals[2]


def _pt(p: Iterable[int]) -> str:
    return "(" + ",".join(str(v) for v in p) + ")"


def _scale(ctx: _Ctx) -> int:
    text = ctx.q.get("scale", "0")
    if not (text.isascii() and text.isdigit()):  # ("²".isdigit(): int() would raise)
        raise DVIDError(f"bad scale specified: {text!r} is not a non-negative integer")
    s = int(text)
    if ctx.inst.is_label:
        if s > ctx.inst.max_downres:
            raise DVIDError(f"bad scale specified: scale {s} exceeds MaxDownresLevel "
                            f"{ctx.inst.max_downres}")
    elif s != 0:
        raise DVIDError(f"{ctx.inst.typename} instances hold one scale; got scale={s}")
    return s


class _Vol:
    """Block-level access to one scale of a voxel instance at one version."""

    def __init__(self, ctx: _Ctx, scale: int) -> None:
        self.ctx = ctx
        self.scale = scale
        self.store = ctx.store(f"blocks-{scale}")
        bx, by, bz = ctx.inst.block_size
        self.bs = (bz, by, bx)  # z, y, x
        self.dtype = ctx.inst.dtype

    @staticmethod
    def key(bz: int, by: int, bx: int) -> str:
        return f"{bx}_{by}_{bz}"

    def block(self, bz: int, by: int, bx: int) -> np.ndarray | None:
        v = self.store.get(self.key(bz, by, bx), self.ctx.ancestry)
        return v if isinstance(v, np.ndarray) else None

    def block_keys(self) -> list[tuple[int, int, int]]:
        out = []
        for k in self.store.keys(self.ctx.ancestry):
            x, y, z = (int(p) for p in k.split("_"))
            out.append((z, y, x))
        return sorted(out)

    def read(self, start: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=self.dtype)
        stop = tuple(s + n for s, n in zip(start, shape, strict=True))
        lo = [s // b for s, b in zip(start, self.bs, strict=True)]
        hi = [-(-e // b) for e, b in zip(stop, self.bs, strict=True)]
        for bz in range(lo[0], hi[0]):
            for by in range(lo[1], hi[1]):
                for bx in range(lo[2], hi[2]):
                    blk = self.block(bz, by, bx)
                    if blk is None:
                        continue
                    b0 = (bz * self.bs[0], by * self.bs[1], bx * self.bs[2])
                    a = [max(s, o) for s, o in zip(start, b0, strict=True)]
                    e = [min(s, o + b) for s, o, b in zip(stop, b0, self.bs, strict=True)]
                    out[a[0] - start[0]:e[0] - start[0], a[1] - start[1]:e[1] - start[1],
                        a[2] - start[2]:e[2] - start[2]] = blk[
                        a[0] - b0[0]:e[0] - b0[0], a[1] - b0[1]:e[1] - b0[1],
                        a[2] - b0[2]:e[2] - b0[2]]
        return out

    def aligned(self, start: tuple[int, int, int], shape: tuple[int, int, int]) -> bool:
        return all(s % b == 0 and n % b == 0 for s, n, b in zip(start, shape, self.bs,
                                                                strict=True))

    def write(self, start: tuple[int, int, int], data: np.ndarray) -> None:
        nz, ny, nx = data.shape
        bz0, by0, bx0 = (s // b for s, b in zip(start, self.bs, strict=True))
        z, y, x = self.bs
        for iz in range(nz // z):
            for iy in range(ny // y):
                for ix in range(nx // x):
                    blk = np.array(data[iz * z:(iz + 1) * z, iy * y:(iy + 1) * y,
                                        ix * x:(ix + 1) * x])
                    self.store.put(self.key(bz0 + iz, by0 + iy, bx0 + ix), self.ctx.version,
                                   blk)
        if self.scale == 0:
            inst = self.ctx.inst
            lo = [start[2], start[1], start[0]]
            hi = [start[2] + nx - 1, start[1] + ny - 1, start[0] + nz - 1]
            inst.min_point = lo if inst.min_point is None else [
                min(a, b) for a, b in zip(inst.min_point, lo, strict=True)]
            inst.max_point = hi if inst.max_point is None else [
                max(a, b) for a, b in zip(inst.max_point, hi, strict=True)]
