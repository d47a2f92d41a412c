"""The package's import graph, read with ``ast``: no module imports a private name (or a private module) of
another subpackage, and no import circle - counting imports inside functions, which only delay a circle."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "probes"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _unit(module: str) -> str:
    """The subpackage a module belongs to (``probes.train.linear`` -> ``probes.train``); top-level modules
    (``probes.errors``, ``probes._version``) are shared by every subpackage."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@functools.cache
def _parsed() -> list[tuple[str, str, list[str], int]]:
    return _imports(_modules())


def _imports(modules: dict[str, Path]) -> list[tuple[str, str, list[str], int]]:
    """``(importer, imported module, imported names, line)``; TYPE_CHECKING blocks are not imports."""
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found += [
                    (module, a.name, [], node.lineno) for a in node.names if a.name.startswith("probes")
                ]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                if base.startswith("probes"):
                    found.append((module, base.rstrip("."), [a.name for a in node.names], node.lineno))
    return found


def test_no_module_imports_a_private_name_of_another_subpackage() -> None:
    # The check itself sees what it must refuse (generate/cli.py once reached into probes/cli.py like this):
    assert _unit("probes.generate.cli") != _unit("probes.cli") and _is_private("_errors")
    bad = []
    for importer, imported, names, line in _parsed():
        if _unit(importer) == _unit(imported):
            continue  # a subpackage's own private names are its business
        private = [p for p in imported.split(".")[2:] if _is_private(p)] + [
            n for n in names if _is_private(n)
        ]
        if private:
            bad.append(f"{importer}:{line} imports {', '.join(private)} from {imported}")
    assert bad == [], "cross-subpackage private imports:\n" + "\n".join(bad)


def test_the_import_graph_has_no_circle() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for importer, imported, names, _ in _parsed():
        submodules = [f"{imported}.{n}" for n in names if f"{imported}.{n}" in modules]
        targets = submodules if submodules and len(submodules) == len(names) else [imported]
        graph[importer] |= {t for t in targets if t in modules and t != importer}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)
