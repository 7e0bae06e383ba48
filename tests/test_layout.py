"""The shape of helpers/: dependencies run one way, with no cycle, and every folder says its job."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

HELPERS = REPO_ROOT / "helpers"
BOTTOM = {"helpers.errors", "helpers.run", "helpers.events"}
TOP = "helpers.notebook"  # display, widgets, parameters: nothing else may import it


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The helpers modules that ``path`` imports (anywhere in the file, lazily or not)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path.name}: use absolute imports (helpers.…)"
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in HELPERS.rglob("*.py")}
    return {
        name: {t for t in imports_of(path) if t in files and t != name}
        for name, path in files.items()
    }


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_helpers_have_no_import_cycle() -> None:
    assert find_cycle(graph()) is None


def test_dependencies_run_downwards() -> None:
    edges = graph()
    for name, targets in edges.items():
        if name in BOTTOM:
            upward = {t for t in targets if t not in BOTTOM}
            assert not upward, f"{name} is at the bottom but imports {upward}"
        if not name.startswith(TOP):
            shown = {t for t in targets if t.startswith(TOP)}
            assert not shown, f"{name} imports the notebook display layer {shown}"
    for path in HELPERS.rglob("*.py"):
        text = path.read_text()
        assert "from tests" not in text and "import tests" not in text, f"{path} imports tests"


def test_every_folder_says_what_it_is_for() -> None:
    for init in HELPERS.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(REPO_ROOT)} needs a docstring"
    folders = {p.parent for p in HELPERS.rglob("*.py")}
    assert all((f / "__init__.py").exists() for f in folders)
