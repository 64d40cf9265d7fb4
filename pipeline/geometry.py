"""The one pixel rectangle of the project: scene windows, tiles, blocks and strips are all PixelBox.

Half-open [y0, y1) × [x0, x1) in pixels of a scene grid, rows first (the order numpy slices in);
a box may reach outside the scene (edge tiles are read boundless). rasterio's `Window`
(col_off, row_off, width, height) appears only at the rasterio call, through `to_rasterio`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rasterio.windows import Window as RasterioWindow


@dataclass(frozen=True, order=True)
class PixelBox:
    """Rows [y0, y1) × columns [x0, x1); may reach outside the scene (never inverted)."""

    y0: int
    y1: int
    x0: int
    x1: int

    def __post_init__(self) -> None:
        if self.y1 < self.y0 or self.x1 < self.x0:
            raise ValueError(f"inverted box {self}: y1 < y0 or x1 < x0")

    @classmethod
    def full(cls, shape: tuple[int, int]) -> PixelBox:
        """The whole of a scene of `shape` (rows, columns)."""
        return cls(0, shape[0], 0, shape[1])

    @property
    def height(self) -> int:
        """Rows in the box."""
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        """Columns in the box."""
        return self.x1 - self.x0

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width): the shape of the array a read of this box returns."""
        return (self.height, self.width)

    @property
    def slices(self) -> tuple[slice, slice]:
        """Index an array laid out on the same grid: `a[..., *box.slices]`."""
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))

    def intersect(self, other: PixelBox) -> PixelBox | None:
        """The common part, or None when they do not overlap (an empty box is never returned)."""
        y0, x0 = max(self.y0, other.y0), max(self.x0, other.x0)
        y1, x1 = min(self.y1, other.y1), min(self.x1, other.x1)
        if y0 >= y1 or x0 >= x1:
            return None
        return PixelBox(y0, y1, x0, x1)

    def clip(self, shape: tuple[int, int]) -> PixelBox | None:
        """The part inside a scene of `shape`, or None when they do not intersect."""
        return self.intersect(PixelBox.full(shape))

    def relative_to(self, origin: PixelBox) -> PixelBox:
        """This box in the coordinates of an array whose [0, 0] is `origin`'s corner."""
        return PixelBox(
            self.y0 - origin.y0, self.y1 - origin.y0, self.x0 - origin.x0, self.x1 - origin.x0
        )

    def to_rasterio(self) -> RasterioWindow:
        """rasterio's (col_off, row_off, width, height) window of the same pixels."""
        return RasterioWindow(self.x0, self.y0, self.width, self.height)
