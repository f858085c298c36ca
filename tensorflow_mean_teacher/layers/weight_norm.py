"""Weight-normalised conv2d and dense layers with mean-only batch normalisation.

Salimans & Kingma (2016), in the form the original Mean Teacher code uses:
* the weight is `g * V / ||V||` (norm over every axis but the output one);
* training subtracts the batch mean of the pre-bias activation; inference subtracts the layer's
  own `eval_mean`, an exponential moving average (decay 0.999, starting at zero) of those batch
  means, updated in every training-mode call;
* `g` and `b` get a data-dependent initialisation from one batch (`initialize=True`): `g` makes
  the output's per-channel variance one, `b` is zero.

A layer can be *tied* to another one of the same kind: it then shares that layer's `V`, `g` and
`b` but keeps its own `eval_mean`. The original builds its Pi-model branch like that (the same
student weights in a second tower with separate eval means).
"""

from __future__ import annotations

import keras
import tensorflow as tf

# The slope of ConvLarge's leaky ReLU below zero (the original's `lrelu`).
LEAKY_SLOPE = 0.1


def leaky_relu(x: tf.Tensor) -> tf.Tensor:
    """x above zero, 0.1 x below: the original's `lrelu`, as one fused op and gradient op.

    The original writes `tf.maximum(x, 0.1 x)`: the same values bit for bit, but five ops
    forward and backward over every activation. The gradients differ only at exactly x == 0
    (slope 0.1 here, 1 there).
    """
    return tf.nn.leaky_relu(x, alpha=LEAKY_SLOPE)


def batch_mean(x: tf.Tensor, axes) -> tf.Tensor:
    """Mean over the batch axes, over the global batch when running on several replicas.

    Accumulated in float32 under a float16/bfloat16 policy (a sum over 10^5 values), returned
    in the dtype of `x`.
    """
    return tf.cast(_replica_mean(tf.reduce_mean(tf.cast(x, tf.float32), axes)), x.dtype)


def _replica_mean(mean: tf.Tensor) -> tf.Tensor:
    """The mean over every replica's `mean` (each replica holds the same share of the batch)."""
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        mean = context.all_reduce(tf.distribute.ReduceOp.MEAN, mean)
    return mean


def conv2d_batch_mean(inputs: tf.Tensor, kernel: tf.Tensor, padding: str) -> tf.Tensor:
    """The per-channel batch mean of `conv2d(inputs, kernel)` (stride 1), without the output.

    A convolution is linear in its input, zero padding included, so the outputs summed over
    the batch are the convolution of the inputs summed over the batch: one pass over the
    input and a batch-1 convolution, instead of a pass over the output. Leaving the output
    alone lets TensorFlow fuse the convolution, bias and activation into one op.
    Accumulated in float32, returned in the dtype of `inputs`.
    """
    summed = tf.reduce_sum(tf.cast(inputs, tf.float32), axis=0, keepdims=True)
    outputs = tf.nn.conv2d(summed, tf.cast(kernel, tf.float32), strides=1, padding=padding)
    # N x H_out x W_out, from the batch-1 output's positions.
    count = tf.cast(tf.shape(inputs)[0], tf.float32) * _positions(outputs)
    return tf.cast(_replica_mean(tf.reduce_sum(outputs, axis=(0, 1, 2)) / count), inputs.dtype)


def _positions(x: tf.Tensor) -> tf.Tensor:
    """The number of values per channel of `x` (all axes but the last), as a float32 (an int32
    product could overflow)."""
    return tf.reduce_prod(tf.cast(tf.shape(x)[:-1], tf.float32))


def conv2d_minus_batch_mean(inputs: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor,
                            padding: str, leaky: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """`activation(conv2d(inputs, kernel) - mean + bias)` and `mean`, the batch mean of the
    convolution over every axis but the channels (stride 1; `leaky` picks the activation).

    The gradient is the one of that expression with `mean` differentiated through
    (`d conv = g - batch_mean(g)`, `d bias = sum(g)`, g taken after the activation). It is
    written out so that nothing but the convolution's inputs and the block's output is kept
    for it: the convolution, bias add and activation then run as one fused op, and the
    backward pass makes three passes over the activation besides the convolutions' own: the
    activation's gradient, one sum (for the bias gradient and the mean), the subtraction. The
    returned `mean` (for the eval-mean update) carries no gradient.
    """
    padding = padding.upper()
    mean = tf.stop_gradient(conv2d_batch_mean(inputs, kernel, padding))
    strides = [1, 1, 1, 1]

    @tf.custom_gradient
    def block(inputs, kernel, bias):
        outputs = tf.nn.bias_add(tf.nn.conv2d(inputs, kernel, strides=1, padding=padding),
                                 bias - mean)
        if leaky:
            outputs = leaky_relu(outputs)

        def gradient(upstream):
            if leaky:  # the output is positive exactly where the activation's input is
                upstream = tf.raw_ops.LeakyReluGrad(gradients=upstream, features=outputs,
                                                    alpha=LEAKY_SLOPE)
            # One reduction serves both the bias gradient and the batch mean of the gradient.
            total = tf.reduce_sum(tf.cast(upstream, tf.float32), axis=(0, 1, 2))
            d_mean = _replica_mean(total / _positions(upstream))
            d_conv = tf.nn.bias_add(upstream, -tf.cast(d_mean, upstream.dtype))
            d_inputs = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(inputs), filter=kernel, out_backprop=d_conv,
                strides=strides, padding=padding)
            d_kernel = tf.raw_ops.Conv2DBackpropFilter(
                input=inputs, filter_sizes=tf.shape(kernel), out_backprop=d_conv,
                strides=strides, padding=padding)
            return d_inputs, d_kernel, tf.cast(total, bias.dtype)

        return outputs, gradient

    return block(inputs, kernel, bias), mean


def batch_moments(x: tf.Tensor, axes) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and biased variance, as `tf.nn.moments` (which the original initialisation uses)."""
    mean = batch_mean(x, axes)
    variance = batch_mean(tf.math.squared_difference(x, tf.stop_gradient(mean)), axes)
    return mean, variance


class _WeightNorm(keras.layers.Layer):
    """What the conv and dense variants share: variables, tying and the eval-mean update."""

    # Axes of V that the norm runs over, and of the activation that the batch mean runs over.
    _norm_axes: tuple[int, ...]
    _batch_axes: tuple[int, ...]
    # The original's data-dependent init adds a different epsilon to the variance per kind.
    _init_variance_epsilon: float

    def __init__(
        self,
        units: int,
        activation=None,
        eval_mean_decay: float = 0.999,
        kernel_initializer="weight_norm_default",
        tied_to: _WeightNorm | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(units) != units or units < 1:
            raise ValueError(f"units/filters must be a positive integer. Received: {units!r}")
        if not 0.0 <= eval_mean_decay < 1.0:
            raise ValueError(
                f"eval_mean_decay must be in [0, 1). Received: eval_mean_decay={eval_mean_decay}"
            )
        if tied_to is not None and type(tied_to) is not type(self):
            raise TypeError(
                f"A {type(self).__name__} can only be tied to another {type(self).__name__}. "
                f"Received: tied_to={tied_to!r}"
            )
        self.units = int(units)
        if activation not in (None, "leaky_relu"):
            raise ValueError(
                f"activation must be None or 'leaky_relu'. Received: activation={activation!r}"
            )
        self.activation = activation
        self.eval_mean_decay = eval_mean_decay
        if kernel_initializer == "weight_norm_default":
            # The original draws V from N(0, 0.05).
            kernel_initializer = keras.initializers.RandomNormal(0.0, 0.05)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.tied_to = tied_to

    def _kernel_shape(self, input_shape) -> tuple[int, ...]:
        raise NotImplementedError

    def build(self, input_shape):
        if self.tied_to is not None:
            if not self.tied_to.built:
                raise RuntimeError(
                    f"Layer {self.name!r} is tied to {self.tied_to.name!r}, which is not built "
                    "yet. Call the layer it is tied to first."
                )
            self.kernel, self.g, self.b = self.tied_to.kernel, self.tied_to.g, self.tied_to.b
        else:
            self.kernel = self.add_weight(
                name="V", shape=self._kernel_shape(input_shape),
                initializer=self.kernel_initializer,
            )
            self.g = self.add_weight(name="g", shape=(self.units,), initializer="ones")
            self.b = self.add_weight(name="b", shape=(self.units,), initializer="zeros")
        # Kept and updated in float32 under a mixed-precision policy (autocast=False).
        self.eval_mean = self.add_weight(
            name="eval_mean", shape=(self.units,), initializer="zeros", trainable=False,
            aggregation="only_first_replica", autocast=False,
        )

    @property
    def parameters(self) -> tuple:
        """(V, g, b): the variables a teacher keeps as an exponential moving average."""
        return (self.kernel, self.g, self.b)

    def _observe_batch_mean(self, pre_bias: tf.Tensor) -> tf.Tensor:
        """The batch mean of `pre_bias`; moves eval_mean towards it."""
        mean = batch_mean(pre_bias, self._batch_axes)
        self._move_eval_mean(mean)
        return mean

    def _move_eval_mean(self, mean: tf.Tensor) -> None:
        self.eval_mean.assign_sub(
            (1.0 - self.eval_mean_decay) * (self.eval_mean - tf.cast(mean, tf.float32)))

    def _eval_mean(self, like: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.eval_mean, like.dtype)

    def _initialize(self, unscaled: tf.Tensor) -> tf.Tensor:
        """Data-dependent init of g, b from `unscaled` = input convolved with V/||V||."""
        # In float32 whatever the compute dtype: g and b are float32 variables.
        unscaled = tf.cast(unscaled, tf.float32)
        mean, variance = batch_moments(unscaled, self._batch_axes)
        scale = 1.0 / tf.sqrt(variance + self._init_variance_epsilon)
        self.g.assign(scale)
        self.b.assign(tf.zeros_like(scale))
        return tf.cast(self._activate(scale * (unscaled - mean)), self.compute_dtype)

    def _activate(self, x: tf.Tensor) -> tf.Tensor:
        return x if self.activation is None else leaky_relu(x)

    def get_config(self) -> dict:
        if self.tied_to is not None:
            raise NotImplementedError("A tied layer has no standalone config.")
        config = super().get_config()
        config.update({
            "units": self.units,
            "activation": self.activation,
            "eval_mean_decay": self.eval_mean_decay,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config


@keras.saving.register_keras_serializable(package="tensorflow_mean_teacher")
class WeightNormConv2D(_WeightNorm):
    """`y = conv(x, g V/||V||) - mean + b`, then the activation.

    Args:
        filters: number of output channels.
        kernel_size: int or (height, width).
        padding: "same" or "valid" (stride 1, as in ConvLarge).
        activation: None or "leaky_relu" (slope 0.1, as ConvLarge uses).
        eval_mean_decay: decay of the eval-mean moving average (0.999 in the original).
        tied_to: another `WeightNormConv2D` whose V, g, b this layer shares.

    Call arguments: `training` (batch mean vs eval mean), `initialize` (run the data-dependent
    initialisation of g and b on this batch and return its output).
    """

    _batch_axes = (0, 1, 2)
    _norm_axes = (0, 1, 2)
    _init_variance_epsilon = 1e-8

    def __init__(self, filters: int, kernel_size=3, padding: str = "same", **kwargs):
        super().__init__(units=filters, **kwargs)
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size, kernel_size)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        if len(self.kernel_size) != 2 or min(self.kernel_size) < 1:
            raise ValueError(
                f"kernel_size must be a positive int or a pair. Received: kernel_size={kernel_size}"
            )
        if padding.lower() not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid'. Received: padding={padding!r}")
        self.padding = padding.lower()

    @property
    def filters(self) -> int:
        return self.units

    def _kernel_shape(self, input_shape):
        return (*self.kernel_size, int(input_shape[-1]), self.units)

    def _convolve(self, x, kernel):
        return tf.nn.conv2d(x, kernel, strides=1, padding=self.padding.upper())

    def call(self, inputs, training=False, initialize=False):
        direction = tf.nn.l2_normalize(self.kernel, axis=self._norm_axes)
        if initialize:
            return self._initialize(self._convolve(inputs, direction))
        kernel = self.g * direction
        bias = tf.convert_to_tensor(self.b)  # The compute dtype under a mixed policy.
        if training:
            outputs, mean = conv2d_minus_batch_mean(
                inputs, kernel, bias, self.padding, leaky=self.activation == "leaky_relu")
            self._move_eval_mean(mean)
            return outputs
        y = self._convolve(inputs, kernel)
        return self._activate(tf.nn.bias_add(y, bias - self._eval_mean(y)))

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        if self.padding == "valid" and h is not None:
            h, w = h - self.kernel_size[0] + 1, w - self.kernel_size[1] + 1
        return (n, h, w, self.units)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("units")
        config.update(
            {"filters": self.units, "kernel_size": self.kernel_size, "padding": self.padding}
        )
        return config


@keras.saving.register_keras_serializable(package="tensorflow_mean_teacher")
class WeightNormDense(_WeightNorm):
    """`y = (x V - mean) g/||V|| + b`, then the activation (none in ConvLarge's heads).

    The original scales after centring here, and takes the norm without an epsilon.
    Arguments as `WeightNormConv2D`, with `units` for `filters`.
    """

    _batch_axes = (0,)
    _norm_axes = (0,)
    _init_variance_epsilon = 1e-10

    def _kernel_shape(self, input_shape):
        return (int(input_shape[-1]), self.units)

    def call(self, inputs, training=False, initialize=False):
        if initialize:
            direction = tf.nn.l2_normalize(self.kernel, axis=self._norm_axes)
            return self._initialize(tf.matmul(inputs, direction))
        y = tf.matmul(inputs, self.kernel)
        y = y - (self._observe_batch_mean(y) if training else self._eval_mean(y))
        scale = self.g / tf.sqrt(tf.reduce_sum(tf.square(self.kernel), axis=self._norm_axes))
        return self._activate(scale * y + self.b)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)
