"""Per-pixel expert maps of a block (`products.diagnostics`): which MoE expert took each token.

With diagnostics on, every forward of a block also reports the top-1 expert of each token at each
MoE stage, for the optical and the SAR half of the batch; each tile's token maps are upsampled
(nearest) onto its pixels and pasted where the tile *owns* the pixel. Ownership depends on the tile
grid only (never on the block or worker), so the maps are byte-identical across block sizes and
worker counts, as the change products are.

Off (the default) nothing here runs: no hook is attached to the model, and a forward costs what it
did. On, each stage's router output gets one top-k and one T-byte copy to the host: measured on
the shipped model (a batch of 4 tiles of 256², 2-core CPU), a recorded forward took 0.98× the
plain one (median of 4, within the machine's noise).

Threads of one process share one cached model (`pipeline.engine.models`), so the hooks stay
registered while any block records and report only to the thread that asked (thread-local): a
block without diagnostics in a neighbouring thread sees nothing of another block's routing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from m2cd.config import ModelConfig, load_model_config
from m2cd.moe import MoE
from pipeline.engine.predict import Predictor
from pipeline.engine.tiling import TileGrid
from pipeline.errors import ConfigError
from pipeline.geometry import PixelBox
from pipeline.io import storage
from pipeline.products.diagnostics import NODATA, write_block_maps


@dataclass
class _Capture:
    """Top-1 experts of the first forward a thread runs while capturing (the TTA identity view)."""

    stages: int
    shapes: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    top1: dict[int, np.ndarray] = field(default_factory=dict)  # stage → 2N×h×w uint8

    @property
    def full(self) -> bool:
        return len(self.top1) == self.stages


_local = threading.local()
_hooks_lock = threading.Lock()
_hooked: dict[int, tuple[list[torch.utils.hooks.RemovableHandle], int]] = {}  # id → handles, users


def moe_layers(model: nn.Module) -> list[MoE]:
    """The model's MoE layers in stage order (empty for a Siamese model without MoE)."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def _attach(moes: list[MoE]) -> list[torch.utils.hooks.RemovableHandle]:
    handles = []
    for i, moe in enumerate(moes):

        def pre(_module: nn.Module, args: tuple, i: int = i) -> None:
            cap: _Capture | None = getattr(_local, "capture", None)
            if cap is not None and i not in cap.top1:
                n, _, h, w = args[0].shape
                cap.shapes[i] = (n, h, w)

        def post(_module: nn.Module, _args: tuple, logits: torch.Tensor, i: int = i) -> None:
            cap: _Capture | None = getattr(_local, "capture", None)
            if cap is None or i in cap.top1 or i not in cap.shapes:
                return
            n, h, w = cap.shapes[i]
            moe = moes[i]
            # the gating's own choice: the first of its top-(k+1) (eval: no noise), same dtype
            m = min(moe.top_k + 1, moe.experts)
            top = logits.topk(m, dim=-1).indices[:, 0]
            cap.top1[i] = top.to(torch.uint8).view(n, h, w).cpu().numpy()

        handles.append(moe.register_forward_pre_hook(pre))
        handles.append(moe.router.register_forward_hook(post))
    return handles


@contextmanager
def _hooked_model(model: nn.Module, moes: list[MoE]) -> Iterator[None]:
    """Hooks on `model` while at least one thread records (reference-counted)."""
    key = id(model)
    with _hooks_lock:
        handles, users = _hooked.get(key, ([], 0))
        if users == 0:
            handles = _attach(moes)
        _hooked[key] = (handles, users + 1)
    try:
        yield
    finally:
        with _hooks_lock:
            handles, users = _hooked[key]
            if users == 1:
                for handle in handles:
                    handle.remove()
                del _hooked[key]
            else:
                _hooked[key] = (handles, users - 1)


@dataclass
class TileRouting:
    """Top-1 expert per token of one batch: `optical[s]` / `sar[s]` are n×h_s×w_s uint8."""

    optical: list[np.ndarray]
    sar: list[np.ndarray]


class RoutingRecorder:
    """A predictor that also records the routing of each call (`last`), for one block's thread.

    Only the first forward of a call is recorded: with TTA that is the identity view, the one
    whose tokens sit where the tile's pixels are.
    """

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.model: nn.Module = predictor.model
        self.batch_size = predictor.batch_size
        self.moes = moe_layers(self.model)
        if not self.moes:
            raise ConfigError(_no_moe(getattr(getattr(self.model, "config", None), "name", None)))
        self.experts = self.moes[0].experts
        if self.experts >= NODATA:
            raise ConfigError(f"products.diagnostics: {self.experts} experts do not fit uint8 maps")
        self.last: TileRouting | None = None

    @property
    def stages(self) -> int:
        """MoE stages (bands of each expert map)."""
        return len(self.moes)

    def __call__(self, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
        n = optical.shape[0]
        cap = _Capture(stages=len(self.moes))
        _local.capture = cap
        try:
            with _hooked_model(self.model, self.moes):
                probs = self.predictor(optical, sar)
        finally:
            _local.capture = None
        assert cap.full, "every MoE stage ran"
        b = self.batch_size  # the eval forward's batch is [optical b; SAR b] (padded to b)
        self.last = TileRouting(
            optical=[cap.top1[i][:n] for i in range(cap.stages)],
            sar=[cap.top1[i][b : b + n] for i in range(cap.stages)],
        )
        return probs


def require_moe(checkpoint: str | None, name: str | None) -> None:
    """Refuse diagnostics for a model without MoE stages at plan time, before anything is written
    (its config read from checkpoint.json or the named config; no weights are loaded)."""

    if checkpoint is not None:
        meta = storage.read_json(checkpoint.rstrip("/") + "/checkpoint.json")
        config = ModelConfig.model_validate(meta["model"])
    else:
        assert name is not None, "a named config when no checkpoint is given"
        config = load_model_config(name)
    if not config.moe.enabled:
        raise ConfigError(_no_moe(config.name or checkpoint or name))


def _no_moe(model: object) -> str:
    return (
        f"products.diagnostics: {model} has no MoE stages, so there is no routing to map "
        "(use an M²CD model with moe.enabled, or drop --diagnostics)"
    )


def owned_span(k: int, count: int, length: int, stride: int, overlap: int) -> tuple[int, int]:
    """[lo, hi) of the pixels along one axis that tile `k` owns: between the midpoints of its
    overlaps with its neighbours, where its blend weight is the largest (ties go to the later
    tile); the first tile owns from 0, the last up to `length`. Every pixel has exactly one owner."""
    lo = 0 if k == 0 else k * stride + overlap // 2
    hi = length if k == count - 1 else (k + 1) * stride + overlap // 2
    return lo, min(hi, length)


class RoutingCanvas:
    """The expert maps of one block core: 2 streams × stages × h × w uint8 (255: not written)."""

    def __init__(self, grid: TileGrid, core: PixelBox, stages: int, padded_tile: int):
        self.grid, self.core = grid, core
        self.maps = np.full((2, stages, core.height, core.width), NODATA, dtype=np.uint8)
        self.padded_tile = padded_tile

    def paste(self, tiles: list[tuple[int, int]], routing: TileRouting) -> None:
        """Paste each tile's token maps (nearest) over the core pixels it owns."""
        g, core = self.grid, self.core
        for k, (i, j) in enumerate(tiles):
            y0, y1 = owned_span(i, g.rows, g.height, g.stride, g.overlap)
            x0, x1 = owned_span(j, g.cols, g.width, g.stride, g.overlap)
            part = PixelBox(y0, y1, x0, x1).intersect(core)
            if part is None:
                continue
            ty = np.arange(part.y0, part.y1) - i * g.stride  # pixel offsets inside the tile
            tx = np.arange(part.x0, part.x1) - j * g.stride
            dst = (
                slice(part.y0 - core.y0, part.y1 - core.y0),
                slice(part.x0 - core.x0, part.x1 - core.x0),
            )
            for stream, maps in enumerate((routing.optical, routing.sar)):
                for s, tokens in enumerate(maps):
                    h, w = tokens.shape[-2:]
                    rows = ty * h // self.padded_tile
                    cols = tx * w // self.padded_tile
                    self.maps[stream, s][dst] = tokens[k][np.ix_(rows, cols)]

    def finish(self, valid: np.ndarray) -> np.ndarray:
        """The maps with nodata (255) wherever the block has no valid pixel."""
        self.maps[:, :, valid == 0] = NODATA
        return self.maps


def expert_counts(maps: np.ndarray, valid: np.ndarray, experts: int) -> list[list[list[int]]]:
    """Pixels per expert, `[stream][stage][expert]`, over the valid pixels of a block."""
    keep = valid != 0
    return [
        [np.bincount(stage[keep], minlength=experts)[:experts].tolist() for stage in stream]
        for stream in maps
    ]


def routing_shares(counts: list[list[list[int]]]) -> list[dict[str, object]]:
    """Per stage: each expert's share of the valid pixels for optical and for SAR (each sums to
    1), and the total-variation distance between the two (0: routed alike, 1: disjoint experts)."""
    out: list[dict[str, object]] = []
    optical, sar = (np.asarray(c, dtype=np.float64) for c in counts)
    for s in range(optical.shape[0]):
        o = optical[s] / max(optical[s].sum(), 1)
        a = sar[s] / max(sar[s].sum(), 1)
        out.append(
            {
                "stage": s + 1,
                "optical_share": [round(float(v), 4) for v in o],
                "sar_share": [round(float(v), 4) for v in a],
                "modality_tv_distance": round(float(0.5 * np.abs(o - a).sum()), 4),
            }
        )
    return out


def padded_tile(model: nn.Module, tile: int) -> int:
    """The tile size the model runs at (M2CD pads to `pad_multiple`): token maps span this."""
    mult = int(getattr(getattr(model, "config", None), "pad_multiple", 1) or 1)
    return tile + (-tile) % mult


class BlockRouting:
    """The diagnostics of one block: a recording predictor and the canvas it paints."""

    def __init__(self, predictor: Predictor, grid: TileGrid, core: PixelBox):
        self.recorder = RoutingRecorder(predictor)
        tile = padded_tile(self.recorder.model, grid.tile)
        self.canvas = RoutingCanvas(grid, core, self.recorder.stages, tile)

    def on_predicted(self, tiles: list[tuple[int, int]]) -> None:
        """After each batch's forward: paste what it routed (blend's `on_predicted`)."""
        assert self.recorder.last is not None, "called after a recorded forward"
        self.canvas.paste(tiles, self.recorder.last)

    def save(self, uri: str, valid: np.ndarray) -> list[list[list[int]]]:
        """Write the block's maps to `uri` and return its expert counts over the valid pixels
        (each block's marker records them; run.json sums them)."""
        maps = self.canvas.finish(valid)
        write_block_maps(uri, maps[0], maps[1], self.recorder.experts)
        return expert_counts(maps, valid, self.recorder.experts)
