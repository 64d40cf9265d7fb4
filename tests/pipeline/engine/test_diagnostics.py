"""`m2cd detect --diagnostics`: per-stage expert maps as an extra product (issue 11 point 8).

Runs use the `tiny` M²CD (random weights, fixed seed, 4 MoE stages of 4 experts): the maps mean
nothing, but they are deterministic, which is what the byte-identity tests hold.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rio_cogeo.cogeo import cog_validate

import m2cd
from m2cd.routing import record_routing
from pipeline.config import load_detect_config
from pipeline.engine.local import detect
from pipeline.engine.plan import plan_run
from pipeline.engine.predict import Predictor
from pipeline.engine.request import DetectRequest
from pipeline.engine.routing import RoutingRecorder, moe_layers, owned_span
from pipeline.engine.tiling import TileGrid, weight_window
from pipeline.errors import ConfigError
from tests.pipeline.engine.support import write_pair

SMALL = {"tiling.tile": 64, "tiling.overlap": 16, "products.threshold": 0.45}
ROUTING = ("routing_optical.tif", "routing_sar.tif")
# everything but the catalogue entry and the run record (they name the run key, which the
# config, so the diagnostics switch, is hashed into)
OTHER_PRODUCTS = (
    "change_prob.tif",
    "change_mask.tif",
    "change.geojson",
    "change.parquet",
    "change.fgb",
    "quicklook.png",
    "quicklook_panel.png",
)


def request(pair, out, **overrides) -> DetectRequest:
    cfg = load_detect_config("default", {**SMALL, **overrides})
    return DetectRequest(optical=pair[0], sar=pair[1], out=str(out), model="tiny", config=cfg)


def digests(out: Path, names: tuple[str, ...]) -> dict[str, str]:
    import zarr

    found = {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in names}
    if "change_prob.tif" in names:  # the store's arrays, decoded
        group = zarr.open_group(str(out / "change.zarr"), mode="r")
        for name in ("probability", "mask", "valid"):
            found[name] = hashlib.sha256(np.asarray(group[name][...]).tobytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """180×300 UTM pair (not a multiple of the tile) with a SAR zero-fill strip at columns 250-270."""
    return write_pair(tmp_path_factory.mktemp("pair"), 180, 300, nodata_cols=(250, 270))


@pytest.fixture(scope="module")
def runs(pair, tmp_path_factory):
    """The same scene without and with diagnostics (one block), and with them in 6 blocks on 2
    workers."""
    root = tmp_path_factory.mktemp("runs")
    plain = detect(request(pair, root / "plain", **{"tiling.block": 512}), progress=False)
    diag = detect(
        request(pair, root / "diag", **{"tiling.block": 512, "products.diagnostics": True}),
        progress=False,
    )
    blocks = detect(
        request(pair, root / "blocks", **{"tiling.block": 128, "products.diagnostics": True}),
        progress=False,
        workers=2,
    )
    return {"plain": plain, "diag": diag, "blocks": blocks}


def test_diagnostics_leave_every_other_product_byte_identical(runs):
    plain, diag = Path(runs["plain"].out), Path(runs["diag"].out)
    assert digests(diag, OTHER_PRODUCTS) == digests(plain, OTHER_PRODUCTS)
    assert not any((plain / name).exists() for name in ROUTING)
    assert runs["plain"].routing is None


def test_expert_maps_sit_on_the_scene_grid_with_one_band_per_stage(pair, runs):
    out = Path(runs["diag"].out)
    model = m2cd.build_model("tiny")
    stages, experts = len(moe_layers(model)), model.config.moe.experts
    with rasterio.open(pair[0]) as ref, rasterio.open(out / "change_mask.tif") as mask_ds:
        grid = (ref.crs, ref.transform, ref.shape)
        nodata = mask_ds.read(1) == 255
    assert nodata[:, 250:270].all() and nodata.sum() == 180 * 20  # the SAR strip, nothing else
    for name, stream in zip(ROUTING, ("optical", "sar"), strict=True):
        assert cog_validate(str(out / name), strict=True)[0]
        with rasterio.open(out / name) as ds:
            assert (ds.crs, ds.transform, ds.shape) == grid
            assert ds.count == stages == 4 and ds.dtypes == ("uint8",) * stages
            assert ds.nodata == 255
            assert ds.descriptions[0] == f"stage 1 {stream} top expert"
            assert ds.tags()["M2CD_EXPERTS"] == str(experts)
            maps = ds.read()
        assert (maps[:, nodata] == 255).all()
        assert (maps[:, ~nodata] < experts).all()
        assert len(np.unique(maps[0][~nodata])) > 1  # a map, not one constant


def test_shares_in_run_json_sum_to_one_and_count_the_maps_valid_pixels(runs):
    out = Path(runs["diag"].out)
    manifest = json.loads((out / "run.json").read_text())
    routing = manifest["summary"]["routing"]
    assert set(ROUTING) <= {Path(u).name for u in manifest["summary"]["products"].values()}
    for name, key in zip(ROUTING, ("optical_share", "sar_share"), strict=True):
        with rasterio.open(out / name) as ds:
            maps = ds.read()
        for band, row in zip(maps, routing, strict=True):
            valid = band[band != 255]
            expected = np.bincount(valid, minlength=4) / valid.size
            assert row[key] == pytest.approx(expected, abs=1e-4)
            assert sum(row[key]) == pytest.approx(1, abs=1e-3)
    assert all(0 <= row["modality_tv_distance"] <= 1 for row in routing)
    item = json.loads((out / "item.json").read_text())
    for key in ("routing_optical", "routing_sar"):
        asset = item["assets"][key]
        assert asset["roles"] == ["metadata", "diagnostics"]
        assert asset["href"] == f"./{key}.tif" and asset["file:size"] > 0


def test_expert_maps_are_byte_identical_across_block_sizes_and_workers(runs):
    one, six = Path(runs["diag"].out), Path(runs["blocks"].out)
    assert runs["blocks"].blocks == 6
    assert digests(six, ROUTING) == digests(one, ROUTING)
    assert runs["blocks"].routing == runs["diag"].routing


def test_the_shipped_models_expert_maps_on_a_scene_with_nodata(pair, tmp_path):
    """No model named: the shipped M²CD (MiT-b0: 4 MoE stages of 4 experts, top-2)."""
    from m2cd.pretrained import shipped_checkpoint

    cfg = load_detect_config(
        "default", {"tiling.tile": 128, "tiling.overlap": 32, "products.diagnostics": True}
    )
    req = DetectRequest(optical=pair[0], sar=pair[1], out=str(tmp_path / "o"), config=cfg)
    summary = detect(req, progress=False)
    meta = json.loads((shipped_checkpoint() / "checkpoint.json").read_text())
    experts = meta["model"]["moe"]["experts"]
    with rasterio.open(pair[0]) as ref, rasterio.open(Path(summary.out) / "routing_sar.tif") as ds:
        assert (ds.crs, ds.transform, ds.shape, ds.count) == (ref.crs, ref.transform, ref.shape, 4)
        maps = ds.read()
    assert (maps[:, :, 250:270] == 255).all()  # the SAR zero-fill strip
    assert (maps[:, :, :250] < experts).all() and (maps[:, :, 270:] < experts).all()
    assert summary.routing is not None and len(summary.routing) == 4
    for row in summary.routing:
        assert sum(row["optical_share"]) == pytest.approx(1, abs=1e-3)
        assert sum(row["sar_share"]) == pytest.approx(1, abs=1e-3)


def test_owned_spans_give_every_pixel_one_owner_with_the_largest_blend_weight():
    for length, tile, overlap in ((180, 64, 16), (300, 64, 16), (257, 64, 5), (64, 64, 16)):
        grid = TileGrid(height=length, width=length, tile=tile, overlap=overlap)
        owners = np.zeros(length, int)
        ramp = weight_window(tile, overlap)[tile // 2]
        for k in range(grid.rows):
            lo, hi = owned_span(k, grid.rows, length, grid.stride, overlap)
            owners[lo:hi] += 1
            start = k * grid.stride
            assert start <= lo and hi <= start + tile  # inside the tile
            for y in range(lo, hi):  # no neighbour weighs more at an owned pixel
                for n in (k - 1, k + 1):
                    if 0 <= n < grid.rows and n * grid.stride <= y < n * grid.stride + tile:
                        assert ramp[y - start] >= ramp[y - n * grid.stride] - 1e-6
        assert (owners == 1).all()


def _has_hooks(model: torch.nn.Module) -> bool:
    return any(m._forward_pre_hooks or m.router._forward_hooks for m in moe_layers(model))


def test_recording_changes_no_output_and_keeps_hooks_only_while_it_runs():
    torch.manual_seed(0)
    model = m2cd.build_model("tiny").eval()
    seen = []

    class Watching(Predictor):
        def __call__(self, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
            seen.append(_has_hooks(model))
            return super().__call__(optical, sar)

    plain = Predictor(model, batch_size=3, channels_last=False)
    recorder = RoutingRecorder(Watching(model, batch_size=3, channels_last=False))
    opt = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    sar = np.random.default_rng(1).standard_normal((2, 1, 64, 64)).astype(np.float32)
    expected = plain(opt, sar)
    assert not _has_hooks(model)
    np.testing.assert_array_equal(recorder(opt, sar), expected)
    assert seen == [True] and not _has_hooks(model)
    routing = recorder.last
    assert (
        routing is not None
        and len(routing.optical) == 4
        and routing.optical[0].shape
        == (
            2,
            16,
            16,
        )
    )
    # the recorded top-1 is one of the k experts the gating selected (the analysis side's record)
    padded = np.concatenate([opt, np.zeros((1, 3, 64, 64), np.float32)])
    padded_sar = np.concatenate([sar, np.zeros((1, 1, 64, 64), np.float32)])
    with torch.no_grad(), record_routing(model) as records:
        model(torch.from_numpy(padded), torch.from_numpy(padded_sar))
    for s, rec in enumerate(records):
        sel = rec.selected[0]  # [optical 3; SAR 3] × h × w × E
        for top, half in ((routing.optical[s], sel[:2]), (routing.sar[s], sel[3:5])):
            assert np.take_along_axis(half, top[..., None].astype(int), -1).all()


def test_with_tta_the_identity_view_is_recorded():
    torch.manual_seed(0)
    model = m2cd.build_model("tiny").eval()
    opt = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    sar = np.random.default_rng(1).standard_normal((2, 1, 64, 64)).astype(np.float32)
    maps = []
    for tta in (False, True):
        recorder = RoutingRecorder(Predictor(model, 2, channels_last=False, tta=tta))
        recorder(opt, sar)
        assert recorder.last is not None
        maps.append(recorder.last.optical + recorder.last.sar)
    for plain, tta in zip(*maps, strict=True):
        np.testing.assert_array_equal(plain, tta)


def test_a_plain_block_beside_a_recording_one_sees_no_routing():
    """Two threads share one cached model (as block threads do): only the recorder records."""
    torch.manual_seed(0)
    model = m2cd.build_model("tiny").eval()
    predictor = Predictor(model, batch_size=2, channels_last=False)
    recorder = RoutingRecorder(predictor)
    opt = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    sar = np.random.default_rng(1).standard_normal((2, 1, 64, 64)).astype(np.float32)
    errors: list[BaseException] = []

    def plain_forwards() -> None:
        try:
            for _ in range(5):
                predictor(opt[::-1].copy(), sar[::-1].copy())
        except BaseException as exc:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(exc)

    alone = recorder(opt, sar)
    first = recorder.last
    thread = threading.Thread(target=plain_forwards)
    thread.start()
    for _ in range(5):
        np.testing.assert_array_equal(recorder(opt, sar), alone)
        assert recorder.last is not None and first is not None
        now, then = recorder.last.optical + recorder.last.sar, first.optical + first.sar
        for a, b in zip(now, then, strict=True):
            np.testing.assert_array_equal(a, b)
    thread.join()
    assert not errors and not _has_hooks(model)


def test_diagnostics_with_a_model_without_moe_are_refused_before_anything_is_written(
    pair, tmp_path
):
    cfg = load_detect_config("default", {**SMALL, "products.diagnostics": True})
    req = DetectRequest(
        optical=pair[0], sar=pair[1], out=str(tmp_path / "o"), model="siam_mit_b0", config=cfg
    )
    with (
        pytest.warns(UserWarning, match="randomly initialised"),
        pytest.raises(ConfigError, match="products.diagnostics: .* has no MoE stages"),
    ):
        plan_run(req)
    assert not (tmp_path / "o").exists()


def test_detect_cli_diagnostics_flag_prints_the_shares(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import build_app
    from tests.reliability.support import detect_args
    from tests.reliability.support import write_pair as write_small_pair

    small = write_small_pair(tmp_path / "in", 64, 64)
    res = CliRunner().invoke(build_app(), [*detect_args(small, tmp_path / "out"), "--diagnostics"])
    assert res.exit_code == 0, res.output
    assert "diagnostics: top-1 MoE expert per stage" in res.output  # the plan
    assert "routing stage 4: optical e0" in res.output  # the summary
    assert (tmp_path / "out" / "routing_sar.tif").is_file()
