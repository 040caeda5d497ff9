"""A DVID-dialect test server: repos, versioned nodes, imageblk, labelmap/labelarray, keyvalue.

For tests, and for trying the ``dvid://`` Remote without a DVID install::

    python -m voxgate.testing.dvid --host 127.0.0.1 --port 8000             # in memory
    python -m voxgate.testing.dvid --host 127.0.0.1 --port 8000 --data DIR  # persisted

It answers DVID's REST endpoints (``/api/...``) with DVID's byte layouts, status codes and
plain-text errors (``"<message> (<path>)."`` with 400; ``"Could not find the URL: <path>"``
with 404), and DVID's versioning rules: a repo is a DAG of nodes; a committed (locked) node
refuses mutations; only committed nodes get children; a child reads its ancestors' data
wherever it has not written (deletions are tombstones); branch names are unique in a DAG;
unversioned instances read and write the root.  docs/remotes/dvid.md lists what is and is
not implemented.  :func:`start_server` runs it as a subprocess on 127.0.0.1 for tests.

Nothing received is ever unpickled: values are stored as raw bytes, or as arrays in a small
documented header + lz4 frame of our own.

Split by concern: :mod:`.model` (type tables, errors, replies, repos, nodes, instances),
:mod:`.store` (versioned storage), :mod:`.state` (the version DAG and the router),
:mod:`.keyvalue`, :mod:`.grid`, :mod:`.voxels` and :mod:`.labels` (the data types; the label
bookkeeping in :mod:`.labelindex`), and :mod:`.server` (the ASGI app, the command line and the
subprocess helpers).
"""

from __future__ import annotations

from .server import DVIDServerProcess, main, make_app, start_server
from .state import DVIDState

__all__ = ["DVIDServerProcess", "DVIDState", "make_app", "main", "start_server"]
