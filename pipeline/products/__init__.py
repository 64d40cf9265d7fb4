"""Finished products of a run, derived at finalize from the complete `change.zarr` store.

`write_products` makes one chunk-by-chunk pass over the store that feeds the two COG writers (their
tiles and overviews encoded on a thread pool meanwhile) and the polygon builder at once, then copies
the COGs' overviews into the store's `overviews/` group, makes the quicklooks (their scene reads run
on a thread beside the chunk pass) and the STAC Item. Everything is built in a work directory
(inside `out_prefix` when it is local, so the final moves are atomic renames; a system temp dir for
`s3://`, then one upload per file) and published only once complete.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import rasterio
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from pipeline.config import ProductConfig
from pipeline.io.storage import bound_gdal_cache, is_remote, join, put_file_atomic
from pipeline.products.cog import GDAL_ENV, MASK_LAYER, PROBABILITY_LAYER, plain_image_ok
from pipeline.products.cog_writer import CogWriter
from pipeline.products.diagnostics import FILES as ROUTING_FILES
from pipeline.products.diagnostics import RoutingBlock, write_routing_cogs
from pipeline.products.metadata import ProductMetadata, redact_uri
from pipeline.products.overviews import OverviewStore
from pipeline.products.polygons import Part, PolygonBuilder, PolygonWriter, block_parts
from pipeline.products.quicklook import read_quicklook_sources, write_quicklooks
from pipeline.products.source import Block, ChunkGate, check_layout, iter_blocks, open_store
from pipeline.products.stac import ChangeSummary, build_item, write_item
from pipeline.products.vectors import FlatGeobufSink, GeoJSONSink, GeoParquetSink

__all__ = [
    "ProductMetadata",
    "redact_uri",
    "write_products",
    "PRODUCT_FILES",
    "OPTIONAL_PRODUCTS",
    "STORE_PRODUCT",
]

# The one list of what a run can leave in OUT: STAC asset key → file name. The engine's overwrite
# guard checks every name here; `item.json` (the catalogue entry itself) is published last.
PRODUCT_FILES = {
    "zarr": "change.zarr",  # written by the engine; write_products adds its overviews
    "probability": "change_prob.tif",
    "mask": "change_mask.tif",
    "polygons": "change.geojson",
    "polygons_parquet": "change.parquet",
    "polygons_fgb": "change.fgb",
    "polygons_wgs84": "change_wgs84.geojson",  # only with products.wgs84_geojson
    "quicklook": "quicklook.png",
    "quicklook_panel": "quicklook_panel.png",
    **ROUTING_FILES,  # only with products.diagnostics: per-stage expert maps
    "item": "item.json",
}
STORE_PRODUCT = "zarr"
OPTIONAL_PRODUCTS = frozenset({"polygons_wgs84", *ROUTING_FILES})
log = logging.getLogger(__name__)


_FULL_BELOW_BYTES = 1 << 20


@contextlib.contextmanager
def _workdir(out_prefix: str) -> Iterator[Path]:
    """A scratch dir on the same filesystem as a local prefix (atomic renames), else system temp."""
    if is_remote(out_prefix):
        with tempfile.TemporaryDirectory(prefix="m2cd-products-") as tmp:
            yield Path(tmp)
        return
    root = Path(out_prefix.removeprefix("file://"))
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".products-{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        yield tmp
    except (RasterioError, CPLE_BaseError, DataSourceError, DataLayerError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # already says what it is (ENOSPC included)
        if (full := _disk_full_error(tmp, exc)) is None:
            raise
        raise full from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _disk_full_error(tmp: Path, exc: Exception) -> OSError | None:
    """GDAL (rasterio, pyogrio) and Arrow report a full disk as a generic write error ("IO error
    writing tag data", "Unexpected I/O failure: seeking to temp feature location"), without errno:
    an ENOSPC OSError when the scratch filesystem is in fact (nearly) full, else None."""
    st = os.statvfs(tmp)
    if "No space left" not in str(exc) and st.f_bavail * st.f_frsize >= _FULL_BELOW_BYTES:
        return None
    return OSError(errno.ENOSPC, "No space left on device", str(tmp))


def _publish(local: Path, out_prefix: str, name: str) -> str:
    uri = join(out_prefix, name)
    if is_remote(out_prefix):
        put_file_atomic(local, uri)
    else:
        os.replace(local, uri)
    return uri


def write_products(
    store_uri: str,
    out_prefix: str,
    meta: ProductMetadata,
    cfg: ProductConfig,
    routing: Sequence[RoutingBlock] | None = None,
    gate: ChunkGate | None = None,
) -> dict[str, str]:
    """Write COGs, polygons, quicklooks and STAC Item of a finished store; return asset → URI.

    With `cfg.diagnostics`, `routing` lists the blocks' saved expert maps, assembled into the
    routing COGs (`pipeline.products.diagnostics`). With `gate`, the store may still be being
    written: each chunk is read once the gate says it is final (`source.iter_blocks`); the
    routing maps are read after the last chunk.

    The store itself (`zarr`) is not in the result: the engine publishes it. Memory is bounded by
    one Zarr chunk plus GDAL's bounded block cache, whatever the scene size.
    Raises InputError when the store is missing or not on the grid described by `meta`.
    """
    group = open_store(store_uri)
    chunks = check_layout(group, store_uri, meta.shape)
    wanted = set(PRODUCT_FILES) - OPTIONAL_PRODUCTS - {STORE_PRODUCT}
    if cfg.wgs84_geojson and meta.crs is None:
        log.warning("%s: no CRS, so no change_wgs84.geojson is written", meta.optical_uri)
    elif cfg.wgs84_geojson:
        wanted.add("polygons_wgs84")
    if cfg.diagnostics:
        if not routing:
            raise ValueError(f"{store_uri}: products.diagnostics is on but no block saved routing")
        wanted.update(ROUTING_FILES)
    files = {key: name for key, name in PRODUCT_FILES.items() if key in wanted}
    bound_gdal_cache()  # peak RSS is the same for a 4096² and a 16384² scene
    with (
        _workdir(out_prefix) as tmp,
        rasterio.Env(**GDAL_ENV),
        plain_image_ok(meta),  # here, for the reader thread too: warning filters are global
        ThreadPoolExecutor(1, thread_name_prefix="m2cd-quicklook") as reader,
    ):
        # The quick-looks' scene reads (0.9 s optical + 0.3 s SAR at 4096²) need no product: they
        # run beside the chunk pass and the COG encoding, mostly in GDAL and zlib with the GIL
        # released; finalize 2.85 → 2.24 s (median of 5, 2 cores), products byte-identical.
        # An InputError they raise surfaces at .result().
        sources = reader.submit(read_quicklook_sources, meta, cfg)
        mmu = cfg.min_mapping_unit_px
        cogs = {"probability": tmp / files["probability"], "mask": tmp / files["mask"]}
        with contextlib.ExitStack() as stack:
            encoders = stack.enter_context(
                ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="m2cd-cog")
            )
            level, size = cfg.cog_deflate_level, cfg.cog_blocksize
            store = stack.enter_context(
                OverviewStore(store_uri, meta.shape, meta.affine, meta.crs, size)
            )
            prob_out, mask_out = (
                stack.enter_context(
                    CogWriter(cogs[key], layer, meta, size, level, encoders, store.sink(key))
                )
                for key, layer in (("probability", PROBABILITY_LAYER), ("mask", MASK_LAYER))
            )
            sinks = [
                GeoJSONSink(tmp / files["polygons"]),
                GeoParquetSink(tmp / files["polygons_parquet"]),
                FlatGeobufSink(tmp / files["polygons_fgb"]),
            ]
            gj = stack.enter_context(PolygonWriter(sinks, meta, mmu, spool_dir=tmp))
            writers = [gj]
            if "polygons_wgs84" in files:
                wgs84 = [GeoJSONSink(tmp / files["polygons_wgs84"])]
                writers.append(
                    stack.enter_context(PolygonWriter(wgs84, meta, mmu, wgs84=True, spool_dir=tmp))
                )

            def emit(part: Part) -> None:
                for writer in writers:
                    writer.write(part)

            # Chunks are read ahead and labelled on the encoders' pool; this thread only feeds
            # the COG writers and merges components across chunk borders, in row-major order.
            polygons = PolygonBuilder(meta.shape, emit)
            labelling: deque[tuple[Block, Future]] = deque()
            for block in iter_blocks(group, chunks, encoders, gate=gate):
                prob_out.write(block.row_off, block.col_off, block.probability)
                mask_out.write(block.row_off, block.col_off, block.mask)
                labelling.append((block, encoders.submit(block_parts, block)))
                if len(labelling) > 1:
                    done, parts = labelling.popleft()
                    polygons.add(done, parts.result())
            for done, parts in labelling:
                polygons.add(done, parts.result())
            polygons.finish()
        quicklooks = (tmp / files["quicklook"], tmp / files["quicklook_panel"])
        write_quicklooks(meta, cfg, tmp / files["mask"], *quicklooks, sources.result())
        if cfg.diagnostics and routing:
            dst = {key: tmp / files[key] for key in ROUTING_FILES}
            write_routing_cogs(routing, dst, meta, cfg.cog_blocksize, cfg.cog_deflate_level)
        summary = ChangeSummary(
            changed_px=gj.changed_px,
            changed_m2=round(gj.changed_m2, 3) if gj.areas.has_area else None,
            polygon_count=gj.count,
            min_mapping_unit_px=mmu,
            threshold=cfg.threshold,
        )
        # the store gets no file: fields: a directory whose chunking (so its size) is the block size
        assets = {STORE_PRODUCT: None, **{k: tmp / n for k, n in files.items() if k != "item"}}
        write_item(build_item(meta, assets, summary), tmp / files["item"])
        # item.json last (dict order): its presence means every asset it lists is in place.
        return {key: _publish(tmp / name, out_prefix, name) for key, name in files.items()}
