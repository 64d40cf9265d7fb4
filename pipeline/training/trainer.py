"""The training loop: stages, AMP, clipping, validation, best/last checkpoints, exact resume.

Layout of ``out_dir`` (the last stage writes at the top, earlier ones under ``stages/<name>/``):

    out_dir/best/      m2cd checkpoint with the best validation change-class F1 (loadable by
                       ``m2cd.load_checkpoint`` and ``m2cd detect --checkpoint``)
    out_dir/last/      m2cd checkpoint + train_state.{safetensors,json} (resume point)
    out_dir/metrics.jsonl  one JSON object per log/validation event
    out_dir/done.json  written when the stage finished (a resumed run skips finished stages)

Without validation areas, ``best`` is the final model (nothing to select on).

Longer than 400 lines on purpose: the stage loop, its checkpointing and its exact resume share
the `_Stage` state and are only correct together (resume is byte-identical); the pure helpers
(loss, optimiser, augment, data, state files, device rule) already live in their own modules.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import m2cd
from m2cd.checkpoint import read_checkpoint_meta, update_provenance
from m2cd.config import load_model_config
from m2cd.losses import dice_loss
from m2cd.metrics import ConfusionMatrix
from m2cd.pretrained import DEFAULT_MODEL, shipped_checkpoint
from pipeline.engine.device import autocast_dtype, resolve_device, slow_on_cpu
from pipeline.errors import ConfigError, InputError
from pipeline.io.normalize import match_channels
from pipeline.training.augment import augment
from pipeline.training.config import StageConfig, TrainConfig
from pipeline.training.data import IGNORE, LabelledArea, load_areas
from pipeline.training.evaluate import fit_threshold
from pipeline.training.optim import build_optimizer, set_lr
from pipeline.training.sampling import ChipSampler, class_weights, iter_val_tiles
from pipeline.training.state import has_state, load_state, save_state
from pipeline.training.teacher import EMATeacher, attach_teacher


@dataclass
class TrainResult:
    """What a training run leaves: the best and last checkpoints, the best metrics and the stage
    history."""

    out_dir: Path
    best: Path
    last: Path
    best_metrics: dict[str, Any] | None
    steps: int
    stages: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# small pure helpers


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch from one number and return the generator the sampler draws from,
    so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, cfg: TrainConfig, weights: torch.Tensor | None
) -> torch.Tensor:
    """CE (optionally class-weighted) + Dice of the change class, ignoring 255."""

    loss = logits.new_zeros((), dtype=torch.float32)
    if cfg.loss.ce_weight:
        ce = F.cross_entropy(logits.float(), target.long(), weight=weights, ignore_index=IGNORE)
        loss = loss + cfg.loss.ce_weight * ce
    if cfg.loss.dice_weight:
        loss = loss + cfg.loss.dice_weight * dice_loss(logits, target, IGNORE)
    return loss


def _channels(x: np.ndarray, want: int) -> np.ndarray:

    return match_channels(x, want)


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    areas: list[LabelledArea],
    tile: int,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> dict[str, Any]:
    """Change-class P/R/F1/IoU, OA, kappa over non-overlapping tiles of every validation area."""

    cm = ConfusionMatrix(2, ignore=IGNORE)
    for prob, lab in val_probabilities(model, areas, tile, batch_size, device, amp):
        cm.update((prob >= 0.5).astype(np.int64), lab)
    return cm.to_dict()


@torch.no_grad()
def val_probabilities(
    model: torch.nn.Module,
    areas: list[LabelledArea],
    tile: int,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(change probability, label) of each batch of non-overlapping validation tiles."""
    was_training = model.training
    model.eval()
    bands = model.config.bands
    batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def flush() -> tuple[np.ndarray, np.ndarray]:
        opt = torch.from_numpy(np.stack([_channels(b[0], bands.optical_channels) for b in batch]))
        sar = torch.from_numpy(np.stack([_channels(b[1], bands.sar_channels) for b in batch]))
        lab = np.stack([b[2] for b in batch])
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
        with ctx:
            logits = model(opt.to(device), sar.to(device))
        batch.clear()
        return torch.softmax(logits.float(), 1)[:, 1].cpu().numpy(), lab

    try:
        for item in iter_val_tiles(areas, tile):
            batch.append(item)
            if len(batch) == batch_size:
                yield flush()
        if batch:
            yield flush()
    finally:
        model.train(was_training)


def record_threshold(
    checkpoint: Path, areas: list[LabelledArea], cfg: TrainConfig
) -> dict[str, Any]:
    """Fit the decision threshold on the validation areas and store it in the checkpoint, where
    ``m2cd detect`` reads it. Fine-tuned on a few % of change the 0.5 cut misses most of it
    (measured on a real flood pair: recall 0.23 at 0.5), so the default must not be 0.5."""

    model = m2cd.load_checkpoint(checkpoint)
    device = resolve_device(cfg.device)
    model = model.to(device)
    amp = autocast_dtype(device, cfg.precision)
    pairs = list(
        val_probabilities(model, areas, cfg.data.val_tile, cfg.data.batch_size, device, amp)
    )
    prob = np.concatenate([p.ravel() for p, _ in pairs])
    label = np.concatenate([lab.ravel() for _, lab in pairs])
    if not (label == 1).any():  # F1 is 0 at every cut: a "fitted" 0.5 would be a guess
        kept = read_checkpoint_meta(checkpoint).get("provenance", {}).get("threshold", 0.5)
        warnings.warn(
            f"{checkpoint}: the validation windows hold no change, so no threshold was fitted; "
            f"detect uses {kept}",
            stacklevel=2,
        )
        return {}
    threshold, f1_by_threshold = fit_threshold(prob, label)
    fitted = {"threshold": threshold, "threshold_val_f1": round(f1_by_threshold[threshold], 4)}
    update_provenance(checkpoint, fitted)
    return fitted


def ema_teacher(model: torch.nn.Module) -> torch.nn.Module | None:
    """The network of the model's EMA teacher (state that moves every step and must be saved for
    exact resume), or None for no teacher or a frozen checkpoint teacher (reloaded from disk)."""
    teacher = getattr(model, "teacher", None)
    return teacher.net if isinstance(teacher, EMATeacher) else None


def _write_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def _progress(total: int, initial: int, enabled: bool, desc: str):

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# one stage


class _Stage:
    """Runs one stage in ``stage_dir``; ``run()`` returns the stage summary."""

    def __init__(
        self,
        cfg: TrainConfig,
        stage: StageConfig,
        stage_dir: Path,
        metrics_path: Path,
        train_areas: list[LabelledArea],
        val_areas: list[LabelledArea],
        init_from: Path | None,
        resume: bool,
    ):

        self.cfg, self.stage, self.dir, self.metrics_path = cfg, stage, stage_dir, metrics_path
        self.val_areas = val_areas
        self.device = resolve_device(cfg.device)
        self.amp = autocast_dtype(self.device, cfg.precision)
        self.rng = seed_everything(cfg.seed)
        self.model = m2cd.build_model(stage.model, **stage.model_overrides).to(self.device)
        if init_from is not None:
            self._init_weights(init_from)
        attach_teacher(self.model)  # after the initial weights: an EMA starts from them
        self.model.train()
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.sampler = ChipSampler(train_areas, cfg.data.tile, cfg.data.min_change_fraction)
        self.input_bands = (train_areas[0].optical.shape[0], train_areas[0].sar.shape[0])
        cw = cfg.loss.class_weights
        if cw == "auto":
            cw = class_weights(train_areas)
        self.weights = torch.tensor(cw, dtype=torch.float32, device=self.device) if cw else None
        lo, hi = cfg.detect.sar.db_range
        self.sar_units_per_db = 2.0 / (
            hi - lo
        )  # pipeline.io.normalize maps [lo, hi] dB onto [-1, 1]
        self.step = 0
        self.best_f1 = -math.inf
        self.best_metrics: dict[str, Any] | None = None
        if resume and has_state(self.dir / "last"):
            self._resume()

    def _init_weights(self, path: Path) -> None:

        source = m2cd.load_checkpoint(path)
        missing, unexpected = self.model.load_state_dict(source.state_dict(), strict=False)
        if unexpected or missing:
            raise InputError(
                str(path),
                f"weights do not fit stage {self.stage.name!r}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}",
            )

    def _resume(self) -> None:

        last = self.dir / "last"
        loaded = m2cd.load_checkpoint(last)
        self.model.load_state_dict(loaded.state_dict())
        self.optimizer = build_optimizer(self.model, self.cfg.optim)
        meta = load_state(last, self.optimizer, self.rng, self.scaler, ema_teacher(self.model))
        if meta.get("stage") != self.stage.name:
            raise InputError(str(last), f"training state is for stage {meta.get('stage')!r}")
        self.step = int(meta["step"])
        self.best_f1 = float(meta["best_f1"]) if meta["best_f1"] is not None else -math.inf
        self.best_metrics = meta.get("best_metrics")

    # -- checkpoints ---------------------------------------------------------------------------
    def _provenance(self, metrics: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "trainer": "pipeline.training",
            "stage": self.stage.name,
            "step": self.step,
            "train_config_digest": self.cfg.digest(),
            "detect_config": self.cfg.detect.model_dump(mode="json"),
            "val_metrics": _scalar_metrics(metrics),
            # bands read from the files, before channel matching: detect refuses other counts
            "inputs": {"optical_bands": self.input_bands[0], "sar_bands": self.input_bands[1]},
        }

    def _save_last(self) -> None:

        tmp = self.dir / f".last.{int(time.time() * 1e6)}.tmp"
        m2cd.save_checkpoint(self.model, tmp, self._provenance(self.best_metrics))
        save_state(
            tmp,
            self.optimizer,
            self.rng,
            {
                "stage": self.stage.name,
                "step": self.step,
                "best_f1": None if self.best_f1 == -math.inf else self.best_f1,
                "best_metrics": self.best_metrics,
                "train_config_digest": self.cfg.digest(),
            },
            self.scaler,
            ema_teacher(self.model),
        )
        _replace_dir(tmp, self.dir / "last")

    def _save_best(self, metrics: dict[str, Any] | None) -> None:

        tmp = self.dir / f".best.{int(time.time() * 1e6)}.tmp"
        m2cd.save_checkpoint(self.model, tmp, self._provenance(metrics))
        _replace_dir(tmp, self.dir / "best")

    # -- loop ----------------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chips = [
            augment(
                self.sampler.sample(self.rng), self.cfg.augment, self.rng, self.sar_units_per_db
            )
            for _ in range(self.cfg.data.batch_size)
        ]
        bands = self.model.config.bands  # channel matching as in the engine (pipeline.engine.pair)
        opt = torch.from_numpy(np.stack([_channels(c[0], bands.optical_channels) for c in chips]))
        sar = torch.from_numpy(np.stack([_channels(c[1], bands.sar_channels) for c in chips]))
        lab = torch.from_numpy(np.stack([c[2] for c in chips]).astype(np.int64))
        return opt.to(self.device), sar.to(self.device), lab.to(self.device)

    def _train_step(self) -> dict[str, float]:
        opt, sar, lab = self._batch()
        set_lr(self.optimizer, self.step, self.stage.steps, self.cfg.optim)
        ctx = (
            torch.autocast(self.device.type, dtype=self.amp)
            if self.amp is not None
            else nullcontext()
        )
        with ctx:
            logits, aux = self.model(opt, sar)
        seg = segmentation_loss(logits, lab, self.cfg, self.weights)
        aux_total = sum((v.float() for v in aux.values()), torch.zeros((), device=self.device))
        loss = seg + self.cfg.loss.aux_weight * aux_total
        if not torch.isfinite(loss):
            raise InputError(
                str(self.dir), f"loss became {loss.item()} at step {self.step}; lower the lr"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.model.update_teacher()
        self.step += 1
        out = {"loss": float(loss.detach()), "seg_loss": float(seg.detach())}
        out.update({k: float(v.detach()) for k, v in aux.items()})
        return out

    def _validate(self) -> dict[str, Any] | None:
        if not self.val_areas:
            return None
        return validate(
            self.model,
            self.val_areas,
            self.cfg.data.val_tile,
            self.cfg.data.batch_size,
            self.device,
            self.amp,
        )

    def run(self, steps_limit: int | None = None) -> dict[str, Any]:
        """Train to the stage's step budget (or stop early after ``steps_limit`` steps: testing)."""
        cfg, total = self.cfg, self.stage.steps
        stop_at = total if steps_limit is None else min(total, self.step + steps_limit)
        bar = _progress(total, self.step, cfg.progress, f"train {self.stage.name}")
        running: list[float] = []
        try:
            while self.step < stop_at:
                rec = self._train_step()
                running.append(rec["loss"])
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == total:
                    lr = self.optimizer.param_groups[0]["lr"]
                    _write_jsonl(
                        self.metrics_path,
                        {
                            "stage": self.stage.name,
                            "step": self.step,
                            "lr": lr,
                            "loss_mean": float(np.mean(running)),
                            **rec,
                        },
                    )
                    bar.set_postfix(loss=f"{np.mean(running):.3f}")
                    running.clear()
                if self.step % cfg.val_every == 0 or self.step == total:
                    metrics = self._validate()
                    if metrics is not None:
                        _write_jsonl(
                            self.metrics_path,
                            {
                                "stage": self.stage.name,
                                "step": self.step,
                                "val": _scalar_metrics(metrics),
                            },
                        )
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", f1=f"{metrics['f1']:.3f}")
                        if metrics["f1"] > self.best_f1:
                            self.best_f1, self.best_metrics = (
                                metrics["f1"],
                                _scalar_metrics(metrics),
                            )
                            self._save_best(metrics)
                if self.step % cfg.checkpoint_every == 0 or self.step == stop_at:
                    self._save_last()
        finally:
            bar.close()
        if self.step >= total:
            if not self.val_areas:
                self._save_best(None)
            summary = {
                "stage": self.stage.name,
                "steps": self.step,
                "best_f1": self.best_metrics and self.best_f1,
                "best_metrics": self.best_metrics,
            }
            (self.dir / "done.json").write_text(json.dumps(summary, indent=2))
            return summary
        return {"stage": self.stage.name, "steps": self.step, "unfinished": True}


def _scalar_metrics(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    keep = ("precision", "recall", "f1", "iou", "oa", "kappa", "mf1", "miou", "pixels")
    return {k: metrics[k] for k in keep if k in metrics}


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished directory into place; a reader sees the old or the new one, never half."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


# ---------------------------------------------------------------------------------------------
# public entry point


def recipe_channels(cfg: TrainConfig) -> tuple[int, int]:
    """(optical, SAR) channel counts of the recipe's models; the data is read once for every
    stage, so the stages must agree (ConfigError otherwise)."""

    counts = set()
    for stage in cfg.stages:
        try:
            bands = load_model_config(stage.model, **stage.model_overrides).bands
        except ValueError as exc:
            raise ConfigError(f"stage {stage.name!r}: model {stage.model!r}: {exc}") from None
        counts.add((bands.optical_channels, bands.sar_channels))
    if len(counts) > 1:
        raise ConfigError(
            f"the stages' models take different (optical, SAR) channel counts {sorted(counts)}; "
            "one recipe reads one set of bands"
        )
    return counts.pop()


def stage_dirs(cfg: TrainConfig, out_dir: Path) -> list[Path]:
    """Where each stage writes: the last at ``out_dir``, earlier ones under ``out_dir/stages``."""
    n = len(cfg.stages)
    return [
        out_dir if i == n - 1 else out_dir / "stages" / s.name for i, s in enumerate(cfg.stages)
    ]


def warn_slow_precision(cfg: TrainConfig) -> None:
    """fp16 (or bf16 without native kernels) on a CPU trains ~10× slower than fp32 (measured with
    `m2cd bench model` on the AVX2 dev CPU): say so once, before the first step, as detect does."""
    device = resolve_device(cfg.device)
    precision = cfg.precision
    if slow_on_cpu(device, precision):
        warnings.warn(
            f"precision {precision} on a CPU without native {precision} kernels trains ~10× "
            "slower than fp32: use fp32 or auto",
            stacklevel=3,
        )


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    areas: tuple[list[LabelledArea], list[LabelledArea]] | None = None,
    max_steps: int | None = None,
) -> TrainResult:
    """Run every stage of the recipe into ``out_dir``; see the module docstring for the layout.

    ``areas`` (train, val) bypasses reading ``cfg.data`` (arrays already read with
    ``pipeline.training.data``). ``max_steps`` stops the current stage early after that many steps
    (its ``last`` checkpoint is written), which is how the resume test interrupts a run.
    """
    out = Path(out_dir)
    warn_slow_precision(cfg)
    if not resume and ((out / "last").exists() or (out / "stages").exists()):
        raise InputError(str(out), "holds a training run already; pass --resume or another --out")
    if areas is None:
        areas = load_areas(cfg.data, cfg.detect, recipe_channels(cfg))
    train_areas, val_areas = areas
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    dirs = stage_dirs(cfg, out)
    summaries: list[dict[str, Any]] = []
    prev_best: Path | None = None
    for stage, sdir in zip(cfg.stages, dirs, strict=True):
        sdir.mkdir(parents=True, exist_ok=True)
        if resume and (sdir / "done.json").is_file():
            summaries.append(json.loads((sdir / "done.json").read_text()))
            prev_best = sdir / "best"
            continue
        init = None
        if stage.init == "previous":
            init = prev_best
        elif stage.init == "shipped" or (stage.init or "").startswith("shipped:"):
            init = shipped_checkpoint(stage.init.partition(":")[2] or DEFAULT_MODEL)
        elif stage.init:
            init = Path(stage.init)
        runner = _Stage(
            cfg, stage, sdir, out / "metrics.jsonl", train_areas, val_areas, init, resume
        )
        summary = runner.run(max_steps)
        summaries.append(summary)
        if summary.get("unfinished"):
            break
        prev_best = sdir / "best"
    final = summaries[-1]
    if val_areas and not final.get("unfinished") and (out / "best").is_dir():
        final = {**final, **record_threshold(out / "best", val_areas, cfg)}
    return TrainResult(
        out_dir=out,
        best=out / "best",
        last=out / "last",
        best_metrics=final.get("best_metrics"),
        steps=int(final.get("steps", 0)),
        stages=summaries,
    )
