"""Validated configuration of a detection run (pydantic), loadable from YAML with overrides.

Every section forbids unknown keys, so a typo names the field instead of being ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from m2cd.config import CONFIG_ROOT, ConfigSection, deep_merge, dotted_to_nested
from pipeline.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _device_name(value: str) -> str:
    """`auto|cpu|cuda|cuda:N` (the forms `pipeline.engine.device.resolve_device` takes); whether
    that GPU exists is checked when the device is resolved, at plan time."""
    if not _DEVICE.fullmatch(value):
        raise ValueError("Input should be 'auto', 'cpu' or 'cuda' (or 'cuda:N' for GPU N)")
    return value


DeviceName = Annotated[str, AfterValidator(_device_name)]
"""A device field of a config: auto, cpu, cuda or cuda:N (a second GPU is `cuda:1`)."""

CONFIG_DIR = CONFIG_ROOT  # configs/ of the checkout, or the installed package data


class OpticalConfig(ConfigSection):
    """How optical digital numbers become model input."""

    bands: list[int] | None = Field(
        default=None, description="1-based band indexes; None takes the first 3 (or the only one)."
    )
    scale: float | Literal["auto"] = Field(
        default="auto",
        description=(
            "DN per unit reflectance; auto: 10000 for (u)int16, 255/max_reflectance for uint8"
            " (8-bit full scale maps onto the clip), 1 for float."
        ),
    )
    max_reflectance: float = Field(
        default=0.5, gt=0, description="Reflectance clip before scaling."
    )
    nodata: float | None = Field(default=None, description="Overrides the file's nodata value.")

    @field_validator("scale")
    @classmethod
    def _positive_scale(cls, v: float | str) -> float | str:
        if isinstance(v, float | int) and not v > 0:
            raise ValueError(f"scale must be > 0 or 'auto', got {v}")
        return v


class SarConfig(ConfigSection):
    """How SAR backscatter becomes model input (σ⁰ in dB, clipped)."""

    bands: list[int] | None = Field(default=None, description="1-based band indexes (1 or 2).")
    units: Literal["auto", "linear", "amplitude", "db"] = Field(
        default="auto",
        description="auto: integer → amplitude; float with median < 0 or values < -1 → db; else linear.",
    )
    amplitude_scale: float | Literal["auto"] = Field(
        default="auto",
        description="Amplitude units: σ⁰ = (A / scale)²; auto: dtype max for integers, 1 for float.",
    )
    db_range: tuple[float, float] = (-25.0, 5.0)
    dn_to_db: tuple[float, float] | None = Field(
        default=None,
        description=(
            "With units db: dB = DN × gain + offset, for dB stored as integers (8-bit renderings:"
            " OMBRIA maps [-25, 0] dB onto 0-255, i.e. [0.0980392, -25])."
        ),
    )
    nodata: float | None = Field(default=None, description="Overrides the file's nodata value.")

    @field_validator("bands")
    @classmethod
    def _one_or_two(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not 1 <= len(v) <= 2:
            raise ValueError("SAR takes 1 or 2 bands (e.g. [1] for VV, [1, 2] for VV+VH)")
        return v

    @model_validator(mode="after")
    def _range_ordered(self) -> SarConfig:
        lo, hi = self.db_range
        if not lo < hi:
            raise ValueError(f"db_range must be (low, high) with low < high, got {self.db_range}")
        if self.dn_to_db is not None and self.units != "db":
            raise ValueError("dn_to_db only applies with units: db")
        if self.amplitude_scale != "auto" and not self.amplitude_scale > 0:
            raise ValueError(f"amplitude_scale must be > 0 or 'auto', got {self.amplitude_scale}")
        return self


class GridConfig(ConfigSection):
    """What happens when the two scenes are on different grids."""

    resampling: Literal["nearest", "bilinear", "cubic", "average"] = "bilinear"


class TilingConfig(ConfigSection):
    """The global tile grid and the blocks (one task each) that group its tiles."""

    tile: int = Field(default=256, ge=32, le=4096)
    overlap: int = Field(default=64, ge=0)
    block: int = Field(default=2048, ge=64, description="Block core size = output Zarr chunk size.")
    min_valid_fraction: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> TilingConfig:
        if self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than tile ({self.tile})")
        return self


class InferenceConfig(ConfigSection):
    """Where and how the model runs."""

    batch_size: int = Field(default=8, ge=1)
    device: DeviceName = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    tta: bool = Field(
        default=False,
        description="Average the change probability over the 8 flips/rotations of each tile "
        "(8× the model time; EVALUATION.md measures what it buys).",
    )
    prefetch: int | Literal["auto"] = Field(
        default="auto",
        description="Batches the reader runs ahead of compute; auto: 2 where it has spare CPU "
        "(a GPU run, s3:// inputs, or fewer model threads than cores), else 0.",
    )
    forwards: int | Literal["auto"] = Field(
        default="auto",
        description="Batches each block keeps in the model at once; auto: on a CPU one per core "
        "(shared among the blocks running together), each forward on one thread; on a GPU 1.",
    )

    @field_validator("prefetch", "forwards")
    @classmethod
    def _auto_or_at_least(cls, value: int | str, info: ValidationInfo) -> int | str:
        least = {"prefetch": 0, "forwards": 1}[info.field_name or ""]
        if isinstance(value, int) and value < least:
            raise ValueError(f"{info.field_name} must be 'auto' or an integer ≥ {least}")
        return value


class ProductConfig(ConfigSection):
    """Which products are written and how."""

    threshold: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Change threshold; None: the checkpoint's fitted threshold, else 0.5.",
    )
    min_mapping_unit_px: int = Field(default=0, ge=0, description="Smaller polygons are dropped.")
    cog_blocksize: int = Field(
        default=512, ge=64, le=4096, multiple_of=16, description="COG tile size (GeoTIFF: ×16)."
    )
    cog_deflate_level: int = Field(
        default=1,
        ge=1,
        le=9,
        description="DEFLATE level of the COGs: 1 writes 1.6× faster than 6 for ~2 % more bytes.",
    )
    quicklook_max_size: int = Field(default=1024, ge=64)
    quicklook_rgb: list[int] | None = Field(
        default=None,
        min_length=3,
        max_length=3,
        description=(
            "1-based red, green, blue bands of the optical scene for the quick-looks (not what the"
            " model reads); None: from the file's colours or band names, else B02,B03,B04 order."
        ),
    )
    wgs84_geojson: bool = Field(
        default=False, description="Also write change_wgs84.geojson (RFC 7946 lon/lat)."
    )
    diagnostics: bool = Field(
        default=False,
        description="Also write routing_optical.tif and routing_sar.tif: the top-1 MoE expert of "
        "every pixel's token at each stage (`m2cd detect --diagnostics`); off, no hook is attached.",
    )


class OutputConfig(ConfigSection):
    """How a run shares its output prefix: the writer lease and the staging age limit.

    Not hashed into the run key (`pipeline.engine.plan.config_hash` leaves it out): none of it
    changes a pixel, and a resumed run must keep its key when only these change.
    """

    lock_wait_s: float = Field(
        default=0.0,
        ge=0,
        description="Seconds a run waits for another run writing the same output; 0: fail at once.",
    )
    lease_ttl_s: float = Field(
        default=120.0,
        ge=5,
        description="S3 writer lease lifetime, renewed every third of it; a killed run's lease is "
        "taken over once it expired (local disks release the lock when the process dies).",
    )
    staging_max_age_days: float = Field(
        default=7.0,
        gt=0,
        description="Staging of other runs untouched this long is removed by the next run.",
    )


class DetectConfig(ConfigSection):
    """Everything that shapes a detection run's products (hashed into the run key, except
    `output`)."""

    optical: OpticalConfig = OpticalConfig()
    sar: SarConfig = SarConfig()
    grid: GridConfig = GridConfig()
    tiling: TilingConfig = TilingConfig()
    inference: InferenceConfig = InferenceConfig()
    products: ProductConfig = ProductConfig()
    output: OutputConfig = OutputConfig()
    max_pixels: int = Field(
        default=50_000 * 50_000, gt=0, description="Scenes larger than this are refused up front."
    )


def _allowed_keys(model: type[BaseModel] | None, path: tuple[Any, ...]) -> list[str] | None:
    """The field names of the section at `path` inside `model` (None when it cannot be followed)."""
    for part in path:
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return list(model.model_fields) if model is not None else None


def format_validation_error(
    exc: ValidationError, source: str, model: type[BaseModel] | None = None
) -> str:
    """One line per bad field: its dotted path, the problem and the allowed values.

    With `model`, an unknown key also lists the keys its section allows (typos name the fix).
    """
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        line = f"{loc}: {err['msg']} (got {err.get('input')!r})"
        if err["type"] == "extra_forbidden" and (keys := _allowed_keys(model, err["loc"][:-1])):
            line += f"; allowed keys: {', '.join(keys)}"
        lines.append(line)
    return f"{source}: invalid config\n  " + "\n  ".join(lines)


def _read_layered(
    path: Path, named_dir: Path, kind: str, chain: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """The mapping in `path` laid over the one its `base:` names (a name in `named_dir` or a path
    relative to the file), recursively: a recipe that continues another (ombria_more continues
    ombria) states only what differs, so a fix to the shared part lands in one file."""
    if path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"{path}: base: forms a cycle ({cycle})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {kind} must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base: must name a {kind} (got {base!r})")
    base_path = _config_path(base, named_dir, relative_to=path.parent)
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base!r} not found (looked for {base_path})")
    return deep_merge(_read_layered(base_path, named_dir, kind, (*chain, path.resolve())), data)


def _config_path(source: str | Path, named_dir: Path, relative_to: Path | None = None) -> Path:
    """A bare name (no suffix) found in `named_dir` wins; anything else is a path."""
    path = Path(source)
    named = named_dir / f"{source}.yaml"
    if not path.suffix and named.exists():
        return named
    if relative_to is not None and not path.is_absolute():
        return relative_to / path
    return path


def load_validated(
    model: type[ModelT],
    source: str | Path | dict[str, Any] | None,
    overrides: dict[str, Any] | None,
    named_dir: Path,
    kind: str,
) -> ModelT:
    """A config of type `model` from a YAML path (with its `base:` chain), a name in `named_dir`, or
    a dict, with dotted overrides on top; every failure is a ConfigError naming the file, the field
    and what is allowed."""
    data: dict[str, Any] = {}
    label = kind
    if isinstance(source, dict):
        data = dict(source)
    elif source is not None:
        path = _config_path(source, named_dir)
        if not path.is_file():
            raise ConfigError(f"{path}: {kind} file not found")
        label = str(path)
        data = _read_layered(path, named_dir, kind)
    if overrides:
        data = deep_merge(data, dotted_to_nested(overrides))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, label, model)) from None


def load_detect_config(
    source: str | Path | dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> DetectConfig:
    """Load a DetectConfig from a YAML file, a named config in configs/pipeline/, or a dict."""
    return load_validated(DetectConfig, source, overrides, CONFIG_DIR / "pipeline", "config")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` items of `--set` (dotted keys, YAML values) → overrides for the config loaders;
    the one parser of every `--set` (detect, train, the evaluation scripts)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. tiling.tile=512")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or exc).strip()
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
    return out
