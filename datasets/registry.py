"""Datasets by name, with the validation-set size their experiments hold out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from datasets.cifar10 import CIFAR10_VALIDATION_SIZE, load_cifar10
from datasets.digits import DIGITS_VALIDATION_SIZE, load_digits
from datasets.svhn import SVHN_VALIDATION_SIZE, load_svhn

__all__ = ["DATASETS", "DatasetInfo", "load"]


class DatasetInfo(NamedTuple):
    loader: Callable[..., dict[str, tuple[np.ndarray, np.ndarray]]]
    validation_size: int
    # Whether the model should normalise each input image (False when the loader already
    # whitens the data, as for CIFAR-10's ZCA).
    normalize_input: bool


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(load_digits, DIGITS_VALIDATION_SIZE, normalize_input=True),
    "svhn": DatasetInfo(load_svhn, SVHN_VALIDATION_SIZE, normalize_input=True),
    "cifar10": DatasetInfo(load_cifar10, CIFAR10_VALIDATION_SIZE, normalize_input=False),
}


def load(name: str, **kwargs: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`DATASETS[name].loader(**kwargs)`, e.g. `load('svhn', source='tfds')`."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Available: {sorted(DATASETS)}")
    return DATASETS[name].loader(**kwargs)
