"""Imports point down the layers of docs/architecture.md, and never in a circle.

The test reads every module of the package with ``ast`` (imports inside functions and
under ``TYPE_CHECKING`` included, so a cycle cannot hide in a function) and maps each
module to its layer with :data:`LAYERS`. It fails on:

* an import of a higher layer (naming the file, the line and both layers);
* a module the table does not place (a new module must be given a layer);
* a package ``__init__`` that imports, at load time, a layer above its package's lowest
  module (importing ``warehouse.access`` must not load the ``Warehouse``);
* a shim at an old path that does more than re-export its new home, or a module of the
  package that imports a shim instead of the new home;
* a cycle between the top-level parts (modules and subpackages) of the package, even
  one that points down the layers;
* a layer table in docs/architecture.md that differs from :data:`LAYERS`.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

import prefect_genopt

PACKAGE = "prefect_genopt"
SOURCE = Path(prefect_genopt.__file__).parent
DOC = SOURCE.parent / "docs" / "architecture.md"

LAYER_NAMES = {
    1: "base",
    2: "routing state",
    3: "run",
    4: "warehouse",
    5: "proposals",
    6: "replay",
    7: "optimize",
    8: "rollout",
    9: "flows and CLI",
}

#: Module or package -> layer (a package entry covers its modules; the longest entry
#: wins). A package's own ``__init__`` is ``<package>.__init__``. Kept equal to the table
#: in docs/architecture.md (tested below).
LAYERS: dict[str, int] = {
    # 1 base: settings, values, record format, errors, attribute names, storage primitives
    "prefect_genopt.settings": 1,
    "prefect_genopt.tunables": 1,
    "prefect_genopt.records": 1,
    "prefect_genopt.errors": 1,
    "prefect_genopt.semconv": 1,
    "prefect_genopt.redaction": 1,
    "prefect_genopt.locks": 1,
    "prefect_genopt._litellm": 1,
    "prefect_genopt._lazy": 1,
    "prefect_genopt.events": 1,
    "prefect_genopt.local_model": 1,
    "prefect_genopt.warehouse.access": 1,
    "prefect_genopt.warehouse.schema": 1,
    # 2 routing state: what a pipeline run reads to pick its param set
    "prefect_genopt.rollout.__init__": 2,
    "prefect_genopt.rollout.plan": 2,
    "prefect_genopt.rollout.analysis": 2,
    "prefect_genopt.rollout.state": 2,
    "prefect_genopt.rollout.store": 2,
    "prefect_genopt.rollout.router": 2,
    # 3 run: what runs inside a pipeline run
    "prefect_genopt.context": 3,
    "prefect_genopt.tracing": 3,
    "prefect_genopt.llm_spans": 3,
    "prefect_genopt.spool": 3,
    "prefect_genopt.incidents": 3,
    "prefect_genopt.pipeline": 3,
    "prefect_genopt.feedback": 3,
    "prefect_genopt.replay.steps": 3,
    "prefect_genopt.replay.checks": 3,
    # 4 warehouse, and the stable param set (the routing pointer, else the warehouse's runs)
    "prefect_genopt.warehouse": 4,
    "prefect_genopt.rollout.stable": 4,
    # 5 proposals and ratings
    "prefect_genopt.proposals": 5,
    # 6 replay: experiences and the replay gate
    "prefect_genopt.replay": 6,
    # 7 optimize
    "prefect_genopt.optimize": 7,
    # 8 rollout: the controller and its report; the HTML report of the whole loop
    "prefect_genopt.rollout.controller": 8,
    "prefect_genopt.rollout.report": 8,
    "prefect_genopt.rollout.schedule": 8,
    "prefect_genopt.rollout.artifacts": 8,
    "prefect_genopt.report": 8,  # genopt report's HTML report
    # 9 flows and the CLI, and what only users of the library import
    "prefect_genopt.optimize.flow": 9,
    "prefect_genopt.rollout.flow": 9,
    "prefect_genopt.cli": 9,
    "prefect_genopt.testing": 9,
    "prefect_genopt.__init__": 9,
}

#: Old paths kept as thin re-exports of a module that moved (old path -> new home). They
#: are exempt from the layer rule and may import nothing but their new home; the package
#: itself imports the new home.
SHIMS: dict[str, str] = {
    # proposals became a package of their own (layer 5), used by replay and rollout too
    "prefect_genopt.optimize.proposals": "prefect_genopt.proposals.proposals",
    # ratings moved with them
    "prefect_genopt.optimize.ratings": "prefect_genopt.proposals.ratings",
}


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the package."""

    source: str  # importing module (``pkg.__init__`` for a package)
    target: str  # imported module (``pkg.__init__`` for a package)
    path: Path
    line: int
    eager: bool  # at module level, outside ``if TYPE_CHECKING:``


def _module_name(path: Path) -> str:
    rel = path.relative_to(SOURCE.parent).with_suffix("")
    return ".".join(rel.parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(SOURCE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return name.endswith(".__init__")


def _as_module(dotted: str) -> str | None:
    """The module id of an importable dotted name (a package -> its ``__init__``)."""
    if f"{dotted}.__init__" in MODULES:
        return f"{dotted}.__init__"
    return dotted if dotted in MODULES else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        found = [_as_module(a.name) for a in node.names]
        return [t for t in found if t]
    if node.level:
        base = module.split(".")[:-1]  # the package the module is in (``__init__`` too)
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    if not prefix.startswith(PACKAGE):
        return []
    out = []
    for alias in node.names:
        submodule = _as_module(f"{prefix}.{alias.name}")  # from package import module
        out.append(submodule or _as_module(prefix))
    return [t for t in out if t]


def _walk(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _targets(module, child):
                    found.append(Import(module, target, path, child.lineno, eager))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), eager)
            else:
                visit(child, eager)

    visit(tree, True)
    return found


IMPORTS: list[Import] = [imp for m, p in MODULES.items() for imp in _walk(m, p)]


def layer_of(module: str) -> int | None:
    """The module's layer: its longest entry in :data:`LAYERS`, or None."""
    best = None
    for key in LAYERS:
        if (module == key or module.startswith(f"{key}.")) and (
            best is None or len(key) > len(best)
        ):
            best = key
    return LAYERS[best] if best is not None else None


def _where(imp: Import) -> str:
    return f"{imp.path.relative_to(SOURCE.parent)}:{imp.line}"


def _named(layer: int | None) -> str:
    return f"layer {layer} ({LAYER_NAMES[layer]})" if layer is not None else "no layer"


def _top(module: str) -> str:
    """The top-level part of the package a module belongs to (``rollout``, ``pipeline``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or parts[1] != "__init__" else "(package)"


def test_the_walker_sees_function_level_and_type_checking_imports() -> None:
    # the package init imports its public names only under TYPE_CHECKING...
    init = [i for i in IMPORTS if i.source == "prefect_genopt.__init__"]
    assert any(i.target == "prefect_genopt.tunables" and not i.eager for i in init)
    # ...and a run reads the routing state through an import inside a function
    pipeline = [i for i in IMPORTS if i.source == "prefect_genopt.pipeline"]
    assert any(i.target == "prefect_genopt.rollout.router" and not i.eager for i in pipeline)


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in MODULES if layer_of(m) is None)
    assert not unplaced, (
        f"modules without a layer: {unplaced}; add them to LAYERS here and to the table in "
        "docs/architecture.md"
    )


def test_every_table_entry_places_a_module() -> None:
    stale = sorted(k for k in LAYERS if not any(m == k or m.startswith(f"{k}.") for m in MODULES))
    assert not stale, f"LAYERS entries that match no module: {stale}"


def test_imports_point_down() -> None:
    upward = []
    for imp in IMPORTS:
        if imp.source in SHIMS:
            continue
        mine, theirs = layer_of(imp.source), layer_of(imp.target)
        if mine is not None and theirs is not None and theirs > mine:
            upward.append(
                f"{_where(imp)}: {imp.source} ({_named(mine)}) imports {imp.target} "
                f"({_named(theirs)})"
            )
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_package_inits_load_nothing_above_their_lowest_module() -> None:
    lowest: dict[str, int] = {}
    for module in MODULES:
        package = module.rsplit(".", 1)[0]
        layer = layer_of(module)
        while package.startswith(PACKAGE) and layer is not None:
            key = f"{package}.__init__"
            lowest[key] = min(lowest.get(key, layer), layer)
            package = package.rsplit(".", 1)[0] if "." in package else ""
    heavy = [
        f"{_where(imp)}: {imp.source} loads {imp.target} ({_named(layer_of(imp.target))}) "
        f"while its package holds {_named(lowest[imp.source])} modules: import it on first "
        "use (prefect_genopt._lazy.attach)"
        for imp in IMPORTS
        if _is_package(imp.source)
        and imp.eager
        and (layer_of(imp.target) or 0) > lowest[imp.source]
    ]
    assert not heavy, "\n".join(heavy)


def test_shims_only_reexport_and_nothing_inside_uses_them() -> None:
    for old, new in SHIMS.items():
        assert old in MODULES and new in MODULES, (old, new)
        targets = {i.target for i in IMPORTS if i.source == old}
        assert targets == {new}, f"{old} must only re-export {new}, imports {targets}"
    through = [
        f"{_where(i)}: {i.source} imports the shim {i.target}; import {SHIMS[i.target]}"
        for i in IMPORTS
        if i.target in SHIMS and i.source not in SHIMS
    ]
    assert not through, "\n".join(through)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return out


def test_no_cycles_between_top_level_parts() -> None:
    # A part is a top-level module or subpackage, whatever layers its modules sit in:
    # ``pipeline -> replay.steps`` with ``replay.gate -> pipeline`` is a cycle too.
    edges: dict[str, set[str]] = defaultdict(set)
    example: dict[tuple[str, str], Import] = {}
    for imp in IMPORTS:
        a, b = _top(imp.source), _top(imp.target)
        if a != b:
            edges[a].add(b)
            example.setdefault((a, b), imp)
    found = _cycles(edges)
    lines = [
        f"  {a} -> {b}: {_where(imp)} imports {imp.target}"
        for component in found
        for (a, b), imp in sorted(example.items())
        if a in component and b in component
    ]
    assert not found, f"import cycles between parts {found}:\n" + "\n".join(lines)


def test_the_checker_finds_an_upward_import_and_a_cycle() -> None:
    assert layer_of("prefect_genopt.warehouse.ingest") == 4
    assert layer_of("prefect_genopt.warehouse.access") == 1
    assert layer_of("prefect_genopt.rollout.flow") == 9
    assert layer_of("prefect_genopt.new_module") is None
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    absolute = ast.parse("from prefect_genopt.optimize import runner, optimize").body[0]
    assert isinstance(absolute, ast.ImportFrom)
    assert _targets("prefect_genopt.feedback", absolute) == [
        "prefect_genopt.optimize.runner",  # a submodule
        "prefect_genopt.optimize.__init__",  # a name of the package
    ]
    relative = ast.parse("from ..proposals import rate").body[0]
    assert isinstance(relative, ast.ImportFrom)
    assert _targets("prefect_genopt.optimize.__init__", relative) == [
        "prefect_genopt.proposals.__init__"
    ]


def _doc_table() -> dict[str, int]:
    """``prefect_genopt.<module>`` -> layer, from the layer table of docs/architecture.md."""
    out: dict[str, int] = {}
    section = DOC.read_text().split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        row = re.match(r"^\|\s*(\d)\s*\|[^|]*\|(.*)\|\s*$", line)
        if row:
            for name in re.findall(r"`([a-z_.]+)`", row.group(2)):
                out[f"{PACKAGE}.{name}"] = int(row.group(1))
    return out


@pytest.mark.skipif(not DOC.exists(), reason="docs/architecture.md is not in this checkout")
def test_the_architecture_doc_shows_the_same_layers() -> None:
    assert _doc_table() == LAYERS
