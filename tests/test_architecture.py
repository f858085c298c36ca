import numpy as np
import pytest

from tensorflow_mean_teacher.architecture import LAYER_NAMES, ConvLarge

# FORMAT.md 1.2: the TF1 V shapes of ConvLarge.
TF1_KERNEL_SHAPES = {
    "conv_1_1": (3, 3, 3, 128), "conv_1_2": (3, 3, 128, 128), "conv_1_3": (3, 3, 128, 128),
    "conv_2_1": (3, 3, 128, 256), "conv_2_2": (3, 3, 256, 256), "conv_2_3": (3, 3, 256, 256),
    "conv_3_1": (3, 3, 256, 512), "conv_3_2": (1, 1, 512, 256), "conv_3_3": (1, 1, 256, 128),
    "fully_connected": (128, 10), "fully_connected_1": (128, 10),
}


def images(n=4, seed=0):
    return np.random.RandomState(seed).uniform(size=(n, 32, 32, 3)).astype(np.float32)


def test_full_width_matches_the_tf1_variables():
    net = ConvLarge()
    net(images(1), training=False)
    shapes = {layer.name: tuple(layer.kernel.shape) for layer in net.weight_norm_layers}
    assert shapes == TF1_KERNEL_SHAPES
    assert tuple(shapes) == LAYER_NAMES
    assert len(net.trainable_variables) == 33
    assert len(net.non_trainable_variables) >= 11  # one eval mean per layer (+ RNG states)


@pytest.mark.parametrize("num_logits", [1, 2])
def test_outputs_and_heads(num_logits):
    net = ConvLarge(num_logits=num_logits, width=8, num_classes=7)
    class_logits, cons_logits = net(images(), training=True, initialize=True)
    assert class_logits.shape == (4, 7) and cons_logits.shape == (4, 7)
    same = np.array_equal(class_logits.numpy(), cons_logits.numpy())
    assert same == (num_logits == 1)
    # Both heads are initialised, whatever num_logits is.
    assert not np.allclose(net.fc_secondary.g.numpy(), 1.0)


def test_width_scales_every_block():
    net = ConvLarge(width=4)
    net(images(1))
    assert [layer.units for layer in net.convs] == [4, 4, 4, 8, 8, 8, 16, 8, 4]


def test_initialisation_normalises_the_logits():
    net = ConvLarge(width=16, dropout_probability=0.0, input_noise=0.0, translate=False)
    class_logits, _ = net(images(32), training=True, initialize=True)
    np.testing.assert_allclose(class_logits.numpy().mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(class_logits.numpy().std(axis=0), 1.0, rtol=1e-3)


def test_tied_tower_shares_weights():
    student = ConvLarge(width=4)
    student(images(2), training=True, initialize=True)
    branch = ConvLarge(width=4, tied_to=student)
    branch(images(2), training=True)
    for a, b in zip(student.weight_norm_layers, branch.weight_norm_layers, strict=True):
        assert a.kernel is b.kernel and a.g is b.g and a.eval_mean is not b.eval_mean


@pytest.mark.parametrize("kwargs, message", [
    ({"num_logits": 3}, "num_logits must be 1 or 2. Received: num_logits=3"),
    ({"width": 0}, "width must be a positive integer. Received: width=0"),
    ({"num_classes": 1}, "num_classes must be an integer >= 2. Received: num_classes=1"),
    ({"dropout_probability": 1.0}, "Received: dropout_probability=1.0"),
])
def test_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvLarge(**kwargs)


@pytest.mark.parametrize("shape", [(28, 28, 1), (64, 64, 3), (32, 48, 4)])
def test_any_image_size_keeps_the_architecture(shape):
    net = ConvLarge(width=4, num_classes=5)
    x = np.random.RandomState(0).uniform(size=(2, *shape)).astype(np.float32)
    class_logits, _ = net(x, training=True, initialize=True)
    assert class_logits.shape == (2, 5)
    # The same variables at every size (the pool is global, so the heads see w features);
    # only the first kernel follows the channel count.
    assert tuple(net.fc_primary.kernel.shape) == (4, 5)
    assert tuple(net.convs[0].kernel.shape) == (3, 3, shape[2], 4)
    assert len(net.trainable_variables) == 33


def test_global_pool_is_the_original_pool_at_32x32():
    import tensorflow as tf

    from tensorflow_mean_teacher.architecture import global_average_pool

    x = tf.random.stateless_normal((3, 6, 6, 5), seed=(1, 2))
    original = tf.keras.layers.AveragePooling2D(6, strides=2)(x)  # the TF1 code's 6x6/2 pool
    np.testing.assert_array_equal(global_average_pool(x).numpy(), original.numpy()[:, 0, 0])
    bigger = tf.random.stateless_normal((2, 10, 7, 3), seed=(3, 4))
    np.testing.assert_allclose(global_average_pool(bigger).numpy(),
                               bigger.numpy().mean(axis=(1, 2)), rtol=1e-6, atol=1e-7)


def test_images_too_small_are_refused():
    with pytest.raises(ValueError, match=r"at least 12x12 pixels.*\(2, 8, 8, 3\)"):
        ConvLarge(width=4)(np.zeros((2, 8, 8, 3), np.float32))
