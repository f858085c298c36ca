import numpy as np
import pytest

from tensorflow_mean_teacher.inputs import check_dataset, check_images, check_labels


def images(n=4):
    return np.zeros((n, 32, 32, 3), np.float32)


@pytest.mark.parametrize("bad, error, message", [
    (np.zeros((32, 32, 3), np.float32), ValueError,
     r"4-D array \(N, height, width, channels\) \(NHWC\). Received: shape=\(32, 32, 3\)"),
    (np.zeros((4, 0, 32, 3), np.float32), ValueError,
     r"at least 1 \(NHWC\). Received: shape=\(4, 0, 32, 3\)"),
    (np.zeros((4, 32, 32, 0), np.float32), ValueError, r"Received: shape=\(4, 32, 32, 0\)"),
    (np.zeros((0, 32, 32, 3), np.float32), ValueError, "empty"),
    (np.zeros((4, 32, 32, 3), np.uint8), TypeError, "floating point .* dtype uint8"),
])
def test_bad_images_are_refused(bad, error, message):
    with pytest.raises(error, match=message):
        check_images(bad)


@pytest.mark.parametrize("shape", [(4, 28, 28, 1), (2, 32, 32, 3), (3, 5, 7, 4), (1, 1, 1, 1)])
def test_any_float_nhwc_shape_passes(shape):
    check_images(np.zeros(shape, np.float32))
    check_images(np.zeros(shape, np.float64), image_shape=shape[1:])


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 28, 28, 3), np.float32),
     r"shape \(N, 32, 32, 3\): 32x32 pixels, 3 channels \(NHWC\). "
     r"Received: shape=\(4, 28, 28, 3\), expected image_shape=\(32, 32, 3\)"),
    (np.zeros((4, 32, 32, 1), np.float32), r"3 channels .*shape=\(4, 32, 32, 1\)"),
    (np.zeros((4, 3, 32, 32), np.float32), r"NHWC.*shape=\(4, 3, 32, 32\)"),
    (np.zeros((32, 32, 3), np.float32), r"4-D array \(N, 32, 32, 3\) \(NHWC\)"),
])
def test_the_expected_image_shape_is_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        check_images(bad, image_shape=(32, 32, 3))


def test_a_one_channel_expectation_is_named_in_the_singular():
    with pytest.raises(ValueError, match=r"28x28 pixels, 1 channel \(NHWC\)"):
        check_images(np.zeros((2, 28, 28, 3), np.float32), image_shape=(28, 28, 1))


@pytest.mark.parametrize("image_shape", [(32, 32), (32, 0, 3), (32.0, 32, 3), "32,32,3", 32])
def test_a_bad_image_shape_argument_is_refused(image_shape):
    with pytest.raises(ValueError, match=r"image_shape must be \(height, width, channels\)"):
        check_images(images(), image_shape=image_shape)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_name_the_image(value):
    x = images(5000)  # more than one checked chunk
    x[4500, 3, 4, 1] = value
    with pytest.raises(ValueError, match="NaN or infinite pixels \\(first in image 4500\\)"):
        check_images(x)


@pytest.mark.parametrize("labels, error, message", [
    (np.array([0, 1, 10, 2]), ValueError, r"in \[-1, 10\).*Received: 10 \(first bad row 2\)"),
    (np.array([0, -2, 1, 2]), ValueError, r"Received: -2 \(first bad row 1\)"),
    (np.array([0.0, 1.0, 2.0, 3.0]), TypeError, "must be integers"),
    (np.array([0, 1, 2]), ValueError, r"shape \(4,\), one per image"),
    (np.array([-1, -1, -1, -1]), ValueError, "no labeled example"),
])
def test_bad_labels_are_refused(labels, error, message):
    with pytest.raises(error, match=message):
        check_labels(labels, 4, 10)


def test_a_good_dataset_passes_and_messages_say_which_set():
    check_dataset(images(), np.array([0, -1, 9, -1]), 10, what="training")
    with pytest.raises(ValueError, match="evaluation labels must be in"):
        check_dataset(images(), np.array([0, 1, 2, 11]), 10, what="evaluation")
    with pytest.raises(ValueError, match=r"evaluation images must have shape \(N, 28, 28, 1\)"):
        check_dataset(images(), np.array([0, 1, 2, 3]), 10, what="evaluation",
                      image_shape=(28, 28, 1))
