"""retrain: train → evaluate on the recipe's validation data → register → promote only if it wins.

The candidate and the incumbent (the promoted model, or the shipped default while nothing is
promoted: what `detect-scene model=promoted` runs) are scored by the same function on the same
validation areas, so "beats" compares like with like (stored metrics from another data set would
not). Promotion is one write of `promoted.json` in the registry, followed by the event
`m2cd.model.promoted`; detect-scene runs with `model=promoted` pick the new model up from then on.
Its deployment `retrain/local` runs on the event `m2cd.labels.updated` (see flows/deployments.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from pydantic import BaseModel

import m2cd
from m2cd.pretrained import shipped_checkpoint
from pipeline.engine.device import autocast_dtype, resolve_device
from pipeline.errors import ConfigError, InputError
from pipeline.io import storage
from pipeline.registry import PROMOTED, Registry, beats, registry_root
from pipeline.training import load_train_config, train
from pipeline.training.config import TRAIN_CONFIG_DIR
from pipeline.training.data import load_areas
from pipeline.training.trainer import validate

DEFAULT_RECIPE = "finetune"
PROMOTED_EVENT = "m2cd.model.promoted"
JSON_RESULT = {"persist_result": True, "result_serializer": "json"}


class TrainManifest(BaseModel):
    """What the training task hands to evaluation: plain paths and a count, so it crosses Prefect's
    task boundary as JSON."""

    best: str
    last: str
    steps: int


class RetrainResult(BaseModel):
    """What a retrain run returns (and persists)."""

    digest: str
    registry: str
    metrics: dict[str, float]
    incumbent: str | None
    incumbent_source: str | None = None
    incumbent_metrics: dict[str, float] | None
    promoted: bool
    steps: int


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric scalars of a metrics dict (per-class lists and confusion matrices dropped)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _recipe_dict(recipe: str) -> dict[str, Any]:
    """The raw recipe mapping (a name in configs/train/ or a YAML path), validated later."""

    path = Path(recipe)
    if not path.suffix and (TRAIN_CONFIG_DIR / f"{recipe}.yaml").exists():
        path = TRAIN_CONFIG_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: train recipe not found")
    return yaml.safe_load(path.read_text()) or {}


def build_recipe(
    recipe: str | None,
    data: str | None,
    base_checkpoint: str | None,
    overrides: dict[str, Any] | None,
) -> Any:
    """The TrainConfig: recipe + training data (a YAML with a `data:` section) + base checkpoint.

    The spec's `data:` keys replace the recipe's (recipes such as demo.yaml ship `scenes: []`).
    """

    raw = _recipe_dict(recipe or DEFAULT_RECIPE)
    if data:
        if not storage.exists(data):
            raise InputError(data, "training data spec not found")
        spec = yaml.safe_load(storage.read_bytes(data)) or {}
        if not isinstance(spec, dict) or not isinstance(spec.get("data"), dict):
            raise InputError(data, "a training data spec needs a top-level `data:` mapping")
        raw["data"] = {**(raw.get("data") or {}), **spec["data"]}
    if base_checkpoint:
        stages = raw.setdefault("stages", [{}])
        stages[0] = {**stages[0], "init": base_checkpoint}
    return load_train_config(raw, dict(overrides or {}))


def data_fingerprint(cfg: Any) -> str:
    """Names the validation data the metrics were measured on (hash of the data section)."""
    blob = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True).encode()
    return "data:sha256:" + hashlib.sha256(blob).hexdigest()[:16]


@task(name="train", **JSON_RESULT)
def train_task(cfg: Any, out_dir: str) -> TrainManifest:
    """Run the recipe; writes out_dir/best and out_dir/last checkpoints."""

    result = train(cfg, out_dir)
    return TrainManifest(best=str(result.best), last=str(result.last), steps=result.steps)


@task(name="evaluate", **JSON_RESULT)
def evaluate_task(checkpoint: str, cfg: Any) -> dict[str, float]:
    """Change-class metrics of a checkpoint on the recipe's validation areas."""

    device = resolve_device(cfg.device)
    model = m2cd.load_checkpoint(checkpoint).to(device)
    bands = model.config.bands  # read the bands this model takes (pipeline.io.bands)
    _, val = load_areas(cfg.data, cfg.detect, (bands.optical_channels, bands.sar_channels))
    if not val:
        raise InputError("train config data", "no validation areas (`val:`) to compare models on")
    amp = autocast_dtype(device, cfg.precision)
    metrics = validate(model, val, cfg.data.val_tile, cfg.data.batch_size, device, amp)
    return scalar_metrics(metrics)


class Incumbent(BaseModel):
    """The model a candidate has to beat: the promoted one, else the shipped default."""

    checkpoint: str
    digest: str
    source: str  # "promoted" | "shipped"


def incumbent_model(reg: Any) -> Incumbent:
    """What `detect-scene model=promoted` would run today, so promotion never makes maps worse.

    Before this, a first candidate was promoted unopposed: the demo's 60-step fine-tune scored
    F1 0.675 against the shipped model's 0.755 on the same held-out columns, and got promoted.
    """

    promotion = reg.promoted()
    if promotion is not None:
        return Incumbent(
            checkpoint=str(reg.resolve(promotion.digest)),
            digest=promotion.digest,
            source="promoted",
        )
    path = shipped_checkpoint()
    return Incumbent(checkpoint=str(path), digest=m2cd.checkpoint_digest(path), source="shipped")


def _work_dir(explicit: str | None) -> str:
    if explicit:
        return explicit
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    base = Path(os.environ.get("M2CD_HOME", Path.home() / ".m2cd")) / "train"
    base.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(dir=base, prefix=f"{stamp}-")


@flow(name="retrain", log_prints=True, **JSON_RESULT)
def retrain(
    recipe: str | None = None,
    data: str | None = None,
    base_checkpoint: str | None = None,
    overrides: dict[str, Any] | None = None,
    registry: str | None = None,
    work_dir: str | None = None,
    metric: str = "f1",
) -> RetrainResult:
    """Fine-tune, evaluate, register; promote when it beats the incumbent on the same data.

    Args:
        recipe: training recipe (a name in configs/train/ or a YAML path; default finetune).
        data: YAML (local or s3://) whose `data:` section replaces the recipe's training data.
        base_checkpoint: first-stage init: a checkpoint directory, `promoted`, or None.
        overrides: dotted TrainConfig overrides, e.g. {"stages": ...} or {"data.tile": 64}.
        registry: registry root (else $M2CD_REGISTRY, else ~/.m2cd/registry).
        work_dir: where the training run is written (default a new dir under ~/.m2cd/train).
        metric: the validation metric that decides promotion (higher is better).
    """

    logger = get_run_logger()
    reg = Registry(registry_root(registry))
    promotion = reg.promoted()
    if base_checkpoint == PROMOTED:
        base_checkpoint = str(reg.resolve(PROMOTED)) if promotion else None
    cfg = build_recipe(recipe, data, base_checkpoint, overrides)
    out_dir = _work_dir(work_dir)
    logger.info("training %s into %s", recipe or DEFAULT_RECIPE, out_dir)
    trained = train_task(cfg, out_dir)
    metrics = evaluate_task(trained.best, cfg)
    incumbent = incumbent_model(reg)
    incumbent_metrics = evaluate_task.with_options(name=f"evaluate-{incumbent.source}")(
        incumbent.checkpoint, cfg
    )
    validation = data_fingerprint(cfg)
    record = reg.register(
        trained.best, metrics, validation=validation, config=cfg.model_dump(mode="json")
    )
    promote = record.digest != incumbent.digest and beats(metrics, incumbent_metrics, metric)
    if promote:
        reg.promote(record.digest, reason=f"{metric} {metrics.get(metric):.4f} on {validation}")
        emit_event(
            PROMOTED_EVENT,
            resource={"prefect.resource.id": f"m2cd.model.{record.digest}"},
            payload={"digest": record.digest, "registry": reg.root, "metrics": metrics},
        )
    result = RetrainResult(
        digest=record.digest,
        registry=reg.root,
        metrics=metrics,
        incumbent=incumbent.digest,
        incumbent_source=incumbent.source,
        incumbent_metrics=incumbent_metrics,
        promoted=promote,
        steps=trained.steps,
    )
    create_markdown_artifact(_markdown(result, metric), key="retrain-summary")
    return result


def _markdown(result: RetrainResult, metric: str) -> str:
    def fmt(m: dict[str, float] | None) -> str:
        return "n/a" if not m or metric not in m else f"{m[metric]:.4f}"

    verdict = "promoted" if result.promoted else "registered, not promoted"
    return (
        f"# retrain: {verdict}\n\n| model | {metric} |\n| --- | --- |\n"
        f"| candidate `{result.digest[:19]}` | {fmt(result.metrics)} |\n"
        f"| {result.incumbent_source or 'promoted'} before `{(result.incumbent or 'none')[:19]}` "
        f"| {fmt(result.incumbent_metrics)} |\n"
        f"\nregistry: `{result.registry}`, steps: {result.steps}\n"
    )
