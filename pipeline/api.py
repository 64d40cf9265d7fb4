"""The Python API for notebooks and other pipelines: `detect` (whole scenes, products on disk) and
`predict` (an in-memory pair of DataArrays → a probability DataArray), both with the shipped model
unless told otherwise.

`detect` is exactly `m2cd detect` (the same request, plan, blocks, products and resume); `predict`
runs the same normalisation, band choice, tiling and blending on arrays already in memory, for scenes
that fit there (a 2048² pair is 4 Mpx: about 150 MB of float32 for the inputs and output), and writes
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from m2cd.pretrained import shipped_checkpoint
from pipeline.config import load_detect_config
from pipeline.engine import blend
from pipeline.engine.device import resolve_device
from pipeline.engine.local import detect as run
from pipeline.engine.models import describe_model, load_model
from pipeline.engine.predict import Predictor
from pipeline.engine.request import checkpoint_threshold, validate_request
from pipeline.engine.tiling import TileGrid
from pipeline.errors import ConfigError, InputError
from pipeline.geometry import PixelBox
from pipeline.io.band_names import pick_by_name, trained_band_names
from pipeline.io.bands import model_channels, reader_default, select_bands
from pipeline.io.normalize import (
    infer_sar_units,
    match_channels,
    normalize_optical,
    normalize_sar,
    valid_mask,
)

if TYPE_CHECKING:
    import xarray as xr

    from pipeline.engine.finalize import RunSummary

# keyword options of `detect` that are the CLI's flags, as the dotted config keys they set
FLAG_KEYS = {
    "tile": "tiling.tile",
    "overlap": "tiling.overlap",
    "block": "tiling.block",
    "batch_size": "inference.batch_size",
    "device": "inference.device",
    "threshold": "products.threshold",
    "tta": "inference.tta",
}


def detect(
    optical: str,
    sar: str,
    out: str,
    *,
    checkpoint: str | None = None,
    model: str | None = None,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    pre_date: datetime | str | None = None,
    post_date: datetime | str | None = None,
    workers: int = 1,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
    **options: Any,
) -> RunSummary:
    """Change products for one pair, as `m2cd detect OPTICAL SAR --out OUT` writes them.

    `optical` and `sar` take every form the CLI does (paths, URIs, band lists, STAC Items);
    `options` are the CLI's flags by name (`tile`, `overlap`, `block`, `batch_size`, `device`,
    `threshold`, `tta`); `overrides` are dotted config keys (`{"sar.units": "db"}`). Returns the run
    summary (`OUT/run.json`'s `summary`). Errors are the CLI's: InputError, ConfigError, ...
    """

    unknown = sorted(set(options) - set(FLAG_KEYS))
    if unknown:
        raise ConfigError(
            f"detect: unknown option(s) {', '.join(unknown)} (known: {', '.join(FLAG_KEYS)}; "
            "other settings go in overrides={'dotted.key': value})"
        )
    keys = dict(overrides or {})
    keys.update({FLAG_KEYS[k]: v for k, v in options.items() if v is not None})
    request = validate_request(
        optical=str(optical),
        sar=str(sar),
        out=str(out),
        checkpoint=None if checkpoint is None else str(checkpoint),
        model=model,
        config=load_detect_config(config if config is not None else "default", keys),
        overwrite=overwrite,
        pre_date=pre_date,
        post_date=post_date,
    )
    return run(request, progress=progress, workers=workers, echo=echo)


def _labels(arr: xr.DataArray) -> tuple[str | None, ...]:
    """Band names of a DataArray: string `band` coordinates, else rioxarray's `long_name`."""
    values = [str(v) if isinstance(v, str) else None for v in arr["band"].values.tolist()]
    if any(values):
        return tuple(values)
    names = arr.attrs.get("long_name")
    if isinstance(names, list | tuple) and len(names) == arr.sizes["band"]:
        return tuple(str(n) if n else None for n in names)
    return (None,) * arr.sizes["band"]


def _bands(
    role: str, arr: xr.DataArray, wanted: list[int] | None, names: list[str] | None, channels: int
) -> list[int]:
    """1-based bands to use: explicit, else by name (as the engine picks them), else the reader's
    default for the model (pipeline.io.bands)."""

    count = arr.sizes["band"]
    if wanted is None and names:
        wanted = pick_by_name(_labels(arr), names)
    chosen = select_bands(role, f"{role} array", count, wanted, channels)  # type: ignore[arg-type]
    if chosen is not None:
        return chosen
    default = reader_default(role, count)  # type: ignore[arg-type]
    return list(range(1, (default or count) + 1))


def predict(
    optical: xr.DataArray,
    sar: xr.DataArray,
    *,
    checkpoint: str | None = None,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> xr.DataArray:
    """Change probability (float32 y×x, NaN where invalid) of a pre-event optical and a post-event
    SAR DataArray (band×y×x, e.g. from `rioxarray.open_rasterio`) on one grid, in memory.

    The result has the optical array's `y`/`x` coordinates and CRS (rioxarray) and records the
    threshold the checkpoint fitted (`attrs["threshold"]`; `prob >= threshold` is the change mask).
    SAR on another grid must be put on the optical one first: `sar.rio.reproject_match(optical)`.
    """

    for name, arr in (("optical", optical), ("sar", sar)):
        if not isinstance(arr, xr.DataArray) or arr.dims != ("band", "y", "x"):
            raise InputError(name, "expects an xarray DataArray with dims (band, y, x)")
    if optical.shape[1:] != sar.shape[1:]:
        raise InputError(
            "sar",
            f"{sar.shape[1]}×{sar.shape[2]} px is not on the optical grid "
            f"({optical.shape[1]}×{optical.shape[2]}): use sar.rio.reproject_match(optical)",
        )
    ckpt = str(checkpoint) if checkpoint is not None else str(shipped_checkpoint())
    cfg = load_detect_config(config if config is not None else "default", overrides or {})
    threshold = cfg.products.threshold
    if threshold is None:
        threshold = checkpoint_threshold(ckpt)
    ref = describe_model(ckpt, None)
    opt_ch, sar_ch = model_channels(ckpt, None)
    opt_names, sar_names = trained_band_names(ckpt)
    ob = _bands("optical", optical, cfg.optical.bands, opt_names, opt_ch)
    sb = _bands("sar", sar, cfg.sar.bands, sar_names, sar_ch)
    o_raw = np.asarray(optical.isel(band=[b - 1 for b in ob]).values)
    s_raw = np.asarray(sar.isel(band=[b - 1 for b in sb]).values)
    o_nodata = cfg.optical.nodata if cfg.optical.nodata is not None else optical.rio.nodata
    s_nodata = cfg.sar.nodata if cfg.sar.nodata is not None else sar.rio.nodata
    valid = valid_mask(o_raw, s_raw, o_nodata, s_nodata)
    units = cfg.sar.units
    if units == "auto":
        units = infer_sar_units(s_raw[:, valid], s_raw.dtype)
    o = match_channels(normalize_optical(o_raw, cfg.optical, o_raw.dtype, valid), opt_ch)
    s = match_channels(normalize_sar(s_raw, cfg.sar, units, s_raw.dtype, valid), sar_ch)
    h, w = valid.shape
    scene = PixelBox.full((h, w))

    def read(box: PixelBox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outs = [np.zeros((a.shape[0], *box.shape), np.float32) for a in (o, s)]
        ok = np.zeros(box.shape, bool)
        inner = box.intersect(scene)
        if inner is not None:
            dst = inner.relative_to(box).slices
            src = inner.slices
            outs[0][(slice(None), *dst)] = o[(slice(None), *src)]
            outs[1][(slice(None), *dst)] = s[(slice(None), *src)]
            ok[dst] = valid[src]
        return outs[0], outs[1], ok

    inf = cfg.inference
    device = resolve_device(inf.device, "inference.device")
    predictor = Predictor(
        load_model(ref, device), inf.batch_size, device, inf.precision, inf.channels_last, inf.tta
    )
    grid = TileGrid(height=h, width=w, tile=cfg.tiling.tile, overlap=cfg.tiling.overlap)
    result = blend.predict_block(
        grid, scene, read, predictor, inf.batch_size, threshold=threshold, prefetch=0
    )
    out = xr.DataArray(
        result.probability,
        dims=("y", "x"),
        coords={"y": optical["y"], "x": optical["x"]},
        name="probability",
        attrs={"threshold": threshold, "model_digest": ref.digest, "sar_units": units},
    )
    if optical.rio.crs is not None:
        out = out.rio.write_crs(optical.rio.crs).rio.write_transform(optical.rio.transform())
    return out
