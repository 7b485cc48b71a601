"""The shape of the package, read from its source with ast: who imports whom.

Every import counts, at module level or inside a function (a late import is still a
dependency). The rules: no import cycle, ctypes only in henbackup/linux.py (the one room of
libc calls), and the worker needs nothing of the master.
"""

from __future__ import annotations

import ast
from pathlib import Path

import henbackup

PACKAGE = Path(henbackup.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, modules: set[str]) -> set[str]:
    """Every module `name` imports: ours by their most precise module, others by name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the modules it imports (any module, ours or not)."""
    paths = sources()
    return {name: imported(name, path, set(paths)) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan), or of a module
    that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node] & graph.keys()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_reader_sees_late_typing_and_relative_imports(tmp_path):
    source = tmp_path / "watch.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import spec\n"
        "from ..master.specs import diff\n"
        "if TYPE_CHECKING:\n"
        "    from henbackup.loop import Loop\n"
        "def later():\n"
        "    import ctypes.util\n"
    )
    modules = {"henbackup.worker.spec", "henbackup.master.specs", "henbackup.loop"}
    assert imported("henbackup.worker.watch", source, modules) == {
        "typing",
        "henbackup.worker.spec",
        "henbackup.master.specs",
        "henbackup.loop",
        "ctypes.util",
    }


def test_the_cycle_finder_finds_circles_and_self_imports_only():
    graph = {"a": {"b", "os"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert sorted(map(sorted, cycles(graph))) == [["a", "b", "c"], ["d"]]


def test_no_module_imports_back_into_a_circle():
    assert [sorted(c) for c in cycles(import_graph())] == []


def test_only_linux_py_calls_libc_through_ctypes():
    users = {
        name
        for name, targets in import_graph().items()
        if any(t == "ctypes" or t.startswith("ctypes.") for t in targets)
    }
    assert users == {"henbackup.linux"}


def test_the_worker_imports_nothing_of_the_master():
    crossings = {
        (name, target)
        for name, targets in import_graph().items()
        if name == "henbackup.worker" or name.startswith("henbackup.worker.")
        for target in targets
        if target == "henbackup.master" or target.startswith("henbackup.master.")
    }
    assert crossings == set()
