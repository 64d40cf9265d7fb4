"""Routing diagnostics (`products.diagnostics`): the top-1 MoE expert of every pixel, per stage.

Two COGs, `routing_optical.tif` and `routing_sar.tif`, one band per MoE stage ("stage 1 optical
top expert", ...), uint8 expert index (0 … experts−1), 255 = nodata wherever the change products
are nodata. They sit on the scene grid (the change products' CRS, transform and shape): each
stage's token (4, 8, 16, 32 px for the MiT encoders) is repeated over the pixels it covers
(nearest). Why not each stage at its native token resolution: one multi-band COG has one grid, a
tile stride that is not a multiple of 32 px (overlap 50, say) puts tiles' tokens on different
grids, and on the scene grid the maps overlay the change mask pixel for pixel. The price is small:
DEFLATE stores the constant runs of a 32 px token in a few bytes.

During the run each block saves its core's maps (`write_block_maps`, compressed npz in the
staging prefix); at finalize `write_routing_cogs` assembles them block by block (memory: one
block), then GDAL's COG driver adds nearest-neighbour overviews (expert indexes are classes).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from pipeline.io import storage
from pipeline.products.cog import Layer, georef_profile, plain_image_ok, product_tags, to_cog
from pipeline.products.metadata import ProductMetadata

NODATA = 255  # uint8 expert index: 255 where no valid pixel (so at most 255 experts)
STREAMS = ("optical", "sar")
FILES = {"routing_optical": "routing_optical.tif", "routing_sar": "routing_sar.tif"}
ROUTING_LAYER = Layer(
    "uint8", NODATA, "NEAREST", "top-1 MoE expert per stage (255 nodata)"
)  # overviews keep expert indexes (classes), never averages
_TILE = 512  # intermediate GeoTIFF tile (the change COGs' intermediate uses the same)


@dataclass(frozen=True)
class RoutingBlock:
    """Where one block's maps sit on the scene grid and where the engine saved them."""

    row_off: int
    col_off: int
    uri: str


def write_block_maps(uri: str, optical: np.ndarray, sar: np.ndarray, experts: int) -> None:
    """Save one block core's maps (stages×h×w uint8 each) as compressed npz, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, optical=optical, sar=sar, experts=np.int64(experts))
    storage.write_bytes_atomic(uri, buf.getvalue())


def read_block_maps(uri: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(optical, sar, experts) of one block's saved maps."""
    with np.load(io.BytesIO(storage.read_bytes(uri))) as data:
        return data["optical"], data["sar"], int(data["experts"])


def band_description(stage: int, stream: str) -> str:
    """`stage 1 optical top expert`: what QGIS's layer panel and `rio info` show per band."""
    return f"stage {stage} {stream} top expert"


def write_routing_cogs(
    blocks: Sequence[RoutingBlock],
    dst: dict[str, Path],
    meta: ProductMetadata,
    blocksize: int,
    level: int = 1,
) -> dict[str, Path]:
    """Assemble the blocks' maps into one COG per stream (`dst`: FILES key → path)."""
    if not blocks:
        raise ValueError("no routing blocks: the run recorded no expert maps")
    first_opt, _, experts = read_block_maps(blocks[0].uri)
    stages = first_opt.shape[0]
    height, width = meta.shape
    tiled = {key: path.with_suffix(".tiled.tif") for key, path in dst.items()}
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": stages,
        "dtype": "uint8",
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": _TILE,
        "blockysize": _TILE,
        "interleave": "band",
        "BIGTIFF": "IF_SAFER",
        **georef_profile(meta),
    }
    tags = {
        **product_tags(meta),
        "M2CD_EXPERTS": str(experts),
        "M2CD_VALUES": f"top-1 expert index 0-{experts - 1}, {NODATA} nodata",
    }
    keys = list(FILES)
    with contextlib.ExitStack() as stack, plain_image_ok(meta):
        outs = {}
        for key, stream in zip(keys, STREAMS, strict=True):
            ds = stack.enter_context(rasterio.open(tiled[key], "w", **profile))
            ds.update_tags(**tags)
            for s in range(stages):
                ds.set_band_description(s + 1, band_description(s + 1, stream))
            outs[key] = ds
        for block in blocks:
            optical, sar, _ = read_block_maps(block.uri)
            for key, maps in zip(keys, (optical, sar), strict=True):
                window = Window(block.col_off, block.row_off, maps.shape[2], maps.shape[1])
                outs[key].write(maps, window=window)
    for key in keys:
        to_cog(tiled[key], dst[key], ROUTING_LAYER, blocksize, level)
        tiled[key].unlink()
    return dst
