"""SVHN (cropped 32x32 digits), from TensorFlow Datasets or the original .mat files.

Pixels stay at their raw 0..255 values (as float32): the Mean Teacher SVHN runs feed them
unscaled and let the model normalise each image (`normalize_input`).
"""

from __future__ import annotations

import os

import numpy as np

from datasets.tfds_source import load_tfds_splits

__all__ = ["SVHN_DIR", "SVHN_FILES", "SVHN_VALIDATION_SIZE", "load_svhn"]

SVHN_DIR = os.path.join("data", "images", "svhn")
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
# 10% of the 73,257 training images, the validation size of the original experiments.
SVHN_VALIDATION_SIZE = 7325
_SOURCES = ("tfds", "files")


def _files_hint(directory: str | os.PathLike, splits: tuple[str, ...]) -> str:
    names = ", ".join(SVHN_FILES[split] for split in splits)
    return f"download {names} from {SVHN_URL} into {os.fspath(directory)}"


def _read_mat(path: str, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """X and y of one SVHN .mat file, or one ValueError naming the file and what is wrong.

    scipy's MATLAB reader builds arrays only (no pickle, nothing is run); anything else than
    the layout of the real files (X uint8 (32, 32, 3, N), y (N, 1) of the digits 1..10) is
    refused before use.
    """
    # Imported here so that the other loaders work without scipy.
    import scipy.io

    if not os.path.isfile(path):
        raise FileNotFoundError(f"SVHN file not found: {path}. To fix it, {hint}.")
    download_again = f"Download it again from {SVHN_URL}."
    try:
        contents = scipy.io.loadmat(path)
    except Exception as error:
        raise ValueError(
            f"SVHN file {path} is corrupt or truncated ({type(error).__name__}: {error}). "
            f"{download_again}"
        ) from error
    missing = [key for key in ("X", "y") if key not in contents]
    if missing:
        found = sorted(key for key in contents if not key.startswith("__")) or "none"
        raise ValueError(
            f"SVHN file {path} is corrupt: it has no {' or '.join(map(repr, missing))} array "
            f"(arrays found: {found}). {download_again}"
        )
    x, y = np.asarray(contents["X"]), np.asarray(contents["y"])

    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise ValueError(
            f"SVHN file {path} is corrupt: expected X of shape (32, 32, 3, N) and dtype uint8, "
            f"found {x.shape} {x.dtype}. {download_again}"
        )
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(
            f"SVHN file {path} is corrupt: expected numeric labels y, found dtype {y.dtype}. "
            f"{download_again}"
        )
    y = y.reshape(-1)
    # Also refuses NaN and fractional labels, which a min/max check would let through.
    valid = (y >= 1) & (y <= 10) & (y == np.round(y))
    if len(y) != x.shape[3] or not valid.all():
        bad = y[~valid]
        found = f"{len(y)} labels" + (f", {len(bad)} of them outside 1..10 (first: {bad[0]})"
                                      if len(bad) else " in 1..10")
        raise ValueError(
            f"SVHN file {path} is corrupt: expected {x.shape[3]} labels in 1..10, found "
            f"{found}. {download_again}"
        )
    images = np.transpose(x, (3, 0, 1, 2))
    labels = y.astype(np.int64) % 10  # the files label the digit 0 as 10
    return images, labels


def load_svhn(
    *,
    source: str = "files",
    data_dir: str | os.PathLike | None = None,
    include_extra: bool = False,
    download: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """SVHN as `{'train': (x, y), 'test': (x, y)}`, plus `'extra'` if `include_extra`.

    x is float32 (N, 32, 32, 3) with the raw pixel values 0..255, y int32 digits 0..9. Rows
    are in the order of the original .mat files whatever the source, so `partition_indices`
    selects the same examples either way.

    Args:
        source: 'files' reads `train_32x32.mat`, `test_32x32.mat` (and `extra_32x32.mat`) from
            `data_dir` (default `data/images/svhn`); 'tfds' reads the TFDS `svhn_cropped`
            dataset from `data_dir` (default: the TFDS default directory).
        include_extra: also load the 531,131 'extra' images (about 6.5 GB as float32).
        download: with source='tfds', download and prepare the dataset if it is missing.
    """
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {_SOURCES}. Received: source={source!r}")
    if download and source != "tfds":
        raise ValueError(
            "download=True needs source='tfds'; the .mat files must be downloaded by hand. "
            f"Received: source={source!r}"
        )
    splits = ("train", "test", "extra") if include_extra else ("train", "test")
    directory = SVHN_DIR if data_dir is None else data_dir
    hint = _files_hint(directory, splits)

    if source == "files":
        raw = {
            split: _read_mat(os.path.join(os.fspath(directory), SVHN_FILES[split]), hint)
            for split in splits
        }
    else:
        raw = load_tfds_splits(
            "svhn_cropped", splits, data_dir=data_dir, download=download, files_hint=hint
        )
    return {
        split: (images.astype(np.float32), labels.astype(np.int32))
        for split, (images, labels) in raw.items()
    }
