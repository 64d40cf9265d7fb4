"""Small finished stores for the product tests, written with the engine's own Zarr writer.

Scenes are 700×900 with 256² chunks, so change regions cross chunk borders (rows 256/512, columns
256/512/768), and a 20-row nodata strip sits at the top. Three grids: UTM 33N (10 m), EPSG:4326
(0.0001°) and a plain image without CRS.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
from pystac.validation.stac_validator import GetSchemaError, JsonSchemaSTACValidator
from rasterio.crs import CRS

from pipeline.config import ProductConfig
from pipeline.io.storage import zarr_store
from pipeline.products import ProductMetadata, stac, write_products
from pipeline.products.zarr_store import create_store, write_region

SHAPE = (700, 900)
CHUNK = 256
NODATA_ROWS = 20
UTM = (CRS.from_epsg(32633).to_wkt(), (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_650_000.0))
WGS84 = (CRS.from_epsg(4326).to_wkt(), (0.0001, 0.0, 12.5, 0.0, -0.0001, 42.8))
PLAIN = (None, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))

# A salt-and-pepper field around the chunk corner at (512, 768).
NOISE = (slice(480, 600), slice(700, 840))
# The rectangle crossing the chunk corner at (256, 256): one feature of 120 × 70 px.
CROSSING = (slice(200, 320), slice(230, 300))


def change_mask(seed: int = 0) -> np.ndarray:
    """uint8 mask: 1 change, 0 not, 255 nodata, with shapes chosen to stress the block merge."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[CROSSING] = 1
    # A U open at the bottom whose two arms cross row 512 and whose base crosses column 512.
    mask[490:560, 480:560] = 1
    mask[500:560, 495:545] = 0
    # Pixels that touch only at a corner across the chunk corner (256, 512): not 4-connected.
    mask[255, 511] = mask[256, 512] = 1
    # Tiny 2×2 blobs (4 px) for the minimum mapping unit.
    for r, c in ((100, 100), (100, 700), (650, 50)):
        mask[r : r + 2, c : c + 2] = 1
    # Salt-and-pepper field across the chunk corner at (512, 768).
    rng = np.random.default_rng(seed)
    rows, cols = NOISE
    mask[NOISE][rng.random((rows.stop - rows.start, cols.stop - cols.start)) < 0.35] = 1
    mask[:NODATA_ROWS] = 255
    return mask


def change_probability(mask: np.ndarray, seed: int = 1) -> np.ndarray:
    """float32 probability consistent with the mask (> 0.5 where changed), NaN on nodata."""
    rng = np.random.default_rng(seed)
    prob = rng.random(mask.shape).astype(np.float32) * 0.5
    prob[mask == 1] += 0.5
    prob[mask == 255] = np.nan
    return prob


def write_store(
    path: Path | str, grid: tuple, mask: np.ndarray, prob: np.ndarray, chunk: int = CHUNK
) -> str:
    """A finished change.zarr (every chunk written, as the engine leaves it before finalize)."""
    crs, transform = grid
    uri = str(path)
    create_store(zarr_store(uri), mask.shape, chunk, crs, transform)
    h, w = mask.shape
    for r in range(0, h, chunk):
        for c in range(0, w, chunk):
            sl = (slice(r, r + chunk), slice(c, c + chunk))
            write_region(
                zarr_store(uri), r, c, prob[sl], mask[sl], (mask[sl] != 255).astype(np.uint8)
            )
    return uri


def write_optical(path: Path, grid: tuple, shape: tuple[int, int] = SHAPE, seed: int = 2) -> str:
    """A 4-band uint16 reflectance-like optical GeoTIFF on the grid (nodata 0 on the top strip)."""
    crs, transform = grid
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = 1500 + 800 * np.sin(y / 40) * np.cos(x / 55)
    data = np.stack([base + 200 * b + 100 * rng.standard_normal(shape) for b in range(4)])
    data = np.clip(data, 1, 10000).astype(np.uint16)
    data[:, :NODATA_ROWS] = 0
    profile = {"driver": "GTiff", "height": shape[0], "width": shape[1], "count": 4}
    profile |= {"dtype": "uint16", "nodata": 0, "tiled": True, "blockxsize": 256, "blockysize": 256}
    if crs is not None:
        profile |= {"crs": CRS.from_wkt(crs), "transform": rasterio.Affine(*transform)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def write_sar(path: Path, grid: tuple, shape: tuple[int, int] = SHAPE, seed: int = 3) -> str:
    """A 1-band float32 σ⁰ (linear power) SAR GeoTIFF on the grid, darker (water) where
    CROSSING changed, so the panel's post image differs from the pre image there."""
    crs, transform = grid
    rng = np.random.default_rng(seed)
    data = rng.gamma(4.0, 0.05 / 4.0, size=shape).astype(np.float32)  # ~ -13 dB land
    data[CROSSING] *= 0.02  # ~ -30 dB: flooded
    profile = {"driver": "GTiff", "height": shape[0], "width": shape[1], "count": 1}
    profile |= {"dtype": "float32", "nodata": 0.0}
    if crs is not None:
        profile |= {"crs": CRS.from_wkt(crs), "transform": rasterio.Affine(*transform)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return str(path)


def metadata(
    grid: tuple, optical_uri: str, shape: tuple[int, int] = SHAPE, **extra
) -> ProductMetadata:
    crs, transform = grid
    fields = {
        "crs": crs,
        "transform": transform,
        "shape": shape,
        "optical_uri": optical_uri,
        "sar_uri": "s3://scenes/post/s1_vv.tif",
        "optical_bands": [3, 2, 1],
        "model_digest": "sha256:" + "ab" * 32,
        "model_name": "m2cd-mit-b1",
        "config_hash": "cfg0123456789",
        "run_key": "run-0123456789abcdef",
        "created": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    return ProductMetadata(**(fields | extra))


def write_scene_products(
    root: Path,
    grid: tuple,
    cfg: ProductConfig | None = None,
    mask: np.ndarray | None = None,
    chunk: int = CHUNK,
    optical: str | Path | None = None,
    **meta_extra: Any,
) -> dict[str, Any]:
    """The scene setup every product test shares: a finished store of `mask` (default
    `change_mask()`), an optical GeoTIFF on the grid (or `optical`, reused: its path is in
    item.json), and `write_products` into `root/out`; `meta_extra` goes to `metadata`.

    Returns {"grid", "root", "store" (Path), "dir" (the OUT Path), "out" (asset → URI)}.
    """
    mask = change_mask() if mask is None else mask
    root.mkdir(parents=True, exist_ok=True)
    store = write_store(root / "change.zarr", grid, mask, change_probability(mask), chunk=chunk)
    if optical is None:
        optical = write_optical(root / "optical.tif", grid, shape=mask.shape)
    meta = metadata(grid, str(optical), shape=mask.shape, **meta_extra)
    out = write_products(store, str(root / "out"), meta, cfg or ProductConfig())
    return {"grid": grid, "root": root, "store": Path(store), "dir": root / "out", "out": out}


GRIDS = {"utm": UTM, "wgs84": WGS84, "plain": PLAIN}
_SHARED: dict[tuple[str, str], dict[str, Any]] = {}


def shared_scene_products(
    factory: pytest.TempPathFactory, grid: str, cfg: ProductConfig | None = None
) -> dict[str, Any]:
    """`write_scene_products` of the default scene on GRIDS[grid], written once per test session
    for each (grid, config) and shared between modules (the COG and Zarr tests ask for the same
    run, so do the vector and viewer tests). Read-only: a test that changes a file must write
    its own with `write_scene_products`."""
    cfg = cfg or ProductConfig()
    key = (grid, cfg.model_dump_json())
    if key not in _SHARED:
        _SHARED[key] = write_scene_products(factory.mktemp(f"scene-{grid}"), GRIDS[grid], cfg)
    return _SHARED[key]


STAC_SCHEMAS = Path(__file__).parents[1] / "data" / "stac_schemas"
# Extension schema URI → our own schema for it (tests/data/stac_schemas/README.md says how they
# were written): every extension the Item declares, so validation never needs the network.
OWN_STAC_SCHEMAS = {
    stac.FILE_EXTENSION: "file-v2.1.0.json",
    stac.PROCESSING_EXTENSION: "processing-v1.1.0.json",
    stac.PROJECTION_EXTENSION: "projection-v2.0.0.json",
    stac.CLASSIFICATION_EXTENSION: "classification-v2.0.0.json",
    stac.MLM_EXTENSION: "mlm-v1.4.0.json",
}


def own_schema(uri: str) -> dict[str, Any]:
    return json.loads((STAC_SCHEMAS / OWN_STAC_SCHEMAS[uri]).read_text())


class OfflineSTACValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator with its own copies of the core schemas (Item, GeoJSON) and
    our extension schemas in the cache; any other schema URI raises instead of being fetched."""

    def __init__(self) -> None:
        super().__init__()
        for uri in OWN_STAC_SCHEMAS:
            self.schema_cache[uri] = own_schema(uri)
        self.refused: list[str] = []

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        if schema_uri not in self.schema_cache:
            self.refused.append(schema_uri)
            raise GetSchemaError(schema_uri, RuntimeError("no local schema: tests never fetch"))
        return self.schema_cache[schema_uri]


@contextlib.contextmanager
def offline_stac_validation() -> Iterator[OfflineSTACValidator]:
    """`item.validate()` through OfflineSTACValidator, pystac's default validator restored after."""
    validator = OfflineSTACValidator()
    pystac.validation.set_validator(validator)
    try:
        yield validator
    finally:
        pystac.validation.set_validator(JsonSchemaSTACValidator())
