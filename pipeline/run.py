"""A detection run: plan → blocks → finalize, resumable, with atomic publication of products.

Everything a run writes goes under a staging prefix `OUT/.m2cd/<run_key>/` (the Zarr store, one
completion marker per block, the products); finalize moves the products into `OUT` only when every
block is marked done, and writes `OUT/run.json` last. The run key hashes the inputs, the model
digest and the config, so a rerun of the same run picks up the finished blocks and a finished run
is a no-op. Flows call exactly `plan_run`, `run_block` and `finalize_run`; the CLI calls `detect`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from pipeline import storage
from pipeline.config import DetectConfig
from pipeline.errors import ConfigError, InputError, M2CDError, OutputError, OutputExistsError
from pipeline.inference import ModelRef, describe_model
from pipeline.tiling import BlockSpec, Extent, TileGrid, plan_blocks

log = logging.getLogger(__name__)

STAGING_DIR = ".m2cd"
MANIFEST = "run.json"
STORE = "change.zarr"


class RunIncompleteError(M2CDError):
    """finalize_run was called before every block was marked done."""


class DetectRequest(BaseModel):
    """What a user asks for: two scenes, an output prefix, a model and a config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optical: str
    sar: str
    out: str
    checkpoint: str | None = None
    model: str | None = None
    config: DetectConfig = DetectConfig()
    overwrite: bool = False

    @model_validator(mode="after")
    def _one_model(self) -> DetectRequest:
        if (self.checkpoint is None) == (self.model is None):
            raise ValueError("give exactly one of checkpoint (a path) or model (a config name)")
        return self


class GridSpec(BaseModel):
    """The output grid = the optical grid (CRS as WKT, rasterio-order affine, height, width)."""

    model_config = ConfigDict(frozen=True)

    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]
    height: int
    width: int


class RunPlan(BaseModel):
    """Everything a worker needs to run any block (small: blocks, not tiles; JSON-serialisable)."""

    model_config = ConfigDict(frozen=True)

    run_key: str
    created: datetime
    out: str
    staging: str
    optical: str
    sar: str
    grid: GridSpec
    resampling: str | None
    config: DetectConfig
    config_hash: str
    model: ModelRef
    tiles: int
    tile_runs: int
    blocks: list[BlockSpec]
    finished: bool = False
    overwrite: bool = False

    @property
    def tile_grid(self) -> TileGrid:
        t = self.config.tiling
        return TileGrid(
            height=self.grid.height, width=self.grid.width, tile=t.tile, overlap=t.overlap
        )

    @property
    def store_uri(self) -> str:
        return storage.join(self.staging, STORE)

    def marker_uri(self, block: BlockSpec) -> str:
        return storage.join(self.staging, "blocks", f"{block.name}.json")

    def describe(self) -> str:
        """The plan as users see it before the run starts."""
        g, t = self.grid, self.config.tiling
        mpx = g.height * g.width / 1e6
        overhead = self.tile_grid.overlap_overhead()
        return (
            f"plan {self.run_key}: {g.height}×{g.width} px ({mpx:.2f} Mpx), "
            f"{'CRS ' + _crs_label(g.crs_wkt) if g.crs_wkt else 'no CRS'}\n"
            f"  tiles {self.tiles} ({t.tile}px, overlap {t.overlap}, {overhead:.2f}× pixels through "
            f"the model), {len(self.blocks)} block(s) of {t.block}px, {self.tile_runs} tile runs "
            f"with block halos\n  model {self.model.name or self.model.checkpoint} "
            f"({self.model.digest[:19]}), output {self.out}"
        )


class BlockResult(BaseModel):
    """One block's counts (`resumed`: it was already done and nothing ran)."""

    block_id: int
    name: str
    tiles_run: int
    tiles_skipped: int
    valid_px: int
    changed_px: int
    changed_km2: float | None
    seconds: float
    resumed: bool = False


class RunSummary(BaseModel):
    """What a finished run produced (also `OUT/run.json`, minus `already_finished`)."""

    run_key: str
    out: str
    shape: tuple[int, int]
    crs: str | None
    tiles: int
    tiles_run: int
    tiles_skipped: int
    blocks: int
    blocks_resumed: int
    mpx: float
    seconds: float
    valid_px: int
    changed_px: int
    changed_km2: float | None
    model_digest: str
    config_hash: str
    products: dict[str, str]
    already_finished: bool = False


# ---------------------------------------------------------------------------------------------
# keys and small helpers


def _crs_label(wkt: str) -> str:
    from pyproj import CRS

    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name


def config_hash(cfg: DetectConfig) -> str:
    """SHA-256 of the canonical config JSON (everything that shapes the products)."""
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _fingerprint(uri: str) -> dict[str, Any]:
    """Identity of an input file: URI, size and modification stamp (ETag on S3)."""
    if not storage.is_remote(uri):
        st = os.stat(uri.removeprefix("file://"))
        return {"uri": os.path.abspath(uri), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    info = storage.fs_for(uri).info(uri)
    stamp = info.get("ETag") or info.get("LastModified") or info.get("mtime")
    return {"uri": uri, "size": info.get("size"), "stamp": str(stamp)}


def run_key(optical: str, sar: str, model_digest: str, cfg_hash: str) -> str:
    payload = json.dumps(
        [_fingerprint(optical), _fingerprint(sar), model_digest, cfg_hash], sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _read_json(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None


def _write_json(uri: str, data: Any) -> None:
    storage.write_bytes_atomic(uri, (json.dumps(data, indent=1, default=str) + "\n").encode())


def _pixel_area_km2(grid: GridSpec, rows: range) -> np.ndarray | None:
    """Area of one pixel in km² for each row: projected CRS from the transform, geodesic for a
    geographic CRS (area depends on latitude), None without a CRS."""
    if grid.crs_wkt is None:
        return None
    from pyproj import CRS, Geod

    crs = CRS.from_wkt(grid.crs_wkt)
    a, b, c, d, e, f = grid.transform
    if crs.is_projected:
        metres = crs.axis_info[0].unit_conversion_factor
        return np.full(len(rows), abs(a * e - b * d) * metres**2 / 1e6)
    if not crs.is_geographic:
        return None
    geod = (
        Geod(ellps="WGS84")
        if crs.ellipsoid is None
        else Geod(a=crs.ellipsoid.semi_major_metre, rf=crs.ellipsoid.inverse_flattening or 0.0)
    )
    out = np.empty(len(rows))
    for k, r in enumerate(rows):
        lon0, lat0 = c, f + r * e
        lons = [lon0, lon0 + a, lon0 + a, lon0]
        lats = [lat0, lat0, lat0 + e, lat0 + e]
        out[k] = abs(geod.polygon_area_perimeter(lons, lats)[0]) / 1e6
    return out


# ---------------------------------------------------------------------------------------------
# plan


def _open_pair(optical: str, sar: str, cfg: DetectConfig) -> Any:
    from pipeline.grid import align_pair
    from pipeline.scene import open_scene

    return align_pair(open_scene(optical, "optical", cfg), open_scene(sar, "sar", cfg), cfg)


def _bands_for_model(cfg: DetectConfig, pair: Any, ref: Any) -> DetectConfig:
    from pipeline.bands import model_channels, resolve_bands

    opt_ch, sar_ch = model_channels(ref.checkpoint, ref.name)
    return resolve_bands(
        cfg, (pair.optical.uri, pair.optical.count), (pair.sar.uri, pair.sar.count), opt_ch, sar_ch
    )


_pairs: OrderedDict[str, Any] = OrderedDict()


def _pair_for(plan: RunPlan) -> Any:
    """The aligned pair of a plan, opened once per process (headers only)."""
    if plan.run_key not in _pairs:
        _pairs[plan.run_key] = _open_pair(plan.optical, plan.sar, plan.config)
        while len(_pairs) > 2:
            _pairs.popitem(last=False)
    return _pairs[plan.run_key]


def _existing_products(out: str) -> list[str]:
    from pipeline.products import PRODUCT_FILES  # the one list of product names

    names = PRODUCT_FILES.values()
    return [name for name in names if storage.exists(storage.join(out, name))]


def plan_run(request: DetectRequest) -> RunPlan:
    """Open the inputs (headers), fix the grid, model and run key, and prepare the staging store.

    Returns a plan with `finished=True` when `OUT` already holds this very run (nothing to do).
    Raises OutputExistsError when `OUT` holds products of another run and overwrite is off.
    """
    from pipeline.paths import require_bucket, resolve_output

    out = resolve_output(request.out)  # before anything is opened or written
    require_bucket(out)
    cfg = request.config
    pair = _open_pair(request.optical, request.sar, cfg)
    ref = describe_model(request.checkpoint, request.model)
    cfg = _bands_for_model(cfg, pair, ref)  # the bands the model takes (pipeline.bands)
    if cfg is not request.config:
        pair = _open_pair(request.optical, request.sar, cfg)
    chash = config_hash(cfg)
    key = run_key(request.optical, request.sar, ref.digest, chash)
    _pairs[key] = pair
    out = out.rstrip("/") if storage.is_remote(out) else out
    staging = storage.join(out, STAGING_DIR, key)

    manifest = _read_json(storage.join(out, MANIFEST))
    finished = manifest is not None and manifest.get("run_key") == key
    if not finished and not request.overwrite:
        if manifest is not None:
            raise OutputExistsError(
                f"{out}: holds the products of another run ({manifest.get('run_key')}); "
                "pass --overwrite to replace them"
            )
        own = storage.exists(storage.join(staging, "plan.json"))  # our own interrupted publish
        if (existing := _existing_products(out)) and not own:
            raise OutputExistsError(
                f"{out}: {', '.join(existing)} already exist(s); pass --overwrite to replace"
            )

    grid_info = pair.grid
    h, w = grid_info.shape
    grid = GridSpec(
        crs_wkt=grid_info.crs.to_wkt() if grid_info.crs is not None else None,
        transform=tuple(float(v) for v in tuple(grid_info.transform)[:6]),
        height=h,
        width=w,
    )
    tgrid = TileGrid(height=h, width=w, tile=cfg.tiling.tile, overlap=cfg.tiling.overlap)
    blocks = plan_blocks(tgrid, cfg.tiling.block)
    previous = _read_json(storage.join(staging, "plan.json"))
    created = (
        datetime.fromisoformat(previous["created"])
        if previous
        else datetime.now(UTC).replace(microsecond=0)
    )
    plan = RunPlan(
        run_key=key,
        created=created,
        out=out,
        staging=staging,
        optical=request.optical,
        sar=request.sar,
        grid=grid,
        resampling=pair.resampling,
        config=cfg,
        config_hash=chash,
        model=ref,
        tiles=tgrid.count,
        tile_runs=sum(b.tiles for b in blocks),
        blocks=blocks,
        finished=finished,
        overwrite=request.overwrite,
    )
    if not finished:
        _prepare_staging(plan)
    return plan


def _prepare_staging(plan: RunPlan) -> None:
    """Create the store once per run key (a marker says it is complete), then save the plan."""
    from pipeline.products.zarr_store import create_store

    created = storage.join(plan.staging, "store.json")
    if not storage.exists(created):
        storage.makedirs(plan.staging)
        create_store(
            storage.zarr_store(plan.store_uri),
            (plan.grid.height, plan.grid.width),
            plan.config.tiling.block,
            plan.grid.crs_wkt,
            plan.grid.transform,
            attrs={"m2cd:run_key": plan.run_key, "m2cd:model_digest": plan.model.digest},
        )
        _write_json(created, {"run_key": plan.run_key})
    storage.makedirs(storage.join(plan.staging, "blocks"))
    _write_json(storage.join(plan.staging, "plan.json"), plan.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------
# blocks


def _pair_reader(plan: RunPlan, optical_channels: int | None, sar_channels: int | None):
    """A PairReader over the aligned pair: raw windows → normalised arrays + valid mask."""
    from pipeline.normalize import match_channels, normalize_optical, normalize_sar, valid_mask
    from pipeline.scene import Window

    pair = _pair_for(plan)
    cfg = plan.config
    h, w = plan.grid.height, plan.grid.width
    opt, sar = pair.optical, pair.sar

    def read(ext: Extent) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        win = Window(ext.y0, ext.y1, ext.x0, ext.x1)
        o_raw, s_raw = opt.read_window(win), sar.read_window(win)
        valid = valid_mask(o_raw, s_raw, opt.nodata, sar.nodata)
        inside = ext.intersect(Extent(0, 0, h, w))  # padding is never valid, whatever its value
        in_scene = np.zeros_like(valid)
        if inside is not None:
            in_scene[
                inside.y0 - ext.y0 : inside.y1 - ext.y0, inside.x0 - ext.x0 : inside.x1 - ext.x0
            ] = True
        valid &= in_scene
        o = normalize_optical(o_raw, cfg.optical, opt.dtype, valid)
        s = normalize_sar(s_raw, cfg.sar, sar.units, sar.dtype, valid)
        if optical_channels:
            o = match_channels(o, optical_channels)
        if sar_channels:
            s = match_channels(s, sar_channels)
        return o, s, valid

    return read


def _block_done(plan: RunPlan, block: BlockSpec) -> dict[str, Any] | None:
    return _read_json(plan.marker_uri(block))


def run_block(
    plan: RunPlan, block_id: int, on_tiles: Callable[[int], None] | None = None
) -> BlockResult:
    """Run every tile of one block, write its core into the store, then mark it done.

    Idempotent: a block already marked done returns its recorded result at once (`resumed`).
    """
    block = plan.blocks[block_id]
    if (done := _block_done(plan, block)) is not None:
        return BlockResult(**{**done, "resumed": True})
    from pipeline.inference import (
        Predictor,
        load_model,
        predict_block,
        read_ahead_depth,
        resolve_device,
    )
    from pipeline.products.zarr_store import write_region

    start = time.perf_counter()
    inf = plan.config.inference
    device = resolve_device(inf.device)
    model = load_model(plan.model, device)
    bands = getattr(getattr(model, "config", None), "bands", None)
    reader = _pair_reader(
        plan,
        getattr(bands, "optical_channels", None),
        getattr(bands, "sar_channels", None),
    )
    predictor = Predictor(
        model, inf.batch_size, device, inf.precision, inf.channels_last, tta=inf.tta
    )
    out = predict_block(
        plan.tile_grid,
        block.core,
        reader,
        predictor,
        inf.batch_size,
        threshold=plan.config.products.threshold,
        min_valid_fraction=plan.config.tiling.min_valid_fraction,
        prefetch=read_ahead_depth(
            inf.prefetch, device, storage.is_remote(plan.optical) or storage.is_remote(plan.sar)
        ),
        on_batch=on_tiles,
    )
    if on_tiles is not None and out.tiles_skipped:
        on_tiles(out.tiles_skipped)
    write_region(
        storage.zarr_store(plan.store_uri), block.y0, block.x0, out.probability, out.mask, out.valid
    )
    areas = _pixel_area_km2(plan.grid, range(block.y0, block.y1))
    changed_km2 = None
    if areas is not None:
        changed_km2 = float(((out.mask == 1).sum(axis=1) * areas).sum())
    result = BlockResult(
        block_id=block.id,
        name=block.name,
        tiles_run=out.tiles_run,
        tiles_skipped=out.tiles_skipped,
        valid_px=out.valid_px,
        changed_px=out.changed_px,
        changed_km2=changed_km2,
        seconds=round(time.perf_counter() - start, 3),
    )
    import torch

    # where and how it ran: CPU bits depend on the intra-op thread count (see _run_pool)
    extra = {"pid": os.getpid(), "device": str(device), "torch_threads": torch.get_num_threads()}
    _write_json(plan.marker_uri(block), {**result.model_dump(exclude={"resumed"}), **extra})
    return result


def pending_blocks(plan: RunPlan) -> list[int]:
    """Ids of the blocks not yet marked done (one listing of the marker prefix)."""
    fs = storage.fs_for(plan.staging)
    prefix = storage.join(plan.staging, "blocks")
    try:
        names = {os.path.basename(p) for p in fs.ls(prefix, detail=False)}
    except FileNotFoundError:
        names = set()
    return [b.id for b in plan.blocks if f"{b.name}.json" not in names]


# ---------------------------------------------------------------------------------------------
# finalize


def _product_metadata(plan: RunPlan) -> Any:
    from pipeline.products import ProductMetadata

    return ProductMetadata(
        crs=plan.grid.crs_wkt,
        transform=plan.grid.transform,
        shape=(plan.grid.height, plan.grid.width),
        optical_uri=plan.optical,
        sar_uri=plan.sar,
        optical_bands=plan.config.optical.bands,
        model_digest=plan.model.digest,
        model_name=plan.model.name or os.path.basename(plan.model.checkpoint.rstrip("/")),
        config_hash=plan.config_hash,
        run_key=plan.run_key,
        resampling=plan.resampling,
        created=plan.created,
    )


def _publish(plan: RunPlan, names: list[str]) -> dict[str, str]:
    """Move finished products from staging into OUT (replacing older ones only with overwrite)."""
    uris = {}
    for name in names:
        src, dst = storage.join(plan.staging, name), storage.join(plan.out, name)
        if storage.exists(dst):
            storage.remove(dst, recursive=True)
        storage.move(src, dst)
        uris[name] = dst
    return uris


def _summary_from_manifest(manifest: dict[str, Any]) -> RunSummary:
    return RunSummary(**{**manifest["summary"], "already_finished": True})


def finalize_run(
    plan: RunPlan, seconds: float | None = None, blocks_resumed: int = 0
) -> RunSummary:
    """Write the products from the complete store and publish them; `OUT/run.json` last.

    A finished run (same key in `OUT/run.json`) returns its summary untouched.
    Raises RunIncompleteError naming the missing blocks when some are not done.
    """
    manifest = _read_json(storage.join(plan.out, MANIFEST))
    if manifest is not None and manifest.get("run_key") == plan.run_key:
        return _summary_from_manifest(manifest)
    missing = pending_blocks(plan)
    if missing:
        names = ", ".join(plan.blocks[i].name for i in missing[:5])
        raise RunIncompleteError(
            f"{plan.staging}: {len(missing)} of {len(plan.blocks)} block(s) not done ({names}...)"
        )
    from pipeline.products import write_products

    results = [BlockResult(**_block_done(plan, b)) for b in plan.blocks]
    if not any(r.valid_px for r in results):  # empty products would read as "no change"
        storage.remove(plan.staging, recursive=True)
        raise InputError(
            f"{plan.optical} and {plan.sar}",
            "no valid pixel in the overlap: every pixel is nodata (or zero fill / NaN) in one "
            "scene or the other; check the scenes' nodata values and footprints",
        )
    start = time.perf_counter()
    written = write_products(
        plan.store_uri, plan.staging, _product_metadata(plan), plan.config.products
    )
    # the store last: until it moves, a crash here leaves a staging run that finalizes again
    names = [os.path.basename(u.rstrip("/")) for u in written.values()] + [STORE]
    if manifest is not None and not plan.overwrite:  # another run finished meanwhile
        raise OutputExistsError(f"{plan.out}: holds products of run {manifest.get('run_key')}")
    uris = _publish(plan, names)
    km2 = [r.changed_km2 for r in results]
    block_seconds = sum(r.seconds for r in results)
    summary = RunSummary(
        run_key=plan.run_key,
        out=plan.out,
        shape=(plan.grid.height, plan.grid.width),
        crs=_crs_label(plan.grid.crs_wkt) if plan.grid.crs_wkt else None,
        tiles=plan.tiles,
        tiles_run=sum(r.tiles_run for r in results),
        tiles_skipped=sum(r.tiles_skipped for r in results),
        blocks=len(plan.blocks),
        blocks_resumed=blocks_resumed,
        mpx=round(plan.grid.height * plan.grid.width / 1e6, 4),
        seconds=round(
            seconds if seconds is not None else block_seconds + time.perf_counter() - start, 3
        ),
        valid_px=sum(r.valid_px for r in results),
        changed_px=sum(r.changed_px for r in results),
        changed_km2=None if any(v is None for v in km2) else round(sum(km2), 6),
        model_digest=plan.model.digest,
        config_hash=plan.config_hash,
        products=uris,
    )
    _write_json(
        storage.join(plan.out, MANIFEST),
        {
            "format": "m2cd-run/1",
            "run_key": plan.run_key,
            "created": plan.created.isoformat(),
            "finished": datetime.now(UTC).isoformat(),
            "summary": summary.model_dump(mode="json"),
            "plan": plan.model_dump(mode="json", exclude={"blocks"}),
        },
    )
    storage.remove(plan.staging, recursive=True)
    parent = storage.join(plan.out, STAGING_DIR)
    if not storage.is_remote(parent) and os.path.isdir(parent) and not os.listdir(parent):
        os.rmdir(parent)
    return summary


# ---------------------------------------------------------------------------------------------
# all in one process


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def output_error(out: str, exc: OSError) -> OutputError | None:
    """The clear error for a full (or read-only) output disk, or None for any other OSError.

    GDAL reports it as a RasterioIOError without errno, hence the message check.
    """
    if exc.errno not in _DISK_FULL and "No space left on device" not in str(exc):
        return None
    where = f" while writing {exc.filename}" if exc.filename else ""
    return OutputError(
        f"{out}: no space left on the device (or quota exceeded, or read-only){where}; no product "
        "was published and finished blocks are kept: free space and rerun the same command"
    )


def detect(
    request: DetectRequest,
    progress: bool = True,
    workers: int = 1,
    echo: Callable[[str], None] | None = None,
) -> RunSummary:
    """Plan, run every pending block in this process (`workers` threads), then finalize."""
    try:
        return _detect(request, progress, workers, echo)
    except OSError as exc:
        if (clear := output_error(request.out, exc)) is None:
            raise
        raise clear from None


def _detect(
    request: DetectRequest,
    progress: bool,
    workers: int,
    echo: Callable[[str], None] | None,
) -> RunSummary:
    start = time.perf_counter()
    plan = plan_run(request)
    if echo is not None:
        echo(plan.describe())
    if plan.finished:
        summary = _summary_from_manifest(_read_json(storage.join(plan.out, MANIFEST)))
        if echo is not None:
            echo(f"run {plan.run_key} already finished in {plan.out}: nothing to do")
        return summary
    todo = pending_blocks(plan)
    resumed = len(plan.blocks) - len(todo)
    if echo is not None and resumed:
        echo(f"resuming: {resumed} of {len(plan.blocks)} block(s) already done")
    from tqdm.auto import tqdm

    done_tiles = sum(b.tiles for b in plan.blocks if b.id not in set(todo))
    with tqdm(
        total=plan.tile_runs, initial=done_tiles, unit="tile", disable=not progress, smoothing=0.1
    ) as bar:
        if workers <= 1:
            for block_id in todo:
                run_block(plan, block_id, on_tiles=bar.update)
        else:
            _run_pool(plan, todo, workers, bar.update)
    return finalize_run(plan, seconds=time.perf_counter() - start, blocks_resumed=resumed)


def _run_pool(plan: RunPlan, todo: list[int], workers: int, update: Callable[[int], None]) -> None:
    """Blocks on `workers` threads sharing this process's model (torch releases the GIL).

    Threads, not processes: no second model in memory, and every forward keeps this process's
    intra-op thread count, which is what keeps the products byte-identical to a 1-worker run
    (CPU kernels split their reductions by thread count). Separate processes are Dask's job.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    lock = threading.Lock()

    def tick(n: int) -> None:
        with lock:
            update(n)

    with ThreadPoolExecutor(workers, thread_name_prefix="m2cd-block") as ex:
        futures = [ex.submit(run_block, plan, i, tick) for i in todo]
        for fut in as_completed(futures):
            fut.result()


def validate_request(**kwargs: Any) -> DetectRequest:
    """A DetectRequest from keyword arguments, with pydantic errors as one ConfigError."""
    from pydantic import ValidationError

    try:
        return DetectRequest(**kwargs)
    except ValidationError as exc:
        msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"detect request: {msgs}") from None
