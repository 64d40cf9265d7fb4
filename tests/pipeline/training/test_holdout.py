"""The one-command fine-tune validates on held-out pixels of its own training windows, chosen so
that they hold change (else no threshold can be fitted)."""

import numpy as np
import rasterio

from pipeline.cli.train import held_out_windows
from pipeline.training.holdout import hold_out, label_change_share


def test_without_a_label_the_last_fifth_of_the_longer_side_is_held_out():
    train, val = hold_out([(0, 100, 0, 30), (0, 40, 10, 210)], 0.2)
    assert train == [(0, 80, 0, 30), (0, 40, 10, 170)]
    assert val == [(80, 100, 0, 30), (0, 40, 170, 210)]


def test_a_tiny_window_still_keeps_pixels_on_both_sides():
    train, val = hold_out([(0, 2, 0, 2)], 0.2)
    assert train == [(0, 1, 0, 2)] and val == [(1, 2, 0, 2)]


def _label(tmp_path, array):
    path = tmp_path / "label.tif"
    profile = {"driver": "GTiff", "width": array.shape[1], "height": array.shape[0], "count": 1}
    with rasterio.open(path, "w", dtype="uint8", **profile) as dst:
        dst.write(array, 1)
    return str(path)


def test_the_held_out_strip_holds_change_when_the_last_fifth_has_none(tmp_path):
    # Gloucester-2's case: change only in the first columns of a wide strip
    label = np.zeros((50, 200), np.uint8)
    label[10:40, 5:30] = 1
    path = _label(tmp_path, label)
    train, val = held_out_windows(path, ["0:50,0:200"], path)  # the label is its own image grid
    assert val == ["0:50,0:40"] and train == ["0:50,40:200"]


def test_the_strip_closest_to_the_windows_change_share_wins(tmp_path):
    label = (np.arange(100)[None, :] % 10 == 0).repeat(100, 0).astype(np.uint8)
    label[80:] = 0  # the first preference (last rows) holds no change: window share 0.08
    path = _label(tmp_path, label)
    share = label_change_share(path, [(0, 100, 0, 100)], path)
    assert share((0, 100, 0, 100)) == 0.08
    # first rows 0.10, last columns 0.08 (= the window's), first columns 0.08: the last columns
    # come first among the equals
    assert hold_out([(0, 100, 0, 100)], 0.2, share)[1] == [(0, 100, 80, 100)]


def test_a_window_without_change_keeps_the_first_preference(tmp_path):
    path = _label(tmp_path, np.zeros((40, 40), np.uint8))
    share = label_change_share(path, [(0, 40, 0, 40)], path)
    assert share((0, 40, 0, 40)) == 0.0
    assert hold_out([(0, 40, 0, 40)], 0.2, share)[1] == [(32, 40, 0, 40)]
