"""TrainConfig: one validated recipe (data, augmentation, optimiser, loss, stages), loaded from YAML.

A recipe is a list of stages run in order; a stage may start from the previous stage's best
checkpoint (spec §8: stage 1 MoE, then stage 2 MoE + O2SP from the stage-1 best). Every section
forbids unknown keys so that a typo names the field instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from m2cd.config import CONFIG_ROOT, ConfigSection
from pipeline.config import DetectConfig, DeviceName, load_validated
from pipeline.errors import ConfigError

TRAIN_CONFIG_DIR = CONFIG_ROOT / "train"


def parse_window(text: str) -> tuple[int, int, int, int]:
    """'R0:R1,C0:C1' -> (r0, r1, c0, c1); the CLI and YAML both accept this form."""
    try:
        rows, cols = text.split(",")
        r0, r1 = (int(v) for v in rows.split(":"))
        c0, c1 = (int(v) for v in cols.split(":"))
    except ValueError:
        raise ConfigError(
            f"window {text!r}: expected R0:R1,C0:C1 (pixel rows then columns)"
        ) from None
    if not (0 <= r0 < r1 and 0 <= c0 < c1):
        raise ConfigError(f"window {text!r}: needs 0 <= R0 < R1 and 0 <= C0 < C1")
    return r0, r1, c0, c1


class Area(ConfigSection):
    """A labelled area: a pixel window (rows/cols, end exclusive) or geographic bounds in the
    scene CRS (left, bottom, right, top), converted to pixels with the optical scene's transform."""

    window: tuple[int, int, int, int] | None = Field(
        default=None, description="(row0, row1, col0, col1); 'R0:R1,C0:C1' is accepted too."
    )
    bounds: tuple[float, float, float, float] | None = None

    @field_validator("window", mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        return parse_window(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_of(self) -> Area:
        if (self.window is None) == (self.bounds is None):
            raise ValueError("an area takes exactly one of window or bounds")
        if self.window is not None:
            r0, r1, c0, c1 = self.window
            if not (0 <= r0 < r1 and 0 <= c0 < c1):
                raise ValueError(f"window {self.window} must have 0 <= r0 < r1 and 0 <= c0 < c1")
        return self


class SceneSource(ConfigSection):
    """A scene triple (optical, SAR, label rasters; local or s3://) with its train/val areas."""

    optical: str
    sar: str
    label: str
    train: list[Area] = Field(min_length=1)
    val: list[Area] = Field(default_factory=list)


class FolderSource(ConfigSection):
    """Tiles in the CAU-Flood layouts: {split}/{A,B,label}/*.png or {split}/{opt,vv,flood_vv}/*.png."""

    root: str
    train_split: str = "train"
    val_split: str | None = Field(default="val", description="None: no validation set.")


class ChipSource(ConfigSection):
    """Chip datasets as published: three parallel folders of co-registered chips matched by id.

    Each path is a template under ``root`` with ``{split}`` and ``{id}`` (the id is whatever the
    optical template's ``{id}`` matches). The defaults are OMBRIA's layout (Drakonakis et al. 2022:
    Sentinel-2 before, Sentinel-1 after, EMS flood mask), so ``chips: {root: .../ombria}`` is
    enough for it; another dataset of the same shape only changes the templates.

    Validation is a seeded random ``val_fraction`` of the *train* split's ids: the test split is
    never used to choose anything (it is scored by ``eval/ombria.py`` for what is kept).
    """

    root: str
    optical: str = "OmbriaS2/{split}/BEFORE/S2_before_{id}.png"
    sar: str = "OmbriaS1/{split}/AFTER/S1_after_{id}.png"
    label: str = "OmbriaS1/{split}/MASK/S1_mask_{id}.png"
    train_split: str = "train"
    val_fraction: float = Field(
        default=0.15, ge=0, lt=1, description="Share of train ids held out."
    )
    val_seed: int = 0

    @field_validator("optical", "sar", "label")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{id}" not in v:
            raise ValueError(f"template {v!r} needs an {{id}} placeholder")
        return v


class DataConfig(ConfigSection):
    """Where training chips come from (scenes, folders or a chip dataset) and how they are sampled."""

    scenes: list[SceneSource] = Field(default_factory=list)
    folders: FolderSource | None = None
    chips: ChipSource | None = None
    tile: int = Field(default=256, ge=32, description="Chip size sampled from the training areas.")
    batch_size: int = Field(default=8, ge=1)
    min_change_fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of chips drawn centred on a changed pixel (scene sources; 0 = uniform).",
    )
    val_tile: int = Field(default=256, ge=32)

    @model_validator(mode="after")
    def _some_source(self) -> DataConfig:
        given = sum((bool(self.scenes), self.folders is not None, self.chips is not None))
        if given == 0:
            raise ValueError("data needs scenes or folders (or chips)")
        if given > 1:
            raise ValueError("data takes one of scenes, folders or chips")
        return self


class AugmentConfig(ConfigSection):
    """Joint geometry on all three arrays; photometric shifts on optical only; SAR-specific on SAR.

    Amplitudes are in normalised units for optical (the model input) and in dB for SAR.
    """

    flip: bool = True
    rot90: bool = True
    rotate_degrees: float = Field(
        default=0.0,
        ge=0,
        le=180,
        description="Free rotation by U(-d, d) degrees (official: 20); label padding = ignore.",
    )
    rotate_p: float = Field(default=0.5, ge=0, le=1, description="Probability of the rotation.")
    optical_brightness: float = Field(default=0.0, ge=0, description="± additive shift.")
    optical_contrast: float = Field(default=0.0, ge=0, lt=1, description="× [1-c, 1+c].")
    optical_channel_gain: float = Field(
        default=0.0, ge=0, lt=1, description="per band × [1-g, 1+g]."
    )
    optical_noise: float = Field(default=0.0, ge=0, description="Gaussian σ, normalised units.")
    sar_db_offset: float = Field(default=0.0, ge=0, description="± calibration shift in dB.")
    sar_db_gain: float = Field(
        default=0.0, ge=0, lt=1, description="dB dynamic-range × [1-g, 1+g]."
    )
    sar_speckle_looks: float | None = Field(
        default=None, gt=0, description="Resample speckle: ×Gamma(L, 1/L) on linear intensity."
    )
    sar_noise_db: float = Field(default=0.0, ge=0, description="Gaussian σ in dB.")
    p: float = Field(default=0.8, ge=0, le=1, description="Probability of each photometric op.")


class OptimConfig(ConfigSection):
    """Spec §8.2: AdamW, head lr ×10, no decay on norms / pos_block, warm-up then poly."""

    lr: float = Field(default=1e-4, gt=0)
    head_lr_mult: float = Field(default=10.0, gt=0)
    head_modules: list[str] = Field(
        default_factory=lambda: ["decoder"], description="Top-level child modules that are 'head'."
    )
    weight_decay: float = Field(default=0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=1000, ge=0)
    warmup_factor: float = Field(default=1e-6, gt=0, le=1)
    poly_power: float = Field(default=1.0, ge=0)
    min_lr_factor: float = Field(default=0.0, ge=0, le=1)
    clip_grad_norm: float | None = Field(default=None, gt=0)


class LossConfig(ConfigSection):
    """Segmentation loss: CE (optionally class-weighted) + Dice on the change class."""

    ce_weight: float = Field(default=1.0, ge=0)
    dice_weight: float = Field(default=0.0, ge=0)
    class_weights: tuple[float, float] | Literal["auto"] | None = Field(
        default=None, description="CE weights (unchanged, changed); auto: from the training labels."
    )
    aux_weight: float = Field(default=1.0, ge=0, description="Scale on the model's aux losses.")


class StageConfig(ConfigSection):
    """One training stage: a model (named config + overrides) and a step budget."""

    name: str = Field(default="main", pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = "tiny"
    model_overrides: dict[str, Any] = Field(default_factory=dict)
    steps: int = Field(default=1000, ge=1)
    init: str | None = Field(
        default=None,
        description="'previous' (best of the previous stage), a checkpoint directory, or None.",
    )


class TrainConfig(ConfigSection):
    """Everything that shapes a training run."""

    seed: int = 0
    stages: list[StageConfig] = Field(default_factory=lambda: [StageConfig()], min_length=1)
    data: DataConfig
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    detect: DetectConfig = Field(
        default_factory=DetectConfig, description="Normalisation shared with inference."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: DeviceName = "auto"
    val_every: int = Field(default=1000, ge=1)
    checkpoint_every: int = Field(default=1000, ge=1)
    log_every: int = Field(default=50, ge=1)
    progress: bool = True

    @model_validator(mode="after")
    def _stage_names(self) -> TrainConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if self.stages[0].init == "previous":
            raise ValueError("the first stage has no previous stage to start from")
        return self

    def digest(self) -> str:
        """Stable hash of the recipe (recorded in checkpoint provenance)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()


def load_train_config(
    source: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Load from a YAML path, a name in configs/train/, or a dict; dotted overrides on top."""
    return load_validated(TrainConfig, source, overrides, TRAIN_CONFIG_DIR, "train config")
