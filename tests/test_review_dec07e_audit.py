"""Review of the session's changes (3f4a1de..): one case per bug found, each failing on the
code before its fix.

- (InflightBudget.acquire cancelled as stop() refused it: tests/relay/test_budget_stop.py;
  an earlier voxgate's downsample record: tests/relay/test_downsample_job.py)
- voxgate.create of a tensorstore zarr v2 spec returned a Volume of 1 nm voxels, whatever
  voxel_size it was created with (zarr v2 keeps no dimension_units);
- the notebook text display: IPython's display raising killed the redraw thread with a
  traceback and made the with-block's end raise it;
- NoArithmetic.__getattr__ describing a view looked up ``nbytes`` and ``shape`` (numpy names
  too) through itself: a view without its state gave RecursionError, even from hasattr().
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest


def test_a_zarr_v2_tensorstore_array_created_keeps_its_voxel_size(tmp_path: Path) -> None:
    import voxgate

    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "z2")}}
    kw: dict[str, Any] = {"shape": (4, 8, 8), "dtype": "uint8", "chunks": (4, 8, 8),
                          "voxel_size": (30, 4, 4)}
    vol = voxgate.create(spec, **kw)
    assert vol.voxel_size.zyx() == (30.0, 4.0, 4.0)
    again = voxgate.create(spec, exist_ok=True, **kw)
    assert again.voxel_size.zyx() == (30.0, 4.0, 4.0)
    # (it travels with the Volume: a worker reopens the same geometry)
    s = vol.remote.spec()
    assert voxgate.open(s["url"], **s["options"]).voxel_size.zyx() == (30.0, 4.0, 4.0)


class _FailingHandle:
    def __init__(self) -> None:
        self.updates = 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.updates += 1
        if self.updates > 1:
            raise RuntimeError("the kernel's display channel is closed")


def test_a_notebook_display_that_raises_stops_drawing_not_the_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from voxgate import progress

    handle = _FailingHandle()
    monkeypatch.setattr(progress, "_in_notebook_without_widgets", lambda console: True)
    monkeypatch.setattr(progress, "_notebook_handle", lambda: handle)
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    with progress.progress_bar(True, 10, "copy") as bar:
        time.sleep(1.2)  # (the redraw thread draws every 0.5 s)
        bar.advance(3)
    assert died == []
    assert progress._DISPLAY is None
    assert handle.updates >= 2


def test_a_view_without_its_state_is_an_attribute_error_not_a_recursion() -> None:
    from voxgate.volume import Volume

    bare = Volume.__new__(Volume)
    assert not hasattr(bare, "shape")
    with pytest.raises(AttributeError, match="lazy view"):
        bare.max  # noqa: B018
