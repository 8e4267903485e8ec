"""The shape of the source tree: the folders are the processes, imports point one way.

Read from the sources with ``ast`` (nothing is imported): no import cycle between
modules, no private name imported from another module, the pure core imports only
itself and ``common``, the broker service and its bus consumers never import each
other, no function over 80 lines outside the tests, and every ``type: ignore``
says why (on its line or the line above).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "broker", "station", "vehicle", "ops")
MAX_FUNCTION_LINES = 80
#: command-line tools under broker/ that are clients of a running broker as well (they
#: ask its history socket through the consumers' history client) or register both sides
CLIENT_TOOLS = frozenset(
    {"broker.cli", "broker.sites_cli", "broker.sites_admin", "broker.tariffs_cli"}
)
#: processes of the service's own that follow the bus through the consumers' subscriber
BUS_FOLLOWERS = ("broker.gateway",)
IGNORE = re.compile(r"#\s*type:\s*ignore(\[[^\]]*\])?(?P<rest>.*)$")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def sources() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for top in (*PACKAGES, "tests"):
        for path in sorted((ROOT / top).rglob("*.py")):
            out[module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    return out


def imports(name: str, tree: ast.Module) -> Iterator[tuple[str, ast.ImportFrom | ast.Import]]:
    """``(module imported, node)`` for every import of a project module."""
    known = sources()
    package = name if (ROOT / name.replace(".", "/")).is_dir() else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    yield sub, node
                elif base in known:
                    yield base, node


def test_no_import_cycle() -> None:
    graph = {n: {m for m, _ in imports(n, t)} - {n} for n, (_p, t) in sources().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_private_name_imported_from_another_module() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno} {alias.name} from {node.module}"
        for _name, (path, tree) in sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert found == []


def test_the_core_imports_only_itself_and_common() -> None:
    bad = [
        f"{n} imports {m}"
        for n, (_p, t) in sources().items()
        if n.startswith("broker.core")
        for m, _ in imports(n, t)
        if not m.startswith(("broker.core", "common"))
    ]
    assert bad == []


def test_the_service_and_the_consumers_do_not_import_each_other() -> None:
    bad = []
    for n, (_p, t) in sources().items():
        if not n.startswith("broker.") or n in CLIENT_TOOLS:
            continue
        consumer = n.startswith("broker.consumers")
        for m, _ in imports(n, t):
            if not m.startswith("broker."):
                continue
            if n.startswith(BUS_FOLLOWERS) and m == "broker.consumers.subscriber":
                continue
            if consumer != m.startswith("broker.consumers"):
                bad.append(f"{n} imports {m}")
    assert bad == []


def test_no_function_over_80_lines_outside_the_tests() -> None:
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({size} lines)"
        for name, (path, tree) in sources().items()
        if not name.startswith("tests")
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (size := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_every_type_ignore_says_why() -> None:
    bare = []
    for path, _tree in sources().values():
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = IGNORE.search(line)
            if m is None or m.group("rest").strip():
                continue
            if i > 0 and lines[i - 1].strip().startswith("#"):
                continue
            bare.append(f"{path.relative_to(ROOT)}:{i + 1}")
    assert bare == []
