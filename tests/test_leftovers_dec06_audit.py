"""Leftovers of the last session's notes (audit of Dec 06).

1. A local folder (or an s3:// / gs:// prefix) holding only version control's placeholders
   (``.gitkeep``, ``.keep``, ``.gitignore``, ``.gitattributes``, Mercurial's ``.hgignore``),
   as a user leaves in a folder made with git for a volume to come, was UnknownSchemeError
   "cannot tell the format ... name the format in the URL" when given to ``voxgate.open``,
   where an empty folder (or one of a desktop's files only) is RemoteNotFoundError "nothing
   is stored", listing the markers voxgate looks for.  Now it is that too, naming the files.
   A format's own dotfiles (zarr's ``.zarray``, ``.zgroup``, ``.zattrs``, ``.zmetadata``) are
   never taken for placeholders.  ``create`` into such a folder already worked (guarded).
2. KNOSSOS: ``magnification 1.5;`` in a classic knossos.conf was refused as "is not
   magnification 1;", an example that reads as if 1 were the value wanted.  KNOSSOS
   (dataset.cpp ``fromLegacyConf``) reads magnification, cube_edge_length and
   compression_ratio with ``toInt`` (a decimal is 0); the message now says what the key takes
   (magnification: the conf's mag, a power of two; compression_ratio: 0, 1000, 6 or another
   whole number) and, for a whole decimal (``2.0``), the line to write (``magnification 2;``).
3. (The relay's startup check already refuses ``hold_write = true`` with ``hold_open = false``
   under several workers: no code, see the report.)
4. An N5 multiscale group whose scales funlib.persistence placed: each scale's voxel size is
   its own ``voxel_size``, and N5 ``downsamplingFactors`` (the group's, n5-viewer's
   ``scales``, or a scale's own) that contradict it were ignored silently.  Now a
   VoxgateWarning names the scale, the factors' file, both voxel sizes and which is used;
   agreeing factors warn nothing.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import (
    InvalidRequestError,
    RemoteNotFoundError,
    UnknownSchemeError,
    VoxgateWarning,
)
from voxgate.remotes.knossos import parse_knossos_conf

from .remotes.n5_files import n5_viewer_2d
from .remotes.test_knossos_audit import classic_conf
from .remotes.test_n5_funlib_multiscale_audit import _SCALES, _data, _pyramid

# -- 1. a folder holding only version control's placeholders -----------------------------------

PLACEHOLDERS = [
    [".gitkeep"],
    [".keep"],
    [".gitignore"],
    [".gitattributes"],
    [".hgignore"],
    [".gitignore", ".gitattributes", ".gitkeep"],
]


def _folder(tmp_path: Path, names: list[str], name: str = "newproject") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for n in names:
        (folder / n).write_text("*.tmp\n" if "ignore" in n else "")
    return folder


@pytest.mark.parametrize("names", PLACEHOLDERS, ids=["+".join(n) for n in PLACEHOLDERS])
def test_folder_of_vcs_placeholders_is_not_found(tmp_path: Path, names: list[str]) -> None:
    # (was UnknownSchemeError "cannot tell the format")
    folder = _folder(tmp_path, names)
    with pytest.raises(RemoteNotFoundError, match=r"nothing is stored.*version control") as info:
        voxgate.open(folder)
    msg = str(info.value)
    assert all(n in msg for n in names)
    assert "zarr.json" in msg and "attributes.json" in msg  # the markers voxgate looks for
    assert "desktop" not in msg
    with pytest.raises(RemoteNotFoundError, match="nothing is stored"):
        voxgate.open(f"file://{folder}")
    with pytest.raises(RemoteNotFoundError, match="nothing is stored"):
        voxgate.open(str(folder) + "/")


def test_folder_of_placeholders_and_desktop_files_names_both(tmp_path: Path) -> None:
    folder = _folder(tmp_path, [".gitkeep", ".DS_Store"])
    with pytest.raises(RemoteNotFoundError,
                       match=r"only \.DS_Store, \.gitkeep, which a desktop leaves in folders it "
                             r"shows and version control keeps in folders"):
        voxgate.open(folder)


@pytest.mark.parametrize("names", [
    [".gitignore", ".zattrs"],  # zarr's attributes, no array or group marker: a format's file
    [".gitignore", ".zmetadata"],
    [".gitkeep", "notes.txt"],
    [".gitkeep", ".gitkeep~"],  # an editor's backup is no placeholder
    [".GITKEEP"],  # (git is case-sensitive: the conventions are lower-case)
])
def test_format_dotfiles_and_other_files_are_no_placeholders(tmp_path: Path,
                                                             names: list[str]) -> None:
    # guard (UnknownSchemeError on the old code too): only the placeholders hold nothing
    folder = _folder(tmp_path, names)
    with pytest.raises(UnknownSchemeError, match="cannot tell the format"):
        voxgate.open(folder)


def test_a_volume_beside_placeholders_opens(tmp_path: Path) -> None:
    # guard: the markers decide, the placeholders beside them change nothing
    folder = _folder(tmp_path, [".gitkeep", ".gitignore"], "em")
    made = voxgate.create(f"zarr://{folder}", shape=(2, 4, 6), dtype="uint8", chunks=(2, 4, 6),
                          voxel_size=(1, 1, 1))
    made[:] = 3
    for url in (str(folder), f"file://{folder}"):
        assert int(voxgate.open(url)[1, 2, 3].read()) == 3
    # zarr v2's .zgroup is a marker: a group with no array is zarr's to answer, not "nothing
    # is stored"
    plain = _folder(tmp_path, [".gitkeep"], "plain")
    (plain / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    with pytest.raises(RemoteNotFoundError) as info:
        voxgate.open(plain)
    assert "nothing is stored" not in str(info.value)


@pytest.mark.parametrize("url", ["zarr://{f}", "n5://{f}", "precomputed://{f}", "knossos://{f}",
                                 "webknossos://{f}", "{f}.zarr", "{f}.n5"])
def test_create_into_a_folder_made_with_git(tmp_path: Path, url: str) -> None:
    # guard (created on the old code too): `mkdir newproject; touch newproject/.gitkeep`
    base = tmp_path / "newproject"
    target = Path(url.format(f=base).split("://")[-1])
    target.mkdir()
    (target / ".gitkeep").write_text("")
    (target / ".gitignore").write_text("*.tmp\n")
    made = voxgate.create(url.format(f=base), shape=(4, 6, 8), dtype="uint8", chunks=(4, 6, 8),
                          voxel_size=(1, 1, 1))
    made[:] = 9
    again = voxgate.open(target)  # detected from the markers create wrote
    assert again.shape == (4, 6, 8)
    assert int(again[1, 2, 3].read()) == 9
    assert (target / ".gitkeep").exists()


@pytest.mark.parametrize("keys", [
    ["scan/.gitkeep"],
    ["scan/.gitignore", "scan/sub/.keep", "scan/.DS_Store"],
], ids=["gitkeep", "several"])
def test_s3_prefix_of_vcs_placeholders_is_not_found(s3_bucket: str,
                                                     put_s3_keys: Callable[..., None],
                                                     keys: list[str]) -> None:
    # (was UnknownSchemeError "cannot tell the format", as for a prefix holding data)
    put_s3_keys(keys, b"")
    with pytest.raises(RemoteNotFoundError,
                       match=r"nothing is stored.*\.git.*version control") as info:
        voxgate.open(f"s3://{s3_bucket}/scan")
    assert all(k.removeprefix("scan/") in str(info.value) for k in keys), str(info.value)


def test_s3_prefix_of_placeholders_and_a_format_file_is_still_unknown(
        s3_bucket: str, put_s3_keys: Callable[..., None]) -> None:
    # guard
    put_s3_keys(("scan/.gitkeep", "scan/.zattrs"), b"{}")
    with pytest.raises(UnknownSchemeError, match="cannot tell the format"):
        voxgate.open(f"s3://{s3_bucket}/scan")


# -- 2. a decimal magnification in knossos.conf ------------------------------------------------


def _knossos_conf(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """A classic KNOSSOS dataset folder whose knossos.conf has ``old`` replaced by ``new``;
    its folder and the line number of ``new``'s last line."""
    text = classic_conf("e", (200, 150, 130), (10, 10, 25)).replace(old, new)
    root = tmp_path / "ds"
    root.mkdir()
    (root / "knossos.conf").write_text(text)
    return root, text.splitlines().index(new.splitlines()[-1]) + 1


def test_a_decimal_magnification_shows_what_knossos_takes(tmp_path: Path) -> None:
    # was: "'magnification 1.5;' is not magnification 1; (KNOSSOS reads '1.5' as 0)"
    root, number = _knossos_conf(tmp_path, "magnification 1;", "magnification 1.5;")
    with pytest.raises(InvalidRequestError) as info:
        voxgate.open(f"knossos://{root}")
    msg = str(info.value)
    assert f"line {number}: 'magnification 1.5;'" in msg
    assert "is not magnification 1;" not in msg
    assert "power of two (1, 2, 4, 8" in msg
    assert "'magnification 2;' in mag2/knossos.conf" in msg
    assert "KNOSSOS reads '1.5' as 0: it reads magnification as a whole number" in msg


@pytest.mark.parametrize(("line", "shown"), [
    ("magnification 2.0;", "is not 'magnification 2;'"),
    ("magnification 4.;", "is not 'magnification 4;'"),
    ("cube_edge_length 128.0;", "is not 'cube_edge_length 128;'"),
    ("compression_ratio 1000.0;", "is not 'compression_ratio 1000;'"),
])
def test_a_whole_decimal_shows_the_line_to_write(line: str, shown: str) -> None:
    # was: "is not magnification 1;" for 2.0 and 4., "is not compression_ratio 1;" for 1000.0
    with pytest.raises(InvalidRequestError, match="without a decimal point") as info:
        parse_knossos_conf(line + "\n", "c")
    assert shown in str(info.value)


def test_a_whole_decimal_magnification_that_is_no_power_of_two_shows_the_rule() -> None:
    # was: "is not 'magnification 3;'" for 3.0, a line the conf reader then refuses
    with pytest.raises(InvalidRequestError, match="without a decimal point") as info:
        parse_knossos_conf("magnification 3.0;\n", "c")
    assert "'magnification 3;'" not in str(info.value)
    assert "a power of two (1, 2, 4, 8" in str(info.value)


def test_a_decimal_compression_ratio_names_the_ratios_knossos_reads() -> None:
    # was: "is not compression_ratio 1;"
    with pytest.raises(InvalidRequestError,
                       match=r"0 \(\.raw cubes\), 1000 \(\.jpg\), 6 \(\.6\.jp2\)"):
        parse_knossos_conf("compression_ratio 6.5;\n", "c")


def test_a_magnification_that_is_no_power_of_two_shows_one(tmp_path: Path) -> None:
    # (was "magnification must be a power of two, got 3": no example)
    root, _ = _knossos_conf(tmp_path, "magnification 1;", "magnification 3;")
    with pytest.raises(InvalidRequestError,
                       match=r"power of two \(1, 2, 4, 8 \.\.\.; 'magnification 2;' in "
                             r"mag2/knossos\.conf\), got 3"):
        voxgate.open(f"knossos://{root}")


# -- 4. N5 downsamplingFactors against funlib's voxel_size ---------------------------------------


def _funlib_group(tmp_path: Path, group: dict[str, Any] | None) -> str:
    scales = [(_data(shape, k), vs, offset) for k, (shape, vs, offset) in enumerate(_SCALES)]
    return _pyramid(tmp_path, scales, ["z", "y", "x"], group)


FUNLIB_VS = [(40.0, 8.0, 4.0), (40.0, 16.0, 8.0), (80.0, 32.0, 16.0)]


@pytest.mark.parametrize("key", ["downsamplingFactors", "scales"])
def test_group_factors_contradicting_funlib_voxel_size_warn(tmp_path: Path, key: str) -> None:
    # (was silent: s1 and s2 placed by voxel_size, the factors ignored).  The factors (x first)
    # say s1 is halved in z too (80, 16, 8 nm) and s2 (160, 32, 16) nm
    url = _funlib_group(tmp_path, {"multiScale": True,
                                   key: [[1, 1, 1], [2, 2, 2], [4, 4, 4]]})
    with pytest.warns(VoxgateWarning) as record:
        vol = voxgate.open(url)
    msgs = [str(w.message) for w in record]
    assert len(msgs) == 2, msgs
    s1, s2 = msgs
    group_attrs = str(tmp_path / "f.n5" / "raw" / "attributes.json")
    assert s1.startswith(f"s1: {group_attrs} '{key}' gives it downsampling factors (2, 2, 2)")
    assert "a voxel size of (80, 16, 8) nm over s0's (40, 8, 4)" in s1
    assert "funlib.persistence voxel_size is (40, 16, 8) nm; voxgate uses voxel_size" in s1
    assert s2.startswith("s2: ") and "(160, 32, 16)" in s2 and "(80, 32, 16)" in s2
    assert [sc.voxel_size.zyx() for sc in vol.meta.scales] == FUNLIB_VS  # the rule: funlib's


def test_a_scales_own_factors_contradicting_its_voxel_size_warn(tmp_path: Path) -> None:
    url = _funlib_group(tmp_path, {"multiScale": True})
    s1 = tmp_path / "f.n5" / "raw" / "s1" / "attributes.json"
    attrs = json.loads(s1.read_text())
    s1.write_text(json.dumps({**attrs, "downsamplingFactors": [2, 1, 1]}))  # x first: x only
    with pytest.warns(VoxgateWarning,
                      match=rf"^s1: {s1} 'downsamplingFactors' gives it downsampling factors "
                            r"\(1, 1, 2\) \(z, y, x; the file lists x first\), a voxel size of "
                            r"\(40, 8, 8\) nm .* voxel_size is \(40, 16, 8\) nm; voxgate uses "
                            r"voxel_size"):
        vol = voxgate.open(url)
    assert [sc.voxel_size.zyx() for sc in vol.meta.scales] == FUNLIB_VS


@pytest.mark.parametrize("group", [
    {"multiScale": True, "downsamplingFactors": [[1, 1, 1], [2, 2, 1], [4, 4, 2]]},
    {"scales": [[1, 1, 1], [2, 2, 1], [4, 4, 2]]},
    {"multiScale": True},
    None,
], ids=["factors", "scales", "none", "no-group-attrs"])
def test_agreeing_or_absent_factors_warn_nothing(tmp_path: Path,
                                                 group: dict[str, Any] | None) -> None:
    # guard (silent on the old code too)
    url = _funlib_group(tmp_path, group)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = voxgate.open(url)
    assert [sc.voxel_size.zyx() for sc in vol.meta.scales] == FUNLIB_VS


def test_2d_funlib_group_compares_y_and_x_only(tmp_path: Path) -> None:
    # a (y, x) pyramid's z voxel size is made up (the larger in-plane size): not compared
    scales = [(_data((8, 12), 0), [8, 4], [16, 40]), (_data((4, 6), 1), [16, 8], [16, 40])]
    url = _pyramid(tmp_path / "a", scales, ["y", "x"],
                   {"multiScale": True, "downsamplingFactors": [[1, 1], [2, 2]]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        voxgate.open(url)
    url = _pyramid(tmp_path / "b", scales, ["y", "x"],
                   {"multiScale": True, "downsamplingFactors": [[1, 1], [2, 1]]})
    with pytest.warns(VoxgateWarning, match=r"^s1: .* factors \(1, 2\) \(y, x; the file lists "
                                            r"x first\), a voxel size of \(8, 8\) nm .* "
                                            r"voxel_size is \(16, 8\) nm"):
        vol = voxgate.open(url)
    assert vol.meta.scales[1].voxel_size.zyx()[1:] == (16.0, 8.0)
    np.testing.assert_array_equal(vol.read(), scales[0][0][None])


def test_2d_n5_viewer_group_reads_the_groups_factors(tmp_path: Path) -> None:
    # Found on the way: a 2-D group's own downsamplingFactors rows ([[1, 1], [2, 2]]) were not
    # given the z entry every other 2-D list gets, so they were dropped and the factors
    # inferred from the shapes, z 1: s1 opened at (5, 10, 10) nm, its one plane's z not the
    # larger in-plane size as on every other 2-D scale (and as with per-scale factors)
    root = tmp_path / "pyr.n5"
    levels = n5_viewer_2d(root, np.arange(32 * 24, dtype=np.uint8).reshape(32, 24),  # [x, y]
                          group_factors=True)
    vol = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in vol.scales] == [(5.0, 5.0, 5.0), (10.0, 10.0, 10.0)]
    np.testing.assert_array_equal(vol.at_scale(1).read(), levels[1].T[None])
