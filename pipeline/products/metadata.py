"""What the product writers need to know about a run, beyond the pixels in the Zarr store.

The engine fills a `ProductMetadata` from its plan; every product (COG georeferencing, polygon CRS,
STAC Item, quicklook) is derived from it, so the products agree with each other and with the input
grid. URIs are redacted on the way in, so no credential can reach a product.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from affine import Affine
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.products.model_info import ModelInfo

# Query parameters that carry secrets in presigned or token-bearing URLs.
_SECRET_QUERY = re.compile(
    r"(x-amz-(signature|credential|security-token)|signature|sig|token|access_?key|secret|password|key)=",
    re.IGNORECASE,
)


def redact_uri(uri: str) -> str:
    """Drop user:password@ and any secret-bearing query string from a URI (local paths pass through)."""
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive letter)
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "" if _SECRET_QUERY.search(parts.query) else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class ProductMetadata(BaseModel):
    """The grid and provenance of one run's products (JSON-serialisable, immutable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crs: str | None = Field(description="WKT of the scene CRS; None for plain images.")
    transform: tuple[float, float, float, float, float, float] = Field(
        description="Affine pixel→CRS transform in rasterio order (a, b, c, d, e, f)."
    )
    shape: tuple[int, int] = Field(description="(height, width) of the scene grid.")
    optical_uri: str
    sar_uri: str
    # What GDAL opens for each scene (a /vsi… path, or a VRT for band lists and STAC Items),
    # unredacted because a signed URL needs its signature: never serialised (exclude).
    optical_gdal_path: str | None = Field(default=None, exclude=True, repr=False)
    sar_gdal_path: str | None = Field(default=None, exclude=True, repr=False)
    optical_bands: list[int] | None = Field(
        default=None,
        description=(
            "1-based optical bands the model read (provenance: m2cd:optical_bands); None: the"
            " reader's default. The quick-looks choose their own natural-colour bands."
        ),
    )
    model_digest: str
    model_name: str
    config_hash: str
    run_key: str
    resampling: str | None = Field(
        default=None, description="How SAR was put on the optical grid; None when grids matched."
    )
    sar_units: str | None = Field(
        default=None, description="SAR units the run used (resolved when the config said auto)."
    )
    optical_datetime: datetime | None = Field(default=None, description="Pre-event acquisition.")
    sar_datetime: datetime | None = Field(default=None, description="Post-event acquisition.")
    model: ModelInfo | None = Field(
        default=None,
        description="The model, as the STAC Item's MLM fields describe it (model_info).",
    )
    created: datetime = Field(
        default_factory=lambda: datetime.now(UTC),
        description="Pass the plan's time so that a resumed run writes the same item.json.",
    )

    @field_validator("optical_uri", "sar_uri")
    @classmethod
    def _redacted(cls, v: str) -> str:
        return redact_uri(v)

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] <= 0 or v[1] <= 0:
            raise ValueError(f"shape must be positive (height, width), got {v}")
        return v

    @property
    def affine(self) -> Affine:
        """The grid's transform as an Affine, rebuilt from the six JSON-safe coefficients the
        metadata carries."""
        return Affine(*self.transform)

    def to_crs(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-corner (col, row) coordinates → scene CRS (x, y) through the grid's transform."""
        a, b, c, d, e, f = self.transform
        return a * cols + b * rows + c, d * cols + e * rows + f

    @property
    def georeferenced(self) -> bool:
        """True when the grid has a CRS; plain images keep pixel coordinates only."""
        return self.crs is not None
