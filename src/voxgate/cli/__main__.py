"""``python -m voxgate.cli``: the ``voxgate`` command."""

from . import main

if __name__ == "__main__":  # pragma: no cover
    main()
