"""The byte layout of a Cloud Optimized GeoTIFF: header, GDAL's structural metadata, IFDs, tiles.

`pipeline.products.cog_writer` encodes the tiles; this module only places bytes. The layout is the
one GDAL's COG driver writes and `rio cogeo validate --strict` checks: the IFDs of every level
first (full resolution, then the overviews from large to small), then the tile data from the
smallest overview to full resolution, each level in row-major order, so that a reader gets the
whole directory with one range request and a coarse view with the next.

The georeferencing, nodata, palette and GDAL metadata tags are not built here: GDAL writes them
into a 1×1 template GeoTIFF (`template_tags`), and they are copied as bytes. They depend only on
the CRS, transform, tags and band metadata, never on the raster size, and GDAL is the one
authority on how a WKT CRS becomes GeoKeys.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

# TIFF field types used here: size in bytes of one value.
ASCII, SHORT, LONG, DOUBLE, LONG8 = 2, 3, 4, 12, 16
_TYPE_SIZE = {1: 1, ASCII: 1, SHORT: 2, LONG: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4}
_TYPE_SIZE |= {DOUBLE: 8, LONG8: 8, 17: 8, 18: 8}

NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE = 254, 256, 257, 258
COMPRESSION, PHOTOMETRIC, SAMPLES_PER_PIXEL, PLANAR_CONFIG = 259, 262, 277, 284
PREDICTOR, COLOR_MAP, TILE_WIDTH, TILE_LENGTH = 317, 320, 322, 323
TILE_OFFSETS, TILE_BYTE_COUNTS, SAMPLE_FORMAT = 324, 325, 339
GDAL_METADATA, GDAL_NODATA = 42112, 42113
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)  # pixel scale, tiepoint, matrix, GeoKeys
COMPRESSION_DEFLATE = 8  # "Adobe deflate": zlib streams

# GDAL's marker of a COG, right after the TIFF header: readers (GDAL among them) learn from it
# that the IFDs come first, the tiles are in row-major order, and each tile's bytes are preceded
# by their size (uint32) and followed by a copy of their last 4 bytes (`frame_tile`), so a reader
# that fetched more than a tile knows where the next one ends. GDAL reports `LAYOUT=COG` only
# for this whole set of options.
_GHOST = (
    b"LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
    b"BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n"
)
GHOST_AREA = b"GDAL_STRUCTURAL_METADATA_SIZE=%06d bytes\n" % len(_GHOST) + _GHOST


@dataclass(frozen=True)
class Tag:
    """One IFD entry: its code, field type, value count and value bytes (little-endian)."""

    code: int
    type: int
    count: int
    data: bytes

    @classmethod
    def shorts(cls, code: int, *values: int) -> Tag:
        """SHORT (2-byte) values: sizes, sample formats and flags, all below 65 536."""
        return cls(code, SHORT, len(values), struct.pack(f"<{len(values)}H", *values))

    @classmethod
    def longs(cls, code: int, *values: int) -> Tag:
        """LONG (4-byte) values: image sizes that may pass 65 535 pixels, classic-TIFF offsets."""
        return cls(code, LONG, len(values), struct.pack(f"<{len(values)}I", *values))


@dataclass(frozen=True)
class Format:
    """Classic TIFF (offsets of 4 bytes, files under 4 GiB) or BigTIFF (offsets of 8 bytes)."""

    bigtiff: bool

    @property
    def header_size(self) -> int:
        """Bytes before the first IFD: 8 classic, 16 BigTIFF (the first IFD follows at once)."""
        return 16 if self.bigtiff else 8

    @property
    def inline(self) -> int:
        """Value bytes that fit in an IFD entry itself (4 classic, 8 BigTIFF); longer go after it."""
        return 8 if self.bigtiff else 4

    def header(self, first_ifd: int) -> bytes:
        """Byte order "II" (little-endian, what GDAL writes), magic 42/43 and the first IFD offset."""
        if self.bigtiff:
            return b"II" + struct.pack("<HHHQ", 43, 8, 0, first_ifd)
        return b"II" + struct.pack("<HI", 42, first_ifd)

    def offsets(self, code: int, values: Sequence[int]) -> Tag:
        """TileOffsets / TileByteCounts: LONG in a classic TIFF, LONG8 in a BigTIFF."""
        if self.bigtiff:
            return Tag(code, LONG8, len(values), struct.pack(f"<{len(values)}Q", *values))
        return Tag.longs(code, *values)

    def ifd_size(self, tags: Sequence[Tag]) -> int:
        """Bytes of an IFD with its out-of-line values (each padded to an even length)."""
        entry, head, tail = (20, 8, 8) if self.bigtiff else (12, 2, 4)
        extra = sum(_even(len(t.data)) for t in tags if len(t.data) > self.inline)
        return head + entry * len(tags) + tail + extra

    def ifd(self, tags: Sequence[Tag], at: int, next_ifd: int) -> bytes:
        """The IFD placed at file offset `at`, its out-of-line values right after its entries."""
        tags = sorted(tags, key=lambda t: t.code)
        entry, head, tail = (20, 8, 8) if self.bigtiff else (12, 2, 4)
        data_at = at + head + entry * len(tags) + tail
        entries, values = [], []
        for tag in tags:
            if len(tag.data) <= self.inline:
                value = tag.data.ljust(self.inline, b"\0")
            else:
                value = struct.pack("<Q" if self.bigtiff else "<I", data_at)
                values.append(tag.data.ljust(_even(len(tag.data)), b"\0"))
                data_at += _even(len(tag.data))
            count = struct.pack("<Q" if self.bigtiff else "<I", tag.count)
            entries.append(struct.pack("<HH", tag.code, tag.type) + count + value)
        count_bytes = struct.pack("<Q" if self.bigtiff else "<H", len(tags))
        next_bytes = struct.pack("<Q" if self.bigtiff else "<I", next_ifd)
        out = count_bytes + b"".join(entries) + next_bytes + b"".join(values)
        assert len(out) == self.ifd_size(tags)
        return out


LEADER, TRAILER = 4, 4  # bytes around each tile


def frame_tile(data: bytes) -> bytes:
    """A tile as the ghost area announces it: size leader, the bytes, the last 4 bytes again."""
    return struct.pack("<I", len(data)) + data + data[-TRAILER:]


def _even(n: int) -> int:
    return n + (n & 1)


def template_tags(tiff: bytes, codes: Sequence[int]) -> dict[int, Tag]:
    """The entries `codes` of the first IFD of a little-endian classic TIFF (GDAL's template)."""
    if tiff[:4] != b"II*\0":
        raise ValueError("the template is not a little-endian classic TIFF")
    (at,) = struct.unpack_from("<I", tiff, 4)
    (n,) = struct.unpack_from("<H", tiff, at)
    found: dict[int, Tag] = {}
    for i in range(n):
        code, typ, count = struct.unpack_from("<HHI", tiff, at + 2 + 12 * i)
        if code not in codes:
            continue
        size = _TYPE_SIZE[typ] * count
        start = at + 2 + 12 * i + 8
        if size > 4:
            (start,) = struct.unpack_from("<I", tiff, start)
        found[code] = Tag(code, typ, count, tiff[start : start + size])
    return found
