"""Reading whole splits of an image dataset from TensorFlow Datasets, in original file order."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["file_order", "load_tfds_splits"]


def file_order(ids: np.ndarray) -> np.ndarray:
    """Permutation that sorts TFDS examples back into the order of the original files.

    TFDS stores examples shuffled, but `svhn_cropped` and `cifar10` give each one an id
    such as b'train_000123' holding its position in the source files. Restoring that order
    makes `partition_indices` pick the same rows as with the original files.
    """
    positions = []
    for example_id in ids:
        text = example_id.decode() if isinstance(example_id, bytes) else str(example_id)
        prefix, _, number = text.rpartition("_")
        if not prefix or not number.isdigit():
            raise ValueError(
                "Expected TFDS example ids of the form '<split>_<position>', such as "
                f"'train_000123'. Received: {text!r}"
            )
        positions.append(int(number))
    return np.argsort(np.asarray(positions, dtype=np.int64), kind="stable")


def _missing_message(name: str, data_dir: str, files_hint: str) -> str:
    return (
        f"TensorFlow Datasets has no prepared '{name}' dataset in {data_dir}. Either call again "
        f"with download=True on a machine with internet access, or prepare it elsewhere with "
        f"`tfds build {name} --data_dir=<dir>` and copy <dir>/{name} into the data_dir, or "
        f"use source='files' ({files_hint})."
    )


def load_tfds_splits(
    name: str,
    splits: tuple[str, ...],
    *,
    data_dir: str | os.PathLike | None,
    download: bool,
    files_hint: str,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{split: (uint8 NHWC images, int64 labels)}` of a TFDS image dataset, in file order.

    Raises FileNotFoundError naming what to do when the dataset is not prepared and
    `download` is False, RuntimeError when a requested download fails.
    """
    # Imported here: tensorflow_datasets is slow to import and only this source needs it.
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    if not builder.is_prepared():
        if not download:
            raise FileNotFoundError(_missing_message(name, builder.data_dir, files_hint))
        try:
            builder.download_and_prepare()
        except Exception as error:
            raise RuntimeError(
                f"Downloading and preparing '{name}' with TensorFlow Datasets in "
                f"{builder.data_dir} failed ({type(error).__name__}: {error}). If this machine "
                f"has no internet access, use source='files' ({files_hint})."
            ) from error

    arrays = {}
    for split in splits:
        examples = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        order = file_order(examples["id"])
        arrays[split] = (examples["image"][order], examples["label"][order])
    return arrays
