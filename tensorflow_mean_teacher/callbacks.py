"""Keras callbacks of a Mean Teacher run: logs, checkpoints, the step limit, a divergence guard.

The step is always the global step, `model.optimizer.iterations`, so that a resumed run logs
and checkpoints under the same numbers as an uninterrupted one. A run is one `fit` whose epochs
are its evaluation spans (`EvaluationSpans`).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import keras
import tensorflow as tf

# What the console line shows first, as the original printed.
_CONSOLE_ORDER = ("eval/error/ema", "eval/error/1", "train/error/1", "train/class_cost/1",
                  "train/cons_cost/mt")


def global_step(model: keras.Model) -> int:
    return int(model.optimizer.iterations.numpy())


def format_metrics(values: Mapping[str, float]) -> str:
    """`error/1:  12.3%,  class_cost/1:   0.123456, ...`, errors as percentages."""
    names = [n for n in _CONSOLE_ORDER if n in values]
    names += [n for n in values if n not in names and "/" in n]
    parts = []
    for name in names:
        value = float(values[name])
        short = name.split("/", 1)[1] if name.startswith("train/") else name
        parts.append(f"{short}: {value:6.1%}" if "/error/" in name else f"{short}: {value:10.6f}")
    return ",  ".join(parts)


class MetricsLog:
    """One CSV file and one TensorBoard directory for a kind of metrics (training, validation).

    Rows are keyed by step. On resume, rows after the restored checkpoint (written by the run
    that was interrupted) are dropped so that the log reads as one uninterrupted run.
    """

    def __init__(self, csv_path: Path, tensorboard_dir: Path):
        self.csv_path = Path(csv_path)
        self.writer = tf.summary.create_file_writer(str(tensorboard_dir))
        self._columns: list[str] | None = None

    def truncate_after(self, step: int) -> None:
        if not self.csv_path.exists():
            return
        with self.csv_path.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["step"]) <= step]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        columns = list(rows[0]) if rows else []
        temporary = self.csv_path.with_suffix(".tmp")
        with temporary.open("w", newline="") as f:
            if columns:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        os.replace(temporary, self.csv_path)
        self._columns = columns or None

    def record(self, step: int, values: Mapping[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in values.items()}}
        if self._columns is None:
            self._columns = self._header() or list(row)
        write_header = not self._header()
        with self.csv_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, restval="",
                                    extrasaction="ignore")
            if write_header:
                writer.writeheader()
            writer.writerow(row)
        self._write_scalars(step, values)

    def _header(self) -> list[str]:
        if not self.csv_path.exists() or not self.csv_path.stat().st_size:
            return []
        with self.csv_path.open(newline="") as f:
            return next(csv.reader(f), [])

    def _write_scalars(self, step: int, values: Mapping[str, float]) -> None:
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))
        self.writer.flush()


class TrainingLogger(keras.callbacks.Callback):
    """Every `print_span` steps: the means of the training metrics over the span, to the CSV,
    TensorBoard and the console; then the training metrics restart for the next span."""

    def __init__(self, log: MetricsLog, print_span: int, training_length: int, console=print):
        super().__init__()
        self.log = log
        self.print_span = print_span
        self.training_length = training_length
        self.console = console
        self._span_start = None

    def on_train_begin(self, logs=None):
        if self._span_start is None:
            self._span_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if step % self.print_span and step != self.training_length:
            return
        values = {k: v for k, v in (logs or {}).items() if k != "loss"}
        elapsed = time.perf_counter() - self._span_start
        self.log.record(step, {**values, "seconds_per_step": elapsed / self.print_span})
        remaining = (self.training_length - step) * elapsed / self.print_span
        self.console(f"step {step:6d}:   {format_metrics(values)}   "
                     f"({elapsed / self.print_span:.2f} s/step, ~{_duration(remaining)} left)")
        for tracker in self.model.train_metrics:
            tracker.reset_state()
        self._span_start = time.perf_counter()


class ValidationLogger(keras.callbacks.Callback):
    """Records the evaluation that `fit` runs at the end of each epoch (every evaluation_span)."""

    def __init__(self, log: MetricsLog, console=print):
        super().__init__()
        self.log = log
        self.console = console
        self.last: tuple[int, dict] | None = None  # (step, values) of the latest evaluation

    def on_epoch_end(self, epoch, logs=None):
        # `val_loss` repeats eval/class_cost/ema (it is there for Keras' monitors), as the
        # training `loss` repeats a total cost: neither goes into the logs.
        values = {k[len("val_"):]: float(v) for k, v in (logs or {}).items()
                  if k.startswith("val_") and k != "val_loss"}
        if values:
            self.last = (global_step(self.model), values)
            record_validation(self.log, *self.last, self.console)


def record_validation(log: MetricsLog, step: int, values: Mapping[str, float], console=print):
    log.record(step, values)
    console(f"step {step:6d}:   {format_metrics(values)}")


class Checkpointer(keras.callbacks.Callback):
    """Saves the complete training state at the end of every epoch (every evaluation_span)."""

    def __init__(self, manager: tf.train.CheckpointManager, console=print):
        super().__init__()
        self.manager = manager
        self.console = console

    def on_epoch_end(self, epoch, logs=None):
        path = self.manager.save(checkpoint_number=global_step(self.model))
        self.console(f"saved checkpoint {path}")


class TrainStreamEnded(RuntimeError):
    """The training stream ran out of batches before `training_length`."""


def stream_ended_message(step: int, training_length: int) -> str:
    return (f"The training stream ended at step {step}, before "
            f"training_length={training_length}: it must be endless (repeat it).")


class EvaluationSpans(keras.callbacks.Callback):
    """Keeps `fit`'s epochs on the evaluation spans, and notices a training stream that ran dry.

    Epoch e ends at step min((e + 1) * evaluation_span, training_length), so the last epoch is
    shorter when evaluation_span does not divide training_length: at training_length this
    callback sets `model.stop_training`, and Keras still evaluates that epoch and calls every
    callback's `on_epoch_end` (the evaluation and checkpoint at training_length).

    An epoch that ends before its step without a stop request means that the stream ran out
    (Keras ends the epoch, and would restart the dataset for the next one): `ran_dry_at` is
    set and training stops after that epoch's evaluation and checkpoint, as at any stop. An epoch
    that trained no step at all (the stream was already empty) raises `TrainStreamEnded` at once:
    its state is already evaluated and checkpointed. `stream_end` is the step at which a stream
    of known length runs out (Keras does not notice one that runs out exactly at an epoch's
    end: it restarts it).
    """

    def __init__(self, evaluation_span: int, training_length: int):
        super().__init__()
        self.evaluation_span = evaluation_span
        self.training_length = training_length
        self.stream_end: int | None = None
        self.ran_dry_at: int | None = None
        self._epoch_start = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = global_step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        if global_step(self.model) >= self.training_length:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        step = global_step(self.model)
        if step == self._epoch_start:
            raise TrainStreamEnded(stream_ended_message(step, self.training_length))
        end = min((epoch + 1) * self.evaluation_span, self.training_length)
        exhausted = self.stream_end is not None and step >= self.stream_end
        if step < self.training_length and (exhausted or (
                step < end and not self.model.stop_training)):
            self.ran_dry_at = step
            self.model.stop_training = True


class RunCheckpointDecides(keras.callbacks.Callback):
    """After the caller's callbacks: the run's checkpoint decides the state training starts from.

    A `keras.callbacks.BackupAndRestore` among them loads its backup in `on_train_begin` and
    sets the epoch `fit` starts from. Its backup and the run's checkpoint are both written at
    epoch ends (the checkpoint first), so they normally hold the same state and its load changes
    nothing. When they do not (a run interrupted between the two saves, a backup saved every
    few batches, or one of another run), the checkpoint, which the position in the training
    stream was taken from, is restored again, and `fit` starts from its epoch.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, console=print, *,
                 always_restore: bool = False):
        super().__init__()
        self.checkpoint = checkpoint
        self.console = console
        # With a BackupAndRestore: a backup of another run may hold the same step, so the
        # checkpoint is restored whatever the step (once per `fit`).
        self.always_restore = always_restore
        self.path = ""
        self.step = 0
        self.initial_epoch = 0

    def expect(self, path: str, step: int, initial_epoch: int) -> None:
        """The checkpoint (and its step) that the next `fit` starts from, and its first epoch."""
        self.path, self.step, self.initial_epoch = path, step, initial_epoch

    def on_train_begin(self, logs=None):
        step = global_step(self.model)
        if step != self.step:
            self.console(f"a callback restored the state of step {step} (BackupAndRestore?); "
                         f"the run's checkpoint {self.path} at step {self.step} is restored "
                         "instead")
        if step != self.step or self.always_restore:
            self.checkpoint.restore(self.path).assert_consumed()
        # BackupAndRestore tells `fit` its first epoch through this attribute (fit reads it
        # after on_train_begin); it must be the checkpoint's.
        self.model._initial_epoch = self.initial_epoch


class TrainingDiverged(FloatingPointError):
    """A cost became NaN or infinite."""


class DivergenceGuard(keras.callbacks.Callback):
    """Stops with an error naming the step and the metric when a cost is NaN or infinite.

    It raises before the epoch ends, so no checkpoint of the diverged state is written: the
    last good checkpoint stays the latest.
    """

    def __init__(self, checkpoint_dir: str | None = None):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            if not math.isfinite(float(value)):
                latest = tf.train.latest_checkpoint(self.checkpoint_dir) \
                    if self.checkpoint_dir else None
                raise TrainingDiverged(
                    f"Training diverged at step {global_step(self.model)}: {name} = "
                    f"{float(value)}. The last good checkpoint is kept"
                    + (f" ({latest})." if latest else " (none was written yet).")
                    + " Lower max_learning_rate or max_consistency_cost, or check the inputs."
                )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
