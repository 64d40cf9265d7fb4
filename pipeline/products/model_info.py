"""What the STAC Item says about the model (MLM extension): read from the checkpoint, not assumed.

A checkpoint records its network config, the bands it was trained on, the normalisation and the
threshold fitted on validation data (`m2cd.checkpoint` provenance). `model_info` turns that, and
the run's own settings where the checkpoint is silent (a named untrained model, an older
checkpoint), into a `ModelInfo` that `pipeline.products.stac` writes as `mlm:*` fields, so a
reader can tell which weights made the products and how to feed them again. Parameters are
counted on PyTorch's meta device: no memory is allocated and no weights are read (0.6 s for
MiT-b0, most of it building the modules).
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

import m2cd
from m2cd.config import CONFIG_DIR, ModelConfig
from pipeline.config import DetectConfig, OpticalConfig, SarConfig
from pipeline.io import storage

WEIGHTS_FILE = "weights.safetensors"  # m2cd.checkpoint.WEIGHTS (no torch import for a constant)


class InputInfo(BaseModel):
    """One model input (a branch of the Siamese encoder) and how raw pixels become it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    bands: list[str] = Field(description="Band names the model was trained on (or read here).")
    channels: int = Field(description="Channels the encoder takes (bands are replicated up).")
    mean: float = Field(description="z-score mean, in `units`, after the clip.")
    stddev: float = Field(description="z-score standard deviation, in `units`.")
    clip: tuple[float, float] = Field(description="Clip applied before the z-score, in `units`.")
    units: str
    description: str
    pre_processing: str = Field(description="Python entry point doing the whole conversion.")


class WeightsInfo(BaseModel):
    """The file the model is loaded from: a checkpoint's weights or a named config's YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    href: str = Field(description="Redacted URI or absolute path.")
    media_type: str
    artifact_type: str
    title: str
    size: int | None = Field(default=None, description="Bytes; None when it cannot be stat'ed.")
    sha256: str | None = Field(default=None, description="Hex SHA-256 of the file, if known.")


class ModelInfo(BaseModel):
    """The model of a run, as the MLM extension describes it (JSON-serialisable, immutable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    config_name: str
    architecture: str
    trained: bool = Field(description="False for a named config's seeded random weights.")
    framework: Literal["PyTorch"] = "PyTorch"
    framework_version: str
    total_parameters: int
    pretrained_source: str | None = Field(
        default=None, description="Backbone initialisation, when one was loaded before training."
    )
    training_data: str | None = None
    inputs: list[InputInfo]
    num_classes: int
    threshold: float
    threshold_source: str
    tile: int
    overlap: int
    tta: bool
    batch_size: int
    device: str
    precision: str
    weights: WeightsInfo
    digest: str


def model_info(
    checkpoint: str | None,
    name: str | None,
    digest: str,
    config: DetectConfig,
    sar_units: str | None,
    checkpoint_meta: dict[str, Any] | None = None,
) -> ModelInfo:
    """The `ModelInfo` of a checkpoint (local dir or s3:// prefix) or of a named untrained config.

    `checkpoint_meta` is the parsed checkpoint.json when the caller already has it; otherwise it
    is read here (a JSON file: the weights are not opened).
    """

    threshold = config.products.threshold
    if checkpoint is not None:
        meta = checkpoint_meta if checkpoint_meta is not None else _read_meta(checkpoint)
        model_cfg = ModelConfig.model_validate(meta["model"])
        prov: dict[str, Any] = meta.get("provenance") or {}
        inputs = prov.get("inputs") or {}
        recorded_norm = inputs.get("normalisation") or {}
        display = prov.get("shipped_as") or os.path.basename(checkpoint.rstrip("/"))
        weights = _checkpoint_weights(checkpoint, digest)
        fitted = prov.get("threshold")
        threshold_source = (
            "fitted on the checkpoint's validation data"
            if fitted is not None and threshold == fitted
            else "set for this run"
        )
        data = prov.get("data") or {}
        training_data = data.get("dataset") if isinstance(data, dict) else None
        torch_version = str(prov.get("torch") or _torch_version())
        trained = True
    else:
        assert name is not None, "a named config when no checkpoint is given"
        model_cfg = m2cd.load_model_config(name)
        inputs, recorded_norm, display = {}, {}, name
        weights = _config_weights(name)
        threshold_source = "default (untrained model)"
        training_data, torch_version, trained = None, _torch_version(), False
    assert threshold is not None, "DetectRequest resolves the threshold before products exist"
    bands = model_cfg.bands
    optical = _optical_input(
        _section(OpticalConfig, recorded_norm.get("optical"), config.optical),
        _names(inputs.get("optical_bands"), config.optical.bands, bands.optical_channels, "B"),
        bands.optical_channels,
    )
    sar = _sar_input(
        _section(SarConfig, recorded_norm.get("sar"), config.sar),
        _names(inputs.get("sar_bands"), config.sar.bands, bands.sar_channels, "S"),
        bands.sar_channels,
        sar_units or config.sar.units,
    )
    return ModelInfo(
        name=str(display),
        config_name=model_cfg.name,
        architecture=architecture(model_cfg),
        trained=trained,
        framework_version=torch_version,
        total_parameters=count_parameters(model_cfg),
        pretrained_source=model_cfg.backbone.pretrained,
        training_data=training_data,
        inputs=[optical, sar],
        num_classes=model_cfg.decoder.num_classes,
        threshold=float(threshold),
        threshold_source=threshold_source,
        tile=config.tiling.tile,
        overlap=config.tiling.overlap,
        tta=config.inference.tta,
        batch_size=config.inference.batch_size,
        device=config.inference.device,
        precision=config.inference.precision,
        weights=weights,
        digest=digest,
    )


def architecture(cfg: Any) -> str:
    """A readable name of the network from its config, e.g. "M2CD Siamese MiT-b0 + MoE (4
    experts, top-2) + MLP decoder"."""
    backbone = cfg.backbone.name.replace("mit_", "MiT-").replace("_", "-")
    parts = [f"M2CD Siamese {backbone}"]
    if cfg.moe.enabled:
        parts.append(f"MoE ({cfg.moe.experts} experts, top-{cfg.moe.top_k})")
    if cfg.o2sp.enabled:
        parts.append("O2SP")
    parts.append("MLP decoder")
    return " + ".join(parts)


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters (trainable and not; buffers excluded) of the network a config builds.

    Cached by the config's JSON: building even on the meta device runs timm's init (0.17 s for
    MiT-b0, 8 % of a 4096² null-model finalize), and a served process finalizes many runs.
    """
    return _count_parameters(cfg.model_dump_json())


@functools.lru_cache(maxsize=32)
def _count_parameters(cfg_json: str) -> int:
    with torch.device("meta"):
        model = m2cd.build_model(ModelConfig.model_validate_json(cfg_json))
    return int(sum(p.numel() for p in model.parameters()))


def _torch_version() -> str:

    return str(torch.__version__)


def _read_meta(checkpoint: str) -> dict[str, Any]:

    meta = storage.read_json(checkpoint.rstrip("/") + "/checkpoint.json")
    assert isinstance(meta, dict), f"{checkpoint}: checkpoint.json is verified at plan time"
    return meta


def _checkpoint_weights(checkpoint: str, digest: str) -> WeightsInfo:

    uri = checkpoint.rstrip("/") + "/" + WEIGHTS_FILE
    size: int | None
    if storage.is_remote(uri):
        try:
            size = int(storage.fs_for(uri).info(uri)["size"])
        except (OSError, KeyError, TypeError, ValueError):
            size = None
        # deferred: import cycle (pipeline.products.metadata imports this module)
        from pipeline.products.metadata import redact_uri

        href = redact_uri(uri)
    else:
        local = os.path.abspath(uri.removeprefix("file://"))
        size = os.path.getsize(local)
        href = local
    return WeightsInfo(
        href=href,
        media_type="application/octet-stream; framework=pytorch",
        artifact_type="safetensors.torch.save_file",
        title="Model weights (safetensors; checkpoint.json beside them holds the config)",
        size=size,
        sha256=digest.removeprefix("sha256:") if digest.startswith("sha256:") else None,
    )


def _config_weights(name: str) -> WeightsInfo:
    """A named config has no weights file: its YAML and the seed rebuild the same weights."""

    path = CONFIG_DIR / f"{name}.yaml"
    return WeightsInfo(
        href=str(path),
        media_type="application/yaml",
        artifact_type="m2cd.build_model",
        title=f"Model config {name!r}: untrained weights, seeded (pipeline.engine.models)",
        size=path.stat().st_size,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def _section(kind: type[BaseModel], recorded: Any, run: Any) -> Any:
    """The normalisation the checkpoint was trained with, else the run's."""
    if isinstance(recorded, dict):
        fields = {k: v for k, v in recorded.items() if k in kind.model_fields}
        try:
            return kind.model_validate(fields)
        except ValueError:
            return run
    return run


def _names(recorded: Any, run_bands: list[int] | None, channels: int, prefix: str) -> list[str]:
    """Band names the checkpoint records; else the run's 1-based band numbers as B1, B2, ..."""
    if isinstance(recorded, list) and all(isinstance(b, str) for b in recorded) and recorded:
        return list(recorded)
    numbers = run_bands or list(range(1, channels + 1))
    return [f"{prefix}{i}" for i in numbers]


def _optical_input(cfg: OpticalConfig, bands: list[str], channels: int) -> InputInfo:
    top = cfg.max_reflectance
    scale = (
        "a scale by dtype: 10000 for 16-bit integers, 1 for floats"
        if cfg.scale == "auto"
        else cfg.scale
    )
    return InputInfo(
        name="optical (pre-event)",
        bands=bands,
        channels=channels,
        mean=top / 2,
        stddev=top / 4,
        clip=(0.0, top),
        units="reflectance",
        description=(
            f"Surface reflectance (DN / {scale}) clipped to [0, {top}], then z-score "
            f"(mean {top / 2}, stddev {top / 4}): values in [-2, 2]; nodata pixels are 0. "
            f"{len(bands)} band(s) onto {channels} channel(s), replicated when fewer."
        ),
        pre_processing="pipeline.io.normalize:normalize_optical",
    )


def _sar_input(cfg: SarConfig, bands: list[str], channels: int, units: str) -> InputInfo:
    lo, hi = cfg.db_range
    return InputInfo(
        name="SAR (post-event)",
        bands=bands,
        channels=channels,
        mean=(lo + hi) / 2,
        stddev=(hi - lo) / 2,
        clip=(lo, hi),
        units="dB",
        description=(
            f"Backscatter sigma0 in dB (this run read {units}: linear power -> 10*log10, "
            f"amplitude -> 20*log10), clipped to [{lo}, {hi}] dB, then z-score (mean "
            f"{(lo + hi) / 2}, stddev {(hi - lo) / 2}): values in [-1, 1]; nodata pixels are 0. "
            f"{len(bands)} band(s) onto {channels} channel(s): one replicated, two as "
            "(b1, b2, mean)."
        ),
        pre_processing="pipeline.io.normalize:normalize_sar",
    )
