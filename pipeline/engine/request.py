"""What a user asks the engine for: two scenes, an output prefix, one model and a config.

Kept apart from the plan so that the CLI and the flows can build and validate a request (and report
a bad one in one line) without importing the engine's heavier modules.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from pipeline.config import DetectConfig
from pipeline.errors import ConfigError


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

    @model_validator(mode="after")
    def _one_model(self) -> DetectRequest:
        if (self.checkpoint is None) == (self.model is None):
            raise ValueError("give exactly one of checkpoint (a path) or model (a config name)")
        return self


def validate_request(**kwargs: Any) -> DetectRequest:
    """A DetectRequest from keyword arguments, with pydantic errors as one ConfigError (the CLI
    prints it without a traceback and exits 2)."""
    try:
        return DetectRequest(**kwargs)
    except ValidationError as exc:
        msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"detect request: {msgs}") from None
