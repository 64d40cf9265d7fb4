"""`m2cd labels push`: publish a training-data spec and emit `m2cd.labels.updated`.

The spec is a YAML with a `data:` section (the TrainConfig data section: scenes with optical, SAR and
label rasters and their train/val areas). Pushing validates it, optionally copies it to a shared
prefix (local or s3://) so that the retrain run reads what was pushed, and emits the event that the
`retrain/local` deployment trigger listens to. Any other producer can emit the same event.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import typer

from pipeline.errors import ConfigError, InputError
from pipeline.io import storage

LABELS_EVENT = "m2cd.labels.updated"


def validate_spec(path: Path) -> dict:
    """Parse and validate a data spec; InputError/ConfigError name the file and the field."""
    # deferred: yaml, pydantic and pipeline.config (m2cd, hence torch: +2.7 s) stay out of m2cd --help
    import yaml
    from pydantic import ValidationError

    from pipeline.config import format_validation_error
    from pipeline.training.config import DataConfig

    if not path.is_file():
        raise InputError(str(path), "training data spec not found")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(str(path), f"not valid YAML ({exc})") from None
    if not isinstance(spec, dict) or "data" not in spec:
        raise InputError(str(path), "a training data spec needs a top-level `data:` section")
    try:
        DataConfig.model_validate(spec["data"])
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    return spec


def push(
    spec_path: Path,
    to: str | None = None,
    name: str | None = None,
    recipe: str | None = None,
    base_checkpoint: str | None = None,
    registry: str | None = None,
) -> tuple[str, str]:
    """Validate, publish, emit; returns (published URI, event id)."""

    # deferred: prefect adds 2.0 s; m2cd --help must not pay it
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    if not (PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL")):
        raise ConfigError(
            "PREFECT_API_URL is not set: point it at the server that runs retrain/local "
            "(`m2cd serve` prints it)"
        )
    validate_spec(spec_path)
    name = name or spec_path.stem
    uri = str(spec_path.resolve())
    if to:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        uri = storage.join(to, name, f"{stamp}.yaml")
        storage.put_file_atomic(spec_path, uri)
    event = emit_event(
        LABELS_EVENT,
        resource={"prefect.resource.id": f"m2cd.labels.{name}", "prefect.resource.name": name},
        payload={
            "data": uri,
            "recipe": recipe,
            "base_checkpoint": base_checkpoint,
            "registry": registry,
        },
    )
    EventsWorker.drain_all()  # a CLI process exits right away: send before it does
    if event is None:
        raise ConfigError("the event was not emitted (is PREFECT_API_URL reachable?)")
    return uri, str(event.id)


def push_command(
    spec: Path = typer.Argument(..., help="YAML with a `data:` section (scenes, labels, areas)."),
    to: str | None = typer.Option(None, help="Copy the spec under this prefix (local or s3://)."),
    name: str | None = typer.Option(None, help="Label set name (default: the file's stem)."),
    recipe: str | None = typer.Option(None, help="Training recipe for the retrain run."),
    base_checkpoint: str | None = typer.Option(
        None, help="First-stage init for retraining: a checkpoint or `promoted`."
    ),
    registry: str | None = typer.Option(None, help="Registry root for the retrain run."),
) -> None:
    """Publish new training labels and emit `m2cd.labels.updated` (starts retrain/local)."""
    uri, event_id = push(spec, to, name, recipe, base_checkpoint, registry)
    typer.echo(f"emitted {LABELS_EVENT} ({event_id}) for {uri}")
