"""What the board runs: the project's modules that the board runtime imports, found by walking
its imports, and the installable archive made of them.

``python -m fpga.board`` on the ZedBoard needs a handful of this project's modules and, from
outside the standard library, numpy (from apt), pyserial (pure Python) and, for the FINN backend,
pynq (on the PYNQ image). Rather than a hand-kept list, :func:`board_modules` parses the entry
modules (:data:`ENTRY`) and follows every import of a first-party package (module level and
inside functions, since the runtime imports some parts lazily), so a module added to the board's
import graph is picked up by the archive, the Python 3.10 / numpy 1.21 check and the armv7l test
alike. :data:`HOST_ONLY` names the modules the walk must never reach (they import onnx, torch or
FINN); reaching one is an error.

    python -m fpga.board.deploy --out ddi-board.tar.gz   # the archive docs/board.md installs
"""

from __future__ import annotations

import argparse
import ast
import gzip
import io
import logging
import sys
import tarfile
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (the folder holding the first-party packages)."""
ENTRY = (
    "fpga.board.__main__",
    "fpga.board.runtime",
    "fpga.board.accel",
    "fpga.board.doctor",
    "fpga.board.weights",
)
"""Modules the board starts from (the command line, and what it imports lazily)."""
HOST_ONLY = ("export.lower", "export.bundle", "export.verify", "export.bench", "train", "host")
"""Modules and packages that must not be on the board's import graph."""
BOARD_THIRD_PARTY = ("numpy", "serial")
"""The only imports from outside the standard library and this project that board modules make
at module level: numpy (apt's python3-numpy) and pyserial (pure Python)."""
BOARD_LAZY = ("pynq", "onnxruntime")
"""Imports made inside functions only: pynq (the PYNQ image; the FINN backend and the doctor) and
onnxruntime (:class:`export.executor.OnnxRuntimeBackend`, the host's reference, which the board
never builds: its backends are numpy programs and the PL)."""


def first_party(root: Path = ROOT) -> set[str]:
    """Top-level packages of the project (folders with ``__init__.py`` at the root)."""
    return {p.parent.name for p in root.glob("*/__init__.py")}


def _module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imports(path: Path, module: str, top_level_only: bool = False) -> set[str]:
    """Every absolute module name ``path`` imports (``from a import b`` gives a and a.b); with
    ``top_level_only``, only the imports run when the module is imported (not in functions)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    nodes = _top_level(tree) if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _top_level(tree: ast.Module):
    """The statements run at import: module level, into if/try blocks, not into functions."""
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            for part in ("body", "orelse", "finalbody", "handlers"):
                todo.extend(getattr(node, part, []))
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)


def third_party(root: Path = ROOT) -> tuple[set[str], set[str]]:
    """(imported at module level, imported only inside functions): the top-level names from
    outside the standard library and this project that the board's modules import."""
    found, others = walk(root=root)
    ours = first_party(root)
    eager: set[str] = set()
    for name, path in found.items():
        for imported in _imports(path, name, top_level_only=True):
            top = imported.split(".")[0]
            if top and top not in ours and top not in sys.stdlib_module_names:
                eager.add(top)
    return eager, others - eager


def walk(entry: tuple[str, ...] = ENTRY, root: Path = ROOT) -> tuple[dict[str, Path], set[str]]:
    """(first-party module name -> file, other top-level names imported) of the board's graph."""
    ours = first_party(root)
    found: dict[str, Path] = {}
    others: set[str] = set()
    todo = list(entry)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _module_file(name, root)
        if path is None:
            continue  # ``from pkg import function``: not a module
        if any(name == h or name.startswith(h + ".") for h in HOST_ONLY):
            raise RuntimeError(f"board code imports host-only module {name!r}")
        found[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        for imported in _imports(path, name):
            top = imported.split(".")[0]
            if top in ours:
                todo.append(imported)
            elif top and top not in sys.stdlib_module_names:
                others.add(top)
    return found, others


def board_modules(root: Path = ROOT) -> list[Path]:
    """The project's files the board runtime needs, relative to ``root``, sorted."""
    found, _ = walk(root=root)
    return sorted(p.relative_to(root) for p in found.values())


def board_files(root: Path = ROOT) -> list[Path]:
    """:func:`board_modules` and the runtime's data files (the systemd unit, the installer)."""
    data = [Path("fpga/board/ddi-board.service"), Path("fpga/board/install.sh")]
    return [*board_modules(root), *data]


def write_archive(out: Path, root: Path = ROOT) -> Path:
    """A ``.tar.gz`` of :func:`board_files` under ``ddi-fpga/`` (what docs/board.md installs)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    # gzip without its own name and time stamp: the same files give the same archive
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel in board_files(root):
            info = tar.gettarinfo(str(root / rel), f"ddi-fpga/{rel.as_posix()}")
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(root / rel, "rb") as f:
                tar.addfile(info, io.BytesIO(f.read()))
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fpga.board.deploy",
        description="List or pack the project's modules that the board runtime imports.",
    )
    parser.add_argument("--out", type=Path, help="write them as a .tar.gz (docs/board.md)")
    args = parser.parse_args(argv)
    if args.out is None:
        for rel in board_files():
            print(rel.as_posix())
        return 0
    path = write_archive(args.out)
    print(f"{path}: {len(board_files())} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
