"""Credentials never reach logs, error messages, Prefect artifacts/logs/results, STAC Items or
product metadata (issue 5, item 2).

A detect-scene flow runs against the real Prefect server with its inputs, checkpoint-free model
and outputs on the real seaweedfs server (which enforces the credentials, so the run cannot work
without them); then every byte it could have leaked into is searched for the secret: every
object under the output prefix, the captured log records and console output, the artifacts and
logs read back through the Prefect API, and every file of the Prefect server's home (its SQLite
database holds parameters, states, logs and artifacts; persisted results live beside it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.fixtures.s3 import ACCESS_KEY, SECRET_KEY
from tests.reliability.support import SMALL, write_pair

pytestmark = [pytest.mark.s3, pytest.mark.prefect, pytest.mark.slow]
SECRETS = (SECRET_KEY, ACCESS_KEY)


def _leaks(blob: bytes | str) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [s for s in SECRETS if s.encode() in data]


@pytest.fixture
def s3_pair(s3_env, tmp_path):
    pair = write_pair(tmp_path / "in")
    bucket = s3_env.bucket()
    fs = s3_env.filesystem()
    for path in (pair.optical, pair.sar):
        fs.put_file(path, f"{bucket}/in/{Path(path).name}")
    return bucket, f"s3://{bucket}/in/optical.tif", f"s3://{bucket}/in/sar.tif"


@pytest.fixture
def checkpoint(tmp_path):
    import torch

    import m2cd

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        path = tmp_path / "ck"
        m2cd.save_checkpoint(m2cd.build_model("tiny"), path)
    return str(path)


def _flow_run_texts(api_url: str, flow_run_ids: list) -> list[str]:
    """Artifacts, logs, parameters and state messages of the flow runs, read through the API."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    client = SyncPrefectClient(api_url)
    ids = list(flow_run_ids)
    texts = []
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
    )
    assert artifacts, "the flow wrote no artifact: nothing was checked"
    texts += [f"{a.key} {a.description} {a.data}" for a in artifacts]
    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
    texts += [log.message for log in logs]
    for run_id in ids:
        run = client.read_flow_run(run_id)
        texts += [repr(run.parameters), str(run.state.message), repr(run.state.data)]
    return texts


def test_no_credential_is_written_anywhere(
    prefect_env, s3_env, s3_pair, checkpoint, caplog, capfd, monkeypatch
):
    from flows.detect_scene import detect_scene

    bucket, optical, sar = s3_pair
    out = f"s3://{bucket}/runs/secret-check"
    caplog.set_level(logging.INFO)
    prefect_logger = logging.getLogger("prefect")  # does not propagate to the root logger
    monkeypatch.setattr(prefect_logger, "handlers", [*prefect_logger.handlers, caplog.handler])
    monkeypatch.setattr(prefect_logger, "level", logging.INFO)
    overrides = {**SMALL, "tiling.block": 64}  # 2×2 blocks: several block tasks log and retry
    good = detect_scene(
        optical=optical, sar=sar, output=out, model=checkpoint, overrides=overrides,
        return_state=True,
    )  # fmt: skip
    assert good.is_completed() and good.result().blocks == 4
    # a failing run too: its error travels into states, logs and the console
    bad = detect_scene(
        optical=f"s3://{bucket}/in/absent.tif", sar=sar, output=f"{out}-failed",
        model=checkpoint, overrides=overrides, return_state=True,
    )  # fmt: skip
    assert bad.is_failed() and "absent.tif" in str(bad.message) and not _leaks(str(bad.message))
    run_ids = [good.state_details.flow_run_id, bad.state_details.flow_run_id]

    fs = s3_env.filesystem()
    objects = [p for p in fs.find(f"{bucket}/runs") if not p.endswith("/")]
    names = {p.rsplit("/", 1)[-1] for p in objects}
    assert {"item.json", "run.json", "change_prob.tif", "zarr.json"} <= names
    for path in objects:
        assert not _leaks(fs.cat_file(path)), path

    console = capfd.readouterr()
    assert not _leaks(console.out + console.err)
    assert caplog.records, "no log record captured: nothing was checked"
    assert not _leaks("\n".join(r.getMessage() for r in caplog.records))

    for text in _flow_run_texts(prefect_env["PREFECT_API_URL"], run_ids):
        assert not _leaks(text), text[:300]

    home = Path(prefect_env["PREFECT_HOME"])
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files)
    for path in files:
        assert not _leaks(path.read_bytes()), path
