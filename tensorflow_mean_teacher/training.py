"""A complete, resumable Mean Teacher run: what `Model.train` of the original did, with Keras.

`train(config, training_stream, evaluation_data, results_dir)`:
* writes `config.json` (everything that defines the run) into `results_dir`;
* initialises the model from the stream's first batch, as the original (or restores the latest
  checkpoint of an interrupted run, refusing one whose config differs);
* evaluates at step 0 and every `evaluation_span` steps, with `fit` epochs of `evaluation_span`
  steps, saving a checkpoint of the complete state after each evaluation;
* logs training metrics every `print_span` steps (console, `training_log.csv`, TensorBoard);
* stops at `training_length`, exports the teacher as a SavedModel and writes `results.json`.

The training stream is a function of the number of batches to skip, so that a resumed run sees
exactly the batches an uninterrupted one would have seen.

With a `tf.distribute` strategy (`strategy=`), the model lives in its scope and `fit` splits each
global batch of the stream over the replicas. The global batch defines the run: the number of
replicas is not part of the config (a run may resume on another number of devices) and is
recorded in `results.json`. Under `MultiWorkerMirroredStrategy` every worker calls `train` with
the same arguments; the chief writes into `results_dir`, the other workers into a temporary
directory, and every worker resumes from the chief's checkpoints (see `distribution`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tensorflow_mean_teacher import callbacks as cb
from tensorflow_mean_teacher import distribution
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.inputs import IMAGE_SHAPE
from tensorflow_mean_teacher.model import MeanTeacher

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run, besides the data itself. Compared on resume.

    `data` describes the data (dataset name, n_labeled, data_seed, ...) for the record and for
    the resume check; the data arrays and streams are passed to `train` separately.
    """

    hyperparams: HyperParams = dataclasses.field(default_factory=HyperParams)
    batch_size: int = 100
    seed: int = 0
    width: int = 128
    num_classes: int = 10
    teacher_reads_ema: str = "pre"
    eval_mean_decay: float = 0.999
    deterministic: bool = False
    jit_compile: bool = False
    data: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["hyperparams"] = self.hyperparams.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        values = dict(values)
        values["hyperparams"] = HyperParams.from_dict(values.get("hyperparams", {}))
        return cls(**values)


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """The keys whose values differ between two nested config dicts, as 'key: old -> new'."""
    found = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return found


class ResultsDirectoryError(ValueError):
    """The results directory belongs to something else, or to a run with another config."""


def holds_run(results_dir: Path, config: RunConfig) -> bool:
    """Whether the results directory holds a run to resume; refuses one of another config."""
    config_path = results_dir / CONFIG_FILE
    if not config_path.exists():
        return False
    changed = differences(json.loads(config_path.read_text()), config.to_dict())
    if changed:
        raise ResultsDirectoryError(
            f"{results_dir} holds a run with another configuration; refusing to resume it. "
            "Differences (saved -> requested): " + "; ".join(changed)
            + ". Use another --results_dir, or the original settings."
        )
    return True


def prepare_results_dir(results_dir: Path, config: RunConfig) -> bool:
    """Creates or checks the results directory; True if it holds a run to resume."""
    if holds_run(results_dir, config):
        return True
    config_path = results_dir / CONFIG_FILE
    if results_dir.exists() and any(results_dir.iterdir()):
        raise ResultsDirectoryError(
            f"{results_dir} is not empty and has no {CONFIG_FILE}: it is not a results "
            "directory of this project. Choose a new or empty directory."
        )
    results_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(config_path, json.dumps(config.to_dict(), indent=2, sort_keys=True))
    return False


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def enable_determinism(seed: int) -> None:
    """Seeds Python, numpy and TensorFlow, and makes TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def check_stream(dataset: tf.data.Dataset, what: str) -> None:
    """Refuses a stream whose batches are not (float images (B, 32, 32, 3), integer labels)."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(f"The {what} stream must yield (images, labels) pairs. Got: {spec}")
    images, labels = spec
    if images.shape.rank != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(
            f"The {what} images must have shape (batch, 32, 32, 3). Got: {images.shape}"
        )
    if not images.dtype.is_floating:
        raise TypeError(f"The {what} images must be floating point. Got dtype: {images.dtype}")
    if not labels.dtype.is_integer:
        raise TypeError(f"The {what} labels must be integers. Got dtype: {labels.dtype}")


def train(config: RunConfig, training_stream: Callable[[int], tf.data.Dataset],
          evaluation_data: tf.data.Dataset, results_dir: str | os.PathLike, *,
          export_dir: str | os.PathLike | None = None, overwrite_export: bool = False,
          max_checkpoints: int = 3, console: Callable[[str], None] = print,
          strategy: tf.distribute.Strategy | None = None) -> dict:
    """Runs (or resumes) a Mean Teacher run; returns the final metrics and timing.

    Args:
        config: the run's settings.
        training_stream: `skip -> dataset`: the endless training stream without its first
            `skip` batches. Batch 0 initialises the model; step t trains on batch t + 1.
            Its batches are global batches (`config.batch_size` rows), split over the replicas.
        evaluation_data: finite dataset of (images, labels) batches, all labeled.
        results_dir: where the config, logs, TensorBoard files, checkpoints, the exported
            teacher and `results.json` go. Re-running with the same directory resumes.
        export_dir: where to export the teacher (default `results_dir/teacher`).
        overwrite_export: replace an existing, non-empty export_dir.
        strategy: a `tf.distribute.Strategy` (None: the default strategy, one device).
            With several workers, `results_dir` must be readable by every worker.
    """
    started = time.perf_counter()
    strategy = strategy or tf.distribute.get_strategy()
    distribution.check_global_batch(config.batch_size, strategy)
    results_dir = Path(results_dir)
    check_stream(training_stream(0), "training")
    check_stream(evaluation_data, "evaluation")
    chief = distribution.is_chief(strategy)
    # The other workers only read the chief's directory (it must be readable by them all).
    resuming = prepare_results_dir(results_dir, config) if chief else \
        holds_run(results_dir, config)
    # Every worker takes every step (the steps' reductions need them all), but only the chief
    # writes into results_dir; the others write the same files into a temporary directory.
    with distribution.write_directory(results_dir, strategy) as write_dir:
        own_export = write_dir / "teacher"
        export_path = Path(export_dir) if chief and export_dir is not None else own_export
        if export_path.exists() and export_path == own_export:
            overwrite_export = True  # this run's own export, from an earlier pass of the command
        results = _run(config, training_stream, evaluation_data, results_dir, write_dir,
                       resuming, export_path, overwrite_export, max_checkpoints, console,
                       strategy)
    results["seconds"] = time.perf_counter() - started
    if chief:
        _write_atomically(results_dir / RESULTS_FILE,
                          json.dumps(results, indent=2, sort_keys=True))
    return results


def _run(config: RunConfig, training_stream: Callable[[int], tf.data.Dataset],
         evaluation_data: tf.data.Dataset, results_dir: Path, write_dir: Path, resuming: bool,
         export_path: Path, overwrite_export: bool, max_checkpoints: int,
         console: Callable[[str], None], strategy: tf.distribute.Strategy) -> dict:
    """`train` once the directories are settled: reads results_dir, writes into write_dir."""
    hp = config.hyperparams
    if config.deterministic:
        enable_determinism(config.seed)

    with strategy.scope():
        model = MeanTeacher(hp, num_classes=config.num_classes, width=config.width,
                            teacher_reads_ema=config.teacher_reads_ema,
                            eval_mean_decay=config.eval_mean_decay, seed=config.seed)
        model.compile(jit_compile=config.jit_compile)
    training_log = cb.MetricsLog(write_dir / "training_log.csv",
                                 write_dir / "tensorboard" / "train")
    validation_log = cb.MetricsLog(write_dir / "validation_log.csv",
                                   write_dir / "tensorboard" / "validation")

    # Batch 0 builds the model (and, on a fresh run, initialises it); a restore overwrites it.
    model.initialize_from_batch(training_stream(0))
    model.optimizer.build(model.student.trainable_variables)
    checkpoint = model.training_checkpoint()
    # Every worker saves (saving is collective), each into its own write_dir; every worker
    # restores the chief's latest checkpoint.
    manager = tf.train.CheckpointManager(checkpoint, str(write_dir / "checkpoints"),
                                         max_to_keep=max_checkpoints)
    latest = tf.train.latest_checkpoint(str(results_dir / "checkpoints")) if resuming else None
    step = 0
    if latest:
        checkpoint.restore(latest).assert_consumed()
        step = cb.global_step(model)
        console(f"resumed from {latest} at step {step}")
    elif resuming:
        console(f"{results_dir} has no checkpoint yet: starting its run from step 0")
    distribution.check_workers_agree(strategy, step)
    training_log.truncate_after(step)
    validation_log.truncate_after(step)

    if step == 0:
        cb.record_validation(validation_log, 0, _evaluate(model, evaluation_data), console)
        manager.save(checkpoint_number=0)
    validation_logger = cb.ValidationLogger(validation_log, console)
    callbacks = [
        cb.DivergenceGuard(str(results_dir / "checkpoints")),
        cb.TrainingLogger(training_log, hp.print_span, hp.training_length, console),
        validation_logger,
        cb.Checkpointer(manager, console),
    ]
    while step < hp.training_length:
        # One `fit` epoch per evaluation span, ending on a multiple of evaluation_span (or at
        # training_length), so a resumed run evaluates and checkpoints at the same steps.
        span = min(hp.evaluation_span - step % hp.evaluation_span, hp.training_length - step)
        model.fit(training_stream(step + 1), steps_per_epoch=span, epochs=1,
                  validation_data=evaluation_data, shuffle=False, verbose=0,
                  callbacks=callbacks)
        if cb.global_step(model) != step + span:
            raise RuntimeError(
                f"The training stream ended at step {cb.global_step(model)}, before "
                f"training_length={hp.training_length}: it must be endless (repeat it)."
            )
        step += span
    if validation_logger.last is not None and validation_logger.last[0] == step:
        final = validation_logger.last[1]
    else:  # a finished run re-invoked: nothing was trained, evaluate once
        final = _evaluate(model, evaluation_data)
    model.export_teacher(export_path, overwrite=overwrite_export)
    console(f"exported the teacher to {export_path}")
    return {
        "step": cb.global_step(model),
        **final,
        "teacher_error": final["eval/error/ema"],
        "student_error": final["eval/error/1"],
        "replicas": strategy.num_replicas_in_sync,
        "workers": distribution.num_workers(strategy),
        "export_dir": str(export_path),
    }


def _evaluate(model: MeanTeacher, evaluation_data: tf.data.Dataset) -> dict[str, float]:
    values = model.evaluate(evaluation_data, verbose=0, return_dict=True)
    return {name: float(value) for name, value in values.items()}
