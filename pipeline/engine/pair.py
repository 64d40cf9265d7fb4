"""The aligned optical/SAR pair of a run, opened once per process, and the reader blocks use.

Opening a pair reads both headers and samples SAR windows to decide its units (`pipeline.io.scene`),
so each process keeps the pairs of its last two runs: plan_run hands its pair over (`remember`), a
worker opens it on its first block with the units the plan recorded (no sampling) and every later
block of the run reuses it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import DetectConfig
from pipeline.engine.models import ModelRef
from pipeline.engine.stage_times import stage
from pipeline.geometry import PixelBox
from pipeline.io.band_names import pick_by_name, trained_band_names
from pipeline.io.bands import (
    check_trained_bands,
    model_channels,
    resolve_bands,
    trained_band_counts,
)
from pipeline.io.grid import AlignedPair, WarpedScene, align_pair
from pipeline.io.normalize import match_channels, normalize_optical, normalize_sar, valid_mask
from pipeline.io.scene import open_scene, with_bands

if TYPE_CHECKING:  # plan imports this module
    from pipeline.engine.plan import RunPlan

_PAIRS_KEPT = 2  # a worker rarely alternates between more runs; each pair holds open datasets
_pairs: OrderedDict[str, AlignedPair] = OrderedDict()
_pairs_lock = threading.Lock()  # block threads of one run ask for the pair at the same time

# Reads normalised inputs for a (possibly out-of-scene) box:
# (optical C×h×w float32, sar C×h×w float32, valid h×w bool; valid is False outside the scene).
PairReader = Callable[[PixelBox], tuple[np.ndarray, np.ndarray, np.ndarray]]


def open_pair(optical: str, sar: str, cfg: DetectConfig, check: bool = True) -> AlignedPair:
    """Both scenes opened (headers only) and the SAR put on the optical grid; `check=False` for a
    planned pair (no sample read where the plan's config decided every rule)."""
    return align_pair(
        open_scene(optical, "optical", cfg, check), open_scene(sar, "sar", cfg, check), cfg
    )


def for_model(
    cfg: DetectConfig, pair: AlignedPair, ref: ModelRef
) -> tuple[DetectConfig, AlignedPair]:
    """The config with the bands the model takes (`pipeline.io.bands`) and the pair reading them:
    the same pair when the bands did not change, else its scenes re-banded and re-aligned without
    opening either file again (the pair is opened once per process per run)."""
    opt_ch, sar_ch = model_channels(ref.checkpoint, ref.name)
    named = bands_by_name(cfg, pair, trained_band_names(ref.checkpoint))
    resolved = resolve_bands(
        named,
        (pair.optical.uri, pair.optical.count),
        (pair.sar.uri, pair.sar.count),
        opt_ch,
        sar_ch,
    )
    check_trained_bands(
        resolved,
        (pair.optical.uri, pair.optical.count),
        (pair.sar.uri, pair.sar.count),
        trained_band_counts(ref.checkpoint),
    )
    if resolved is cfg:
        return cfg, pair
    sar = pair.sar.source if isinstance(pair.sar, WarpedScene) else pair.sar
    return resolved, align_pair(
        with_bands(pair.optical, resolved), with_bands(sar, resolved), resolved
    )


def bands_by_name(
    cfg: DetectConfig, pair: AlignedPair, trained: tuple[list[str] | None, list[str] | None]
) -> DetectConfig:
    """`cfg` with the bands the model was trained on picked by name where the config names none
    and the inputs name their bands (`pipeline.io.band_names`); unchanged otherwise."""
    update: dict[str, object] = {}
    for role, scene, names in (
        ("optical", pair.optical, trained[0]),
        ("sar", pair.sar, trained[1]),
    ):
        section = cfg.optical if role == "optical" else cfg.sar
        labels = scene.band_names
        if section.bands is not None or not names or not any(labels):
            continue
        picked = pick_by_name(labels, names)
        if picked is not None and picked != scene.bands:
            update[role] = section.model_copy(update={"bands": picked})
    return cfg.model_copy(update=update) if update else cfg


def remember(run_key: str, pair: AlignedPair) -> None:
    """Keep the pair a plan opened, so a run in the same process does not open it again."""
    with _pairs_lock:
        _pairs[run_key] = pair
        _pairs.move_to_end(run_key)
        while len(_pairs) > _PAIRS_KEPT:
            _pairs.popitem(last=False)


def pair_for(plan: RunPlan) -> AlignedPair:
    """The aligned pair of a plan, opened once per process (headers only)."""
    with _pairs_lock:
        pair = _pairs.get(plan.run_key)
    if pair is None:
        cfg = plan.config
        if plan.sar_units is not None:  # the plan's units: no SAR windows sampled again
            cfg = cfg.model_copy(
                update={"sar": cfg.sar.model_copy(update={"units": plan.sar_units})}
            )
        pair = open_pair(plan.optical, plan.sar, cfg, check=False)
        remember(plan.run_key, pair)
    return pair


def pair_reader(
    plan: RunPlan, optical_channels: int | None, sar_channels: int | None
) -> PairReader:
    """A PairReader over the plan's pair: raw windows → normalised arrays + valid mask."""
    pair = pair_for(plan)
    cfg = plan.config
    scene = PixelBox.full((plan.grid.height, plan.grid.width))
    opt, sar = pair.optical, pair.sar

    def read(box: PixelBox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with stage("read"):
            o_raw, s_raw = opt.read_window(box), sar.read_window(box)
        with stage("normalise"):
            valid = valid_mask(o_raw, s_raw, opt.nodata, sar.nodata)
            inside = box.intersect(scene)  # padding is never valid, whatever its value
            in_scene = np.zeros_like(valid)
            if inside is not None:
                in_scene[inside.relative_to(box).slices] = True
            valid &= in_scene
            o = normalize_optical(o_raw, cfg.optical, opt.dtype, valid)
            s = normalize_sar(s_raw, cfg.sar, sar.units, sar.dtype, valid)
            if optical_channels:
                o = match_channels(o, optical_channels)
            if sar_channels:
                s = match_channels(s, sar_channels)
        return o, s, valid

    return read
