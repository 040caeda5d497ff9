"""Shipped test helpers: the Remote conformance suite and a hypothesis state machine.

A Remote's test module subclasses :class:`RemoteTests` and says where to create volumes::

    class TestMyRemote(RemoteTests):
        def url(self, tmp_path, name):
            return f"myformat://{tmp_path}/{name}"

and gets every conformance test (round trips, bounds, absent chunks, dtypes, scales, reopening
from ``spec()``, read-only enforcement, errors).  ``pytest`` and ``hypothesis`` are needed only
when these are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .conformance import RemoteTests
    from .state_machine import remote_state_machine

__all__ = ["RemoteTests", "remote_state_machine"]


def __getattr__(name: str) -> Any:
    # imported on use, so voxgate.testing.dvid (a server) runs without pytest installed
    if name == "RemoteTests":
        from .conformance import RemoteTests

        return RemoteTests
    if name == "remote_state_machine":
        from .state_machine import remote_state_machine

        return remote_state_machine
    raise AttributeError(f"module 'voxgate.testing' has no attribute {name!r}")
