"""Layers of the Mean Teacher ConvLarge network."""

from tensorflow_mean_teacher.layers.input_stage import (
    InputStage,
    flip_images,
    normalize_per_image,
    translate_images,
)
from tensorflow_mean_teacher.layers.random import Dropout, ReplicaSeedGenerator
from tensorflow_mean_teacher.layers.weight_norm import (
    WeightNormConv2D,
    WeightNormDense,
    leaky_relu,
)

__all__ = [
    "Dropout",
    "InputStage",
    "ReplicaSeedGenerator",
    "WeightNormConv2D",
    "WeightNormDense",
    "flip_images",
    "leaky_relu",
    "normalize_per_image",
    "translate_images",
]
