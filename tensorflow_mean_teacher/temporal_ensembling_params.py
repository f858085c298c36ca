"""`TemporalEnsemblingParams`: Laine & Aila's Temporal Ensembling settings, and their schedules.

The names and defaults are those of `config.py` in Laine & Aila's own code (smlaine2/tempens),
with its Temporal Ensembling presets (`unsup_weight_max` 30, `learning_rate_max` 0.003 on
CIFAR-10, 0.001 on SVHN: `PRESETS`). The schedules are functions of the *epoch*: one pass over
every training example, the last partial minibatch dropped, so an epoch has
`num_examples // minibatch_size` steps. Ramps are evaluated once per epoch, as the original
evaluates them in its epoch loop.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from tensorflow_mean_teacher.hyperparams import _coerce

# Per dataset, the preset of tempens' config.py for Temporal Ensembling (its "Individual run
# customizations" for network_type 'tempens').
PRESETS = {
    "cifar10": {"learning_rate_max": 0.003, "unsup_weight_max": 30.0},
    "svhn": {"learning_rate_max": 0.001, "unsup_weight_max": 30.0},
}
SCHEDULED = ("learning_rate", "adam_beta_1", "unsup_weight")


@dataclasses.dataclass(frozen=True)
class TemporalEnsemblingParams:
    """Temporal Ensembling's settings, under the names of tempens' `config.py`.

    Data (set from the training data; they define the epoch and the weight's M / N):
    `num_examples` N (every training example, labeled and unlabeled), `num_labels` M (the
    labeled ones), `minibatch_size`.
    Schedule (in epochs): `num_epochs`, `rampup_length`, `rampdown_length`.
    Optimizer: `learning_rate_max`, `adam_beta1`, `rampdown_beta1_target`, `adam_beta2`,
    `adam_epsilon`. Ensemble: `prediction_decay` (alpha), `unsup_weight_max` (w_max).
    """

    num_examples: int = 50000
    num_labels: int = 4000
    minibatch_size: int = 100
    num_epochs: int = 300
    rampup_length: int = 80
    rampdown_length: int = 50
    learning_rate_max: float = 0.003
    adam_beta1: float = 0.9
    rampdown_beta1_target: float = 0.5
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    prediction_decay: float = 0.6
    unsup_weight_max: float = 30.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _coerce(field, getattr(self, field.name)))

        def require(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(
                    f"Invalid Temporal Ensembling setting {name}: it must be {allowed}. "
                    f"Received: {name}={getattr(self, name)!r}"
                )

        for name in ("num_examples", "minibatch_size", "num_epochs"):
            require(name, getattr(self, name) >= 1, ">= 1")
        require("minibatch_size", self.minibatch_size <= self.num_examples,
                f"at most num_examples ({self.num_examples}): an epoch drops its last partial "
                "minibatch, and would have no step")
        require("num_labels", 0 <= self.num_labels <= self.num_examples,
                f"in [0, num_examples={self.num_examples}]")
        for name in ("rampup_length", "rampdown_length", "learning_rate_max", "unsup_weight_max"):
            require(name, getattr(self, name) >= 0, ">= 0")
        for name in ("adam_beta1", "rampdown_beta1_target", "adam_beta2", "prediction_decay"):
            require(name, 0.0 <= getattr(self, name) < 1.0, "in [0, 1)")
        require("adam_epsilon", self.adam_epsilon > 0, "> 0")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.minibatch_size

    @property
    def training_length(self) -> int:
        return self.num_epochs * self.steps_per_epoch

    @property
    def scaled_unsup_weight_max(self) -> float:
        """w_max * M / N in float64, in the original's order: w_max * (M / N)."""
        return self.unsup_weight_max * (self.num_labels / self.num_examples)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TemporalEnsemblingParams:
        """Builds from a mapping; an unknown key is an error that lists the known ones."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ValueError(f"Unknown Temporal Ensembling setting(s): {', '.join(unknown)}. "
                             f"Allowed: {', '.join(cls.names())}")
        return cls(**values)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> TemporalEnsemblingParams:
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def rampup(epoch, rampup_length) -> tf.Tensor:
    """exp(-5 (1 - epoch/length)^2) for epoch < length, then 1 (float64, as Python's math)."""
    epoch = tf.cast(epoch, tf.float64)
    length = tf.constant(float(rampup_length), tf.float64)
    phase = 1.0 - tf.math.divide_no_nan(tf.maximum(tf.constant(0.0, tf.float64), epoch), length)
    return tf.where(epoch < length, tf.exp(-phase * phase * 5.0), tf.constant(1.0, tf.float64))


def rampdown(epoch, num_epochs, rampdown_length) -> tf.Tensor:
    """1 before the last `rampdown_length` epochs, then exp(-(half the epochs into it)^2/length).

    This is the code's formula (`ep = (epoch - (num_epochs - length)) * 0.5`), which is what the
    published results used.
    """
    epoch = tf.cast(epoch, tf.float64)
    start = tf.constant(float(num_epochs - rampdown_length), tf.float64)
    half = (epoch - start) * 0.5
    value = tf.exp(-(half * half) / tf.constant(float(max(rampdown_length, 1)), tf.float64))
    return tf.where(epoch >= start, value, tf.constant(1.0, tf.float64))


def epoch_of_step(params: TemporalEnsemblingParams, step) -> tf.Tensor:
    """The 0-based epoch that global step `step` (before its update) belongs to."""
    return tf.math.floordiv(tf.cast(step, tf.int64), params.steps_per_epoch)


def scheduled_values(params: TemporalEnsemblingParams, step) -> dict[str, tf.Tensor]:
    """learning_rate, adam_beta_1 and unsup_weight (float32) of the epoch of `step`.

    Computed in float64 and rounded once to float32, as the original computes them in Python and
    passes them as float32 (`floatX`). The weight is 0 in the first epoch, when the ensemble
    holds no prediction yet.
    """
    p = params
    epoch = epoch_of_step(p, step)
    up = rampup(epoch, p.rampup_length)
    down = rampdown(epoch, p.num_epochs, p.rampdown_length)
    unsup_weight = tf.where(epoch == 0, tf.constant(0.0, tf.float64),
                            up * p.scaled_unsup_weight_max)
    values = {
        "learning_rate": up * down * p.learning_rate_max,
        "adam_beta_1": down * p.adam_beta1 + (1.0 - down) * p.rampdown_beta1_target,
        "unsup_weight": unsup_weight,
    }
    return {name: tf.cast(value, tf.float32) for name, value in values.items()}


@keras.saving.register_keras_serializable(package="tensorflow_mean_teacher")
class TemporalEnsemblingSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """One of `SCHEDULED` as a Keras schedule of the global step (for the optimizer)."""

    def __init__(self, params: TemporalEnsemblingParams | dict, quantity: str):
        if quantity not in SCHEDULED:
            raise ValueError(f"Unknown scheduled quantity. Allowed: {', '.join(SCHEDULED)}. "
                             f"Received: quantity={quantity!r}")
        if not isinstance(params, TemporalEnsemblingParams):
            params = TemporalEnsemblingParams.from_dict(params)
        self.params = params
        self.quantity = quantity

    def __call__(self, step):
        return scheduled_values(self.params, step)[self.quantity]

    def get_config(self) -> dict:
        return {"params": self.params.to_dict(), "quantity": self.quantity}
