"""The package's shape: imports go one way, down the layers, and loading the plugin is light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest_pgmig


def test_loading_the_plugin_imports_no_driver() -> None:
    code = (
        "import sys, pytest, pytest_pgmig.plugin\n"
        "heavy = [m for m in ('asyncpg', 'pytest_pgmig.isolation.schemas', "
        "'pytest_pgmig.servers.embedded') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


PACKAGE = Path(pytest_pgmig.__file__).parent
# top to bottom: a module may import from its own subpackage and from any lower layer
LAYERS = {
    "__init__": 7,
    "pgdbm_fixtures": 6,
    "plugin": 5,
    "checks": 4,
    "compat": 4,
    "isolation": 3,
    "alembic": 2,
    "engine": 1,
    "servers": 1,
    "errors": 0,
    "runtime": 0,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports: at the top, in
    functions and under TYPE_CHECKING alike."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*here[: len(here) - node.level + 1], *filter(None, [base])])
                # `from package import module` imports the module; other names the package
                targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets += [base] if len(targets) < len(node.names) else []
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("pytest_pgmig.") and target != module:
                    graph[module].add(target)
    return graph


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    assert part in LAYERS, f"{module}: give its subpackage a layer in LAYERS"
    return LAYERS[part]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_in_a_circle() -> None:
    assert circles(import_graph()) == []


def test_imports_go_down_the_layers_only() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if module.split(".")[:2] != target.split(".")[:2] and _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_import_check_sees_a_circle_and_an_upward_import() -> None:
    graph = {
        "pytest_pgmig.engine.a": {"pytest_pgmig.plugin.b"},
        "pytest_pgmig.plugin.b": {"pytest_pgmig.engine.a"},
    }
    assert circles(graph) == [["pytest_pgmig.engine.a", "pytest_pgmig.plugin.b"]]
    assert _layer("pytest_pgmig.plugin.b") > _layer("pytest_pgmig.engine.a")


def test_every_isolation_the_option_accepts_is_a_strategy() -> None:
    from pytest_pgmig.isolation.choice import STRATEGIES
    from pytest_pgmig.plugin.settings import ISOLATIONS

    assert set(STRATEGIES) == set(ISOLATIONS)
