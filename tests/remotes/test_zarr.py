from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import settings

from voxgate.testing import RemoteTests, remote_state_machine

from .scratch import scratch_dir


class TestZarrV3(RemoteTests):
    dtypes = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
              "float32", "float64")

    def url(self, tmp_path: Path, name: str) -> str:
        return f"zarr://{tmp_path}/{name}.zarr"

    def corrupt_chunk(self, vol, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
        path = tmp_path / "vol.zarr" / "0" / "c" / "0" / "0" / "0"
        path.write_bytes(b"\x00not blosc at all")
        return str(path)


class TestZarrV2(TestZarrV3):
    create_options: ClassVar[dict[str, Any]] = {"zarr_format": 2}

    def corrupt_chunk(self, vol, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
        path = tmp_path / "vol.zarr" / "0" / "0" / "0" / "0"
        path.write_bytes(b"\x00not blosc at all")
        return str(path)


class TestZarrV3Sharded(TestZarrV3):
    create_options: ClassVar[dict[str, Any]] = {"shards": (16, 32, 32)}

    def corrupt_chunk(self, vol, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
        path = tmp_path / "vol.zarr" / "0" / "c" / "0" / "0" / "0"
        data = bytearray(path.read_bytes())
        data[40:60] = os.urandom(20)
        path.write_bytes(bytes(data))
        return str(path)


TestZarrStateMachine = remote_state_machine(
    lambda name: f"zarr://{scratch_dir()}/{name}.zarr").TestCase
TestZarrStateMachine.settings = settings(max_examples=10, stateful_step_count=10, deadline=None)
