"""CIFAR-10 input preprocessing of the Mean Teacher paper: global contrast normalisation + ZCA.

Both steps act on each image flattened to one vector. They commute with any fixed
reordering of the vector's entries, so flattening NHWC (instead of CIFAR's channel-planar
layout) gives the same whitened pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings

import numpy as np

from tensorflow_mean_teacher.npz_files import UnreadableArrays, read_arrays

__all__ = ["GCN_SCALE", "GCN_MIN_DIVISOR", "ZCA_FILTER_BIAS", "cached_gcn_zca", "gcn_zca"]

GCN_SCALE = 55.0
GCN_MIN_DIVISOR = 1e-8
ZCA_FILTER_BIAS = 0.1

# Rows per matrix product when whitening, to bound the float64 temporaries (~25 MB each).
_CHUNK_ROWS = 1024
# Bump when the cached computation changes, so stale cache files are not reused.
_CACHE_FORMAT_VERSION = 1


def _check_images(name: str, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"{name} must be NHWC images, a 4-D array. Received shape: {images.shape}")
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise ValueError(
            f"{name} must hold integer or float pixels. Received dtype: {images.dtype}"
        )
    return images


def _global_contrast_normalize(flat: np.ndarray) -> np.ndarray:
    """A float64 copy of `flat` with each row centred and scaled to L2 norm GCN_SCALE."""
    x = flat.astype(np.float64)  # a new array, so the in-place steps below are safe
    x -= x.mean(axis=1, keepdims=True)
    divisors = np.sqrt(np.einsum("ij,ij->i", x, x)) / GCN_SCALE
    # Constant images have norm 0: leave them at 0 rather than dividing by ~0.
    divisors[divisors < GCN_MIN_DIVISOR] = 1.0
    x /= divisors[:, None]
    return x


def _whitening_matrix(centred: np.ndarray) -> np.ndarray:
    """ZCA matrix (C + bias I)^-1/2 of the sample covariance C (ddof=1) of `centred` rows."""
    n_rows, n_features = centred.shape
    if n_rows - 1 < n_features:
        return _low_rank_whitening_matrix(centred)
    covariance = centred.T @ centred / (n_rows - 1)
    covariance[np.diag_indices_from(covariance)] += ZCA_FILTER_BIAS
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    return (eigenvectors * eigenvalues**-0.5) @ eigenvectors.T


def _low_rank_whitening_matrix(centred: np.ndarray) -> np.ndarray:
    """The same matrix from a thin SVD, when there are fewer images than pixels.

    C then has rank < n_features: on its null space the matrix is bias^-1/2, so only the
    singular directions of the data need a decomposition, which is much cheaper than an
    eigendecomposition of the full covariance (it matters for small data sets and tests).
    """
    _, singular_values, directions = np.linalg.svd(centred, full_matrices=False)
    variances = singular_values**2 / (len(centred) - 1)
    null_space_scale = ZCA_FILTER_BIAS**-0.5
    scales = (variances + ZCA_FILTER_BIAS) ** -0.5 - null_space_scale
    matrix = (directions.T * scales) @ directions
    matrix[np.diag_indices_from(matrix)] += null_space_scale
    return matrix


def _whiten(centred: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty((len(centred), matrix.shape[1]), dtype=np.float32)
    for start in range(0, len(centred), _CHUNK_ROWS):
        out[start : start + _CHUNK_ROWS] = centred[start : start + _CHUNK_ROWS] @ matrix
    return out.reshape(shape)


def gcn_zca(train_images: np.ndarray, test_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global contrast normalisation then ZCA whitening fitted on the training images.

    Args:
        train_images: (N, H, W, C) integer or float images; the whitening is fitted on them.
        test_images: (M, H, W, C) images transformed with the training statistics.

    Returns:
        `(train_x, test_x)`, float32 arrays of the input shapes (computed in float64).
    """
    train_images = _check_images("train_images", train_images)
    test_images = _check_images("test_images", test_images)
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            "train_images and test_images must have the same image shape. "
            f"Received: {train_images.shape[1:]} and {test_images.shape[1:]}"
        )
    if len(train_images) < 2:
        raise ValueError(
            "ZCA needs at least 2 training images to estimate a covariance. "
            f"Received: {len(train_images)}"
        )
    for name, images in (("train_images", train_images), ("test_images", test_images)):
        if not np.all(np.isfinite(images)):
            raise ValueError(f"{name} contains NaN or infinite values.")

    n_features = int(np.prod(train_images.shape[1:]))
    train = _global_contrast_normalize(train_images.reshape(len(train_images), n_features))
    train_mean = train.mean(axis=0)
    train -= train_mean
    matrix = _whitening_matrix(train)
    train_x = _whiten(train, matrix, train_images.shape)
    del train

    test = _global_contrast_normalize(test_images.reshape(len(test_images), n_features))
    test -= train_mean
    test_x = _whiten(test, matrix, test_images.shape)
    return train_x, test_x


def _cache_key(train_images: np.ndarray, test_images: np.ndarray) -> str:
    digest = hashlib.sha256()
    params = {
        "version": _CACHE_FORMAT_VERSION,
        "gcn_scale": GCN_SCALE,
        "gcn_min_divisor": GCN_MIN_DIVISOR,
        "zca_filter_bias": ZCA_FILTER_BIAS,
        "train": [list(train_images.shape), train_images.dtype.str],
        "test": [list(test_images.shape), test_images.dtype.str],
    }
    digest.update(json.dumps(params, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(train_images).data)
    digest.update(np.ascontiguousarray(test_images).data)
    return digest.hexdigest()[:24]


def _save_npz_atomically(path: str, **arrays: np.ndarray) -> None:
    # A crash mid-write must never leave a truncated file under the final name, and two
    # processes filling the same cache must not see each other's partial files.
    directory = os.path.dirname(path) or "."
    handle, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as temp_file:
            np.savez(temp_file, **arrays)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def _read_cache(path: str, train_shape: tuple[int, ...], test_shape: tuple[int, ...]
                ) -> tuple[np.ndarray, np.ndarray] | str:
    """The cached (train_x, test_x), or why the file cannot be them."""
    try:
        cached = read_arrays(path, ("train_x", "test_x"))
    except (OSError, UnreadableArrays) as error:
        return str(error)
    arrays = [cached["train_x"], cached["test_x"]]
    for name, array, shape in zip(("train_x", "test_x"), arrays, (train_shape, test_shape),
                                  strict=True):
        if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != np.float32:
            return (f"{name} is {np.shape(array)} {getattr(array, 'dtype', type(array).__name__)}"
                    f", expected {shape} float32")
    return arrays[0], arrays[1]


def cached_gcn_zca(
    train_images: np.ndarray, test_images: np.ndarray, cache_dir: str | os.PathLike | None
) -> tuple[np.ndarray, np.ndarray]:
    """`gcn_zca`, stored in `cache_dir` as `gcn_zca_<hash>.npz` and reused when present.

    The hash covers the input pixels, shapes, dtypes and preprocessing constants. With
    `cache_dir=None` nothing is cached. A cache file that cannot be the result (unreadable,
    truncated, an object array, other keys, shapes or dtypes) is never unpickled nor used: it
    is recomputed and replaced, with a warning naming the file and the fault.
    """
    train_images = _check_images("train_images", train_images)
    test_images = _check_images("test_images", test_images)
    if cache_dir is None:
        return gcn_zca(train_images, test_images)

    os.makedirs(cache_dir, exist_ok=True)
    file_name = f"gcn_zca_{_cache_key(train_images, test_images)}.npz"
    path = os.path.join(os.fspath(cache_dir), file_name)
    if os.path.exists(path):
        cached = _read_cache(path, train_images.shape, test_images.shape)
        if not isinstance(cached, str):
            return cached
        warnings.warn(
            f"The cached preprocessed file {path} is unusable ({cached}); recomputing it and "
            "replacing the file.",
            RuntimeWarning,
            stacklevel=2,
        )

    train_x, test_x = gcn_zca(train_images, test_images)
    _save_npz_atomically(path, train_x=train_x, test_x=test_x)
    return train_x, test_x
