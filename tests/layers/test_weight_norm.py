import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher.layers import WeightNormConv2D, WeightNormDense, leaky_relu
from tensorflow_mean_teacher.layers.weight_norm import conv2d_batch_mean, conv2d_minus_batch_mean


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


@pytest.mark.parametrize(("kernel_size", "padding"), [(3, "SAME"), (3, "VALID"), (1, "VALID")])
def test_conv2d_batch_mean_is_the_mean_of_the_convolution(kernel_size, padding):
    rng = np.random.RandomState(5)
    x = rng.normal(1.0, 1.0, size=(6, 7, 7, 4)).astype(np.float32)
    w = rng.normal(size=(kernel_size, kernel_size, 4, 5)).astype(np.float32)
    reference = tf.nn.conv2d(x.astype(np.float64), w.astype(np.float64), 1, padding)
    if padding == "SAME":  # and an independent reference for the zero padding
        np.testing.assert_allclose(reference, numpy_conv_same(x.astype(np.float64), w),
                                   rtol=1e-12, atol=1e-12)
    mean = conv2d_batch_mean(tf.constant(x), tf.constant(w), padding)
    np.testing.assert_allclose(mean.numpy(), reference.numpy().mean((0, 1, 2)), rtol=2e-6)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("leaky", [True, False])
def test_conv2d_minus_batch_mean_matches_float64_autodiff_of_the_plain_expression(
        padding, leaky):
    """Values and gradients against `act(conv(x, w) - reduce_mean(conv(x, w)) + b)` in float64,
    differentiated by TensorFlow through every op."""
    rng = np.random.RandomState(3)
    x = rng.normal(size=(3, 6, 6, 4)).astype(np.float32)
    w = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    upstream = rng.normal(size=(3, 6, 6, 5) if padding == "SAME" else (3, 4, 4, 5))
    upstream = upstream.astype(np.float32)

    def gradients(dtype, block):
        tensors = [tf.constant(a.astype(dtype)) for a in (x, w, b)]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            outputs, mean = block(*tensors)
        return (outputs, mean, *tape.gradient(outputs, tensors,
                                              output_gradients=tf.constant(upstream.astype(dtype))))

    def plain(x, w, b):
        y = tf.nn.conv2d(x, w, 1, padding)
        mean = tf.reduce_mean(y, axis=(0, 1, 2))
        z = y - mean + b
        return (tf.maximum(z, 0.1 * z) if leaky else z), mean

    fused = gradients(np.float32, lambda x, w, b: conv2d_minus_batch_mean(
        x, w, b, padding.lower(), leaky=leaky))
    reference = gradients(np.float64, plain)
    for name, got, want in zip(("outputs", "mean", "d_x", "d_w", "d_b"), fused, reference,
                               strict=True):
        scale = np.abs(want.numpy()).max()
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-6 * scale, err_msg=name)
    # Not the gradient with the mean held constant, which passes sum(g) to every position.
    with tf.GradientTape() as tape:
        held = [tf.constant(a.astype(np.float64)) for a in (x, w)]
        tape.watch(held)
        y = tf.nn.conv2d(*held, 1, padding)
        z = y - tf.stop_gradient(tf.reduce_mean(y, axis=(0, 1, 2))) + b
        z = tf.maximum(z, 0.1 * z) if leaky else z
    d_w_held = tape.gradient(z, held[1], output_gradients=tf.constant(upstream, tf.float64))
    tolerance = 2e-6 * np.abs(reference[3].numpy()).max()
    assert np.abs(fused[3].numpy() - d_w_held.numpy()).max() > 1000 * tolerance


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_conv2d_minus_batch_mean_in_16_bits_tracks_float32(dtype):
    """Under a mixed policy the block runs in 16 bits: outputs, mean and gradients keep the
    16-bit dtype and stay close to the float32 block (the sums accumulate in float32).
    Without the activation: its slope changes where 16-bit rounding flips an output's sign."""
    rng = np.random.RandomState(4)
    arrays = (rng.normal(1.0, 1.0, size=(4, 6, 6, 3)), rng.normal(size=(3, 3, 3, 5)) * 0.3,
              rng.normal(size=5))
    upstream = rng.normal(size=(4, 6, 6, 5))

    def run(dtype):
        tensors = [tf.constant(a, dtype) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            outputs, mean = conv2d_minus_batch_mean(*tensors, "same", leaky=False)
        grads = tape.gradient(outputs, tensors, output_gradients=tf.constant(upstream, dtype))
        return [outputs, mean, *grads]

    low, full = run(dtype), run(tf.float32)
    resolution = 1e-3 if dtype == tf.float16 else 8e-3  # 2^-10 and 2^-7
    for name, got, want in zip(("outputs", "mean", "d_x", "d_w", "d_b"), low, full, strict=True):
        assert got.dtype == dtype, name
        scale = np.abs(want.numpy()).max()
        np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), want.numpy(),
                                   atol=4 * resolution * scale, err_msg=name)


def test_leaky_relu_values_and_slopes():
    x = tf.constant([-2.0, -0.5, 0.25, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = leaky_relu(x)
    np.testing.assert_array_equal(y.numpy(), lrelu(x.numpy()))
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [0.1, 0.1, 1.0, 1.0], rtol=1e-7)
