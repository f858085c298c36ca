"""ConvLarge, the 13-layer network of the Mean Teacher paper's ConvNet experiments.

Input stage, then three blocks of weight-normalised convolutions with leaky ReLU (0.1):
3x(3x3, w) - maxpool - dropout - 3x(3x3, 2w) - maxpool - dropout - 3x3 valid 4w - 1x1 2w - 1x1 w -
global average pool, and two dense heads on the w features. `w = 128` in the original. The
original's 6x6 average pool (stride 2) is global on its 32x32 images; a global pool gives that
result there and keeps the architecture the same at any other image size (at least 12x12).
The layer names are the TF1 scope names (`conv_1_1` ... `fully_connected_1`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tensorflow_mean_teacher.layers import (
    Dropout,
    InputStage,
    WeightNormConv2D,
    WeightNormDense,
)

# (name, width multiple, kernel size, padding) of the convolutions, in order.
_CONV_LAYERS = (
    ("conv_1_1", 1, 3, "same"), ("conv_1_2", 1, 3, "same"), ("conv_1_3", 1, 3, "same"),
    ("conv_2_1", 2, 3, "same"), ("conv_2_2", 2, 3, "same"), ("conv_2_3", 2, 3, "same"),
    ("conv_3_1", 4, 3, "valid"), ("conv_3_2", 2, 1, "same"), ("conv_3_3", 1, 1, "same"),
)
LAYER_NAMES = tuple(name for name, *_ in _CONV_LAYERS) + ("fully_connected", "fully_connected_1")
MIN_IMAGE_SIZE = 12


def global_average_pool(x: tf.Tensor) -> tf.Tensor:
    """(N, H, W, C) -> (N, C): the mean over the whole map, as one average-pooling window of
    the map's size (at 32x32 input the original's 6x6 pool, and the very same op)."""
    if x.shape[1] is None or x.shape[2] is None:  # a map of unknown size: the plain mean
        return tf.reduce_mean(x, axis=[1, 2])
    pooled = tf.nn.avg_pool2d(x, ksize=tuple(x.shape[1:3]), strides=1, padding="VALID")
    return tf.reshape(pooled, [-1, x.shape[-1]])


@keras.saving.register_keras_serializable(package="tensorflow_mean_teacher")
class ConvLarge(keras.Model):
    """One tower of the original: maps (N, H, W, C) images to (class_logits, cons_logits).

    32x32x3 in every original experiment; any H, W >= 12 (the last conv needs a 3x3 map) and
    any channel count work, with the same layers.

    Args:
        num_classes: output classes (10 in every original experiment).
        num_logits: 1: `cons_logits` is `class_logits`; 2: a second head gives `cons_logits`.
            Both heads always exist (and are initialised), as in the original.
        width: channels of the first block (128 in the original); the others scale with it.
        dropout_probability: dropout rate after each max-pooling, in training.
        input_noise, normalize_input, flip_horizontally, translate: the input stage
            (see `InputStage`).
        eval_mean_decay: decay of each layer's eval-mean moving average (0.999 in the
            original, which needs thousands of steps to converge from zero).
        seed: seed of this tower's random draws (input stage and dropout).
        tied_to: another `ConvLarge` of the same configuration whose weights this tower shares,
            keeping its own eval means and random draws (the original's Pi-model branch).

    Call arguments: `training` (batch statistics and random perturbations), `initialize` (run
    the data-dependent initialisation of every layer's g and b on this batch).
    """

    def __init__(self, num_classes: int = 10, num_logits: int = 1, width: int = 128,
                 dropout_probability: float = 0.5, input_noise: float = 0.15,
                 normalize_input: bool = True, flip_horizontally: bool = False,
                 translate: bool = True, eval_mean_decay: float = 0.999,
                 seed: int | None = None, tied_to: ConvLarge | None = None, **kwargs):
        super().__init__(**kwargs)
        if num_logits not in (1, 2):
            raise ValueError(f"num_logits must be 1 or 2. Received: num_logits={num_logits!r}")
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(
                f"num_classes must be an integer >= 2. Received: num_classes={num_classes!r}"
            )
        if int(width) != width or width < 1:
            raise ValueError(f"width must be a positive integer. Received: width={width!r}")
        if not 0.0 <= dropout_probability < 1.0:
            raise ValueError(
                "dropout_probability must be in [0, 1). "
                f"Received: dropout_probability={dropout_probability!r}"
            )
        self.num_classes = int(num_classes)
        self.num_logits = int(num_logits)
        self.width = int(width)
        self.dropout_probability = float(dropout_probability)
        self.tied_to = tied_to
        self._config = dict(
            num_classes=self.num_classes, num_logits=self.num_logits, width=self.width,
            dropout_probability=self.dropout_probability, input_noise=input_noise,
            normalize_input=normalize_input, flip_horizontally=flip_horizontally,
            translate=translate, eval_mean_decay=eval_mean_decay, seed=seed,
        )
        def sub_seed(offset):
            # Distinct, reproducible seeds for the input stage and the two dropout layers.
            return None if seed is None else int(seed) * 16 + offset

        self.input_stage = InputStage(
            normalize_input=normalize_input, flip_horizontally=flip_horizontally,
            translate=translate, input_noise=input_noise, seed=sub_seed(0), name="input_stage",
            dtype="float32",  # per-image statistics in float32 under mixed precision too
        )

        def tie(name):
            return None if tied_to is None else tied_to.get_layer(name)

        def initializer(index):
            # The original draws V from N(0, 0.05).
            return keras.initializers.RandomNormal(0.0, 0.05, seed=sub_seed(3 + index))

        self.convs = [
            WeightNormConv2D(multiple * self.width, kernel, padding=padding,
                             activation="leaky_relu", kernel_initializer=initializer(i),
                             eval_mean_decay=eval_mean_decay, tied_to=tie(name), name=name)
            for i, (name, multiple, kernel, padding) in enumerate(_CONV_LAYERS)
        ]
        self.max_pool_1 = keras.layers.MaxPooling2D(2, name="max_pool_1")
        self.dropout_1 = Dropout(self.dropout_probability, seed=sub_seed(1), name="dropout_1")
        self.max_pool_2 = keras.layers.MaxPooling2D(2, name="max_pool_2")
        self.dropout_2 = Dropout(self.dropout_probability, seed=sub_seed(2), name="dropout_2")
        self.fc_primary = WeightNormDense(
            self.num_classes, kernel_initializer=initializer(9), eval_mean_decay=eval_mean_decay,
            tied_to=tie("fully_connected"), name="fully_connected")
        self.fc_secondary = WeightNormDense(
            self.num_classes, kernel_initializer=initializer(10), eval_mean_decay=eval_mean_decay,
            tied_to=tie("fully_connected_1"), name="fully_connected_1")

    @property
    def weight_norm_layers(self) -> list:
        """The 11 weight-normalised layers, in the order of `LAYER_NAMES`."""
        return [*self.convs, self.fc_primary, self.fc_secondary]

    def state_checkpoint(self) -> tf.train.Checkpoint:
        """Every variable of this tower by name: V, g, b, eval_mean per layer, and the states of
        its random generators. Explicit, because Keras' attribute tracking does not reach the
        layers held in lists nor the random generators."""
        layers = {
            layer.name: tf.train.Checkpoint(V=layer.kernel, g=layer.g, b=layer.b,
                                            eval_mean=layer.eval_mean)
            for layer in self.weight_norm_layers
        }
        # (Dropout has no generator at rate 0.)
        generators = {
            name: layer.seed_generator.state
            for name, layer in (("input_stage", self.input_stage),
                                ("dropout_1", self.dropout_1), ("dropout_2", self.dropout_2))
            if getattr(layer, "seed_generator", None) is not None
        }
        return tf.train.Checkpoint(**layers, random=tf.train.Checkpoint(**generators))

    def data_dependent_initialization(self, images) -> None:
        """The original's init of every layer's g and b on one batch (training mode)."""
        self(images, training=True, initialize=True)

    def call(self, images, training=False, initialize=False):
        def wn(layer, x):
            return layer(x, training=training, initialize=initialize)

        height, width = images.shape[1], images.shape[2]
        if (height is not None and height < MIN_IMAGE_SIZE) or \
                (width is not None and width < MIN_IMAGE_SIZE):
            raise ValueError(
                f"ConvLarge needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels "
                "(two 2x2 max-pools, then a 3x3 valid convolution). Received: images of shape "
                f"{tuple(images.shape)}"
            )
        x = self.input_stage(images, training=training)
        for conv in self.convs[:3]:
            x = wn(conv, x)
        x = self.dropout_1(self.max_pool_1(x), training=training)
        for conv in self.convs[3:6]:
            x = wn(conv, x)
        x = self.dropout_2(self.max_pool_2(x), training=training)
        for conv in self.convs[6:]:
            x = wn(conv, x)
        features = global_average_pool(x)
        class_logits = wn(self.fc_primary, features)
        # The second head runs (and is initialised) even when unused, as in the original.
        secondary_logits = wn(self.fc_secondary, features)
        cons_logits = secondary_logits if self.num_logits == 2 else class_logits
        # Logits in float32 whatever the compute dtype: softmaxes and costs need the range.
        return tf.cast(class_logits, tf.float32), tf.cast(cons_logits, tf.float32)

    def get_config(self) -> dict:
        if self.tied_to is not None:
            raise NotImplementedError("A tied ConvLarge has no standalone config.")
        return {**super().get_config(), **self._config}
