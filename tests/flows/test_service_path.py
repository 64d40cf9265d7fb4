"""The service path as the README gives it, first time: `m2cd serve --port P`, then
`prefect deployment run detect-scene/local -p optical=… -p sar=… -p output=… --watch`.

Real parts only: `m2cd serve` (its own Prefect server + served deployments), Prefect's own CLI,
the shipped model, and Debian's headless Chromium on the served UI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.serve import is_healthy, stop
from pipeline.synth import synth_pair
from tests.fixtures.prefect import free_port, prefect_base_env

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _run_deployment(env: dict[str, str], **params: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "prefect", "deployment", "run", "detect-scene/local", "--watch"]
    for key, value in params.items():
        cmd += ["-p", f"{key}={value}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)


def _runs_page_lists(url: str, run_name: str) -> bool:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # a desktop-sized window: the runs list renders only the rows in view, and the default
    # headless 800×600 leaves the rows below the charts unrendered (the name never appears)
    args = ("--headless=new", "--window-size=1600,1200", "--no-sandbox", "--disable-gpu")
    for arg in (*args, "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(url)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if run_name in driver.page_source:
                return True
            time.sleep(1)
        return False
    finally:
        driver.quit()


@pytest.mark.slow
@pytest.mark.prefect
@pytest.mark.timeout(1200)  # serve + two runs took 612 s on the loaded 2-core machine
def test_readme_service_path_works_first_time(tmp_path):
    from prefect.client.orchestration import SyncPrefectClient

    scene = synth_pair(tmp_path / "scene", size=(96, 96), seed=2, sar_bands=1)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_base_env(tmp_path / "unused-home") | {
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HOME": str(tmp_path / "user"),  # a fresh machine: nothing promoted, no registry
    }
    env.pop("PREFECT_UI_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)]
    cmd += ["--home", str(tmp_path / "home"), "--startup-timeout", "400"]
    serve = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 480
        names: set[str] = set()
        while time.monotonic() < deadline and serve.poll() is None:
            if is_healthy(api):
                names = {d.name for d in SyncPrefectClient(api).read_deployments()}
                if {"local", "example"} <= names:
                    break
            time.sleep(1)
        assert {"local", "example"} <= names, names  # detect-scene, retrain, monitor-region/example
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=10) as resp:
            assert json.loads(resp.read())["api_url"] == api  # the UI talks to its own API

        client_env = env | {"PREFECT_API_URL": api, "COLUMNS": "400"}  # rich wraps at 80
        ok = _run_deployment(
            client_env, optical=str(scene.optical), sar=str(scene.sar), output=str(tmp_path / "o")
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert (tmp_path / "o" / "item.json").is_file()
        run_name = re.search(r"flow run '?([a-z]+-[a-z]+)'?", ok.stdout + ok.stderr).group(1)

        bad = _run_deployment(
            client_env,
            optical=str(tmp_path / "missing.tif"),
            sar=str(scene.sar),
            output=str(tmp_path / "o2"),
        )
        assert bad.returncode != 0
        watched = bad.stdout + bad.stderr
        assert "missing.tif: file not found" in watched, watched[-3000:]  # the reason, in --watch

        client = SyncPrefectClient(api)
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["detect-scene-summary"]))
        )
        texts = [str(a.data) for a in arts]
        done = next(t for t in texts if t.startswith("# detect-scene `"))
        for word in ("threshold", "SAR units", "resampling", "ombria_mit_b0", "sha256:"):
            assert word in done, word
        assert "![quick-look](data:image/png;base64," in done
        assert any("missing.tif: file not found" in t for t in texts if "failed" in t)

        browser = bool(CHROMIUM and CHROMEDRIVER)  # `make browser` installs both
        if browser:  # the served UI talks to its own API: its runs page lists the run
            assert _runs_page_lists(f"http://127.0.0.1:{port}/runs", run_name), run_name
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=90)
    finally:
        stop(serve, "m2cd serve", timeout=20)
    assert not is_healthy(api)
    assert os.path.isdir(tmp_path / "home")
    if not browser:
        pytest.skip("the runs page was not checked: no chromium/chromedriver (`make browser`)")
