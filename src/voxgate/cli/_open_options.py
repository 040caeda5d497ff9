"""``--open-option KEY=VALUE`` (``-O``): options for the volumes a command reads.

One option and one rule for every command that opens volumes: each ``-O KEY=VALUE`` is a
keyword of :func:`voxgate.open` for the command's input volume(s) (``missing="error"``, an
OME-Zarr ``multiscale=``, a WEBKNOSSOS ``layer=``, a bossDB ``token=``, ``scale=`` ...), while
``-o`` stays the destination's create options where a command creates one (``cp``).  VALUE is
read as JSON when it parses (``1``, ``true``, ``[4, 4, 40]``, ``"1"`` for the string 1), else
taken as the string it is.  The store's own open refuses keys it does not know, with its own
message (the accepted keys, the closest one to a typo), shown as every refusal of voxgate is:
one ``Error:`` line, exit status 1.  A malformed ``-O`` (no ``=``, a key given twice, ``mode``,
which the command sets) is a usage error, exit status 2, before anything is opened.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

__all__ = ["open_input", "open_options_option", "parse_options"]

F = TypeVar("F", bound=Callable[..., Any])

_HINT = "'--open-option' / '-O'"

_HELP = ("Open option KEY=VALUE for the volume(s) the command reads, as voxgate.open takes "
         "it (repeat for more; VALUE is JSON when it parses, else a string): e.g. "
         "-O missing=error, -O multiscale=1, -O layer=color, -O scale=1.")


def parse_options(texts: Iterable[str], param_hint: str,
                  reserved: dict[str, str] | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` texts as a dict (VALUE as JSON when it parses, else the string).

    A text without ``=`` or with an empty key, a key given twice, and a ``reserved`` key (its
    value says why) are click usage errors naming ``param_hint``."""
    out: dict[str, Any] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"options are KEY=VALUE, got {text!r}",
                                     param_hint=param_hint)
        if key in out:
            raise click.BadParameter(f"{key!r} is given twice ({key}={value}); give it once",
                                     param_hint=param_hint)
        if reserved and key in reserved:
            raise click.BadParameter(f"{key!r}: {reserved[key]}", param_hint=param_hint)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    return parse_options(value, _HINT, {
        "mode": "the command opens its inputs in the mode it needs (read only, or read-write "
                "where it writes into them); leave mode out"})


def open_options_option(help: str = _HELP) -> Callable[[F], F]:
    """The ``--open-option / -O KEY=VALUE`` option (the command gets ``open_options``, a dict
    of parsed values)."""
    return click.option("--open-option", "-O", "open_options", multiple=True,
                        metavar="KEY=VALUE", callback=_callback, help=help)


def open_input(url: str, options: dict[str, Any], *, mode: str = "r") -> Any:
    """``url`` itself when no open option is given (the Service opens it as it always did),
    else the Volume ``voxgate.open(url, mode=mode, **options)``, which every Service takes in
    place of a URL.  Raises what the open raises (VoxgateError: the command's one-line
    ``Error:``)."""
    if not options:
        return url
    from ..api import open as vopen

    return vopen(url, mode=mode, **options)
