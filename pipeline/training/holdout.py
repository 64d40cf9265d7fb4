"""Which part of a labelled training window validates a one-command fine-tune.

`m2cd train --optical A --sar B --label L --train-window W` has no validation windows, yet the
decision threshold and the best checkpoint need labelled pixels the model does not train on
(fitted on training pixels the threshold stays near 0.5, which missed most of a real flood:
recall 0.23). A fixed "last 20 % of the longer side" failed on Gloucester-2: its strip's last
fifth holds no change at all, so no threshold could be fitted (validation F1 0 at every cut) and
the fine-tune kept 0.5 (F1 0.796 against the SAR threshold's 0.903). So each window offers four
edge strips of the same size, and the one whose change share is closest to the whole window's
validates: the threshold is then fitted on the same change prevalence the model trains on.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.io import storage
from pipeline.io.grid import GridInfo
from pipeline.io.sources import resolve_input
from pipeline.training.data import read_label
from pipeline.training.labels import IGNORE, file_values, label_encoding

HELD_OUT = 0.2  # of each training window: a fifth validates, four fifths train
Window = tuple[int, int, int, int]  # r0, r1, c0, c1 (pixel rows, then columns)
ChangeShare = Callable[[Window], float | None]  # share of change among labelled pixels, or None


def edge_splits(window: Window, fraction: float) -> list[tuple[Window, Window]]:
    """(train, val) pairs in order of preference: the last, then the first `fraction` of the
    longer side, then the same along the shorter side; every part keeps at least one pixel."""
    r0, r1, c0, c1 = window

    def along_rows() -> list[tuple[Window, Window]]:
        n = min(r1 - r0 - 1, max(1, round((r1 - r0) * fraction)))
        return [
            ((r0, r1 - n, c0, c1), (r1 - n, r1, c0, c1)),
            ((r0 + n, r1, c0, c1), (r0, r0 + n, c0, c1)),
        ]

    def along_cols() -> list[tuple[Window, Window]]:
        n = min(c1 - c0 - 1, max(1, round((c1 - c0) * fraction)))
        return [
            ((r0, r1, c0, c1 - n), (r0, r1, c1 - n, c1)),
            ((r0, r1, c0 + n, c1), (r0, r1, c0, c0 + n)),
        ]

    rows = along_rows() if r1 - r0 > 1 else []
    cols = along_cols() if c1 - c0 > 1 else []
    splits = rows + cols if r1 - r0 >= c1 - c0 else cols + rows
    if not splits:
        raise ValueError(f"window {window}: a 1×1 window cannot be split for validation")
    return splits


def hold_out(
    windows: list[Window], fraction: float, change_share: ChangeShare | None = None
) -> tuple[list[Window], list[Window]]:
    """Split each window into a training part and a held-out edge strip of `fraction` of it.

    Without `change_share` (no label to look at) the first preference is taken. With it, the
    strip whose change share is closest to the window's own wins among those holding any change;
    when none holds change the first preference is kept (the threshold then cannot be fitted,
    and the trainer says so).
    """
    train: list[Window] = []
    val: list[Window] = []
    for window in windows:
        splits = edge_splits(window, fraction)
        chosen = splits[0]
        whole = change_share(window) if change_share else None
        if change_share is not None and whole is not None:
            scored = []
            for order, (fit_part, val_part) in enumerate(splits):
                share = change_share(val_part)
                if share:
                    scored.append((abs(share - whole), order, (fit_part, val_part)))
            if scored:
                chosen = min(scored)[2]
        train.append(chosen[0])
        val.append(chosen[1])
    return train, val


def label_change_share(label_uri: str, windows: list[Window], optical_uri: str) -> ChangeShare:
    """Change share of any sub-window of `windows`, from the label read once over their bounding
    box on the optical image's grid, its encoding (0/1 with 255 ignore, or 0/255) decided once
    from the whole file as training decides it (pipeline.training.labels)."""
    import rasterio  # deferred: `m2cd --help` reaches this module through the train command

    with (
        storage.gdal_env(optical_uri),
        rasterio.open(resolve_input(optical_uri, "optical").gdal_path) as src,
    ):
        grid = GridInfo(src.crs, src.transform, (src.height, src.width))
    R0, C0 = min(w[0] for w in windows), min(w[2] for w in windows)
    box = (R0, max(w[1] for w in windows), C0, max(w[3] for w in windows))
    encoding = label_encoding(file_values(label_uri)[0], label_uri)
    label = read_label(label_uri, grid, box, encoding)

    def share(window: Window) -> float | None:
        r0, r1, c0, c1 = window
        part = label[r0 - R0 : r1 - R0, c0 - C0 : c1 - C0]
        labelled = int((part != IGNORE).sum())
        return float((part == 1).sum()) / labelled if labelled else None

    return share
