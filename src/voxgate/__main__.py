"""``python -m voxgate``: the ``voxgate`` command."""

from .cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
