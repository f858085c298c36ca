"""Which `tf.distribute` strategy a run uses, and which of its workers writes the results.

A run is defined by its global batch: N replicas split each global batch and take the step one
device would take on it (the batch means and the gradients are reduced over all replicas). Under
`MultiWorkerMirroredStrategy` every worker runs the same program and the same steps, but only the
chief writes the run's files; the other workers write theirs into a temporary directory that is
deleted afterwards, as TensorFlow's multi-worker guides prescribe (saving is collective: every
worker must save).
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Iterator
from pathlib import Path

import tensorflow as tf

STRATEGY_NAMES = ("none", "default", "mirrored", "multi_worker")


@functools.cache  # one per process: MultiWorkerMirroredStrategy sets up collectives at start-up
def strategy_from_name(name: str) -> tf.distribute.Strategy:
    """The strategy of a `--distribute` value.

    "none"/"default": the default strategy (one device). "mirrored": `MirroredStrategy` over
    this machine's GPUs (or its CPU). "multi_worker": `MultiWorkerMirroredStrategy`, configured
    by the `TF_CONFIG` environment variable; create it before any other TensorFlow operation.
    """
    if name in ("none", "default"):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"distribute must be one of {STRATEGY_NAMES}. Received: distribute={name!r}")


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """The number of worker processes (machines) taking part in the strategy's steps."""
    resolver = strategy.cluster_resolver  # None for the single-machine strategies
    if resolver is None:
        return 1
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs) or 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: the only worker, or the cluster's chief."""
    resolver = strategy.cluster_resolver
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    # Without a "chief" job, worker 0 is the chief (TensorFlow's convention).
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().jobs)


def check_global_batch(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    """Refuses a global batch that the replicas cannot share equally."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(
            f"The batch size is the global batch, split equally over the replicas: "
            f"batch_size={batch_size} is not divisible by the {replicas} replicas in sync. "
            f"Use a multiple of {replicas}."
        )


@contextlib.contextmanager
def write_directory(results_dir: Path, strategy: tf.distribute.Strategy) -> Iterator[Path]:
    """Where this process writes: `results_dir` on the chief, else a temporary directory."""
    if is_chief(strategy):
        yield results_dir
        return
    with tempfile.TemporaryDirectory(prefix="mean_teacher_worker_") as temporary:
        yield Path(temporary)


def check_workers_agree(strategy: tf.distribute.Strategy, step: int) -> None:
    """Refuses to go on when the workers start from different steps (a collective operation).

    Every worker restores the chief's latest checkpoint; a worker that cannot read it (its
    results directory is not the chief's) would otherwise train out of step with the others.
    """
    if num_workers(strategy) == 1:
        return
    steps = strategy.gather(strategy.run(lambda: tf.constant([step], tf.int64)), axis=0)
    steps = [int(s) for s in steps.numpy()]
    if len(set(steps)) > 1:
        raise RuntimeError(
            f"The workers start from different steps: {steps}. Every worker restores the "
            "chief's latest checkpoint from --results_dir: it must be a directory that every "
            "worker reads (a shared filesystem)."
        )
