"""The Remote protocol: the small synchronous interface every storage system implements.

A Remote has ``meta`` (a VolumeMeta), ``read(box, scale)`` and, when writable,
``write(box, array, scale)``.  Boxes are in dataset voxel coordinates of that scale, (z, y, x),
and always lie inside the scale's bounds: the Volume deals with clipping and filling.  Arrays
are C-order ZYX, with a leading channel axis when ``meta.num_channels > 1``.

Everything optional is a declared capability, looked up with :func:`has_capability`.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ..errors import CapabilityNotSupportedError, InvalidRequestError, ReadOnlyError
from ..geometry import Box, Vec
from ..meta import Scale, VolumeMeta

__all__ = ["Capability", "Remote", "check_options", "has_capability", "require_capability"]


class Capability(enum.StrEnum):
    """Optional things a Remote can do."""

    WRITE = "write"
    BATCH_READ = "batch_read"
    SERVER_DOWNSAMPLE = "server_downsample"
    SERVER_MESH = "server_mesh"
    SERVER_SKELETON = "server_skeleton"
    SERVER_IDS = "server_ids"
    SERVER_BOUNDING_BOXES = "server_bounding_boxes"
    VERSIONING = "versioning"
    ADD_SCALES = "add_scales"


class Remote(abc.ABC):
    """One opened Resource of one storage system."""

    #: URL scheme this class serves, e.g. "zarr".
    scheme: ClassVar[str]
    #: keyword options ``open``/``create`` accept besides mode; anything else is rejected.
    open_options: ClassVar[tuple[str, ...]] = ()
    create_options: ClassVar[tuple[str, ...]] = ()

    url: str
    meta: VolumeMeta
    mode: str

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> Remote:
        """Open an existing resource.  Raises RemoteNotFoundError when there is none."""

    @classmethod
    def create(
        cls, location: str, meta: VolumeMeta, *, exist_ok: bool = False, **options: Any
    ) -> Remote:
        """Make a new resource with ``meta`` and return it opened read-write."""
        raise CapabilityNotSupportedError(f"{cls.scheme}:// volumes cannot be created by voxgate")

    @classmethod
    def exists(cls, location: str) -> bool:
        """Whether a resource exists at ``location`` (used by copy to decide to create)."""
        from ..errors import RemoteNotFoundError

        try:
            cls.open(location, mode="r")
        except RemoteNotFoundError:
            return False
        return True

    # -- data -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        """Read ``box`` (inside the scale's bounds) as a new C-order array."""

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        """Store ``array`` (already of the volume's dtype and the box's shape) at ``box``."""
        raise CapabilityNotSupportedError(f"{self.scheme}:// does not support writes")

    # -- description ----------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset()

    def add_scales(self, scales: Sequence[Scale]) -> None:
        """Append coarser scales (their indices continue the existing ones) to the store.

        The new scales hold fill until written (``voxgate.downsample`` computes them).  Updates
        ``self.meta``.  Stores that can do this declare ``Capability.ADD_SCALES``.
        """
        raise CapabilityNotSupportedError(f"{self.url} cannot add scales to its store")

    def write_grid(self, scale: int = 0) -> Vec:
        """The block shape writes should align to: a chunk, or a whole shard where there is one."""
        return self.meta.scale(scale).chunks

    def spec(self) -> dict[str, Any]:
        """A JSON-able description that reopens this Remote: ``voxgate.open(**spec)``."""
        return {"url": self.url, "mode": self.mode}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or connections; the default holds none."""

    # -- helpers for subclasses -----------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.mode != "r+":
            raise ReadOnlyError(f"{self.url} is opened read-only; open it with mode='r+' to write")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} mode={self.mode!r}>"


def has_capability(remote: Remote, capability: Capability | str) -> bool:
    """Whether ``remote`` declares ``capability``; the one way to ask (never ``hasattr``)."""
    return Capability(capability) in remote.capabilities


def require_capability(remote: Remote, capability: Capability | str) -> None:
    if not has_capability(remote, capability):
        raise CapabilityNotSupportedError(
            f"{remote.url} does not offer {Capability(capability).value}"
        )


def check_options(cls_name: str, given: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        hint = f"; it accepts {', '.join(allowed)}" if allowed else "; it accepts none"
        raise InvalidRequestError(f"{cls_name} got unknown option(s) {', '.join(unknown)}{hint}")
