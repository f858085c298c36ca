"""Random draws that differ between the replicas of a `tf.distribute` strategy.

Keras' `SeedGenerator` state is one mirrored variable: under a strategy, every replica would get
the same seed and so the same noise, translations, flips and dropout masks for its share of the
global batch. `ReplicaSeedGenerator` folds the replica's id into each seed when there are several
replicas; on one device its seeds (and so every draw) are exactly those of a `SeedGenerator`.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class ReplicaSeedGenerator(keras.random.SeedGenerator):
    """A `keras.random.SeedGenerator` whose seeds differ from replica to replica."""

    def next(self, ordered: bool = True):
        seed = super().next(ordered=ordered)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return seed
        replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
        folded = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), replica)
        # Keras' seeds are uint32 pairs: keep the low 32 bits of each half.
        return tf.cast(tf.bitwise.bitwise_and(folded, 0xFFFFFFFF), seed.dtype)


@keras.saving.register_keras_serializable(package="tensorflow_mean_teacher")
class Dropout(keras.layers.Layer):
    """`keras.layers.Dropout` drawing its masks from a `ReplicaSeedGenerator`.

    The same masks as Keras' Dropout with the same seed on one device. Like it, no generator
    (and no state) at rate 0.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1). Received: rate={rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed) if self.rate > 0 else None
        self.supports_masking = True
        self.built = True

    def call(self, inputs, training=False):
        if training and self.rate > 0:
            return keras.random.dropout(inputs, self.rate, seed=self.seed_generator)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
