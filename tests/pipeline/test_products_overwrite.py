"""Every product name is guarded: none is replaced in OUT without --overwrite."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_detect_config
from pipeline.engine.plan import plan_run
from pipeline.engine.request import DetectRequest
from pipeline.errors import OutputExistsError
from pipeline.products import PRODUCT_FILES
from tests.pipeline.engine.support import write_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return write_pair(tmp_path_factory.mktemp("pair"), 64, 96)


@pytest.mark.parametrize("name", sorted(PRODUCT_FILES.values()))
def test_an_existing_product_is_not_replaced_without_overwrite(
    pair: tuple[str, str], tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stray = out / name
    if name.endswith(".zarr"):
        stray.mkdir()
    else:
        stray.write_bytes(b"someone else's file")
    cfg = load_detect_config("default", {"products.wgs84_geojson": True})
    request = DetectRequest(optical=pair[0], sar=pair[1], out=str(out), model="tiny", config=cfg)
    with pytest.raises(OutputExistsError, match=name.replace(".", r"\.")):
        plan_run(request)
    assert stray.exists()
    plan_run(request.model_copy(update={"overwrite": True}))  # asked for: allowed
