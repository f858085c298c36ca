import os

import numpy as np
import pytest

from datasets.partition import extra_unlabeled_indices, partition_indices, training_rows

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "data", "reference", "partition.npz")


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("seed", [0, 2000])
def test_matches_the_original_split(reference, seed):
    evaluation_idx, labeled_idx, unlabeled_idx = partition_indices(
        reference["labels"], n_labeled=100, validation_size=100, data_seed=seed
    )
    np.testing.assert_array_equal(evaluation_idx, reference[f"seed{seed}/evaluation_idx"])
    np.testing.assert_array_equal(labeled_idx, reference[f"seed{seed}/labeled_idx"])
    np.testing.assert_array_equal(unlabeled_idx, reference[f"seed{seed}/unlabeled_idx"])
    for indices in (evaluation_idx, labeled_idx, unlabeled_idx):
        assert indices.dtype == np.int64


@pytest.mark.parametrize("seed", [0, 2000])
def test_training_rows_match_the_original_training_array(reference, seed):
    _, labeled_idx, unlabeled_idx = partition_indices(
        reference["labels"], n_labeled=100, validation_size=100, data_seed=seed
    )
    rows, labels = training_rows(reference["labels"], labeled_idx, unlabeled_idx)
    np.testing.assert_array_equal(rows, reference[f"seed{seed}/final_training_idx"])
    np.testing.assert_array_equal(labels, reference[f"seed{seed}/final_training_y"])
    assert labels.dtype == np.int32


def test_split_is_disjoint_complete_and_class_balanced():
    labels = np.random.RandomState(5).randint(0, 4, size=300)
    evaluation_idx, labeled_idx, unlabeled_idx = partition_indices(
        labels, n_labeled=40, validation_size=50, data_seed=3
    )
    everything = np.concatenate([evaluation_idx, labeled_idx, unlabeled_idx])
    np.testing.assert_array_equal(np.sort(everything), np.arange(300))
    assert (len(evaluation_idx), len(labeled_idx), len(unlabeled_idx)) == (50, 40, 210)
    np.testing.assert_array_equal(np.bincount(labels[labeled_idx]), [10, 10, 10, 10])
    # labeled rows come class by class, in the order they were drawn
    np.testing.assert_array_equal(labels[labeled_idx], np.repeat([0, 1, 2, 3], 10))


def test_test_phase_keeps_every_row_for_training():
    labels = np.arange(200) % 10
    evaluation_idx, labeled_idx, unlabeled_idx = partition_indices(
        labels, n_labeled=20, validation_size=50, data_seed=7, test_phase=True
    )
    assert evaluation_idx.shape == (0,) and evaluation_idx.dtype == np.int64
    # Re-derived by hand: without a validation split the only draws are the per-class choices.
    rng = np.random.RandomState(7)
    expected = np.concatenate(
        [rng.choice(np.flatnonzero(labels == klass), 2, replace=False) for klass in range(10)]
    )
    np.testing.assert_array_equal(labeled_idx, expected)
    np.testing.assert_array_equal(unlabeled_idx, np.setdiff1d(np.arange(200), expected))


def test_test_phase_ignores_validation_size():
    labels = np.arange(20) % 2
    evaluation_idx, labeled_idx, _ = partition_indices(
        labels, n_labeled=2, validation_size=10_000, data_seed=0, test_phase=True
    )
    assert len(evaluation_idx) == 0 and len(labeled_idx) == 2


@pytest.mark.parametrize("n_labeled", ["all", None])
def test_all_labeled_keeps_every_training_row(reference, n_labeled):
    evaluation_idx, labeled_idx, unlabeled_idx = partition_indices(
        reference["labels"], n_labeled=n_labeled, validation_size=100, data_seed=0
    )
    np.testing.assert_array_equal(evaluation_idx, reference["seed0/evaluation_idx"])
    np.testing.assert_array_equal(labeled_idx, reference["seed0/training_idx"])
    assert unlabeled_idx.shape == (0,)


def test_other_seed_gives_another_split():
    labels = np.arange(1000) % 10
    first = partition_indices(labels, n_labeled=100, validation_size=100, data_seed=1)
    second = partition_indices(labels, n_labeled=100, validation_size=100, data_seed=2)
    assert not np.array_equal(first[0], second[0])
    assert not np.array_equal(first[1], second[1])


@pytest.mark.parametrize("seed", [0, 2000])
@pytest.mark.parametrize("n_labeled", [100, "all"])
def test_extra_unlabeled_continues_the_same_random_stream(seed, n_labeled):
    labels = np.arange(1000) % 10
    extra_idx = extra_unlabeled_indices(
        labels,
        n_extra=500,
        n_extra_unlabeled=60,
        n_labeled=n_labeled,
        validation_size=100,
        data_seed=seed,
    )
    # The original's draws, spelled out: validation mask, per-class choices, extra mask.
    rng = np.random.RandomState(seed)
    mask = np.zeros(1000, dtype=bool)
    mask[:100] = True
    rng.shuffle(mask)
    if n_labeled != "all":
        training_labels = labels[~mask]
        for klass in range(10):
            rng.choice(np.flatnonzero(training_labels == klass), 10, replace=False)
    extra_mask = np.zeros(500, dtype=bool)
    extra_mask[:60] = True
    rng.shuffle(extra_mask)
    np.testing.assert_array_equal(extra_idx, np.flatnonzero(extra_mask))
    assert extra_idx.dtype == np.int64


def test_no_extra_unlabeled_is_empty():
    extra_idx = extra_unlabeled_indices(
        np.arange(10) % 2, n_extra=5, n_extra_unlabeled=0, validation_size=2, data_seed=0
    )
    assert extra_idx.shape == (0,)


def test_extra_unlabeled_larger_than_pool():
    with pytest.raises(
        ValueError,
        match=r"at most the size of the extra pool \(5\)\. "
        r"Received: n_extra_unlabeled=6",
    ):
        extra_unlabeled_indices(
            np.arange(10) % 2, n_extra=5, n_extra_unlabeled=6, validation_size=2, data_seed=0
        )


def _split(labels=None, **overrides):
    arguments = dict(n_labeled=100, validation_size=100, data_seed=0)
    arguments.update(overrides)
    return partition_indices(np.arange(1000) % 10 if labels is None else labels, **arguments)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (
            {"n_labeled": 25},
            ValueError,
            r"n_labeled must be divisible by the number of classes \(10\)\. "
            r"Received: n_labeled=25",
        ),
        (
            {"n_labeled": 1000},
            ValueError,
            r"n_labeled must be at most the number of training rows \(900 = 1000 rows - 100 "
            r"validation rows\)\. Received: n_labeled=1000",
        ),
        (
            {"validation_size": 1001},
            ValueError,
            r"validation_size must be at most the number of rows \(1000\)\. "
            r"Received: validation_size=1001",
        ),
        ({"validation_size": -1}, ValueError, r"validation_size must be non-negative"),
        ({"n_labeled": -10}, ValueError, r"n_labeled must be non-negative\. Received: "),
        ({"n_labeled": "some"}, ValueError, r"n_labeled must be 'all', None or a non-negative"),
        ({"n_labeled": 10.0}, TypeError, r"n_labeled must be an integer\. Received: "),
        ({"n_labeled": True}, TypeError, r"n_labeled must be an integer"),
        ({"data_seed": 2**32}, ValueError, r"data_seed must be below 2\*\*32"),
        ({"data_seed": "0"}, TypeError, r"data_seed must be an integer"),
    ],
)
def test_argument_errors(overrides, error, message):
    with pytest.raises(error, match=message):
        _split(**overrides)


def test_class_with_too_few_rows_is_named():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 10)
    with pytest.raises(
        ValueError,
        match=r"needs 4 labeled examples per class, but class 1 "
        r"has only 3 training rows",
    ):
        partition_indices(labels, n_labeled=12, validation_size=0, data_seed=0)


def test_every_row_held_out_leaves_nothing_to_label():
    with pytest.raises(ValueError, match=r"no training rows are left"):
        partition_indices(np.arange(10) % 2, n_labeled=0, validation_size=10, data_seed=0)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((4, 2), dtype=int), r"labels must be a 1-D array\. Received shape: \(4, 2\)"),
        (np.array([0.0, 1.0]), r"labels must be integer class ids\. Received dtype: float64"),
        (np.array([0, -1, 1]), r"labels must be non-negative class ids .* label of -1"),
    ],
)
def test_label_errors(labels, message):
    with pytest.raises(ValueError, match=message):
        partition_indices(labels, n_labeled="all", validation_size=0, data_seed=0)
