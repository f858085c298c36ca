"""The data of one experiment: a training set with n_labeled labels, and an evaluation set.

As the original `SVHN`/`Cifar10ZCA` classes: unless `test_phase`, a validation split of the
training set is the evaluation set (and the test set is not touched); with `test_phase` the
whole training set trains and the test set evaluates. Then `n_labeled` class-balanced rows keep
their label, the rest become -1, and for SVHN `n_extra_unlabeled` rows of 'extra' are added
unlabeled. All draws come from one `RandomState(data_seed)`, in the original order.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from datasets.partition import extra_unlabeled_indices, partition_indices, training_rows
from datasets.registry import DATASETS


@dataclasses.dataclass(frozen=True)
class SemiSupervisedData:
    train_images: np.ndarray
    train_labels: np.ndarray  # -1 for unlabeled rows; labeled rows first
    eval_images: np.ndarray
    eval_labels: np.ndarray
    normalize_input: bool  # whether the model should normalise each image (not after ZCA)

    @property
    def n_labeled(self) -> int:
        return int((self.train_labels != -1).sum())


def load_semi_supervised(name: str, *, n_labeled: int | str = "all", data_seed: int = 0,
                         test_phase: bool = False, n_extra_unlabeled: int = 0,
                         source: str = "files", data_dir: str | os.PathLike | None = None,
                         ) -> SemiSupervisedData:
    """Loads dataset `name` ('digits', 'svhn', 'cifar10') and splits it as the original did."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Available: {sorted(DATASETS)}")
    if n_extra_unlabeled and name != "svhn":
        raise ValueError(
            "Only SVHN has an extra unlabeled pool. "
            f"Received: n_extra_unlabeled={n_extra_unlabeled} for dataset {name!r}"
        )
    info = DATASETS[name]
    kwargs = {} if name == "digits" else {"source": source, "data_dir": data_dir}
    if n_extra_unlabeled:
        kwargs["include_extra"] = True
    splits = info.loader(**kwargs)
    images, labels = splits["train"]
    split = dict(n_labeled=n_labeled, validation_size=info.validation_size,
                 data_seed=data_seed, test_phase=test_phase)
    evaluation_idx, labeled_idx, unlabeled_idx = partition_indices(labels, **split)
    rows, train_labels = training_rows(labels, labeled_idx, unlabeled_idx)
    train_images = images[rows]
    if n_extra_unlabeled:
        extra_images, _ = splits["extra"]
        extra_rows = extra_unlabeled_indices(labels, n_extra=len(extra_images),
                                             n_extra_unlabeled=n_extra_unlabeled, **split)
        train_images = np.concatenate([train_images, extra_images[extra_rows]])
        train_labels = np.concatenate([train_labels, np.full(len(extra_rows), -1, np.int32)])
    if test_phase:
        eval_images, eval_labels = splits["test"]
    else:
        eval_images, eval_labels = images[evaluation_idx], labels[evaluation_idx]
    return SemiSupervisedData(train_images, train_labels, eval_images, eval_labels.astype(np.int32),
                              info.normalize_input)
