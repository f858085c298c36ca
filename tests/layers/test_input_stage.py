import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher.layers import (
    InputStage,
    flip_images,
    normalize_per_image,
    translate_images,
)
from tests.conftest import load_reference


@pytest.fixture(scope="module")
def augment():
    return load_reference("augment.npz")


def test_translate_equals_tf1(augment):
    out = translate_images(tf.constant(augment["translate/x"]),
                           tf.constant(augment["translate/vertical_offsets"]),
                           tf.constant(augment["translate/horizontal_offsets"]), scale=2)
    np.testing.assert_array_equal(out.numpy(), augment["translate/out_reflect"])


def test_translate_against_numpy_padding():
    x = np.random.RandomState(0).uniform(size=(3, 6, 7, 2)).astype(np.float32)
    v, h = np.array([2, -1, 0]), np.array([-2, 1, 2])
    padded = np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    expected = np.stack([padded[n, 2 - v[n]:8 - v[n], 2 - h[n]:9 - h[n]] for n in range(3)])
    np.testing.assert_array_equal(translate_images(x, v, h, 2).numpy(), expected)


def test_flip_equals_tf1(augment):
    out = flip_images(tf.constant(augment["flip/x"]), augment["flip/horizontal_choices"])
    np.testing.assert_array_equal(out.numpy(), augment["flip/out"])


def test_layer_norm_equals_tf1(augment):
    out = normalize_per_image(tf.constant(augment["layer_norm/x"])).numpy()
    np.testing.assert_allclose(out, augment["layer_norm/out"], rtol=1e-5, atol=1e-5)
    flat = out.reshape(4, -1).astype(np.float64)
    np.testing.assert_allclose(flat.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(flat.std(axis=1), 1.0, rtol=1e-4)


def test_inference_only_normalises():
    x = np.random.RandomState(1).uniform(size=(5, 32, 32, 3)).astype(np.float32)
    stage = InputStage(flip_horizontally=True, translate=True, input_noise=0.5, seed=3)
    np.testing.assert_array_equal(stage(x, training=False).numpy(),
                                  normalize_per_image(tf.constant(x)).numpy())
    raw = InputStage(normalize_input=False, input_noise=0.5)
    np.testing.assert_array_equal(raw(x, training=False).numpy(), x)


def test_training_perturbs_each_image_independently():
    x = np.random.RandomState(2).uniform(size=(64, 32, 32, 3)).astype(np.float32)
    stage = InputStage(normalize_input=False, flip_horizontally=True, translate=True,
                       input_noise=0.0, seed=5)
    out = stage(x, training=True).numpy()
    padded = np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    offsets = set()
    for n in range(64):
        candidates = {(v, h, f) for v in range(-2, 3) for h in range(-2, 3) for f in (0, 1)
                      if np.array_equal(out[n], (lambda c: c[:, ::-1] if f else c)(
                          padded[n, 2 - v:34 - v, 2 - h:34 - h]))}
        assert candidates, f"image {n} is not a flip+translation of its input"
        offsets |= candidates
    # 64 images: many distinct per-image draws, covering both flip states and the extremes.
    assert len({o[:2] for o in offsets}) >= 15
    assert {o[2] for o in offsets} == {0, 1}
    assert {o[0] for o in offsets} >= {-2, 2}


def test_gaussian_noise_scale():
    x = np.zeros((16, 32, 32, 3), np.float32)
    out = InputStage(normalize_input=False, translate=False, input_noise=0.15, seed=0)(
        x, training=True).numpy()
    assert out.std() == pytest.approx(0.15, rel=0.02)
    assert abs(out.mean()) < 0.005


def test_seeded_stages_repeat_and_differ():
    x = np.random.RandomState(3).uniform(size=(8, 32, 32, 3)).astype(np.float32)

    def draw(seed):
        return InputStage(flip_horizontally=True, seed=seed)(x, training=True).numpy()

    np.testing.assert_array_equal(draw(1), draw(1))
    assert not np.array_equal(draw(1), draw(2))


def test_validation():
    with pytest.raises(ValueError, match="input_noise must be >= 0. Received: input_noise=-1"):
        InputStage(input_noise=-1)
