"""Reading .npy and .npz files on several threads at once.

numpy reads an .npy header with ``ast.literal_eval``, and CPython 3.11's converter of parse
trees to ``ast`` objects keeps its recursion depth per interpreter, not per call: when one
thread's conversion lets another run in its middle (a garbage collection running a finalizer),
either can fail with ``SystemError: AST constructor recursion depth mismatch``.  Seen in a
proofreading undo restoring its saved blocks on several threads (the block failed, the undo was
partial).  Every .npy header voxgate reads is parsed under :data:`NPY_LOCK` (the data of an
``np.load`` is read under it too: small blocks, or one request body).
"""

from __future__ import annotations

import threading

__all__ = ["NPY_LOCK"]

#: held while numpy parses an .npy header (``np.load``, an npz member's access,
#: ``numpy.lib.format.read_array_header_*``)
NPY_LOCK = threading.Lock()
