"""CIFAR-10 with the Mean Teacher preprocessing (GCN + ZCA), from TFDS or the python batches.

The original CIFAR-10 runs train on globally contrast-normalised, ZCA-whitened images and
switch the model's own input normalisation off, so this loader whitens (see
`datasets.preprocessing`).
"""

from __future__ import annotations

import codecs
import os
import pickle

import numpy as np

from datasets.preprocessing import cached_gcn_zca
from datasets.tfds_source import load_tfds_splits

__all__ = ["CIFAR10_DIR", "CIFAR10_VALIDATION_SIZE", "load_cifar10", "read_cifar10_batches"]

CIFAR10_DIR = os.path.join("data", "images", "cifar", "cifar10")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
# 10% of the 50,000 training images, the validation size of the original experiments.
CIFAR10_VALIDATION_SIZE = 5000
_SOURCES = ("tfds", "files")
_PIXELS = 32 * 32 * 3

try:  # numpy >= 2 moved the pickling helpers
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer

# Everything a pickled dict of numpy arrays and lists can refer to. Refusing anything else
# keeps a tampered download from running code when it is unpickled.
_SAFE_GLOBALS = {
    # Python 3 writes bytes this way for protocols < 3.
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _module in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = _reconstruct
    _SAFE_GLOBALS[(f"{_module}.multiarray", "scalar")] = scalar
    _SAFE_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = _frombuffer


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a function or class a CIFAR-10 batch never holds."""


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        # Every global (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) is resolved here, so nothing
        # outside _SAFE_GLOBALS can be imported or called while unpickling.
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _files_hint(data_dir: str | os.PathLike) -> str:
    directory = os.path.join(os.fspath(data_dir), BATCHES_DIR)
    names = ", ".join(TRAIN_BATCHES + TEST_BATCHES)
    return (
        f"download {CIFAR10_URL} and extract it in {os.fspath(data_dir)}, so that "
        f"{directory} holds {names}"
    )


def _read_batch(path: str, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one python-version batch, or one ValueError naming the file.

    The pickle is read by `_ArrayUnpickler`, which can only build arrays, lists, dicts and
    bytes: a file whose pickle refers to anything else (a function that would run code) is
    refused before that reference is resolved.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 batch file not found: {path}. To fix it, {hint}.")
    try:
        with open(path, "rb") as file:
            # The batches were pickled by Python 2: 'bytes' keeps their str keys as bytes.
            batch = _ArrayUnpickler(file, encoding="bytes").load()
    except _RefusedGlobal as error:
        raise ValueError(
            f"CIFAR-10 batch file {path} is not a CIFAR-10 batch: its pickle refers to {error}, "
            "which could run code, so it was refused without loading it. Download the batches "
            f"again: {hint}."
        ) from None
    except Exception as error:
        raise ValueError(
            f"CIFAR-10 batch file {path} is corrupt or truncated "
            f"({type(error).__name__}: {error}). Download it again: {hint}."
        ) from error

    def corrupt(what: str) -> ValueError:
        return ValueError(f"CIFAR-10 batch file {path} is corrupt: {what}. Download it again: "
                          f"{hint}.")

    if not isinstance(batch, dict):
        raise corrupt(f"expected a dict with b'data' and b'labels', found {type(batch).__name__}")
    missing = [key for key in (b"data", b"labels") if key not in batch]
    if missing:
        raise corrupt(f"it has no {' or '.join(map(repr, missing))} entry "
                      f"(entries found: {sorted(map(repr, batch))})")
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"])
    except ValueError as error:  # ragged lists
        raise corrupt(f"its data or labels are not arrays ({error})") from error

    if data.ndim != 2 or data.shape[1] != _PIXELS or data.dtype != np.uint8:
        raise corrupt(f"expected data of shape (N, {_PIXELS}) and dtype uint8, found "
                      f"{data.shape} {data.dtype}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise corrupt(f"expected a list of integer labels, found shape {labels.shape} and "
                      f"dtype {labels.dtype}")
    if len(labels) != len(data):
        raise corrupt(f"it has {len(data)} images but {len(labels)} labels")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise corrupt(f"expected {len(data)} labels in 0..9, found shape {labels.shape} with "
                      f"values {labels.min()}..{labels.max()}")
    # Rows are the R plane, then G, then B, each 32x32 row-major; make them NHWC.
    images = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def read_cifar10_batches(
    data_dir: str | os.PathLike = CIFAR10_DIR,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The raw python-version batches as `{'train': (uint8 NHWC, labels), 'test': ...}`."""
    hint = _files_hint(data_dir)
    directory = os.path.join(os.fspath(data_dir), BATCHES_DIR)
    arrays = {}
    for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        parts = [_read_batch(os.path.join(directory, name), hint) for name in names]
        arrays[split] = (
            np.concatenate([images for images, _ in parts]),
            np.concatenate([labels for _, labels in parts]),
        )
    return arrays


def load_cifar10(
    *,
    source: str = "files",
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 as `{'train': (x, y), 'test': (x, y)}`, GCN + ZCA whitened.

    x is float32 (N, 32, 32, 3), whitened with statistics of the 50,000 training images;
    y int32 0..9. Rows are in the order of the original batch files whatever the source.

    Args:
        source: 'files' reads `cifar-10-batches-py/{data_batch_1..5,test_batch}` under
            `data_dir` (default `data/images/cifar/cifar10`); 'tfds' reads the TFDS `cifar10`
            dataset from `data_dir` (default: the TFDS default directory).
        cache_dir: if given, the whitened arrays are stored there and reused (whitening the
            full set takes a while); an unusable cache file is recomputed, with a warning.
        download: with source='tfds', download and prepare the dataset if it is missing.
    """
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {_SOURCES}. Received: source={source!r}")
    if download and source != "tfds":
        raise ValueError(
            "download=True needs source='tfds'; the batch files must be downloaded by hand. "
            f"Received: source={source!r}"
        )
    directory = CIFAR10_DIR if data_dir is None else data_dir
    if source == "files":
        raw = read_cifar10_batches(directory)
    else:
        raw = load_tfds_splits(
            "cifar10",
            ("train", "test"),
            data_dir=data_dir,
            download=download,
            files_hint=_files_hint(directory),
        )
    (train_images, train_labels), (test_images, test_labels) = raw["train"], raw["test"]
    train_x, test_x = cached_gcn_zca(train_images, test_images, cache_dir)
    return {
        "train": (train_x, train_labels.astype(np.int32)),
        "test": (test_x, test_labels.astype(np.int32)),
    }
