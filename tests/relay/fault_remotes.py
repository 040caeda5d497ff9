"""A fault-injecting Remote for relay tests, importable in a relay subprocess as
``tests.relay.fault_remotes``.

``FaultRemote`` (scheme ``faultfake://KIND``) reads a fixed uint8 pattern and fails its writes
the way ``KIND`` says: ``bug`` raises a plain RuntimeError (a bug in a Remote: the relay's
last-resort 500), ``partial`` a PartialWriteError (a VoxgateError answered with a 500), and
``corrupt`` fails reads with a CorruptChunkError, ``unsupported`` refuses writes with a
CapabilityNotSupportedError (what the store cannot do: a TIFF of RGB pages) and ``nodep`` with a
MissingDependencyError (a codec package the relay lacks).  Every message names a made-up
server path, /srv/voxgate-secret/..., which no error body may show.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from voxgate.errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    MissingDependencyError,
    PartialWriteError,
)
from voxgate.geometry import Box
from voxgate.meta import VolumeMeta
from voxgate.remotes.base import Remote, check_options

__all__ = ["FAULT_SHAPE", "SECRET", "FaultRemote"]

FAULT_SHAPE = (16, 64, 64)
SECRET = "/srv/voxgate-secret"


class FaultRemote(Remote):
    scheme = "faultfake"
    open_options = ()

    def __init__(self, location: str, mode: str) -> None:
        self.kind = location
        self.mode = mode
        self.url = f"faultfake://{location}"
        self.meta = VolumeMeta.build(shape=FAULT_SHAPE, dtype="uint8", chunks=(8, 32, 32),
                                     voxel_size=(40, 8, 8))

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> FaultRemote:
        check_options("faultfake://", options, cls.open_options)
        return cls(location, mode)

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        if self.kind == "corrupt":
            chunk = f"{SECRET}/{self.kind}/0.0.0"
            raise CorruptChunkError(f"chunk {chunk} could not be decoded", chunk=chunk)
        return np.full(tuple(box.shape), 7, dtype=np.uint8)

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        if self.kind == "bug":
            raise RuntimeError(f"injected bug while writing {SECRET}/{self.kind}/0.0.0")
        if self.kind == "unsupported":
            raise CapabilityNotSupportedError(f"{SECRET}/{self.kind}.tif has 3 samples per pixel; "
                                              "voxgate writes TIFFs of one sample per pixel")
        if self.kind == "nodep":
            raise MissingDependencyError(f"{SECRET}/{self.kind}.tif needs the imagecodecs "
                                         "package: pip install imagecodecs")
        if self.kind == "partial":
            raise PartialWriteError(f"writing {box!r} to {SECRET}/{self.kind}: 1 of 2 chunks "
                                    "failed", written=[], failed=[box])
