"""The runtime's import graph: every import statement of clipedge's modules, function-local and
TYPE_CHECKING ones included, goes to the same floor or a lower one, and no modules import each other in a
circle (DESIGN.md, Data flow: "Layers, lowest first, each importing only from below")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
# floors, lowest first: a module may import its own floor's modules (without a circle) and lower floors'
FLOORS = [
    ("bundle", {"version", "lazy", "fair", "manifest", "options", "bundle"}),
    ("inputs", {"fetch", "images", "preprocess", "tokenizer", "templates", "decoders"}),
    ("scoring", {"scoring"}),
    ("engines", {"threads", "providers", "openvino_engine", "selection"}),
    ("encoder", {"encoder"}),
    ("labels", {"labels", "label_rules"}),
    ("classifier", {"classifier"}),
    ("tasks", {"pack", "calibrate", "evaluate", "benchmark", "plot"}),
    ("services", {"batch", "serve"}),
    ("cli", {"cli"}),
    ("package", {""}),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(RUNTIME).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The clipedge modules `path` imports, wherever the statement stands."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def floor_of(module: str) -> int:
    inner = module.removeprefix("clipedge").removeprefix(".").split(".")[0]
    for i, (_, members) in enumerate(FLOORS):
        if inner in members:
            return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in {Path(__file__).name}")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (RUNTIME / "clipedge").rglob("*.py")}
    return {name: imports_of(path, name, set(paths)) for name, path in paths.items()}


def test_every_import_goes_down_or_across(graph):
    upward = [
        f"{src} ({FLOORS[floor_of(src)][0]}) imports {dst} ({FLOORS[floor_of(dst)][0]})"
        for src, targets in graph.items()
        for dst in targets
        if floor_of(dst) > floor_of(src)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_the_check_sees_function_local_imports(tmp_path):
    """The walk finds an import inside a function, as the bundle layer's old deferred import of packs."""
    (tmp_path / "clipedge").mkdir()
    source = "def f():\n    from .pack import make_pack\n    return make_pack\n"
    (tmp_path / "clipedge" / "bundle.py").write_text(source)
    found = imports_of(tmp_path / "clipedge" / "bundle.py", "clipedge.bundle", {"clipedge.bundle", "clipedge.pack"})
    assert found == {"clipedge.pack"} and floor_of("clipedge.pack") > floor_of("clipedge.bundle")
