from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from voxgate.errors import InvalidRequestError, ReadOnlyError, RemoteNotFoundError
from voxgate.geometry import Box, Vec, VoxelSize
from voxgate.meta import Scale, VolumeMeta
from voxgate.remotes.memory import MemoryRemote
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


def test_wrap_holds_the_arrays_without_a_name() -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    shape = Vec(*arr.shape)
    meta = VolumeMeta(arr.dtype, (Scale(0, shape, shape, VoxelSize.of((1, 1, 1))),), "image")
    ro = MemoryRemote.wrap("wrapped-test", meta, [arr])
    np.testing.assert_array_equal(ro.read(Box((0, 1, 1), (2, 3, 4))), arr[:, 1:, 1:])
    with pytest.raises(ReadOnlyError):
        ro.write(Box((0, 0, 0), (1, 1, 1)), np.ones((1, 1, 1), np.uint16))
    rw = MemoryRemote.wrap("wrapped-test", meta, [arr], mode="r+")
    rw.write(Box((0, 0, 0), (1, 1, 1)), np.full((1, 1, 1), 99, np.uint16))
    assert arr[0, 0, 0] == 99  # no copy was made
    assert not MemoryRemote.exists("wrapped-test")
    with pytest.raises(RemoteNotFoundError):
        MemoryRemote.open("wrapped-test")
    with pytest.raises(InvalidRequestError, match="1 scales"):
        MemoryRemote.wrap("wrapped-test", meta, [arr, arr])
    with pytest.raises(InvalidRequestError, match="mode"):
        MemoryRemote.wrap("wrapped-test", meta, [arr], mode="w")
