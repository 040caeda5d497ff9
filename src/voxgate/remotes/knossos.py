"""``knossos://``: KNOSSOS datasets (raw uint8 cubes; jpg/png cubes read).

A dataset is described by one configuration file; the location is that file or the directory
holding it.  In a directory voxgate looks, in this order, for ``*.k.toml`` (KNOSSOS 5 and
knossos_utils), ``*.pyk.conf`` / ``*.pyknossos.conf`` / ``ariadne.conf`` (PyKNOSSOS),
``knossos.conf`` / ``*.k.conf`` and ``mag1/knossos.conf`` (the classic format).

- **classic** ``knossos.conf``: ``experiment name "NAME";``, ``boundary x|y|z N;``,
  ``scale x|y|z F;`` (nm), optional ``magnification M;``, ``png;`` and
  ``compression_ratio R;`` (1000: .jpg cubes; other non-zero ratios are JPEG 2000, refused
  when a cube exists only in that form; ``jpg;`` is no key, as for KNOSSOS).  Words are split
  at single spaces as KNOSSOS splits them: a line with a tab or two spaces before the axis or
  after the key is skipped with a warning; the ``;`` may be missing; comment lines and what
  follows a value after a space are skipped; a value KNOSSOS reads as 0 (``1024#c``, two
  spaces before it, ``1O24``) is refused with its line (:func:`parse_knossos_conf`); an
  unquoted name (knossos_utils) is read up to the ``;``.
  Cubes are 128^3.  Magnifications are powers of two (``mag1``, ``mag2``,
  ``mag4`` ... folders, as many as exist); mag M has M times the voxel size on every axis.  A
  ``magM/knossos.conf`` (knossos_cuber writes one per mag: that mag's boundary and voxel
  size, experiment ``NAME_magM``) opens the dataset: its root conf when there is one, else
  its own values scaled to mag 1, as KNOSSOS does.
- ``.k.toml``: the first ``[[Layer]]``: ``Name``, ``Extent_px`` (x, y, z), ``VoxelSize_nm``
  (one x, y, z triple per magnification), ``CubeShape_px``, ``FileExtension``, a ``file://``
  ``URL`` for where the cubes are.  Mags are ordinal: folder ``magN`` holds the N-th voxel
  size, except with ``ServerFormat = "knossos"``: KNOSSOS then reads scale k from
  ``mag(2**k)``, while knossos_utils writes such a layer ordinal; the folders present decide
  (a ``mag3`` is ordinal), else KNOSSOS' powers of two.  Layers voxgate cannot read as local
  uint8 cubes are refused (``ServerFormat = "precomputed"``, knossos_utils' default, and any
  ServerFormat but none, "" and "knossos", see ``_check_server_format``; an http(s) ``URL``; a
  ``DataType`` other than uint8; ``NumChannels`` 3).
- ``.pyk.conf``: the first ``[Dataset]`` section's ``_BaseName``, ``_Extent``, ``_DataScale``
  (x,y,z triples, one per mag), ``_CubeSize``, ``_BaseExt`` / ``_FileType``; ordinal mags
  unless ``_ServerFormat = knossos`` (other values but "" are refused, as in a .k.toml).

Cube files: ``magM/xXXXX/yYYYY/zZZZZ/NAME_magM_xXXXX_yYYYY_zZZZZ.EXT`` (four-digit cube
indices), ``.raw`` holding the cube's voxels x fastest (C order over z, y, x); ``.png`` and
``.jpg`` cubes are 2-D images of the same voxels, read only (a .raw cube is read first where
both exist; a dataset whose conf lists no .raw cubes is not writable; writing a cube removes
its .png/.jpg/JPEG 2000 copies, which hold the old voxels and which KNOSSOS would still show).
An absent cube is fill (0).
Scale k is the k-th magnification; the shape of mag M is the mag-1 extent divided by its
factor, rounded up.

``voxgate.create("knossos://DIR", ...)`` writes ``DIR/NAME.k.toml`` (NAME: the directory's
name) with one layer, uint8 raw cubes of the chunk shape given, and two keys of its own that
KNOSSOS ignores (``VoxgateOffset_px``, ``VoxgateKind``), and the ``Description`` KNOSSOS
requires.  ``add_scales`` edits the .k.toml in place: only the lines of the keys whose values
change (``VoxelSize_nm``; ``Description`` added if missing), so comments, layout, other keys
and layers stay (a file too unusual to edit that way is rewritten whole, without comments).
A name holding ``_mag`` is refused: KNOSSOS cuts cube names there.  A classic conf with an
``ftp_mode`` line (cubes on a server) is refused, as are other remote cubes.
``conf="knossos.conf"`` writes the classic file instead (128^3 cubes, isotropic power-of-two
scales only), and a ``magM/knossos.conf`` per scale, by which KNOSSOS finds the mags.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import re
import tomllib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    MissingDependencyError,
    RemoteNotFoundError,
    VoxgateWarning,
)
from ..geometry import Box, Vec, VoxelSize, chunk_boxes
from ..meta import Scale, VolumeMeta, check_new_scales
from ..storage import atomic_write, file_lock, is_local, local_path
from .base import Capability, Remote, check_options, open_existing

__all__ = ["KnossosRemote", "parse_knossos_conf"]

CUBE_EDGE = 128
_EXTS = (".raw", ".png", ".jpg", ".jpeg")
_JPEG2000 = (".j2k", ".6.jp2")  # KNOSSOS cube types voxgate knows but does not decode


@dataclass
class _Dataset:
    """What a configuration file says (x, y, z order, as KNOSSOS writes it)."""

    conf: str
    name: str
    extent_xyz: list[int]
    voxel_sizes_xyz: list[list[float]]  # per scale
    mags: list[int]  # folder number per scale
    cube_xyz: list[int]
    exts: list[str]
    offset_zyx: list[int] = field(default_factory=lambda: [0, 0, 0])
    kind: str = "image"
    conf_mag: int = 1  # a classic conf's ``magnification`` (a magM/knossos.conf says M)
    description: str = ""
    root: str | None = None  # where the mag folders are, when the conf names it (.k.toml URL)
    pow2_mags: bool = False  # scale k in folder mag(2**k), not mag(k+1)
    server_format: str = ""  # a .k.toml layer's ServerFormat
    doc: dict[str, Any] = field(default_factory=dict)  # a .k.toml as read (rewritten whole)


#: the keys of a classic knossos.conf that voxgate reads (KNOSSOS' fromLegacyConf reads these
#: and ftp_mode), by the first word of their line
_CLASSIC_FIRST = ("experiment", "boundary", "scale", "magnification", "cube_edge_length",
                  "compression_ratio", "png")
#: Qt's QString::toInt / toFloat, which KNOSSOS reads the values with (whitespace around the
#: digits is allowed, anything else makes the value 0)
_QT_INT = re.compile(r"\s*[+-]?[0-9]+\s*")
_QT_FLOAT = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
#: what each whole-number key of a classic conf takes, as a message about a bad value shows it
_WHOLE_EXAMPLES = {
    "magnification": "'magnification M;' with M the conf's mag, a power of two (1, 2, 4, 8 ...; "
                     "'magnification 2;' in mag2/knossos.conf)",
    "cube_edge_length": "'cube_edge_length N;' with N the cubes' edge in voxels, e.g. "
                        "'cube_edge_length 128;'",
    "compression_ratio": "'compression_ratio R;' with R 0 (.raw cubes), 1000 (.jpg), 6 (.6.jp2) "
                         "or another whole number (.j2k)",
}


def parse_knossos_conf(text: str, conf: str) -> dict[str, Any]:
    """The ``key value;`` lines of a classic knossos.conf as a dict (``"boundary x"``: 1024).

    As KNOSSOS (dataset.cpp ``fromLegacyConf``) reads them: one entry per line, split at every
    single space and ``;`` (``line.split(QRegularExpression("[ ;]"))``); the first piece is the
    key, the next the axis of ``boundary``/``scale``, the next the value; what follows is
    ignored (a ``# comment`` after a space or ``;``, a second number: ``boundary x 1024 1025;``
    is 1024).  A line whose first piece is no key KNOSSOS reads (a ``#``, ``;`` or ``//``
    comment, a blank line, an unknown key such as ``jpg``) is skipped, and so is one KNOSSOS
    cannot see a key in: an indented line, a tab after the key (``magnification<TAB>2;``: the
    first piece is ``magnification<TAB>2``), two spaces or a tab between ``boundary``/``scale``
    and the axis; such a line warns (VoxgateWarning) when it holds a key voxgate reads.  The
    experiment name is the text between the first two ``"`` (KNOSSOS); written without quotes,
    as knossos_utils' ``initialize_without_conf`` writes ``experiment name N;``, it is the text
    up to the ``;``.  A line of a key voxgate reads whose value KNOSSOS would read as 0 (a
    value glued to a comment: ``boundary x 1024#c``; two spaces before the value;
    ``boundary x 1O24;``) or not read at all (``boundary x`` with the number on the next line:
    no reader joins lines) raises :class:`InvalidRequestError` naming the file and the line,
    rather than being skipped, and so does a boundary that is no whole number
    (``boundary x 1024.5;``: KNOSSOS' toFloat cut to an int reads 1024, but 1024 or 1025 was
    meant?).  A line KNOSSOS reads no value from although it looks like one voxgate reads
    warns and is skipped: an axis other than ``x``/``y``/``z`` (``scale q 5;``, ``boundary X
    3;``), a first word such as ``png=no`` or ``pngs`` (only ``png`` is the key: KNOSSOS
    loads the .raw cubes then, as voxgate does)."""
    out: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";", "//")):
            continue
        words = re.split(r"[ ;]", line)  # KNOSSOS' tokenList
        first = words[0]

        def skip(why: str, number: int = number, line: str = stripped) -> None:
            warnings.warn(VoxgateWarning(
                f"{conf}, line {number}: {line!r} {why}, and KNOSSOS reads no key from it (it "
                "splits a line at each single space and ';'); voxgate skips it too: write "
                "'key value;' with single spaces for it to count"), stacklevel=3)

        def ignored(why: str, number: int = number, line: str = stripped) -> None:
            warnings.warn(VoxgateWarning(
                f"{conf}, line {number}: {line!r} {why}; KNOSSOS ignores the line, and voxgate "
                "skips it too"), stacklevel=3)

        def bad(what: str, why: str = "", number: int = number,
                line: str = stripped) -> InvalidRequestError:
            return InvalidRequestError(
                f"{conf}, line {number}: {line!r} is not {what}{why}; a classic knossos.conf "
                "holds one 'key value;' entry per line, its words separated by single spaces")

        if first not in _CLASSIC_FIRST:
            word = re.split(r"[\s;#/]", stripped, maxsplit=1)[0]
            if line[0].isspace():
                if word in _CLASSIC_FIRST:
                    warnings.warn(VoxgateWarning(
                        f"{conf}, line {number}: {stripped!r} is indented, and KNOSSOS reads "
                        "no indented line (a key must start its line); voxgate skips it too: "
                        "remove the indentation for it to count"), stacklevel=2)
            elif word in _CLASSIC_FIRST:
                skip(f"has a {first[len(word)]!r} after {word!r}")
            elif word.lower().startswith("png"):
                # png=no, pngs, png=yes: KNOSSOS compares the first word with "png" (dataset.cpp
                # fromLegacyConf), so it loads .raw cubes, as voxgate then does
                ignored(f"starts with {word!r}, not the key 'png' (write 'png;' for .png cubes; "
                        "without it KNOSSOS and voxgate read the .raw cubes)")
            elif word == "jpg":
                warnings.warn(VoxgateWarning(
                    f"{conf}, line {number}: {stripped!r} is skipped: KNOSSOS reads no 'jpg' "
                    "key (it loads .jpg cubes when the conf says 'compression_ratio 1000;'); "
                    "voxgate reads the .raw cubes only, as KNOSSOS does"), stacklevel=2)
            continue
        if first == "png":
            out["png"] = True
            continue
        if first == "experiment":
            if '"' in line:
                # KNOSSOS: info.experimentname = line.split("\"")[1]
                name = line.split('"')[1]
            else:
                # KNOSSOS would index past the end of the split (no name); knossos_utils'
                # initialize_without_conf writes "experiment name NAME;"
                m = re.match(r"experiment[ \t]+name[ \t]+([^;]*)", line)
                name = m.group(1).strip() if m else ""
            if not name:
                raise bad('experiment name "NAME";')
            out["experiment name"] = name
            continue
        if first in ("boundary", "scale"):
            if len(words) < 2:
                # KNOSSOS: tokenList.at(1) past the end
                raise bad(f"{first} x {'1024' if first == 'boundary' else '10.0'};",
                          " (no axis and no value)")
            axis = words[1]
            if axis not in ("x", "y", "z"):
                if (axis == "" and len(words) > 2 and words[2] != "") or (
                        axis[:1] in ("x", "y", "z") and axis[1:2].isspace()):
                    skip(f"has {'two spaces before' if axis == '' else 'a tab after'} the axis")
                else:  # KNOSSOS compares the axis with "x", "y" and "z" only
                    named = "no axis" if axis == "" else f"the axis {axis!r}"
                    ignored(f"names {named}, and a {first} line counts only for 'x', 'y' or "
                            "'z'")
                continue
            key = f"{first} {words[1]}"
            example = f"{key} {'1024' if first == 'boundary' else '10.0'};"
            value = words[2] if len(words) > 2 else None
            pattern = _QT_FLOAT
        else:
            key = first
            example = _WHOLE_EXAMPLES[first]
            value = words[1] if len(words) > 1 else None
            pattern = _QT_INT
        if value is None:
            raise bad(example)  # KNOSSOS: tokenList.at(...) past the end
        if pattern.fullmatch(value) is None:
            if value == "":
                why = " (no value, or two spaces before it: KNOSSOS reads the empty word, as 0)"
            elif "#" in value or "/" in value:
                why = f" (KNOSSOS reads {value!r} as 0: a comment needs a space before it)"
            elif pattern is _QT_INT and _QT_FLOAT.fullmatch(value):
                # a decimal (1.5, 2.0): KNOSSOS' toInt reads whole numbers only
                whole = float(value)
                n = int(whole) if math.isfinite(whole) and whole == int(whole) else -1
                if n >= 0 and (key != "magnification" or (n >= 1 and not n & (n - 1))):
                    example = f"'{key} {n};'"  # (the line meant; a mag only if a power of two)
                why = (f" (KNOSSOS reads {value!r} as 0: it reads {key} as a whole number, "
                       "written without a decimal point or exponent)")
            else:
                why = f" (KNOSSOS reads {value!r} as 0)"
            raise bad(example, why)
        value = value.strip()
        read = float(value) if any(c in value for c in ".eE") else int(value)
        if not math.isfinite(read):
            raise bad(example, f" ({value!r} is out of range)")
        if first == "boundary" and read != int(read):
            # KNOSSOS reads it with toFloat into an int (1024.5 is 1024), but 1024 or 1025?
            raise bad(example, f" (a boundary counts voxels: a whole number, not {value!r})")
        out[key] = read
    return out


def _need(d: dict[str, Any], key: str, conf: str) -> Any:
    if key not in d:
        raise InvalidRequestError(f"{conf} has no {key!r} entry; a KNOSSOS dataset needs it")
    return d[key]


def _numbers(value: object, n: int, what: str, conf: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise InvalidRequestError(f"{conf}: {what} must be {n} positive numbers, got {value!r}")
    return [float(v) for v in value]


def _xyz(value: object, what: str, conf: str) -> list[float]:
    """A triple written as a TOML table {x, y, z} or as a list [x, y, z]."""
    if isinstance(value, dict):
        value = [value.get("x"), value.get("y"), value.get("z")]
    return _numbers(value, 3, what, conf)


def _scale_extent(extent_xyz: Sequence[float], offset_zyx: Sequence[int],
                  voxel_xyz: Sequence[float], voxel0_xyz: Sequence[float]) -> tuple[Vec, Vec]:
    """The (shape, offset), z y x, of the scale of voxel size ``voxel_xyz`` of a dataset whose
    scale 0 has extent ``extent_xyz`` at ``offset_zyx``: divided by the factor, the shape
    rounded up and the offset down (KNOSSOS stores only scale 0's extent)."""
    f = [v / b for v, b in zip(voxel_xyz, voxel0_xyz, strict=True)]
    shape_xyz = [max(1, math.ceil(e / fi - 1e-9)) for e, fi in zip(extent_xyz, f, strict=True)]
    offset = Vec(*(int(o // fi) for o, fi in zip(offset_zyx, f[::-1], strict=True)))
    return Vec(*shape_xyz[::-1]), offset


class KnossosRemote(Remote):
    scheme = "knossos"
    create_options = ("conf", "experiment")

    def __init__(self, location: str, root: str, ds: _Dataset, mode: str) -> None:
        self.location = location
        self.root = root
        self.ds = ds
        self.mode = mode
        self.url = f"knossos://{location}"
        self.meta = self._meta(ds)

    # -- opening --------------------------------------------------------------------------------
    @staticmethod
    def _path(location: str) -> str:
        if not is_local(location):
            raise CapabilityNotSupportedError(
                f"knossos:// reads local datasets only, not {location!r}"
            )
        return local_path(location)

    @staticmethod
    def find_conf(path: str) -> str | None:
        """The configuration file of the dataset at ``path`` (a file or directory), or None."""
        if os.path.isfile(path):
            return path
        if not os.path.isdir(path):
            return None
        # (not macOS's ._NAME AppleDouble files, binary, which sort before the conf they shadow)
        names = sorted(n for n in os.listdir(path) if not n.startswith("._"))
        for pred in (
            lambda n: n.endswith(".k.toml"),
            lambda n: n.endswith((".pyk.conf", ".pyknossos.conf")) or n == "ariadne.conf",
            lambda n: n == "knossos.conf" or n.endswith(".k.conf"),
        ):
            for n in names:
                if pred(n) and os.path.isfile(os.path.join(path, n)):
                    return os.path.join(path, n)
        legacy = os.path.join(path, "mag1", "knossos.conf")
        return legacy if os.path.isfile(legacy) else None

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> KnossosRemote:
        check_options("knossos://", options, cls.open_options)
        path = cls._path(location)
        conf = cls.find_conf(path)
        if conf is None:
            raise RemoteNotFoundError(
                f"no KNOSSOS dataset at {location!r}: no *.k.toml, *.pyk.conf, knossos.conf or "
                "mag1/knossos.conf there"
            )
        ds = _read_conf(conf)
        root = os.path.dirname(conf)
        if re.fullmatch(r"mag\d+", os.path.basename(root)) and \
                conf.endswith(("knossos.conf", ".k.conf")):
            root = os.path.dirname(root)  # magM/knossos.conf: the dataset is the parent
            main = cls.find_conf(root)
            if ds.conf_mag != 1 and main is not None:
                # the dataset's own conf has mag 1's exact boundary (a magM conf's is rounded)
                ds = _read_conf(main)
        if ds.root is not None:
            root = ds.root
        if ds.server_format == "knossos":
            ds.mags = _knossos_server_mags(root, len(ds.voxel_sizes_xyz), conf)
            # with up to two scales both layouts are mag1, mag2: scales added later go where
            # KNOSSOS reads them (mag4, mag8 ...) unless a mag3 said knossos_utils' layout
            ds.pow2_mags = ds.mags == [2**k for k in range(len(ds.mags))]
        if not ds.mags:  # classic: the power-of-two mag folders present
            mags = sorted(
                int(n[3:]) for n in os.listdir(root)
                if n.startswith("mag") and n[3:].isdigit() and os.path.isdir(
                    os.path.join(root, n))
            )
            mags = [m for m in mags if m & (m - 1) == 0] or [1]
            if mags[0] != 1:
                mags = [1, *mags]
            ds.mags = mags
            base = ds.voxel_sizes_xyz[0]
            ds.voxel_sizes_xyz = [[v * m for v in base] for m in mags]
        return cls(location, root, ds, mode)

    @staticmethod
    def _meta(ds: _Dataset) -> VolumeMeta:
        vs0 = ds.voxel_sizes_xyz[0]
        scales = []
        cube = Vec(*ds.cube_xyz[::-1])
        for i, vs in enumerate(ds.voxel_sizes_xyz):
            shape, offset = _scale_extent(ds.extent_xyz, ds.offset_zyx, vs, vs0)
            scales.append(Scale(i, shape, cube, VoxelSize(vs[2], vs[1], vs[0]),
                                offset, ds.exts[0].lstrip("."), f"mag{ds.mags[i]}"))
        kind = ds.kind if ds.kind in ("image", "segmentation") else "image"
        return VolumeMeta(np.dtype("uint8"), tuple(scales), kind, 1, 0)  # type: ignore[arg-type]

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def exists(cls, location: str) -> bool:
        return cls.find_conf(cls._path(location)) is not None

    @classmethod
    def create(
        cls,
        location: str,
        meta: VolumeMeta,
        *,
        exist_ok: bool = False,
        conf: str = "toml",
        experiment: str | None = None,
        **options: Any,
    ) -> KnossosRemote:
        check_options("knossos://", options, cls.create_options)
        path = cls._path(location)
        if meta.dtype != np.uint8:
            raise CapabilityNotSupportedError(
                f"KNOSSOS raw cubes hold uint8 voxels, not {meta.dtype.name}; store "
                f"{meta.dtype.name} data in zarr:// or n5://"
                + ("" if meta.dtype.name in ("int64", "float64") else " or precomputed://")
            )
        if meta.num_channels != 1:
            raise CapabilityNotSupportedError("a KNOSSOS layer holds one channel")
        if meta.fill_value != 0:
            raise InvalidRequestError("KNOSSOS absent cubes read as 0: the fill value must be 0")
        if conf not in ("toml", "knossos.conf"):
            raise InvalidRequestError(
                f"conf must be 'toml' (NAME.k.toml, any cube shape and scales) or "
                f"'knossos.conf' (the classic file: 128^3 cubes, power-of-two mags), got {conf!r}"
            )
        if cls.exists(location):
            return open_existing(cls, location, meta, exist_ok, "a KNOSSOS dataset")
        name = experiment or os.path.basename(os.path.normpath(path)) or "dataset"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise InvalidRequestError(
                f"experiment name {name!r} must be letters, digits, '.', '_' or '-' (it is part "
                "of every cube's file name); pass experiment='...'"
            )
        if "_mag" in name:
            # KNOSSOS (Dataset::knossosCubeUrl) names cubes after the part of the name before
            # its first "_mag": it would look for other files than the ones written here
            raise InvalidRequestError(
                f"experiment name {name!r} holds '_mag', where KNOSSOS cuts the name when it "
                f"looks for cube files (it would look for {name.split('_mag')[0]}_mag1_x0000_"
                "... and find none); pass experiment='...' without it"
            )
        s0 = meta.scales[0]
        vs0 = s0.voxel_size.xyz()
        if s0.voxel_size.unit != "nm":
            raise InvalidRequestError("KNOSSOS voxel sizes are in nm; give voxel_size in nm")
        for sc in meta.scales[1:]:
            # a scale's extent is not stored: it is scale 0's divided by the factor, rounded
            # up from the first voxel; a scale of another extent would be read back as that
            shape, offset = _scale_extent(s0.shape.xyz(), s0.offset, sc.voxel_size.xyz(), vs0)
            if (shape, offset) != (sc.shape, sc.offset):
                raise InvalidRequestError(
                    f"KNOSSOS derives a scale's extent from scale 0's (divided by the factor, "
                    f"rounded up from the first voxel): scale {sc.index} would cover "
                    f"{Box.from_shape(shape, offset)!r}, this volume's covers {sc.bounds!r}. "
                    "Nothing was created: copy scale 0 alone (voxgate.copy(..., scales=[0])) "
                    "and make the coarser scales with voxgate.downsample")
        if conf == "knossos.conf":
            if tuple(s0.chunks) != (CUBE_EDGE,) * 3:
                raise InvalidRequestError(
                    f"a classic knossos.conf dataset has 128^3 cubes; create it with "
                    f"chunks=(128, 128, 128), not {tuple(s0.chunks)} (or use conf='toml')"
                )
            for sc in meta.scales:
                f = [v / b for v, b in zip(sc.voxel_size.xyz(), vs0, strict=True)]
                if len(set(f)) != 1 or f[0] != 2**sc.index:
                    raise InvalidRequestError(
                        "a classic knossos.conf holds isotropic power-of-two mags only (scale "
                        f"{sc.index} is {sc.voxel_size.zyx()} nm); use conf='toml'"
                    )
            if any(s0.offset) or meta.kind != "image":
                raise InvalidRequestError(
                    "a classic knossos.conf has no offset or kind; use conf='toml'"
                )
            os.makedirs(path, exist_ok=True)  # once the request is known to be good
            # KNOSSOS finds a classic dataset's mags by their magM/knossos.conf files: each
            # holds that mag's boundary and voxel size, as knossos_cuber writes them
            for sc in meta.scales:
                m = 2 ** sc.index
                os.makedirs(os.path.join(path, f"mag{m}"), exist_ok=True)
                atomic_write(os.path.join(path, f"mag{m}", "knossos.conf"), _classic_conf(
                    name if m == 1 else f"{name}_mag{m}", sc.shape.xyz(),
                    sc.voxel_size.xyz(), m))
            atomic_write(os.path.join(path, "knossos.conf"),
                         _classic_conf(name, s0.shape.xyz(), vs0, 1))
        else:
            os.makedirs(path, exist_ok=True)
            ds = _Dataset(
                conf=os.path.join(path, f"{name}.k.toml"), name=name,
                extent_xyz=list(s0.shape.xyz()),
                voxel_sizes_xyz=[list(sc.voxel_size.xyz()) for sc in meta.scales],
                mags=[i + 1 for i in range(len(meta.scales))],
                cube_xyz=list(s0.chunks.xyz()), exts=[".raw"],
                offset_zyx=list(s0.offset), kind=meta.kind,
            )
            _write_toml(ds)
        return cls.open(location, mode="r+")

    # -- data -----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = {Capability.CHUNK_PRESENCE}
        if self.mode == "r+" and ".raw" in self.ds.exts:
            caps.add(Capability.WRITE)
            if self.ds.conf.endswith(".k.toml"):
                caps.add(Capability.ADD_SCALES)
        return frozenset(caps)

    def cube_path(self, scale: int, cube_xyz: Sequence[int], ext: str = ".raw") -> str:
        m = f"mag{self.ds.mags[scale]}"
        x, y, z = (int(v) for v in cube_xyz)
        return os.path.join(
            self.root, m, f"x{x:04d}", f"y{y:04d}", f"z{z:04d}",
            f"{self.ds.name}_{m}_x{x:04d}_y{y:04d}_z{z:04d}{ext}",
        )

    def _find_cube(self, scale: int, cube_xyz: Sequence[int]) -> str | None:
        # a .raw cube first: lossless, and the one voxgate writes (a write into a dataset of
        # FileExtension [".jpg", ".raw"] is read back, not hidden by the older .jpg)
        for ext in sorted(self.ds.exts, key=lambda e: e != ".raw"):
            p = self.cube_path(scale, cube_xyz, ext)
            if os.path.exists(p):
                return p
        return None

    def _grid(self, scale: int) -> tuple[Box, Vec]:
        sc = self.meta.scale(scale)
        # in coordinates from the volume's first voxel (its offset): cube 0 starts there
        return Box(Vec(0, 0, 0), sc.shape), sc.chunks

    def _cubes(self, box: Box, scale: int) -> list[tuple[Vec, Box, Box]]:
        """(grid index z, y, x; the cube's box clipped to the volume; the part of ``box`` in
        it), in coordinates from the dataset's origin."""
        sc = self.meta.scale(scale)
        bounds, cube = self._grid(scale)
        local = box.translate([-o for o in sc.offset])
        return [(idx, cell, cell.intersect(local)) for idx, cell in
                chunk_boxes(local, cube, bounds)]

    def _check_raw_size(self, path: str, size: int) -> None:
        cz, cy, cx = self.meta.scale(0).chunks
        if size != cz * cy * cx:
            raise CorruptChunkError(
                f"KNOSSOS cube {path} holds {size} bytes, not the {cz * cy * cx} of a "
                f"{cx}x{cy}x{cz} uint8 cube (truncated or not a cube)", chunk=path
            )

    def _read_cube(self, path: str) -> np.ndarray:
        cz, cy, cx = self.meta.scale(0).chunks
        n = cz * cy * cx
        if path.endswith(".raw"):
            with open(path, "rb") as f:
                data = f.read()
            self._check_raw_size(path, len(data))
            return np.frombuffer(data, np.uint8).reshape(cz, cy, cx)
        if path.endswith(_JPEG2000):
            raise CapabilityNotSupportedError(
                f"KNOSSOS cube {path} is JPEG 2000, which voxgate does not decode; convert the "
                "dataset's cubes to .raw, .png or .jpg (knossos_cuber writes those)")
        img = _decode_image(path)
        if img.size != n:
            raise CorruptChunkError(
                f"KNOSSOS cube {path} decodes to {img.shape} ({img.size} values), not the {n} "
                f"of a {cx}x{cy}x{cz} cube", chunk=path
            )
        return img.reshape(cz, cy, cx)

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        if self.missing == "error":
            self._check_present(box, scale)
        sc = self.meta.scale(scale)
        out = np.zeros(tuple(box.shape), dtype=np.uint8)
        local = box.translate([-o for o in sc.offset])
        for idx, _cell, part in self._cubes(box, scale):
            path = self._find_cube(scale, idx[::-1])
            if path is None:
                continue
            cube = self._read_cube(path)
            origin = [i * c for i, c in zip(idx, sc.chunks, strict=True)]
            out[part.slices(local.start)] = cube[part.slices(origin)]
        return out

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        return sorted(idx for idx, _, _ in self._cubes(box, scale)
                      if self._find_cube(scale, idx[::-1]) is None)

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        if ".raw" not in self.ds.exts:
            # voxgate writes .raw cubes only, and a reader of this dataset would never look
            # at them: the write would be lost
            raise CapabilityNotSupportedError(
                f"{self.url} holds {'/'.join(self.ds.exts)} cubes, which voxgate reads but "
                "does not write (it writes .raw cubes, which this dataset's configuration does "
                "not list); copy it to a new knossos:// or zarr:// dataset to change it"
            )
        sc = self.meta.scale(scale)
        local = box.translate([-o for o in sc.offset])
        cubes = self._cubes(box, scale)
        # the cubes this write completes are read first: one that cannot be read (truncated,
        # JPEG 2000) fails the write before any cube is written, not half-way through it
        for idx, cell, part in cubes:
            existing = None if part == cell else self._find_cube(scale, idx[::-1])
            if existing is None:
                continue
            if existing.endswith(".raw"):
                self._check_raw_size(existing, os.path.getsize(existing))
            else:
                self._read_cube(existing)
        for idx, cell, part in cubes:
            origin = [i * c for i, c in zip(idx, sc.chunks, strict=True)]
            path = self.cube_path(scale, idx[::-1])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # one writer of a cube at a time (threads, other volumes, other processes): two
            # writers of disjoint parts of one cube that both read it first lost one part
            with file_lock(path):
                existing = None if part == cell else self._find_cube(scale, idx[::-1])
                cube = (self._read_cube(existing).copy() if existing
                        else np.zeros(tuple(sc.chunks), np.uint8))
                cube[part.slices(origin)] = array[part.slices(local.start)]
                atomic_write(path, cube.tobytes())
                # the cube's .jpg/.png/JPEG 2000 copies hold the old voxels, and KNOSSOS shows
                # the first of a layer's FileExtension (.jpg, before .raw, in its datasets):
                # absent, that layer shows no cube there rather than a stale one
                for ext in self.ds.exts:
                    if ext != ".raw":
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(self.cube_path(scale, idx[::-1], ext))

    def add_scales(self, scales: Sequence[Scale]) -> None:
        self._check_writable()
        if not self.ds.conf.endswith(".k.toml"):
            raise CapabilityNotSupportedError(
                f"{self.url} is described by {os.path.basename(self.ds.conf)}; voxgate adds "
                "scales to .k.toml datasets"
            )
        check_new_scales(self.meta, scales)
        for sc in scales:
            self.ds.voxel_sizes_xyz.append(list(sc.voxel_size.xyz()))
            n = len(self.ds.mags)
            self.ds.mags.append(2**n if self.ds.pow2_mags else n + 1)
        _write_toml(self.ds)
        self.meta = self._meta(self.ds)


def _decode_image(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        data = f.read()
    if path.lower().endswith((".jpg", ".jpeg")):
        import simplejpeg

        try:
            return np.asarray(simplejpeg.decode_jpeg(data, colorspace="GRAY"))[..., 0]
        except ValueError as exc:
            raise CorruptChunkError(f"KNOSSOS cube {path} is not a readable JPEG: {exc}",
                                    chunk=path) from exc
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError(
            f"reading the PNG cube {path} needs pillow: pip install pillow"
        ) from exc
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("L"))
    except OSError as exc:
        raise CorruptChunkError(f"KNOSSOS cube {path} is not a readable PNG: {exc}",
                                chunk=path) from exc


def _read_conf(conf: str) -> _Dataset:
    try:
        with open(conf, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise RemoteNotFoundError(f"cannot read KNOSSOS configuration {conf}: {exc}") from exc
    base = os.path.basename(conf)
    if base.endswith(".toml"):
        try:
            doc = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequestError(f"{conf} is not valid TOML: {exc}") from exc
        layers = doc.get("Layer")
        if not isinstance(layers, list) or not layers or not isinstance(layers[0], dict):
            raise InvalidRequestError(f"{conf} has no [[Layer]] table")
        layer = layers[0]
        where = f"{conf} (layer {layer.get('Name')!r})"
        server = layer.get("ServerFormat")
        url = layer.get("URL")
        if server == "precomputed" or (isinstance(url, str) and url.endswith("/info")):
            # knossos_utils' default: the voxels are a Neuroglancer precomputed volume (an
            # info file beside the .k.toml, or at URL), not cubes; reading cubes gives zeros
            raise CapabilityNotSupportedError(
                f"{where} is a Neuroglancer precomputed layer (ServerFormat 'precomputed' or "
                f"an info URL), not KNOSSOS cubes; open it as "
                f"precomputed://{os.path.dirname(conf)} (or the layer's URL)")
        _check_server_format(server, where, "ServerFormat")
        root = _local_root(url, f"{where} (URL)")
        dtype = layer.get("DataType")
        if dtype is not None and dtype != "uint8":
            raise CapabilityNotSupportedError(
                f"{where} holds {dtype} voxels; KNOSSOS cubes read by voxgate hold uint8")
        if layer.get("NumChannels", 1) != 1:
            raise CapabilityNotSupportedError(
                f"{where} has NumChannels {layer.get('NumChannels')!r}; voxgate reads "
                "one-channel KNOSSOS layers")
        sizes = _need(layer, "VoxelSize_nm", conf)
        if isinstance(sizes, dict) or (sizes and not isinstance(sizes[0], (list, dict))):
            sizes = [sizes]
        vs = [_xyz(s, "VoxelSize_nm", conf) for s in sizes]
        cube = [int(v) for v in _xyz(layer.get("CubeShape_px", [CUBE_EDGE] * 3),
                                     "CubeShape_px", conf)]
        exts = layer.get("FileExtension", [".raw"])
        exts = [exts] if isinstance(exts, str) else list(exts)
        offset = layer.get("VoxgateOffset_px", [0, 0, 0])
        return _Dataset(
            conf=conf, name=str(_need(layer, "Name", conf)),
            extent_xyz=[int(v) for v in _xyz(_need(layer, "Extent_px", conf), "Extent_px",
                                             conf)],
            voxel_sizes_xyz=vs, mags=list(range(1, len(vs) + 1)), cube_xyz=cube,
            exts=_exts(exts, conf), offset_zyx=[int(v) for v in offset][::-1],
            kind=str(layer.get("VoxgateKind", "image")), root=root,
            description=str(layer.get("Description", "")),
            server_format=str(server or ""), doc=doc,
        )
    text = raw.decode(errors="replace")
    if base.endswith((".pyk.conf", ".pyknossos.conf")) or base == "ariadne.conf":
        # the first [Dataset] section (the image layer; later ones are other layers, such as
        # a segmentation overlay), as KNOSSOS and knossos_utils read it
        kv, at = _pyk_section(text, conf)
        nums = _pyk_numbers(kv, "_DataScale", at("_DataScale"))
        if not nums or len(nums) % 3:
            raise InvalidRequestError(f"{at('_DataScale')}: _DataScale must be x,y,z triples "
                                      f"(one per mag), got {kv['_DataScale']!r}")
        vs = [_numbers(nums[i:i + 3], 3, "_DataScale", at("_DataScale"))
              for i in range(0, len(nums), 3)]
        extent = [_count(v, "_Extent", at("_Extent"))
                  for v in _pyk_numbers(kv, "_Extent", at("_Extent"), 3)]
        cube = ([_count(v, "_CubeSize", at("_CubeSize"))
                 for v in _pyk_numbers(kv, "_CubeSize", at("_CubeSize"), 3)]
                if "_CubeSize" in kv else [CUBE_EDGE] * 3)
        file_type = kv.get("_FileType", "0")
        if file_type not in ("0", "1", "2", "3"):
            raise InvalidRequestError(f"{at('_FileType')}: _FileType must be 0 (raw), 1 or 2 "
                                      f"(png) or 3 "
                                      f"(jpg), got {file_type!r}")
        # KNOSSOS: 3 jpg, 0 raw, anything else png (1, rotated png, is read as 2)
        ext = kv.get("_BaseExt") or {"0": ".raw", "3": ".jpg"}.get(file_type, ".png")
        _check_server_format(kv.get("_ServerFormat"), conf, "_ServerFormat")
        ordinal = kv.get("_ServerFormat", "") != "knossos"
        mags = list(range(1, len(vs) + 1)) if ordinal else [2**i for i in range(len(vs))]
        return _Dataset(conf=conf, name=_need(kv, "_BaseName", conf),
                        extent_xyz=extent, voxel_sizes_xyz=vs, mags=mags, pow2_mags=not ordinal,
                        cube_xyz=cube, exts=_exts(["." + ext.lstrip(".")], conf),
                        root=_local_root(kv.get("_BaseURL"), f"{conf} (_BaseURL)"))
    # (at the start of a line: KNOSSOS skips an indented one, as every other)
    ftp = re.search(r"^ftp_mode\b[ \t]*([^\s;]*)", text, re.MULTILINE)
    if ftp:
        # KNOSSOS (fromLegacyConf) and knossos_utils (parse_knossos_conf) load the cubes of
        # such a dataset from that server over HTTP, not from beside the conf: read here,
        # every cube would be absent and the dataset all zeros
        raise CapabilityNotSupportedError(
            f"{conf} has an ftp_mode line: its cubes are on the server "
            f"{ftp.group(1) or '(unnamed)'}, where KNOSSOS loads them from; knossos:// reads "
            "local datasets only (download the cubes, and remove the ftp_mode line if they are "
            "beside the configuration)")
    d = parse_knossos_conf(text, conf)
    name = _need(d, "experiment name", conf)
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f'{conf}: the experiment name must be a name, as in '
                                  f'experiment name "NAME";, got {name!r}')
    # magM/knossos.conf names its experiment NAME_magM (knossos_cuber); the cubes use NAME
    name = re.sub(r"_mag\d+$", "", name)
    mag = d.get("magnification", 1)
    if not isinstance(mag, int) or isinstance(mag, bool) or mag < 1 or mag & (mag - 1):
        raise InvalidRequestError(
            f"{conf}: magnification must be the conf's mag, a power of two (1, 2, 4, 8 ...; "
            f"'magnification 2;' in mag2/knossos.conf), got {mag!r}")
    extent = [_count(_need(d, f"boundary {a}", conf), f"boundary {a}", conf) for a in "xyz"]
    scale = _numbers([_need(d, f"scale {a}", conf) for a in "xyz"], 3, "scale x/y/z", conf)
    # a conf of mag M gives that mag's boundary and voxel size; KNOSSOS scales them to mag 1
    extent = [e * mag for e in extent]
    scale = [v / mag for v in scale]
    exts = [".raw"] + ([".png"] if d.get("png") else [])
    if "compression_ratio" in d:
        ratio = d["compression_ratio"]
        if not isinstance(ratio, int) or isinstance(ratio, bool) or ratio < 0:
            raise InvalidRequestError(
                f"{conf}: compression_ratio must be 0 (raw), 1000 (JPEG) or a JPEG 2000 ratio, "
                f"got {ratio!r}")
        # KNOSSOS: 1000 is .jpg cubes, 6 .6.jp2, any other non-zero ratio .j2k
        exts += [] if ratio == 0 else [{1000: ".jpg", 6: ".6.jp2"}.get(ratio, ".j2k")]
    edge = _count(d.get("cube_edge_length", CUBE_EDGE), "cube_edge_length", conf)
    return _Dataset(conf=conf, name=name, extent_xyz=extent, voxel_sizes_xyz=[scale], mags=[],
                    cube_xyz=[edge] * 3, exts=_exts(list(dict.fromkeys(exts)), conf),
                    conf_mag=mag)


def _knossos_server_mags(root: str, n: int, conf: str) -> list[int]:
    """The mag folder of each of ``n`` scales of a .k.toml layer of ServerFormat "knossos".

    KNOSSOS reads scale k from ``mag(2**k)`` (dataset.cpp knossosCubeUrl: only layers of
    another ServerFormat are ordinal), knossos_utils writes and reads every .k.toml layer in
    ordinal folders ``mag(k+1)``.  The two agree on mag1 and mag2; from scale 2 on the folders
    on disk tell them apart (a ``mag3`` is knossos_utils', a ``mag8`` KNOSSOS'), and with
    neither there KNOSSOS' rule holds."""
    power = [2**k for k in range(n)]
    ordinal = list(range(1, n + 1))

    def present(mags: set[int]) -> list[str]:
        return sorted(f"mag{m}" for m in mags if os.path.isdir(os.path.join(root, f"mag{m}")))

    by_ordinal, by_power = present(set(ordinal) - set(power)), present(set(power) - set(ordinal))
    if by_ordinal and by_power:
        raise InvalidRequestError(
            f"{conf}: ServerFormat 'knossos' layer with {n} scales has both ordinal mag folders "
            f"({', '.join(by_ordinal)}: knossos_utils' layout) and power-of-two ones "
            f"({', '.join(by_power)}: KNOSSOS'); remove the folders of one layout")
    return ordinal if by_ordinal else power


def _check_server_format(value: object, where: str, key: str) -> None:
    """Refuse a layer whose ``ServerFormat`` (pyk.conf ``_ServerFormat``) is not cubes voxgate
    reads: voxgate reads none, "" (ordinal mag folders) and "knossos" (see
    :func:`_knossos_server_mags`).

    KNOSSOS (dataset.cpp, parseToml and the pyk.conf parser) reads "knossos" as Heidelbrain
    cubes, "1" as OpenConnectome (NeuroData's REST service, whose cutouts are fetched by URL:
    no cube files) and any other value (a non-string too: toml11's ``find_or`` gives its
    default "") as PyKnossos cubes in ordinal folders.  A value no reader defines is more
    likely a layer of another kind than cubes, and reading absent cubes would give zeros, so
    it is refused; "precomputed" (knossos_utils) is refused before this, with its own hint.
    """
    if value is None or value in ("", "knossos"):
        return
    if value == "1":
        raise CapabilityNotSupportedError(
            f"{where} has {key} '1': KNOSSOS' OpenConnectome API (NeuroData / ndstore cutouts "
            "fetched from the layer's URL), not KNOSSOS cubes; knossos:// reads cube layers "
            f"(no {key}, or 'knossos')")
    raise CapabilityNotSupportedError(
        f"{where} has {key} {value!r}, which voxgate does not read; knossos:// reads cube "
        f"layers with no {key} or {key} 'knossos' (KNOSSOS reads any other value as cubes in "
        f"folders mag1, mag2, mag3 ...: if that is what the layer holds, remove {key})")


def _local_root(url: object, where: str) -> str | None:
    """The directory of the cubes that a conf's URL names (None: beside the conf)."""
    if url is None or url == "":
        return None
    if not isinstance(url, str) or not url.startswith("file://"):
        shown = re.sub(r"//[^/@]*@", "//", url) if isinstance(url, str) else url  # no password
        raise CapabilityNotSupportedError(
            f"{where}: the cubes are at {shown!r}; knossos:// reads local datasets only "
            "(download the cubes, or remove the URL if they are beside the configuration)")
    return local_path(url)


def _pyk_section(text: str, conf: str) -> tuple[dict[str, str], Any]:
    """The ``key = value`` entries of a .pyk.conf's first ``[Dataset]`` section (the image
    layer; later ones are other layers, such as a segmentation overlay), as KNOSSOS and
    knossos_utils read it, and a function giving ``"CONF, line N"`` for a key.

    Full-line comments (``#``, ``;``) are skipped, as by every reader (PyKNOSSOS reads the
    file with ConfigObj; KNOSSOS and knossos_utils skip keys they do not know), and so is an
    unquoted value's trailing ``# comment`` (ConfigObj's inline comments).  A value does not
    continue on the next line in any of them: a line of the section that is no ``key =
    value`` entry raises :class:`InvalidRequestError` naming the file and the line, rather than
    the continuation being dropped (KNOSSOS would read the first line's mags only)."""
    kv: dict[str, str] = {}
    lines: dict[str, int] = {}
    sections = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if re.match(r"\[Dataset[ \d]*\]", stripped):
            sections += 1
            continue
        if sections != 1 or not stripped or stripped.startswith(("#", ";")):
            continue
        if "=" not in stripped:
            raise InvalidRequestError(
                f"{conf}, line {number}: {stripped!r} is no 'key = value' entry; a .pyk.conf "
                "holds one entry per line (a value cannot continue on the next line)")
        k, _, v = stripped.partition("=")
        v = v.strip()
        if not v.startswith('"'):
            v = v.split("#", 1)[0].strip()  # ConfigObj: an unquoted value ends at a '#'
        kv[k.strip()] = v.replace('"', "")
        lines[k.strip()] = number

    def at(key: str) -> str:
        return f"{conf}, line {lines[key]}" if key in lines else conf

    return kv, at


def _pyk_numbers(kv: dict[str, str], key: str, conf: str, n: int | None = None) -> list[float]:
    """The comma-separated numbers of a .pyk.conf entry (``n`` of them, if given)."""
    text = _need(kv, key, conf)
    try:
        nums = [float(t) for t in re.split(r"[,\s]+", text) if t]
    except ValueError as exc:
        raise InvalidRequestError(f"{conf}: {key} must be comma-separated numbers, got "
                                  f"{text!r}") from exc
    if n is not None and len(nums) != n:
        raise InvalidRequestError(f"{conf}: {key} must be {n} numbers (x,y,z), got {text!r}")
    return nums


def _count(value: object, what: str, conf: str) -> int:
    """A positive whole number of voxels (``1024`` or ``1024.0``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or \
            value != int(value):
        raise InvalidRequestError(f"{conf}: {what} must be a positive whole number, got "
                                  f"{value!r}")
    return int(value)


def _exts(exts: list[str], conf: str) -> list[str]:
    out = []
    for e in exts:
        e = "." + str(e).lstrip(".").lower()
        if e not in _EXTS + _JPEG2000:
            raise CapabilityNotSupportedError(
                f"{conf}: cubes of type {e} are not supported; voxgate reads .raw, .png and .jpg "
                "cubes (segmentation overlays .seg.sz.zip are not read)"
            )
        out.append(e)
    return out or [".raw"]


def _classic_conf(name: str, boundary_xyz: Sequence[int], voxel_xyz: Sequence[float],
                  mag: int) -> bytes:
    lines = [f'experiment name "{name}";']
    lines += [f"boundary {a} {int(n)};" for a, n in zip("xyz", boundary_xyz, strict=True)]
    lines += [f"scale {a} {float(v)!r};" for a, v in zip("xyz", voxel_xyz, strict=True)]
    lines += [f"magnification {mag};"]
    return ("\n".join(lines) + "\n").encode()


def _toml_str(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, but for DEL)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_list(values: Sequence[float]) -> str:
    return "[" + ", ".join(repr(int(v)) if float(v).is_integer() else repr(float(v))
                           for v in values) + "]"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_value(value: object) -> str:
    """Any value tomllib reads, written back as TOML (tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # inf, -inf, nan
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def _our_keys(ds: _Dataset) -> dict[str, str]:
    """The first layer's keys that voxgate knows from ``ds``, as TOML values."""
    layer = ds.doc.get("Layer", [{}])[0] if ds.doc else {}
    ours: dict[str, str] = {
        "Name": _toml_str(ds.name),
        "Extent_px": _toml_list(ds.extent_xyz),
        "VoxelSize_nm": "[" + ", ".join(_toml_list(v) for v in ds.voxel_sizes_xyz) + "]",
        "CubeShape_px": _toml_list(ds.cube_xyz),
        # KNOSSOS requires Description (toml::find, not find_or): without it it refuses the file
        "Description": _toml_str(ds.description),
    }
    if "FileExtension" not in layer:  # else as written (KNOSSOS matches its spelling exactly)
        ours["FileExtension"] = "[" + ", ".join(f'"{e}"' for e in ds.exts) + "]"
    if not ds.doc or "VoxgateOffset_px" in layer or any(ds.offset_zyx):
        ours["VoxgateOffset_px"] = _toml_list(ds.offset_zyx[::-1])
    if not ds.doc or "VoxgateKind" in layer or ds.kind != "image":
        ours["VoxgateKind"] = _toml_str(ds.kind)
    return ours


def _write_toml(ds: _Dataset) -> None:
    """Write ``ds`` to its .k.toml: the first layer's keys that voxgate knows from ``ds``, and
    everything else of the file as it was read (other keys of the layer, such as ServerFormat,
    URL or Color, other layers, top-level keys).

    An existing file is edited in place where that is plain (:func:`_edited_toml`), which keeps
    its comments and layout; else it is written whole, without them (``tomllib`` keeps none)."""
    if ds.doc:
        edited = _edited_toml(ds)
        if edited is not None:
            atomic_write(ds.conf, edited)
            ds.doc = tomllib.loads(edited.decode())  # what the next edit starts from
            return
    doc = dict(ds.doc)
    layers = list(doc.get("Layer", [{}]))
    layer = dict(layers[0])
    ours = _our_keys(ds)
    # keys already in the layer keep their place; new ones follow
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if k != "Layer"]
    lines.append("[[Layer]]")
    lines += [f"{_toml_key(k)} = {ours.pop(k) if k in ours else _toml_value(v)}"
              for k, v in layer.items()]
    lines += [f"{k} = {v}" for k, v in ours.items()]
    for other in layers[1:]:
        lines.append("[[Layer]]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in other.items()]
    text = "\n".join(lines) + "\n"
    atomic_write(ds.conf, text.encode())
    if ds.doc:
        ds.doc = tomllib.loads(text)


# a table or array-of-tables header line (not a line of a multi-line array: no commas)
_HEADER = re.compile(r"\s*\[\[?\s*[A-Za-z0-9_.\"' -]+\]\]?\s*(#.*)?\s*")


def _edited_toml(ds: _Dataset) -> bytes | None:
    """The .k.toml's current text with only the first layer's keys whose values voxgate changed
    rewritten (a changed key's lines replaced, its trailing comment kept; a new key added after
    the layer's last line), or None when that is not plain: the file changed since it was
    read, a key spelled otherwise (quoted, dotted), or an edit that would not read back as
    ``ds`` says.  Comments, blank lines, key order and the other layers stay as they were."""
    try:
        with open(ds.conf, "rb") as f:
            text = f.read().decode()
        if tomllib.loads(text) != ds.doc:
            return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    layer = ds.doc["Layer"][0]
    changed = {k: v for k, v in _our_keys(ds).items()
               if layer.get(k, None) != tomllib.loads(f"v = {v}")["v"]}
    if not changed:
        return None
    lines = text.splitlines(keepends=True)
    start = next((i + 1 for i, ln in enumerate(lines)
                  if re.fullmatch(r"\s*\[\[\s*Layer\s*\]\]\s*(#.*)?", ln.rstrip("\r\n"))), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(lines)) if _HEADER.fullmatch(lines[i])),
               len(lines))
    newline = "\r\n" if lines[0].endswith("\r\n") else "\n"
    spans: dict[str, tuple[int, int]] = {}  # key -> its lines [i, j)
    for i in range(start, end):
        m = re.match(r"\s*([A-Za-z0-9_-]+)\s*=", lines[i])
        if m and m.group(1) in changed:
            for j in range(i + 1, end + 1):  # the value may span lines (a long array)
                try:
                    tomllib.loads("".join(lines[i:j]))
                except tomllib.TOMLDecodeError:
                    continue
                spans[m.group(1)] = (i, j)
                break
    last = max((i for i in range(start, end) if lines[i].strip()), default=start - 1)
    want = dict(ds.doc)
    want["Layer"] = [{**layer, **{k: tomllib.loads(f"v = {v}")["v"] for k, v in changed.items()}},
                     *ds.doc["Layer"][1:]]
    # first with the comments inside a multi-line array kept (a list that only grew gets its
    # new items before its closing bracket), else with the changed keys' lines rewritten
    for keep_inside in (True, False):
        result = _edit_lines(lines, spans, changed, last, newline, layer, keep_inside)
        try:
            if tomllib.loads(result) == want:
                return result.encode()
        except tomllib.TOMLDecodeError:
            pass
    return None


def _edit_lines(lines: list[str], spans: dict[str, tuple[int, int]], changed: dict[str, str],
                last: int, newline: str, layer: dict[str, Any], keep_inside: bool) -> str:
    out = lines[:]
    added = [f"{k} = {v}{newline}" for k, v in changed.items() if k not in spans]
    if added and not out[last].endswith(("\n", "\r")):
        out[last] += newline
    out[last + 1:last + 1] = added
    for key, (i, j) in sorted(spans.items(), key=lambda kv: -kv[1][0]):
        if keep_inside and j - i > 1:
            grown = _appended("".join(lines[i:j]), layer.get(key),
                              tomllib.loads(f"v = {changed[key]}")["v"], newline)
            if grown is not None:
                out[i:j] = [grown]
                continue
        # a comment after the value: from the first '#' that the value does not need
        head, tail = "".join(lines[i:j - 1]), lines[j - 1].rstrip("\r\n")
        comment = ""
        for p in (p for p, c in enumerate(tail) if c == "#"):
            with contextlib.suppress(tomllib.TOMLDecodeError):
                tomllib.loads(head + tail[:p])
                comment = tail[p:]
                break
        indent = re.match(r"\s*", lines[i]).group(0)  # type: ignore[union-attr]
        ending = newline if lines[j - 1].endswith(("\n", "\r")) else ""
        out[i:j] = [f"{indent}{key} = {changed[key]}{' ' + comment if comment else ''}{ending}"]
    return "".join(out)


def _appended(span: str, old: object, new: object, newline: str) -> str | None:
    """``span`` (the lines of ``key = [...]``, an array over several lines) with the items
    that ``new`` adds to the end of ``old`` inserted before the array's closing bracket, so the
    comments between its items stay; None when ``new`` does not just extend ``old`` or the
    array is not plain to find (the caller checks that the result reads as ``new``)."""
    if not (isinstance(old, list) and isinstance(new, list) and len(new) > len(old)
            and new[:len(old)] == old):
        return None
    depth, last, close, quote = 0, -1, -1, ""
    i = span.index("=") + 1
    while i < len(span):
        c = span[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            quote = "" if c == quote else quote
        elif c == "#":  # a comment, to the end of its line
            i = span.find("\n", i)
            if i < 0:
                break
            continue
        elif c in "\"'":
            quote = c
        elif c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                close = i
                break
        if not c.isspace():
            last = i
        i += 1
    if close < 0 or last < 0:
        return None
    items = [_toml_list(v) if isinstance(v, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) else _toml_value(v)
        for v in new[len(old):]]
    sep = "" if span[last] in ",[" else ","
    line_start = span.rfind("\n", 0, close) + 1
    if span[line_start:close].strip() or span[last] == "[":
        # "]" after an item on its line: the new items follow that item
        return span[:last + 1] + sep + " " + ", ".join(items) + span[last + 1:]
    # "]" on a line of its own: one line per new item, indented as the item before
    item_line = span.rfind("\n", 0, last) + 1
    indent = re.match(r"[ \t]*", span[item_line:]).group(0)  # type: ignore[union-attr]
    lines = "".join(f"{indent}{it},{newline}" for it in items)
    return span[:last + 1] + sep + span[last + 1:line_start] + lines + span[line_start:]
