"""ModelConfig: every choice that shapes an M²CD network, validated by pydantic.

Named configs live in ``configs/model/NAME.yaml`` (the repository's ``configs/``, installed as package
data ``m2cd/configs/`` by a wheel: ``config_root``); a config is also accepted
as a YAML path, a dict or a ModelConfig, with dotted or nested overrides on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


def config_root() -> Path:
    """The shipped configs (model/, pipeline/, train/, regions/): the wheel's package data
    `m2cd/configs/` when installed, else the checkout's `configs/` (editable or PYTHONPATH)."""
    packaged = Path(__file__).resolve().parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "configs"


CONFIG_ROOT = config_root()
CONFIG_DIR = CONFIG_ROOT / "model"

BackboneName = Literal["mit_b0", "mit_b1", "resnet18", "mobilenetv3_large", "mobilenetv3_small"]


class ConfigSection(BaseModel):
    """The base of every config section in the project: unknown keys are refused (a typo names
    the field instead of being ignored) and values are frozen (a config is hashed into run keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneConfig(ConfigSection):
    """The shared encoder. MiT widths/depths/heads may be shrunk (e.g. the ``tiny`` test model)."""

    name: BackboneName = "mit_b1"
    pretrained: str | None = Field(
        default=None,
        description="Local timm-format weights (safetensors or .pth); never downloaded.",
    )
    widths: tuple[int, int, int, int] | None = Field(default=None, description="MiT only.")
    depths: tuple[int, int, int, int] | None = Field(default=None, description="MiT only.")
    heads: tuple[int, int, int, int] | None = Field(default=None, description="MiT only.")
    drop_path: float = Field(default=0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _mit_only(self) -> BackboneConfig:
        custom = self.widths or self.depths or self.heads
        if custom and not self.name.startswith("mit_"):
            raise ValueError(f"widths/depths/heads only apply to MiT backbones, not {self.name}")
        if (
            self.widths
            and self.heads
            and any(w % h for w, h in zip(self.widths, self.heads, strict=True))
        ):
            raise ValueError(
                f"each width must be divisible by its head count: {self.widths}, {self.heads}"
            )
        return self


class MoEConfig(ConfigSection):
    """Spec §4: sparse MoE after each stage (after the taps for MobileNetV3)."""

    enabled: bool = True
    experts: int = Field(default=4, ge=1)
    top_k: int = Field(default=2, ge=1)
    mid_ratio: int = Field(default=4, ge=1, description="Expert hidden width = mid_ratio · C.")
    noisy_gating: bool = True
    balance_weight: float = Field(default=0.01, ge=0)

    @model_validator(mode="after")
    def _k_le_e(self) -> MoEConfig:
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed experts ({self.experts})")
        return self


class O2SPConfig(ConfigSection):
    """Spec §5: pseudo-SAR branch and guide loss, training only.

    ``official``: x·G on the normalised input, G ~ Gamma(1/v, scale v), v ~ U{var_min..var_max} once
    per forward. ``looks``: G ~ Gamma(L, scale 1/L) (mean 1, variance 1/L: L-look intensity speckle)
    applied to the linear intensity ``x·input_std + input_mean`` (clamped at 0), then normalised back.
    """

    enabled: bool = False
    guide_weight: float = Field(default=1e-4, ge=0)
    loss: Literal["l1", "mse"] = "l1"
    noise: Literal["official", "looks"] = "official"
    var_min: int = Field(default=1, ge=1)
    var_max: int = Field(default=20, ge=1)
    looks: float = Field(
        default=4.4, gt=0, description="Equivalent number of looks (S1 GRD ≈ 4.4)."
    )
    # looks mode: input = (intensity − mean)/std. The defaults invert pipeline.io.normalize's optical
    # scaling, (refl/max_reflectance − 0.5)/0.25; the official ImageNet preprocessing would be
    # mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    input_mean: tuple[float, ...] = (0.5,)
    input_std: tuple[float, ...] = (0.25,)

    @model_validator(mode="after")
    def _range(self) -> O2SPConfig:
        if self.var_min > self.var_max:
            raise ValueError(f"var_min ({self.var_min}) must be <= var_max ({self.var_max})")
        return self


class DistillConfig(ConfigSection):
    """Self-distillation beyond the official code: KL(T) between teacher and student logits."""

    teacher: str = Field(
        default="none", description="'none', 'ema' (EMA of the student) or a checkpoint directory."
    )
    temperature: float = Field(default=1.0, gt=0)
    weight: float = Field(default=1.0, ge=0)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)


class BandsConfig(ConfigSection):
    """Input bands. Official: 3-band optical, SAR gray replicated to 3, one shared stem."""

    optical_channels: int = Field(default=3, ge=1)
    sar_channels: int = Field(default=3, ge=1)
    separate_stems: bool = False

    @model_validator(mode="after")
    def _shared_stem_needs_same_bands(self) -> BandsConfig:
        if not self.separate_stems and self.optical_channels != self.sar_channels:
            raise ValueError(
                "a shared stem needs optical_channels == sar_channels; set separate_stems: true"
            )
        return self


class DecoderConfig(ConfigSection):
    """Spec §6 MLP head; its output is (padded input)/2, then resized to the input size."""

    channels: int = Field(default=256, ge=1)
    num_classes: int = Field(default=2, ge=2)


class ModelConfig(ConfigSection):
    """The whole network. ``model.config`` holds one; checkpoints store it as JSON."""

    name: str = "custom"
    backbone: BackboneConfig = BackboneConfig()
    moe: MoEConfig = MoEConfig()
    o2sp: O2SPConfig = O2SPConfig()
    distill: DistillConfig = DistillConfig()
    bands: BandsConfig = BandsConfig()
    decoder: DecoderConfig = DecoderConfig()
    pad_multiple: int = Field(default=32, ge=1)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` laid over `base`, recursing into mappings (every config layer merges this way)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def dotted_to_nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"moe.top_k": 1} -> {"moe": {"top_k": 1}}: CLI `--set` and flow parameters use dotted keys."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = deep_merge(node[leaf], value)
        else:
            node[leaf] = value
    return nested


def available_configs() -> list[str]:
    """Names of the configs shipped in configs/model/."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a model config must be a mapping, got {type(data).__name__}")
    return data


def load_model_config(
    source: str | Path | dict[str, Any] | ModelConfig, **overrides: Any
) -> ModelConfig:
    """Resolve a name, YAML path, dict or ModelConfig; apply overrides ("moe.enabled"=False or nested).

    Raises ValueError (pydantic's ValidationError is one) naming the source and bad fields.
    """
    if isinstance(source, ModelConfig):
        data = source.model_dump()
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if path.suffix in {".yaml", ".yml"} or path.is_file():
            if not path.is_file():
                raise ValueError(f"{path}: model config file not found")
            data = _read_yaml(path)
            data.setdefault("name", path.stem)
        else:
            named = CONFIG_DIR / f"{source}.yaml"
            if not named.is_file():
                raise ValueError(
                    f"unknown model config {source!r}: not a file and not one of {available_configs()}"
                )
            data = _read_yaml(named)
            data.setdefault("name", str(source))
    if overrides:
        data = deep_merge(data, dotted_to_nested(overrides))
    return ModelConfig.model_validate(data)
