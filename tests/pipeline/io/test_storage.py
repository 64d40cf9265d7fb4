"""pipeline.io.storage: local and s3:// paths through the same functions (real seaweedfs server)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine

from pipeline.io import storage


def _tif(path, data):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=data.shape[0],
        width=data.shape[1],
        count=1,
        dtype=data.dtype,
        crs="EPSG:32633",
        transform=Affine(10, 0, 500000, 0, -10, 4700000),
        tiled=True,
        blockxsize=64,
        blockysize=64,
    ) as dst:
        dst.write(data, 1)


def test_paths_and_remote_detection(tmp_path):
    assert storage.is_remote("s3://b/k") and not storage.is_remote(tmp_path / "x")
    assert not storage.is_remote("file:///tmp/x")
    assert storage.join("s3://b/run/", "a", "/b.json") == "s3://b/run/a/b.json"
    assert storage.join(str(tmp_path), "a", "b.json") == str(tmp_path / "a" / "b.json")
    assert storage.gdal_path("s3://b/k/x.tif") == "/vsis3/b/k/x.tif"
    assert storage.gdal_options(tmp_path / "x.tif") == {}


def test_local_atomic_writes_move_remove(tmp_path):
    target = tmp_path / "deep" / "obj.json"
    storage.write_bytes_atomic(target, b"{}")
    storage.write_bytes_atomic(target, b'{"a": 1}')  # replaced whole
    assert storage.read_json(target) == {"a": 1}
    assert os.listdir(target.parent) == ["obj.json"]  # no temporary left behind
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    storage.put_file_atomic(src, tmp_path / "out" / "dst.bin")
    assert storage.read_bytes(tmp_path / "out" / "dst.bin") == b"payload"
    storage.move(tmp_path / "out", tmp_path / "moved")
    assert storage.exists(tmp_path / "moved" / "dst.bin") and not storage.exists(tmp_path / "out")
    storage.remove(tmp_path / "moved", recursive=True)
    storage.remove(tmp_path / "never-there")  # missing is not an error
    assert not storage.exists(tmp_path / "moved")


def test_gdal_options_for_plain_http_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("M2CD_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    opts = storage.gdal_options("s3://bucket/x.tif")
    assert opts["AWS_S3_ENDPOINT"] == "127.0.0.1:9000"
    assert opts["AWS_HTTPS"] == "NO" and opts["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert opts["AWS_REGION"] == "eu-west-1"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.org")
    assert storage.gdal_options("s3://bucket/x.tif")["AWS_HTTPS"] == "YES"


def test_redact_hides_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sup3r-s3cret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    assert storage.redact("key AKIAEXAMPLE secret sup3r-s3cret") == "key *** secret ***"


@pytest.mark.s3
def test_s3_objects_round_trip(s3_env, tmp_path):
    prefix = f"s3://{s3_env.bucket()}/run"
    fs = storage.fs_for(prefix)
    assert s3_env.secret_key not in repr(fs) + str(fs)
    storage.write_bytes_atomic(storage.join(prefix, "a.json"), b'{"ok": true}')
    assert storage.read_json(storage.join(prefix, "a.json")) == {"ok": True}
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "w.bin").write_bytes(b"weights")
    storage.put_file_atomic(tmp_path / "ckpt" / "w.bin", storage.join(prefix, "ckpt", "w.bin"))
    got = storage.download_dir(storage.join(prefix, "ckpt"), tmp_path / "cache" / "ckpt")
    assert (got / "w.bin").read_bytes() == b"weights"
    storage.move(storage.join(prefix, "ckpt"), storage.join(prefix, "final"))
    assert storage.exists(storage.join(prefix, "final", "w.bin"))
    assert not storage.exists(storage.join(prefix, "ckpt", "w.bin"))
    storage.remove(prefix, recursive=True)
    assert not storage.exists(storage.join(prefix, "a.json"))


@pytest.mark.s3
def test_s3_gdal_read_and_enforced_credentials(s3_env, tmp_path, monkeypatch):
    data = np.arange(128 * 96, dtype=np.float32).reshape(128, 96)
    _tif(tmp_path / "a.tif", data)
    uri = f"s3://{s3_env.bucket()}/x/a.tif"
    storage.put_file_atomic(tmp_path / "a.tif", uri)
    with storage.gdal_env(uri), rasterio.open(storage.gdal_path(uri)) as src:
        np.testing.assert_array_equal(src.read(1), data)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(PermissionError):  # the server checks the signature
        storage.read_bytes(uri)


@pytest.mark.s3
def test_s3_zarr_v3_store(s3_env):
    uri = f"s3://{s3_env.bucket()}/out/change.zarr"
    root = zarr.open_group(storage.zarr_store(uri), mode="w", zarr_format=3)
    arr = root.create_array("prob", shape=(64, 48), chunks=(32, 32), dtype="uint8", fill_value=255)
    arr[32:64, 0:32] = 7
    again = zarr.open_group(storage.zarr_store(uri, read_only=True), mode="r")
    got = again["prob"][:]
    assert (got[32:, :32] == 7).all() and (got[:32] == 255).all()
    assert storage.exists(storage.join(uri, "zarr.json"))


def test_gdal_block_cache_is_bounded_in_bytes_unless_the_user_set_it(monkeypatch, tmp_path):
    """A bare `GDAL_CACHEMAX=64` through rasterio means 64 *bytes* (every block decoded again on
    each access); reading a scene bounds the cache at 128 MiB, and a user's setting is kept."""
    from rasterio.env import get_gdal_config, set_gdal_config

    from pipeline.config import DetectConfig
    from pipeline.geometry import PixelBox
    from pipeline.io.scene import open_scene
    from pipeline.synth import synth_pair

    pair = synth_pair(tmp_path / "pair", size=(64, 64), seed=1)
    before = get_gdal_config("GDAL_CACHEMAX")
    try:
        set_gdal_config("GDAL_CACHEMAX", 1 << 30)
        monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
        scene = open_scene(str(pair.optical), "optical", DetectConfig())
        scene.read_window(PixelBox(0, 32, 0, 32))
        assert get_gdal_config("GDAL_CACHEMAX") == storage.GDAL_CACHE_BYTES == 128 * 1024 * 1024
        set_gdal_config("GDAL_CACHEMAX", 1 << 30)
        monkeypatch.setenv("GDAL_CACHEMAX", "512")
        storage.bound_gdal_cache()
        assert get_gdal_config("GDAL_CACHEMAX") == 1 << 30
    finally:
        set_gdal_config("GDAL_CACHEMAX", before)
