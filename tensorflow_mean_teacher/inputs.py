"""Checks of training and evaluation arrays, made before any training starts.

A run of days should fail in its first second when its data cannot be right.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

# The images of the original experiments (SVHN, CIFAR-10) and of the bundled digits.
_CHUNK = 4096  # rows checked at a time, so that SVHN extra (531k images) needs no copy


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(image_shape) if isinstance(image_shape, Sequence) else None
    if values is None or len(values) != 3 or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
            for v in values):
        raise ValueError(
            "image_shape must be (height, width, channels), three integers >= 1. "
            f"Received: image_shape={image_shape!r}")
    return tuple(int(v) for v in values)


def check_images(images, *, what: str = "images",
                 image_shape: Sequence[int] | None = None) -> None:
    """float NHWC images (N, H, W, C), N > 0, H, W, C >= 1, every pixel finite.

    With `image_shape=(H, W, C)`, the images must also have exactly that shape (e.g. the
    evaluation images that of the training images).
    """
    expected = None if image_shape is None else _check_image_shape(image_shape)
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
        wanted = "(N, height, width, channels)" if expected is None else \
            "(N, {}, {}, {})".format(*expected)
        raise ValueError(
            f"{what} must be a 4-D array {wanted} (NHWC). Received: shape={shape}"
        )
    shape = tuple(int(n) for n in shape)
    if min(shape[1:]) < 1:
        raise ValueError(
            f"{what} must have a height, width and number of channels of at least 1 (NHWC). "
            f"Received: shape={shape}"
        )
    if expected is not None and shape[1:] != expected:
        height, width, channels = expected
        raise ValueError(
            f"{what} must have shape (N, {height}, {width}, {channels}): {height}x{width} "
            f"pixels, {channels} channel{'s' * (channels != 1)} (NHWC). Received: "
            f"shape={shape}, expected image_shape={expected}"
        )
    if shape[0] == 0:
        raise ValueError(f"{what} is empty (0 images).")
    dtype = np.dtype(images.dtype)
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(
            f"{what} must be floating point (the model does no implicit scaling). Received "
            f"dtype {dtype}. Convert explicitly, e.g. images.astype('float32') / 255 for "
            "uint8 pixels, or use the project's dataset loaders."
        )
    for start in range(0, shape[0], _CHUNK):
        chunk = np.asarray(images[start:start + _CHUNK])
        finite = np.isfinite(chunk)
        if not finite.all():
            row = start + int(np.argwhere(~finite)[0][0])
            raise ValueError(
                f"{what} contains NaN or infinite pixels (first in image {row}). "
                "Every pixel must be finite."
            )


def check_labels(labels, num_images: int, num_classes: int, *, what: str = "labels",
                 require_labeled: bool = True) -> None:
    """Integer labels in [-1, num_classes), one per image, with some labeled (not -1)."""
    labels = np.asarray(labels)
    if labels.shape != (num_images,):
        raise ValueError(
            f"{what} must have shape ({num_images},), one per image. "
            f"Received shape: {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{what} must be integers. Received dtype: {labels.dtype}")
    bad = (labels < -1) | (labels >= num_classes)
    if bad.any():
        value = int(labels[bad][0])
        raise ValueError(
            f"{what} must be in [-1, {num_classes}): class ids 0..{num_classes - 1}, or -1 "
            f"for unlabeled. Received: {value} (first bad row {int(np.flatnonzero(bad)[0])})"
        )
    if require_labeled and not (labels != -1).any():
        raise ValueError(
            f"{what} has no labeled example (all {num_images} are -1). Mean Teacher needs "
            "some labeled examples."
        )


def check_dataset(images, labels, num_classes: int, *, what: str,
                  require_labeled: bool = True,
                  image_shape: Sequence[int] | None = None) -> None:
    """`check_images` and `check_labels` of one set; messages start with `what`."""
    check_images(images, what=f"{what} images", image_shape=image_shape)
    check_labels(labels, images.shape[0], num_classes, what=f"{what} labels",
                 require_labeled=require_labeled)
