"""The original tower's input stage: normalise, flip, translate, add noise, in that order.

Normalisation runs in training and inference; the three random perturbations only in training,
each drawn independently per image (and independently in every tower that has its own stage).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tensorflow_mean_teacher.layers.random import ReplicaSeedGenerator


def normalize_per_image(images: tf.Tensor) -> tf.Tensor:
    """(x - mean) / sqrt(var + 1e-12) over each image's pixels and channels jointly.

    What `slim.layer_norm(center=False, scale=False)` computes: biased variance, no parameters.
    """
    mean, variance = tf.nn.moments(images, axes=[1, 2, 3], keepdims=True)
    return tf.nn.batch_normalization(images, mean, variance, None, None, 1e-12)


def flip_images(images: tf.Tensor, choices: tf.Tensor) -> tf.Tensor:
    """Mirrors image n left-right where choices[n] == 1."""
    flip = tf.reshape(tf.cast(choices, tf.bool), [-1, 1, 1, 1])
    return tf.where(flip, tf.reverse(images, axis=[2]), images)


def translate_images(images: tf.Tensor, vertical_offsets: tf.Tensor,
                     horizontal_offsets: tf.Tensor, scale: int) -> tf.Tensor:
    """Shifts image n down by vertical_offsets[n] and right by horizontal_offsets[n] pixels.

    The pixels that come in from outside are mirrored (numpy/TF 'reflect', edge not repeated):
    `out[n, i, j] = P[n, i + scale - v_n, j + scale - h_n]` with `P` the input padded by `scale`.
    Offsets must lie in [-scale, scale]. Pure indexing, so the result is exact.
    """
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    padded = tf.pad(images, [[0, 0], [scale, scale], [scale, scale], [0, 0]], mode="REFLECT")
    rows = tf.range(height)[tf.newaxis, :] + scale - tf.cast(vertical_offsets, tf.int32)[:, None]
    cols = tf.range(width)[tf.newaxis, :] + scale - tf.cast(horizontal_offsets, tf.int32)[:, None]
    shifted_rows = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(shifted_rows, cols, axis=2, batch_dims=1)


@keras.saving.register_keras_serializable(package="tensorflow_mean_teacher")
class InputStage(keras.layers.Layer):
    """Per-image normalisation, random flip, random translation and gaussian noise.

    Args:
        normalize_input: normalise each image to zero mean and unit variance (the original's
            `normalize_input`; switch off for inputs already whitened, e.g. CIFAR-10 ZCA).
        flip_horizontally: flip each training image left-right with probability 1/2.
        translate: shift each training image by up to `translate_scale` pixels on each axis,
            uniformly, with reflected padding.
        input_noise: standard deviation of the gaussian noise added in training.
        seed: seed of this layer's random draws.
    """

    def __init__(self, normalize_input: bool = True, flip_horizontally: bool = False,
                 translate: bool = True, input_noise: float = 0.15, translate_scale: int = 2,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if input_noise < 0:
            raise ValueError(f"input_noise must be >= 0. Received: input_noise={input_noise}")
        if int(translate_scale) != translate_scale or translate_scale < 0:
            raise ValueError(
                "translate_scale must be an integer >= 0. "
                f"Received: translate_scale={translate_scale}"
            )
        self.normalize_input = bool(normalize_input)
        self.flip_horizontally = bool(flip_horizontally)
        self.translate = bool(translate)
        self.input_noise = float(input_noise)
        self.translate_scale = int(translate_scale)
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed)

    def call(self, images, training=False):
        x = normalize_per_image(images) if self.normalize_input else images
        if not training:
            return x
        batch = tf.shape(x)[:1]
        if self.flip_horizontally:
            x = flip_images(x, keras.random.randint(batch, 0, 2, seed=self.seed_generator))
        if self.translate and self.translate_scale > 0:
            def offsets():
                return keras.random.randint(batch, -self.translate_scale,
                                            self.translate_scale + 1, seed=self.seed_generator)
            x = translate_images(x, offsets(), offsets(), self.translate_scale)
        if self.input_noise > 0:
            x = x + keras.random.normal(tf.shape(x), seed=self.seed_generator) * self.input_noise
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({
            "normalize_input": self.normalize_input,
            "flip_horizontally": self.flip_horizontally,
            "translate": self.translate,
            "input_noise": self.input_noise,
            "translate_scale": self.translate_scale,
            "seed": self.seed,
        })
        return config
