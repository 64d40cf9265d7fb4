"""Test-local inputs for the engine tests: numpy scenes read boundless, and a smooth model.

The smooth model follows the model contract (`model(optical, sar)` → N×2×H×W logits) but its
change probability is a smooth function of a small neighbourhood of the input, with zero padding
at the tile edge, so stitching artefacts (seams) would show if the blend did not remove them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.geometry import PixelBox


class SmoothModel(nn.Module):
    """Logit = scaled 7×7 box mean of (optical mean − SAR mean); zero-padded at the tile edge."""

    def __init__(self, gain: float = 4.0):
        super().__init__()
        self.gain = gain
        self.pool = nn.AvgPool2d(7, stride=1, padding=3, count_include_pad=True)

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        diff = optical.mean(1, keepdim=True) - sar.mean(1, keepdim=True)
        z = self.gain * self.pool(diff)
        return torch.cat([-z / 2, z / 2], dim=1)


def smooth_scene(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth optical (3 bands) and SAR (1 band) field with a little noise, float32."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.sin(y / 37.0) * np.cos(x / 53.0)
    optical = np.stack([base + 0.05 * rng.standard_normal((h, w)) for _ in range(3)]).astype(
        np.float32
    )
    sar = (0.3 * np.cos(y / 41.0 + x / 67.0))[None].astype(np.float32)
    return optical, sar


def array_reader(optical: np.ndarray, sar: np.ndarray, valid: np.ndarray | None = None):
    """A PairReader over in-memory arrays: boundless, out-of-scene pixels are not valid."""
    h, w = optical.shape[-2:]
    valid = np.ones((h, w), bool) if valid is None else valid

    def read(ext: PixelBox):
        out_o = np.zeros((optical.shape[0], ext.height, ext.width), np.float32)
        out_s = np.zeros((sar.shape[0], ext.height, ext.width), np.float32)
        out_v = np.zeros((ext.height, ext.width), bool)
        inner = ext.intersect(PixelBox(0, h, 0, w))
        if inner is not None:
            dst = (
                slice(inner.y0 - ext.y0, inner.y1 - ext.y0),
                slice(inner.x0 - ext.x0, inner.x1 - ext.x0),
            )
            src = (slice(inner.y0, inner.y1), slice(inner.x0, inner.x1))
            out_o[(slice(None), *dst)] = optical[(slice(None), *src)]
            out_s[(slice(None), *dst)] = sar[(slice(None), *src)]
            out_v[dst] = valid[src]
        return out_o, out_s, out_v

    return read


def write_pair(
    directory,
    h: int,
    w: int,
    crs: str | None = "EPSG:32633",
    transform=None,
    seed: int = 0,
    nodata_cols: tuple[int, int] | None = None,
) -> tuple[str, str]:
    """A small GeoTIFF pair on one grid: optical uint16 ×3 (reflectance ×10⁴), SAR σ⁰ linear float32.

    A rectangle of low backscatter (water) is the change. `nodata_cols` = [c0, c1) set to 0 in the
    SAR (zero fill, the usual SAR border) so those pixels are invalid.
    """
    import os

    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    if transform is None:
        transform = (
            Affine(10.0, 0, 500_000.0, 0, -10.0, 4_600_000.0)
            if crs != "EPSG:4326"
            else Affine(1e-4, 0, 12.0, 0, -1e-4, 42.0)
        )
    y, x = np.mgrid[0:h, 0:w]
    refl = 0.15 + 0.05 * np.sin(y / 23.0) * np.cos(x / 31.0)
    optical = np.stack([refl + 0.01 * rng.standard_normal((h, w)) for _ in range(3)])
    optical = np.clip(optical * 10_000, 1, 65_535).astype(np.uint16)
    sigma = 0.1 * rng.gamma(4.0, 0.25, (h, w))
    water = (abs(y - h * 0.5) < h * 0.2) & (abs(x - w * 0.4) < w * 0.25)
    sigma[water] *= 0.01
    sar = sigma[None].astype(np.float32)
    if nodata_cols is not None:
        sar[:, :, nodata_cols[0] : nodata_cols[1]] = 0
    paths = []
    for name, arr in (("optical.tif", optical), ("sar.tif", sar)):
        path = os.path.join(str(directory), name)
        profile = dict(
            driver="GTiff",
            height=h,
            width=w,
            count=arr.shape[0],
            dtype=arr.dtype.name,
            transform=transform,
            tiled=True,
            blockxsize=128,
            blockysize=128,
        )
        if crs is not None:
            profile["crs"] = crs
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr)
        paths.append(path)
    return paths[0], paths[1]
