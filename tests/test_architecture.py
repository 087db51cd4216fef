"""The house's layout, checked from the source: imports form no cycle, Ray and MLflow stay in their adapters, and no
file grows past what one reads in a sitting.

Imports are read with `ast`, those inside functions included: a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "platform"
PACKAGE = SOURCE / "sdakd"
# Layers that run and test without any framework: the engine and everything it is built from.
FRAMEWORK_FREE = ("engine", "methods", "models", "losses", "data", "evaluate")
ADAPTER_OF = {"ray": "sdakd.ray_adapter", "mlflow": "sdakd.tracking"}  # the one package that may import each
MAX_LINES, MAX_PIPELINE_LINES = 300, 150


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imported_names(name: str) -> set[str]:
    """Every module name an import statement of `name` asks for (`from a import b` may name a module a.b)."""
    found: set[str] = set()
    package = name if is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def project_edges(name: str) -> set[str]:
    """Project modules whose code runs because `name` imports: each target and the packages above it, except the
    packages that hold `name` itself (Python has run those before `name`)."""
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)} | {name}
    edges = set()
    for target in imported_names(name):
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in MODULES and candidate not in own:
                edges.add(candidate)
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walker_sees_lazy_imports_and_reports_a_cycle():
    """The checker itself: an import inside a function counts, and a two-module loop is found."""
    assert "sdakd.ray_adapter.ablate" in project_edges("sdakd.commands.experiments")  # cli imports its handlers lazily
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_modules():
    graph = {name: project_edges(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("framework", sorted(ADAPTER_OF))
def test_frameworks_are_imported_only_by_their_adapter(framework):
    adapter = ADAPTER_OF[framework]
    users = sorted(
        name
        for name in MODULES
        if any(t == framework or t.startswith(framework + ".") for t in imported_names(name))
    )
    assert users, f"no module imports {framework}: the check would pass vacuously"
    outside = [name for name in users if not (name == adapter or name.startswith(adapter + "."))]
    assert outside == [], f"{framework} imported outside {adapter}"
    framework_free = [n for n in users if n.split(".")[1] in FRAMEWORK_FREE]
    assert framework_free == []


def test_files_stay_short():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
    assert len((PACKAGE / "pipeline.py").read_text().splitlines()) < MAX_PIPELINE_LINES
