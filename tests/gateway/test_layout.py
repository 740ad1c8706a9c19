"""The gateway's modules all import, and none of them imports another that (through others) imports it back.

A cycle between modules works until someone reorders two imports, and then fails at start-up with a
half-initialised module; it also means two modules cannot be understood apart. The graph is read from the
source with ``ast``, so it sees every module, including ones no test happens to import first.

What counts as an edge: an import statement at a module's top level (also inside a top-level ``try``), to
the module whose names it takes (``from gateway.storage.keys import MediaRef`` depends on
gateway.storage.keys; ``from gateway import metrics`` on gateway.metrics; ``from gateway import create_app``
on gateway itself). Left out, on purpose:
- imports inside functions: they run when the function is called, after every module has loaded, and the
  gateway uses them deliberately to load something only where it is needed (the S3 SDK for STORAGE=minio,
  the Flask blueprints inside ``create_app``, the Telegram parser for a Telegram spool entry);
- imports under ``if TYPE_CHECKING:``: never executed, they exist for the type checker only;
- the package ``__init__`` Python runs before a module inside it: a package that imports its own modules
  (``gateway`` imports ``gateway.config``) is the usual shape and works as long as those modules take
  nothing from the package, which an explicit ``from gateway import ...`` in them would show as a cycle.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import gateway

GATEWAY = Path(gateway.__file__).resolve().parent


def gateway_modules() -> dict[str, Path]:
    """Every module of the gateway package, by dotted name."""
    found = {"gateway": GATEWAY / "__init__.py"}
    for info in pkgutil.walk_packages([str(GATEWAY)], prefix="gateway."):
        path = GATEWAY.joinpath(*info.name.split(".")[1:])
        found[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return found


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.Try):
            found += [n for block in (node.body, node.orelse, node.finalbody) for n in block
                      if isinstance(n, (ast.Import, ast.ImportFrom))]
        # `if TYPE_CHECKING:` and every other compound statement: not followed (see the module docstring).
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the gateway modules it makes Python load when it is imported."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                assert node.level == 0, f"{name}: relative import (the gateway uses absolute imports only)"
                base = node.module or ""
                # `from gateway import metrics` loads gateway.metrics; `from gateway.x import y` loads gateway.x.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            edges |= {target for target in targets if target in modules}
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first == last), or None when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_every_gateway_module_imports() -> None:
    for name in gateway_modules():
        importlib.import_module(name)


def test_no_import_cycle_between_gateway_modules() -> None:
    cycle = find_cycle(import_graph(gateway_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    """The checker itself: a loop of two and a longer one are found; a chain is not a cycle."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_follows_the_layout() -> None:
    """A few edges that must be seen, so a parsing mistake cannot make the graph trivially acyclic."""
    graph = import_graph(gateway_modules())
    assert "gateway.storage.keys" in graph["gateway.storage.filesystem"]
    assert "gateway.metrics" in graph["gateway.processing"]  # `from gateway import metrics`
    assert not any(m.startswith("gateway.storage.s3") for m in graph["gateway.storage.factory"])  # lazy, in a function


REPO = GATEWAY.parent
# What each may not import, anywhere in a file (inside functions too): the product runs without bench/
# and tests/ (images copy neither), and the benchmarks run without the test suite.
FORBIDDEN = {
    "bench": ("tests",),
    **{package: ("tests", "bench") for package in
       ("gateway", "audio_service", "vision_service", "mediabot", "face_model", "model_repository")},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level package of every import in a file, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_product_and_benchmarks_never_import_what_they_ship_without() -> None:
    offending = [
        f"{path.relative_to(REPO)} imports {package}"
        for owner, forbidden in FORBIDDEN.items()
        for path in sorted((REPO / owner).rglob("*.py"))
        for package in sorted(imported_packages(path) & set(forbidden))
    ]
    assert offending == []


def test_the_import_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from tests.fixtures import nats\n    import bench.support\n")
    assert imported_packages(module) == {"os", "tests", "bench"}
