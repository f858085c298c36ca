import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher.layers import WeightNormConv2D, WeightNormDense, leaky_relu
from tensorflow_mean_teacher.layers.weight_norm import shift_by_batch_mean


def numpy_conv_same(x, w):
    """3x3 'same' convolution in float64 (NHWC, HWIO)."""
    kh, kw = w.shape[:2]
    padded = np.pad(x, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    out = np.zeros(x.shape[:3] + (w.shape[-1],))
    for i in range(kh):
        for j in range(kw):
            out += padded[:, i:i + x.shape[1], j:j + x.shape[2], :] @ w[i, j]
    return out


def lrelu(x):
    return np.maximum(x, 0.1 * x)


@pytest.fixture
def data():
    rng = np.random.RandomState(7)
    return rng.normal(size=(4, 5, 5, 3)).astype(np.float32)


def test_conv_initialisation_gives_unit_variance_and_zero_bias(data):
    layer = WeightNormConv2D(6, 3, activation="leaky_relu")
    out = layer(data, training=True, initialize=True).numpy()
    v = layer.kernel.numpy().astype(np.float64)
    direction = v / np.sqrt((v ** 2).sum(axis=(0, 1, 2)))
    pre = numpy_conv_same(data.astype(np.float64), direction)
    mean, var = pre.mean(axis=(0, 1, 2)), pre.var(axis=(0, 1, 2))
    np.testing.assert_allclose(layer.g.numpy(), 1 / np.sqrt(var + 1e-8), rtol=1e-5)
    np.testing.assert_array_equal(layer.b.numpy(), 0.0)
    np.testing.assert_allclose(out, lrelu((pre - mean) / np.sqrt(var + 1e-8)), atol=1e-5)
    np.testing.assert_array_equal(layer.eval_mean.numpy(), 0.0)  # init does not touch it


def test_conv_training_and_inference_forward(data):
    layer = WeightNormConv2D(6, 3, activation="leaky_relu")
    layer(data, training=True, initialize=True)
    rng = np.random.RandomState(1)
    layer.g.assign(rng.uniform(0.5, 2, 6).astype(np.float32))
    layer.b.assign(rng.normal(size=6).astype(np.float32))
    v, g, b = (w.numpy().astype(np.float64) for w in (layer.kernel, layer.g, layer.b))
    pre = numpy_conv_same(data.astype(np.float64), g * v / np.sqrt((v ** 2).sum(axis=(0, 1, 2))))
    batch_mean = pre.mean(axis=(0, 1, 2))

    out = layer(data, training=True).numpy()
    np.testing.assert_allclose(out, lrelu(pre - batch_mean + b), atol=1e-5)
    eval_mean = 0.001 * batch_mean  # one step of the 0.999 moving average from zero
    np.testing.assert_allclose(layer.eval_mean.numpy(), eval_mean, rtol=1e-5, atol=1e-9)

    out = layer(data, training=False).numpy()
    np.testing.assert_allclose(out, lrelu(pre - eval_mean + b), atol=1e-5)
    np.testing.assert_allclose(layer.eval_mean.numpy(), eval_mean, rtol=1e-5, atol=1e-9)

    layer(data, training=True)
    second = eval_mean + 0.001 * (batch_mean - eval_mean)
    np.testing.assert_allclose(layer.eval_mean.numpy(), second, rtol=1e-5, atol=1e-9)


def test_valid_padding_and_1x1():
    x = np.random.RandomState(0).normal(size=(2, 8, 8, 4)).astype(np.float32)
    assert WeightNormConv2D(5, 3, padding="valid")(x, training=True).shape == (2, 6, 6, 5)
    assert WeightNormConv2D(5, 1)(x, training=True).shape == (2, 8, 8, 5)


def test_dense_forward_scales_after_centring():
    rng = np.random.RandomState(2)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    layer = WeightNormDense(3)
    out = layer(x, training=True, initialize=True).numpy()
    v = layer.kernel.numpy().astype(np.float64)
    norm = np.sqrt((v ** 2).sum(axis=0))
    pre = x.astype(np.float64) @ (v / norm)
    np.testing.assert_allclose(layer.g.numpy(), 1 / np.sqrt(pre.var(axis=0) + 1e-10), rtol=1e-5)
    np.testing.assert_allclose(out, (pre - pre.mean(0)) * layer.g.numpy(), atol=1e-5)

    layer.b.assign([0.1, -0.2, 0.3])
    g, b = layer.g.numpy().astype(np.float64), layer.b.numpy().astype(np.float64)
    raw = x.astype(np.float64) @ v
    out = layer(x, training=True).numpy()
    np.testing.assert_allclose(out, (raw - raw.mean(0)) * g / norm + b, atol=1e-5)
    out = layer(x, training=False).numpy()
    np.testing.assert_allclose(out, (raw - 0.001 * raw.mean(0)) * g / norm + b, atol=1e-5)


def test_tied_layer_shares_weights_but_keeps_its_own_eval_mean(data):
    first = WeightNormConv2D(4, 3)
    first(data, training=True, initialize=True)
    tied = WeightNormConv2D(4, 3, tied_to=first)
    tied(data * 2, training=True)
    assert tied.kernel is first.kernel and tied.g is first.g and tied.b is first.b
    assert tied.eval_mean is not first.eval_mean
    np.testing.assert_array_equal(first.eval_mean.numpy(), 0.0)
    assert np.abs(tied.eval_mean.numpy()).max() > 0
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tied(data, training=True) ** 2)
    assert tape.gradient(loss, first.kernel) is not None


def test_argument_validation():
    with pytest.raises(ValueError, match="must be 'same' or 'valid'. Received: padding='full'"):
        WeightNormConv2D(4, padding="full")
    with pytest.raises(ValueError, match="activation must be None or 'leaky_relu'"):
        WeightNormDense(4, activation="relu")
    with pytest.raises(ValueError, match="eval_mean_decay must be in \\[0, 1\\)"):
        WeightNormDense(4, eval_mean_decay=1.0)
    with pytest.raises(TypeError, match="can only be tied to another WeightNormConv2D"):
        WeightNormConv2D(4, tied_to=WeightNormDense(4))
    with pytest.raises(RuntimeError, match="not built yet"):
        WeightNormDense(4, tied_to=WeightNormDense(4))(np.zeros((2, 3), np.float32))


def test_config_round_trip():
    layer = WeightNormConv2D(7, (1, 1), padding="valid", activation="leaky_relu")
    clone = WeightNormConv2D.from_config(layer.get_config())
    assert (clone.filters, clone.kernel_size, clone.padding, clone.activation) == \
        (7, (1, 1), "valid", "leaky_relu")


def test_shift_by_batch_mean_gradient_is_the_mean_differentiated_through():
    """The fused op's gradient equals the float64 closed form of d(x - mean(x) + b)."""
    rng = np.random.RandomState(3)
    x = rng.normal(size=(3, 4, 4, 5)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    xt, bt = tf.constant(x), tf.constant(b)
    with tf.GradientTape() as tape:
        tape.watch([xt, bt])
        y, mean = shift_by_batch_mean(xt, bt)
    dx, db = tape.gradient(y, [xt, bt], output_gradients=tf.constant(upstream))
    x64, g64 = x.astype(np.float64), upstream.astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), x64.mean((0, 1, 2)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y.numpy(), x64 - x64.mean((0, 1, 2)) + b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx.numpy(), g64 - g64.mean((0, 1, 2)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(db.numpy(), g64.sum((0, 1, 2)), rtol=1e-6, atol=1e-6)
    # Not the gradient with the mean held constant: that would pass `upstream` through.
    assert np.abs(dx.numpy() - upstream).max() > 0.1


def test_leaky_relu_values_and_slopes():
    x = tf.constant([-2.0, -0.5, 0.25, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = leaky_relu(x)
    np.testing.assert_array_equal(y.numpy(), lrelu(x.numpy()))
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [0.1, 0.1, 1.0, 1.0], rtol=1e-7)
