"""Load (issue 5, item 6), small: monitor-region over a few pairs, three consecutive runs on one
2-worker Dask cluster. The full size (20 pairs, 5 runs) is `python -m tests.reliability.load`;
its figures are in RELIABILITY.md. Memory figures are printed, not asserted tightly (they are
measurements); what is asserted: every pair processed exactly once, the server stays healthy,
and memory does not grow with the number of runs beyond a generous bound."""

from __future__ import annotations

import json

import pytest

from tests.reliability.load import run_load

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def test_monitor_region_runs_stay_healthy_and_never_redo_a_pair(prefect_env, tmp_path):
    result = run_load(tmp_path, prefect_env["PREFECT_API_URL"], pairs=4, runs=3, new_per_run=2)
    print(json.dumps(result))
    runs = result["runs"]
    assert [r["processed"] for r in runs] == [4, 2, 2]
    assert [r["skipped"] for r in runs] == [0, 4, 6]
    assert all(r["failed"] == 0 and r["server_healthy"] for r in runs)
    assert result["processed_twice"] == [] and result["processed_total"] == 8
    per_pair = result["detect_runs_per_pair"]
    assert len(per_pair) == 8 and set(per_pair.values()) == {1}  # one flow run per pair, ever
    first, last = runs[0], runs[-1]
    assert last["scheduler_rss_mib"] < first["scheduler_rss_mib"] + 100
    assert max(last["worker_rss_mib"]) < max(first["worker_rss_mib"]) + 200
