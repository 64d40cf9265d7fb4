"""Blending one block at a time: byte-identical across block sizes and batch fill, no seams, nodata.

Uses a test-local smooth model (tests/pipeline/engine/support.py) that follows the model contract,
so seams and stitching errors are measurable; the full model runs in test_engine_run.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.engine.blend import predict_block
from pipeline.engine.predict import Predictor
from pipeline.engine.read_ahead import read_ahead_depth
from pipeline.engine.tiling import TileGrid, plan_blocks
from pipeline.errors import InputError
from pipeline.geometry import PixelBox
from tests.pipeline.engine.support import SmoothModel, array_reader, smooth_scene

H, W = 300, 410


@pytest.fixture(scope="module")
def scene():
    return smooth_scene(H, W)


@pytest.fixture(scope="module")
def predictor():
    return Predictor(SmoothModel(), batch_size=4)


def stitch(optical, sar, predictor, block, tile=64, overlap=16, valid=None, **kw):
    h, w = optical.shape[-2:]
    grid = TileGrid(height=h, width=w, tile=tile, overlap=overlap)
    prob = np.full((h, w), -1.0, np.float32)
    mask = np.zeros((h, w), np.uint8)
    valid_out = np.zeros((h, w), np.uint8)
    runs = 0
    for b in plan_blocks(grid, block):
        out = predict_block(grid, b.core, array_reader(optical, sar, valid), predictor, 4, **kw)
        sl = (slice(b.y0, b.y1), slice(b.x0, b.x1))
        prob[sl], mask[sl], valid_out[sl] = out.probability, out.mask, out.valid
        runs += out.tiles_run
    return prob, mask, valid_out, runs, grid


def whole_image(optical, sar):
    with torch.inference_mode():
        logits = SmoothModel()(torch.from_numpy(optical)[None], torch.from_numpy(sar)[None])
    return torch.softmax(logits, 1)[0, 1].numpy()


def test_products_are_byte_identical_for_any_block_size(scene, predictor):
    optical, sar = scene
    ref = stitch(optical, sar, predictor, block=64)
    for block in (128, 200, 512):
        other = stitch(optical, sar, predictor, block=block)
        for a, b in zip(ref[:3], other[:3], strict=True):
            assert a.tobytes() == b.tobytes()
    assert not np.isnan(ref[0]).any() and (ref[2] == 1).all()


def test_reading_ahead_or_in_line_gives_the_same_bytes(scene, predictor):
    optical, sar = scene
    ahead = stitch(optical, sar, predictor, block=128, prefetch=2)
    in_line = stitch(optical, sar, predictor, block=128, prefetch=0)
    for a, b in zip(ahead[:3], in_line[:3], strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("forwards", [2, 3])
def test_several_forwards_at_once_give_the_same_bytes(scene, predictor, forwards, tmp_path):
    """Batches finish out of order on the pool; the blend still sums them in the global order."""
    optical, sar = scene
    one = stitch(optical, sar, predictor, block=128, prefetch=0)
    many = stitch(optical, sar, predictor, block=128, prefetch=0, forwards=forwards)
    ahead = stitch(optical, sar, predictor, block=200, prefetch=2, forwards=forwards)
    for a, b, c in zip(one[:4], many[:4], ahead[:4], strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes() == np.asarray(c).tobytes()
    shared, runs, _, grid = stitch_shared(
        optical, sar, predictor, 128, tmp_path, workers=2, forwards=forwards
    )
    assert runs == grid.count and shared.tobytes() == one[0].tobytes()


def test_a_stop_during_several_forwards_ends_the_block_and_its_forwards(scene, predictor):
    import threading
    import time

    optical, sar = scene
    grid = TileGrid(height=H, width=W, tile=64, overlap=16)
    batches, running, calls = [], [0], [0]
    lock = threading.Lock()

    def slow(o, s):
        with lock:
            running[0] += 1
            calls[0] += 1
        time.sleep(0.05)
        try:
            return predictor(o, s)
        finally:
            with lock:
                running[0] -= 1

    def stop_after_two(n: int) -> None:
        batches.append(n)
        if len(batches) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_block(
            grid,
            PixelBox(0, H, 0, W),
            array_reader(optical, sar),
            slow,
            4,
            prefetch=0,
            on_batch=stop_after_two,
            forwards=3,
        )
    assert len(batches) == 2 and running[0] == 0  # nothing of the block still in the model
    started = calls[0]
    time.sleep(0.2)
    assert calls[0] == started  # and nothing queued starts later


def test_flip_rotation_averaging_is_seam_free_and_block_size_independent(scene, predictor):
    """The test model is a symmetric box filter, so every view mapped back agrees with the plain
    forward: averaging may change rounding only, and stays byte-identical across block sizes."""
    optical, sar = scene
    tta = Predictor(SmoothModel(), batch_size=4, tta=True)
    assert len(tta.views) == 8
    ref = stitch(optical, sar, tta, block=64)
    other = stitch(optical, sar, tta, block=200)
    assert ref[0].tobytes() == other[0].tobytes()
    plain = stitch(optical, sar, predictor, block=64)
    assert np.abs(ref[0] - plain[0]).max() < 1e-5
    assert seam_ratio(ref[0], ref[4]) <= 1.05


def test_auto_reads_ahead_only_where_the_reader_has_cpu_to_itself(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)  # the model holds every core
    assert read_ahead_depth("auto", cpu, remote_inputs=False) == 0
    assert read_ahead_depth("auto", cpu, remote_inputs=True) == 2  # network waits free the cores
    assert read_ahead_depth("auto", cuda, remote_inputs=False) == 2
    assert read_ahead_depth(3, cpu, remote_inputs=False) == 3  # an explicit depth is kept
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    cores = len(os.sched_getaffinity(0))
    assert read_ahead_depth("auto", cpu, remote_inputs=False) == (2 if cores > 1 else 0)
    # one-thread forwards on every core (the CPU default): the reader reads in line
    assert read_ahead_depth("auto", cpu, remote_inputs=False, forwards=cores) == 0


def test_a_tile_gives_the_same_bytes_alone_or_in_a_full_batch(scene, predictor):
    optical, sar = scene
    tiles_o = np.stack([optical[:, i * 40 : i * 40 + 64, :64] for i in range(4)])
    tiles_s = np.stack([sar[:, i * 40 : i * 40 + 64, :64] for i in range(4)])
    full = predictor(tiles_o, tiles_s)
    for k in range(4):
        alone = predictor(tiles_o[k : k + 1], tiles_s[k : k + 1])
        assert alone.shape == (1, 64, 64)
        assert alone[0].tobytes() == full[k].tobytes()


def seam_ratio(prob: np.ndarray, grid: TileGrid) -> float:
    """Mean |∂p/∂x| across tile borders ÷ mean |∂p/∂x| everywhere (1 = no seam)."""
    gx = np.abs(np.diff(prob, axis=1))
    borders = {
        e - 1
        for j in range(grid.cols)
        for e in (j * grid.stride, j * grid.stride + grid.tile)
        if 0 < e < prob.shape[1]
    }
    return float(gx[:, sorted(borders)].mean() / gx.mean())


def test_blending_leaves_no_seams_at_tile_borders(scene, predictor):
    optical, sar = scene
    prob, *_, grid = stitch(optical, sar, predictor, block=128)
    assert seam_ratio(prob, grid) <= 1.05
    # stitched ≈ whole-image inference (the model zero-pads each tile; the blend hides it)
    assert np.abs(prob - whole_image(optical, sar)).max() < 1e-2
    # the metric does see seams: without overlap the borders stand out
    hard, *_, hard_grid = stitch(optical, sar, predictor, block=128, overlap=0)
    assert seam_ratio(hard, hard_grid) > 1.3


def test_nodata_strips_never_show_as_change(scene, predictor):
    optical, sar = scene
    valid = np.ones((H, W), bool)
    valid[:, 100:140] = False  # a SAR border strip
    valid[250:, :] = False  # an optical nodata band at the bottom
    prob, mask, valid_out, _, _ = stitch(
        optical, sar, predictor, block=128, valid=valid, threshold=0.3
    )
    assert (valid_out == valid).all()
    assert np.isnan(prob[~valid]).all() and not np.isnan(prob[valid]).any()
    assert (mask[~valid] == 255).all()
    assert set(np.unique(mask[valid])) <= {0, 1} and (mask[valid] == 1).any()


def test_tiles_without_valid_pixels_are_skipped(scene, predictor):
    optical, sar = scene
    valid = np.zeros((H, W), bool)
    valid[:64, :64] = True  # only the first tile (and its overlapping neighbours) see valid pixels
    *_, runs, grid = stitch(optical, sar, predictor, block=512, valid=valid)
    assert runs == 4  # tiles (0,0), (0,1), (1,0), (1,1)
    prob, mask, valid_out, runs, _ = stitch(
        optical, sar, predictor, block=512, valid=np.zeros((H, W), bool)
    )
    assert runs == 0 and np.isnan(prob).all() and (mask == 255).all() and (valid_out == 0).all()


def test_min_valid_fraction_skips_sparse_tiles(scene, predictor):
    optical, sar = scene
    valid = np.ones((H, W), bool)
    valid[:, 250:] = False
    valid[0, 400] = True  # a lone valid pixel in an otherwise empty tile
    *_, all_runs, _ = stitch(optical, sar, predictor, block=512, valid=valid)
    prob, *_, runs, _ = stitch(
        optical, sar, predictor, block=512, valid=valid, min_valid_fraction=0.1
    )
    assert runs < all_runs
    assert np.isnan(prob[0, 400])  # no tile ran for it: nodata, not a guess


@pytest.mark.parametrize(("h", "w"), [(20, 30), (64, 64), (65, 130)])
def test_small_and_odd_sizes_match_whole_image_inference(predictor, h, w):
    optical, sar = smooth_scene(h, w, seed=3)
    prob, mask, valid_out, *_ = stitch(optical, sar, predictor, block=64)
    assert prob.shape == (h, w) and (valid_out == 1).all()
    if h <= 64 and w <= 64:  # one padded tile: zero padding is exactly what the model does itself
        assert np.abs(prob - whole_image(optical, sar)).max() < 1e-6


def test_a_failing_reader_raises_in_the_caller(predictor):
    grid = TileGrid(height=128, width=128, tile=64, overlap=16)

    def broken(ext: PixelBox):
        raise InputError("s3://bucket/optical.tif", "connection reset")

    with pytest.raises(InputError, match="connection reset"):
        predict_block(grid, PixelBox(0, 128, 0, 128), broken, predictor, 4)


def stitch_shared(
    optical, sar, predictor, block, share_dir, order=None, workers=1, tile=64, forwards=1
):
    """Like `stitch`, with blocks owning their tiles and sharing the straddling ones."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.engine.tile_share import TileShare

    h, w = optical.shape[-2:]
    grid = TileGrid(height=h, width=w, tile=tile, overlap=16)
    share = TileShare(str(share_dir), grid, block)
    blocks = plan_blocks(grid, block)
    blocks = [blocks[k] for k in order] if order is not None else blocks
    prob = np.full((h, w), -1.0, np.float32)

    def one(b):
        read = array_reader(optical, sar)
        return b, predict_block(grid, b.core, read, predictor, 4, share=share, forwards=forwards)

    with ThreadPoolExecutor(workers) as ex:
        outs = list(ex.map(one, blocks))
    for b, out in outs:
        prob[b.y0 : b.y1, b.x0 : b.x1] = out.probability
    return prob, sum(o.tiles_run for _, o in outs), sum(o.tiles_shared for _, o in outs), grid


@pytest.mark.parametrize("block", [64, 128, 200])
def test_no_tile_runs_twice_and_the_bytes_do_not_change(scene, predictor, block, tmp_path):
    optical, sar = scene
    ref, _, _, runs_alone, grid = stitch(optical, sar, predictor, block=block)
    assert runs_alone > grid.count  # without a share, straddling tiles run in every block
    prob, runs, shared, _ = stitch_shared(optical, sar, predictor, block, tmp_path)
    assert runs == grid.count and shared == runs_alone - grid.count
    assert prob.tobytes() == ref.tobytes()


def test_two_threads_wait_for_the_owner_instead_of_running_its_tiles(scene, predictor, tmp_path):
    optical, sar = scene
    ref, *_, grid = stitch(optical, sar, predictor, block=128)
    prob, runs, _, _ = stitch_shared(optical, sar, predictor, 128, tmp_path, workers=2)
    assert runs == grid.count
    assert prob.tobytes() == ref.tobytes()


def test_a_block_whose_neighbours_never_ran_runs_their_tiles_itself(scene, predictor, tmp_path):
    optical, sar = scene
    ref, *_ = stitch(optical, sar, predictor, block=128)
    # last block first: its owners have written nothing yet (another process, or resumed)
    n = len(plan_blocks(TileGrid(height=H, width=W, tile=64, overlap=16), 128))
    prob, runs, _, grid = stitch_shared(
        optical, sar, predictor, 128, tmp_path, order=list(range(n))[::-1]
    )
    assert runs > grid.count
    assert prob.tobytes() == ref.tobytes()
