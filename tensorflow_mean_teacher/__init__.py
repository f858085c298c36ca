"""A faithful TensorFlow 2 / Keras 3 port of the CuriousAI Mean Teacher (Tarvainen & Valpola)."""

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "tensorflow_mean_teacher reproduces the TF1 code with TensorFlow ops and needs the Keras "
        f"TensorFlow backend. Received: KERAS_BACKEND={keras.backend.backend()!r}. "
        "Set KERAS_BACKEND=tensorflow."
    )

from tensorflow_mean_teacher.architecture import LAYER_NAMES, ConvLarge  # noqa: E402
from tensorflow_mean_teacher.hyperparams import HyperParams  # noqa: E402
from tensorflow_mean_teacher.model import MeanTeacher  # noqa: E402
from tensorflow_mean_teacher.optimizer import TF1Adam  # noqa: E402
from tensorflow_mean_teacher.schedules import MeanTeacherSchedule, scheduled_values  # noqa: E402

__all__ = [
    "LAYER_NAMES",
    "ConvLarge",
    "HyperParams",
    "MeanTeacher",
    "MeanTeacherSchedule",
    "TF1Adam",
    "scheduled_values",
]
