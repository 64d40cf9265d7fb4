"""PNG files of 8-bit RGB images, deflated by ISA-L: the quick-looks at the end of finalize.

Pillow's encoder (zlib level 1, adaptive filters) spent 0.22 s of a 4.4 s CPU detect at 2048²
writing the two quick-looks, on the run's serial tail (after the mask COG exists), and such a
constant is 7 % of the 3 s a GPU has for a Sentinel-2 tile (issue 12). The "Up" filter (each row
minus the one above: one numpy subtraction) and ISA-L's level-3 deflate wrote that run's
1123 × 3080 panel in 26 ms instead of 162 ms, 13 % larger (the synthetic scene's noise); on the
700 × 900 test scene's map and panel, 1.4 % and 1.3 % smaller. Level 1 was up to 28 % larger on
the panels for no time saved.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from isal import isal_zlib

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_NONE, _FILTER_UP = 0, 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray, level: int = 3) -> bytes:
    """The PNG bytes of an h×w×3 uint8 RGB image (8 bits a sample, no interlace)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"an h×w×3 uint8 image is needed, got {image.shape} {image.dtype}")
    h, w, _ = image.shape
    rows = np.ascontiguousarray(image).reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), np.uint8)
    filtered[:, 0] = _FILTER_UP
    filtered[0, 0] = _FILTER_NONE  # the first row has no row above it
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG defines it
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", isal_zlib.compress(filtered.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


def write_png(image: np.ndarray, dst: Path) -> Path:
    """Write `image` (h×w×3 uint8) to `dst` as PNG."""
    dst.write_bytes(encode_png(image))
    return dst
