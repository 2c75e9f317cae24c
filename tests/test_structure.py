"""The project's import graph, read with ``ast`` from the sources (nothing is imported).

- no cycle between the top-level packages (cifar, train, export, wire, fpga, host,
  measurements, formats), and none between the modules of one package: every import counts, at
  the top of a file or inside a function (only ``if TYPE_CHECKING:`` blocks are left out), so a
  local import cannot hide a cycle;
- no private name (``_x``) imported from a module of another package (subpackages count);
- no project module imports a ``__main__`` module: command lines hold no library code;
- a project import inside a function says why, on its line or the line above its run of
  adjacent imports: a comment naming a heavy or optional dependency (:data:`HEAVY`) that the
  imported module pulls in at import time (through its own top-level imports or those of the
  project modules it imports) and the importing module does not.

The checks run on this tree and, to show that each can fail, on small trees made here.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cifar", "train", "export", "wire", "fpga", "host", "measurements", "formats")
# Third-party libraries that are heavy to import (torch, FINN's stack, plotting) or optional where
# a module runs (an instrument's library, pyserial and pynq on the board, whose runtime must
# import with numpy alone: tests/arm), and numpy where a module checks its version before it
# is imported (the board's entry point, fpga/board/__main__.py). A project import inside a
# function is justified only by one of these, named in a comment, that the imported module
# pulls in and the importing module does not.
HEAVY = (
    "numpy",
    "torch",
    "brevitas",
    "qonnx",
    "finn",
    "onnx",
    "onnxruntime",
    "matplotlib",
    "pyvisa",
    "serial",
    "pynq",
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the project module imported (the longest module prefix of the name)
    name: str | None  # the name taken from it (``from target import name``), if not a module
    line: int
    local: bool  # inside a function
    why: str  # the comment on the import's first line or the line above ("" if none)


class Tree:
    """The project modules under ``root`` and their imports."""

    def __init__(self, root: Path, packages: tuple[str, ...] = PACKAGES) -> None:
        self.root = root
        self.files: dict[str, Path] = {}
        self.is_package: dict[str, bool] = {}
        for package in packages:
            for path in sorted((root / package).rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                init = parts[-1] == "__init__"
                name = ".".join(parts[:-1] if init else parts)
                self.files[name] = path
                self.is_package[name] = init
        self.imports = {name: list(self._imports(name)) for name in self.files}
        self.third_party = {name: self._third_party(name) for name in self.files}

    def package_of(self, module: str) -> str:
        return module if self.is_package[module] else module.rpartition(".")[0]

    def _resolve(self, dotted: str) -> str | None:
        parts = dotted.split(".")
        while parts:
            if ".".join(parts) in self.files:
                return ".".join(parts)
            parts.pop()
        return None

    def _walk(self, module: str) -> Iterator[tuple[ast.stmt, bool, ast.stmt]]:
        """Every import statement of ``module``, whether it is inside a function, and the first
        statement of the run of adjacent import statements it belongs to (a comment above a
        run speaks for all of it); the bodies of ``if TYPE_CHECKING:`` are skipped."""
        tree = ast.parse(self.files[module].read_text(), str(self.files[module]))

        def visit(node: ast.AST, local: bool) -> Iterator[tuple[ast.stmt, bool, ast.stmt]]:
            first: ast.stmt | None = None
            previous: ast.stmt | None = None
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    yield from visit(ast.Module(body=child.orelse, type_ignores=[]), local)
                    continue
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    adjacent = previous is not None and child.lineno == previous.end_lineno + 1
                    first = first if adjacent and first is not None else child
                    previous = child
                    yield child, local, first
                    continue
                first = previous = None
                inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                yield from visit(child, local or inner)

        yield from visit(tree, False)

    def _imports(self, module: str) -> Iterator[Import]:
        lines = self.files[module].read_text().splitlines()
        for node, local, first in self._walk(module):
            spans = (
                lines[node.lineno - 1 : node.end_lineno],
                lines[first.lineno - 2 : first.lineno],
            )
            why = " ".join(line.partition("#")[2] for span in spans for line in span if "#" in line)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if target := self._resolve(alias.name):
                        yield Import(module, target, None, node.lineno, local, why)
                continue
            base = node.module or ""
            if node.level:
                package = self.package_of(module).split(".")
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in self.files:
                    yield Import(module, full, None, node.lineno, local, why)
                elif target := self._resolve(base):
                    yield Import(module, target, alias.name, node.lineno, local, why)

    def _third_party(self, module: str) -> set[str]:
        """The top-level names of the libraries ``module`` imports at import time."""
        found = set()
        for node, local, _ in self._walk(module):
            if local or (isinstance(node, ast.ImportFrom) and node.level):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                top = (name or "").split(".")[0]
                if top not in PACKAGES and top not in sys.stdlib_module_names:
                    found.add(top)
        return found

    def loads(self, module: str) -> set[str]:
        """The libraries importing ``module`` loads: its own top-level imports, those of its
        parent packages' ``__init__`` and of every project module they import, transitively."""
        seen: set[str] = set()
        todo = [module]
        while todo:
            name = todo.pop()
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in self.files and prefix not in seen:
                    seen.add(prefix)
                    todo.extend(imp.target for imp in self.imports[prefix] if not imp.local)
        return set().union(*(self.third_party[name] for name in seen))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def _describe(tree: Tree, component: list[str], key) -> str:
    members = set(component)
    links = sorted(
        f"{imp.source} -> {imp.target} (line {imp.line})"
        for imports in tree.imports.values()
        for imp in imports
        if key(imp.source) in members and key(imp.target) in members
        if key(imp.source) != key(imp.target)
    )
    return f"{' <-> '.join(component)}: {'; '.join(links)}"


def package_cycles(tree: Tree) -> list[str]:
    def top(module: str) -> str:
        return module.split(".")[0]

    edges: dict[str, set[str]] = {}
    for imports in tree.imports.values():
        for imp in imports:
            if top(imp.source) != top(imp.target):
                edges.setdefault(top(imp.source), set()).add(top(imp.target))
    return [_describe(tree, c, top) for c in cycles(edges)]


def module_cycles(tree: Tree) -> list[str]:
    edges: dict[str, set[str]] = {}
    for imports in tree.imports.values():
        for imp in imports:
            same = imp.source.split(".")[0] == imp.target.split(".")[0]
            # A module's import of its own package's __init__ (``from fpga.emulator import
            # EmulatorError``) is not a cycle: the package imports none of its modules then.
            if same and imp.source != imp.target:
                edges.setdefault(imp.source, set()).add(imp.target)
    return [_describe(tree, c, lambda m: m) for c in cycles(edges)]


def private_imports(tree: Tree) -> list[str]:
    return [
        f"{imp.source} (line {imp.line}) takes {imp.name!r} from {imp.target}"
        for imports in tree.imports.values()
        for imp in imports
        if imp.name and imp.name.startswith("_") and not imp.name.startswith("__")
        if tree.package_of(imp.source) != tree.package_of(imp.target)
    ]


def main_imports(tree: Tree) -> list[str]:
    return [
        f"{imp.source} (line {imp.line}) imports {imp.target}"
        for imports in tree.imports.values()
        for imp in imports
        if imp.target.rpartition(".")[2] == "__main__" and imp.source != imp.target
    ]


def unjustified_local_imports(tree: Tree) -> list[str]:
    """Function-level project imports whose comment names no heavy dependency that the
    imported modules load and the importing module does not already load at import time."""
    statements: dict[tuple[str, int], list[Import]] = {}
    for imports in tree.imports.values():
        for imp in imports:
            if imp.local:
                statements.setdefault((imp.source, imp.line), []).append(imp)
    bad = []
    for (source, line), imps in sorted(statements.items()):
        named = {h for h in HEAVY if re.search(rf"\b{h}\b", imps[0].why)}
        pulled = set().union(*(tree.loads(imp.target) for imp in imps)) - tree.loads(source)
        targets = ", ".join(sorted({imp.target for imp in imps}))
        what = f"{source} line {line}: `{targets}` imported in a function"
        if not named:
            bad.append(f"{what} without a comment naming why ({', '.join(HEAVY)})")
        elif not named & pulled:
            loads = ", ".join(sorted(pulled & set(HEAVY))) or "none of them"
            bad.append(f"{what}: the comment names {sorted(named)}; it newly loads {loads}")
    return bad


@pytest.fixture(scope="module")
def tree() -> Tree:
    return Tree(ROOT)


CHECKS = {
    "package cycles": package_cycles,
    "module cycles": module_cycles,
    "private names from another package": private_imports,
    "imports of __main__ modules": main_imports,
    "function-level project imports without a reason": unjustified_local_imports,
}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_project_passes(tree, check):
    found = CHECKS[check](tree)
    assert not found, f"{check}:\n" + "\n".join(found)


def test_the_tree_is_read(tree):
    assert {"train.model", "fpga.board.runtime", "measurements.reproduce"} <= set(tree.files)
    assert "torch" in tree.loads("train.model")
    assert "torch" not in tree.loads("export.executor")


# --- each check fails where it should ---------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Tree:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Tree(root, ("a", "b"))


def test_each_check_finds_its_fault(tmp_path):
    bad = _write(
        tmp_path,
        {
            "a/__init__.py": "",
            "a/__main__.py": "def helper(): pass\n",
            "a/x.py": "import b.y\nfrom a.__main__ import helper\n",
            "a/z.py": "def f():\n    from a import w\n",
            "a/w.py": "from a.z import f\n",
            "b/__init__.py": "",
            "b/y.py": "from a.x import _private\n",
            "b/heavy.py": "import torch\n",
            "b/light.py": "import json\n",
            "b/already.py": "import torch\n\ndef f():\n    from b import heavy  # torch\n",
            "b/use.py": (
                "def f():\n    from b import heavy\n\n"
                "def g():\n    # torch: heavy\n    from b import light\n\n"
                "def h():\n    from b import heavy  # torch: heavy\n\n"
                "def k():\n    # torch: heavy\n    import json\n    from b import heavy\n"
            ),
        },
    )
    assert package_cycles(bad) == [
        "a <-> b: a.x -> b.y (line 1); b.y -> a.x (line 1)",
    ]
    assert [c.split(":")[0] for c in module_cycles(bad)] == ["a.w <-> a.z"]
    assert private_imports(bad) == ["b.y (line 1) takes '_private' from a.x"]
    assert main_imports(bad) == ["a.x (line 2) imports a.__main__"]
    found = unjustified_local_imports(bad)
    # a.z (no comment), b.use f (no comment), g (names torch, loads none), b.already (torch is
    # loaded already)
    assert len(found) == 4, found
    assert any("b.use line 6" in f and "loads none of them" in f for f in found)
    assert any(f.startswith("b.already line 4") for f in found)
    assert not any("line 9" in f or "line 14" in f for f in found)  # h, k: justified
