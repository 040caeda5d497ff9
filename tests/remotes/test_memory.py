from __future__ import annotations

from pathlib import Path

from hypothesis import settings

from voxgate.testing import RemoteTests, remote_state_machine


class TestMemoryRemote(RemoteTests):
    has_chunk_files = False
    reopenable = False
    dtypes = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
              "float32", "float64")

    def url(self, tmp_path: Path, name: str) -> str:
        return f"mem://{tmp_path.name}/{name}"


TestMemoryStateMachine = remote_state_machine(lambda name: f"mem://other-{name}").TestCase
TestMemoryStateMachine.settings = settings(max_examples=20, stateful_step_count=15, deadline=None)
