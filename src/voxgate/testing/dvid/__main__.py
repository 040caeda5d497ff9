"""``python -m voxgate.testing.dvid``: run the DVID-dialect test server."""

from .server import main

main()
