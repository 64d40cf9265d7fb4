"""Change polygons (mask == 1) vectorised block by block, equal to a whole-scene vectorisation.

Each Zarr chunk is labelled (4-connectivity, like `rasterio.features.shapes`) and vectorised in
*pixel* coordinates (a pure translation by the block offset), so vertices are exact integers and
parts that meet across a block border union without slivers. Components that touch no interior
border are final and are written at once; the others are merged at the end by union-find over the
labels found on both sides of each shared border, with their statistics summed. Memory holds one
block plus the open parts and border label vectors, never the scene.

Output (pipeline.products.vectors): GeoJSON, GeoParquet and FlatGeobuf in the scene CRS. RFC 7946 only allows WGS84 lon/lat; for other CRSs we keep the
native coordinates (what GIS users expect for analysis) and name the CRS in the legacy 2008 `crs`
member (`urn:ogc:def:crs:EPSG::<code>`, or the WKT when the CRS has no authority code), which GDAL,
QGIS and geopandas read. Plain images (no CRS) get pixel coordinates and no `crs` member.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyproj
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage
from shapely.affinity import affine_transform
from shapely.geometry import mapping, shape

from pipeline.errors import ConfigError
from pipeline.products.metadata import ProductMetadata
from pipeline.products.source import Block
from pipeline.products.vectors import BATCH, Feature, Layout, Sink

_FOUR = ndimage.generate_binary_structure(2, 1)
PROB_QUANTUM = 2**32  # probabilities are summed as exact integers of 2⁻³² (int64: 2 Gpx a polygon)


@dataclass
class Part:
    """A connected component (or the piece of one inside a block) with summable statistics."""

    geom: shapely.Geometry  # pixel coordinates of the scene
    count: int
    prob_sum: int  # in units of 1 / PROB_QUANTUM: integer sums do not depend on the block order
    prob_max: float

    @property
    def mean_probability(self) -> float:
        """The mean over the component's pixels, from the exact integer sum (the same whatever the
        block order)."""
        return self.prob_sum / PROB_QUANTUM / self.count


Emit = Callable[[Part], None]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, a: Any) -> Any:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def block_parts(block: Block) -> tuple[np.ndarray, dict[int, Part]]:
    """Label mask == 1 in one block; return the labels and one Part per label (pixel coords)."""
    changed = block.mask == 1
    labels, n = ndimage.label(changed, structure=_FOUR)
    if n == 0:
        return labels, {}
    labels = labels.astype(np.int32, copy=False)
    ids = labels[changed]  # only changed pixels carry a label: reduce over them alone
    prob = np.nan_to_num(block.probability[changed], nan=0.0).astype(np.float64)
    counts = np.bincount(ids, minlength=n + 1)
    sums = np.zeros(n + 1, np.int64)
    np.add.at(sums, ids, np.rint(prob * PROB_QUANTUM).astype(np.int64))
    maxima = np.full(n + 1, -np.inf)
    np.maximum.at(maxima, ids, prob)
    geoms: dict[int, list] = {}
    offset = Affine.translation(block.col_off, block.row_off)
    for geom, value in shapes(labels, mask=changed, connectivity=4, transform=offset):
        geoms.setdefault(int(value), []).append(shape(geom))
    parts = {
        k: Part(
            geom=g[0] if len(g) == 1 else shapely.union_all(g),
            count=int(counts[k]),
            prob_sum=int(sums[k]),
            prob_max=float(maxima[k]),
        )
        for k, g in geoms.items()
    }
    return labels, parts


@dataclass
class PolygonBuilder:
    """Feed blocks in any order; every final component goes to `emit` exactly once.

    A border between two blocks is keyed by its line and start (`("v", x, row0)` for a vertical
    one), the same key from both sides: the first block to arrive parks its label vector there,
    the second unions the labels that face each other and frees it. In row-major order only one
    block-row of border vectors is parked at a time.
    """

    shape: tuple[int, int]
    emit: Emit
    _open: dict[tuple[int, int, int], Part] = field(default_factory=dict, repr=False)
    _parked: dict[tuple, tuple[tuple[int, int], np.ndarray]] = field(
        default_factory=dict, repr=False
    )
    _uf: _UnionFind = field(default_factory=_UnionFind, repr=False)

    def add(self, block: Block, labelled: tuple[np.ndarray, dict[int, Part]] | None = None) -> None:
        """Add one block: components touching a border wait for the block across it, the rest are
        emitted now. `labelled` is the block's `block_parts` when the caller computed it already
        (on a thread pool: the labelling is most of the polygons' cost)."""
        labels, parts = labelled if labelled is not None else block_parts(block)
        h, w = block.shape
        r0, c0 = block.row_off, block.col_off
        height, width = self.shape
        borders = []  # (border key, this block's labels along it), interior borders only
        if r0 > 0:
            borders.append((("h", r0, c0), labels[0]))
        if r0 + h < height:
            borders.append((("h", r0 + h, c0), labels[-1]))
        if c0 > 0:
            borders.append((("v", c0, r0), labels[:, 0]))
        if c0 + w < width:
            borders.append((("v", c0 + w, r0), labels[:, -1]))
        touching: set[int] = set()
        for _, line in borders:
            touching.update(np.unique(line[line > 0]).tolist())
        for label in sorted(parts):
            if label in touching:
                self._open[(r0, c0, label)] = parts[label]
            else:
                self.emit(parts[label])
        for key, line in borders:
            self._meet(key, (r0, c0), line)

    def _meet(self, key: tuple, block: tuple[int, int], line: np.ndarray) -> None:
        other = self._parked.pop(key, None)
        if other is None:
            self._parked[key] = (block, line.copy())
            return
        other_block, other_line = other
        both = (line > 0) & (other_line > 0)
        for a, b in set(zip(line[both].tolist(), other_line[both].tolist(), strict=True)):
            self._uf.union((*block, a), (*other_block, b))

    def finish(self) -> None:
        """Emit the merged components that crossed block borders (deterministic order)."""
        groups: dict[Any, list[tuple[int, int, int]]] = {}
        for key in sorted(self._open):
            groups.setdefault(self._uf.find(key), []).append(key)
        for keys in groups.values():
            parts = [self._open[k] for k in keys]
            geom = parts[0].geom if len(parts) == 1 else shapely.union_all([p.geom for p in parts])
            self.emit(
                Part(
                    geom=geom,
                    count=sum(p.count for p in parts),
                    prob_sum=sum(p.prob_sum for p in parts),
                    prob_max=max(p.prob_max for p in parts),
                )
            )
        self._open.clear()
        self._parked.clear()
        self._uf = _UnionFind()


class AreaModel:
    """Area of a feature: pixel area for projected CRSs, geodesic for geographic, none without CRS."""

    def __init__(self, meta: ProductMetadata):
        self.affine = meta.affine
        self._pixel_m2: float | None = None
        self._geod: pyproj.Geod | None = None
        if meta.crs is not None:
            crs = pyproj.CRS.from_wkt(meta.crs)
            if crs.is_geographic:
                self._geod = crs.get_geod()
            else:
                unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
                self._pixel_m2 = abs(self.affine.determinant) * unit * unit

    @property
    def has_area(self) -> bool:
        """Whether features carry `area_m2`: never without a CRS, where a pixel has no ground size."""
        return self._pixel_m2 is not None or self._geod is not None

    def area_m2(self, count: int, geom_crs: shapely.Geometry) -> float | None:
        """Ground area of a component: pixel count times pixel area where the CRS is projected,
        geodesic on the ellipsoid where it is geographic (degrees have no constant area)."""
        if self._pixel_m2 is not None:
            return count * self._pixel_m2
        if self._geod is not None:
            return abs(self._geod.geometry_area_perimeter(geom_crs)[0])
        return None


def to_crs_coords(geom_px: shapely.Geometry, affine: Affine) -> shapely.Geometry:
    """Pixel (col, row) coordinates → scene CRS coordinates through the grid's transform."""
    a, b, c, d, e, f = affine[:6]
    return affine_transform(geom_px, [a, b, d, e, c, f])


def wgs84_transformer(meta: ProductMetadata) -> Callable[[np.ndarray, np.ndarray], tuple]:
    """(x, y) arrays in the scene CRS → (lon, lat) arrays, for the optional RFC 7946 export."""
    if meta.crs is None:
        raise ConfigError(
            "products.wgs84_geojson needs a georeferenced scene (this one has no CRS)"
        )
    to_wgs84 = pyproj.Transformer.from_crs(
        pyproj.CRS.from_wkt(meta.crs), pyproj.CRS.from_epsg(4326), always_xy=True
    )
    return lambda x, y: to_wgs84.transform(x, y)


def crs_member(meta: ProductMetadata) -> dict | None:
    """The legacy GeoJSON `crs` member, or None for WGS84 lon/lat and for plain images."""
    if meta.crs is None:
        return None
    crs = pyproj.CRS.from_wkt(meta.crs)
    authority = crs.to_authority()
    if authority == ("EPSG", "4326") or authority == ("OGC", "CRS84"):
        return None
    name = f"urn:ogc:def:crs:{authority[0]}::{authority[1]}" if authority else meta.crs
    return {"type": "name", "properties": {"name": name}}


def canonical(geom_px: shapely.Geometry) -> shapely.Geometry:
    """One geometry per pixel set, whatever the blocks: no collinear vertices, normalised order.

    Parts merged across a block border keep vertices on the border line; dropping them (simplify
    with tolerance 0) and normalising makes the output byte-identical for any block size.
    """
    return shapely.normalize(shapely.simplify(geom_px, 0))


class PolygonWriter:
    """Writes the features in a canonical order, to every sink, with bounded memory.

    Features are spooled to disk as they come (blocks finish in any order) and replayed sorted by
    their top-left pixel to each sink (GeoJSON, GeoParquet, FlatGeobuf: pipeline.products.vectors),
    so no file depends on the block size or worker count and all hold the same features. Every
    component counts in the totals (`changed_px`, `changed_m2`: the whole change), but only those
    of at least `min_mapping_unit_px` pixels are written as features.
    """

    def __init__(
        self,
        sinks: list[Sink],
        meta: ProductMetadata,
        min_mapping_unit_px: int = 0,
        wgs84: bool = False,
        spool_dir: Path | None = None,
    ):
        self.sinks = sinks
        self.spool_dir = spool_dir  # beside the outputs: the scratch space finalize checked
        self.areas = AreaModel(meta)
        self.affine = meta.affine
        self.min_mapping_unit_px = min_mapping_unit_px
        self.count = 0
        self.changed_px = 0
        self._areas: list[float] = []
        self._index: list[tuple[tuple, int, int]] = []  # (sort key, offset, length) in the spool
        self._bbox: tuple[float, float, float, float] | None = None
        self._spool: IO[bytes] | None = None
        self._to_wgs84 = wgs84_transformer(meta) if wgs84 else None
        self._crs_wkt = pyproj.CRS.from_epsg(4326).to_wkt() if wgs84 else meta.crs
        self._crs = None if wgs84 else crs_member(meta)

    @property
    def changed_m2(self) -> float:
        """Total area of the change (exactly rounded sum: independent of the order of blocks)."""
        return math.fsum(self._areas)

    def __enter__(self) -> PolygonWriter:
        self._spool = tempfile.TemporaryFile(dir=self.spool_dir)
        return self

    def feature(self, part: Part) -> dict[str, Any]:
        """Properties and geometry (scene CRS, RFC 7946 winding) of one final component."""
        geom_px = canonical(part.geom)
        geom = shapely.orient_polygons(to_crs_coords(geom_px, self.affine), exterior_cw=False)
        props: dict[str, Any] = {"area_px": part.count}
        area = self.areas.area_m2(part.count, geom)
        if area is not None:
            props["area_m2"] = round(area, 3)
        props["mean_probability"] = round(part.mean_probability, 6)
        props["max_probability"] = round(part.prob_max, 6)
        if self._to_wgs84 is not None:  # vertices only: pixel edges are far below curvature scale
            geom = shapely.orient_polygons(
                shapely.transform(geom, self._to_wgs84, interleaved=False), exterior_cw=False
            )
        return {"type": "Feature", "properties": props, "geometry": mapping(geom)}

    def write(self, part: Part) -> None:
        """Write one final component; components under the minimum mapping unit count towards the
        changed pixels but are not written as features."""
        assert self._spool is not None, "use PolygonWriter as a context manager"
        feat = self.feature(part)
        self.changed_px += part.count
        if "area_m2" in feat["properties"]:
            self._areas.append(feat["properties"]["area_m2"])
        if part.count < self.min_mapping_unit_px:
            return
        minx, miny, maxx, maxy = part.geom.bounds
        data = (
            json.dumps(feat["properties"]).encode() + b"\n" + json.dumps(feat["geometry"]).encode()
        )
        key = (miny, minx, maxy, maxx, part.count, hash_bytes(data))
        self._index.append((key, self._spool.tell(), len(data)))
        self._spool.write(data)
        self._grow_bbox(shapely.bounds(shape(feat["geometry"])).tolist())
        self.count += 1

    def _grow_bbox(self, b: list[float]) -> None:
        if self._bbox is None:
            self._bbox = (b[0], b[1], b[2], b[3])
        else:
            x0, y0, x1, y1 = self._bbox
            self._bbox = (min(x0, b[0]), min(y0, b[1]), max(x1, b[2]), max(y1, b[3]))

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._spool is None:
            return
        try:
            if exc_type is None:
                layout = Layout(self._crs_wkt, self._crs, self.areas.has_area, self._bbox)
                order = sorted(self._index)
                for sink in self.sinks:
                    sink.write_all(self._batches(order), layout)
        finally:
            self._spool.close()

    def _batches(self, order: list[tuple[tuple, int, int]]) -> Iterator[list[Feature]]:
        """The spooled features in `order`, `BATCH` at a time."""
        assert self._spool is not None
        batch: list[Feature] = []
        for n, (_, offset, length) in enumerate(order, start=1):
            self._spool.seek(offset)
            props, geometry = self._spool.read(length).decode().split("\n", 1)
            batch.append(Feature(n, props, geometry))
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def hash_bytes(data: bytes) -> str:
    """A tie-breaker for the sort key that keeps the spool index small."""
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()
