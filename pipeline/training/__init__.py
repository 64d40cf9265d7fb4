"""Training and evaluation: scene-triple and CAU-Flood chips, augmentations, the recipe, the loop.

Pixels are read with the inference reader, normalisation and valid mask (``pipeline.io.scene``,
``pipeline.io.normalize``), so a trained model sees in production exactly what it saw in training.
"""

from pipeline.training.config import TrainConfig, load_train_config
from pipeline.training.evaluate import evaluate_arrays, evaluate_files
from pipeline.training.trainer import TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate_arrays",
    "evaluate_files",
    "load_train_config",
    "train",
]
