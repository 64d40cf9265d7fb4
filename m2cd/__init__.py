"""M²CD: optical-to-SAR change detection model (pure torch + timm; no files, CRS or Prefect)."""

from m2cd.checkpoint import CheckpointError, checkpoint_digest, load_checkpoint, save_checkpoint
from m2cd.config import ModelConfig, available_configs, load_model_config
from m2cd.model import M2CD, build_model

__all__ = [
    "M2CD",
    "CheckpointError",
    "ModelConfig",
    "available_configs",
    "build_model",
    "checkpoint_digest",
    "load_checkpoint",
    "load_model_config",
    "save_checkpoint",
]
