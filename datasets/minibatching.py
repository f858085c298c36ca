"""`tf.data` input streams: endless shuffled training minibatches and in-order evaluation.

Training streams follow the Mean Teacher minibatch modes. Each stream of example indices is
an endless sequence of passes; each pass is a fresh permutation of its examples, and
minibatches are cut from the concatenated passes (so a minibatch may straddle two passes, and
every example appears exactly once per pass). The permutation of pass `p` of stream `s` is a
stateless function of `(seed, s, p)`, so a stream is reproducible whatever the global TF seed,
and the whole pipeline runs inside tf.data (no Python in the input hot path).
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

__all__ = ["UNLABELED", "epoch_dataset", "evaluation_dataset", "host_images",
           "training_dataset"]

UNLABELED = -1

# Bytes copied into the host variable at a time (whole rows, at least one): the copy costs
# one chunk of extra memory.
_COPY_CHUNK_BYTES = 64 << 20

# Stream ids, folded into the seed so that the two streams of a mixed batch are independent.
_ALL_EXAMPLES_STREAM = 0
_LABELED_STREAM = 1
_INITIALIZATION_STREAM = 2


def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be an integer. Received: batch_size={batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
    return int(batch_size)


def host_images(images: np.ndarray | tf.Variable | tf.Tensor) -> tf.Variable | tf.Tensor:
    """`images` in host (CPU) memory, once, for the streams of this module to gather from.

    A tensor captured by a `tf.data` function is copied again each time `tf.data` rewrites
    the pipeline (at every new iterator), and converting a whole array at once briefly holds
    it twice. A variable is captured by its handle and is filled here in chunks of rows, so
    besides the array the host holds one copy of the images (plus one 64 MiB chunk while
    filling). Build it once and pass it to every `training_dataset` / `evaluation_dataset`
    call of a run.

    Inside a `tf.distribute` strategy's scope a variable would be mirrored onto every
    replica's device, so there the images become a plain tensor instead (the copies above).
    A tensor, or a variable in host memory, is returned as it is.
    """
    if isinstance(images, tf.distribute.DistributedValues):
        raise ValueError(
            "images must be an array or a host (CPU) variable, not a distributed variable: "
            "call host_images outside any strategy.scope(). Received: "
            f"{type(images).__name__}")
    if isinstance(images, tf.Variable):
        if "CPU" not in images.device.upper():
            raise ValueError(
                "images must live in host memory: tf.data gathers its batches on the CPU. "
                f"Received a variable on device={images.device!r}; use host_images(array).")
        return images
    if isinstance(images, tf.Tensor):
        return images
    images = np.asarray(images)
    if tf.distribute.has_strategy():
        return tf.convert_to_tensor(images)
    with tf.device("/cpu:0"):
        stored = tf.Variable(tf.zeros(images.shape, images.dtype), trainable=False,
                             name="host_images")
    rows_per_chunk = max(1, _COPY_CHUNK_BYTES // max(1, images[:1].nbytes))
    for start in range(0, images.shape[0], rows_per_chunk):
        rows = tf.range(start, min(start + rows_per_chunk, images.shape[0]))
        # scatter_update writes in place; a sliced assign would first copy the whole buffer.
        stored.scatter_update(tf.IndexedSlices(images[start:start + rows_per_chunk], rows))
    return stored


def _check_images_and_labels(images: np.ndarray | tf.Variable | tf.Tensor,
                             labels: np.ndarray) -> tuple[np.ndarray | tf.Variable, np.ndarray]:
    if not isinstance(images, (tf.Variable, tf.Tensor)):
        images = np.asarray(images)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array. Received shape: {labels.shape}")
    if len(images.shape) < 1 or images.shape[0] != len(labels):
        raise ValueError(
            "images and labels must have the same number of rows. "
            f"Received: images {tuple(images.shape)}, labels {labels.shape}"
        )
    if len(labels) == 0:
        raise ValueError("images and labels are empty: there is nothing to iterate over.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers. Received dtype: {labels.dtype}")
    if labels.min() < UNLABELED:
        raise ValueError(
            f"labels must be class ids >= 0, or {UNLABELED} for unlabeled rows. "
            f"Received a label of {labels.min()}"
        )
    return images, labels


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer. Received: seed={seed!r}")
    if not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must fit in a signed 64-bit integer. Received: seed={seed}")
    return int(seed)


def _check_skip_batches(skip_batches: object) -> int:
    if isinstance(skip_batches, bool) or not isinstance(skip_batches, numbers.Integral) \
            or skip_batches < 0:
        raise ValueError("skip_batches must be an integer >= 0. "
                         f"Received: skip_batches={skip_batches!r}")
    return int(skip_batches)


def _index_batches(n_examples: int, batch_size: int, seed: int, stream: int,
                   skip_batches: int = 0) -> tf.data.Dataset:
    """Endless batches of indices 0..n_examples-1, reshuffled at every pass.

    `skip_batches` drops the first batches here, on indices only, so that resuming a long run
    at step N costs index shuffles, not N gathers of images.
    """
    stream_seed = tf.constant([seed, stream], dtype=tf.int64)
    indices = tf.range(n_examples, dtype=tf.int64)

    def one_pass(pass_number: tf.Tensor) -> tf.Tensor:
        pass_seed = tf.random.experimental.stateless_fold_in(stream_seed, pass_number)
        return tf.random.experimental.stateless_shuffle(indices, seed=pass_seed)

    return (
        tf.data.Dataset.counter(dtype=tf.int64)
        .map(one_pass)
        .unbatch()
        .batch(batch_size, drop_remainder=True)
        .skip(skip_batches)
    )


def _check_mode(n_labeled_per_batch: object, batch_size: int) -> int | None:
    """None for 'vary', else the number of labeled examples per batch."""
    if n_labeled_per_batch == "vary":
        return None
    if (
        isinstance(n_labeled_per_batch, bool)
        or not isinstance(n_labeled_per_batch, numbers.Integral)
        or not 1 <= n_labeled_per_batch <= batch_size
    ):
        raise ValueError(
            "n_labeled_per_batch must be 'vary' or an integer from 1 to batch_size "
            f"({batch_size}). Received: n_labeled_per_batch={n_labeled_per_batch!r}"
        )
    return int(n_labeled_per_batch)


def training_dataset(
    images: np.ndarray | tf.Variable | tf.Tensor,
    labels: np.ndarray,
    *,
    batch_size: int = 100,
    n_labeled_per_batch: int | str = "vary",
    seed: int = 0,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """Endless training minibatches `(images float32 (B, ...), labels int32 (B,))`.

    Args:
        images: (N, H, W, C) training images, labeled and unlabeled rows together: an
            array, or `host_images(array)` to share one host copy between several streams.
        labels: (N,) class ids, -1 for unlabeled rows (see `partition.training_rows`).
        batch_size: B, examples per minibatch.
        n_labeled_per_batch: 'vary': each batch is drawn from all N rows, labeled and
            unlabeled mixed as they come. k with 0 < k < B: k rows from the labeled rows,
            then B - k rows drawn from all N rows (labeled ones included) with labels set to
            -1. k == B: labeled rows only.
        seed: makes the stream reproducible; another seed gives other permutations.
        skip_batches: start the same stream after this many batches (to resume a run exactly).
    """
    batch_size = _check_batch_size(batch_size)
    images, labels = _check_images_and_labels(images, labels)
    n_labeled = _check_mode(n_labeled_per_batch, batch_size)
    seed = _check_seed(seed)
    skip_batches = _check_skip_batches(skip_batches)

    # Gathering whole batches from one host variable keeps per-example work out of the
    # pipeline, and a captured variable (unlike a graph constant) has no 2 GB limit.
    # Images keep their stored dtype until gathered, so uint8 inputs stay small in memory.
    all_images = host_images(images)
    all_labels = tf.convert_to_tensor(labels.astype(np.int32))

    def gather(rows: tf.Tensor, keep_labels: bool) -> tuple[tf.Tensor, tf.Tensor]:
        batch_images = tf.cast(tf.gather(all_images, rows), tf.float32)
        if keep_labels:
            return batch_images, tf.gather(all_labels, rows)
        return batch_images, tf.fill(tf.shape(rows), tf.constant(UNLABELED, tf.int32))

    if n_labeled is None:
        dataset = _index_batches(len(labels), batch_size, seed, _ALL_EXAMPLES_STREAM,
                                 skip_batches).map(
            lambda rows: gather(rows, keep_labels=True)
        )
        return dataset.prefetch(tf.data.AUTOTUNE)

    labeled_rows = np.flatnonzero(labels != UNLABELED)
    if len(labeled_rows) == 0:
        raise ValueError(
            f"n_labeled_per_batch={n_labeled} needs labeled rows, but every label is "
            f"{UNLABELED} (unlabeled). Use n_labeled_per_batch='vary' or pass labeled data."
        )
    labeled_rows_tensor = tf.constant(labeled_rows, dtype=tf.int64)
    labeled_batches = _index_batches(len(labeled_rows), n_labeled, seed, _LABELED_STREAM,
                                     skip_batches).map(
        lambda positions: gather(tf.gather(labeled_rows_tensor, positions), keep_labels=True)
    )
    if n_labeled == batch_size:
        return labeled_batches.prefetch(tf.data.AUTOTUNE)

    unlabeled_batches = _index_batches(
        len(labels), batch_size - n_labeled, seed, _ALL_EXAMPLES_STREAM, skip_batches
    ).map(lambda rows: gather(rows, keep_labels=False))
    dataset = tf.data.Dataset.zip(labeled_batches, unlabeled_batches).map(
        lambda labeled, unlabeled: (
            tf.concat([labeled[0], unlabeled[0]], axis=0),
            tf.concat([labeled[1], unlabeled[1]], axis=0),
        )
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def epoch_dataset(
    images: np.ndarray | tf.Variable | tf.Tensor,
    labels: np.ndarray,
    *,
    batch_size: int = 100,
    seed: int = 0,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """Temporal Ensembling's stream: `(images, labels, indices)` batches in whole epochs.

    Batch 0 is the initialisation batch (the first `batch_size` rows of a permutation of its
    own, as tempens draws its initialisation minibatch from a separate pass). Then epoch e
    (e = 0, 1, ...) is batches 1 + e * S to (e + 1) * S, S = N // batch_size: one fresh
    permutation of all N rows, labeled and unlabeled, cut into S full batches; the last
    N - S * batch_size rows of the permutation are dropped, as tempens' iterator drops its last
    partial minibatch. `indices` (int64) are the rows of `images`/`labels` each example comes
    from, so that per-example state (the ensemble predictions) follows the example whatever
    the shuffle. `skip_batches` starts the same stream later (to resume exactly).
    """
    batch_size = _check_batch_size(batch_size)
    images, labels = _check_images_and_labels(images, labels)
    seed = _check_seed(seed)
    skip_batches = _check_skip_batches(skip_batches)
    n_examples = len(labels)
    if batch_size > n_examples:
        raise ValueError(f"batch_size ({batch_size}) must be at most the number of training "
                         f"examples ({n_examples}): an epoch drops its last partial batch.")
    steps = n_examples // batch_size
    all_images = host_images(images)
    all_labels = tf.convert_to_tensor(labels.astype(np.int32))
    rows = tf.range(n_examples, dtype=tf.int64)

    def permutation(stream: int, pass_number: tf.Tensor) -> tf.Tensor:
        stream_seed = tf.constant([seed, stream], dtype=tf.int64)
        pass_seed = tf.random.experimental.stateless_fold_in(stream_seed, pass_number)
        return tf.random.experimental.stateless_shuffle(rows, seed=pass_seed)

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        kept = permutation(_ALL_EXAMPLES_STREAM, epoch)[: steps * batch_size]
        return tf.data.Dataset.from_tensor_slices(tf.reshape(kept, (steps, batch_size)))

    first = permutation(_INITIALIZATION_STREAM, tf.constant(0, tf.int64))[:batch_size]
    # Skipping whole epochs costs nothing: only the epoch counter moves.
    skip_epochs = max(skip_batches - 1, 0) // steps if skip_batches else 0
    within = (skip_batches - 1 - skip_epochs * steps) if skip_batches else 0
    epochs = tf.data.Dataset.counter(start=skip_epochs, dtype=tf.int64).flat_map(epoch_batches)
    batches = epochs.skip(within) if skip_batches else (
        tf.data.Dataset.from_tensors(first).concatenate(epochs))

    def gather(batch_rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return (tf.cast(tf.gather(all_images, batch_rows), tf.float32),
                tf.gather(all_labels, batch_rows), batch_rows)

    # Endless; flat_map hides that from tf.data, and `train` tells a stream that runs dry from
    # an endless one by its cardinality.
    return batches.map(gather).prefetch(tf.data.AUTOTUNE).apply(
        tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))


def evaluation_dataset(
    images: np.ndarray | tf.Variable | tf.Tensor, labels: np.ndarray, batch_size: int = 100
) -> tf.data.Dataset:
    """One in-order pass over `(images, labels)` in batches of `batch_size` (last one smaller).

    `images` is an array or `host_images(array)`. Yields `(images float32 (b, ...), labels
    int32 (b,))`.
    """
    batch_size = _check_batch_size(batch_size)
    images, labels = _check_images_and_labels(images, labels)
    all_images = host_images(images)
    all_labels = tf.convert_to_tensor(labels.astype(np.int32))
    n_examples = len(labels)

    def batch(start: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # A gather, not a slice: once a variable has had sparse access (the chunked fill),
        # reading it whole copies it, and a slice would read it whole.
        rows = tf.range(start, tf.minimum(start + batch_size, n_examples))
        return tf.cast(tf.gather(all_images, rows), tf.float32), tf.gather(all_labels, rows)

    return tf.data.Dataset.range(0, n_examples, batch_size).map(batch).prefetch(tf.data.AUTOTUNE)
