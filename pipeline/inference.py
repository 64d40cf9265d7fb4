"""Batched inference over one block: model cache, fixed-shape batches, read-ahead, blending.

The model is loaded once per process (cached by digest). A reader thread reads and normalises tile
rows ahead of compute; the main thread runs fixed-shape batches (the last one padded, so a tile's
result never depends on how many tiles share its batch) and blends probabilities into the block core
in global row-major tile order, so every pixel sums the same terms in the same order whatever the
block size: products are byte-identical across block sizes, worker counts and resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from pipeline.errors import ConfigError, InputError
from pipeline.tiling import Extent, TileGrid, weight_window

log = logging.getLogger(__name__)

RANDOM_SEED = 0
_MODEL_CACHE_SIZE = 2

# Reads normalised inputs for a (possibly out-of-scene) extent:
# (optical C×h×w float32, sar C×h×w float32, valid h×w bool; valid is False outside the scene).
PairReader = Callable[[Extent], tuple[np.ndarray, np.ndarray, np.ndarray]]


class ModelRef(BaseModel):
    """Which model a run uses: a checkpoint (local dir or s3:// prefix) or a named untrained config."""

    model_config = ConfigDict(frozen=True)

    checkpoint: str | None = None
    name: str | None = None
    digest: str

    @model_validator(mode="after")
    def _one_source(self) -> ModelRef:
        if (self.checkpoint is None) == (self.name is None):
            raise ValueError("give exactly one of checkpoint or name")
        return self


# ---------------------------------------------------------------------------------------------
# device, precision, model cache


def resolve_device(name: str) -> Any:
    """`auto` → CUDA when present, else CPU; `cuda` without a GPU is a config error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("inference.device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def autocast_dtype(device: Any, precision: str) -> Any:
    """None for fp32; auto = bf16 (fp16 where bf16 is unsupported) on CUDA, fp32 on CPU."""
    import torch

    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def state_digest(model: Any) -> str:
    """SHA-256 of the parameters and buffers (names, dtypes, shapes, bytes) in state-dict order."""
    import torch

    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


_cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
_cache_lock = threading.Lock()
_described: dict[str, ModelRef] = {}


def _cache_put(key: tuple[str, str], model: Any) -> None:
    _cache[key] = model
    _cache.move_to_end(key)
    while len(_cache) > _MODEL_CACHE_SIZE:
        _cache.popitem(last=False)


def _build_random(name: str) -> Any:
    import torch

    import m2cd

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = m2cd.build_model(name, with_teacher=False)
    return model.eval()


def _local_checkpoint(uri: str, digest: str | None = None) -> Path:
    """A local checkpoint directory; s3:// prefixes are downloaded once into a cache keyed by digest."""
    if "://" not in uri:
        return Path(uri)
    from pipeline import storage

    key = (digest or hashlib.sha256(uri.encode()).hexdigest()).replace("sha256:", "")
    dest = Path.home() / ".cache" / "m2cd" / "checkpoints" / key
    if not (dest / "checkpoint.json").exists():
        storage.download_dir(uri, dest)
    return dest


def describe_model(checkpoint: str | None = None, name: str | None = None) -> ModelRef:
    """The ModelRef (with digest) of a checkpoint or named untrained model, without running it."""
    if (checkpoint is None) == (name is None):
        raise ConfigError("give exactly one of --checkpoint PATH or --model NAME")
    if checkpoint is not None:
        return ModelRef(checkpoint=checkpoint, digest=_checked_digest(checkpoint))
    with _cache_lock:
        if name in _described:  # deterministic (fixed seed): build and hash once per process
            return _described[name]
    model = _build_random(name)
    warnings.warn(  # at plan time, where the user sees it (a cached model never warns again)
        f"model {name!r} is randomly initialised (seed {RANDOM_SEED}), not trained: "
        "its products are meaningless (use it for benchmarks and tests)",
        stacklevel=2,
    )
    digest = state_digest(model)
    ref = ModelRef(name=name, digest=digest)
    with _cache_lock:
        _cache_put((digest, "cpu"), model)
        _described[name] = ref
    return ref


def _checkpoint_input_error(exc: Exception) -> InputError:
    """A CheckpointError ("<path>: <problem>") as the InputError the CLI prints without traceback."""
    source, _, problem = str(exc).partition(": ")
    return InputError(source, problem or "unusable checkpoint")


def _checked_digest(checkpoint: str) -> str:
    """The digest of a checkpoint, refused up front (before a run writes anything) when its
    metadata is unreadable or, for a local one, its weights no longer match the recorded digest."""
    from m2cd.checkpoint import CheckpointError, checkpoint_digest, read_checkpoint_meta

    if "://" in checkpoint:
        from pipeline import storage

        meta_uri = checkpoint.rstrip("/") + "/checkpoint.json"
        try:
            meta = storage.read_json(meta_uri)
        except FileNotFoundError:
            raise InputError(meta_uri, "checkpoint.json not found") from None
        except ValueError as exc:
            raise InputError(meta_uri, f"not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or not str(meta.get("digest", "")).startswith("sha256:"):
            raise InputError(meta_uri, "no sha256 digest recorded: not an m2cd checkpoint")
        return meta["digest"]  # the weights are verified against it when downloaded and loaded
    try:
        meta = read_checkpoint_meta(checkpoint)
        digest = checkpoint_digest(checkpoint)
    except CheckpointError as exc:
        raise _checkpoint_input_error(exc) from None
    weights = f"{checkpoint.rstrip('/')}/weights.safetensors"
    if digest != meta["digest"]:
        raise InputError(
            weights,
            f"digest mismatch (recorded {meta['digest']}, file {digest}); "
            "the weights were modified or truncated",
        )
    from safetensors import safe_open

    try:  # the header only: a pickle or other file planted under the name is refused here
        with safe_open(weights, framework="pt"):
            pass
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types)
        raise InputError(weights, f"not a safetensors file ({exc}); refusing to load it") from None
    return digest


def load_model(ref: ModelRef, device: Any) -> Any:
    """The eval-mode model of `ref` on `device`, loaded once per process (LRU of two)."""
    from pipeline.allocator import tune_malloc

    tune_malloc()  # before the first forward: steady heap reuse instead of page faults
    key = (ref.digest, str(device))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        cpu = _cache.get((ref.digest, "cpu"))
    if cpu is not None:
        model = cpu
    elif ref.name is not None:
        model = _build_random(ref.name)
    else:
        import m2cd
        from m2cd.checkpoint import CheckpointError

        try:
            model = m2cd.load_checkpoint(str(_local_checkpoint(ref.checkpoint, ref.digest)))
        except CheckpointError as exc:
            raise _checkpoint_input_error(exc) from None
    model = model.eval().to(device)
    with _cache_lock:
        _cache_put(key, model)
    return model


# ---------------------------------------------------------------------------------------------
# prediction


class Predictor:
    """Runs fixed-shape batches: N×C×T×T numpy in, change probability N×T×T float32 out."""

    def __init__(
        self,
        model: Any,
        batch_size: int,
        device: Any = None,
        precision: str = "fp32",
        channels_last: bool = True,
        tta: bool = False,
    ):
        import torch

        self.device = device if device is not None else torch.device("cpu")
        self.batch_size = batch_size
        self.views = DIHEDRAL if tta else DIHEDRAL[:1]
        self.dtype = autocast_dtype(self.device, precision)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        with (
            _cache_lock
        ):  # cached models are shared by block threads: convert once, never mid-forward
            if getattr(model, "_m2cd_prepared", None) != (str(self.device), channels_last):
                model = model.eval().to(self.device, memory_format=self.memory_format)
                model._m2cd_prepared = (str(self.device), channels_last)
        self.model = model

    def _tensor(self, batch: np.ndarray) -> Any:
        import torch

        n = batch.shape[0]
        if n < self.batch_size:  # pad: a tile's result never depends on the batch's fill
            pad = np.zeros((self.batch_size - n, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        t = torch.from_numpy(np.ascontiguousarray(batch))
        return t.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def __call__(self, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
        import torch

        n = optical.shape[0]
        if n > self.batch_size:
            raise ValueError(f"batch of {n} tiles exceeds batch_size {self.batch_size}")
        opt, s = self._tensor(optical), self._tensor(sar)
        amp = (
            torch.autocast(device_type=self.device.type, dtype=self.dtype)
            if self.dtype is not None
            else nullcontext()
        )
        prob = None
        for k, flip in self.views:  # each view mapped back, summed in a fixed order
            with torch.inference_mode(), amp:
                logits = self.model(to_view(opt, k, flip), to_view(s, k, flip))
            p = from_view(torch.softmax(logits.float(), dim=1)[:, 1], k, flip)
            prob = p if prob is None else prob + p
        if len(self.views) > 1:
            prob = prob / len(self.views)
        return prob[:n].cpu().numpy().astype(np.float32, copy=False)


# the 8 flips/rotations of a square tile: (quarter turns, then a left-right flip)
DIHEDRAL = tuple((k, flip) for k in range(4) for flip in (False, True))


def to_view(x: Any, k: int, flip: bool) -> Any:
    """`x` (…×H×W) turned `k` quarter turns, then flipped left-right when `flip`."""
    import torch

    if k == 0 and not flip:
        return x
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def from_view(x: Any, k: int, flip: bool) -> Any:
    """The inverse of `to_view`: maps a view's output back onto the tile."""
    import torch

    if k == 0 and not flip:
        return x
    x = torch.flip(x, dims=(-1,)) if flip else x
    return torch.rot90(x, -k, dims=(-2, -1))


@dataclass
class Batch:
    tiles: list[tuple[int, int]]
    optical: np.ndarray
    sar: np.ndarray


@dataclass
class BlockOutput:
    """A block core's products and counts (probability NaN / mask 255 where not valid)."""

    probability: np.ndarray
    mask: np.ndarray
    valid: np.ndarray
    tiles_run: int
    tiles_skipped: int

    @property
    def valid_px(self) -> int:
        return int(self.valid.sum())

    @property
    def changed_px(self) -> int:
        return int((self.mask == 1).sum())


def _iter_batches(
    grid: TileGrid,
    core: Extent,
    read_pair: PairReader,
    batch_size: int,
    min_valid_fraction: float,
    core_valid: np.ndarray,
    skipped: list[int],
) -> Iterator[Batch]:
    """Reads one tile row strip at a time; yields full batches of tiles that have valid pixels."""
    cols = grid.tile_cols_for(core)
    tile = grid.tile
    min_valid = max(1, int(np.ceil(min_valid_fraction * tile * tile)))
    pending: list[tuple[tuple[int, int], np.ndarray, np.ndarray]] = []

    def flush() -> Batch:
        batch = Batch(
            tiles=[t for t, _, _ in pending],
            optical=np.stack([o for _, o, _ in pending]),
            sar=np.stack([s for _, _, s in pending]),
        )
        pending.clear()
        return batch

    for i in grid.tile_rows_for(core):
        first, last = grid.extent(i, cols[0]), grid.extent(i, cols[-1])
        strip = Extent(first.y0, first.x0, first.y1, last.x1)
        optical, sar, valid = read_pair(strip)
        optical = np.where(valid, np.nan_to_num(optical), 0).astype(np.float32, copy=False)
        sar = np.where(valid, np.nan_to_num(sar), 0).astype(np.float32, copy=False)
        inner = strip.intersect(core)
        if inner is not None:
            core_valid[
                inner.y0 - core.y0 : inner.y1 - core.y0, inner.x0 - core.x0 : inner.x1 - core.x0
            ] = valid[
                inner.y0 - strip.y0 : inner.y1 - strip.y0, inner.x0 - strip.x0 : inner.x1 - strip.x0
            ]
        for j in cols:
            x0 = grid.extent(i, j).x0 - strip.x0
            if int(valid[:, x0 : x0 + tile].sum()) < min_valid:
                skipped[0] += 1
                continue
            pending.append(((i, j), optical[:, :, x0 : x0 + tile], sar[:, :, x0 : x0 + tile]))
            if len(pending) == batch_size:
                yield flush()
    if pending:
        yield flush()


def read_ahead_depth(setting: int | str, device: Any, remote_inputs: bool) -> int:
    """Batches to read ahead: `auto` reads ahead only where the reader has CPU to itself.

    On a CPU run whose intra-op threads cover every core, a read-ahead thread has nothing to
    overlap with and stalls the model's thread barriers (measured: -11 % end to end on 2 cores),
    so it reads in line. A GPU run, network reads (s3://) and spare cores all leave room.
    """
    if setting != "auto":
        return int(setting)
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    spare_cpu = torch.get_num_threads() < (cores or 1)
    return 2 if device.type != "cpu" or remote_inputs or spare_cpu else 0


def _yield_cores() -> None:
    """Put the reader thread in Linux's SCHED_IDLE class: it runs when a core would idle.

    A reader competing with the model's intra-op threads on equal terms stalls their barriers far
    beyond its own CPU time (+25 % per batch on 2 cores); at idle priority it fills the gaps
    (network waits, a GPU computing) and yields the moment the model needs the core.
    """
    with contextlib.suppress(AttributeError, OSError):  # not Linux: only slower, never wrong
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


def _read_ahead(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Runs the batch iterator in a thread, `depth` batches ahead (I/O overlaps compute)."""
    if depth <= 0:
        yield from batches
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        _yield_cores()
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=work, name="m2cd-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def predict_block(
    grid: TileGrid,
    core: Extent,
    read_pair: PairReader,
    predictor: Callable[[np.ndarray, np.ndarray], np.ndarray],
    batch_size: int,
    threshold: float = 0.5,
    min_valid_fraction: float = 0.0,
    prefetch: int = 2,
    on_batch: Callable[[int], None] | None = None,
) -> BlockOutput:
    """Run every tile touching `core` and blend its probabilities into the core only."""
    h, w = core.height, core.width
    acc_wp = np.zeros((h, w), dtype=np.float32)
    acc_w = np.zeros((h, w), dtype=np.float32)
    core_valid = np.zeros((h, w), dtype=bool)
    weights = weight_window(grid.tile, grid.overlap)
    skipped = [0]
    run = 0
    batches = _iter_batches(
        grid, core, read_pair, batch_size, min_valid_fraction, core_valid, skipped
    )
    for batch in _read_ahead(batches, prefetch):
        probs = predictor(batch.optical, batch.sar)
        for k, (i, j) in enumerate(batch.tiles):  # global row-major order
            part = grid.extent(i, j).intersect(core)
            if part is None:
                continue
            ty, tx = part.y0 - i * grid.stride, part.x0 - j * grid.stride
            src = (slice(ty, ty + part.height), slice(tx, tx + part.width))
            dst = (
                slice(part.y0 - core.y0, part.y1 - core.y0),
                slice(part.x0 - core.x0, part.x1 - core.x0),
            )
            wt = weights[src]
            acc_wp[dst] += wt * probs[k][src]
            acc_w[dst] += wt
        run += len(batch.tiles)
        if on_batch is not None:
            on_batch(len(batch.tiles))
    valid = core_valid & (acc_w > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = np.where(valid, acc_wp / acc_w, np.float32(np.nan)).astype(np.float32)
    mask = np.where(valid, (prob >= threshold).astype(np.uint8), np.uint8(255)).astype(np.uint8)
    return BlockOutput(prob, mask, valid.astype(np.uint8), run, skipped[0])
