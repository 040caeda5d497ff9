"""A hypothesis state machine: random reads and writes on a Remote and on ``mem://``, compared."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import voxgate
from voxgate.geometry import Box
from voxgate.remotes.memory import delete

__all__ = ["remote_state_machine"]

SHAPE = (13, 21, 30)
CHUNKS = (4, 8, 8)
_counter = itertools.count()


@st.composite
def _boxes(draw: st.DrawFn) -> Box:
    start = [draw(st.integers(0, n - 1)) for n in SHAPE]
    stop = [draw(st.integers(a + 1, n)) for a, n in zip(start, SHAPE, strict=True)]
    return Box(start, stop)


def remote_state_machine(
    make_url: Callable[[str], str], dtype: str = "uint16", **create_options: Any
) -> type[RuleBasedStateMachine]:
    """A state machine class comparing the Remote that ``make_url(name)`` names with mem://."""

    class RemoteVsMemory(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            name = f"sm-{next(_counter)}"
            kw: dict[str, Any] = dict(
                shape=SHAPE, chunks=CHUNKS, dtype=dtype, voxel_size=(4, 4, 4)
            )
            self.vol = voxgate.create(make_url(name), **kw, **create_options)
            self.mem_name = name
            self.ref = voxgate.create(f"mem://{name}", **kw)

        @rule(box=_boxes(), value=st.integers(0, 2**16 - 1))
        def write_scalar(self, box: Box, value: int) -> None:
            self.vol.write(value, box)
            self.ref.write(value, box)

        @rule(box=_boxes(), seed=st.integers(0, 2**31))
        def write_array(self, box: Box, seed: int) -> None:
            data = np.random.default_rng(seed).integers(0, 2**16, size=tuple(box.shape))
            data = data.astype(dtype)
            self.vol.write(data, box)
            self.ref.write(data, box)

        @rule(box=_boxes())
        def read_box(self, box: Box) -> None:
            np.testing.assert_array_equal(self.vol.read(box), self.ref.read(box))

        @rule(
            z=st.slices(SHAPE[0]), y=st.slices(SHAPE[1]), x=st.integers(-SHAPE[2], SHAPE[2] - 1)
        )
        def read_numpy_index(self, z: slice, y: slice, x: int) -> None:
            if (z.step or 1) < 0 or (y.step or 1) < 0:
                return
            clip_vol = self.vol.with_bounds("clip")
            expected = self.ref.read()[z, y, x]
            np.testing.assert_array_equal(clip_vol[z, y, x].read(), expected)

        @invariant()
        def same_everywhere(self) -> None:
            if hasattr(self, "vol"):
                np.testing.assert_array_equal(self.vol.read(), self.ref.read())

        def teardown(self) -> None:
            if hasattr(self, "mem_name"):
                delete(self.mem_name)

    return RemoteVsMemory
