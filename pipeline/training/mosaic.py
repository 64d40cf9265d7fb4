"""Chips laid out as one scene: a grid of co-registered chips written as three GeoTIFFs.

The scene engine works on scenes, not chips; a mosaic of a chip dataset's test split (OMBRIA's 70
test chips: 7 rows × 10 columns of 256² = 4.6 Mpx) lets ``m2cd detect`` run on real data end to end
and be scored against the chips' labels, which is what ``make demo`` shows.

The SAR is written as float32 σ⁰ in dB (decoded from the chips' DN with the recipe's
``sar.dn_to_db``), so the mosaic reads like a calibrated product under ``sar.units: auto``; the
optical keeps its 8-bit DN. Chips carry no georeferencing, so neither does the mosaic.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from pipeline.config import SarConfig
from pipeline.errors import InputError
from pipeline.io.normalize import sar_to_db
from pipeline.training.data import ChipTriple, decode_label, label_encoding


@dataclass(frozen=True)
class Mosaic:
    """A chip set laid out as one scene (paths, size, chip count): the demo runs the scene engine on
    it."""

    optical: Path
    sar: Path
    label: Path
    shape: tuple[int, int]
    chips: int


def _read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read()


def _write(path: Path, data: np.ndarray, nodata: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "nodata": nodata,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


def write_mosaic(
    triples: list[ChipTriple], out_dir: str | Path, sar: SarConfig, cols: int = 10
) -> Mosaic:
    """Lay ``triples`` row by row, ``cols`` per row; empty cells are nodata (0 / NaN / 255)."""
    if not triples:
        raise InputError(str(out_dir), "no chips to lay out")
    first = _read(triples[0][1])
    c_opt, th, tw = first.shape
    rows = math.ceil(len(triples) / cols)
    h, w = rows * th, cols * tw
    optical = np.zeros((c_opt, h, w), np.uint8)
    sar_db = np.full((1, h, w), np.nan, np.float32)
    label = np.full((1, h, w), 255, np.uint8)
    raw_labels = [_read(t[3])[0] for t in triples]
    enc = label_encoding(set().union(*(np.unique(r).tolist() for r in raw_labels)), str(out_dir))
    units = "db" if sar.dn_to_db is not None else "amplitude"
    for i, ((chip_id, opt_p, sar_p, _), raw) in enumerate(zip(triples, raw_labels, strict=True)):
        r, c = divmod(i, cols)
        win = (slice(None), slice(r * th, (r + 1) * th), slice(c * tw, (c + 1) * tw))
        opt = _read(opt_p)
        if opt.shape[1:] != (th, tw):
            raise InputError(str(opt_p), f"chip {chip_id} is {opt.shape[1:]}, not {(th, tw)}")
        optical[win] = opt
        s = _read(sar_p)[:1]
        db = sar_to_db(s, units, sar, s.dtype)
        db[s == 0] = np.nan  # zero DN is fill, as the chips' valid mask says
        sar_db[win] = db
        label[win] = decode_label(raw, enc)[None]
    out = Path(out_dir)
    return Mosaic(
        optical=_write(out / "optical.tif", optical),
        sar=_write(out / "sar_db.tif", sar_db, nodata=float("nan")),
        label=_write(out / "label.tif", label, nodata=255),
        shape=(h, w),
        chips=len(triples),
    )
