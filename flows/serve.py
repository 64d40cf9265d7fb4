"""`m2cd serve`: a local Prefect server (SQLite) plus the served deployments, in the foreground.

Child processes: `prefect server start`, a long-lived Dask cluster (`flows.cluster`: the
scheduler and its workers, which keep the model loaded between runs) and a runner
(`python -m flows.deployments`) serving `detect-scene/local`, `monitor-region/<region>` (cron) and
`retrain/local` (event trigger), which finds the cluster through $M2CD_DASK_ADDRESS. On SIGTERM or
SIGINT the runner is stopped first, then the cluster, the server last: a runner whose server is
gone hangs in shutdown. Each child gets its own PREFECT_HOME (default ~/.m2cd/prefect) so nothing touches the
user's ~/.prefect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import typer

from pipeline.errors import M2CDError


class ServeError(M2CDError):
    """The server or the runner could not start."""


def server_env(
    home: Path, api_url: str | None = None, ui_api_url: str | None = None
) -> dict[str, str]:
    """Environment for the children: own PREFECT_HOME, analytics off, fast runner polling.

    `ui_api_url` is the API the served UI talks to. Prefect derives it from its own settings
    (port 4200), not from `prefect server start --port`, so without it `m2cd serve --port 4517`
    served a UI stuck on "Can't connect to Server API". A PREFECT_UI_API_URL the user set wins
    (a UI reached through a proxy or another host name).
    """
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_RUNNER_POLL_FREQUENCY=env.get("PREFECT_RUNNER_POLL_FREQUENCY", "2"),
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    if ui_api_url and not (env.get("PREFECT_UI_API_URL") or env.get("PREFECT_SERVER_UI_API_URL")):
        env["PREFECT_SERVER_UI_API_URL"] = ui_api_url
    return env


def is_healthy(api_url: str, timeout: float = 2) -> bool:
    """Whether the Prefect API at `api_url` answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_healthy(api_url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Block until the API answers or the server process dies: the runner is started only once the
    API it registers the deployments with is up; a dead server is reported at once, not at timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServeError(f"prefect server exited with code {proc.returncode} (see its log)")
        if is_healthy(api_url):
            return
        time.sleep(0.5)
    raise ServeError(f"prefect server at {api_url} not healthy after {timeout:.0f} s")


def stop(proc: subprocess.Popen | None, name: str, timeout: float = 30) -> None:
    """SIGTERM one child by its pid, SIGKILL if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    print(f"stopping {name} (pid {proc.pid})", flush=True)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve_command(
    host: str = typer.Option("127.0.0.1", help="Address the Prefect API/UI binds to."),
    port: int = typer.Option(4200, help="Port of the Prefect API/UI."),
    home: Path = typer.Option(
        Path.home() / ".m2cd" / "prefect", help="PREFECT_HOME (SQLite database, logs)."
    ),
    region: list[str] = typer.Option(
        [], help="Region configs to monitor (names in configs/regions/ or paths); default: all."
    ),
    startup_timeout: float = typer.Option(120, help="Seconds to wait for the server."),
    cluster: bool = typer.Option(
        True,
        help="Keep one Dask cluster for every run (else each run starts its own; "
        "ignored when $M2CD_DASK_ADDRESS names one).",
    ),
) -> None:
    """Run a local Prefect server and serve the m2cd deployments until SIGTERM/SIGINT."""
    home.mkdir(parents=True, exist_ok=True)
    api_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/api"
    server_cmd = [sys.executable, "-m", "prefect", "server", "start"]
    server_cmd += ["--host", host, "--port", str(port), "--analytics-off"]
    runner_cmd = [sys.executable, "-m", "flows.deployments", *(f"--region={r}" for r in region)]
    server = runner = None
    # deferred: flows.cluster pulls torch and dask (flows.runner); `m2cd --help` loads neither
    from flows.cluster import ServedCluster, start_cluster, stop_cluster
    from flows.runner import ADDRESS_ENV

    dask: ServedCluster | None = None
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with open(home / "server.log", "ab") as log:
            server = subprocess.Popen(  # own session: a terminal Ctrl-C reaches only us
                server_cmd,
                env=server_env(home, ui_api_url=api_url),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        print(f"prefect server starting (pid {server.pid}, log {home / 'server.log'})", flush=True)
        wait_healthy(api_url, server, startup_timeout)
        print(f"prefect server healthy: {api_url} (UI http://{host}:{port})", flush=True)
        print(f"  export PREFECT_API_URL={api_url}", flush=True)
        runner_env = server_env(home, api_url)
        if cluster and not runner_env.get(ADDRESS_ENV):
            dask = start_cluster(home, runner_env, startup_timeout)
            print(f"{dask.describe()} (log {home / 'dask.log'})", flush=True)
            runner_env[ADDRESS_ENV] = dask.address
        runner = subprocess.Popen(runner_cmd, env=runner_env, start_new_session=True)
        while True:
            if server.poll() is not None:
                raise ServeError(f"prefect server exited with code {server.returncode}")
            if runner.poll() is not None:
                raise ServeError(f"deployment runner exited with code {runner.returncode}")
            time.sleep(1)
    except _Stop as sig:
        print(f"received {sig}; shutting down", flush=True)
    finally:
        for s in previous:  # a second Ctrl-C must not break the shutdown order
            signal.signal(s, signal.SIG_IGN)
        stop(runner, "runner")
        if dask is not None:
            print("stopping dask cluster", flush=True)
            stop_cluster(dask)
        stop(server, "prefect server")
        for s, handler in previous.items():
            signal.signal(s, handler)
