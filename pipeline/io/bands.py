"""Which raster bands feed a model: one rule for the engine (``pipeline.engine``) and training.

A model declares how many channels it takes (``model.config.bands``: ``optical_channels``,
``sar_channels``); a file has some number of bands; ``optical.bands`` / ``sar.bands`` in the
``DetectConfig`` may name them. Without a choice in the config the scene reader takes the first 3
optical bands (or the only one) and every SAR band (1 or 2), which suits the official 3-channel
models. A model with other channel counts (a 4-band optical stem, a native VV+VH SAR stem) needs
other bands; this module picks them from the model so that training and detection read the same
bands from the same file, and refuses, naming the file and both counts, when they cannot match.

The selected bands are mapped onto the model's channels by ``pipeline.io.normalize.match_channels``:
equal counts pass through, 1 band is replicated, 2 SAR bands become (VV, VH, mean) for 3 channels.
"""

from __future__ import annotations

from typing import Literal

from m2cd.config import ModelConfig, load_model_config
from pipeline.config import DetectConfig
from pipeline.errors import InputError
from pipeline.io import storage

Role = Literal["optical", "sar"]


def fits(selected: int, channels: int, role: Role = "sar") -> bool:
    """Whether ``match_channels`` maps ``selected`` bands onto ``channels`` model channels.

    2 → 3 (b1, b2, mean) is a SAR rule (VV, VH and their mean are all backscatter); two optical
    bands and their mean are no colour image a 3-channel optical encoder knows, so
    ``optical.bands=[1,2]`` is refused at plan time instead of running on a made-up third band.
    """
    pair_rule = selected == 2 and channels == 3 and role == "sar"
    return selected == channels or selected == 1 or pair_rule


def reader_default(role: Role, count: int) -> int | None:
    """How many bands the scene reader takes from a file when the config names none
    (``pipeline.io.scene``): None where it refuses to guess (2-band optical, >2-band SAR)."""
    if role == "optical":
        return 3 if count >= 3 else (1 if count == 1 else None)
    return count if count <= 2 else None


def select_bands(
    role: Role, uri: str, count: int, wanted: list[int] | None, channels: int
) -> list[int] | None:
    """The bands to read for a model with ``channels`` inputs; None keeps the reader's default.

    Explicit ``wanted`` bands are kept when they fit. Otherwise the reader's default is kept when it
    fits, else the first ``channels`` bands of the file are taken (a 4-channel optical model reads
    B1..B4). InputError (naming the file, its band count and the model's) when nothing fits.
    """
    key = f"{role}.bands"
    if wanted is not None:
        if fits(len(wanted), channels, role):
            return wanted
        raise InputError(
            uri,
            f"{key} {wanted} selects {len(wanted)} band(s) but the model takes {channels} "
            f"{role} channel(s); select {channels} band(s) (or 1 to replicate)",
        )
    default = reader_default(role, count)
    if default is not None and fits(default, channels, role):
        return None
    if count >= channels and (role == "optical" or channels <= 2):
        return list(range(1, channels + 1))
    raise InputError(
        uri,
        f"{role} has {count} band(s) but the model takes {channels} {role} channel(s); "
        f"give a file with {channels} band(s) (or 1 to replicate), set {key}, "
        "or train a model whose bands config matches",
    )


def resolve_bands(
    cfg: DetectConfig,
    optical: tuple[str, int],
    sar: tuple[str, int],
    optical_channels: int,
    sar_channels: int,
) -> DetectConfig:
    """``cfg`` with the bands a model needs (unchanged when the defaults already fit it).

    ``optical`` and ``sar`` are (uri, band count of the file). Returning ``cfg`` itself when nothing
    changes keeps the run key (a hash of the config) of every run that needed no choice.
    """
    opt = select_bands("optical", optical[0], optical[1], cfg.optical.bands, optical_channels)
    sar_b = select_bands("sar", sar[0], sar[1], cfg.sar.bands, sar_channels)
    update: dict[str, object] = {}
    if opt != cfg.optical.bands:
        update["optical"] = cfg.optical.model_copy(update={"bands": opt})
    if sar_b != cfg.sar.bands:
        update["sar"] = cfg.sar.model_copy(update={"bands": sar_b})
    if not update:
        return cfg
    return cfg.model_copy(update=update)


def model_channels(checkpoint: str | None = None, name: str | None = None) -> tuple[int, int]:
    """(optical_channels, sar_channels) of a checkpoint (local or s3://) or a named model config,
    read from its JSON config without loading weights."""

    if checkpoint is not None:
        meta_uri = checkpoint.rstrip("/") + "/checkpoint.json"
        try:
            meta = storage.read_json(meta_uri)
            bands = ModelConfig.model_validate(meta["model"]).bands
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise InputError(meta_uri, f"unreadable model config ({exc})") from None
    else:
        assert name is not None, "a named config when no checkpoint is given"
        bands = load_model_config(name).bands
    return bands.optical_channels, bands.sar_channels


def trained_band_counts(checkpoint: str | None) -> tuple[int | None, int | None]:
    """(optical, SAR) band counts a checkpoint was trained on (its provenance ``inputs``), or
    None where it does not record them (older checkpoints, named untrained models)."""
    if checkpoint is None:
        return None, None

    try:
        meta = storage.read_json(checkpoint.rstrip("/") + "/checkpoint.json")
    except (InputError, OSError):
        return None, None
    inputs = (meta.get("provenance") or {}).get("inputs") or {} if isinstance(meta, dict) else {}

    def count(v: object) -> int | None:
        if isinstance(v, list):
            return len(v)
        return v if isinstance(v, int) else None

    return count(inputs.get("optical_bands")), count(inputs.get("sar_bands"))


def check_trained_bands(
    cfg: DetectConfig,
    optical: tuple[str, int],
    sar: tuple[str, int],
    trained: tuple[int | None, int | None],
) -> None:
    """Refuse inputs whose band count differs from what the model was trained on.

    Channel matching would run them anyway (2 SAR bands become VV, VH, mean for a model trained
    on VV replicated), and the result is silent nonsense: a 2-band SAR scene through a 1-band
    model flagged 53 % of a scene as change (F1 0.17) with no word.
    """
    for role, (uri, count), wanted, n_trained in (
        ("optical", optical, cfg.optical.bands, trained[0]),
        ("sar", sar, cfg.sar.bands, trained[1]),
    ):
        if n_trained is None:
            continue
        selected = len(wanted) if wanted is not None else reader_default(role, count)  # type: ignore[arg-type]
        if selected is not None and selected != n_trained:
            first = ",".join(str(b) for b in range(1, n_trained + 1))
            raise InputError(
                uri,
                f"{selected} {role} band(s) selected but the model was trained on {n_trained}; "
                f"set {role}.bands=[{first}] (e.g. --set {role}.bands=[{first}]) or use a model "
                f"trained on {selected}",
            )
