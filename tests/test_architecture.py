"""The layers of src/voxgate (docs/architecture.md), checked from the imports of every module.

Every ``import`` and ``from ... import`` is read with ``ast`` (module level, inside functions and
under ``if TYPE_CHECKING:`` alike).  A module may import its own package (unit) and any unit of
a lower layer, never a higher one or another unit of its own layer; and no private name
(``_x``, a private module included) is imported from another unit.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "voxgate"

#: lowest first; a unit is a subpackage or top-level module of voxgate ("voxgate": __init__)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("progress", "lru"),  # progress bars and byte units (rich, imported when drawn); LRU step
    ("errors", "parallel"),  # stdlib / numpy only
    ("synthetic",),  # synthetic test volumes (errors for bad input)
    ("models",),  # built-in ONNX models: resolve, describe, load (onnxruntime); training (torch)
    ("geometry",),
    ("meta",),
    ("storage",),  # key-value access, atomic writes, URL joins, compression suffixes
    ("formats",),  # codecs (bytes and numpy) and the layer readers/writers on storage
    ("remotes",),
    ("registry",),  # URL -> Remote class, open_remote / create_remote
    ("notebook",),  # HTML repr, previews, xarray for Volume (knows it by public attributes)
    ("volume",),
    ("api",),  # voxgate.open / voxgate.create
    ("blockwise",),  # plan blocks, run them on threads / processes / dask, one retry rule
    ("absence",),  # which chunks of a region a store holds, in pieces, a bit per group
    ("services",),
    ("transfer",),
    ("compat",),
    ("relay",),
    ("viewer",),  # voxgate.view: Neuroglancer on any Volumes through an in-process relay
    ("voxgate",),  # the package's public face: re-exports only
    ("cli",),
    ("__main__",),  # python -m voxgate: runs the cli
    ("testing",),
)
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}

#: Violations known and planned away: (importing module, imported module, kind) -> the issue
#: item that removes it, e.g. ("voxgate.formats.layer", "voxgate.registry", "upward"):
#: "issue 10 item 1".  test_known_violations_still_exist fails once one is gone, so the list
#: only shrinks.  Empty since issue 10 items 1-4 landed.
KNOWN: dict[tuple[str, str, str], str] = {}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "voxgate.relay.state"
    target: str  # the imported module, e.g. "voxgate.remotes.base"
    name: str | None  # the imported attribute (None: the module itself)
    line: int


@dataclass(frozen=True)
class Violation:
    imp: Import
    kind: str  # "upward" (to a higher layer or a sibling of the same layer) or "private"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.imp.module, self.imp.target, self.kind)

    def __str__(self) -> str:
        what = self.imp.target + (f".{self.imp.name}" if self.imp.name else "")
        return f"{self.imp.module}:{self.imp.line} imports {what} ({self.kind})"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool, modules: set[str]) -> list[Import]:
    """Every voxgate import in ``source`` (the text of ``module``), wherever it stands."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in modules:
                    found.append(Import(module, sub, None, node.lineno))
                else:
                    found.append(Import(module, target, a.name, node.lineno))
    found.sort(key=lambda i: i.line)
    return [i for i in found if i.target == "voxgate" or i.target.startswith("voxgate.")]


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "voxgate"


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def check(imports: list[Import]) -> list[Violation]:
    out: list[Violation] = []
    for imp in imports:
        src, dst = unit_of(imp.module), unit_of(imp.target)
        if src == dst:
            continue
        if RANK[dst] >= RANK[src]:
            out.append(Violation(imp, "upward"))
        parts = imp.target.split(".")[1:] + ([imp.name] if imp.name else [])
        if any(_private(p) for p in parts):
            out.append(Violation(imp, "private"))
    return out


def scan(root: Path) -> tuple[set[str], list[Import]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in files}
    imports: list[Import] = []
    for p in files:
        imports += imports_of(p.read_text(), module_name(p, root), p.name == "__init__.py",
                              modules)
    return modules, imports


MODULES, IMPORTS = scan(SRC)


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(m) for m in MODULES}
    missing = sorted(units - set(RANK))
    assert not missing, (
        f"{missing} are not in LAYERS of tests/test_architecture.py: place each in its layer "
        "(and in docs/architecture.md)"
    )


def test_the_scan_sees_the_imports() -> None:
    # a guard against a scan that finds nothing and so passes: these imports exist
    pairs = {(i.module, i.target) for i in IMPORTS}
    assert ("voxgate.api", "voxgate.volume") in pairs
    assert ("voxgate.volume.core", "voxgate.remotes.base") in pairs  # under TYPE_CHECKING
    assert len(IMPORTS) > 200


def test_no_new_violations() -> None:
    new = [v for v in check(IMPORTS) if v.key not in KNOWN]
    assert not new, (
        "imports against the layers of docs/architecture.md (a lower layer may not import a "
        "higher one; no private name crosses a package):\n" + "\n".join(map(str, new))
    )


def stale(known: dict[tuple[str, str, str], str],
          violations: list[Violation]) -> dict[tuple[str, str, str], str]:
    """The entries of ``known`` that no violation matches any more."""
    found = {v.key for v in violations}
    return {k: item for k, item in known.items() if k not in found}


def test_known_violations_still_exist() -> None:
    fixed = stale(KNOWN, check(IMPORTS))
    assert not fixed, f"fixed, so remove from KNOWN in tests/test_architecture.py: {fixed}"


# the checker itself, on made-up modules


def _check_source(module: str, source: str, is_package: bool = False) -> list[str]:
    modules = MODULES | {module}
    return [str(v) for v in check(imports_of(source, module, is_package, modules))]


def test_checker_finds_an_upward_import_in_a_function() -> None:
    src = "def f():\n    from ..services import mesh\n    return mesh\n"
    assert _check_source("voxgate.formats.thing", src) == [
        "voxgate.formats.thing:2 imports voxgate.services.mesh (upward)"
    ]


def test_checker_finds_a_type_checking_import_and_a_same_layer_one() -> None:
    src = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from voxgate.volume import Volume\n"
        "from .parallel import run_blocks\n"
    )
    assert _check_source("voxgate.errors", src) == [
        "voxgate.errors:3 imports voxgate.volume.Volume (upward)",
        "voxgate.errors:4 imports voxgate.parallel.run_blocks (upward)",
    ]


def test_checker_finds_private_names_across_packages_only() -> None:
    src = (
        "from ..remotes.memory import _Stored, MemoryRemote\n"
        "from ..remotes import _http\n"
        "from ._common import _helper\n"
    )
    assert _check_source("voxgate.services.thing", src) == [
        "voxgate.services.thing:1 imports voxgate.remotes.memory._Stored (private)",
        "voxgate.services.thing:2 imports voxgate.remotes._http (private)",
    ]


def test_checker_allows_downward_imports() -> None:
    src = "import voxgate\nfrom voxgate.api import open\nfrom ..geometry import Box\n"
    assert _check_source("voxgate.testing.thing", src) == []
    assert _check_source("voxgate.cli", "from . import __version__\n") == []


def test_a_fixed_known_violation_is_reported() -> None:
    imp = Import("voxgate.formats.x", "voxgate.registry", "split_url", 3)
    known = {("voxgate.formats.x", "voxgate.registry", "upward"): "item 1",
             ("voxgate.formats.y", "voxgate.remotes", "upward"): "item 1"}
    assert check([imp]) == [Violation(imp, "upward")]
    assert stale(known, check([imp])) == {("voxgate.formats.y", "voxgate.remotes", "upward"):
                                          "item 1"}
