"""The real-data evaluation's whole-scene prediction, with and without flip/rotation averaging."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from eval.real_eval import fit_threshold, predict_scene


class PointwiseModel(torch.nn.Module):
    """Change where optical band 0 exceeds 0.5: every view, mapped back, must give the same mask."""

    config = SimpleNamespace(bands=SimpleNamespace(optical_channels=3, sar_channels=3))

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        change = 8 * (optical[:, 0] - 0.5) + 0 * sar[:, 0]
        return torch.stack([torch.zeros_like(change), change], dim=1)


def test_eight_view_averaging_maps_every_view_back_onto_the_scene():
    rng = np.random.default_rng(0)
    h, w = 40, 72  # not square: a rotation that is not undone would not even fit
    arr = {
        "optical": rng.random((3, h, w), dtype=np.float32),
        "sar": rng.random((3, h, w), dtype=np.float32),
    }
    cpu = torch.device("cpu")
    truth = (arr["optical"][0] >= 0.5).astype(np.uint8)
    assert 0.3 < truth.mean() < 0.7
    assert (predict_scene(PointwiseModel(), arr, cpu, None) == truth).all()
    assert (predict_scene(PointwiseModel(), arr, cpu, None, tta=True) == truth).all()


def test_the_threshold_is_fitted_on_the_training_strip_only():
    rng = np.random.default_rng(1)
    prob = rng.random((50, 60)).astype(np.float32)
    train = np.zeros((50, 60), bool)
    train[:20] = True
    truth = (prob >= 0.6).astype(np.uint8)
    label = np.where(train, truth, 1 - truth)  # the test part says the opposite: never consulted
    assert fit_threshold(prob, {"label": label, "train": train}) == 0.6
