"""A hypothesis state machine: random reads and writes on a Remote, compared with a numpy array.

The reference is a plain numpy array of the volume's shape (the fill value 0 where nothing was
written) changed and read with numpy's own indexing, so no voxgate code (no Volume, no
``mem://``) stands on both sides of the comparison.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import voxgate
from voxgate.errors import InvalidRequestError
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


def _region(box: Box) -> tuple[slice, ...]:
    """The numpy index of ``box`` in the reference array (the volume's offset is 0)."""
    return tuple(slice(int(a), int(b)) for a, b in zip(box.start, box.stop, strict=True))


def remote_state_machine(
    make_url: Callable[[str], str], dtype: str = "uint16", **create_options: Any
) -> type[RuleBasedStateMachine]:
    """A state machine class comparing the Remote that ``make_url(name)`` names with a numpy
    array given the same writes."""

    class RemoteVsNumpy(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            name = f"sm-{next(_counter)}"
            self.vol = voxgate.create(make_url(name), shape=SHAPE, chunks=CHUNKS, dtype=dtype,
                                      voxel_size=(4, 4, 4), **create_options)
            self.ref = np.zeros(SHAPE, dtype=dtype)  # absent chunks read as the fill value 0

        @rule(box=_boxes(), value=st.integers(0, 2**16 - 1))
        def write_scalar(self, box: Box, value: int) -> None:
            self.vol.write(value, box)
            self.ref[_region(box)] = value

        @rule(box=_boxes(), seed=st.integers(0, 2**31))
        def write_array(self, box: Box, seed: int) -> None:
            data = np.random.default_rng(seed).integers(0, 2**16, size=tuple(box.shape))
            data = data.astype(dtype)
            self.vol.write(data, box)
            self.ref[_region(box)] = data

        @rule(box=_boxes())
        def read_box(self, box: Box) -> None:
            np.testing.assert_array_equal(self.vol.read(box), self.ref[_region(box)])

        @rule(
            z=st.slices(SHAPE[0]), y=st.slices(SHAPE[1]), x=st.integers(-SHAPE[2], SHAPE[2] - 1)
        )
        def read_numpy_index(self, z: slice, y: slice, x: int) -> None:
            clip_vol = self.vol.with_bounds("clip")
            if (z.step or 1) < 0 or (y.step or 1) < 0:
                # refused, never read in another order than asked
                with pytest.raises(InvalidRequestError, match="step must be a positive"):
                    clip_vol[z, y, x]
                return
            # bounds="clip" follows numpy: slices clip to the axis, negative indices count
            # from the end
            np.testing.assert_array_equal(clip_vol[z, y, x].read(), self.ref[z, y, x])

        @invariant()
        def same_everywhere(self) -> None:
            if hasattr(self, "vol"):
                np.testing.assert_array_equal(self.vol.read(), self.ref)

        def teardown(self) -> None:
            if hasattr(self, "vol") and self.vol.url.startswith("mem://"):
                delete(self.vol.url.removeprefix("mem://"))

    return RemoteVsNumpy
