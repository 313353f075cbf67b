"""The package's shape: no module reaches into another's private names, no import cycles,
and the core never imports a surface at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import taskward

PACKAGE = Path(taskward.__file__).parent
# Surfaces stand on the core's public API; the core never imports them at module level.
SURFACES = ("taskward.tools", "taskward.compat", "taskward.redirect")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _module_level_imports(
    tree: ast.Module, *, typing_too: bool = False
) -> list[ast.Import | ast.ImportFrom]:
    """Imports at module level (not in functions); under `if TYPE_CHECKING:` only if asked."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Import | ast.ImportFrom):
                found.append(stmt)
            elif isinstance(stmt, ast.If):
                typing_only = isinstance(stmt.test, ast.Name) and stmt.test.id == "TYPE_CHECKING"
                if typing_too or not typing_only:
                    walk(stmt.body)
                walk(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                walk(stmt.body)
                for handler in stmt.handlers:
                    walk(handler.body)

    walk(tree.body)
    return found


def _imports(modules: dict[str, ast.Module], *, typing_too: bool = False) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        is_package = _is_package(name)
        edges = graph.setdefault(name, set())
        for node in _module_level_imports(tree, typing_too=typing_too):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                target = _resolve(name, is_package, node)
                targets = [target]
                targets += [
                    f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules
                ]
            edges.update(t for t in targets if t in modules and t != name)
    return graph


def _private_uses(modules: dict[str, ast.Module]) -> list[str]:
    found = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(name, _is_package(name), node)
                found += [
                    f"{name}: imports {alias.name} from {node.module}"
                    for alias in node.names
                    if _is_private(alias.name) and f"{source}.{alias.name}" not in modules
                ]
            elif isinstance(node, ast.Attribute) and _is_private(node.attr):
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    found.append(
                        f"{name}:{node.lineno}: reads .{node.attr} of {ast.unparse(owner)}"
                    )
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    assert _private_uses(_modules()) == []


def test_the_check_finds_a_private_name_read_from_outside() -> None:
    tree = ast.parse("from .manager import _State\nmanager._table.rows\nself._ok\n")
    assert _private_uses({"taskward.x": tree}) == [
        "taskward.x: imports _State from manager",
        "taskward.x:2: reads ._table of manager",
    ]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycle_inside_the_package() -> None:
    """Counting the imports for type checking too: dependencies point one way."""
    graph = _imports(_modules(), typing_too=True)
    # The package's __init__ re-exports everything; importing it is not a dependency.
    graph = {k: {t for t in v if t != "taskward"} for k, v in graph.items()}
    assert _cycles(graph) == []


def test_the_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_core_imports_no_surface_at_import_time() -> None:
    graph = _imports(_modules())
    core = [m for m in graph if m != "taskward" and not m.startswith(SURFACES)]
    leaks = {m: sorted(t for t in graph[m] if t.startswith(SURFACES)) for m in core}
    assert {m: t for m, t in leaks.items() if t} == {}
