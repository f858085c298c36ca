"""The UCI hand-written digits (bundled, 1,797 images), prepared as 32x32x3 model inputs.

Small enough to train and test the whole pipeline on a CPU in seconds; provenance and licence
are in `datasets/data/README.md`.
"""

from __future__ import annotations

import os

import numpy as np

from tensorflow_mean_teacher.npz_files import UnreadableArrays, read_arrays

__all__ = ["DIGITS_PATH", "DIGITS_VALIDATION_SIZE", "load_digits", "prepare_digit_images"]

DIGITS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits.npz")

# Every TEST_EVERY-th example of each class (in file order) goes to the test split.
TEST_EVERY = 5
# About 10% of the 1,442 training images, like the SVHN and CIFAR-10 validation sets.
DIGITS_VALIDATION_SIZE = 144

_UPSAMPLE = 4  # 8x8 -> 32x32, the input size of the Mean Teacher ConvNet
_MAX_PIXEL = 16  # pixels count "on" cells of a 4x4 block


def prepare_digit_images(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) pixel counts 0..16 -> float32 (N, 32, 32, 3) in [0, 1].

    Each pixel becomes a 4x4 block (no interpolation) and the grey value is copied to the
    three colour channels the model expects.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise ValueError(f"images must have shape (N, 8, 8). Received shape: {images.shape}")
    upsampled = np.repeat(np.repeat(images, _UPSAMPLE, axis=1), _UPSAMPLE, axis=2)
    scaled = upsampled.astype(np.float32) / np.float32(_MAX_PIXEL)
    return np.repeat(scaled[..., None], 3, axis=-1)


def _read_digits(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """images and labels of the digits npz, or one ValueError naming the file and the fault.

    Read with allow_pickle=False: an object array (a pickle inside the npz) is refused, never
    unpickled.
    """
    restore = "Restore datasets/data/digits.npz from version control."
    try:
        arrays = read_arrays(path, ("images", "labels"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"The bundled digits file {path} is missing; it is part of the repository "
            "(datasets/data/digits.npz). Restore it from version control."
        ) from None
    except UnreadableArrays as error:
        raise ValueError(f"The digits file {path} is corrupt: {error}. {restore}") from error
    images, labels = arrays["images"], arrays["labels"]
    if (not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray)
            or images.ndim != 3 or images.shape[1:] != (8, 8) or labels.ndim != 1
            or len(labels) != len(images)):
        raise ValueError(
            f"The digits file {path} is corrupt: expected images (N, 8, 8) and N labels, found "
            f"images {np.shape(images)} and labels {np.shape(labels)}. {restore}"
        )
    for name, array, high in (("images", images, _MAX_PIXEL), ("labels", labels, 9)):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"The digits file {path} is corrupt: expected integer {name}, "
                             f"found dtype {array.dtype}. {restore}")
        if array.size and (array.min() < 0 or array.max() > high):
            raise ValueError(
                f"The digits file {path} is corrupt: expected {name} in 0..{high}, found "
                f"values {array.min()}..{array.max()}. {restore}"
            )
    return images, labels


def _test_mask(labels: np.ndarray) -> np.ndarray:
    """True for the examples whose rank within their class is TEST_EVERY-1 mod TEST_EVERY."""
    is_test = np.zeros(len(labels), dtype=bool)
    for klass in np.unique(labels):
        members = np.flatnonzero(labels == klass)
        is_test[members[TEST_EVERY - 1 :: TEST_EVERY]] = True
    return is_test


def load_digits(
    path: str | os.PathLike = DIGITS_PATH,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The bundled digits as `{'train': (x, y), 'test': (x, y)}`.

    x is float32 (N, 32, 32, 3) in [0, 1], y int32 0..9. The split is fixed and stratified
    without randomness: within each class, in file order, every 5th example (the 5th, 10th,
    ...) is a test example, the rest are training examples; both keep file order. That gives
    1,442 training and 355 test images; draw labeled/validation subsets of the training part
    with `partition_indices`.

    Raises FileNotFoundError if the file is missing, and a ValueError naming it if it is not the
    digits npz: unreadable or truncated, pickled (object) data, which is never unpickled,
    missing arrays, wrong shapes or dtypes, labels outside 0..9 or pixels outside 0..16.
    """
    images, labels = _read_digits(path)
    x = prepare_digit_images(images)
    y = labels.astype(np.int32)
    is_test = _test_mask(y)
    return {"train": (x[~is_test], y[~is_test]), "test": (x[is_test], y[is_test])}
