import itertools

import numpy as np
import pytest
import tensorflow as tf

from datasets import minibatching
from datasets.minibatching import evaluation_dataset, host_images, training_dataset

N_EXAMPLES = 30


def _images(n=N_EXAMPLES, dtype=np.float32):
    """Image i is filled with the value i, so every batch row says which example it is."""
    return np.broadcast_to(np.arange(n, dtype=dtype)[:, None, None, None], (n, 32, 32, 3)).copy()


def _labels(n=N_EXAMPLES, n_labeled=6):
    """The first n_labeled rows carry class ids, the rest are unlabeled (-1)."""
    labels = np.full(n, -1, dtype=np.int64)
    labels[:n_labeled] = np.arange(n_labeled) % 3
    return labels


def _take(dataset, n_batches):
    batches = list(itertools.islice(dataset.as_numpy_iterator(), n_batches))
    assert len(batches) == n_batches
    return batches


def _ids(batch_images):
    ids = batch_images[:, 0, 0, 0]
    # every pixel of a row carries the same id
    np.testing.assert_array_equal(
        batch_images, np.broadcast_to(ids[:, None, None, None], batch_images.shape)
    )
    return ids.astype(np.int64)


def _assert_passes(ids, population):
    """Consecutive chunks of len(population) ids are each a permutation of population."""
    population = np.sort(population)
    assert len(ids) % len(population) == 0
    chunks = ids.reshape(-1, len(population))
    for chunk in chunks:
        np.testing.assert_array_equal(np.sort(chunk), population)
    return chunks


def test_vary_mixes_labeled_and_unlabeled_and_covers_each_pass():
    labels = _labels()
    batches = _take(training_dataset(_images(), labels, batch_size=10, seed=0), 12)
    for images, batch_labels in batches:
        assert images.shape == (10, 32, 32, 3) and images.dtype == np.float32
        assert batch_labels.shape == (10,) and batch_labels.dtype == np.int32
        np.testing.assert_array_equal(batch_labels, labels[_ids(images)])
    ids = np.concatenate([_ids(images) for images, _ in batches])
    passes = _assert_passes(ids, np.arange(N_EXAMPLES))
    # reshuffled at every pass, and actually shuffled
    assert len({tuple(p) for p in passes}) == len(passes)
    assert not np.array_equal(passes[0], np.arange(N_EXAMPLES))


def test_batches_straddle_pass_boundaries():
    # 7 does not divide 30: the stream is cut into batches across passes, dropping nothing.
    batches = _take(training_dataset(_images(), _labels(), batch_size=7, seed=1), 30)
    ids = np.concatenate([_ids(images) for images, _ in batches])
    _assert_passes(ids, np.arange(N_EXAMPLES))


def test_fixed_labeled_count_per_batch():
    labels = _labels(n_labeled=6)
    batches = _take(
        training_dataset(_images(), labels, batch_size=10, n_labeled_per_batch=4, seed=2), 15
    )
    labeled_ids, unlabeled_ids = [], []
    for images, batch_labels in batches:
        ids = _ids(images)
        # the first 4 rows come from the labeled rows and keep their labels
        assert np.all(labels[ids[:4]] >= 0)
        np.testing.assert_array_equal(batch_labels[:4], labels[ids[:4]])
        # the other 6 come from all rows, labeled ones included, with labels hidden
        np.testing.assert_array_equal(batch_labels[4:], np.full(6, -1))
        labeled_ids.append(ids[:4])
        unlabeled_ids.append(ids[4:])
    _assert_passes(np.concatenate(labeled_ids), np.arange(6))  # 60 ids = 10 passes of 6
    _assert_passes(np.concatenate(unlabeled_ids), np.arange(N_EXAMPLES))  # 3 passes of 30


def test_the_two_halves_of_a_batch_are_drawn_independently():
    # Every row labeled and equal halves: both streams permute the same 30 rows, and must not
    # do it in lockstep.
    labels = np.arange(N_EXAMPLES) % 3
    batches = _take(
        training_dataset(_images(), labels, batch_size=10, n_labeled_per_batch=5, seed=0), 6
    )
    labeled_half = np.concatenate([_ids(images)[:5] for images, _ in batches])
    unlabeled_half = np.concatenate([_ids(images)[5:] for images, _ in batches])
    _assert_passes(labeled_half, np.arange(N_EXAMPLES))
    _assert_passes(unlabeled_half, np.arange(N_EXAMPLES))
    assert not np.array_equal(labeled_half, unlabeled_half)


def test_labeled_only_when_every_row_of_the_batch_is_labeled():
    labels = _labels(n_labeled=6)
    batches = _take(
        training_dataset(_images(), labels, batch_size=4, n_labeled_per_batch=4, seed=3), 9
    )
    ids = np.concatenate([_ids(images) for images, _ in batches])
    _assert_passes(ids, np.arange(6))
    for images, batch_labels in batches:
        np.testing.assert_array_equal(batch_labels, labels[_ids(images)])
        assert np.all(batch_labels >= 0)


@pytest.mark.parametrize("mode", ["vary", 3, 10])
def test_same_seed_same_stream_other_seed_other_stream(mode):
    labels = _labels(n_labeled=12)

    def first_ids(seed):
        dataset = training_dataset(
            _images(), labels, batch_size=10, n_labeled_per_batch=mode, seed=seed
        )
        return np.concatenate([_ids(images) for images, _ in _take(dataset, 6)])

    np.testing.assert_array_equal(first_ids(5), first_ids(5))
    assert not np.array_equal(first_ids(5), first_ids(6))


def test_iterating_again_restarts_the_same_stream():
    dataset = training_dataset(_images(), _labels(), batch_size=10, seed=4)
    first = np.concatenate([_ids(images) for images, _ in _take(dataset, 5)])
    second = np.concatenate([_ids(images) for images, _ in _take(dataset, 5)])
    np.testing.assert_array_equal(first, second)


def test_integer_images_are_cast_to_float32():
    images = _images(dtype=np.uint8)
    ((batch_images, _),) = _take(training_dataset(images, _labels(), batch_size=5, seed=0), 1)
    assert batch_images.dtype == np.float32
    np.testing.assert_array_equal(batch_images, images[_ids(batch_images)].astype(np.float32))


def test_evaluation_is_one_pass_in_order():
    labels = np.arange(25) % 10
    batches = list(evaluation_dataset(_images(25), labels, batch_size=10).as_numpy_iterator())
    assert [len(batch_labels) for _, batch_labels in batches] == [10, 10, 5]
    ids = np.concatenate([_ids(images) for images, _ in batches])
    np.testing.assert_array_equal(ids, np.arange(25))
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int32


def test_evaluation_default_batch_size_is_100():
    batches = list(evaluation_dataset(_images(250), np.zeros(250, int)).as_numpy_iterator())
    assert [len(y) for _, y in batches] == [100, 100, 50]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, r"batch_size must be positive\. Received: batch_size=0"),
        (
            {"batch_size": -3},
            ValueError,
            r"batch_size must be positive\. Received: "
            r"batch_size=-3",
        ),
        (
            {"batch_size": 2.5},
            TypeError,
            r"batch_size must be an integer\. Received: "
            r"batch_size=2\.5",
        ),
        (
            {"n_labeled_per_batch": 0},
            ValueError,
            r"n_labeled_per_batch must be 'vary' or an "
            r"integer from 1 to batch_size \(10\)\. Received: n_labeled_per_batch=0",
        ),
        (
            {"n_labeled_per_batch": 11},
            ValueError,
            r"from 1 to batch_size \(10\)\. Received: "
            r"n_labeled_per_batch=11",
        ),
        ({"n_labeled_per_batch": "some"}, ValueError, r"Received: n_labeled_per_batch='some'"),
        ({"seed": 1.0}, TypeError, r"seed must be an integer\. Received: seed=1\.0"),
        ({"seed": 2**63}, ValueError, r"seed must fit in a signed 64-bit integer"),
    ],
)
def test_argument_errors(kwargs, error, message):
    arguments = {"batch_size": 10, "n_labeled_per_batch": "vary", "seed": 0}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        training_dataset(_images(), _labels(), **arguments)


@pytest.mark.parametrize("k", [3, 10])
def test_labeled_batches_need_labeled_rows(k):
    with pytest.raises(
        ValueError,
        match=rf"n_labeled_per_batch={k} needs labeled rows, but "
        r"every label is -1",
    ):
        training_dataset(_images(), np.full(N_EXAMPLES, -1), batch_size=10, n_labeled_per_batch=k)


def test_vary_accepts_all_unlabeled_rows():
    ((_, batch_labels),) = _take(
        training_dataset(_images(), np.full(N_EXAMPLES, -1), batch_size=10), 1
    )
    np.testing.assert_array_equal(batch_labels, np.full(10, -1))


@pytest.mark.parametrize("make", [training_dataset, evaluation_dataset])
def test_data_errors(make):
    with pytest.raises(ValueError, match=r"images and labels are empty"):
        make(np.zeros((0, 32, 32, 3), np.float32), np.zeros(0, int))
    with pytest.raises(
        ValueError,
        match=r"same number of rows\. Received: images "
        r"\(30, 32, 32, 3\), labels \(29,\)",
    ):
        make(_images(), np.zeros(29, int))
    with pytest.raises(ValueError, match=r"labels must be a 1-D array"):
        make(_images(), np.zeros((30, 1), int))
    with pytest.raises(ValueError, match=r"labels must be integers\. Received dtype: float64"):
        make(_images(), np.zeros(30))
    with pytest.raises(
        ValueError,
        match=r"labels must be class ids >= 0, or -1 for unlabeled "
        r"rows\. Received a label of -2",
    ):
        make(_images(), np.full(30, -2))


@pytest.mark.parametrize("mode", ["vary", 3, 8])
def test_skip_batches_continues_the_same_stream(mode):
    images = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    labels = np.where(np.arange(40) < 12, np.arange(40) % 4, -1).astype(np.int32)
    full = list(training_dataset(images, labels, batch_size=8, n_labeled_per_batch=mode,
                                 seed=3).take(12).as_numpy_iterator())
    resumed = list(training_dataset(images, labels, batch_size=8, n_labeled_per_batch=mode,
                                    seed=3, skip_batches=7).take(5).as_numpy_iterator())
    for (x_full, y_full), (x_resumed, y_resumed) in zip(full[7:], resumed, strict=True):
        np.testing.assert_array_equal(x_full, x_resumed)
        np.testing.assert_array_equal(y_full, y_resumed)


def test_skip_batches_must_be_a_count():
    with pytest.raises(ValueError, match="Received: skip_batches=-1"):
        training_dataset(np.zeros((4, 1)), np.zeros(4, np.int32), batch_size=2, skip_batches=-1)


def test_host_images_copies_every_chunk_into_one_cpu_variable(monkeypatch):
    # 7.5 rows of uint8 per chunk: whole rows, so 30 rows go in 4 chunks of 7 and one of 2.
    monkeypatch.setattr(minibatching, "_COPY_CHUNK_BYTES", 32 * 32 * 3 * 15 // 2)
    images = np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3)).astype(np.uint8)
    stored = host_images(images)
    assert isinstance(stored, tf.Variable) and not stored.trainable
    assert stored.dtype == tf.uint8 and "CPU" in stored.device
    np.testing.assert_array_equal(stored.numpy(), images)
    assert host_images(stored) is stored
    evaluated = list(evaluation_dataset(stored, np.zeros(30, int), batch_size=8)
                     .as_numpy_iterator())
    assert evaluated[0][0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([x for x, _ in evaluated]), images)


def test_host_images_passes_a_tensor_through_and_refuses_a_distributed_variable():
    tensor = tf.constant(_images())
    assert host_images(tensor) is tensor
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        mirrored = tf.Variable(_images())
    with pytest.raises(ValueError, match="not a distributed variable: call host_images "
                                         "outside any strategy.scope"):
        host_images(mirrored)


@pytest.mark.parametrize("mode", ["vary", 3, 10])
def test_a_shared_host_copy_gives_the_same_streams_as_the_array(mode):
    images, labels = _images(), _labels()
    stored = host_images(images)
    for skip in (0, 4):  # several streams of one run share the copy
        from_array = _take(training_dataset(images, labels, batch_size=10, seed=2,
                                            n_labeled_per_batch=mode, skip_batches=skip), 6)
        from_copy = _take(training_dataset(stored, labels, batch_size=10, seed=2,
                                           n_labeled_per_batch=mode, skip_batches=skip), 6)
        for (x_array, y_array), (x_copy, y_copy) in zip(from_array, from_copy, strict=True):
            np.testing.assert_array_equal(x_copy, x_array)
            np.testing.assert_array_equal(y_copy, y_array)
    evaluated = list(evaluation_dataset(stored, labels, batch_size=8).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([x for x, _ in evaluated]), images)


def test_host_images_inside_a_strategy_scope_is_a_plain_tensor():
    # A variable made there would be mirrored onto every replica's device.
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        stored = host_images(_images())
    assert not isinstance(stored, tf.Variable)
    np.testing.assert_array_equal(stored.numpy(), _images())


def test_a_host_copy_with_other_row_count_than_the_labels_is_refused():
    with pytest.raises(ValueError, match=r"same number of rows\. Received: images "
                                         r"\(30, 32, 32, 3\), labels \(29,\)"):
        training_dataset(host_images(_images()), _labels(29), batch_size=5)
