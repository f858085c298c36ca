"""The data of one experiment: a training set with n_labeled labels, and an evaluation set.

As the original `SVHN`/`Cifar10ZCA` classes: unless `test_phase`, a validation split of the
training set is the evaluation set (and the test set is not touched); with `test_phase` the
whole training set trains and the test set evaluates. Then `n_labeled` class-balanced rows keep
their label, the rest become -1, and for SVHN `n_extra_unlabeled` rows of 'extra' are added
unlabeled. All draws come from one `RandomState(data_seed)`, in the original order.

`semi_supervised_from_arrays` makes the same split of any arrays (your own images), where some
rows may come unlabeled (-1) already; `semi_supervised_from_folder` of a folder of images.
"""

from __future__ import annotations

import dataclasses
import numbers
import os

import numpy as np

from datasets.image_folder import UNLABELED_DIR, load_image_folder
from datasets.partition import extra_unlabeled_indices, partition_indices, training_rows
from datasets.registry import DATASETS


@dataclasses.dataclass(frozen=True)
class SemiSupervisedData:
    train_images: np.ndarray
    train_labels: np.ndarray  # -1 for unlabeled rows; labeled rows first
    eval_images: np.ndarray
    eval_labels: np.ndarray
    normalize_input: bool  # whether the model should normalise each image (not after ZCA)
    num_classes: int = 10  # labels are in [0, num_classes) (or -1)
    class_names: tuple[str, ...] | None = None  # the name of each class id, when known

    @property
    def n_labeled(self) -> int:
        return int((self.train_labels != -1).sum())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of every image."""
        return tuple(int(n) for n in self.train_images.shape[1:])


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
                              info.normalize_input, num_classes=10)


# Held out for validation when no evaluation set is given: the share of the original
# experiments (SVHN 7,325 of 73,257, CIFAR-10 5,000 of 50,000, digits 144 of 1,442, rounded down).
DEFAULT_VALIDATION_FRACTION = 0.1


def _check_images(name: str, images: object) -> np.ndarray:
    images = images if isinstance(images, np.ndarray) else np.asarray(images)
    if images.ndim != 4 or min(images.shape[1:]) < 1:
        raise ValueError(f"{name} must be a 4-D array (N, height, width, channels) (NHWC). "
                         f"Received: {name}.shape={images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"{name} must be floating point, e.g. pixels in [0, 1]. "
                        f"Received: {name}.dtype={images.dtype}")
    return images


def _check_label_array(name: str, labels: object, n_images: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n_images,):
        raise ValueError(f"{name} must be a 1-D array with one label per image ({n_images}). "
                         f"Received: {name}.shape={labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{name} must be integer class ids. Received: {name}.dtype={labels.dtype}")
    return labels


def _check_num_classes(num_classes: object, labels: np.ndarray,
                       eval_labels: np.ndarray | None) -> int:
    known = labels[labels != -1]
    if eval_labels is not None:
        known = np.concatenate([known, eval_labels])
    if num_classes is None:
        # Inferred: the largest class id seen, plus one.
        num_classes = int(known.max()) + 1 if known.size else 0
    elif isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"num_classes must be an integer. Received: num_classes={num_classes!r}")
    if num_classes < 2:
        raise ValueError("Classification needs at least 2 classes (labels 0 and 1 at least). "
                         f"Received: num_classes={num_classes}")
    return int(num_classes)


def _check_label_range(name: str, labels: np.ndarray, low: int, num_classes: int) -> None:
    bad = (labels < low) | (labels >= num_classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        allowed = f"[-1, {num_classes}) (-1 for unlabeled)" if low == -1 else \
            f"[0, {num_classes}) (evaluation images must be labeled)"
        raise ValueError(f"{name} must be in {allowed}. Received: {name}[{row}]={labels[row]}")


def _validation_rows(validation_size: object, n_labeled_rows: int) -> int:
    if validation_size is None:
        validation_size = DEFAULT_VALIDATION_FRACTION
    if isinstance(validation_size, bool) or not isinstance(validation_size, numbers.Real):
        raise TypeError("validation_size must be a number of rows or a fraction in (0, 1). "
                        f"Received: validation_size={validation_size!r}")
    if isinstance(validation_size, numbers.Integral):
        rows = int(validation_size)
    elif 0 < validation_size < 1:
        rows = int(validation_size * n_labeled_rows)  # rounded down, as the original sizes
    else:
        raise ValueError("validation_size must be a number of rows or a fraction in (0, 1). "
                         f"Received: validation_size={validation_size!r}")
    if not 1 <= rows < n_labeled_rows:
        raise ValueError(
            f"Without eval_images, the validation set is held out from the {n_labeled_rows} "
            f"labeled rows: it needs at least 1 of them and must leave at least 1 for "
            f"training, but validation_size={validation_size!r} holds out {rows}. Pass another "
            "validation_size, or an evaluation set (eval_images, eval_labels; --validation_size "
            "and --eval_dir in runners.train_images).")
    return rows


def semi_supervised_from_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    eval_images: np.ndarray | None = None,
    eval_labels: np.ndarray | None = None,
    validation_size: int | float | None = None,
    n_labeled: int | str = "all",
    data_seed: int = 0,
    num_classes: int | None = None,
    normalize_input: bool = True,
) -> SemiSupervisedData:
    """Splits your own arrays as the Mean Teacher experiments split theirs.

    One `np.random.RandomState(data_seed)` makes every draw, in the original order: without an
    evaluation set it first holds out `validation_size` random labeled rows as the evaluation
    set, then it keeps `n_labeled` labels, the same number from every class, drawn class by class
    from the remaining labeled rows; the other labeled rows become unlabeled. Rows labeled -1 on
    input stay unlabeled and are never drawn. For data whose every row is labeled this is the
    split of `load_semi_supervised` (`datasets.partition.partition_indices`): the same seed
    selects the same rows.

    Args:
        images: float (N, H, W, C) training images, any size and number of channels.
        labels: (N,) integer class ids in [0, num_classes), -1 for unlabeled rows.
        eval_images, eval_labels: an evaluation set (every image labeled), or both None to
            evaluate on a validation split of the labeled rows instead.
        validation_size: without an evaluation set, the labeled rows held out for validation:
            a number of rows, or a fraction in (0, 1) of the labeled rows (rounded down);
            None means 0.1. Must be None when an evaluation set is given.
        n_labeled: how many training rows keep their label ('all': every labeled row left).
            Must be divisible by `num_classes`.
        data_seed: seed of the split.
        num_classes: the number of classes; None infers it as the largest class id + 1.
        normalize_input: whether the model should normalise each input image (True, as for
            SVHN; False for inputs whitened beforehand).

    Returns:
        `SemiSupervisedData` whose training rows are the kept labeled rows first (in the order
        drawn, class by class), then the labeled rows that lost their label (in input order),
        then the rows that were unlabeled on input (in input order), labeled -1.
    """
    images = _check_images("images", images)
    labels = _check_label_array("labels", labels, len(images))
    if (eval_images is None) != (eval_labels is None):
        raise ValueError("Pass both eval_images and eval_labels, or neither (to hold out a "
                         f"validation split). Received: eval_images is "
                         f"{'None' if eval_images is None else 'given'}, eval_labels is "
                         f"{'None' if eval_labels is None else 'given'}")
    has_eval = eval_images is not None
    if has_eval:
        eval_images = _check_images("eval_images", eval_images)
        eval_labels = _check_label_array("eval_labels", eval_labels, len(eval_images))
        if eval_images.shape[1:] != images.shape[1:]:
            raise ValueError(
                "eval_images must have the (height, width, channels) of images, "
                f"{images.shape[1:]}. Received: eval_images.shape={eval_images.shape}")
        if len(eval_images) == 0:
            raise ValueError("eval_images is empty. Pass an evaluation set with images, or "
                             "none to hold out a validation split.")
        if validation_size is not None:
            raise ValueError("validation_size is for holding out a validation split when no "
                             "evaluation set is given; here eval_images are given. Received: "
                             f"validation_size={validation_size!r}")
    labeled_rows = np.flatnonzero(labels != -1)
    if len(labeled_rows) == 0:
        raise ValueError(f"labels has no labeled row (all {len(labels)} are -1). Mean Teacher "
                         "needs some labeled examples.")
    num_classes = _check_num_classes(num_classes, labels, eval_labels)
    _check_label_range("labels", labels, -1, num_classes)
    if has_eval:
        _check_label_range("eval_labels", eval_labels, 0, num_classes)
    n_validation = 0 if has_eval else _validation_rows(validation_size, len(labeled_rows))
    known = labels[labeled_rows]
    # Split the labeled rows only: rows unlabeled on input take part in no draw.
    split = dict(validation_size=n_validation, data_seed=data_seed, test_phase=has_eval)
    if n_labeled not in ("all", None):
        _check_n_labeled(n_labeled, len(known), n_validation, num_classes)
        # The same seed holds out the same validation rows first: see what they leave.
        _, training_pos, _ = partition_indices(known, n_labeled="all", **split)
        _check_per_class(known[training_pos], n_labeled, n_validation, num_classes)
    evaluation_pos, labeled_pos, unlabeled_pos = partition_indices(
        known, n_labeled=n_labeled, **split)
    rows, train_labels = training_rows(labels, labeled_rows[labeled_pos],
                                       labeled_rows[unlabeled_pos])
    rows = np.concatenate([rows, np.flatnonzero(labels == -1)])
    train_labels = np.concatenate(
        [train_labels, np.full(len(rows) - len(train_labels), -1, np.int32)])
    if not has_eval:
        eval_images, eval_labels = images[labeled_rows[evaluation_pos]], known[evaluation_pos]
    return SemiSupervisedData(images[rows], train_labels, eval_images,
                              eval_labels.astype(np.int32), bool(normalize_input),
                              num_classes=num_classes)


def _check_n_labeled(n_labeled: object, n_known: int, n_validation: int,
                     num_classes: int) -> None:
    """Refuses an n_labeled that the labeled rows cannot give, before any draw."""
    if isinstance(n_labeled, bool) or not isinstance(n_labeled, numbers.Integral) \
            or n_labeled < 1:
        raise ValueError("n_labeled must be 'all' or a positive integer. "
                         f"Received: n_labeled={n_labeled!r}")
    available = n_known - n_validation
    if n_labeled > available:
        held_out = f" ({n_known} labeled rows - {n_validation} held out for validation)" \
            if n_validation else ""
        raise ValueError(f"n_labeled must be at most the number of labeled training rows, "
                         f"{available}{held_out}. Received: n_labeled={n_labeled}")
    if n_labeled % num_classes:
        raise ValueError(f"n_labeled must be divisible by the number of classes ({num_classes}): "
                         "the same number is drawn from every class. "
                         f"Received: n_labeled={n_labeled}")


def _check_per_class(training: np.ndarray, n_labeled: int, n_validation: int,
                     num_classes: int) -> None:
    counts = np.bincount(training, minlength=num_classes)
    per_class = n_labeled // num_classes
    if counts.min() < per_class:
        klass = int(np.argmin(counts))
        held_out = f" (after holding out {n_validation} validation rows)" if n_validation else ""
        raise ValueError(
            f"n_labeled={n_labeled} needs {per_class} labeled training rows of every class, but "
            f"class {klass} has only {counts[klass]}{held_out}. Pass a smaller n_labeled or "
            "validation_size, or more labeled images of that class.")


def semi_supervised_from_folder(
    data_dir: str | os.PathLike,
    *,
    eval_dir: str | os.PathLike | None = None,
    image_size: int | tuple[int, int] | None = None,
    validation_size: int | float | None = None,
    n_labeled: int | str = "all",
    data_seed: int = 0,
) -> SemiSupervisedData:
    """Your own images, read by `load_image_folder` and split by `semi_supervised_from_arrays`.

    Args:
        data_dir: one subfolder per class, plus optionally `unlabeled/` (see `image_folder`).
        eval_dir: a folder with the same class subfolders to evaluate on; None holds out
            `validation_size` of the labeled images of `data_dir` instead.
        image_size: (height, width) to resize every image to; None: the files' own size.
        validation_size, n_labeled, data_seed: as for `semi_supervised_from_arrays`.

    The evaluation images are resized to the training images' size and given their number
    of channels. `class_names` of the result are the class subfolders' names.
    """
    folder = load_image_folder(data_dir, image_size=image_size)
    evaluation = {}
    if eval_dir is not None:
        height, width, channels = folder.images.shape[1:]
        held = load_image_folder(eval_dir, image_size=(height, width), channels=channels)
        if held.class_names != folder.class_names:
            raise ValueError(
                f"The evaluation folder must have the class subfolders of {data_dir}, "
                f"{list(folder.class_names)}. Received: {eval_dir} with "
                f"{list(held.class_names)}")
        if (held.labels == -1).any():
            raise ValueError(
                f"The evaluation images must be labeled, but {eval_dir} has unlabeled images "
                f"in {UNLABELED_DIR}/ ({held.file_paths[int(np.argmax(held.labels == -1))]}). "
                f"Move them out of {eval_dir}.")
        evaluation = dict(eval_images=held.images, eval_labels=held.labels)
    data = semi_supervised_from_arrays(
        folder.images, folder.labels, validation_size=validation_size, n_labeled=n_labeled,
        data_seed=data_seed, num_classes=len(folder.class_names), **evaluation)
    return dataclasses.replace(data, class_names=folder.class_names)
