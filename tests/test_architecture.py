"""The package's import structure: no cycle anywhere, and a monitor core that knows no Flask.

Modules are found by walking the package directory (new modules are checked without editing this
file) and parsed with :mod:`ast`, never imported. Every import counts, at module level and inside
functions, except those under ``if TYPE_CHECKING:`` (they never run). The package a module lives in
is not counted as imported by it (Python loads it first, but that is no dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import flask_celerymon

PACKAGE = "flask_celerymon"
ROOT = Path(flask_celerymon.__file__).parent
#: Top-level distributions the monitor core must not import.
FLASK_DISTRIBUTIONS = ("flask", "werkzeug")


def _modules() -> dict[str, Path]:
    """``{"flask_celerymon.web.api": path, ...}`` for every ``.py`` file of the package."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([PACKAGE, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` except those in an ``if TYPE_CHECKING:`` body."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _imported_names(module: str, path: Path) -> list[str]:
    """Absolute dotted names ``module`` imports (``from x import y`` gives ``x.y``).

    ``x.y`` is a module when ``y`` is one, else a name defined in ``x`` (see :func:`_graph`).
    """
    is_package = path.name == "__init__.py"
    names: list[str] = []
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
            continue
        if node.level:
            base = module.split(".")
            if not is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names.extend(f"{source}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    """Intra-package import edges: module -> the package modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for name in _imported_names(module, path):
            # `from pkg import sub` names a module; `from pkg import func` names pkg itself
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for nxt in sorted(graph[node]):
            if color[nxt] == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if color[nxt] == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for node in sorted(graph):
        if color[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_finds_the_package_modules_and_their_imports():
    graph = _graph()
    assert {"flask_celerymon.extension", "flask_celerymon.monitor.service"} <= set(graph)
    assert "flask_celerymon.errors" in graph["flask_celerymon.extension"]
    # an import inside a function counts
    assert "flask_celerymon.cli" in graph["flask_celerymon.extension"]


def test_a_cycle_is_found_and_named():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_monitor_core_imports_no_flask():
    prefix = f"{PACKAGE}.monitor"
    offenders = []
    for module, path in _modules().items():
        if module != prefix and not module.startswith(prefix + "."):
            continue
        for name in _imported_names(module, path):
            top = name.partition(".")[0]
            if top in FLASK_DISTRIBUTIONS or (top.startswith("flask_") and top != PACKAGE):
                offenders.append(f"{module} imports {name}")
    assert offenders == []


def test_local_processes_run_without_flask_extension_or_web():
    graph = _graph()
    for module in ("flask_celerymon.processes", "flask_celerymon.embedded"):
        path = _modules()[module]
        flask_names = [
            n for n in _imported_names(module, path) if n.partition(".")[0] in FLASK_DISTRIBUTIONS
        ]
        assert flask_names == [], module
        assert "flask_celerymon.extension" not in graph[module], module
        assert not any(t.startswith("flask_celerymon.web") for t in graph[module]), module


def test_nothing_below_the_extension_imports_it_back():
    importers = sorted(m for m, targets in _graph().items() if f"{PACKAGE}.extension" in targets)
    assert importers == [PACKAGE]  # the public API re-exports Celery and current_task


def _names_an_app(node: ast.expr) -> bool:
    """Whether ``node`` reads as a Flask app: ``app``, ``current_app``, ``self._app``, ``x.app``."""
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return name.lower().rstrip("_").endswith("app")


def test_only_appstate_touches_app_extensions():
    # every module finds the app's state through appstate.get_state / find_state; another
    # library's ``extensions`` (wsproto's, on a websocket's protocol object) is not the app's
    offenders = []
    for module, path in _modules().items():
        tree = ast.parse(path.read_text(), str(path))
        uses = [
            n.lineno
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr == "extensions" and _names_an_app(n.value)
        ]
        if module != f"{PACKAGE}.appstate" and uses:
            offenders.append(f"{module}:{uses}")
    assert offenders == []
