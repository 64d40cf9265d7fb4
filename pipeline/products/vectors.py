"""The change polygons in the formats GIS users load: GeoJSON, GeoParquet and FlatGeobuf.

`PolygonWriter` (pipeline.products.polygons) spools every feature and replays them once, sorted,
in batches of `BATCH` features to each sink here, so every file holds the same features in the same
order and memory stays bounded by a batch (plus FlatGeobuf's spatial index: ~40 bytes a feature).

- GeoJSON: the spooled text as it is (scene CRS, legacy `crs` member; see polygons.py).
- GeoParquet 1.1 (pyarrow): WKB geometry, `geo` metadata with the CRS as PROJJSON (explicit `null`
  for plain images: an absent `crs` would mean OGC:CRS84), bbox, and counter-clockwise orientation.
- FlatGeobuf (GDAL through pyogrio): streamed from an Arrow record-batch reader, with its R-tree
  spatial index so QGIS and web viewers can fetch only what they show.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pyproj
import shapely

BATCH = 4096  # features a batch: ~2 MB of WKB for 100-vertex polygons
GEOPARQUET_VERSION = "1.1.0"


@dataclass(frozen=True)
class Feature:
    """One spooled feature: its 1-based id and its properties and geometry as GeoJSON text."""

    id: int
    properties: str
    geometry: str


@dataclass(frozen=True)
class Layout:
    """What every sink needs before the first feature: CRS, columns and extent."""

    crs_wkt: str | None  # None: plain image (pixel coordinates)
    crs_member: dict | None  # GeoJSON's legacy `crs` member (None for lon/lat and plain images)
    has_area: bool  # whether features carry `area_m2`
    bbox: tuple[float, float, float, float] | None  # of the written features; None when empty


class Sink(Protocol):
    """One vector format: every sink consumes the same feature batches, so the three files hold the
    same features in the same order."""

    def write_all(self, batches: Iterable[list[Feature]], layout: Layout) -> None:
        """Write every batch, then close the file; the batches are consumed once."""
        ...


class GeoJSONSink:
    """A FeatureCollection written text by text (byte-identical for any block size)."""

    def __init__(self, path: Path):
        self.path = path

    def write_all(self, batches: Iterable[list[Feature]], layout: Layout) -> None:
        """Stream the FeatureCollection text: features are never all held, and the bytes do not
        depend on the block size."""
        head: dict[str, Any] = {"type": "FeatureCollection"}
        if layout.crs_member is not None:
            head["crs"] = layout.crs_member
        with self.path.open("w", encoding="utf-8") as out:
            out.write(json.dumps(head)[:-1] + ', "features": [')
            for batch in batches:
                for f in batch:
                    sep = "\n" if f.id == 1 else ",\n"
                    out.write(
                        f'{sep}{{"type": "Feature", "id": {f.id}, "properties": {f.properties}, '
                        f'"geometry": {f.geometry}}}'
                    )
            out.write("\n]}\n")


def arrow_schema(layout: Layout, metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
    """The one column layout GeoParquet and FlatGeobuf share (area_m2 only when the CRS gives one)."""
    fields = [pa.field("id", pa.int64(), nullable=False), pa.field("area_px", pa.int64())]
    if layout.has_area:
        fields.append(pa.field("area_m2", pa.float64()))
    fields += [
        pa.field("mean_probability", pa.float64()),
        pa.field("max_probability", pa.float64()),
        pa.field("geometry", pa.binary()),
    ]
    return pa.schema(fields, metadata=metadata)


def to_record_batch(batch: list[Feature], schema: pa.Schema) -> pa.RecordBatch:
    """Properties as columns and the geometry as WKB (coordinates exactly those of the GeoJSON)."""
    props = [json.loads(f.properties) for f in batch]
    geoms = shapely.from_geojson([f.geometry for f in batch])
    columns: dict[str, Any] = {"id": [f.id for f in batch]}
    for name in schema.names:
        if name not in ("id", "geometry"):
            columns[name] = [p.get(name) for p in props]
    columns["geometry"] = shapely.to_wkb(geoms, output_dimension=2).tolist()
    return pa.record_batch([columns[n] for n in schema.names], schema=schema)


def geo_metadata(layout: Layout) -> dict[str, Any]:
    """GeoParquet 1.1 file metadata for the `geometry` column."""
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon", "MultiPolygon"],
        "crs": pyproj.CRS.from_wkt(layout.crs_wkt).to_json_dict() if layout.crs_wkt else None,
        "orientation": "counterclockwise",
    }
    if layout.crs_wkt and pyproj.CRS.from_wkt(layout.crs_wkt).is_geographic:
        column["edges"] = "planar"  # pixel edges: straight in the scene's lon/lat
    if layout.bbox is not None:
        column["bbox"] = list(layout.bbox)
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {"geometry": column},
    }


class GeoParquetSink:
    """GeoParquet written a row group per batch (pyarrow's ParquetWriter streams them)."""

    def __init__(self, path: Path):
        self.path = path

    def write_all(self, batches: Iterable[list[Feature]], layout: Layout) -> None:
        """Write row groups as batches arrive; an empty table still carries the schema and the `geo`
        metadata, so readers see the columns."""
        meta = {b"geo": json.dumps(geo_metadata(layout)).encode()}
        schema = arrow_schema(layout, meta)
        with pq.ParquetWriter(self.path, schema, compression="zstd") as writer:
            written = False
            for batch in batches:
                writer.write_batch(to_record_batch(batch, schema))
                written = True
            if not written:  # an empty table still has the schema and the geo metadata
                writer.write_table(schema.empty_table())


class FlatGeobufSink:
    """FlatGeobuf through GDAL, fed a stream of Arrow record batches."""

    def __init__(self, path: Path):
        self.path = path

    def write_all(self, batches: Iterable[list[Feature]], layout: Layout) -> None:
        """Stream the batches through pyogrio's Arrow writer: GDAL writes the file, never the whole
        table in memory."""
        schema = arrow_schema(layout).with_metadata(None)
        geometry = schema.field("geometry").with_metadata({"ARROW:extension:name": "geoarrow.wkb"})
        schema = schema.set(schema.get_field_index("geometry"), geometry)

        def stream() -> Iterator[pa.RecordBatch]:
            for batch in batches:
                yield to_record_batch(batch, schema)

        reader = pa.RecordBatchReader.from_batches(schema, stream())
        with warnings.catch_warnings():
            # plain images have no CRS by design: pyogrio warns about each one
            warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
            pyogrio.write_arrow(
                reader,
                self.path,
                layer="change",
                driver="FlatGeobuf",
                geometry_name="geometry",
                geometry_type="Unknown",  # Polygon and MultiPolygon side by side, as in GeoJSON
                crs=layout.crs_wkt,
            )
