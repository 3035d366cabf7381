"""The import graph of camstream: no circles, and the layers docs/architecture.md describes.

Read from the source (the AST of every module), so imports under ``if TYPE_CHECKING:`` and
inside functions count as much as the others: a circle that only type checkers or a late call
walk through is still a circle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import camstream

ROOT = Path(camstream.__file__).parent


def module_name(path: Path) -> str:
    parts = ("camstream", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The camstream modules ``name`` imports, anywhere in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                # ``from .. import logs`` imports the submodule (its package is imported
                # first whatever the import: not an edge); ``from ..ws import Connection``
                # takes a name from the package's __init__.
                found.add(submodule if submodule in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order, the first repeated), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(name: str) -> list[str] | None:
        path.append(name)
        on_path.add(name)
        for target in sorted(graph[name]):
            if target in on_path:
                return path[path.index(target):] + [target]
            if target not in done:
                circle = visit(target)
                if circle:
                    return circle
        path.pop()
        on_path.discard(name)
        done.add(name)
        return None

    for name in sorted(graph):
        if name not in done:
            circle = visit(name)
            if circle:
                return circle
    return None


def test_the_graph_is_read() -> None:
    """(The reader itself: a graph it cannot see would have no circle either.)"""
    assert len(MODULES) > 40
    assert "camstream.delivery.viewer" in GRAPH["camstream.delivery.session"]
    assert "camstream.logs" in GRAPH["camstream.delivery.fanout"]  # ``from .. import logs``
    assert "camstream.ws" in GRAPH["camstream.delivery.mjpeg"]  # ``from ..ws import ...``
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circles_among_camstream_modules() -> None:
    circle = find_circle(GRAPH)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def reaches(start: str, graph: dict[str, set[str]] = GRAPH) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


SHARED = {  # used by every layer
    "camstream.checks", "camstream.errors", "camstream.logs", "camstream.ratelimit"
}


@pytest.mark.parametrize(
    ("package", "may_use"),
    [
        # The transport knows nothing of cameras, frames or viewers.
        ("camstream.ws", SHARED),
        # The camera side knows nothing of viewers, HTTP or the transport.
        ("camstream.capture", SHARED | {"camstream.options", "camstream.protocol"}),
        # The delivery side knows nothing of HTTP routes or the Streamer.
        ("camstream.delivery", SHARED | {"camstream.protocol", "camstream.ws",
                                         "camstream.capture"}),
    ],
)
def test_each_layer_imports_only_what_is_below_it(package: str, may_use: set[str]) -> None:
    inside = [name for name in MODULES if name == package or name.startswith(package + ".")]
    for name in inside:
        for target in reaches(name):
            if target == package or target.startswith(package + "."):
                continue
            assert any(target == m or target.startswith(m + ".") for m in may_use), (
                f"{name} reaches {target}"
            )


def test_the_fanout_knows_no_output_and_no_wire_format() -> None:
    """Each output (session, MJPEG stream) hands the fan-out its own wire bytes."""
    outputs = {"camstream.delivery.session", "camstream.delivery.mjpeg"}
    assert not reaches("camstream.delivery.fanout") & (outputs | {"camstream.delivery.viewer"})
    wire_formats = {"camstream.ws", "camstream.ws.frames", "camstream.protocol"}
    assert not GRAPH["camstream.delivery.fanout"] & wire_formats
