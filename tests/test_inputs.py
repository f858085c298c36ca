import numpy as np
import pytest

from tensorflow_mean_teacher.inputs import check_dataset, check_images, check_labels


def images(n=4):
    return np.zeros((n, 32, 32, 3), np.float32)


@pytest.mark.parametrize("bad, error, message", [
    (np.zeros((32, 32, 3), np.float32), ValueError, r"4-D array \(N, 32, 32, 3\). Received shape"),
    (np.zeros((4, 28, 28, 3), np.float32), ValueError, r"Received shape: \(4, 28, 28, 3\)"),
    (np.zeros((4, 32, 32, 1), np.float32), ValueError, "3 channels"),
    (np.zeros((4, 3, 32, 32), np.float32), ValueError, "NHWC"),
    (np.zeros((0, 32, 32, 3), np.float32), ValueError, "empty"),
    (np.zeros((4, 32, 32, 3), np.uint8), TypeError, "floating point .* dtype uint8"),
])
def test_bad_images_are_refused(bad, error, message):
    with pytest.raises(error, match=message):
        check_images(bad)


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
