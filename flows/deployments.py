"""The served deployments: detect-scene/local, monitor-region/<region> (cron), retrain/local (trigger).

`python -m flows.deployments [--region NAME ...]` serves them against $PREFECT_API_URL (what `m2cd
serve` runs as its child). Entry points are module paths (`flows.detect_scene.detect_scene`), so a
flow run works whatever the runner's working directory. `prefect.yaml` declares the same deployments
for a work pool (`prefect deploy --all`), for running them across machines.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.events import DeploymentEventTrigger
from prefect.types.entrypoint import EntrypointType

from flows.detect_scene import detect_scene
from flows.monitor_region import monitor_region
from flows.retrain import retrain
from pipeline.catalog import load_region
from pipeline.config import CONFIG_DIR

LABELS_EVENT = "m2cd.labels.updated"
PROMOTED_EVENT = "m2cd.model.promoted"

# Trigger parameters are Jinja templates rendered from the event (a missing key renders as null).
RETRAIN_EVENT_PARAMETERS = {
    "recipe": "{{ event.payload.recipe }}",
    "data": "{{ event.payload.data }}",
    "base_checkpoint": "{{ event.payload.base_checkpoint }}",
    "registry": "{{ event.payload.registry }}",
}


def region_configs(names: list[str] | None = None) -> list[tuple[str, Any]]:
    """(YAML path, RegionConfig) of the given names/paths, else of the enabled configs/regions/*.yaml."""

    if names:
        return [(str(p.resolve()), load_region(p)) for p in map(_region_path, names)]
    found = [(str(p), load_region(p)) for p in sorted(CONFIG_DIR.glob("regions/*.yaml"))]
    return [(p, r) for p, r in found if r.enabled]


def retrain_trigger() -> Any:
    """Run retrain/local whenever anything emits `m2cd.labels.updated`."""

    return DeploymentEventTrigger(
        name="retrain-on-new-labels",
        expect={LABELS_EVENT},
        match={"prefect.resource.id": "m2cd.labels.*"},
        parameters=RETRAIN_EVENT_PARAMETERS,
    )


def build_deployments(regions: list[str] | None = None) -> list[Any]:
    """RunnerDeployments for `prefect.serve` (nothing is registered until served)."""

    module = EntrypointType.MODULE_PATH
    deployments = [
        detect_scene.to_deployment(
            name="local",
            entrypoint_type=module,
            description="Change products for one optical/SAR pair (local or s3://).",
            tags=["m2cd"],
        ),
        retrain.to_deployment(
            name="local",
            entrypoint_type=module,
            triggers=[retrain_trigger()],
            description=f"Fine-tune, evaluate, register, promote; runs on {LABELS_EVENT}.",
            tags=["m2cd"],
        ),
    ]
    for path, region in region_configs(regions):
        deployments.append(
            monitor_region.to_deployment(
                name=region.name,
                entrypoint_type=module,
                cron=region.schedule,
                parameters={"region": path},
                description=f"Scheduled change monitoring of region {region.name}.",
                tags=["m2cd", "region"],
            )
        )
    return deployments


def _region_path(name: str) -> Path:
    path = CONFIG_DIR / "regions" / f"{name}.yaml"
    return path if path.exists() else Path(name)


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.deployments`: the runner `m2cd serve` starts as its own child process, beside
    `prefect server start`, so each can be stopped and its log read apart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", action="append", default=[], help="Region name or YAML path.")
    args = parser.parse_args(argv)

    serve(*build_deployments(args.region), print_starting_message=True)


if __name__ == "__main__":
    main()
