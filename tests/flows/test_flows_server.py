"""The flows against a REAL Prefect server (fixture), real Dask clusters and a real S3 server.

One served runner (`python -m flows.deployments`, what `m2cd serve` runs) is shared by the module and
stopped before the server. Scenes are small (one or four blocks): the orchestration is under test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from distributed import WorkerPlugin

import m2cd
from flows.serve import stop
from m2cd.pretrained import shipped_checkpoint
from tests.flows.conftest import DETECT_OVERRIDES
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
PRODUCTS = {"change.zarr", "change_prob.tif", "change_mask.tif", "change.geojson", "item.json"}

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def _client(api_url: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api_url)


@pytest.fixture(scope="module")
def region_yaml(tmp_path_factory, synth_scene, tiny_checkpoint) -> Path:
    """A region whose prefix holds one optical scene 4 days before one SAR scene."""
    root = tmp_path_factory.mktemp("region")
    (root / "scenes" / "optical").mkdir(parents=True)
    (root / "scenes" / "sar").mkdir()
    shutil.copy(synth_scene.optical, root / "scenes" / "optical" / "2026-03-01_s2.tif")
    shutil.copy(synth_scene.sar, root / "scenes" / "sar" / "2026-03-05_s1.tif")
    shutil.copy(synth_scene.sar, root / "scenes" / "sar" / "2025-01-01_s1.tif")  # no optical before
    cfg = {
        "name": "testvalley",
        "source": {"kind": "prefix", "uri": str(root / "scenes")},
        "pairing": {"max_days_before": 10},
        "output": str(root / "products"),
        "model": str(tiny_checkpoint),
        "overrides": DETECT_OVERRIDES,
        "schedule": "0 3 * * *",
    }
    path = root / "testvalley.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def served(prefect_server, s3_server, region_yaml, tmp_path_factory):
    """The deployments served by a real runner process; yields the env its clients need."""
    home = tmp_path_factory.mktemp("served")
    env = {
        **prefect_server,
        **s3_server.env(),
        "PYTHONPATH": str(REPO),
        "M2CD_HOME": str(home),
        "M2CD_REGISTRY": str(home / "registry"),
    }
    log = open(home / "runner.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "flows.deployments", f"--region={region_yaml}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = _client(prefect_server["PREFECT_API_URL"])

    def ready():
        if proc.poll() is not None:
            raise AssertionError((home / "runner.log").read_text()[-3000:])
        names = {d.name for d in client.read_deployments()}
        return {"local", "testvalley"} <= names and len(client.read_automations()) >= 1

    try:
        wait_for(ready, 120, "the served deployments", interval=1.0)
        yield env | {"_log": str(home / "runner.log")}
    finally:
        stop(proc, "served flow", timeout=20)  # before the server fixture stops the server
        log.close()


def test_served_deployments_have_schedule_and_trigger(served, region_yaml):
    client = _client(served["PREFECT_API_URL"])
    monitor = client.read_deployment_by_name("monitor-region/testvalley")
    assert [s.schedule.cron for s in monitor.schedules] == ["0 3 * * *"]
    assert monitor.parameters == {"region": str(region_yaml)}
    retrain = client.read_deployment_by_name("retrain/local")
    automations = [a for a in client.read_automations() if a.actions[0].deployment_id == retrain.id]
    assert automations and "m2cd.labels.updated" in automations[0].trigger.expect


@pytest.mark.s3
def test_cli_deployment_run_detect_scene_on_s3(served, s3_server, synth_scene, tiny_checkpoint):
    fs = s3_server.filesystem()
    bucket = s3_server.bucket()
    fs.put(str(synth_scene.optical), f"{bucket}/in/optical.tif")
    fs.put(str(synth_scene.sar), f"{bucket}/in/sar.tif")
    params = {"model": str(tiny_checkpoint), "overrides": DETECT_OVERRIDES}
    cmd = [
        sys.executable, "-m", "prefect", "deployment", "run", "detect-scene/local",
        "-p", f"optical=s3://{bucket}/in/optical.tif",
        "-p", f"sar=s3://{bucket}/in/sar.tif",
        "-p", f"output=s3://{bucket}/out",
        "--params", json.dumps(params), "--watch", "--watch-timeout", "240",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=served, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Completed" in done.stdout
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/out")}
    assert PRODUCTS | {"run.json"} <= names
    run = json.loads(fs.cat(f"{bucket}/out/run.json"))
    assert run["summary"]["shape"] == [96, 128]

    item = fs.cat(f"{bucket}/out/item.json").decode()
    assert json.loads(item)["type"] == "Feature"
    assert m2cd.checkpoint_digest(tiny_checkpoint) in item  # the product names its model


def test_labels_event_starts_a_retrain_run_that_registers(
    served, prefect_env, tmp_path, synth_scene
):
    from pipeline.registry import Registry

    spec = tmp_path / "labels.yaml"
    scene = {
        "optical": str(synth_scene.optical),
        "sar": str(synth_scene.sar),
        "label": str(synth_scene.label),
        "train": [{"window": "0:64,0:128"}],
        "val": [{"window": "64:96,0:128"}],
    }
    spec.write_text(yaml.safe_dump({"data": {"scenes": [scene], "tile": 64, "batch_size": 2,
                                             "val_tile": 32}}))  # fmt: skip
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "stages": [{"name": "main", "model": "tiny", "steps": 3}],
                "data": {"scenes": [scene]},
                "optim": {"warmup_steps": 1},
                "device": "cpu",
                "precision": "fp32",
                "val_every": 3,
                "checkpoint_every": 3,
                "progress": False,
            }
        )
    )
    registry = tmp_path / "registry"
    cmd = [sys.executable, "-m", "flows.cli", "labels", "push", str(spec), "--to", str(tmp_path / "pushed"),
           "--recipe", str(recipe), "--registry", str(registry)]  # fmt: skip
    pushed = subprocess.run(cmd, env=served, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert pushed.returncode == 0, pushed.stderr
    assert "emitted m2cd.labels.updated" in pushed.stdout
    client = _client(served["PREFECT_API_URL"])

    def finished():
        runs = [r for r in client.read_flow_runs() if r.parameters.get("registry") == str(registry)]
        if runs and runs[0].state.is_final():
            return runs
        return None

    [run] = wait_for(finished, 240, "the triggered retrain run", interval=2)
    assert run.state.is_completed(), Path(served["_log"]).read_text()[-3000:]
    assert run.parameters["data"].startswith(str(tmp_path / "pushed" / "labels"))
    reg = Registry(registry)
    [record] = reg.list()
    assert "f1" in record.metrics and record.validation.startswith("data:sha256:")
    first_promotion = reg.promoted()

    # The same recipe and data again: the same weights, scored on the same validation data as the
    # incumbent, so promoted.json is untouched whichever way the first run went.
    from flows.retrain import retrain

    again = retrain(**{**run.parameters, "work_dir": str(tmp_path / "again")})
    assert again.digest == record.digest and again.metrics == record.metrics
    assert not again.promoted
    if first_promotion is None:
        # nothing promoted: the shipped default was the incumbent and the 3-step tiny model did not
        # beat it on this validation data
        shipped = m2cd.checkpoint_digest(shipped_checkpoint())
        assert again.incumbent == shipped and again.incumbent_source == "shipped"
        assert again.metrics["f1"] <= again.incumbent_metrics["f1"]
        assert reg.promoted() is None
    else:
        assert first_promotion.digest == record.digest
        assert again.incumbent == record.digest and again.incumbent_source == "promoted"
        assert again.incumbent_metrics == again.metrics
        assert reg.promoted().promoted_at == first_promotion.promoted_at


def test_monitor_region_twice_second_run_processes_nothing(prefect_env, region_yaml):
    from flows.monitor_region import monitor_region

    first = monitor_region(region=str(region_yaml))
    assert len(first.processed) == 1 and first.skipped == []
    assert len(first.unpaired_sar) == 1 and first.unpaired_sar[0].endswith("2025-01-01_s1.tif")
    [record] = first.pairs
    out = Path(record.output)
    assert {p.name for p in out.iterdir()} >= PRODUCTS
    assert (out / "pair.json").is_file()
    second = monitor_region(region=str(region_yaml))
    assert second.processed == [] and second.skipped == [record.pair_id]
    summary = yaml.safe_load((region_yaml.parent / "products" / "summary.json").read_text())
    assert [p["pair_id"] for p in summary["pairs"]] == [record.pair_id]
    csv_lines = (region_yaml.parent / "products" / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("pair,") and csv_lines[1].startswith(record.pair_id)


def test_detect_scene_on_an_external_two_worker_cluster(
    prefect_env, synth_scene, tiny_checkpoint, tmp_path
):
    from flows.detect_scene import detect_scene
    from tests.fixtures.dask import two_worker_cluster

    overrides = {**DETECT_OVERRIDES, "tiling.block": 64}  # 2×2 blocks
    env = {"PREFECT_API_URL": prefect_env["PREFECT_API_URL"]}
    with two_worker_cluster(tmp_path / "dask", env=env) as (cluster, client):
        manifest = detect_scene(
            optical=str(synth_scene.optical),
            sar=str(synth_scene.sar),
            output=str(tmp_path / "out"),
            model=str(tiny_checkpoint),
            overrides=overrides,
            dask_address=cluster.scheduler_address,
        )
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert manifest.blocks == 4
    assert len(executed) == 2 and sum(executed.values()) >= 4
    assert {p.name for p in (tmp_path / "out").iterdir()} >= PRODUCTS


class _KillOnFirstBlock(WorkerPlugin):
    """Worker plugin: the first worker to start a block task dies (os._exit), exactly once."""

    def __init__(self, marker: str):
        self.marker = marker

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        import os

        if finish == "executing" and "block" in str(key):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(1)


def test_a_lost_worker_costs_a_rerun_of_its_block_not_the_run(
    prefect_env, synth_scene, tiny_checkpoint, tmp_path
):
    from flows.detect_scene import detect_scene
    from tests.fixtures.dask import two_worker_cluster

    marker = tmp_path / "killed"
    env = {"PREFECT_API_URL": prefect_env["PREFECT_API_URL"]}
    with two_worker_cluster(tmp_path / "dask", env=env) as (cluster, client):
        client.register_plugin(_KillOnFirstBlock(str(marker)), name="kill-once")
        manifest = detect_scene(
            optical=str(synth_scene.optical),
            sar=str(synth_scene.sar),
            output=str(tmp_path / "out"),
            model=str(tiny_checkpoint),
            overrides={**DETECT_OVERRIDES, "tiling.block": 64},
            dask_address=cluster.scheduler_address,
        )
    assert marker.exists()  # a worker really died mid-run
    assert manifest.blocks == 4
    assert {p.name for p in (tmp_path / "out").iterdir()} >= PRODUCTS
