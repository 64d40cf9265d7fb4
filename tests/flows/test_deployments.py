"""Deployment definitions: prefect.yaml and the served deployments describe the same flows."""

from __future__ import annotations

from pathlib import Path

import yaml

from flows.deployments import LABELS_EVENT, RETRAIN_EVENT_PARAMETERS, region_configs

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_entrypoints_load_and_match_the_served_ones():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    by_flow = {}
    for dep in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(REPO / dep["entrypoint"]))
        by_flow[f"{flow.name}/{dep['name']}"] = dep
    assert {"detect-scene/local", "retrain/local"} <= set(by_flow)
    [trigger] = by_flow["retrain/local"]["triggers"]
    assert trigger["expect"] == [LABELS_EVENT]
    assert trigger["parameters"] == RETRAIN_EVENT_PARAMETERS
    monitors = [d for name, d in by_flow.items() if name.startswith("monitor-region/")]
    assert monitors and all(d["schedules"][0]["cron"] for d in monitors)


def test_every_deployment_the_readme_promises_is_served_by_default():
    """README: detect-scene/local, monitor-region/<region> (the example region) and retrain/local."""
    from flows.deployments import build_deployments

    served = {f"{d.flow_name}/{d.name}" for d in build_deployments()}
    assert {"detect-scene/local", "retrain/local", "monitor-region/example"} <= served
    [(path, region)] = region_configs(["example"])
    assert region.name == "example" and path.endswith("configs/regions/example.yaml")
    assert not region.output.startswith("~")  # home expanded
