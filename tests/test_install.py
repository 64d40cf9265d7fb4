"""A non-editable install behaves like the checkout: a wheel built from the tree, installed into a
fresh venv (its dependencies reused from this interpreter's site-packages, read as a plain path so
that the checkout's editable install is not), finds its configs and runs `m2cd detect`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCES = ("m2cd", "pipeline", "flows", "configs", "pyproject.toml", "README.md")


def test_every_package_of_the_tree_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("m2cd", "pipeline", "flows")
        for p in (REPO / top).rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "m2cd.configs" in listed


@pytest.mark.slow
def test_wheel_installed_into_a_fresh_venv_runs_detect(tmp_path):
    src = tmp_path / "src"
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            ".",
        ],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("m2cd_pipeline-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # one path line: the dependencies, without running that directory's own .pth files
    Path(site, "shared-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*pip, "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = tmp_path / "run"
    run.mkdir()  # away from the checkout: nothing can be found by accident in the cwd

    def m2cd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [venv / "bin" / "m2cd", *args], cwd=run, env=env, capture_output=True, text=True
        )

    where = subprocess.run(
        [py, "-c", "import m2cd.config as c; print(c.__file__); print(c.CONFIG_ROOT)"],
        cwd=run,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the wheel's code and configs
    synth = m2cd("synth", "--out", "scene", "--size", "64", "96", "--seed", "4", "--sar-bands", "1")
    assert synth.returncode == 0, synth.stderr
    args = ["detect", "scene/optical.tif", "scene/sar.tif", "--out", "out", "--model", "tiny"]
    detect = m2cd(*args, "--tile", "64", "--overlap", "16", "--no-progress")
    assert detect.returncode == 0, detect.stderr
    assert (run / "out" / "run.json").is_file() and (run / "out" / "change_mask.tif").is_file()
