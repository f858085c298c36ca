import keras
import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher.layers import Dropout, ReplicaSeedGenerator


def test_one_device_draws_are_keras_draws():
    """Outside a multi-replica strategy: the same seeds, so the same draws, as Keras'."""
    keras_generator, ours = keras.random.SeedGenerator(3), ReplicaSeedGenerator(3)
    for _ in range(3):
        np.testing.assert_array_equal(keras.random.normal([6], seed=keras_generator).numpy(),
                                      keras.random.normal([6], seed=ours).numpy())
    keras_dropout, dropout = keras.layers.Dropout(0.5, seed=7), Dropout(0.5, seed=7)
    x = tf.ones([8, 16])
    for _ in range(3):
        np.testing.assert_array_equal(keras_dropout(x, training=True).numpy(),
                                      dropout(x, training=True).numpy())


def test_dropout_masks_and_scales_in_training_only():
    x = tf.ones([50, 40])
    y = Dropout(0.25, seed=1)(x, training=True).numpy()
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert 0.2 < (y == 0).mean() < 0.3
    np.testing.assert_array_equal(Dropout(0.25, seed=1)(x).numpy(), x.numpy())


def test_dropout_at_rate_zero_has_no_generator_and_config_round_trips():
    assert Dropout(0.0).seed_generator is None
    layer = Dropout(0.5, seed=9, name="d")
    clone = Dropout.from_config(layer.get_config())
    assert (clone.rate, clone.seed, clone.name) == (0.5, 9, "d")
    with pytest.raises(ValueError, match="Received: rate=1.0"):
        Dropout(1.0)
