"""Ramp-up and ramp-down schedules of the original training loop.

Every value is a float32 function of the global step *before* the step's update, computed in the
same float32 order as the TF1 graph so that the schedule metrics match it to the last bits.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tensorflow_mean_teacher.hyperparams import HyperParams

SCHEDULED_QUANTITIES = (
    "learning_rate", "adam_beta_1", "adam_beta_2", "ema_decay", "cons_coefficient",
)


def _as_float(value) -> tf.Tensor:
    return tf.cast(value, tf.float32)


def sigmoid_rampup(step, rampup_length) -> tf.Tensor:
    """exp(-5 (1 - step/length)^2) before `rampup_length`, then 1."""
    step, length = _as_float(step), _as_float(rampup_length)
    # divide_no_nan: a zero length never ramps, and must not put a NaN in the unused branch.
    phase = 1.0 - tf.math.divide_no_nan(tf.maximum(0.0, step), length)
    return tf.where(step < length, tf.exp(-5.0 * phase * phase), 1.0)


def sigmoid_rampdown(step, rampdown_length, training_length) -> tf.Tensor:
    """1 until `training_length - rampdown_length`, then exp(-12.5 (1 - remaining/length)^2)."""
    step = _as_float(step)
    length, total = _as_float(rampdown_length), _as_float(training_length)
    # With length 0 the TF1 graph divides 0 by 0 at the last step; its limit exp(-12.5) is used.
    phase = 1.0 - tf.math.divide_no_nan(tf.maximum(0.0, total - step), length)
    return tf.where(step >= total - length, tf.exp(-12.5 * phase * phase), 1.0)


def step_rampup(step, rampup_length) -> tf.Tensor:
    """0 before `rampup_length`, then 1."""
    return tf.where(_as_float(step) < _as_float(rampup_length), 0.0, 1.0)


def scheduled_values(hyperparams: HyperParams, step) -> dict[str, tf.Tensor]:
    """The five scheduled quantities of the original, by their original metric names."""
    hp = hyperparams
    f32 = _as_float
    rampup = sigmoid_rampup(step, hp.rampup_length)
    rampdown = sigmoid_rampdown(step, hp.rampdown_length, hp.training_length)
    switch = step_rampup(step, hp.rampup_length)
    return {
        "learning_rate": (rampup * rampdown) * f32(hp.max_learning_rate),
        "adam_beta_1": rampdown * f32(hp.adam_beta_1_before_rampdown)
        + (1.0 - rampdown) * f32(hp.adam_beta_1_after_rampdown),
        "adam_beta_2": (1.0 - switch) * f32(hp.adam_beta_2_during_rampup)
        + switch * f32(hp.adam_beta_2_after_rampup),
        "ema_decay": (1.0 - switch) * f32(hp.ema_decay_during_rampup)
        + switch * f32(hp.ema_decay_after_rampup),
        "cons_coefficient": rampup * f32(hp.max_consistency_cost),
    }


@keras.saving.register_keras_serializable(package="tensorflow_mean_teacher")
class MeanTeacherSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """One scheduled quantity as a Keras schedule, so an optimizer can take it as a step function.

    `MeanTeacherSchedule(hp, "learning_rate")` is the original learning rate; `"adam_beta_1"` and
    `"adam_beta_2"` are the scheduled Adam betas.
    """

    def __init__(self, hyperparams: HyperParams | dict, quantity: str):
        if quantity not in SCHEDULED_QUANTITIES:
            raise ValueError(
                f"Unknown scheduled quantity. Allowed: {', '.join(SCHEDULED_QUANTITIES)}. "
                f"Received: quantity={quantity!r}"
            )
        if not isinstance(hyperparams, HyperParams):
            hyperparams = HyperParams.from_dict(hyperparams)
        self.hyperparams = hyperparams
        self.quantity = quantity

    def __call__(self, step):
        return scheduled_values(self.hyperparams, step)[self.quantity]

    def get_config(self) -> dict:
        return {"hyperparams": self.hyperparams.to_dict(), "quantity": self.quantity}
