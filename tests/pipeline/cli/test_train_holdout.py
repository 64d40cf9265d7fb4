"""The one-command fine-tune validates on held-out pixels of its own training windows."""

from pipeline.cli.train import hold_out


def test_the_last_fifth_of_the_longer_side_is_held_out():
    train, val = hold_out(["0:100,0:30", "0:40,10:210"], 0.2)
    assert train == ["0:80,0:30", "0:40,10:170"]
    assert val == ["80:100,0:30", "0:40,170:210"]


def test_a_tiny_window_still_keeps_pixels_on_both_sides():
    train, val = hold_out(["0:2,0:2"], 0.2)
    assert train == ["0:1,0:2"] and val == ["1:2,0:2"]
