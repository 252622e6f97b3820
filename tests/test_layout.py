"""The house's shape: no import circle in the package, the executors, the demos or the bench, and
no long module that does not say why it is one."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("async_tasks", "executors", "demos", "bench")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> list[str]:
    """Every module name an import statement names (``from a import b`` names ``a.b`` and
    ``a``), those inside ``if TYPE_CHECKING:`` left out: only annotations read them."""
    names: list[str] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        # Imports are statements: only the blocks of statements are walked, not every
        # expression (most of a module's nodes).
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, block, None)
            if isinstance(children, list):
                stack.extend(children)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the house's modules it imports (at the top or inside a function)."""
    files = {_module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            while name and name not in files:  # `from a.b import c`: c may be a name, not a module
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    """Dependencies point one way: no import circle anywhere in the house, lazy imports included."""
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")


def test_no_test_serves_on_the_default_port() -> None:
    """Every ``serve(...)`` a test calls names its port (a free one; servers started as
    processes get PORT from the test): the fast loop passes while the README's server
    holds port 3000."""
    unported = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name == "serve" and not any(keyword.arg == "port" for keyword in node.keywords):
                unported.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert unported == []


#: Lines a module may hold before it must say, in its opening docstring or comment, why it
#: stays one module (after the sentence's first words, `LONG_REASON`): about 600, the few
#: lines over it no reason to split.
LONG = 620
LONG_REASON = "Why one module:"


def _opening(path: Path, text: str) -> str:
    """A module's purpose: a Python module's docstring, a script's leading comment lines."""
    if path.suffix == ".py":
        return ast.get_docstring(ast.parse(text)) or ""
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_no_module_is_long_without_saying_why() -> None:
    """A module (Python, Lua, SQL) over LONG lines says why it stays one, or it is split by concept."""
    long = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix not in (".py", ".lua", ".sql") or "node_modules" in path.parts:
                continue
            text = path.read_text(encoding="utf-8")
            name = path.relative_to(ROOT).as_posix()
            if text.count("\n") > LONG and LONG_REASON not in _opening(path, text):
                long.append(f"{name} ({text.count(chr(10))} lines)")
    assert long == [], f"split these by concept, or say why not ({LONG_REASON} ...): {long}"
