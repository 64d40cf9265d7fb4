"""Plan a detection run: open the inputs (headers), fix the grid, model and run key, stage the store.

Everything a run writes goes under a staging prefix `OUT/.m2cd/<run_key>/` (the Zarr store, one
completion marker per block, the products); finalize moves the products into `OUT` only when every
block is marked done, and writes `OUT/run.json` last. The run key hashes the inputs' content
(`pipeline.io.fingerprint`: a touched or copied input keeps it), the model digest and the config,
so a rerun of the same run picks up the finished blocks and a finished run is a no-op. Flows call
exactly `plan_run`, `block.run_block` and `finalize.finalize_run`; the CLI calls `local.detect`,
which opens the run (`open_run`, read-only), takes the output's writer lease, then stages it
(`stage_run`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from pipeline.config import DetectConfig
from pipeline.engine import pair as pairs
from pipeline.engine.device import resolve_device, slow_on_cpu
from pipeline.engine.models import ModelRef, describe_model
from pipeline.engine.output_grid import GridSpec, crs_label
from pipeline.engine.request import DetectRequest
from pipeline.engine.routing import require_moe
from pipeline.engine.tiling import BlockSpec, TileGrid, plan_blocks
from pipeline.engine.weights_fit import check_weights_fit
from pipeline.errors import InputError, OutputExistsError
from pipeline.io import storage
from pipeline.io.normalize import SarUnits
from pipeline.io.paths import require_bucket, resolve_output
from pipeline.io.sources import fingerprint
from pipeline.products import PRODUCT_FILES
from pipeline.products.zarr_store import create_store

STAGING_DIR = ".m2cd"
MANIFEST = "run.json"
STORE = "change.zarr"
# what an earlier run may have left in OUT (the overwrite guard); the product list is
# pipeline.products' own
PRODUCT_NAMES = (STORE, *PRODUCT_FILES.values())


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
    # decided once here (sampling SAR windows) and reused by every worker that reopens the pair
    sar_units: SarUnits | None = None
    # acquisitions: the user's --pre-date/--post-date, else what the inputs record (STAC, tags)
    optical_datetime: datetime | None = None
    sar_datetime: datetime | None = None
    # how each file's stored values were decoded (pipeline.io.decode: complex, scale/offset tags,
    # mask/alpha bands, float DN), one line per rule; printed by describe(), kept in run.json
    decoding: dict[str, list[str]] = {}
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
        """The global tile grid (rebuilt from the config, so a plan never carries tiles)."""
        t = self.config.tiling
        return TileGrid(
            height=self.grid.height, width=self.grid.width, tile=t.tile, overlap=t.overlap
        )

    @property
    def store_uri(self) -> str:
        """The staging Zarr store every block writes into."""
        return storage.join(self.staging, STORE)

    def marker_uri(self, block: BlockSpec) -> str:
        """The completion marker of a block: its presence is what makes a block done (resume)."""
        return storage.join(self.staging, "blocks", f"{block.name}.json")

    def routing_uri(self, block: BlockSpec) -> str:
        """The expert maps a block saves with `products.diagnostics` (assembled at finalize)."""
        return storage.join(self.staging, "routing", f"{block.name}.npz")

    def describe(self) -> str:
        """The plan as users see it before the run starts."""
        g, t = self.grid, self.config.tiling
        mpx = g.height * g.width / 1e6
        overhead = self.tile_grid.overlap_overhead()
        return (
            f"plan {self.run_key}: {g.height}×{g.width} px ({mpx:.2f} Mpx), "
            f"{'CRS ' + crs_label(g.crs_wkt) if g.crs_wkt else 'no CRS'}\n"
            f"  tiles {self.tiles} ({t.tile}px, overlap {t.overlap}, {overhead:.2f}× pixels through "
            f"the model), {len(self.blocks)} block(s) of {t.block}px, {self.tile_runs} tile runs "
            f"with block halos\n  model {self.model.name or self.model.checkpoint} "
            f"({self.model.digest[:19]}), threshold {self.config.products.threshold}, "
            f"output {self.out}\n  SAR units {self.sar_units or self.config.sar.units}"
            f"{' (auto: decided from the data; set sar.units to override)' if self.config.sar.units == 'auto' else ''}"
            + (
                "\n  diagnostics: top-1 MoE expert per stage and pixel → routing_optical.tif, "
                "routing_sar.tif"
                if self.config.products.diagnostics
                else ""
            )
            + "".join(
                f"\n  {role} decoding: {rule}"
                for role, rules in self.decoding.items()
                for rule in rules
            )
        )


def warn_costs(cfg: DetectConfig, tiles: int, tile_runs: int) -> None:
    """Warn at plan time about settings that run but cost a multiple of the time, and resolve the
    device there (a missing GPU is a ConfigError before anything is staged).

    - a block smaller than a tile: each block runs whole tiles (and their halos) for a smaller
      core (2048² scene, 256 px tiles: 64 px blocks run 14.6× the tiles, 128 px blocks 5.6×);
    - fp16 (or emulated bf16) on a CPU: no native kernels, ~10× slower than fp32 (measured with
      `m2cd bench model` on the AVX2 dev CPU).
    """

    t = cfg.tiling
    if t.block < t.tile:
        warnings.warn(
            f"tiling.block {t.block} px is smaller than tiling.tile {t.tile} px: {tile_runs} tile "
            f"runs for {tiles} tiles ({tile_runs / max(tiles, 1):.1f}× the model time); set "
            "tiling.block to a multiple of the tile",
            stacklevel=3,
        )
    device = resolve_device(cfg.inference.device, "inference.device")
    precision = cfg.inference.precision
    if slow_on_cpu(device, precision):
        warnings.warn(
            f"inference.precision {precision} on a CPU without native {precision} kernels runs "
            "~10× slower than fp32: use fp32 or auto",
            stacklevel=3,
        )


def require_writable_output(out: str) -> None:
    """Refuse a local output that cannot become a product directory, naming it, before anything
    is opened or written: an existing file, a path under a file, a dangling symlink, a directory
    this process may not write (the OSError would otherwise name a staging file deep inside)."""
    if storage.is_remote(out):
        return
    path = os.path.abspath(out.removeprefix("file://"))
    if os.path.islink(path) and not os.path.exists(path):
        raise InputError(out, f"a symlink to a missing target or a loop ({os.readlink(path)})")
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(out, "exists and is not a directory: give a directory for the products")
    ancestor = path
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if os.path.islink(ancestor) and not os.path.exists(ancestor):
        raise InputError(out, f"{ancestor} is a symlink to a missing target or a loop")
    if not os.path.isdir(ancestor):
        raise InputError(out, f"Not a directory: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(out, f"not writable ({ancestor}: read-only or permission denied)")


def require_s3_credentials(uris: list[str]) -> None:
    """Refuse an `s3://` input, output or checkpoint when no credentials can be found at all (no
    AWS_* variables, profile or instance role): botocore would raise NoCredentialsError from deep
    inside the first request, a traceback instead of one line."""
    remote = [u for u in uris if storage.is_remote(u)]
    if not remote:
        return
    # deferred: botocore only when an s3:// URI is given
    import botocore.session

    if botocore.session.get_session().get_credentials() is None:
        raise InputError(
            remote[0],
            "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE), and AWS_ENDPOINT_URL for a server other than AWS",
        )


def config_hash(cfg: DetectConfig) -> str:
    """SHA-256 of the canonical config JSON (everything that shapes the products; the `output`
    section, which only says how the prefix is shared, is left out)."""
    shaping = cfg.model_dump(mode="json", exclude={"output"})
    text = json.dumps(shaping, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def run_key(
    optical: str,
    sar: str,
    model_digest: str,
    cfg_hash: str,
    dates: tuple[datetime | None, datetime | None] = (None, None),
) -> str:
    """16 hex digits naming a run: same input content (not path or mtime), model and config, same
    key, so a rerun resumes instead of starting over, also after `touch` or `cp`. Acquisition
    dates given by the user (they land in the products) join the key only when given."""
    items: list[Any] = [
        fingerprint(optical, "optical"),
        fingerprint(sar, "sar"),
        model_digest,
        cfg_hash,
    ]
    if any(d is not None for d in dates):
        items.append([d.isoformat() if d is not None else None for d in dates])
    payload = json.dumps(items, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _affine6(transform: Any) -> tuple[float, float, float, float, float, float]:
    """The six rasterio-order affine coefficients as plain floats (JSON in the plan)."""
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    return (a, b, c, d, e, f)


def read_manifest(out: str) -> dict[str, Any] | None:
    """`OUT/run.json` of the run that last published into `out`, or None."""
    return storage.read_json(storage.join(out, MANIFEST), missing_ok=True)


def _existing_products(out: str) -> list[str]:
    return [name for name in PRODUCT_NAMES if storage.exists(storage.join(out, name))]


def _is_within(uri: str, target: str) -> bool:
    """Whether `uri` is `target` or lies inside it (local paths compared after realpath)."""
    if storage.is_remote(uri) or storage.is_remote(target):
        a, b = uri.rstrip("/"), target.rstrip("/")
    else:
        a = os.path.realpath(uri.removeprefix("file://"))
        b = os.path.realpath(target.removeprefix("file://"))
    return a == b or a.startswith(b + "/")


def _refuse_inputs_among_products(out: str, request: DetectRequest) -> None:
    """An input stored where a product goes would be replaced by it (with --overwrite) while the
    run still reads it: refused at plan time, whatever the flags."""
    for role, uri in (("optical", request.optical), ("SAR", request.sar)):
        for name in (*PRODUCT_NAMES, MANIFEST):
            if _is_within(uri, target := storage.join(out, name)):
                raise InputError(
                    target,
                    f"is this run's {role} input ({uri}); publishing would replace it: "
                    "choose another --out",
                )


@dataclass(frozen=True)
class OpenedRun:
    """A run's inputs opened and its key fixed; nothing written yet (see `stage_run`)."""

    request: DetectRequest
    out: str
    pair: Any  # pipeline.engine.pair.Pair (kept in this process only)
    model: ModelRef
    config: DetectConfig
    config_hash: str
    run_key: str
    decoding: dict[str, list[str]]


def open_run(request: DetectRequest) -> OpenedRun:
    """Open the inputs (headers), fix the model, config and run key; writes nothing.

    Every check that needs no output runs here, so a bad input leaves no staging (and, on a local
    disk, not even the output folder) behind.
    """
    out = resolve_output(request.out)  # before anything is opened or written
    require_writable_output(out)
    require_s3_credentials([request.optical, request.sar, out, request.checkpoint or ""])
    require_bucket(out)
    out = out.rstrip("/") if storage.is_remote(out) else out
    _refuse_inputs_among_products(out, request)
    pair = pairs.open_pair(request.optical, request.sar, request.config)
    ref = describe_model(request.checkpoint, request.model)
    check_weights_fit(ref.checkpoint)  # before staging: not in the first block, as a traceback
    cfg, pair = pairs.for_model(request.config, pair, ref)  # the bands the model takes
    if cfg.products.diagnostics:
        require_moe(ref.checkpoint, ref.name)
    decoding = {
        role: scene.decoding.rules
        for role, scene in (("optical", pair.optical), ("SAR", pair.sar))
        if scene.decoding.rules
    }
    if (divisor := pair.optical.decoding.divide) is not None:
        # float optical holding DN: the plan's config says so (optical.scale), so that workers
        # reopen the pair without sampling it again; the same numbers (DN / 10000 either way)
        cfg = cfg.model_copy(update={"optical": cfg.optical.model_copy(update={"scale": divisor})})
        pair = pairs.open_pair(request.optical, request.sar, cfg)
    chash = config_hash(cfg)
    dates = (request.pre_date, request.post_date)
    key = run_key(request.optical, request.sar, ref.digest, chash, dates)
    pairs.remember(key, pair)
    return OpenedRun(request, out, pair, ref, cfg, chash, key, decoding)


def plan_run(request: DetectRequest) -> RunPlan:
    """Open the inputs (headers), fix the grid, model and run key, and prepare the staging store.

    Returns a plan with `finished=True` when `OUT` already holds this very run (nothing to do).
    Raises OutputExistsError when `OUT` holds products of another run and overwrite is off.
    """
    return stage_run(open_run(request))


def stage_run(opened: OpenedRun) -> RunPlan:
    """The plan of an opened run, its staging prepared (see `plan_run`); the CLI calls it while it
    holds the output's writer lease, so the overwrite guard below cannot race another run."""
    request, out, key, cfg = opened.request, opened.out, opened.run_key, opened.config
    staging = storage.join(out, STAGING_DIR, key)
    manifest = read_manifest(out)
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

    grid_info = opened.pair.grid
    h, w = grid_info.shape
    grid = GridSpec(
        crs_wkt=grid_info.crs.to_wkt() if grid_info.crs is not None else None,
        transform=_affine6(grid_info.transform),
        height=h,
        width=w,
    )
    tgrid = TileGrid(height=h, width=w, tile=cfg.tiling.tile, overlap=cfg.tiling.overlap)
    blocks = plan_blocks(tgrid, cfg.tiling.block)
    warn_costs(cfg, tgrid.count, sum(b.tiles for b in blocks))
    previous = storage.read_json(storage.join(staging, "plan.json"), missing_ok=True)
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
        resampling=opened.pair.resampling,
        sar_units=opened.pair.sar.units,
        optical_datetime=request.pre_date or opened.pair.optical.acquired,
        sar_datetime=request.post_date or opened.pair.sar.acquired,
        decoding=opened.decoding,
        config=cfg,
        config_hash=opened.config_hash,
        model=opened.model,
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
        storage.write_json(created, {"run_key": plan.run_key})
    storage.makedirs(storage.join(plan.staging, "blocks"))
    storage.write_json(storage.join(plan.staging, "plan.json"), plan.model_dump(mode="json"))
