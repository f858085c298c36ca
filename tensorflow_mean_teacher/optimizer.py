"""Adam with the semantics of TF1's `tf.train.AdamOptimizer`, for scheduled betas.

Keras' Adam corrects its moment estimates with `beta ** (step + 1)`. That is only right for a
constant beta. The original schedules beta1 (ramp-down) and beta2 (switch after ramp-up), and TF1
keeps two variables, `beta1_power` and `beta2_power`, initialised to the betas at step 0 and
multiplied by the betas *actually used* after each step. The bias correction uses those running
products. After a beta switch the two differ; the difference is visible in the results.

Laine & Aila's Temporal Ensembling code (its `robust_adam`) instead corrects with the *current*
betas to the power of the step count, `beta ** t`: `beta_powers="current"`.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

BetaLike = float | Callable
BETA_POWERS = ("running", "current")


@keras.saving.register_keras_serializable(package="tensorflow_mean_teacher")
class TF1Adam(keras.optimizers.Optimizer):
    """Adam whose `beta_1`/`beta_2` may be step functions, with TF1's running-product correction.

    One step, with `b1p`/`b2p` the running products before the step:
    `alpha = lr * sqrt(1 - b2p) / (1 - b1p)`, `m += (g - m)(1 - beta_1)`,
    `v += (g^2 - v)(1 - beta_2)`, `var -= alpha * m / (sqrt(v) + epsilon)`;
    then `b1p *= beta_1`, `b2p *= beta_2`.

    Args:
        learning_rate: a float or a schedule of the step (`optimizer.iterations`).
        beta_1, beta_2: floats or schedules of the step, evaluated at the step before its update.
        epsilon: added to `sqrt(v)`, as in TF1 (not to `v`).
        beta_powers: "running" (TF1's running products `b1p`, `b2p`) or "current" (the step's
            betas to the power t, the number of steps including this one: tempens' Adam).
    """

    def __init__(
        self,
        learning_rate: BetaLike = 0.001,
        beta_1: BetaLike = 0.9,
        beta_2: BetaLike = 0.999,
        epsilon: float = 1e-8,
        beta_powers: str = "running",
        name: str = "tf1_adam",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        for arg, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not callable(value) and not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{arg} must be in [0, 1). Received: {arg}={value!r}")
        if not float(epsilon) > 0:
            raise ValueError(f"epsilon must be > 0. Received: epsilon={epsilon!r}")
        if beta_powers not in BETA_POWERS:
            raise ValueError(f"beta_powers must be one of {BETA_POWERS}. "
                             f"Received: beta_powers={beta_powers!r}")
        self.beta_powers = beta_powers
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    def _beta(self, beta: BetaLike) -> tf.Tensor:
        value = beta(self.iterations) if callable(beta) else beta
        return tf.cast(value, tf.float32)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums = [self.add_variable_from_reference(v, "momentum") for v in var_list]
        self._velocities = [self.add_variable_from_reference(v, "velocity") for v in var_list]
        # Initialised from the betas at the current step (step 0 for a new run), as TF1 does.
        # A checkpoint restore then overwrites them with the saved running products. Read
        # eagerly, so that a build traced inside a tf.function does not re-assign them each step.
        with tf.init_scope():
            initial = {"beta_1": float(self._beta(self.beta_1)),
                       "beta_2": float(self._beta(self.beta_2))}
        for key, value in initial.items():
            setattr(self, f"{key}_power", self.add_variable(
                shape=(), name=f"{key}_power",
                initializer=keras.initializers.Constant(value),
                aggregation="only_first_replica",
            ))

    def slots(self, variable) -> tuple:
        """(first moment m, second moment v) of one of the optimised variables."""
        index = self._get_variable_index(variable)
        return self._momentums[index], self._velocities[index]

    def apply(self, grads, trainable_variables=None):
        # The betas of this step, read before the base class increments `iterations`.
        beta_1, beta_2 = self._beta(self.beta_1), self._beta(self.beta_2)
        super().apply(grads, trainable_variables)
        self.beta_1_power.assign(self.beta_1_power * beta_1)
        self.beta_2_power.assign(self.beta_2_power * beta_2)

    def update_step(self, gradient, variable, learning_rate):
        lr = tf.cast(learning_rate, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        beta_1 = tf.cast(self._beta(self.beta_1), variable.dtype)
        beta_2 = tf.cast(self._beta(self.beta_2), variable.dtype)
        if self.beta_powers == "running":
            beta_1_power = tf.cast(self.beta_1_power, variable.dtype)
            beta_2_power = tf.cast(self.beta_2_power, variable.dtype)
        else:  # `iterations` counts the steps before this one
            t = tf.cast(self.iterations + 1, variable.dtype)
            beta_1_power, beta_2_power = tf.pow(beta_1, t), tf.pow(beta_2, t)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]

        alpha = lr * tf.sqrt(1.0 - beta_2_power) / (1.0 - beta_1_power)
        self.assign_add(m, (gradient - m) * (1.0 - beta_1))
        self.assign_add(v, (tf.square(gradient) - v) * (1.0 - beta_2))
        self.assign_sub(variable, (m * alpha) / (tf.sqrt(v) + self.epsilon))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({
            "beta_1": keras.saving.serialize_keras_object(self.beta_1),
            "beta_2": keras.saving.serialize_keras_object(self.beta_2),
            "epsilon": self.epsilon,
            "beta_powers": self.beta_powers,
        })
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("beta_1", "beta_2"):
            if isinstance(config[key], dict):
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        return super().from_config(config, custom_objects=custom_objects)
