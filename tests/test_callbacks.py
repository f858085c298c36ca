"""Keras callbacks through `train()`: one `fit` whose epochs are the evaluation spans."""

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher import callbacks as cb
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.training import ResultsDirectoryError, RunConfig, train

# 7 steps in spans of 3: epochs end at steps 3, 6 and 7 (the last one is shorter).
LENGTH, SPAN = 7, 3
BOOKKEEPING = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")


def config(**hyperparams):
    hp = HyperParams(**{**dict(training_length=LENGTH, evaluation_span=SPAN, print_span=1,
                               rampup_length=3, rampdown_length=2, input_noise=0.0,
                               translate=False), **hyperparams})
    return RunConfig(hyperparams=hp, batch_size=8, width=4, eval_mean_decay=0.9, seed=5,
                     data={"dataset": "synthetic"})


def streams():
    rng = np.random.RandomState(1)
    patterns = rng.uniform(size=(10, 32, 32, 3)).astype(np.float32)
    y = (np.arange(48) % 10).astype(np.int32)
    x = patterns[y] + 0.2 * rng.normal(size=(48, 32, 32, 3)).astype(np.float32)
    labels = np.where(np.arange(48) < 16, y, -1).astype(np.int32)

    def stream(skip):
        return tf.data.Dataset.from_tensor_slices((x, labels)).repeat().batch(8).skip(skip)

    return stream, tf.data.Dataset.from_tensor_slices((x[16:32], y[16:32])).batch(8)


QUIET = dict(console=lambda _: None)


class Recorder(keras.callbacks.Callback):
    """What `fit` shows a callback: its calls, epochs and the global step at each epoch end."""

    def __init__(self):
        super().__init__()
        self.fits = []  # per fit: its params and the (epoch, step) of every epoch end

    def on_train_begin(self, logs=None):
        self.fits.append({"params": dict(self.params), "ends": []})

    def on_epoch_end(self, epoch, logs=None):
        self.fits[-1]["ends"].append((epoch, int(self.model.optimizer.iterations.numpy())))


class StopAt(keras.callbacks.Callback):
    """Asks `fit` to stop at a global step, within an epoch."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            self.model.stop_training = True


class Interrupted(Exception):
    pass


class Interrupt(keras.callbacks.Callback):
    """Fails at the end of an epoch, as a process killed there would stop."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupted(f"interrupted at the end of epoch {epoch}")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def steps(path):
    return [int(row["step"]) for row in read_csv(path)]


def final_state(run_dir):
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name not in BOOKKEEPING}


def assert_same_state(run_dir, reference_dir):
    state, reference = final_state(run_dir), final_state(reference_dir)
    assert state.keys() == reference.keys() and len(reference) > 100
    for name, value in reference.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


def scalars(event_dir):
    """{tag: [(step, value)]} of the TensorBoard event files in a directory."""
    found = {}
    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor))))
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run with CSVLogger, ModelCheckpoint({epoch}), TensorBoard."""
    root = tmp_path_factory.mktemp("reference")
    stream, evaluation = streams()
    recorder = Recorder()
    callbacks = [
        recorder,
        keras.callbacks.CSVLogger(str(root / "epochs.csv"), append=True),
        keras.callbacks.ModelCheckpoint(str(root / "weights" / "epoch-{epoch}.weights.h5"),
                                        save_weights_only=True),
        keras.callbacks.TensorBoard(str(root / "keras_tensorboard")),
    ]
    results = train(config(), stream, evaluation, root / "run", callbacks=callbacks, **QUIET)
    return {"root": root, "run": root / "run", "recorder": recorder, "results": results}


def test_callbacks_see_one_fit_whose_epochs_are_the_evaluation_spans(reference):
    run, (fit,) = reference["run"], reference["recorder"].fits
    assert fit["params"]["epochs"] == 3 and fit["params"]["steps"] == SPAN
    assert fit["ends"] == [(0, 3), (1, 6), (2, 7)]
    # The run's own behaviour: evaluations at 0, every span and at the end, a checkpoint after
    # each, training logs every print_span.
    assert steps(run / "validation_log.csv") == [0, 3, 6, 7]
    assert steps(run / "training_log.csv") == list(range(1, LENGTH + 1))
    assert sorted(p.name for p in (run / "checkpoints").glob("*.index")) == \
        ["ckpt-3.index", "ckpt-6.index", "ckpt-7.index"]
    assert reference["results"]["step"] == LENGTH
    assert "loss" not in read_csv(run / "validation_log.csv")[0]


def test_csv_logger_writes_one_row_per_span_with_the_evaluation(reference):
    rows = read_csv(reference["root"] / "epochs.csv")
    evaluations = read_csv(reference["run"] / "validation_log.csv")[1:]  # after step 0
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert {"val_eval/error/ema", "val_eval/class_cost/1", "train/error/1"} <= set(rows[0])
    # Keras' `val_loss` is the teacher's classification cost.
    assert [row["val_loss"] for row in rows] == [row["val_eval/class_cost/ema"] for row in rows]
    for row, evaluation in zip(rows, evaluations, strict=True):
        for name in ("eval/error/ema", "eval/error/1", "eval/class_cost/ema"):
            assert float(row[f"val_{name}"]) == pytest.approx(float(evaluation[name]), rel=1e-6)


def test_model_checkpoint_numbers_its_files_by_span(reference):
    assert sorted(p.name for p in (reference["root"] / "weights").iterdir()) == \
        [f"epoch-{n}.weights.h5" for n in (1, 2, 3)]


def test_tensorboard_writes_each_span_as_an_epoch(reference):
    board = reference["root"] / "keras_tensorboard"
    validation = scalars(board / "validation")
    evaluations = read_csv(reference["run"] / "validation_log.csv")[1:]
    logged = validation["epoch_eval/error/ema"]
    assert [step for step, _ in logged] == [0, 1, 2]
    np.testing.assert_allclose([value for _, value in logged],
                               [float(row["eval/error/ema"]) for row in evaluations], rtol=1e-6)
    assert [step for step, _ in scalars(board / "train")["epoch_train/error/1"]] == [0, 1, 2]


def early_stop_epoch(values, patience, min_delta):
    """Where EarlyStopping(mode="min") stops on these epoch values (None: it does not)."""
    best, wait = None, 0
    for epoch, value in enumerate(values):
        wait += 1
        if best is None or value + min_delta < best:
            best, wait = value, 0
        elif wait >= patience and epoch > 0:
            return epoch
    return None


def test_early_stopping_counts_its_patience_over_the_spans(tmp_path):
    stream, evaluation = streams()
    # 6 spans of 2 steps. Improvements of less than 0.2 in the teacher's error do not count.
    stopper = keras.callbacks.EarlyStopping(monitor="val_eval/error/ema", patience=2,
                                            min_delta=0.2, mode="min")
    lines = []
    results = train(config(training_length=12, evaluation_span=2), stream, evaluation, tmp_path,
                    callbacks=[stopper], console=lines.append)
    errors = [float(row["eval/error/ema"]) for row in read_csv(tmp_path / "validation_log.csv")]
    expected = early_stop_epoch(errors[1:], patience=2, min_delta=0.2)
    assert expected is not None and expected < 5, errors  # it stops before the last span
    stop = 2 * (expected + 1)
    assert stopper.stopped_epoch == expected
    assert steps(tmp_path / "validation_log.csv") == list(range(0, stop + 1, 2))
    # The run ends cleanly at the step reached: checkpoint, logs, export and results agree.
    assert results["step"] == stop
    assert json.loads((tmp_path / "results.json").read_text())["step"] == stop
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith(f"ckpt-{stop}")
    assert steps(tmp_path / "training_log.csv")[-1] == stop
    assert (tmp_path / "teacher" / "saved_model.pb").exists()
    assert any(f"training stopped by a callback at step {stop}" in line for line in lines)


def test_a_stop_within_a_span_is_checkpointed_and_a_rerun_continues_exactly(tmp_path, reference):
    stream, evaluation = streams()
    results = train(config(), stream, evaluation, tmp_path, callbacks=[StopAt(4)], **QUIET)
    assert results["step"] == 4
    assert steps(tmp_path / "validation_log.csv") == [0, 3, 4]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-4")
    assert (tmp_path / "teacher" / "saved_model.pb").exists()

    # Re-running resumes at step 4: that span is finished by a fit of its own (epoch 1, to
    # step 6), then the rest (epoch 2); the run ends as the uninterrupted one.
    recorder, lines = Recorder(), []
    results = train(config(), stream, evaluation, tmp_path, callbacks=[recorder],
                    console=lines.append)
    assert lines[0].endswith("at step 4") and results["step"] == LENGTH
    assert [fit["ends"] for fit in recorder.fits] == [[(1, 6)], [(2, 7)]]
    assert_same_state(tmp_path, reference["run"])
    assert steps(tmp_path / "training_log.csv") == list(range(1, LENGTH + 1))


@pytest.mark.parametrize("interrupted", ["after_backup", "before_backup"])
def test_backup_and_restore_interrupted_then_resumed_equals_uninterrupted(tmp_path, reference,
                                                                          interrupted):
    """Interrupted at the end of epoch 1 (step 6), after the run's checkpoint, and after or
    before BackupAndRestore's backup; re-run with the same callbacks."""
    stream, evaluation = streams()
    backup, log = tmp_path / "backup", tmp_path / "epochs.csv"

    def callbacks(*extra):
        return [keras.callbacks.BackupAndRestore(str(backup)),
                keras.callbacks.CSVLogger(str(log), append=True), *extra]

    first = callbacks(Interrupt(1)) if interrupted == "after_backup" else \
        [Interrupt(1), *callbacks()]
    with pytest.raises(Interrupted, match="end of epoch 1"):
        train(config(), stream, evaluation, tmp_path / "run", callbacks=first, **QUIET)
    backed_up = json.loads((backup / "training_metadata.json").read_text())["epoch"]
    assert backed_up == (2 if interrupted == "after_backup" else 1)

    recorder, lines = Recorder(), []
    results = train(config(), stream, evaluation, tmp_path / "run",
                    callbacks=callbacks(recorder), console=lines.append)
    assert lines[0].endswith("ckpt-6 at step 6") and results["step"] == LENGTH
    assert [fit["ends"] for fit in recorder.fits] == [[(2, 7)]]  # initial_epoch = 6 // 3
    assert any("a callback restored the state of step 3" in line for line in lines) == \
        (interrupted == "before_backup")
    assert_same_state(tmp_path / "run", reference["run"])
    assert not backup.exists()  # BackupAndRestore deletes its backup when fit completes
    # CSVLogger's epochs continue after the resume (epoch 1's row was never written when the
    # interruption came before it).
    assert [int(row["epoch"]) for row in read_csv(log)] == \
        ([0, 1, 2] if interrupted == "after_backup" else [0, 2])


def test_callbacks_of_the_wrong_kind_are_refused(tmp_path):
    stream, evaluation = streams()
    with pytest.raises(TypeError, match=r"callbacks must be a list of keras.callbacks.Callback "
                                        r"instances. Received: callbacks=\[<object"):
        train(config(), stream, evaluation, tmp_path, callbacks=[object()])
    with pytest.raises(TypeError, match="callbacks must be a list"):
        train(config(), stream, evaluation, tmp_path, callbacks=keras.callbacks.History())
    assert not any(tmp_path.iterdir())


def test_a_custom_student_is_recorded_by_class_and_another_one_refused(tmp_path):
    stream, evaluation = streams()

    def network():
        return keras.Sequential([
            keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])

    results = train(config(training_length=2, evaluation_span=2), stream, evaluation, tmp_path,
                    student=network(), **QUIET)
    assert results["step"] == 2
    assert json.loads((tmp_path / "config.json").read_text())["student"] == "Sequential"
    inputs = keras.Input((32, 32, 3))
    functional = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ResultsDirectoryError, match="student: 'Sequential' -> 'Functional'"):
        train(config(training_length=2, evaluation_span=2), stream, evaluation, tmp_path,
              student=functional, **QUIET)
    with pytest.raises(ResultsDirectoryError, match="student: 'Sequential' -> '<absent>'"):
        train(config(training_length=2, evaluation_span=2), stream, evaluation, tmp_path,
              **QUIET)


def test_a_log_row_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    log = cb.MetricsLog(tmp_path / "log.csv", tmp_path / "tensorboard")
    for step in (2, 4, 6):
        log.record(step, {"a/b": step / 10})
    text = (tmp_path / "log.csv").read_text()
    (tmp_path / "log.csv").write_text(text + "8,0.")  # killed within the row of step 8
    log.truncate_after(8)
    assert (tmp_path / "log.csv").read_text() == text
    log.truncate_after(-1)  # a run started over keeps no row
    assert (tmp_path / "log.csv").read_text() == ""
