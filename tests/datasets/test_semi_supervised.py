"""`semi_supervised_from_arrays`: the split of your own arrays, against numpy re-derivations and
against the built-in loader on the bundled digits; `semi_supervised_from_folder` on top of it."""

import numpy as np
import pytest

import datasets
from datasets.image_folder import load_image_folder
from datasets.semi_supervised import semi_supervised_from_arrays
from tests.datasets.test_image_folder import make_folder


def arrays(labels, shape=(5, 4, 1)):
    """Images whose first pixel is the row number, so the rows can be followed."""
    labels = np.asarray(labels, np.int64)
    images = np.zeros((len(labels), *shape), np.float32)
    images[:, 0, 0, 0] = np.arange(len(labels))
    return images, labels


def rows_of(images):
    return images[:, 0, 0, 0].astype(int)


# 3 classes, 30 rows, 6 of them unlabeled (-1) on input, scattered.
LABELS = np.array([0, 1, 2, -1, 0, 1, 2, 0, -1, 1, 2, 0, 1, -1, 2, 0, 1, 2, -1, 0, 1, 2, 0, 1, 2,
                   -1, 0, 1, 2, -1])


def reference_split(labels, n_validation, n_labeled, seed):
    """The split re-derived with numpy: a shuffled validation mask over the labeled rows, then
    n_labeled // classes rows per class from the rest (the original's draws, in its order)."""
    labeled = np.flatnonzero(labels != -1)
    rng = np.random.RandomState(seed)
    mask = np.zeros(len(labeled), bool)
    mask[:n_validation] = True
    rng.shuffle(mask)
    validation, training = labeled[mask], labeled[~mask]
    per_class = n_labeled // 3
    kept = np.concatenate([rng.choice(training[labels[training] == k], per_class, replace=False)
                           for k in range(3)])
    lost = np.setdiff1d(training, kept)
    return validation, kept, lost, np.flatnonzero(labels == -1)


@pytest.mark.parametrize("seed", [0, 7])
def test_validation_split_and_balanced_labels_match_numpy(seed):
    images, labels = arrays(LABELS)
    data = semi_supervised_from_arrays(images, labels, validation_size=6, n_labeled=9,
                                       data_seed=seed)
    validation, kept, lost, unlabeled = reference_split(LABELS, 6, 9, seed)
    np.testing.assert_array_equal(rows_of(data.eval_images), validation)
    np.testing.assert_array_equal(data.eval_labels, LABELS[validation])
    np.testing.assert_array_equal(rows_of(data.train_images),
                                  np.concatenate([kept, lost, unlabeled]))
    np.testing.assert_array_equal(data.train_labels[:9], LABELS[kept])
    np.testing.assert_array_equal(data.train_labels[:9], [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert (data.train_labels[9:] == -1).all() and len(data.train_labels) == 24
    assert data.n_labeled == 9 and data.num_classes == 3 and data.image_shape == (5, 4, 1)
    assert data.train_labels.dtype == np.int32 and data.eval_labels.dtype == np.int32
    assert data.normalize_input is True


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    images, labels = arrays(LABELS)
    split = [semi_supervised_from_arrays(images, labels, validation_size=6, n_labeled=9,
                                         data_seed=seed) for seed in (3, 3, 4)]
    np.testing.assert_array_equal(split[0].train_images, split[1].train_images)
    np.testing.assert_array_equal(split[0].eval_images, split[1].eval_images)
    assert not np.array_equal(rows_of(split[0].eval_images), rows_of(split[2].eval_images))


def test_all_labels_and_the_default_tenth_for_validation():
    images, labels = arrays(LABELS)  # 24 labeled rows: 10% is 2 (rounded down)
    data = semi_supervised_from_arrays(images, labels, data_seed=1)
    validation, *_ = reference_split(LABELS, 2, 0, 1)
    np.testing.assert_array_equal(rows_of(data.eval_images), validation)
    labeled = np.setdiff1d(np.flatnonzero(LABELS != -1), validation)
    np.testing.assert_array_equal(rows_of(data.train_images),
                                  np.concatenate([labeled, np.flatnonzero(LABELS == -1)]))
    assert data.n_labeled == 22
    fraction = semi_supervised_from_arrays(images, labels, validation_size=0.25, data_seed=1)
    assert len(fraction.eval_labels) == 6  # 0.25 * 24


def test_an_evaluation_set_is_used_as_given_and_nothing_is_held_out():
    images, labels = arrays(LABELS)
    eval_images, eval_labels = arrays([2, 0, 1, 1])
    data = semi_supervised_from_arrays(images, labels, eval_images=eval_images,
                                       eval_labels=eval_labels, n_labeled=6, data_seed=5)
    np.testing.assert_array_equal(data.eval_images, eval_images)
    np.testing.assert_array_equal(data.eval_labels, [2, 0, 1, 1])
    assert len(data.train_labels) == 30 and data.n_labeled == 6
    labeled = np.flatnonzero(LABELS != -1)
    rng = np.random.RandomState(5)  # no validation draw: the per-class choices only
    kept = np.concatenate([rng.choice(labeled[LABELS[labeled] == k], 2, replace=False)
                           for k in range(3)])
    np.testing.assert_array_equal(rows_of(data.train_images[:6]), kept)


@pytest.mark.parametrize("test_phase", [True, False])
def test_labeled_arrays_split_like_the_builtin_loader(test_phase):
    splits = datasets.load_digits()
    (x, y), (x_test, y_test) = splits["train"], splits["test"]
    builtin = datasets.load_semi_supervised("digits", n_labeled=50, data_seed=3,
                                            test_phase=test_phase)
    evaluation = dict(eval_images=x_test, eval_labels=y_test) if test_phase else \
        dict(validation_size=datasets.DATASETS["digits"].validation_size)
    ours = semi_supervised_from_arrays(x, y, n_labeled=50, data_seed=3, **evaluation)
    for field in ("train_images", "train_labels", "eval_images", "eval_labels"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(builtin, field), field)
    assert ours.num_classes == builtin.num_classes == 10
    if not test_phase:  # the default fraction gives the digits' own validation size
        default = semi_supervised_from_arrays(x, y, n_labeled=50, data_seed=3)
        np.testing.assert_array_equal(default.eval_labels, builtin.eval_labels)


def test_num_classes_is_inferred_or_taken_as_given():
    images, labels = arrays([0, 1, -1, 1, 0, 1, 0])
    assert semi_supervised_from_arrays(images, labels, validation_size=1).num_classes == 2
    eval_images, eval_labels = arrays([4, 0])
    inferred = semi_supervised_from_arrays(images, labels, eval_images=eval_images,
                                           eval_labels=eval_labels)
    assert inferred.num_classes == 5
    given = semi_supervised_from_arrays(images, labels, validation_size=1, num_classes=7)
    assert given.num_classes == 7


def bad(**changes):
    images, labels = arrays(LABELS)
    arguments = dict(images=images, labels=labels, validation_size=6, n_labeled=9)
    arguments.update(changes)
    return arguments


@pytest.mark.parametrize("arguments, error, message", [
    (bad(labels=np.where(LABELS == 2, 3, LABELS), num_classes=3), ValueError,
     r"labels must be in \[-1, 3\) \(-1 for unlabeled\). Received: labels\[2\]=3"),
    (bad(labels=np.where(LABELS == -1, -2, LABELS)), ValueError, r"Received: labels\[3\]=-2"),
    (bad(labels=LABELS[:-1]), ValueError, r"one label per image \(30\). Received: labels.shape"),
    (bad(labels=LABELS.astype(float)), TypeError, "labels.dtype=float64"),
    (bad(images=np.zeros((30, 5, 4), np.float32)), ValueError,
     r"4-D array .* Received: images.shape=\(30, 5, 4\)"),
    (bad(images=np.zeros((30, 5, 4, 1), np.uint8)), TypeError, "images.dtype=uint8"),
    (bad(labels=np.full(30, -1)), ValueError, "no labeled row"),
    (bad(labels=np.where(LABELS > 0, 0, LABELS)), ValueError, "at least 2 classes"),
    (bad(num_classes=1), ValueError, "Received: num_classes=1"),
    (bad(n_labeled=21), ValueError,
     r"at most the number of labeled training rows, 18 \(24 labeled rows - 6 held out"),
    (bad(n_labeled=10), ValueError, r"divisible by the number of classes \(3\)"),
    (bad(n_labeled=12, num_classes=4), ValueError,
     r"needs 3 labeled training rows of every class, but class 3 has only 0 \(after"),
    (bad(n_labeled="some"), ValueError, "n_labeled must be 'all' or a positive integer"),
    (bad(validation_size=0), ValueError, "needs at least 1 of them"),
    (bad(validation_size=24), ValueError, "must leave at least 1 for training"),
    (bad(validation_size=0.01), ValueError, r"validation_size=0.01 holds out 0"),
    (bad(validation_size=1.5), ValueError, "a fraction in \\(0, 1\\)"),
    (bad(validation_size="3"), TypeError, "validation_size='3'"),
    (bad(eval_images=np.zeros((2, 5, 4, 1), np.float32)), ValueError,
     "Pass both eval_images and eval_labels"),
    (bad(eval_images=np.zeros((2, 5, 4, 1), np.float32), eval_labels=np.array([0, 1])),
     ValueError, "validation_size is for holding out"),
    (bad(eval_images=np.zeros((2, 4, 5, 1), np.float32), eval_labels=np.array([0, 1]),
         validation_size=None), ValueError, r"eval_images.shape=\(2, 4, 5, 1\)"),
    (bad(eval_images=np.zeros((2, 5, 4, 1), np.float32), eval_labels=np.array([0, -1]),
         validation_size=None), ValueError, r"must be labeled\). Received: eval_labels\[1\]=-1"),
    (bad(eval_images=np.zeros((0, 5, 4, 1), np.float32), eval_labels=np.zeros(0, int),
         validation_size=None), ValueError, "eval_images is empty"),
])
def test_bad_inputs_are_refused(arguments, error, message):
    with pytest.raises(error, match=message):
        semi_supervised_from_arrays(**arguments)


def test_a_class_emptied_by_the_validation_draw_is_refused():
    # Class 2 has one labeled row; whether it is held out depends on the seed.
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 0, 1, 0, 1])
    images, labels = arrays(labels)
    emptied = [seed for seed in range(20)
               if 6 in reference_split_rows(labels, 2, seed)]
    assert emptied
    with pytest.raises(ValueError, match=r"class 2 has only 0 \(after holding out 2 validation"):
        semi_supervised_from_arrays(images, labels, validation_size=2, n_labeled=3,
                                    data_seed=emptied[0])


def reference_split_rows(labels, n_validation, seed):
    mask = np.zeros(len(labels), bool)
    mask[:n_validation] = True
    np.random.RandomState(seed).shuffle(mask)
    return np.flatnonzero(mask)


def test_a_folder_splits_like_its_arrays(tmp_path):
    make_folder(tmp_path, {"a": 4, "b": 4, "unlabeled": 3}, shape=(6, 5, 1))
    folder = load_image_folder(tmp_path)
    data = datasets.semi_supervised_from_folder(tmp_path, validation_size=2, n_labeled=4,
                                                data_seed=2)
    arrays_split = semi_supervised_from_arrays(folder.images, folder.labels, validation_size=2,
                                               n_labeled=4, data_seed=2)
    for field in ("train_images", "train_labels", "eval_images", "eval_labels"):
        np.testing.assert_array_equal(getattr(data, field), getattr(arrays_split, field))
    assert data.class_names == ("a", "b") and data.num_classes == 2
    assert len(data.train_labels) == 9 and data.n_labeled == 4


def test_an_eval_folder_takes_the_training_size_and_channels(tmp_path):
    make_folder(tmp_path / "train", {"a": 2, "b": 2}, shape=(6, 5, 3))
    make_folder(tmp_path / "test", {"a": 1, "b": 2}, shape=(9, 9, 1))
    data = datasets.semi_supervised_from_folder(tmp_path / "train", eval_dir=tmp_path / "test")
    assert data.eval_images.shape == (3, 6, 5, 3) and data.train_images.shape == (4, 6, 5, 3)
    np.testing.assert_array_equal(data.eval_labels, [0, 1, 1])
    assert data.n_labeled == 4

    make_folder(tmp_path / "other", {"a": 1, "c": 1})
    with pytest.raises(ValueError, match=r"class subfolders of .*train, \['a', 'b'\]. "
                                         r"Received: .*other with \['a', 'c'\]"):
        datasets.semi_supervised_from_folder(tmp_path / "train", eval_dir=tmp_path / "other")
    make_folder(tmp_path / "test", {"unlabeled": 1}, seed=50)
    with pytest.raises(ValueError, match=r"must be labeled, but .*test has unlabeled images "
                                         r"in unlabeled/ \(.*unlabeled/img0.png\)"):
        datasets.semi_supervised_from_folder(tmp_path / "train", eval_dir=tmp_path / "test")
