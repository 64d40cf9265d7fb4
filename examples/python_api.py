"""The Python API end to end: a scene pair on disk → products (`detect`), then the same pair in
memory → a probability DataArray (`predict`), both with the shipped model.

    python examples/python_api.py [WORKDIR]

It makes its own small synthetic Sentinel-2-like / Sentinel-1-like pair (one file per band, as
they are delivered) so that it runs anywhere; point `optical` and `sar` at your own scenes instead.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import rioxarray

from pipeline import detect, predict
from pipeline.synth import synth_pair


def one_file_per_band(stack: Path, names: list[str]) -> list[str]:
    """Split a multi-band GeoTIFF into one file per band, named like the band."""
    paths = []
    with rasterio.open(stack) as src:
        profile = src.profile | {"count": 1}
        for i, name in enumerate(names, start=1):
            path = stack.with_name(f"{name}.tif")
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(i), 1)
            paths.append(str(path))
    return paths


def main(workdir: Path) -> None:
    pair = synth_pair(workdir / "scene", size=(256, 256), seed=1, sar_bands=2)
    optical = ",".join(one_file_per_band(pair.optical, ["B02", "B03", "B04", "B08"]))
    sar = ",".join(one_file_per_band(pair.sar, ["VV", "VH"]))

    # 1. Whole scene to products, exactly as `m2cd detect OPTICAL SAR --out OUT`.
    summary = detect(optical, sar, workdir / "out", tile=128, overlap=32, pre_date="2024-05-01")
    print(f"detect: {summary.changed_px} changed px of {summary.valid_px}; products:")
    for name, uri in summary.products.items():
        print(f"  {name}: {uri}")

    # 2. The same pair in memory: a probability DataArray on the optical grid, nothing written.
    opt = rioxarray.open_rasterio(pair.optical)  # bands B02 blue, B03 green, B04 red, B08 nir
    sar_arr = rioxarray.open_rasterio(pair.sar)
    prob = predict(opt, sar_arr, overrides={"tiling.tile": 128, "tiling.overlap": 32})
    mask = prob >= prob.attrs["threshold"]
    print(
        f"predict: {prob.shape} {prob.dtype}, CRS {prob.rio.crs}, "
        f"{int(mask.sum())} changed px at threshold {prob.attrs['threshold']}"
    )
    with rasterio.open(summary.products["change_prob.tif"]) as src:
        written = src.read(1)
    same = np.allclose(prob.values, written, equal_nan=True, atol=1e-6)
    print(f"predict equals detect's change_prob.tif: {same}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="m2cd-api-")))
