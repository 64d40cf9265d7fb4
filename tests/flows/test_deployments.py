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


def test_template_region_is_not_served_by_default_but_can_be_named():
    assert all(r.name != "example" for _, r in region_configs())
    [(path, region)] = region_configs(["example"])
    assert region.name == "example" and path.endswith("configs/regions/example.yaml")
