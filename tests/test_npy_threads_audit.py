"""numpy parses .npy headers with ``ast.literal_eval``, and on CPython 3.11 two threads
converting parse trees at once can fail with ``SystemError: AST constructor recursion depth
mismatch`` (the converter's recursion depth is kept per interpreter).  It failed a proofreading
undo in CI (tests/services/test_proofread_audit.py, "undo of edit 4 failed at Box[...] (scale 0:
AST constructor recursion depth mismatch (before=36, after=33))"): the undo restores its saved
blocks on several threads.  The race needs a garbage collection inside a conversion, too rare
to force here, so these check the cure: every .npy header voxgate parses (proofreading's saved
blocks, map_blocks' saved results, the relay's npygz bodies) is parsed under one lock,
storage.npyfiles.NPY_LOCK.
"""

from __future__ import annotations

import ast
import importlib
import io
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voxgate.geometry import Box
from voxgate.relay.boss.codecs import decode_body
from voxgate.services.proofread_history import History
from voxgate.storage.npyfiles import NPY_LOCK

#: the module (voxgate.services.map_blocks is also the name of the function it defines)
map_blocks_module = importlib.import_module("voxgate.services.map_blocks")


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether NPY_LOCK was held at each ``ast.literal_eval`` call (numpy's header parser)."""
    held: list[bool] = []
    literal_eval = ast.literal_eval

    def recording(node: Any) -> Any:
        held.append(NPY_LOCK.locked())
        return literal_eval(node)

    monkeypatch.setattr(ast, "literal_eval", recording)
    return held


def test_saved_proofreading_blocks_are_read_under_the_lock(tmp_path: Path,
                                                           parses: list[bool]) -> None:
    hist = History(tmp_path)
    data = np.arange(4 * 6 * 8, dtype=np.uint64).reshape(4, 6, 8)
    hist.save_block(1, Box((0, 0, 0), (4, 6, 8)), data, changed=data % 2 == 0)
    [(box, _, f)] = hist.saved_blocks(1)
    got, changed = History.load_saved(f)
    assert box == Box((0, 0, 0), (4, 6, 8))
    np.testing.assert_array_equal(got, data)
    assert changed is not None and changed.sum() == data.size // 2
    assert parses and all(parses), parses


def test_saved_map_blocks_results_are_read_under_the_lock(tmp_path: Path,
                                                          parses: list[bool]) -> None:
    journal = map_blocks_module._Journal(tmp_path / "run.json", "mem://x", {}, "fn")
    block = Box((0, 0, 0), (2, 3, 4))
    result = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    path = journal._saved(map_blocks_module._key(block))
    path.parent.mkdir(parents=True)
    map_blocks_module._save(path, result)
    np.testing.assert_array_equal(journal[block], result)
    assert parses and all(parses), parses


def test_npygz_bodies_are_read_under_the_lock(parses: list[bool]) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    buf = io.BytesIO()
    np.save(buf, data, allow_pickle=False)
    got = decode_body(zlib.compress(buf.getvalue()), "application/npygz", np.dtype(np.uint16),
                      (2, 3, 4))
    np.testing.assert_array_equal(got, data)
    assert parses and all(parses), parses
