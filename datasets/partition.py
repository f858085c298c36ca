"""Seeded split of a labelled training set into evaluation, labeled and unlabeled rows.

The random draws follow the Mean Teacher TF1 experiments exactly, so that a given `data_seed`
selects the same validation rows and the same labeled examples as the original runs: one
`np.random.RandomState(data_seed)` is consumed by (1) shuffling a boolean validation mask, then
(2) one `choice(..., replace=False)` per class, classes in ascending order.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "extra_unlabeled_indices",
    "partition_indices",
    "training_rows",
]

# `n_labeled` values meaning "keep every training label".
_ALL_LABELED = ("all", None)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array. Received shape: {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids. Received dtype: {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(
            "labels must be non-negative class ids (unlabeled rows are chosen by "
            f"partition_indices, not passed in). Received a label of {labels.min()}"
        )
    return labels


def _check_count(name: str, value: object) -> int:
    # bool is an int subclass, but `True` labeled examples is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer. Received: {name}={value!r}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative. Received: {name}={value}")
    return int(value)


def _random_mask(n_rows: int, n_true: int, rng: np.random.RandomState) -> np.ndarray:
    # Shuffling a mask (rather than drawing indices) is what the original did; the
    # RandomState stream only matches if we do the same.
    mask = np.zeros(n_rows, dtype=bool)
    mask[:n_true] = True
    rng.shuffle(mask)
    return mask


def _balanced_positions(
    labels: np.ndarray, n_labeled: int, rng: np.random.RandomState
) -> np.ndarray:
    """Positions into `labels` of `n_labeled // n_classes` random rows per class, class by class."""
    classes, class_counts = np.unique(labels, return_counts=True)
    n_classes = len(classes)
    if n_classes == 0:
        raise ValueError(
            f"Cannot choose n_labeled={n_labeled} labeled examples: no training rows are left."
        )
    if n_labeled % n_classes != 0:
        raise ValueError(
            "n_labeled must be divisible by the number of classes "
            f"({n_classes}). Received: n_labeled={n_labeled}"
        )
    per_class = n_labeled // n_classes
    smallest = int(np.argmin(class_counts))
    if class_counts[smallest] < per_class:
        raise ValueError(
            f"n_labeled={n_labeled} needs {per_class} labeled examples per class, but class "
            f"{classes[smallest]} has only {class_counts[smallest]} training rows."
        )
    chosen = [
        rng.choice(np.flatnonzero(labels == klass), per_class, replace=False) for klass in classes
    ]
    return np.concatenate(chosen).astype(np.int64)


def _partition(
    labels: np.ndarray,
    n_labeled: int | str | None,
    validation_size: int,
    test_phase: bool,
    rng: np.random.RandomState,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_rows = len(labels)
    if test_phase:
        # The caller evaluates on the test set, so every training row stays for training.
        evaluation_idx = np.zeros(0, dtype=np.int64)
        training_idx = np.arange(n_rows, dtype=np.int64)
    else:
        if validation_size > n_rows:
            raise ValueError(
                f"validation_size must be at most the number of rows ({n_rows}). "
                f"Received: validation_size={validation_size}"
            )
        is_validation = _random_mask(n_rows, validation_size, rng)
        evaluation_idx = np.flatnonzero(is_validation).astype(np.int64)
        training_idx = np.flatnonzero(~is_validation).astype(np.int64)

    if n_labeled in _ALL_LABELED:
        return evaluation_idx, training_idx, np.zeros(0, dtype=np.int64)

    if n_labeled > len(training_idx):
        raise ValueError(
            f"n_labeled must be at most the number of training rows ({len(training_idx)}"
            f" = {n_rows} rows - {len(evaluation_idx)} validation rows). "
            f"Received: n_labeled={n_labeled}"
        )
    labeled_pos = _balanced_positions(labels[training_idx], n_labeled, rng)
    unlabeled_pos = np.setdiff1d(np.arange(len(training_idx)), labeled_pos)
    return evaluation_idx, training_idx[labeled_pos], training_idx[unlabeled_pos]


def _check_arguments(
    n_labeled: int | str | None, validation_size: int, data_seed: int
) -> tuple[int | str | None, int, int]:
    if isinstance(n_labeled, str) and n_labeled != "all":
        raise ValueError(
            f"n_labeled must be 'all', None or a non-negative integer. Received: {n_labeled!r}"
        )
    if n_labeled not in _ALL_LABELED:
        n_labeled = _check_count("n_labeled", n_labeled)
    validation_size = _check_count("validation_size", validation_size)
    data_seed = _check_count("data_seed", data_seed)
    if data_seed >= 2**32:
        raise ValueError(f"data_seed must be below 2**32. Received: data_seed={data_seed}")
    return n_labeled, validation_size, data_seed


def partition_indices(
    labels: np.ndarray,
    *,
    n_labeled: int | str | None = "all",
    validation_size: int,
    data_seed: int,
    test_phase: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits the rows of a training set as the Mean Teacher experiments do.

    Args:
        labels: 1-D integer class ids of the full training set (before any split).
        n_labeled: how many training rows keep their label, the same number from every class;
            'all' or None keeps every label.
        validation_size: rows held out for evaluation when `test_phase` is False; ignored when
            it is True.
        data_seed: seed of the `np.random.RandomState` that makes every draw.
        test_phase: if True, nothing is held out (the caller evaluates on the test set).

    Returns:
        `(evaluation_idx, labeled_idx, unlabeled_idx)`, int64 indices into `labels`:
        evaluation rows ascending (empty when `test_phase`), labeled rows in the order they
        were drawn (class by class), unlabeled rows ascending. Together they cover every row
        exactly once.
    """
    labels = _check_labels(labels)
    n_labeled, validation_size, data_seed = _check_arguments(n_labeled, validation_size, data_seed)
    rng = np.random.RandomState(data_seed)
    return _partition(labels, n_labeled, validation_size, bool(test_phase), rng)


def extra_unlabeled_indices(
    labels: np.ndarray,
    *,
    n_extra: int,
    n_extra_unlabeled: int,
    n_labeled: int | str | None = "all",
    validation_size: int,
    data_seed: int,
    test_phase: bool = False,
) -> np.ndarray:
    """Rows of an extra unlabeled pool (SVHN 'extra') added to the training set, ascending.

    The original draws them from the same RandomState right after `partition_indices`' draws,
    so this replays those draws with the same arguments and then takes a random subset of
    `n_extra_unlabeled` of the `n_extra` pool rows.
    """
    labels = _check_labels(labels)
    n_labeled, validation_size, data_seed = _check_arguments(n_labeled, validation_size, data_seed)
    n_extra = _check_count("n_extra", n_extra)
    n_extra_unlabeled = _check_count("n_extra_unlabeled", n_extra_unlabeled)
    if n_extra_unlabeled > n_extra:
        raise ValueError(
            f"n_extra_unlabeled must be at most the size of the extra pool ({n_extra}). "
            f"Received: n_extra_unlabeled={n_extra_unlabeled}"
        )
    rng = np.random.RandomState(data_seed)
    _partition(labels, n_labeled, validation_size, bool(test_phase), rng)
    if n_extra_unlabeled == 0:
        # The original skipped the draw entirely in this case.
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(_random_mask(n_extra, n_extra_unlabeled, rng)).astype(np.int64)


def training_rows(
    labels: np.ndarray, labeled_idx: np.ndarray, unlabeled_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Row order and labels of the training stream: labeled rows first, then unlabeled as -1.

    Returns `(rows, training_labels)`; gather the images with `images[rows]`.
    """
    labels = np.asarray(labels)
    labeled_idx = np.asarray(labeled_idx, dtype=np.int64)
    unlabeled_idx = np.asarray(unlabeled_idx, dtype=np.int64)
    rows = np.concatenate([labeled_idx, unlabeled_idx])
    training_labels = np.full(len(rows), -1, dtype=np.int32)
    training_labels[: len(labeled_idx)] = labels[labeled_idx]
    return rows, training_labels
