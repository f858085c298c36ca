"""Checks of training and evaluation arrays, made before any training starts.

A run of days should fail in its first second when its data cannot be right.
"""

from __future__ import annotations

import numpy as np

IMAGE_SHAPE = (32, 32, 3)
_CHUNK = 4096  # rows checked at a time, so that SVHN extra (531k images) needs no copy


def check_images(images, *, what: str = "images") -> None:
    """float images of shape (N, 32, 32, 3), N > 0, every pixel finite."""
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"{what} must be a 4-D array (N, 32, 32, 3). Received shape: {shape}"
        )
    if tuple(shape[1:]) != IMAGE_SHAPE:
        raise ValueError(
            f"{what} must have shape (N, 32, 32, 3): 32x32 pixels, 3 channels (NHWC). "
            f"Received shape: {tuple(shape)}"
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
                  require_labeled: bool = True) -> None:
    check_images(images, what=f"{what} images")
    check_labels(labels, images.shape[0], num_classes, what=f"{what} labels",
                 require_labeled=require_labeled)
