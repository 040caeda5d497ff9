"""Every ```python block of README.md and docs/**/*.md runs as written (issue 11, item 9).

A page is a little script: its python blocks run in order, in one namespace, in a fresh
temporary working directory (so relative paths such as ``zarr://em.zarr`` land there and
``mem://`` volumes start empty).  Before the first block runs the PRELUDE below, the one set
of names the docs assume without creating them:

- ``np`` and ``voxgate``, imported;
- ``labels``: a small uint64 segmentation array (synthetic Voronoi cells, ids 1..128, so the
  ids 12 and 99 the Service pages use are there);
- ``seg``: the same labels as a ``mem://docs/seg`` segmentation Volume (40, 8, 8) nm.

Everything else a page uses it must create itself (a doc a user copies runs for them too).

A block that cannot run here (it needs a bossDB account, a DVID server, a cloud bucket, a
Dask cluster) says so in the markdown with an HTML comment on the line right before its
fence, which names the reason::

    <!-- no-run: needs a bossDB server and token -->
    ```python
    ...

Such blocks are still parsed as Python, and are counted and listed against NO_RUN below, so a
new one is a deliberate change of this file.  Every other block runs.
"""

from __future__ import annotations

import ast
import re
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

PRELUDE = """
import numpy as np
import voxgate
from voxgate.synthetic import synthetic_labels

labels = synthetic_labels((32, 64, 64), cell=(8, 16, 8))        # ids 1..128
seg = voxgate.create("mem://docs/seg", shape=labels.shape, dtype="uint64", chunks=(16, 32, 32),
                     voxel_size=(40, 8, 8), kind="segmentation")
seg[:] = labels
"""

# page (relative to the repository) -> the number of blocks marked no-run on it
NO_RUN: dict[str, int] = {
    "docs/copy.md": 3,  # a SLURM / PBS / Kubernetes cluster (dask-jobqueue, dask-kubernetes)
    "docs/remotes/bossdb.md": 2,  # a bossDB server and token
    "docs/remotes/dvid.md": 1,  # a DVID server
    "docs/services/map_blocks.md": 1,  # a Dask scheduler and an S3 bucket
}

_FENCE = re.compile(r"^(?P<indent>\s{0,3})(?P<fence>```+|~~~+)\s*(?P<info>[^`]*)$")
_NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(?P<reason>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the first code line
    language: str
    code: str
    no_run: str | None  # the reason, for a block marked no-run

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a markdown page, with the no-run reason of each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m["fence"], m["info"].strip()
        start = i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marked = _NO_RUN.match(before)
        language = info.split()[0].lower() if info else ""
        out.append(Block(page, start + 1, language, textwrap.dedent("\n".join(lines[start:j])),
                         marked["reason"] if marked else None))
        i = j + 1
    return out


def python_blocks(page: Path) -> list[Block]:
    return [b for b in code_blocks(page) if b.language in ("python", "py", "python3")]


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


PY_PAGES = [p for p in PAGES if python_blocks(p)]


def _compile(block: Block) -> types.CodeType:
    # padded so a traceback names the markdown line
    return compile("\n" * (block.line - 1) + block.code, str(block.page), "exec")


@pytest.mark.parametrize("page", PY_PAGES, ids=_rel)
def test_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    exec(compile(PRELUDE, "<test_docs PRELUDE>", "exec"), namespace)
    ran = 0
    for block in python_blocks(page):
        if block.no_run is not None:
            continue
        try:
            exec(_compile(block), namespace)
        except Exception as e:
            raise AssertionError(
                f"the block at {block.where} fails: {type(e).__name__}: {e}") from e
        ran += 1
    assert ran + NO_RUN.get(_rel(page), 0) == len(python_blocks(page))


def test_no_run_blocks_are_listed_and_parse() -> None:
    """Blocks that cannot run here are few, named with a reason, and still valid Python."""
    found: dict[str, int] = {}
    listing = []
    for page in PAGES:
        for block in python_blocks(page):
            if block.no_run is None:
                continue
            assert block.no_run, f"{block.where}: a no-run mark must say why (<!-- no-run: ... -->)"
            ast.parse(block.code, filename=block.where)
            found[_rel(page)] = found.get(_rel(page), 0) + 1
            listing.append(f"{block.where}: {block.no_run}")
    print("\n".join(["no-run blocks:", *listing]))
    assert found == NO_RUN, (
        "the python blocks marked no-run changed; list them in NO_RUN of tests/test_docs.py "
        f"(found {found}):\n" + "\n".join(listing)
    )


_ABSOLUTE_LOCAL = re.compile(r"(?:zarr|n5|precomputed|hdf5|tiff|file)://(?:file://)?/|[\"']/data\b")


def test_examples_use_relative_paths() -> None:
    """A block that runs writes where it runs: an absolute local path (/data/...) would write
    outside the test's directory here, and fail for a user who has no such folder."""
    bad = [f"{b.where}: {m.group(0)}" for p in PAGES for b in python_blocks(p)
           if b.no_run is None for m in _ABSOLUTE_LOCAL.finditer(b.code)]
    assert not bad, "use relative paths (zarr://em.zarr, precomputed://seg) in:\n" + "\n".join(bad)


def test_every_python_block_is_seen() -> None:
    """The parser finds the blocks (a fence it missed would silently skip a page)."""
    readme = python_blocks(ROOT / "README.md")
    assert len(readme) >= 2
    assert all("voxgate" in b.code for b in readme)
    fence = re.compile(r"^\s{0,3}```+\s*python\b", re.M)
    fences = sum(len(fence.findall(p.read_text(encoding="utf-8"))) for p in PAGES)
    assert fences == sum(len(python_blocks(p)) for p in PAGES)
