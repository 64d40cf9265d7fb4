"""The models a run uses: what names them (ModelRef, by digest) and one loaded copy per process.

A checkpoint's weights are hashed once per process: at plan time (refused before a run writes
anything), and a load in the same process whose file is unchanged since trusts that check instead
of hashing the weights again (a 14 MB mit_b1 checkpoint costs ~40 ms per hash on the dev CPU; a
Dask worker in another process verifies on its own load). Models are cached by (digest, device),
an LRU of two, so the block threads of a run share one model.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from safetensors.torch import save
from torch import nn

import m2cd
from m2cd.checkpoint import CheckpointError, verify_checkpoint
from pipeline.engine.allocator import tune_malloc
from pipeline.errors import ConfigError, InputError
from pipeline.io import storage

RANDOM_SEED = 0
_MODEL_CACHE_SIZE = 2


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


def state_digest(model: nn.Module) -> str:
    """SHA-256 of the weights serialised exactly as `m2cd.save_checkpoint` writes them (safetensors,
    fp32, no metadata): a named model and the same weights saved as a checkpoint carry one digest,
    so their products (the COGs' M2CD_MODEL_DIGEST tag included) are byte-identical."""

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return "sha256:" + hashlib.sha256(save(state)).hexdigest()


_cache: OrderedDict[tuple[str, str], nn.Module] = OrderedDict()
cache_lock = threading.Lock()  # the cache, and cached models that Predictor prepares in place
_described: dict[str, ModelRef] = {}
_verified: dict[str, tuple[str, tuple[int, int]]] = {}  # path → (digest, (size, mtime_ns))


def _cache_put(key: tuple[str, str], model: nn.Module) -> None:
    _cache[key] = model
    _cache.move_to_end(key)
    while len(_cache) > _MODEL_CACHE_SIZE:
        _cache.popitem(last=False)


def build_random(name: str) -> nn.Module:
    """The untrained model of a named config, identical in every process (fixed seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = m2cd.build_model(name)
    return model.eval()


def _local_checkpoint(uri: str, digest: str | None = None) -> Path:
    """A local checkpoint directory; s3:// prefixes are downloaded once into a cache keyed by digest."""
    if not storage.is_remote(uri):
        return Path(uri)
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
    assert name is not None  # exactly one of the two, checked above
    if name not in m2cd.available_configs():
        raise ConfigError(
            f"--model: unknown model config {name!r}; choose one of "
            f"{', '.join(m2cd.available_configs())} (or give --checkpoint)"
        )
    with cache_lock:
        if name in _described:  # deterministic (fixed seed): build and hash once per process
            return _described[name]
    model = build_random(name)
    warnings.warn(  # at plan time, where the user sees it (a cached model never warns again)
        f"model {name!r} is randomly initialised (seed {RANDOM_SEED}), not trained: "
        "its products are meaningless (use it for benchmarks and tests)",
        stacklevel=2,
    )
    digest = state_digest(model)
    ref = ModelRef(name=name, digest=digest)
    with cache_lock:
        _cache_put((digest, "cpu"), model)
        _described[name] = ref
    return ref


def _checkpoint_input_error(exc: Exception) -> InputError:
    """A CheckpointError ("<path>: <problem>") as the InputError the CLI prints without traceback."""
    source, _, problem = str(exc).partition(": ")
    return InputError(source, problem or "unusable checkpoint")


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(Path(path) / "weights.safetensors")
    return st.st_size, st.st_mtime_ns


def _checked_digest(checkpoint: str) -> str:
    """The digest of a checkpoint, refused up front (before a run writes anything) when its
    metadata is unreadable or, for a local one, its weights no longer match the recorded digest."""
    if storage.is_remote(checkpoint):
        meta_uri = checkpoint.rstrip("/") + "/checkpoint.json"
        meta = storage.read_json(meta_uri)
        if not isinstance(meta, dict) or not str(meta.get("digest", "")).startswith("sha256:"):
            raise InputError(meta_uri, "no sha256 digest recorded: not an m2cd checkpoint")
        return meta["digest"]  # the weights are verified against it when downloaded and loaded
    try:
        meta = verify_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise _checkpoint_input_error(exc) from None
    with cache_lock:
        _verified[os.path.abspath(checkpoint)] = (meta["digest"], _stamp(checkpoint))
    return meta["digest"]


def _already_verified(path: Path, digest: str) -> bool:
    """True when this process hashed these very weights (same size and mtime) against `digest`."""
    with cache_lock:
        seen = _verified.get(os.path.abspath(path))
    try:
        return seen == (digest, _stamp(str(path)))
    except OSError:
        return False


def preload(ref: ModelRef, model: nn.Module, device: torch.device) -> None:
    """Hand this process's cache a model built here, so runs naming `ref` use it (benchmarks: the
    null model that measures the engine without a forward's cost); other processes never see it."""
    with cache_lock:
        _cache_put((ref.digest, str(device)), model.eval().to(device))


def load_model(ref: ModelRef, device: torch.device) -> nn.Module:
    """The eval-mode model of `ref` on `device`, loaded once per process (LRU of two)."""
    tune_malloc()  # before the first forward: steady heap reuse instead of page faults
    key = (ref.digest, str(device))
    with cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        cpu = _cache.get((ref.digest, "cpu"))
    if cpu is not None:
        model = cpu
    elif ref.name is not None:
        model = build_random(ref.name)
    else:
        assert ref.checkpoint is not None  # ModelRef holds exactly one of name and checkpoint
        local = _local_checkpoint(ref.checkpoint, ref.digest)
        try:
            model = m2cd.load_checkpoint(local, verify=not _already_verified(local, ref.digest))
        except CheckpointError as exc:
            raise _checkpoint_input_error(exc) from None
    model = model.eval().to(device)
    with cache_lock:
        _cache_put(key, model)
    return model
