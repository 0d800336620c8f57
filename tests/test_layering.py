"""No import circle among the library's modules, and every module imports on its own.

The imports are read from the source with ``ast`` (every ``import`` statement, at module
level or inside a function, except under ``if TYPE_CHECKING:``), so a circle that only
closes at call time is found too. Importing ``a.b.c`` also imports the packages ``a.b``
and ``a`` above it: that edge counts, except from a module inside that package (a
package's ``__init__`` importing its own submodules is not a circle). The top-level
``lookahead_jax/__init__.py`` imports its modules lazily (``__getattr__``) and is left out.
"""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lookahead_jax"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, known: set) -> set:
    """The library modules ``path`` (module ``name``) imports."""
    is_pkg = path.name == "__init__.py"
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)   # from pkg import module
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    out = set()
    for target in found:
        if not target.startswith("lookahead_jax"):
            continue
        parts = target.split(".")
        for k in range(2, len(parts) + 1):          # the module and its packages
            m = ".".join(parts[:k])
            if m in known and m != name and not name.startswith(m + "."):
                out.add(m)
    return out


def import_graph() -> dict[str, set]:
    mods = _modules()
    known = set(mods) - {"lookahead_jax"}
    return {m: _imports(p, m, known) for m, p in mods.items() if m in known}


def find_cycle(graph: dict[str, set]):
    """One import circle as a list of modules (first == last), or ``None``."""
    state, stack = {}, []

    def dfs(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = dfs(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = dfs(m)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_circle_and_a_clean_graph_passes():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    assert "lookahead_jax.loop" in graph and "lookahead_jax.resume" in graph["lookahead_jax.loop"]


def test_no_import_circle_among_library_modules():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


@pytest.mark.parametrize("name", sorted(set(_modules()) - {"lookahead_jax"}))
def test_every_library_module_imports(name):
    importlib.import_module(name)
