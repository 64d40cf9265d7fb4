"""`m2cd serve`: its own real server + served deployments, and a clean shutdown on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.serve import is_healthy, stop
from tests.fixtures.prefect import free_port, prefect_base_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.prefect
def test_serve_registers_deployments_and_stops_runner_then_server(tmp_path):
    from prefect.client.orchestration import SyncPrefectClient

    region = tmp_path / "valley.yaml"
    region.write_text(
        yaml.safe_dump({"source": {"uri": str(tmp_path)}, "output": str(tmp_path / "out")})
    )
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_base_env(tmp_path / "unused-home") | {"PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)]
    cmd += ["--home", str(tmp_path / "home"), "--region", str(region)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 150
        names: set[str] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            if is_healthy(api):
                client = SyncPrefectClient(api)
                names = {f"{d.name}" for d in client.read_deployments()}
                if {"local", "valley"} <= names:
                    break
            time.sleep(1)
        assert {"local", "valley"} <= names, (
            proc.stdout.read() if proc.poll() is not None else names
        )
        assert (tmp_path / "home" / "server.log").exists()  # its own PREFECT_HOME
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        stop(proc, "m2cd serve", timeout=20)
    assert proc.returncode == 0, out
    assert out.index("stopping runner") < out.index("stopping prefect server")
    assert not is_healthy(api)
