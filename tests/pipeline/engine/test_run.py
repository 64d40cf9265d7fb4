"""End-to-end runs with the `tiny` M²CD: georeferencing, byte-identity, resume, overwrite, S3.

The model is randomly initialised with a fixed seed (`--model tiny`): the products are not
meaningful, but they are deterministic, which is what these tests hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from pipeline.config import load_detect_config
from pipeline.engine.block import run_block
from pipeline.engine.finalize import finalize_run
from pipeline.engine.local import detect, with_products_pass
from pipeline.engine.plan import plan_run
from pipeline.engine.request import DetectRequest
from pipeline.errors import OutputExistsError
from tests.conftest import REPO
from tests.pipeline.engine.support import write_pair

SMALL = {
    "tiling.tile": 64,
    "tiling.overlap": 16,
    "inference.batch_size": 8,
    "products.threshold": 0.45,
}
COMPARED = ("change_prob.tif", "change_mask.tif", "change.geojson")


def request(optical, sar, out, overwrite=False, **overrides) -> DetectRequest:
    cfg = load_detect_config("default", {**SMALL, **overrides})
    return DetectRequest(
        optical=str(optical),
        sar=str(sar),
        out=str(out),
        model="tiny",
        config=cfg,
        overwrite=overwrite,
    )


def fingerprint(out: Path) -> dict[str, str]:
    """SHA-256 of the raster/vector products and of the Zarr arrays' decoded bytes."""
    import zarr

    digests = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in COMPARED}
    group = zarr.open_group(str(out / "change.zarr"), mode="r")
    for name in ("probability", "mask", "valid"):
        digests[name] = hashlib.sha256(np.asarray(group[name][...]).tobytes()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """180×300 (not a multiple of the tile) UTM pair with a SAR zero-fill strip."""
    d = tmp_path_factory.mktemp("pair")
    return write_pair(d, 180, 300, nodata_cols=(250, 270))


@pytest.fixture(scope="module")
def reference(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    summary = detect(request(*pair, out, **{"tiling.block": 512}), progress=False)
    return out, summary


@pytest.mark.parametrize(
    ("crs", "south_up"),
    [("EPSG:32633", False), ("EPSG:4326", False), (None, False), ("EPSG:32633", True)],
)
def test_products_sit_on_the_input_grid(tmp_path, crs, south_up):
    import rioxarray
    from affine import Affine

    transform = Affine(10.0, 0, 500_000.0, 0, 10.0, 4_600_000.0) if south_up else None
    optical, sar = write_pair(tmp_path, 70, 150, crs=crs, transform=transform)
    out = tmp_path / "out"
    summary = detect(request(optical, sar, out, **{"tiling.block": 128}), progress=False)
    with rasterio.open(optical) as src:
        crs_in, transform_in, shape_in = src.crs, src.transform, src.shape
    for name in ("change_prob.tif", "change_mask.tif"):
        with rasterio.open(out / name) as dst:
            assert dst.crs == crs_in
            assert dst.transform.almost_equals(transform_in, precision=1e-12)
            assert dst.shape == shape_in
    ds = xr.open_zarr(out / "change.zarr", consolidated=False)
    assert ds.probability.shape == shape_in and ds.probability.encoding["chunks"] == (70, 128)
    assert ds.attrs["spatial:shape"] == list(shape_in)
    assert ds.attrs["spatial:transform"] == list(transform_in)[:6]
    if crs is None:
        assert ds.probability.rio.crs is None and "x" not in ds.coords
        assert summary.changed_km2 is None and summary.crs is None
    else:
        src_da = rioxarray.open_rasterio(optical)
        assert ds.probability.rio.crs == crs_in and ds.attrs["proj:code"] == crs
        assert ds.rio.transform().almost_equals(transform_in, precision=1e-9)
        np.testing.assert_array_equal(ds.x.values, src_da.x.values)  # pixel centres
        np.testing.assert_array_equal(ds.y.values, src_da.y.values)
        assert summary.changed_km2 is not None
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["run_key"] == summary.run_key
    assert not (out / ".m2cd" / summary.run_key).exists()  # staging cleaned after publication


def test_changed_area_is_geodesic_for_lat_lon(tmp_path):
    from pyproj import Geod

    from pipeline.engine.output_grid import GridSpec, pixel_area_km2

    wkt = rasterio.crs.CRS.from_epsg(4326).to_wkt()
    grid = GridSpec(crs_wkt=wkt, transform=(0.001, 0, 12.0, 0, -0.001, 60.0), height=10, width=10)
    areas = pixel_area_km2(grid, range(0, 10))
    lons, lats = [12.0, 12.001, 12.001, 12.0], [60.0, 60.0, 59.999, 59.999]
    expected = abs(Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)[0]) / 1e6
    assert areas[0] == pytest.approx(expected, rel=1e-9)
    assert areas[9] > areas[0]  # further south, larger cells
    utm = GridSpec(
        crs_wkt=rasterio.crs.CRS.from_epsg(32633).to_wkt(),
        transform=(10.0, 0, 0, 0, -10.0, 0),
        height=1,
        width=1,
    )
    assert pixel_area_km2(utm, range(1))[0] == pytest.approx(1e-4)


def test_nodata_strip_is_nodata_in_every_product(reference):
    out, summary = reference
    with rasterio.open(out / "change_mask.tif") as src:
        mask = src.read(1)
        assert src.nodata == 255
    with rasterio.open(out / "change_prob.tif") as src:
        prob = src.read(1)
    assert (mask[:, 250:270] == 255).all() and np.isnan(prob[:, 250:270]).all()
    assert (mask[:, :250] != 255).all() and not np.isnan(prob[:, :250]).any()
    assert summary.valid_px == 180 * 280
    assert 0 < summary.changed_px < summary.valid_px


@pytest.mark.slow
def test_byte_identical_across_block_sizes_and_dask_workers(pair, reference, tmp_path):
    import dask
    import distributed  # before dask.config.set: see below

    from tests.fixtures.dask import two_worker_cluster

    ref_out, _ = reference
    expected = fingerprint(ref_out)
    for block in (128, 256):
        out = tmp_path / f"b{block}"
        detect(request(*pair, out, **{"tiling.block": block}), progress=False)
        assert fingerprint(out) == expected, f"block {block}"
    out = tmp_path / "dask"
    plan = plan_run(request(*pair, out, **{"tiling.block": 128}))
    # CPU kernels split reductions by intra-op thread count; every CPU forward of the engine runs
    # on one thread, so workers started with another count (here 3) give the same bits.
    environ = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    # distributed is imported above: imported inside the `set`, its defaults land under a key the
    # `set` created, which it deletes on exit, and a later xarray compute in this process failed
    # with KeyError 'distributed' (dask.config.get("distributed.comm.timeouts.connect"))
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
        two_worker_cluster(tmp_path / "dask-tmp") as (_, client),
    ):
        results = []

        def on_cluster(on_done):
            # as detect-scene does: the products pass in this process reads each block's
            # chunks as its worker finishes it
            futures = client.map(
                run_block, [plan] * len(plan.blocks), range(len(plan.blocks)), pure=False
            )
            for future in distributed.as_completed(futures):
                results.append(future.result())
                on_done(results[-1].block_id)

        written = with_products_pass(plan, on_cluster)
        pids = {
            r.name: json.loads(Path(plan.marker_uri(plan.blocks[r.block_id])).read_text())["pid"]
            for r in results
        }
    assert len(set(pids.values())) == 2  # both workers ran blocks
    markers = [json.loads(Path(plan.marker_uri(b)).read_text()) for b in plan.blocks]
    assert {m["torch_threads"] for m in markers} == {1}  # whatever the workers started with
    assert written is not None
    finalize_run(plan, written=written)
    assert fingerprint(out) == expected


def test_bytes_do_not_depend_on_threads_forwards_or_block_workers(pair, reference, tmp_path):
    import torch

    ref_out, _ = reference
    expected = fingerprint(ref_out)
    before = torch.get_num_threads()
    try:
        for threads, forwards, workers in ((2, 1, 1), (1, 3, 1), (2, "auto", 2)):
            torch.set_num_threads(threads)
            out = tmp_path / f"t{threads}-f{forwards}-w{workers}"
            overrides = {"tiling.block": 128, "inference.forwards": forwards}
            detect(request(*pair, out, **overrides), progress=False, workers=workers)
            assert fingerprint(out) == expected, (threads, forwards, workers)
            assert torch.get_num_threads() == threads  # the caller's count comes back
    finally:
        torch.set_num_threads(before)


def test_a_failed_products_pass_keeps_the_blocks_and_can_be_deferred(
    pair, reference, tmp_path, monkeypatch
):
    import pipeline.engine.local as local
    from pipeline.engine.block import pending_blocks

    def unreachable_store(plan, gate):
        raise OSError("staging store unreachable")

    monkeypatch.setattr(local, "write_run_products", unreachable_store)
    out = tmp_path / "out"
    plan = plan_run(request(*pair, out, **{"tiling.block": 128}))

    def blocks(on_done):
        local.run_blocks(plan, pending_blocks(plan), 1, lambda n: None, on_done)

    with pytest.raises(OSError, match="unreachable"):
        local.with_products_pass(plan, blocks)
    assert pending_blocks(plan) == []  # the blocks finished and are kept
    # detect-scene defers it: None, so its finalize task writes the products (with retries)
    assert local.with_products_pass(plan, blocks, defer_pass_error=True) is None
    monkeypatch.undo()
    finalize_run(plan)
    assert fingerprint(out) == fingerprint(reference[0])


def test_finished_run_is_a_no_op_and_overwrite_is_explicit(pair, reference, tmp_path, capsys):
    from flows.cli import main

    ref_out, ref_summary = reference
    out = tmp_path / "out"
    args = [
        "detect",
        *pair,
        "--out",
        str(out),
        "--model",
        "tiny",
        "--no-progress",
        "--block",
        "512",
    ]
    args += ["--tile", "64", "--overlap", "16", "--batch-size", "8", "--threshold", "0.45"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.index("plan ") < text.index("done in") and "change_prob.tif" in text
    assert fingerprint(out) == fingerprint(ref_out)
    manifest = (out / "run.json").read_bytes()
    assert main(args) == 0  # same run again: nothing is redone
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "run.json").read_bytes() == manifest
    # a different config into the same prefix is refused...
    assert main([*args, "--set", "products.min_mapping_unit_px=5"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(OutputExistsError, match="another run"):
        plan_run(request(*pair, out, **{"tiling.block": 512, "products.threshold": 0.6}))
    assert (out / "run.json").read_bytes() == manifest
    # ...unless asked to overwrite
    assert main([*args, "--set", "products.min_mapping_unit_px=5", "--overwrite"]) == 0
    new = json.loads((out / "run.json").read_text())
    assert new["run_key"] != ref_summary.run_key
    # stray products without a manifest are protected too
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "change_mask.tif").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="change_mask.tif"):
        plan_run(request(*pair, stray))


@pytest.mark.slow
def test_resume_after_kill_9_is_byte_identical(pair, tmp_path, monkeypatch):
    import pipeline.engine.blend as blend

    clean = tmp_path / "clean"
    detect(request(*pair, clean, **{"tiling.block": 64}), progress=False, workers=2)  # 2 threads
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "flows.cli", "detect", *pair, "--out", str(out), "--model", "tiny"]
    cmd += ["--tile", "64", "--overlap", "16", "--batch-size", "8", "--threshold", "0.45"]
    cmd += ["--block", "64", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers: list[Path] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        markers = list(out.glob(".m2cd/*/blocks/*.json"))
        if len(markers) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = {p.name for p in out.glob(".m2cd/*/blocks/*.json")}
    assert len(done) >= 3 and not (out / "run.json").exists()  # nothing published mid-run
    total = len(plan_run(request(*pair, out, **{"tiling.block": 64})).blocks)
    assert len(done) < total, "the run finished before it could be killed"

    calls = []
    real = blend.predict_block
    monkeypatch.setattr(
        blend,
        "predict_block",
        lambda grid, core, *a, **k: calls.append(core) or real(grid, core, *a, **k),
    )
    summary = detect(request(*pair, out, **{"tiling.block": 64}), progress=False)
    assert summary.blocks_resumed == len(done)
    assert len(calls) == total - len(done)  # finished blocks are not recomputed
    assert fingerprint(out) == fingerprint(clean)


@pytest.mark.s3
def test_s3_round_trip_with_an_s3_checkpoint(pair, reference, s3_env, tmp_path, monkeypatch):
    """Inputs, checkpoint and outputs on a real S3 server: same pixels as the local run."""
    import m2cd
    from pipeline.engine.models import build_random
    from pipeline.io import storage

    monkeypatch.setenv("M2CD_CACHE", str(tmp_path / "cache"))
    ref_out, _ = reference
    bucket = s3_env.bucket()
    fs = s3_env.filesystem()
    m2cd.save_checkpoint(build_random("tiny"), tmp_path / "ckpt")  # the weights of --model tiny
    for path in (
        *pair,
        tmp_path / "ckpt" / "weights.safetensors",
        tmp_path / "ckpt" / "checkpoint.json",
    ):
        fs.put_file(str(path), f"{bucket}/in/{Path(path).name}")
    optical, sar = (f"s3://{bucket}/in/{Path(p).name}" for p in pair)
    out = f"s3://{bucket}/runs/one"
    cfg = load_detect_config("default", {**SMALL, "tiling.block": 128})
    req = DetectRequest(
        optical=optical, sar=sar, out=out, checkpoint=f"s3://{bucket}/in", config=cfg
    )
    summary = detect(req, progress=False)
    assert summary.products["change_prob.tif"] == f"{out}/change_prob.tif"
    assert summary.model_digest == m2cd.checkpoint_digest(tmp_path / "ckpt")
    # the same weights as `--model tiny`, so the same digest (pipeline.engine.models.state_digest)
    assert summary.model_digest == reference[1].model_digest
    for name in ("change_prob.tif", "change_mask.tif"):  # the same COG, model tag included
        with (
            storage.gdal_env(out),
            rasterio.open(storage.gdal_path(f"{out}/{name}")) as got,
            rasterio.open(ref_out / name) as want,
        ):
            assert {**got.profile, "nodata": str(got.nodata)} == {
                **want.profile,
                "nodata": str(want.nodata),  # NaN for the probability: compare it as text
            }, name
            np.testing.assert_array_equal(got.read(), want.read())
            assert got.tags()["M2CD_MODEL_DIGEST"] == summary.model_digest
            assert got.tags() == want.tags()
    for name in (
        "change.geojson",
        "item.json",
        "quicklook.png",
        "run.json",
        "change.zarr/zarr.json",
    ):
        assert storage.exists(f"{out}/{name}"), name
    assert not fs.exists(f"{bucket}/runs/one/.m2cd/{summary.run_key}/plan.json")
    ds = xr.open_zarr(storage.zarr_store(f"{out}/change.zarr", read_only=True), consolidated=False)
    ref = xr.open_zarr(ref_out / "change.zarr", consolidated=False)
    np.testing.assert_array_equal(ds.probability.values, ref.probability.values)
    assert ds.probability.rio.crs == ref.probability.rio.crs
    assert detect(req, progress=False).already_finished  # a finished S3 run is a no-op


def test_real_pair_on_different_grids_lands_on_the_optical_grid(real_data, tmp_path):
    """OSCD Norcia (ESA Sentinel-2 L1C 4×10 m bands, pre) and Sentinel-1 VV (post) on another grid."""
    from pipeline.io.scene import stack_bands

    d = real_data / "oscd_norcia_s2pre_s1post_georef_nolabels"
    bands = [next(d.glob(f"S2_imgs_1_*_{b}.tif")) for b in ("B04", "B03", "B02")]
    optical = stack_bands([str(b) for b in bands], tmp_path / "s2_rgb.vrt")
    sar = str(d / "S1_t2_sentinel1_norcia_117_t2.tif")
    out = tmp_path / "out"
    summary = detect(request(optical, sar, out, **{"tiling.block": 256}), progress=False)
    with rasterio.open(bands[0]) as src, rasterio.open(out / "change_prob.tif") as dst:
        assert dst.crs == src.crs and dst.shape == src.shape
        assert dst.transform.almost_equals(src.transform, precision=1e-12)
    with rasterio.open(sar) as s1:
        assert s1.shape != summary.shape  # SAR really was on another grid
    plan = json.loads((out / "run.json").read_text())["plan"]
    assert plan["resampling"] == "bilinear"
    assert summary.valid_px > 0.5 * summary.shape[0] * summary.shape[1]


def test_finalize_refuses_until_every_block_is_done(pair, tmp_path):
    from pipeline.engine.block import pending_blocks
    from pipeline.engine.finalize import RunIncompleteError

    out = tmp_path / "out"
    plan = plan_run(request(*pair, out, **{"tiling.block": 128}))
    assert pending_blocks(plan) == list(range(len(plan.blocks)))
    run_block(plan, 0)
    assert run_block(plan, 0).resumed  # idempotent: a done block returns its marker at once
    with pytest.raises(RunIncompleteError, match=f"{len(plan.blocks) - 1} of {len(plan.blocks)}"):
        finalize_run(plan)
    assert not (out / "run.json").exists() and not (out / "change_prob.tif").exists()


def test_a_worker_reopens_the_pair_with_the_plans_sar_units_without_sampling(
    pair, reference, tmp_path, monkeypatch
):
    import pipeline.engine.pair as pairs
    import pipeline.io.scene as scene

    plan = plan_run(request(*pair, tmp_path / "out", **{"tiling.block": 512}))
    assert plan.sar_units in {"linear", "amplitude", "db"}
    monkeypatch.setattr(pairs, "_pairs", type(pairs._pairs)())  # a fresh worker process's cache

    def no_sampling(*args, **kwargs):
        raise AssertionError("SAR windows sampled again in a worker")

    monkeypatch.setattr(scene, "_sample_windows", no_sampling)
    run_block(plan, 0)
    summary = finalize_run(plan)
    assert fingerprint(tmp_path / "out") == fingerprint(reference[0])  # same units, same bits
    assert summary.changed_px == reference[1].changed_px
