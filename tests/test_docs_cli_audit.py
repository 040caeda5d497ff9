"""Every ``voxgate ...`` command line of README.md and docs/**/*.md parses, and runs.

tests/test_docs.py runs the pages' python blocks; this file does the same for the command
lines a reader copies into a shell.

**What is a command.**  (1) In a fenced block of shell or plain text (```bash, sh, shell,
console, text or no language), every line that starts with ``voxgate`` (after a ``$ `` prompt,
or after ``&&`` / ``;``), joined with its continuation lines (ending in ``\\``; a synopsis
wrapped onto an indented line starting with ``[`` continues too).  Lines after a ``$ voxgate``
line, up to the next prompt, are the output the page shows for it.  (2) An inline code span
`` `voxgate WORD ...` `` of the prose, whose WORD is a subcommand, an option or a placeholder;
the few spans that start with ``voxgate`` but are no command (a log line) are NOT_COMMANDS.

**Placeholders** (the reader fills them in) are replaced by a value of the right kind, token
by token, after the line is split as a shell splits it (``#`` comments dropped): an
upper-case word such as ``URL``, ``SRC``, ``DIR``, ``N``, ``HOST:PORT``, ``KEY=VALUE`` by its
value in PLACEHOLDERS (a volume URL of the temporary directory, a folder, a number ...; an
upper-case word missing there fails the collection); ``COMMAND`` by every subcommand in turn;
``a|b`` by each alternative in turn; ``[...]`` (optional parts of a synopsis) by what is inside;
``...`` is dropped (more arguments follow: such a command is a form, parsed only); ``$VAR`` by
ENV.  The reader's absolute folders (``/data``, ``/shared``, ``/tmp``) are the test's temporary
directory.

**Parse.**  Every command is parsed by the real click tree (``voxgate.cli.main``, its
subcommand's ``make_context``, ``resilient_parsing=False``): an unknown subcommand or option, a
bad choice or a wrong number of arguments fails.  A span with no argument at all
(`` `voxgate info --check` ``) names a command and its options, so only a missing argument is
allowed there.

**Run.**  Each fenced block is a little script: its commands run in order, in process
(CliRunner), in a fresh copy of a kit of small inputs made with voxgate (_make_kit below) in a
temporary working directory; each runnable inline span runs alone the same way.  Every
command's outputs (DST, OUT, --out, --csv, --obj-dir, --swc-dir, --probabilities, --dir)
start absent unless an earlier command of the same script wrote them.  Each must exit 0 and
have its effect (CHECKS: the copy reads back equal to its source, the new scales are there,
the merged id is gone ...); ``voxgate view`` runs as the installed command until it prints
its link, which must answer, then gets Ctrl-C.  Where the page shows the output of a
``$ voxgate`` line (an ``Error:``), or says the command is refused (REFUSED), it must print
that and exit 1.  A command that cannot run here matches one rule of NO_RUN (a bossDB
account, a cloud bucket, a Dask cluster, a GPU, the relay, which serves until stopped) or is
a synopsis, a form or a span naming a command and its options; it is counted per page
against NOT_RUN, and still parsed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner

import voxgate
from voxgate.cli import main

from .test_docs import PAGES, ROOT, code_blocks

VOXGATE = Path(sys.executable).with_name("voxgate")  # the installed command
SHELL_LANGUAGES = ("bash", "sh", "shell", "console", "text", "")

#: inline spans that start with "voxgate" but are no command line
NOT_COMMANDS = {
    "voxgate relay: all N workers ready": "a line the relay logs (docs/relay.md)",
}

#: the value of each upper-case placeholder (COMMAND: every subcommand, see _expand)
PLACEHOLDERS = {
    "URL": "zarr://em.zarr", "URLS": "zarr://em.zarr", "SRC": "zarr://em.zarr",
    "DST": "zarr://copy.zarr", "OUT": "zarr://out.zarr", "DIR": "scratch", "N": "2",
    "HOST": "127.0.0.1", "PORT": "8786", "ADDRESS": "tcp://127.0.0.1:8786", "KEY": "missing",
    "VALUE": "fill", "CONFIG": "relay.toml", "VOXELS": "100000",
}
#: URL is a segmentation with an edit history for the proofreading commands
URL_FOR = {"merge": "zarr://group.zarr", "split": "zarr://group.zarr",
           "history": "zarr://group.zarr", "undo": "zarr://group.zarr"}
ENV = {"BOSS_TOKEN": "public-token"}
READER_DIRS = re.compile(r"(^|://)/(?:data|shared|tmp)(?=/|$)")

#: (rule on the command as written, why it does not run here); the first that matches
NO_RUN: list[tuple[str, str]] = [
    (r"--scheduler\s", "a Dask cluster (a scheduler's address)"),
    (r"bossdb://", "a bossDB server and token"),
    (r"gs://|s3://", "a cloud bucket"),
    (r"--device cuda", "a CUDA GPU and onnxruntime-gpu"),
    (r"^voxgate serve\b", "the relay serves until Ctrl-C (tests/relay start it)"),
    # (matched on the line without its # comment; a synopsis ([...]) or a form (...) and a
    # span with no argument are parsed only: see Command.no_run)
]
#: spans with no argument that are whole commands, run (the others name a command, an option)
RUN_SPANS = {"voxgate --help", "voxgate COMMAND --help", "voxgate cp --status",
             "voxgate cp --forget-all", "voxgate cp --forget-map-blocks URL"}
#: page -> commands not run there (a new one is a deliberate change of this file)
NOT_RUN: dict[str, int] = {
    "README.md": 11,  # serve x2; the form `mesh|...|stats URL ...` x5; spans naming options
    "docs/architecture.md": 2,  # serve; a span naming view
    "docs/cli.md": 1,  # view of bossdb://
    "docs/cluster.md": 6,  # --scheduler x4; spans naming options
    "docs/copy.md": 6,  # the synopses; --scheduler; spans naming options
    "docs/index.md": 3,  # serve, view; a span naming cp
    "docs/relay.md": 7,  # serve
    "docs/remotes/hdf5.md": 2,  # spans naming a command
    "docs/remotes/n5.md": 1,  # a span naming an option
    "docs/remotes/precomputed.md": 2,  # spans naming a command, an option
    "docs/remotes/zarr.md": 1,  # a span naming an option
    "docs/services/index.md": 2,  # spans naming commands
    "docs/services/predict.md": 2,  # a gs:// bucket; --device cuda
    "docs/services/synapses.md": 1,  # a span naming an option
    "docs/viewing.md": 1,  # a span naming view
}

#: commands the page shows being refused (as written, without the comment) -> the error
REFUSED = {
    # "# refuse absent chunks": the kit's sparse.zarr has absent chunks
    "voxgate cp -O missing=error zarr://sparse.zarr precomputed://out": "MissingChunkError",
}

#: parameters (by their click name) that are a command's outputs
OUTPUT_PARAMS = ("dst", "out", "csv_path", "obj_dir", "swc_dir", "probabilities", "directory")


@dataclass
class Command:
    page: Path
    line: int
    text: str  # as written, continuation lines joined
    argv: list[str]  # after "voxgate", placeholders replaced, reader's folders not yet
    span: bool  # an inline code span (else a line of a fenced block)
    script: str  # the commands of one script run in order in one directory
    form: bool = False  # has '...' or brackets: parsed only
    output: str | None = None  # the output the page shows for it
    no_args: bool = False  # a span with no argument: names a command and its options

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def id(self) -> str:
        return f"{self.where}:{' '.join(self.argv)}"

    def no_run(self) -> str | None:
        bare = shlex.join(shlex.split(self.text, comments=True))
        for rule, reason in NO_RUN:
            if re.search(rule, bare):
                return reason
        if self.form:
            return "a synopsis ([optional parts], some exclusive) or a form (...): parsed only"
        if self.no_args and bare not in RUN_SPANS:
            return "names a command and its options (no argument): parsed only"
        return None


# -- collection ----------------------------------------------------------------------------

def _expand(text: str) -> Iterator[tuple[list[str], bool]]:
    """The argv (after 'voxgate') of each variant of ``text``, and whether it is a form."""
    text = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: ENV[m[1]], text)
    tokens = shlex.split(text, comments=True)
    assert tokens[0] == "voxgate", text
    choices: list[list[str]] = []
    form = False
    sub = tokens[1] if len(tokens) > 1 else ""
    for tok in tokens[1:]:
        if tok == "...":
            form = True
            continue
        if tok.startswith("[") or tok.endswith("]"):
            form = True
            tok = tok.strip("[]")
        if tok == "COMMAND":
            choices.append(sorted(main.commands))
            continue
        alternatives = tok.split("|") if "|" in tok and "://" not in tok else [tok]
        choices.append([_fill(a, sub) for a in alternatives])
    for combo in itertools.product(*choices):
        yield list(combo), form


def _fill(tok: str, sub: str) -> str:
    def value(m: re.Match[str]) -> str:
        word = m[0]
        if word == "URL" and sub in URL_FOR:
            return URL_FOR[sub]
        assert word in PLACEHOLDERS, f"placeholder {word!r} has no value in PLACEHOLDERS"
        return PLACEHOLDERS[word]
    return re.sub(r"(?<![\w-])[A-Z][A-Z0-9_]*(?![\w-])", value, tok)


def _fenced(page: Path) -> Iterator[Command]:
    for block in code_blocks(page):
        if block.language not in SHELL_LANGUAGES:
            continue
        script = f"{block.where}"
        lines = block.code.splitlines()
        i = 0
        current: Command | None = None
        while i < len(lines):
            line, start = lines[i], i
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            while i + 1 < len(lines) and lines[i + 1].lstrip().startswith("[") \
                    and lines[i + 1].startswith(" "):
                i += 1
                line = line + " " + lines[i].strip()
            i += 1
            prompt = line.lstrip().startswith("$ ")
            parts = [p.strip() for p in re.split(r"&&|;", line.lstrip().removeprefix("$ "))]
            cmds = [p for p in parts if p.split()[:1] == ["voxgate"]] if parts != [""] else []
            if not cmds:
                if current is not None and current.output is not None and not prompt:
                    current.output += line.strip() + "\n"
                continue
            for text in cmds:
                for argv, form in _expand(text):
                    current = Command(page, block.line + start, text, argv, span=False,
                                      script=script, form=form,
                                      output="" if prompt else None)
                    yield current


#: spans starting with "voxgate" whose next word is no command word nor option
STRAY: list[str] = []
_SPAN = re.compile(r"(?<!`)`(voxgate [^`]+)`(?!`)")


def _spans(page: Path) -> Iterator[Command]:
    text = page.read_text(encoding="utf-8")
    # the fenced blocks blanked (their lines kept, so line numbers hold)
    lines = text.splitlines()
    for block in code_blocks(page):
        n = block.code.count("\n") + 1
        for k in range(block.line - 1, block.line - 1 + n):
            lines[k] = ""
    prose = "\n".join(lines)
    for m in _SPAN.finditer(prose):
        written = " ".join(m[1].split())
        word = written.split()[1]
        line = prose.count("\n", 0, m.start()) + 1
        if not re.fullmatch(r"[a-z][a-z0-9-]*|-.*|[A-Z]+", word):
            STRAY.append(f"{page.relative_to(ROOT)}:{line}: `{written}`")
            continue
        for argv, form in _expand(written):
            yield Command(page, line, written, argv, span=True,
                          script=f"{page.relative_to(ROOT)}:{line}:{written}", form=form,
                          no_args=not _has_argument(argv))


def _has_argument(argv: list[str]) -> bool:
    """Whether argv names more than the subcommand and its options (any word not an option
    nor an option's value)."""
    cmd = main.commands.get(argv[0]) if argv else None
    if cmd is None:
        return False
    takes_value = {o for p in cmd.params if isinstance(p, click.Option) and not p.is_flag
                   for o in p.opts + p.secondary_opts}
    rest = iter(argv[1:])
    for tok in rest:
        if tok in takes_value:
            next(rest, None)
        elif not tok.startswith("-"):
            return True
    return False


def collect() -> list[Command]:
    out: list[Command] = []
    for page in PAGES:
        out += list(_fenced(page))
        out += list(_spans(page))
    return out


COMMANDS = collect()
RUNNABLE = [c for c in COMMANDS if c.no_run() is None]
SCRIPTS: dict[str, list[Command]] = {}
for _c in RUNNABLE:
    SCRIPTS.setdefault(_c.script, []).append(_c)


def test_the_collection_finds_the_commands() -> None:
    """The collector finds what the pages show (a parser that missed a fence or a span would
    silently check nothing)."""
    fenced = [c for c in COMMANDS if not c.span]
    spans = [c for c in COMMANDS if c.span]
    print(f"{len(COMMANDS)} command lines ({len(fenced)} in fenced blocks, {len(spans)} inline "
          f"spans), {len(RUNNABLE)} run in {len(SCRIPTS)} scripts, "
          f"{len(COMMANDS) - len(RUNNABLE)} parsed only")
    assert len(fenced) >= 50 and len(spans) >= 40 and len(RUNNABLE) >= 40
    # every line of a shell block that starts with "voxgate" is one command (or more)
    starts = sum(1 for p in PAGES for b in code_blocks(p) if b.language in SHELL_LANGUAGES
                 for line in b.code.splitlines()
                 if re.match(r"\s*(\$ )?voxgate\s", line))
    assert len({(c.page, c.line) for c in fenced}) >= starts
    assert {c.page.name for c in COMMANDS} >= {"README.md", "cli.md", "copy.md", "proofread.md"}


def test_spans_that_are_no_command_are_listed() -> None:
    """A span `voxgate WORD ...` whose WORD cannot be a command (a log line) is skipped only
    when NOT_COMMANDS lists it (a lower-case WORD is checked as a command: `voxgate copy`
    fails to parse, there is no such command)."""
    listed = {s.split(": `", 1)[1].rstrip("`") for s in STRAY}
    assert listed == set(NOT_COMMANDS), STRAY


def test_commands_not_run_are_listed() -> None:
    found: dict[str, int] = {}
    listing = []
    for c in COMMANDS:
        reason = c.no_run()
        if reason is not None:
            rel = str(c.page.relative_to(ROOT))
            found[rel] = found.get(rel, 0) + 1
            listing.append(f"{c.where}: voxgate {' '.join(c.argv)}: {reason}")
    print("\n".join(["not run:", *listing]))
    assert found == NOT_RUN, (
        "the commands not run changed; update NOT_RUN of tests/test_docs_cli_audit.py "
        f"(found {found}):\n" + "\n".join(listing))


# -- parse ---------------------------------------------------------------------------------

def parse(argv: list[str]) -> tuple[click.Command | None, dict[str, Any]]:
    """The subcommand argv names and its parsed parameters (None, {} for --help / --version
    of the group).  Raises click's UsageError for a command line click refuses."""
    if not argv or argv[0].startswith("-"):  # the group's own options (--help, --version)
        try:
            main.make_context("voxgate", list(argv), resilient_parsing=False)
        except click.exceptions.Exit as e:
            assert e.exit_code == 0
            return None, {}
        raise AssertionError(f"voxgate {' '.join(argv)} names no command")
    with click.Context(main, info_name="voxgate") as ctx:
        name, cmd, rest = main.resolve_command(ctx, list(argv))  # UsageError: no such command
        assert cmd is not None and name is not None
        try:
            sub = cmd.make_context(name, rest, parent=ctx, resilient_parsing=False)
        except click.exceptions.Exit as e:  # --help
            assert e.exit_code == 0
            return cmd, {}
        return cmd, dict(sub.params)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.id)
def test_command_parses(cmd: Command) -> None:
    try:
        parse(cmd.argv)
    except click.MissingParameter as e:
        if not (cmd.no_args or cmd.form):
            raise AssertionError(f"{cmd.where}: `{cmd.text}`: {e.format_message()}") from e
    except click.BadOptionUsage as e:
        # a span naming an option that takes a value (`voxgate cc --dtype`), without the value
        if not (cmd.no_args and e.option_name == cmd.argv[-1]
                and "requires an argument" in e.message):
            raise AssertionError(f"{cmd.where}: `{cmd.text}` does not parse: "
                                 f"{e.format_message()}") from e
    except click.UsageError as e:
        raise AssertionError(f"{cmd.where}: `{cmd.text}` does not parse: "
                             f"{e.format_message()}") from e


# -- the kit of inputs ----------------------------------------------------------------------

SEG_SHAPE = (32, 64, 64)


def _labels() -> np.ndarray:
    """Voronoi cells 1..128, with what the proofreading lines of the docs name: 12 and 99,
    segment 7 holding the seeds (10, 20, 30) and (12, 40, 41), segment 30 in two pieces."""
    from voxgate.synthetic import synthetic_labels

    labels = synthetic_labels(SEG_SHAPE, cell=(8, 16, 8))
    labels[labels == 7] = 8
    labels[labels == 30] = 31
    labels[8:14, 18:44, 28:44] = 7
    labels[0:4, 0:6, 0:6] = 30
    labels[26:32, 56:64, 56:64] = 30
    assert {12, 99} <= set(np.unique(labels).tolist())
    return labels


def _two_multiscales(path: Path, data: np.ndarray, kind: str) -> None:
    """An OME-Zarr group of two multiscales, 0 "raw" (dataset 0) and 1 "labels" (dataset
    l0), of the same shape."""
    import zarr

    voxgate.create(f"zarr://{path}", shape=data.shape, dtype=data.dtype.name,
                   chunks=(16, 32, 32), voxel_size=(40, 8, 8), kind=kind)[:] = data
    zarr.create_array(str(path / "l0"), shape=data.shape, chunks=(16, 32, 32),
                      dtype=data.dtype, fill_value=0)[:] = data[:, :, ::-1]
    doc = json.loads((path / "zarr.json").read_text())
    ms = doc["attributes"]["ome"]["multiscales"]
    ms[0]["name"] = "raw"
    ms.append({**ms[0], "name": "labels", "datasets": [{**ms[0]["datasets"][0], "path": "l0"}]})
    (path / "zarr.json").write_text(json.dumps(doc))


def _make_kit(root: Path) -> None:
    import tifffile

    from voxgate.synthetic import synthetic_em

    image, _ = synthetic_em(SEG_SHAPE, seed=0)
    labels = _labels()
    opts: dict[str, Any] = {"chunks": (16, 32, 32), "voxel_size": (40, 8, 8)}
    voxgate.create(f"zarr://{root}/em.zarr", shape=SEG_SHAPE, dtype="uint8", kind="image",
                   **opts)[:] = image
    for name in ("seg.zarr", "cells.zarr"):
        voxgate.create(f"zarr://{root}/{name}", shape=SEG_SHAPE, dtype="uint64",
                       kind="segmentation", **opts)[:] = labels
    voxgate.copy(f"zarr://{root}/em.zarr", f"precomputed://file://{root}/em-pre",
                 progress=False)
    voxgate.copy(f"zarr://{root}/seg.zarr", f"precomputed://file://{root}/seg", progress=False)
    _two_multiscales(root / "image.zarr", image, "image")
    _two_multiscales(root / "group.zarr", labels, "segmentation")
    # an edit of multiscale 1 for `voxgate history/undo -O multiscale=1 URL` to show and undo
    voxgate.merge(voxgate.open(f"zarr://{root}/group.zarr", mode="r+", multiscale=1), [5, 6],
                  progress=False)
    sparse = voxgate.create(f"zarr://{root}/sparse.zarr", shape=(8, 8, 8), dtype="uint8",
                            chunks=(4, 4, 4), voxel_size=(8, 8, 8))
    sparse[:4] = 7  # z 4..8 never written: absent chunks
    wk = voxgate.create(f"webknossos://{root}/ds", layer="segmentation", shape=SEG_SHAPE,
                        dtype="uint64", kind="segmentation", **opts)
    wk[:] = labels
    voxgate.downsample(wk, 2, progress=False)
    tifffile.imwrite(root / "stack.tif", image)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kit")
    _make_kit(root)
    return root


# -- run -----------------------------------------------------------------------------------

def _local(url: str, root: Path) -> Path | None:
    """The path under ``root`` a local URL (or path) names; None for a remote URL, or a path
    outside ``root`` (never removed)."""
    rest = url
    while (m := re.match(r"^([a-z][a-z0-9+]*)://", rest)) is not None:
        if m[1] in ("gs", "s3", "http", "https", "bossdb", "dvid", "mem", "tensorstore"):
            return None
        rest = rest[m.end():]
    p = Path(rest) if Path(rest).is_absolute() else root / rest
    return p if p.resolve().is_relative_to(root.resolve()) else None


def _in(root: Path, argv: list[str]) -> list[str]:
    return [READER_DIRS.sub(lambda m: m[1] + str(root), a) for a in argv]


def _outputs(params: dict[str, Any], root: Path) -> list[Path]:
    out = []
    for name in OUTPUT_PARAMS:
        value = params.get(name)
        if value is not None:
            p = _local(str(value), root)
            if p is not None:
                out.append(p)
    return out


def _open(url: str, options: dict[str, Any] | None = None) -> voxgate.Volume:
    return voxgate.open(url, **(options or {}))


Check = Callable[[dict[str, Any], str, Path], None]


def _check_info(p: dict[str, Any], out: str, root: Path) -> None:
    vol = _open(p["url"], p["open_options"])
    if p["as_json"]:
        doc = json.loads(out)
        assert [s["shape_zyx"] for s in doc["scales"]] == [list(s.shape) for s in vol.scales]
    else:
        assert f"{vol.dtype.name} {vol.meta.kind}" in out and \
            f"{len(vol.scales)} scale(s)" in out, out
    if p["check"]:
        assert "check:" in out


def _check_cp(p: dict[str, Any], out: str, root: Path) -> None:
    if p["status"]:
        assert "no unfinished" in out, out
        return
    if p["forget"] or p["forget_all"] or p["forget_map_blocks"]:
        assert "nothing to forget" in out or "forgot" in out, out
        return
    src = _open(p["src"], p["open_options"])
    layer = dict(o.split("=", 1) for o in p["options"]).get("layer")
    dst = _open(p["dst"], {"layer": layer} if layer else None)
    assert dst.shape == src.shape
    assert np.array_equal(dst.read(), src.read()), "the copy differs from its source"


def _check_downsample(p: dict[str, Any], out: str, root: Path) -> None:
    vol = _open(p["url"], p["open_options"])
    assert len(vol.scales) == (p["num_scales"] or len(vol.scales)) and len(vol.scales) > 1
    assert out.count("scale ") == len(vol.scales), out


def _check_cc(p: dict[str, Any], out: str, root: Path) -> None:
    src, cc = _open(p["url"], p["open_options"]), _open(p["out"])
    assert cc.shape == src.shape and cc.read().max() > 0
    assert "components written" in out


def _csv_rows(path: Path) -> int:
    lines = path.read_text().splitlines()
    assert lines, f"{path} is empty"
    return len(lines) - 1


def _check_stats(p: dict[str, Any], out: str, root: Path) -> None:
    vol = _open(p["url"], p["open_options"])
    ids = np.unique(vol.read())
    n = len(ids[ids != 0])
    if p["csv_path"] is not None:
        assert _csv_rows(Path(p["csv_path"])) == n
    else:
        rows = out.splitlines()
        assert rows[0].split()[:2] == ["id", "voxel_count"], out
        assert len(rows) == min(n, 40) + 1 + (n > 40) and int(rows[-1].split()[0]) == ids[-1]


def _check_mesh(p: dict[str, Any], out: str, root: Path) -> None:
    m = re.search(r"wrote (\d+) (\w+)", out)
    assert m is not None and int(m[1]) > 0 and m[2] == p["fmt"], out
    layer = _local(p["out"] or p["url"], root)
    assert layer is not None
    info = json.loads((layer / "info").read_text())
    assert any((layer / info["mesh"]).iterdir())


def _check_skeletonize(p: dict[str, Any], out: str, root: Path) -> None:
    if p["swc_dir"] is not None:
        files = sorted(f.name for f in Path(p["swc_dir"]).glob("*.swc"))
        want = [f"{i}.swc" for i in sorted(map(int, p["ids"].split(",")))] if p["ids"] else []
        assert files and (not want or files == sorted(want)), files


def _check_predict(p: dict[str, Any], out: str, root: Path) -> None:
    prob = _open(p["out"])
    assert prob.shape == _open(p["src"]).shape
    assert prob.dtype == (np.float32 if p["as_float"] else np.uint8)


def _check_synapses(p: dict[str, Any], out: str, root: Path) -> None:
    if p["csv_path"] is not None:
        header = Path(p["csv_path"]).read_text().splitlines()[0]
        assert "pre_id" in header or p["segmentation"] is None, header
    if p["out"] is not None:
        layer = _local(p["out"], root)
        assert layer is not None and json.loads((layer / "info").read_text())["@type"] == \
            "neuroglancer_annotations_v1"


def _check_merge(p: dict[str, Any], out: str, root: Path) -> None:
    ids = set(np.unique(_open(p["url"], p["open_options"]).read()).tolist())
    into = p["into"] if p["into"] is not None else min(p["ids"])
    assert into in ids and not (set(p["ids"]) - {into}) & ids
    assert "merged" in out


def _check_split(p: dict[str, Any], out: str, root: Path) -> None:
    m = re.search(r"new ids ([\d, ]+)", out)
    assert m is not None, out
    ids = set(np.unique(_open(p["url"], p["open_options"]).read()).tolist())
    assert p["segment"] in ids and {int(i) for i in m[1].split(",")} <= ids
    for seed in p["seeds"]:
        assert int(seed.split(":")[0]) in ids


def _check_history(p: dict[str, Any], out: str, root: Path) -> None:
    assert "no edits recorded" not in out and re.search(r"\b(merge|split)\b", out), out


def _check_undo(p: dict[str, Any], out: str, root: Path) -> None:
    assert out.count("undone") == p["count"], out


def _check_demo(p: dict[str, Any], out: str, root: Path) -> None:
    assert out.count("equal to the original: True") == 2, out
    if p["directory"] is not None:
        assert (Path(p["directory"]) / "em.zarr").is_dir()


CHECKS: dict[str, Check] = {
    "info": _check_info, "cp": _check_cp, "downsample": _check_downsample, "cc": _check_cc,
    "stats": _check_stats, "mesh": _check_mesh, "skeletonize": _check_skeletonize,
    "predict": _check_predict, "synapses": _check_synapses, "merge": _check_merge,
    "split": _check_split, "history": _check_history, "undo": _check_undo,
    "demo": _check_demo,
}


@dataclass
class Run:
    written: set[Path] = field(default_factory=set)


def run(cmd: Command, root: Path, state: Run) -> None:
    argv = _in(root, cmd.argv)
    sub, params = parse(argv)
    for path in _outputs(params, root):
        if sub is main.commands["cp"] and any(o.startswith("layer=") for o in params["options"]):
            continue  # (cp SRC DATASET -o layer=L adds the layer L to the dataset)
        if path not in state.written and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        state.written.add(path)
    if sub is main.commands["view"] and "--help" not in argv:
        _run_view(cmd, argv, root)
        return
    res = CliRunner().invoke(main, argv, catch_exceptions=True)
    said = f"{cmd.where}: `{cmd.text}` printed:\n{res.output}"
    bare = shlex.join(shlex.split(cmd.text, comments=True))
    if bare in REFUSED:  # the page says it is refused
        assert res.exit_code == 1 and REFUSED[bare] in res.output, said
        return
    if cmd.output:  # the page shows what it prints (an Error: line)
        assert res.exit_code == (1 if cmd.output.startswith("Error:") else 0), said
        assert " ".join(cmd.output.split()) in " ".join(res.output.split()), said
        return
    assert res.exit_code == 0, said + (f"\n{res.exception!r}" if res.exception else "")
    if sub is None or "--help" in argv:
        assert "Usage:" in res.output, said
        return
    assert sub.name in CHECKS, f"no CHECKS entry for voxgate {sub.name}"
    try:
        CHECKS[sub.name](params, res.stdout, root)
    except AssertionError as e:
        raise AssertionError(f"{said}\nwithout its effect: {e}") from e


def _run_view(cmd: Command, argv: list[str], root: Path) -> None:
    """``voxgate view`` serves until Ctrl-C: run as the installed command (its browser is
    BROWSER=true, which opens nothing), until it prints the Neuroglancer link; the link must
    answer, and Ctrl-C end it with status 0."""
    import httpx

    env = {**os.environ, "BROWSER": "true"}

    def default_sigint() -> None:
        # a child inherits an ignored SIGINT: something earlier in a long test run (a C
        # library) may have left this process ignoring it, and Ctrl-C must reach the command
        # (as tests/test_view.py found: in CI the command served on after Ctrl-C)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([str(VOXGATE), *argv], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=default_sigint)
    said = ""
    rest = b""
    try:
        assert proc.stdout is not None
        # (generous: a fresh install compiles neuroglancer's modules at the first start, and
        # CI runs two test processes on two cores)
        deadline = time.monotonic() + 120
        while "Neuroglancer: http" not in said and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:  # (os.read: a buffered readline could hold the link unseen)
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    break
                said += data.decode()
        link = re.search(r"Neuroglancer: (\S+)", said)
        assert link is not None, f"{cmd.where}: `{cmd.text}` printed no link:\n{said}"
        assert httpx.get(link[1], timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # (never left running: its pipe and process would outlive the test)
            rest, _ = proc.communicate()
            raise AssertionError(f"{cmd.where}: `{cmd.text}` did not end at Ctrl-C:\n{said}"
                                 f"{rest.decode()}") from None
    assert proc.returncode == 0, f"{cmd.where}: `{cmd.text}` printed:\n{said}{rest.decode()}"


@pytest.mark.parametrize("script", sorted(SCRIPTS), ids=str)
def test_command_runs(script: str, kit: Path, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "work"
    shutil.copytree(kit, root)
    monkeypatch.chdir(root)
    state = Run()
    for cmd in SCRIPTS[script]:
        run(cmd, root, state)
