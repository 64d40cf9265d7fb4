"""Model registry under a local or s3:// root: models/<digest>/ plus promoted.json.

Layout (``<hex>`` is the SHA-256 of the weights file, i.e. the checkpoint digest without ``sha256:``)::

    ROOT/models/<hex>/checkpoint/   weights.safetensors + checkpoint.json (an m2cd checkpoint)
    ROOT/models/<hex>/config.json   the training recipe that produced the weights
    ROOT/models/<hex>/metrics.json  validation metrics + what they were measured on (written last)
    ROOT/promoted.json              {"digest": ..., "metrics": ..., "previous": ...}

A digest identifies a model everywhere (products, cache, registry), so registering the same weights
twice is a no-op and promotion is a single small JSON write. Pure Python: no Prefect here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from m2cd import checkpoint_digest
from pipeline.errors import InputError
from pipeline.io import storage

PROMOTED = "promoted"


class ModelRecord(BaseModel):
    """What the registry knows about one registered model."""

    digest: str
    uri: str = Field(description="Checkpoint directory inside the registry.")
    metrics: dict[str, float] = {}
    validation: str | None = Field(default=None, description="What the metrics were measured on.")
    config: dict[str, Any] = {}
    registered_at: str = ""


class Promotion(BaseModel):
    """Content of promoted.json."""

    digest: str
    promoted_at: str
    metrics: dict[str, float] = {}
    reason: str = ""
    previous: str | None = None


def digest_hex(digest: str) -> str:
    """'sha256:ab12…' -> 'ab12…' (directory names stay free of ':')."""
    return digest.split(":", 1)[1] if ":" in digest else digest


def beats(candidate: dict[str, float], incumbent: dict[str, float] | None, key: str = "f1") -> bool:
    """Promotion rule: strictly better on `key`, measured on the same validation data."""
    if incumbent is None or key not in incumbent:
        return True
    if key not in candidate:
        raise InputError("candidate metrics", f"missing {key!r} (have {sorted(candidate)})")
    return candidate[key] > incumbent[key]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Registry:
    """A registry rooted at a local directory or an s3:// prefix."""

    def __init__(self, root: str | os.PathLike[str]):
        text = str(root).rstrip("/")
        self.root = text if storage.is_remote(text) else os.path.abspath(text)

    def _uri(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def model_uri(self, digest: str) -> str:
        """Checkpoint directory of a registered model (local path or s3:// URI)."""
        return self._uri("models", digest_hex(digest), "checkpoint")

    def register(
        self,
        checkpoint: str | os.PathLike[str],
        metrics: dict[str, float],
        *,
        validation: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Copy a local checkpoint directory in under its digest; idempotent for the same weights.

        Files are published one by one with checkpoint.json last, so a present checkpoint.json means
        a complete copy (S3 has no atomic directory rename).
        """

        src = Path(checkpoint)
        if not (src / "checkpoint.json").is_file():
            raise InputError(str(src), "not a checkpoint directory (no checkpoint.json)")
        digest = checkpoint_digest(src)
        dest = self.model_uri(digest)
        if not storage.exists(storage.join(dest, "checkpoint.json")):
            files = sorted(
                (f for f in src.iterdir() if f.is_file()), key=lambda f: f.name == "checkpoint.json"
            )
            for f in files:
                storage.put_file_atomic(f, storage.join(dest, f.name))
        record = ModelRecord(
            digest=digest,
            uri=dest,
            metrics={k: float(v) for k, v in metrics.items()},
            validation=validation,
            config=config or {},
            registered_at=_now(),
        )
        hexd = digest_hex(digest)
        storage.write_json(self._uri("models", hexd, "config.json"), record.config)
        storage.write_json(  # written last: its presence makes the model visible to get/list
            self._uri("models", hexd, "metrics.json"),
            {
                "digest": digest,
                "metrics": record.metrics,
                "validation": validation,
                "registered_at": record.registered_at,
            },
        )
        return record

    def get(self, digest: str) -> ModelRecord:
        """The record of a registered model (InputError naming the path when unknown)."""
        hexd = digest_hex(digest)
        meta = storage.read_json(self._uri("models", hexd, "metrics.json"), missing_ok=True)
        if meta is None:
            raise InputError(self._uri("models", hexd), "model not registered")
        return ModelRecord(
            digest=meta["digest"],
            uri=self.model_uri(digest),
            metrics=meta.get("metrics", {}),
            validation=meta.get("validation"),
            config=storage.read_json(self._uri("models", hexd, "config.json"), missing_ok=True)
            or {},
            registered_at=meta.get("registered_at", ""),
        )

    def list(self) -> list[ModelRecord]:
        """Every registered model, oldest first."""
        base = self._uri("models")
        if not storage.exists(base):
            return []
        if storage.is_remote(base):
            names = [
                p.rstrip("/").rsplit("/", 1)[-1]
                for p in storage.fs_for(base).ls(base[5:], detail=False)
            ]
        else:
            names = os.listdir(base)
        records = [
            self.get(n) for n in names if storage.exists(self._uri("models", n, "metrics.json"))
        ]
        return sorted(records, key=lambda r: r.registered_at)

    def promoted(self) -> Promotion | None:
        """The current promotion, or None before the first one."""
        data = storage.read_json(self._uri("promoted.json"), missing_ok=True)
        return Promotion.model_validate(data) if data else None

    def promote(self, digest: str, *, reason: str = "") -> Promotion:
        """Point promoted.json at a registered model (the one write that changes what runs)."""
        record = self.get(digest)
        current = self.promoted()
        promotion = Promotion(
            digest=record.digest,
            promoted_at=_now(),
            metrics=record.metrics,
            reason=reason,
            previous=current.digest if current else None,
        )
        storage.write_json(self._uri("promoted.json"), promotion.model_dump())
        return promotion

    def fetch(self, digest: str, cache_dir: str | os.PathLike[str]) -> Path:
        """A local checkpoint directory: the registry's own for a local root, else a cached copy."""
        src = self.model_uri(digest)
        if not storage.is_remote(src):
            return Path(src)
        dest = Path(cache_dir) / digest_hex(digest)
        if not (dest / "checkpoint.json").is_file():
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".fetch-"))
            fs = storage.fs_for(src)
            for path in fs.ls(src[5:], detail=False):
                fs.get_file(path, str(tmp / path.rsplit("/", 1)[-1]))
            if dest.exists():  # another process won the race
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, dest)
        return dest

    def resolve(self, model: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
        """'promoted' or a digest -> local checkpoint directory."""
        if model == PROMOTED:
            promotion = self.promoted()
            if promotion is None:
                raise InputError(self._uri("promoted.json"), "no model has been promoted yet")
            model = promotion.digest
        self.get(model)  # a clear error when unknown
        cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "m2cd-models"
        return self.fetch(model, cache)


def registry_root(explicit: str | None = None) -> str:
    """The registry root: explicit value, else $M2CD_REGISTRY, else ~/.m2cd/registry."""
    return explicit or os.environ.get("M2CD_REGISTRY") or str(Path.home() / ".m2cd" / "registry")
