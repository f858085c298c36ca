"""A complete, resumable Mean Teacher run: what `Model.train` of the original did, with Keras.

`train(config, training_stream, evaluation_data, results_dir)`:
* writes `config.json` (everything that defines the run) into `results_dir`;
* initialises the model from the stream's first batch, as the original (or restores the latest
  checkpoint of an interrupted run, refusing one whose config differs);
* evaluates at step 0 and every `evaluation_span` steps: one `fit` whose epochs are the
  evaluation spans, saving a checkpoint of the complete state after each evaluation;
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

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tensorflow_mean_teacher import callbacks as cb
from tensorflow_mean_teacher import checkpoints, distribution, run_lock
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.model import MeanTeacher
from tensorflow_mean_teacher.temporal_ensembling import TemporalEnsembling
from tensorflow_mean_teacher.temporal_ensembling_params import TemporalEnsemblingParams

# How the model learns from the unlabeled examples. Mean Teacher covers the Pi model
# (ema_consistency=False) and the supervised baseline (max_consistency_cost=0) as well.
METHODS = ("mean_teacher", "temporal_ensembling")
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
EXPORT_RECORD = "export.json"  # where the run exports: a re-run may overwrite it


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run, besides the data itself. Compared on resume.

    `data` describes the data (dataset name, n_labeled, data_seed, ...) for the record and for
    the resume check; the data arrays and streams are passed to `train` separately.

    `method` "temporal_ensembling" trains a `TemporalEnsembling` model with the settings
    `temporal_ensembling`; its stream yields (images, labels, indices) in whole epochs
    (`datasets.epoch_dataset`), `batch_size` is its minibatch_size and
    `hyperparams.training_length` its num_epochs times the steps of an epoch.
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
    method: str = "mean_teacher"
    temporal_ensembling: TemporalEnsemblingParams | None = None
    shared_flip: bool = False
    pi_target_gradients: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}. Received: method={self.method!r}")
        params = self.temporal_ensembling
        if self.method != "temporal_ensembling":
            if params is not None:
                raise ValueError("temporal_ensembling settings need "
                                 f"method='temporal_ensembling'. Received: method={self.method!r}")
            return
        if params is None:
            raise ValueError("method='temporal_ensembling' needs its settings "
                             "(temporal_ensembling=TemporalEnsemblingParams(...)). Received: "
                             "temporal_ensembling=None")
        for name, default in (("teacher_reads_ema", "pre"), ("shared_flip", False),
                              ("pi_target_gradients", True)):
            if getattr(self, name) != default:
                raise ValueError(f"{name} is a Mean Teacher setting; Temporal Ensembling has one "
                                 f"tower and no teacher. Received: {name}={getattr(self, name)!r}")
        if isinstance(params, Mapping):
            params = TemporalEnsemblingParams.from_dict(params)
            object.__setattr__(self, "temporal_ensembling", params)
        if params.minibatch_size != self.batch_size:
            raise ValueError(
                f"batch_size must equal temporal_ensembling.minibatch_size. Received: "
                f"batch_size={self.batch_size}, minibatch_size={params.minibatch_size}")
        if self.hyperparams.training_length != params.training_length:
            raise ValueError(
                "hyperparams.training_length must be num_epochs times the steps of an epoch "
                f"({params.num_epochs} x {params.steps_per_epoch} = {params.training_length}). "
                f"Received: training_length={self.hyperparams.training_length}")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["hyperparams"] = self.hyperparams.to_dict()
        if self.temporal_ensembling is not None:
            values["temporal_ensembling"] = self.temporal_ensembling.to_dict()
        # Settings added since runs were first recorded are absent at their defaults, so that
        # older runs still resume.
        return {key: value for key, value in values.items()
                if key not in _LATER_DEFAULTS or value != _LATER_DEFAULTS[key]}

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        values = dict(values)
        values["hyperparams"] = HyperParams.from_dict(values.get("hyperparams", {}))
        if values.get("temporal_ensembling") is not None:
            values["temporal_ensembling"] = TemporalEnsemblingParams.from_dict(
                values["temporal_ensembling"])
        return cls(**values)


_LATER_DEFAULTS = {"method": "mean_teacher", "temporal_ensembling": None, "shared_flip": False,
                   "pi_target_gradients": True}


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


def _as_dict(config: RunConfig | Mapping) -> dict:
    return config.to_dict() if isinstance(config, RunConfig) else dict(config)


def holds_run(results_dir: Path, config: RunConfig | Mapping) -> bool:
    """Whether the results directory holds a run to resume; refuses one of another config.

    `config`: a `RunConfig`, or the dict written into config.json (`run_record`).
    """
    config_path = results_dir / CONFIG_FILE
    if not config_path.exists():
        return False
    changed = differences(read_config(config_path), _as_dict(config))
    if changed:
        raise ResultsDirectoryError(
            f"{results_dir} holds a run with another configuration; refusing to resume it. "
            "Differences (saved -> requested): " + "; ".join(changed)
            + ". Use another --results_dir, or the original settings."
        )
    return True


def read_config(path: Path) -> dict:
    """The run record in config.json; refuses a file that is not a JSON object."""
    try:
        text = path.read_text()
        saved = json.loads(text)
    except UnicodeDecodeError as error:
        raise ResultsDirectoryError(f"{path} is not text ({error}): restore it from the "
                                    "run's checkpoint manifest, or use another --results_dir."
                                    ) from None
    except json.JSONDecodeError as error:
        line = text.splitlines()[error.lineno - 1] if text.splitlines() else ""
        raise ResultsDirectoryError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column "
            f"{error.colno}: {line.strip()[:80]!r}. It was edited or damaged: restore it, or "
            "use another --results_dir."
        ) from None
    if not isinstance(saved, dict):
        raise ResultsDirectoryError(f"{path} holds a {type(saved).__name__}, not a run's "
                                    "configuration (a JSON object).")
    return saved


def prepare_results_dir(results_dir: Path, config: RunConfig | Mapping, *,
                        write: bool = True) -> bool:
    """Creates or checks the results directory; True if it holds a run to resume.

    With `write=False` the config is not written yet (`write_config`, once the model is set
    up: a run that fails before then leaves an empty directory, which a corrected command may
    use).
    """
    if holds_run(results_dir, config):
        return True
    # The lock, and a config.json.tmp left by a kill before the config was in place, are not
    # another project's files.
    if results_dir.exists() and any(p.name != run_lock.LOCK_FILE and p.suffix != ".tmp"
                                    for p in results_dir.iterdir()):
        raise ResultsDirectoryError(
            f"{results_dir} is not empty and has no {CONFIG_FILE}: it is not a results "
            "directory of this project. Choose a new or empty directory."
        )
    results_dir.mkdir(parents=True, exist_ok=True)
    if write:
        write_config(results_dir, config)
    return False


def write_config(results_dir: Path, config: RunConfig | Mapping) -> None:
    _write_atomically(results_dir / CONFIG_FILE,
                      json.dumps(_as_dict(config), indent=2, sort_keys=True))


def run_record(config: RunConfig, student: keras.Model | None = None) -> dict:
    """What config.json holds: the config, and the class of a custom student network.

    The network itself is not recorded; its class name is, so that a run is not resumed with
    another kind of network. Without one (ConvLarge) the record is the config's alone, as it
    was before custom networks existed, so that older runs still resume.
    """
    record = config.to_dict()
    if student is not None:
        record["student"] = type(student).__name__
    return record


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise checkpoints.write_failure("the file", path, error) from error


def enable_determinism(seed: int) -> None:
    """Seeds Python, numpy and TensorFlow, and makes TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def check_stream(dataset: tf.data.Dataset, what: str, *,
                 with_indices: bool = False) -> tf.TensorShape:
    """Refuses a stream whose batches are not (float images (B, H, W, C), integer labels), or
    with `with_indices`, (images, labels, integer indices).

    Returns the images' shape without the batch dimension, (H, W, C) (None where unknown).
    """
    spec = dataset.element_spec
    size = 3 if with_indices else 2
    if not (isinstance(spec, tuple) and len(spec) == size):
        wanted = "(images, labels, indices) triples" if with_indices else "(images, labels) pairs"
        raise ValueError(f"The {what} stream must yield {wanted}. Received: {spec}")
    if with_indices and not (isinstance(spec[2], tf.TensorSpec) and spec[2].dtype.is_integer):
        raise TypeError(f"The {what} indices must be integers. Received: {spec[2]}")
    images, labels = spec[:2]
    if not isinstance(images, tf.TensorSpec) or images.shape.rank != 4:
        shape = getattr(images, "shape", images)
        raise ValueError(
            f"The {what} images must be batches of shape (batch, height, width, channels). "
            f"Received: shape={shape}"
        )
    if not images.dtype.is_floating:
        raise TypeError(f"The {what} images must be floating point. Received: dtype={images.dtype}")
    if not isinstance(labels, tf.TensorSpec) or not labels.dtype.is_integer:
        raise TypeError(f"The {what} labels must be integers. Received: "
                        f"dtype={getattr(labels, 'dtype', labels)}")
    return images.shape[1:]


def check_callbacks(callbacks: Sequence[keras.callbacks.Callback] | None
                    ) -> list[keras.callbacks.Callback]:
    """The caller's Keras callbacks as a list; refuses anything else (e.g. a CallbackList)."""
    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.Callback) or not isinstance(
            callbacks, Sequence) or not all(
            isinstance(c, keras.callbacks.Callback) for c in callbacks):
        raise TypeError(
            "callbacks must be a list of keras.callbacks.Callback instances. "
            f"Received: callbacks={callbacks!r}"
        )
    return list(callbacks)


def train(config: RunConfig, training_stream: Callable[[int], tf.data.Dataset],
          evaluation_data: tf.data.Dataset, results_dir: str | os.PathLike, *,
          callbacks: Sequence[keras.callbacks.Callback] | None = None,
          student: keras.Model | None = None,
          export_dir: str | os.PathLike | None = None, overwrite_export: bool = False,
          max_checkpoints: int = 3, console: Callable[[str], None] = print,
          strategy: tf.distribute.Strategy | None = None) -> dict:
    """Runs (or resumes) a Mean Teacher run; returns the final metrics and timing.

    Training is one `fit` whose epochs are the evaluation spans: epoch e (0-based, as
    `CSVLogger` and `TensorBoard` write it; `ModelCheckpoint`'s `{epoch}` is e + 1) trains steps
    e * evaluation_span + 1 to min((e + 1) * evaluation_span, training_length) and ends with the
    evaluation (`val_` logs) and the checkpoint at that step. The last epoch is shorter when
    evaluation_span does not divide training_length. A resumed run starts `fit` at
    `initial_epoch = step // evaluation_span`, so epoch numbers continue.

    Keras callbacks (`callbacks=`) run after the run's own, so they see the evaluation and the
    checkpoint of an epoch in its `on_epoch_end`:
    * a callback stopping training (`model.stop_training`, e.g. `EarlyStopping`) ends the run
      after that epoch's evaluation and checkpoint (a stop within an epoch still evaluates and
      checkpoints at the step reached); the teacher is exported and `results.json` records the
      step reached. Re-running the same command resumes from that checkpoint and trains on
      towards training_length (with fresh callback state: `EarlyStopping` restarts its
      patience). `results.json` holds an evaluation made after `fit`, so that it describes the
      exported teacher even when a callback changed the weights at the end
      (`EarlyStopping(restore_best_weights=True)`);
    * `BackupAndRestore`: the run already resumes from its own checkpoint; a backup of the same
      run holds the same state (both are written at epoch ends) and is loaded over it. If it
      holds another state (interrupted between the two saves, `save_freq` in batches), the
      run's checkpoint wins: the training stream's position comes from it;
    * `CSVLogger` needs `append=True` to keep its rows over a resume; the logs of a run
      interrupted between its checkpoint and a callback's write are the callback's affair
      (the run's own logs are cut back to the checkpoint on resume);
    * a `TensorBoard` callback needs its own `log_dir` (the run's is `results_dir/tensorboard`).
    A run resumed from a checkpoint within an epoch (written when a stream ran dry or a
    callback stopped within an epoch) first finishes that epoch in a `fit` of its own.

    Args:
        config: the run's settings.
        training_stream: `skip -> dataset`: the endless training stream without its first
            `skip` batches. Batch 0 initialises the model; step t trains on batch t + 1.
            Its batches are global batches (`config.batch_size` rows), split over the replicas.
            Images are float (batch, height, width, channels), of any size.
        evaluation_data: finite dataset of (images, labels) batches, all labeled, with the
            training images' height, width and channels.
        results_dir: where the config, logs, TensorBoard files, checkpoints, the exported
            teacher and `results.json` go. Re-running with the same directory resumes.
        callbacks: Keras callbacks, called after the run's own (see above).
        student: the student network (`MeanTeacher(student=...)`); None: ConvLarge of
            `config.width`. Its class name is recorded in config.json (a run is not resumed
            with another class); its weights come from the checkpoint on resume. With a
            `strategy`, build the student inside `strategy.scope()`, so that its variables are
            the strategy's as its teacher's are.
        export_dir: where to export the teacher (default `results_dir/teacher`).
        overwrite_export: replace an existing, non-empty export_dir.
        strategy: a `tf.distribute.Strategy` (None: the default strategy, one device).
            With several workers, `results_dir` must be readable by every worker.
    """
    started = time.perf_counter()
    strategy = strategy or tf.distribute.get_strategy()
    distribution.check_global_batch(config.batch_size, strategy)
    callbacks = check_callbacks(callbacks)
    if not isinstance(max_checkpoints, int) or max_checkpoints < 1:
        raise ValueError(f"max_checkpoints must be an integer >= 1. Received: "
                         f"max_checkpoints={max_checkpoints!r}")
    if student is not None and not isinstance(student, keras.Model):
        raise TypeError(f"student must be a keras.Model. Received: student={student!r}")
    results_dir = Path(results_dir)
    training_shape = check_stream(training_stream(0), "training",
                                  with_indices=config.method == "temporal_ensembling")
    evaluation_shape = check_stream(evaluation_data, "evaluation")
    if not training_shape.is_compatible_with(evaluation_shape):
        raise ValueError(
            "The evaluation images must have the training images' (height, width, channels). "
            f"Received: training={tuple(training_shape)}, "
            f"evaluation={tuple(evaluation_shape)}"
        )
    record = run_record(config, student)
    chief = distribution.is_chief(strategy)
    # One process per run: the chief holds the directory's lock until train returns.
    with run_lock.hold(results_dir) if chief else contextlib.nullcontext():
        # The other workers only read the chief's directory (it must be readable by them all).
        resuming = prepare_results_dir(results_dir, record, write=False) if chief else \
            holds_run(results_dir, record)
        # Every worker takes every step (the steps' reductions need them all), but only the chief
        # writes into results_dir; the others write the same files into a temporary directory.
        with distribution.write_directory(results_dir, strategy) as write_dir:
            own_export = write_dir / "teacher"
            export_path = Path(export_dir) if chief and export_dir is not None else own_export
            overwrite_export = _check_export_path(export_path, own_export, overwrite_export,
                                                  results_dir)
            results = _run(config, record, training_stream, evaluation_data, results_dir,
                           write_dir, resuming, export_path, overwrite_export, max_checkpoints,
                           console, strategy, callbacks, student)
        results["seconds"] = time.perf_counter() - started
        if chief:
            _write_atomically(results_dir / RESULTS_FILE,
                              json.dumps(results, indent=2, sort_keys=True))
        return results


def _check_export_path(export_path: Path, own_export: Path, overwrite: bool,
                       results_dir: Path) -> bool:
    """Whether the export overwrites `export_path`; refuses a non-empty one before training
    (the export would refuse it at the end)."""
    if export_path.exists() and export_path == own_export:
        return True  # this run's own export, from an earlier pass of the command
    record = results_dir / EXPORT_RECORD
    if record.exists():
        try:
            if Path(json.loads(record.read_text())["path"]) == export_path:
                return True  # written (or begun) by an earlier pass of this run
        except (ValueError, KeyError, TypeError):
            pass
    if not overwrite and export_path.exists() and (
            not export_path.is_dir() or any(export_path.iterdir())):
        raise FileExistsError(
            f"Export path {str(export_path)!r} exists and is not empty. Choose a new path, "
            "or pass overwrite_export=True (--overwrite_export on the runners) to replace it."
        )
    return overwrite


def _run(config: RunConfig, record: dict, training_stream: Callable[[int], tf.data.Dataset],
         evaluation_data: tf.data.Dataset, results_dir: Path, write_dir: Path, resuming: bool,
         export_path: Path, overwrite_export: bool, max_checkpoints: int,
         console: Callable[[str], None], strategy: tf.distribute.Strategy,
         user_callbacks: list[keras.callbacks.Callback], student: keras.Model | None) -> dict:
    """`train` once the directories are settled: reads results_dir, writes into write_dir."""
    hp = config.hyperparams
    span, length = hp.evaluation_span, hp.training_length
    if config.deterministic:
        enable_determinism(config.seed)

    with strategy.scope():
        # Passed only when given, so that a MeanTeacher without the argument still works.
        network = {} if student is None else {"student": student}
        if config.method == "temporal_ensembling":
            model = TemporalEnsembling(config.temporal_ensembling, hp,
                                       num_classes=config.num_classes, width=config.width,
                                       eval_mean_decay=config.eval_mean_decay, seed=config.seed,
                                       **network)
        else:
            model = MeanTeacher(hp, num_classes=config.num_classes, width=config.width,
                                teacher_reads_ema=config.teacher_reads_ema,
                                eval_mean_decay=config.eval_mean_decay, seed=config.seed,
                                shared_flip=config.shared_flip,
                                pi_target_gradients=config.pi_target_gradients, **network)
        model.compile(jit_compile=config.jit_compile)
    # Batch 0 builds the model (and, on a fresh run, initialises it); a restore overwrites it.
    model.initialize_from_batch(training_stream(0))
    if not resuming and distribution.is_chief(strategy):
        # Only now: a model that cannot be set up (a wrong class count, images too small)
        # leaves no config behind to refuse the corrected command with.
        write_config(results_dir, record)
    training_log = cb.MetricsLog(write_dir / "training_log.csv",
                                 write_dir / "tensorboard" / "train")
    validation_log = cb.MetricsLog(write_dir / "validation_log.csv",
                                   write_dir / "tensorboard" / "validation")
    checkpoint = model.training_checkpoint()
    # Every worker saves (saving is collective), each into its own write_dir; every worker
    # restores the chief's latest intact checkpoint.
    manager = checkpoints.manager(checkpoint, write_dir / "checkpoints")
    checkpointer = cb.Checkpointer(manager, console, record, keep=max_checkpoints)
    # A signal (SIGTERM, SIGINT) from here on checkpoints the step and ends the run with
    # RunInterrupted. With several workers a signal reaches one of them, and saving is
    # collective: there, preemption is left to the cluster's own handling.
    on_signal = cb.CheckpointOnSignal(checkpointer, console, evaluation_span=span,
                                      training_length=length)
    with on_signal if distribution.num_workers(strategy) == 1 else contextlib.nullcontext():
        return _train_and_export(
            config, record, model, training_stream, evaluation_data, results_dir, resuming,
            export_path, console, strategy, user_callbacks, training_log, validation_log,
            checkpointer, on_signal, overwrite_export)


def _train_and_export(config, record, model, training_stream, evaluation_data, results_dir,
                      resuming, export_path, console, strategy, user_callbacks, training_log,
                      validation_log, checkpointer, on_signal, overwrite_export) -> dict:
    """`_run` once the model, the logs and the checkpointer exist."""
    hp = config.hyperparams
    span, length = hp.evaluation_span, hp.training_length
    latest, manifest = checkpoints.latest_complete(results_dir / "checkpoints", console) \
        if resuming else (None, None)
    step = 0
    if latest:
        if manifest is not None:
            _check_config_unchanged(results_dir, manifest, latest)
        _restore(model, latest)
        step = cb.global_step(model)
        console(f"resumed from {latest} at step {step}")
    elif resuming:
        console(f"{results_dir} has no checkpoint yet: starting its run from step 0")
    distribution.check_workers_agree(strategy, step)
    # A run started over from step 0 keeps no row (its step-0 evaluation is made again).
    training_log.truncate_after(step if latest else -1)
    validation_log.truncate_after(step if latest else -1)

    if not latest:  # a run from step 0 (a restored checkpoint of step 0 has its evaluation)
        cb.record_validation(validation_log, 0, _evaluate(model, evaluation_data), console)
        latest = checkpointer.save(step=0)
    validation_logger = cb.ValidationLogger(validation_log, console)
    spans = cb.EvaluationSpans(span, length)
    backup = any(isinstance(c, keras.callbacks.BackupAndRestore) for c in user_callbacks)
    start_point = cb.RunCheckpointDecides(lambda path: _restore(model, path), console,
                                          always_restore=backup)
    running_means = cb.ContinueRunningMeans()
    callbacks = [
        spans,  # first: its on_epoch_end decides whether this epoch ends the run
        running_means,
        cb.DivergenceGuard(str(results_dir / "checkpoints")),
        cb.TrainingLogger(training_log, hp.print_span, length, console),
        validation_logger,
        checkpointer,
        on_signal,
        *user_callbacks,
        start_point,  # last: after a BackupAndRestore's on_train_begin
    ]

    def fit(steps_per_epoch: int, epochs: int) -> None:
        stream = training_stream(step + 1)
        batches = int(stream.cardinality())
        spans.stream_end = step + batches if batches >= 0 else None  # else endless or unknown
        start_point.expect(latest, step, step // span)
        model.fit(stream, steps_per_epoch=steps_per_epoch, epochs=epochs,
                  initial_epoch=step // span, validation_data=evaluation_data, shuffle=False,
                  verbose=0, callbacks=callbacks)

    epochs = math.ceil(length / span)
    if step < length and step % span:
        # Resumed within an epoch: finish that epoch (to the next evaluation) on its own.
        running_means.keep(model)
        fit(min(span - step % span, length - step), step // span + 1)
        step, latest = cb.global_step(model), checkpointer.last_saved
    if step < length and spans.ran_dry_at is None and not model.stop_training:
        fit(span, epochs)
        step, latest = cb.global_step(model), checkpointer.last_saved
    # A signal that came outside a batch (the restore, an evaluation, the last epoch's end):
    # the step reached is checkpointed (`latest`).
    on_signal.raise_if_received(step, latest)
    if spans.ran_dry_at is not None:
        raise cb.TrainStreamEnded(cb.stream_ended_message(step, length))
    if step < length:
        console(f"training stopped by a callback at step {step} (epoch "
                f"{math.ceil(step / span)} of {epochs}), before training_length={length}; "
                f"step {step} is checkpointed, and re-running the same command resumes from it")

    last = validation_logger.last
    if last is not None and last[0] == step and not user_callbacks:
        final = last[1]
    else:  # a finished run re-invoked, or callbacks that may have changed the weights at the end
        final = _evaluate(model, evaluation_data)
    if distribution.is_chief(strategy):  # the export at this path is this run's from now on
        _write_atomically(results_dir / EXPORT_RECORD, json.dumps({"path": str(export_path)}))
    model.export_teacher(export_path, overwrite=overwrite_export)
    console(f"exported the teacher to {export_path}")
    if on_signal.received is not None:
        console(f"{signal.Signals(on_signal.received).name} received during the final "
                "evaluation or the export: the run had finished")
    return {
        "step": step,
        **final,
        "teacher_error": final["eval/error/ema"],
        "student_error": final["eval/error/1"],
        "replicas": strategy.num_replicas_in_sync,
        "workers": distribution.num_workers(strategy),
        "export_dir": str(export_path),
    }


def _check_config_unchanged(results_dir: Path, manifest: Mapping, latest: str) -> None:
    """Refuses a config.json changed since the checkpoint was written (edited by hand)."""
    saved = read_config(results_dir / CONFIG_FILE)
    changed = differences(manifest.get("config", {}), saved)
    if changed:
        raise ResultsDirectoryError(
            f"{results_dir / CONFIG_FILE} was changed after {latest} was written, which "
            "recorded (checkpoint -> config.json): " + "; ".join(changed)
            + ". Put the recorded values back, or start a new run in another --results_dir."
        )


def _restore(model: MeanTeacher, path: str) -> None:
    """Restores every state of checkpoint `path` (one written before the training metrics were
    saved restores the rest)."""
    saved = {name.split("/", 1)[0] for name, _ in tf.train.list_variables(path)}
    model.training_checkpoint(train_metrics="train_metrics" in saved).restore(
        path).assert_consumed()


def _evaluate(model: MeanTeacher, evaluation_data: tf.data.Dataset) -> dict[str, float]:
    values = model.evaluate(evaluation_data, verbose=0, return_dict=True)
    # `loss` repeats eval/class_cost/ema (for Keras' monitors): not one of the run's metrics.
    return {name: float(value) for name, value in values.items() if name != "loss"}
