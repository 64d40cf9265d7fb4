"""Products on a real Sentinel-2 grid (Sen1Floods11 chip Spain_7370579, EPSG:4326, ~10 m).

Data: ../shared/data/real/sen1floods11_spain7370579_s1s2_georef (Bonafilia et al., CVPR-W 2020),
read in place. The hand-labelled water stands in for a change mask (the chip is single-date), so
the products can be checked against the real grid, real nodata and a real optical quicklook.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
from PIL import Image
from rio_cogeo.cogeo import cog_validate

from pipeline.config import ProductConfig
from pipeline.products import write_products
from tests.pipeline.products_support import metadata, write_store

CHIP = "sen1floods11_spain7370579_s1s2_georef"


def test_products_on_a_real_sentinel2_grid(real_data: Path, tmp_path: Path) -> None:
    s2 = real_data / CHIP / "Spain_7370579_S2Hand.tif"
    with rasterio.open(real_data / CHIP / "Spain_7370579_LabelHand.tif") as src:
        label = src.read(1)
    with rasterio.open(s2) as src:  # the optical grid (the label's pixel size differs at 1e-16)
        grid = (src.crs.to_wkt(), tuple(src.transform)[:6])
    mask = np.where(label < 0, 255, label).astype(np.uint8)  # -1 no data, 1 water
    prob = np.where(mask == 1, 0.9, 0.1).astype(np.float32)
    prob[mask == 255] = np.nan
    store = write_store(tmp_path / "change.zarr", grid, mask, prob, chunk=128)
    meta = metadata(
        grid,
        str(s2),
        shape=mask.shape,
        optical_bands=[4, 3, 2],
        optical_datetime=datetime(2019, 9, 18, tzinfo=UTC),
        sar_datetime=datetime(2019, 9, 17, tzinfo=UTC),
    )
    out = write_products(store, str(tmp_path / "out"), meta, ProductConfig(quicklook_max_size=256))

    for key in ("probability", "mask"):
        assert cog_validate(out[key], strict=True)[0]
        with rasterio.open(out[key]) as ds, rasterio.open(s2) as ref:
            assert (ds.crs, ds.transform, ds.shape) == (ref.crs, ref.transform, ref.shape)
    with rasterio.open(out["mask"]) as ds:
        np.testing.assert_array_equal(ds.read(1), mask)

    features = json.loads(Path(out["polygons"]).read_text())["features"]
    assert sum(f["properties"]["area_px"] for f in features) == (mask == 1).sum() == 70_035
    # ~9e-5° pixels at 38°N: about 7.86 m × 9.95 m each; geodesic polygon areas agree within 1 %.
    a = 8.983152841195215e-05
    lat = 38.128813 - 256 * a
    pixel_m2 = abs(
        pyproj.Geod(ellps="WGS84").polygon_area_perimeter(
            [0, a, a, 0], [lat, lat, lat + a, lat + a]
        )[0]
    )
    total_m2 = sum(f["properties"]["area_m2"] for f in features)
    assert total_m2 == pytest.approx(70_035 * pixel_m2, rel=0.01)

    item = json.loads(Path(out["item"]).read_text())
    np.testing.assert_allclose(
        item["bbox"], [-0.781894, 38.082819, -0.735900, 38.128813], atol=1e-5
    )
    # pre/post swapped on this chip: the interval still runs from the earlier to the later date
    assert item["properties"]["start_datetime"] == "2019-09-17T00:00:00Z"
    assert item["properties"]["end_datetime"] == "2019-09-18T00:00:00Z"
    with Image.open(out["quicklook"]) as img:
        rgb = np.asarray(img).astype(int)[:256]  # the map; the legend strip is below
    assert rgb.shape == (256, 256, 3)
    water = np.asarray(Image.fromarray(mask).resize((256, 256), Image.NEAREST)) == 1
    assert (rgb[water][:, 0] > rgb[water][:, 1]).mean() > 0.95
