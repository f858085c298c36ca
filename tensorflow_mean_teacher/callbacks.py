"""Keras callbacks of a Mean Teacher run: logs, checkpoints, the step limit, a divergence guard.

The step is always the global step, `model.optimizer.iterations`, so that a resumed run logs
and checkpoints under the same numbers as an uninterrupted one. A run is one `fit` whose epochs
are its evaluation spans (`EvaluationSpans`).
"""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import keras
import tensorflow as tf

from tensorflow_mean_teacher import checkpoints
from tensorflow_mean_teacher.faults import kill_point

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
        """Keeps the rows of steps <= `step` (-1: none), and drops a row torn by a kill."""
        if not self.csv_path.exists():
            return
        text = self.csv_path.read_text()
        if not text.endswith("\n"):  # a process killed while writing its last row
            text = text[:text.rfind("\n") + 1]
        rows = [row for row in csv.DictReader(io.StringIO(text, newline=""))
                if _complete(row) and int(row["step"]) <= step]
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
        lines = io.StringIO(newline="")
        writer = csv.DictWriter(lines, fieldnames=self._columns, restval="",
                                extrasaction="ignore")
        if not self._header():
            writer.writeheader()
        writer.writerow(row)
        text = lines.getvalue()
        try:
            with self.csv_path.open("a", newline="") as f:
                f.write(text[:len(text) // 2])
                f.flush()
                kill_point("log_row_started")
                f.write(text[len(text) // 2:])
        except OSError as error:
            raise checkpoints.write_failure("the log", self.csv_path, error) from error
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


def _complete(row: Mapping[str, str | None]) -> bool:
    if None in row or any(value is None for value in row.values()):
        return False  # too many or too few fields
    try:
        int(row["step"])
    except (KeyError, ValueError):
        return False
    return True


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
    """Saves the complete training state at the end of every epoch (every evaluation_span),
    each checkpoint with its manifest (`checkpoints.save`); `record` is the run's config."""

    def __init__(self, manager: tf.train.CheckpointManager, console=print,
                 record: Mapping | None = None, keep: int = 3):
        super().__init__()
        self.manager = manager
        self.console = console
        self.record = dict(record or {})
        self.keep = keep
        self.last_saved: str | None = None

    def save(self, step: int | None = None) -> str:
        """Saves the state of `step` (default: the model's step)."""
        step = global_step(self.model) if step is None else step
        self.last_saved = checkpoints.save(self.manager, step, self.record, keep=self.keep)
        self.console(f"saved checkpoint {self.last_saved}")
        return self.last_saved

    def on_epoch_end(self, epoch, logs=None):
        self.save()


# Exit code of a runner whose run was stopped by SIGTERM or SIGINT, its state checkpointed
# (sysexits' EX_TEMPFAIL: try again later). Re-running the same command resumes it.
INTERRUPTED_EXIT_CODE = 75


class RunInterrupted(Exception):
    """SIGTERM or SIGINT stopped the run; its state at `step` is in `checkpoint`."""

    exit_code = INTERRUPTED_EXIT_CODE

    def __init__(self, signal_name: str, step: int, checkpoint: str):
        super().__init__(
            f"{signal_name} received: stopped at step {step}, saved as {checkpoint}. Re-run the "
            "same command to resume from it."
        )
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class CheckpointOnSignal(keras.callbacks.Callback):
    """SIGTERM (preemption) or SIGINT (Ctrl-C): checkpoint the step reached, then stop.

    Used as a context manager around training, it installs the handlers (in the main thread
    only: Python runs handlers there) and restores the previous ones at the end. The handler
    only notes the signal and puts the previous handlers back, so that a second signal acts at
    once (a second Ctrl-C is a KeyboardInterrupt). At the next batch end (or epoch end, after
    the Checkpointer's save) the state of the step reached is checkpointed and `RunInterrupted`
    raised: no evaluation at that step, so the logs read as those of an uninterrupted run. The
    last batch of an epoch is left to the epoch's end, after its evaluation and checkpoint.
    A signal outside `fit` is acted on by `train` (`raise_if_received`).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpointer: Checkpointer, console: Callable[[str], None] = print, *,
                 evaluation_span: int = 1, training_length: int = 1):
        super().__init__()
        self.checkpointer = checkpointer
        self.console = console
        self.evaluation_span = evaluation_span
        self.training_length = training_length
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._note)
        return self

    def __exit__(self, *exc_info):
        self._restore_handlers()
        return False

    def _restore_handlers(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _note(self, number, frame) -> None:
        self.received = number
        self._restore_handlers()

    def _stop(self, step: int, saved: str | None = None) -> None:
        name = signal.Signals(self.received).name
        if saved is None:
            self.console(f"{name} received at step {step}: saving a checkpoint")
            saved = self.checkpointer.save()
        raise RunInterrupted(name, step, saved)

    def raise_if_received(self, step: int, saved: str) -> None:
        """Outside `fit`: `RunInterrupted` if a signal came, `saved` holding step `step`."""
        if self.received is not None:
            self._stop(step, saved)

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        ends_epoch = step % self.evaluation_span == 0 or step >= self.training_length
        if self.received is not None and not ends_epoch:
            self._stop(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.received is not None:  # the Checkpointer (before) has saved this step
            self._stop(global_step(self.model), self.checkpointer.manager.latest_checkpoint)


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


class ContinueRunningMeans(keras.callbacks.Callback):
    """Keras resets the metrics as each epoch begins. A run resumed within an epoch (from a
    checkpoint written on a signal) continues the running means of the training metrics that
    the checkpoint holds instead, so that its next log row is the uninterrupted run's."""

    def __init__(self):
        super().__init__()
        self._values: list | None = None

    def keep(self, model: keras.Model) -> None:
        """Keeps `model`'s running means now, to be put back as the next epoch begins."""
        self._values = [v.numpy() for t in model.train_metrics for v in t.variables]

    def on_epoch_begin(self, epoch, logs=None):
        if self._values is not None:
            variables = [v for t in self.model.train_metrics for v in t.variables]
            for variable, value in zip(variables, self._values, strict=True):
                variable.assign(value)
            self._values = None


class RunCheckpointDecides(keras.callbacks.Callback):
    """After the caller's callbacks: the run's checkpoint decides the state training starts from.

    A `keras.callbacks.BackupAndRestore` among them loads its backup in `on_train_begin` and
    sets the epoch `fit` starts from. Its backup and the run's checkpoint are both written at
    epoch ends (the checkpoint first), so they normally hold the same state and its load changes
    nothing. When they do not (a run interrupted between the two saves, a backup saved every
    few batches, or one of another run), the checkpoint, which the position in the training
    stream was taken from, is restored again, and `fit` starts from its epoch.
    """

    def __init__(self, restore: Callable[[str], None], console=print, *,
                 always_restore: bool = False):
        super().__init__()
        self.restore = restore  # path -> None: restores the run's checkpoint
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
            self.restore(self.path)
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
                latest = checkpoints.latest_complete(self.checkpoint_dir, lambda _: None)[0] \
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
