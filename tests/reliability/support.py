"""Inputs and checks shared by the reliability tests: small GeoTIFF pairs, the real CLI, fingerprints."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flows.cli import main

REPO = Path(__file__).resolve().parents[2]
SMALL = {
    "tiling.tile": 64,
    "tiling.overlap": 16,
    "inference.batch_size": 8,
    "inference.device": "cpu",
    "products.threshold": 0.45,
}
SMALL_FLAGS = ["--tile", "64", "--overlap", "16", "--batch-size", "8", "--threshold", "0.45"]
PRODUCTS = ("change_prob.tif", "change_mask.tif", "change.geojson", "quicklook.png", "item.json")
COMPARED = ("change_prob.tif", "change_mask.tif", "change.geojson")


def write_raster(
    path, arr: np.ndarray, crs: str | None = "EPSG:32633", transform=None, **extra
) -> str:
    """A tiled GeoTIFF of `arr` (bands×H×W) on a 10 m UTM grid (or without CRS)."""
    import rasterio
    from affine import Affine

    transform = transform or Affine(10.0, 0, 500_000.0, 0, -10.0, 4_600_000.0)
    profile = dict(
        driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=arr.shape[0],
        dtype=arr.dtype.name, transform=transform, tiled=True, blockxsize=64, blockysize=64,
    )  # fmt: skip
    if crs is not None:
        profile["crs"] = crs
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
    return str(path)


def pair_arrays(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Optical uint16 ×3 (reflectance ×10⁴) and SAR σ⁰ linear float32 with a dark (water) patch."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    refl = 0.15 + 0.05 * np.sin(y / 23.0) * np.cos(x / 31.0)
    optical = np.stack([refl + 0.01 * rng.standard_normal((h, w)) for _ in range(3)])
    optical = np.clip(optical * 10_000, 1, 65_535).astype(np.uint16)
    sigma = 0.1 * rng.gamma(4.0, 0.25, (h, w))
    sigma[(abs(y - h * 0.5) < h * 0.2) & (abs(x - w * 0.4) < w * 0.25)] *= 0.01
    return optical, sigma[None].astype(np.float32)


@dataclass(frozen=True)
class Pair:
    optical: str
    sar: str


def write_pair(directory, h: int = 96, w: int = 128, seed: int = 0, **kw) -> Pair:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    optical, sar = pair_arrays(h, w, seed)
    return Pair(
        write_raster(d / "optical.tif", optical, **kw), write_raster(d / "sar.tif", sar, **kw)
    )


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def interactive_sigint() -> None:
    """Ctrl-C's default disposition in the child, as in a terminal. A suite started in the
    background (`make test &`, nohup, some CI runners) passes SIGINT ignored to its children, and
    Python then rightly leaves it ignored (the POSIX rule for background jobs): the run under test
    would never see the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 300):
    """The real `m2cd` console script in a subprocess (what a user or cron job runs)."""
    exe = Path(sys.executable).parent / "m2cd"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
    return subprocess.run(
        cmd + args,
        cwd=REPO,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=interactive_sigint,
    )


def run_main(capsys, args: list[str]) -> tuple[int, str, str]:
    """`flows.cli.main` in-process (the console script's entry point, ~20 s of imports cheaper per
    case than a subprocess on the shared 2 cores): exit code, stdout, stderr."""
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_error_line(rc: int, stderr: str, *needles: str) -> str:
    """The one `error: ` line of a run that exited 2 without a traceback; it holds each needle."""
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def detect_args(pair: Pair, out, *more: str) -> list[str]:
    return ["detect", pair.optical, pair.sar, "--out", str(out), "--model", "tiny", "--no-progress",
            "--device", "cpu", *SMALL_FLAGS, *more]  # fmt: skip


def fingerprint(out: Path) -> dict[str, str]:
    """SHA-256 of the raster/vector products and of the Zarr arrays' decoded bytes."""
    import zarr

    digests = {
        name: hashlib.sha256((Path(out) / name).read_bytes()).hexdigest() for name in COMPARED
    }
    group = zarr.open_group(str(Path(out) / "change.zarr"), mode="r")
    for name in ("probability", "mask", "valid"):
        digests[name] = hashlib.sha256(np.asarray(group[name][...]).tobytes()).hexdigest()
    return digests


def published(out: Path) -> list[str]:
    """Products (and the run manifest) visible in `out`: what a reader would pick up."""
    out = Path(out)
    return sorted(n for n in (*PRODUCTS, "change.zarr", "run.json") if (out / n).exists())


def request(pair: Pair, out, block: int = 64, **overrides):
    """A DetectRequest with the small config and the seeded `tiny` model."""
    from pipeline.config import load_detect_config
    from pipeline.engine.request import DetectRequest

    cfg = load_detect_config("default", {**SMALL, "tiling.block": block, **overrides})
    return DetectRequest(optical=pair.optical, sar=pair.sar, out=str(out), model="tiny", config=cfg)


def run_block_noting(plan, block_id: int, notes: str, pause: float = 0.0):
    """`run_block` that leaves a note per finished batch (`<block>-<pid>`), pausing after each, so
    a test can kill the process while the block is half done. The pause changes no pixel."""
    import time

    from pipeline.engine.block import run_block

    def on_tiles(n: int) -> None:
        note = Path(notes) / f"{block_id}-{os.getpid()}"
        with open(note, "a") as f:
            f.write(f"{n}\n")
        time.sleep(pause)

    return run_block(plan, block_id, on_tiles=on_tiles)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateWeed:
    """A seaweedfs server of one test, which the test may kill and restart (same ports, same data).

    Every port is set explicitly so it never collides with the session's server.
    """

    ACCESS_KEY, SECRET_KEY = "m2cdfaultkey", "m2cd-fault-secret-77a1"

    def __init__(self, root: Path):
        from tests.fixtures.s3 import _weed_binary

        self.weed = _weed_binary()
        self.root = Path(root)
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in ("s3", "master", "filer", "volume", "admin")}
        self.grpc = {name: free_port() for name in ("s3", "master", "filer", "volume", "admin")}
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> None:
        from tests.fixtures.s3 import S3Server, _wait_bucket_ready, _wait_healthy

        cmd = [self.weed, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", "-webdav=false", "-admin.ui=false",
               "-master.telemetry=false", "-s3.port.iceberg=0"]  # fmt: skip
        for name in self.ports:
            cmd += [f"-{name}.port={self.ports[name]}", f"-{name}.port.grpc={self.grpc[name]}"]
        env = {**os.environ, **self.env()}
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )
        _wait_healthy(self.proc, self.endpoint, self.root / "weed.log")
        _wait_bucket_ready(S3Server(self.endpoint, self.ACCESS_KEY, self.SECRET_KEY))

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-request, as in a crash or a network cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(
            key=self.ACCESS_KEY, secret=self.SECRET_KEY, endpoint_url=self.endpoint,
            use_listings_cache=False, skip_instance_cache=True,
        )  # fmt: skip
