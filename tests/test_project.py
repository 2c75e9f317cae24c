"""The project's own descriptions agree with the tree: console scripts, README's Layout, docs
figures that quote a recorded benchmark."""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))


def _command_lines() -> set[str]:
    """Modules of the project packages that run as a program and have a ``main``."""
    found = set()
    for package in PACKAGES:
        if package == "tests":
            continue
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            has_main = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
            runs = any(
                isinstance(n, ast.If) and "__name__" in ast.unparse(n.test) for n in tree.body
            )
            if has_main and runs:
                found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_target_exists(name):
    assert name.startswith("ddi-"), f"console script {name!r}: name it ddi-..."
    module, _, attr = SCRIPTS[name].partition(":")
    assert attr == "main", SCRIPTS[name]
    assert callable(getattr(importlib.import_module(module), attr))


def test_every_command_line_has_a_console_script():
    targets = {target.partition(":")[0] for target in SCRIPTS.values()}
    assert len(targets) == len(SCRIPTS), "two scripts name one command line"
    missing = sorted(_command_lines() - targets)
    assert not missing, f"command lines without a [project.scripts] entry: {missing}"


def _layout_entries() -> set[str]:
    """The top-level names README's Layout section lists (``name/`` at the start of a line)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "README's Layout section has no code block"
    return {m.group(1) for m in re.finditer(r"^(\S+)/\s", block.group(1), re.M)}


def test_the_paths_readme_layout_names_exist():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("\n## Layout\n", 1)[1].split("```", 2)[1]
    named = re.findall(r"\(([\w/]+(?:\.py)?)\)", block)
    assert named, "README's Layout names no paths in parentheses"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"README's Layout names paths that do not exist: {missing}"
    named_files = re.findall(r"\b([\w/]+\.py)\b", block)
    assert all((ROOT / path).is_file() for path in named_files), named_files


def test_readme_layout_matches_the_tree():
    listed = _layout_entries()
    missing = sorted(name for name in listed if not (ROOT / name).is_dir())
    assert not missing, f"README's Layout lists folders that do not exist: {missing}"
    unlisted = sorted({*PACKAGES, "docs"} - listed)
    assert not unlisted, f"top-level packages missing from README's Layout: {unlisted}"


def test_every_top_level_package_is_installed():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    declared = {pattern.rstrip("*") for pattern in include}
    assert declared == set(PACKAGES) - {"tests"}


def test_protocol_page_quotes_the_recorded_link_benchmark():
    record = json.loads((ROOT / "measurements" / "bench" / "link.json").read_text())
    page = (ROOT / "docs" / "protocol.md").read_text()
    round_trip = re.search(r"gave ([0-9.]+) ms per STATUS round\s+trip", page)
    assert round_trip, "docs/protocol.md no longer quotes the STATUS round trip"
    assert float(round_trip.group(1)) == pytest.approx(
        record["status_round_trip_s"] * 1e3, abs=0.005
    ), "docs/protocol.md's round trip differs from measurements/bench/link.json"
    overhead = re.search(r"\(met: ([0-9.]+) %\)", page)
    assert overhead and float(overhead.group(1)) == pytest.approx(
        record["clean_overhead"] * 100, abs=0.05
    )


def test_the_harness_runs_on_the_core_dependencies():
    """A lab laptop installs ``pip install .``: every distribution the measuring side loads
    (host/ and measurements/run_measurement.py, imported in a fresh interpreter) is a core
    dependency or one of theirs; torch, Brevitas, ONNX and FINN are in the ``train`` extra."""
    import subprocess
    import sys
    from importlib import metadata

    from packaging.requirements import Requirement

    core = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    heavy = {"torch", "brevitas", "onnx", "onnxruntime", "qonnx", "finn-plus"}
    assert not heavy & {r.name for r in core}
    assert {"torch", "brevitas", "onnx", "onnxruntime", "qonnx"} <= {
        Requirement(r).name for r in PYPROJECT["project"]["optional-dependencies"]["train"]
    }

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    allowed, todo = set(), [r.name for r in core]
    while todo:  # the core dependencies and everything they require (no extras)
        name = canonical(todo.pop())
        if name in allowed:
            continue
        allowed.add(name)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    code = (  # what the interpreter loaded before (site's .pth hooks) is not the harness's
        "import sys\n"
        "before = set(sys.modules)\n"
        "import importlib, pkgutil, host, measurements.run_measurement\n"
        "for m in pkgutil.walk_packages(host.__path__, 'host.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('\\n'.join(sorted({n.split('.')[0] for n in set(sys.modules) - before})))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    owners = metadata.packages_distributions()
    ours = set(PACKAGES)
    used = {
        canonical(d)
        for name in loaded
        if name not in sys.stdlib_module_names and name not in ours
        for d in owners.get(name, [])
    }
    assert used and used <= allowed, sorted(used - allowed)
