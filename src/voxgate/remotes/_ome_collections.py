"""OME-Zarr groups that hold images instead of being one, for ``zarr://``.

- The transitional ``bioformats2raw.layout`` (NGFF 0.4 and 0.5, what bioformats2raw and the
  NGFF converters of microscopy files write): a root group with ``"bioformats2raw.layout": 3``
  and one multiscale image per series in groups ``0``, ``1``, ...; an ``OME`` group beside them
  may list the series' paths in its ``series`` attribute (in the order of the Image elements of
  ``OME/METADATA.ome.xml``), and then those paths are the images.  Without it the images are
  the consecutive integer paths from ``0`` up to the first one missing.  A root that also holds
  ``plate`` metadata is an HCS plate, whose images are found through its wells.
- A ``labels`` group: the names of the label images of the image around it.
- An HCS ``plate`` group: wells, each with fields (images).

:func:`collection` names the images of such a group; zarr.py opens the only series of a
bioformats2raw root and refuses the others with the URLs of their images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError, RemoteNotFoundError
from ..storage import join, kvstore_exists, read_json

__all__ = ["BIOFORMATS2RAW", "Collection", "collection"]

BIOFORMATS2RAW = "bioformats2raw.layout"
#: integer series paths probed when no OME/series attribute lists them
_MAX_PROBED_SERIES = 10_000
#: image URLs named in a refusal before "... and N more"
_LISTED = 20


@dataclass(frozen=True)
class Collection:
    """The images of a group that is not one: ``kind`` is "bioformats2raw", "labels" or
    "plate"; ``paths`` are the images' paths inside the group (all of them for a
    bioformats2raw root and a labels group; for a plate, the fields of its first wells)."""

    kind: str
    paths: tuple[str, ...]
    complete: bool = True

    def refusal(self, location: str) -> InvalidRequestError:
        urls = [f"zarr://{join(location, p)}" for p in self.paths[:_LISTED]]
        more = len(self.paths) - len(urls)
        listed = ", ".join(urls) + (f" ... and {more} more" if more > 0 else "")
        if self.kind == "bioformats2raw":
            what = (f"is a bioformats2raw collection of {len(self.paths)} images (series "
                    f"{list(self.paths[:_LISTED])}{' ...' if more > 0 else ''})")
        elif self.kind == "labels":
            what = f"is an OME-Zarr labels group (label images {list(self.paths[:_LISTED])})"
        else:
            what = "is an OME-Zarr HCS plate (an image per field of each well)"
            if not self.complete:
                listed += " ..."
        return InvalidRequestError(f"{location!r} {what}; open one image: {listed}")


def collection(location: str, ome: dict[str, Any], fmt: int) -> Collection | None:
    """The images of the group at ``location`` whose OME attributes are ``ome`` (the ``ome``
    namespace on Zarr v3), or None when the group is none of the collections above."""
    if "plate" in ome:
        return _plate(location, ome["plate"], fmt)
    if BIOFORMATS2RAW in ome:
        layout = ome[BIOFORMATS2RAW]
        if layout != 3:
            raise InvalidRequestError(
                f"{location!r} has bioformats2raw.layout {layout!r}; voxgate reads layout 3 "
                "(the one NGFF 0.4 and 0.5 describe)"
            )
        return Collection("bioformats2raw", _series(location, fmt))
    labels = ome.get("labels")
    if isinstance(labels, list) and labels:
        return Collection("labels", tuple(str(p) for p in labels))
    return None


def _group_attrs(location: str, fmt: int) -> dict[str, Any] | None:
    """The OME attributes of the group at ``location``, or None when there is no group."""
    key = "zarr.json" if fmt == 3 else ".zattrs"
    if fmt == 2 and not kvstore_exists(location, ".zgroup"):
        return None
    if not kvstore_exists(location, key):
        return {} if fmt == 2 else None
    doc = read_json(location, key)
    if not isinstance(doc, dict):
        return {}
    if fmt == 3:
        if doc.get("node_type") != "group":
            return None
        attrs = doc.get("attributes") or {}
        return attrs.get("ome", attrs) if isinstance(attrs, dict) else {}
    return doc


def _series(location: str, fmt: int) -> tuple[str, ...]:
    ome_group = _group_attrs(join(location, "OME"), fmt)
    listed = (ome_group or {}).get("series")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise InvalidRequestError(
                f"{join(location, 'OME')!r}: 'series' must be a list of image paths, got "
                f"{listed!r}"
            )
        if listed:
            return tuple(listed)
    found: list[str] = []
    while len(found) < _MAX_PROBED_SERIES and _group_attrs(join(location, str(len(found))),
                                                           fmt) is not None:
        found.append(str(len(found)))
    if not found:
        raise RemoteNotFoundError(
            f"{location!r} is a bioformats2raw collection with no image: no OME/series "
            "attribute lists any, and there is no group '0'"
        )
    return tuple(found)


def _plate(location: str, plate: Any, fmt: int) -> Collection:
    # (foreign JSON: a malformed well list, well or image list names no image, never a crash)
    wells = plate.get("wells", []) if isinstance(plate, dict) else []
    wells = wells if isinstance(wells, list) else []
    paths: list[str] = []
    visited = 0
    for well in wells:
        if len(paths) >= _LISTED:
            break
        visited += 1
        well_path = str(well.get("path", "")) if isinstance(well, dict) else ""
        attrs = _group_attrs(join(location, well_path), fmt) if well_path else None
        well_attrs = (attrs or {}).get("well")
        images = well_attrs.get("images") if isinstance(well_attrs, dict) else None
        paths += [f"{well_path}/{im['path']}" for im in (images if isinstance(images, list)
                                                          else ()) if isinstance(im, dict)
                  and "path" in im]
    return Collection("plate", tuple(paths), complete=visited == len(wells))
