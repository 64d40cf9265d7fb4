"""Imports sit at the top of a module, except where one would slow `m2cd --help` or close an
import cycle; such a deferred import says why on its line or the line above (issue 10).

Deferred imports hid where a module's dependencies came from (177 of 657 functions imported inside
their body); the ones kept say what they cost, e.g. `# deferred: torch (+2.7 s ...)`. A run of
adjacent imports shares the comment above its first line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("m2cd", "pipeline", "flows")  # the installed library; eval/ and tests/ are not
MARK = "# deferred:"
# what `m2cd --help` must not load: each adds 0.2-3 s (torch 2.7 s, prefect 2.0 s, zarr 0.5 s,
# s3fs 0.6 s, measured over the 0.4 s --help itself)
HEAVY = ("torch", "timm", "prefect", "dask", "distributed", "zarr", "xarray", "s3fs", "rasterio")


def _function_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, True)
            elif isinstance(child, ast.Import | ast.ImportFrom) and inside:
                found.append(child)
            else:
                visit(child, inside)

    visit(tree, False)
    return found


def unexplained_imports(path: Path) -> list[str]:
    """`file:line: statement` for each in-function import without a `# deferred:` reason."""
    source = path.read_text()
    lines = source.splitlines()
    imports = _function_imports(ast.parse(source))
    explained: set[int] = set()  # last line of each explained import, for the run below it
    bad = []
    for node in sorted(imports, key=lambda n: n.lineno):
        own = MARK in lines[node.lineno - 1]
        above = node.lineno >= 2 and lines[node.lineno - 2].strip().startswith(MARK)
        prev = node.lineno - 1  # the nearest non-blank line above: a run may hold blank lines
        while prev >= 1 and not lines[prev - 1].strip():
            prev -= 1
        in_run = prev in explained
        if own or above or in_run:
            explained.add(node.end_lineno or node.lineno)
        else:
            rel = path.relative_to(REPO)
            bad.append(f"{rel}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return bad


def test_every_in_function_import_says_why_it_is_deferred():
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 80  # the packages were found
    bad = [line for path in files for line in unexplained_imports(path)]
    assert not bad, "move to the module top, or add '# deferred: <why>':\n" + "\n".join(bad)


def test_the_checker_catches_an_unexplained_import_and_accepts_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    import json\n\n"
        "def g():\n    # deferred: torch adds 2.7 s\n    import torch\n    import timm\n\n"
        "def h():\n    import yaml  # deferred: 0.1 s\n\n    import attr\n\n    x = 1\n    import re\n"
    )
    assert unexplained_imports(module) == ["m.py:2: import json", "m.py:15: import re"]


def test_help_loads_none_of_the_heavy_libraries():
    code = (
        "import sys\nfrom flows.cli import main\nmain(['--help'])\n"
        f"print('loaded:', [m for m in {HEAVY!r} if m in sys.modules])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "loaded: []"
