"""What a user asks the engine for: two scenes, an output prefix, one model and a config.

Kept apart from the plan so that the CLI and the flows can build and validate a request (and report
a bad one in one line) without importing the engine's heavier modules.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from m2cd.pretrained import shipped_checkpoint
from pipeline.config import DetectConfig
from pipeline.errors import ConfigError, InputError
from pipeline.io import storage

DEFAULT_THRESHOLD = 0.5


class DetectRequest(BaseModel):
    """What a user asks for: two scenes, an output prefix, a model and a config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optical: str
    sar: str
    out: str
    checkpoint: str | None = None
    model: str | None = None
    config: DetectConfig = DetectConfig()
    overwrite: bool = False
    # acquisition times when the inputs record none (or another); a bare date is 00:00 UTC
    pre_date: datetime | None = None
    post_date: datetime | None = None

    @field_validator("pre_date", "post_date")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return v if v is None or v.tzinfo else v.replace(tzinfo=UTC)

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data: Any) -> Any:
        """No model named: the shipped default (``m2cd.pretrained``), so a first map means
        something. No threshold set: the one fitted on the checkpoint's validation data."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("checkpoint") is not None and data.get("model") is not None:
            raise ValueError("give at most one of checkpoint (a path) or model (a config name)")
        if data.get("checkpoint") is None and data.get("model") is None:
            data["checkpoint"] = str(shipped_checkpoint())
        cfg = data.get("config")
        cfg = DetectConfig.model_validate(cfg if cfg is not None else {})
        if cfg.products.threshold is None:
            threshold = checkpoint_threshold(data.get("checkpoint"))
            products = cfg.products.model_copy(update={"threshold": threshold})
            cfg = cfg.model_copy(update={"products": products})
        data["config"] = cfg
        return data


def checkpoint_threshold(checkpoint: str | None) -> float:
    """The decision threshold a checkpoint records (fitted on its validation data), else 0.5."""
    if checkpoint is None:
        return DEFAULT_THRESHOLD
    meta_uri = checkpoint.rstrip("/") + "/checkpoint.json"
    try:
        meta = storage.read_json(meta_uri)
    except (InputError, OSError, ValueError):
        return DEFAULT_THRESHOLD  # the plan reports an unreadable checkpoint with its own error
    value = (meta.get("provenance") or {}).get("threshold") if isinstance(meta, dict) else None
    return float(value) if isinstance(value, int | float) and 0 < value < 1 else DEFAULT_THRESHOLD


def validate_request(**kwargs: Any) -> DetectRequest:
    """A DetectRequest from keyword arguments, with pydantic errors as one ConfigError (the CLI
    prints it without a traceback and exits 2)."""
    try:
        return DetectRequest(**kwargs)
    except ValidationError as exc:
        msgs = "; ".join(
            (f"{e['loc'][0]}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ConfigError(f"detect request: {msgs}") from None
