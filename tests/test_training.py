import csv
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher.callbacks import RunInterrupted, TrainingDiverged
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.run_lock import RunInUseError
from tensorflow_mean_teacher.training import (
    ResultsDirectoryError,
    RunConfig,
    check_stream,
    prepare_results_dir,
    run_record,
    train,
)


def data(n=60, seed=0):
    rng = np.random.RandomState(seed)
    patterns = rng.uniform(size=(10, 32, 32, 3)).astype(np.float32)
    y = (np.arange(n) % 10).astype(np.int32)
    x = patterns[y] + 0.2 * rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    return x, np.where(np.arange(n) < 20, y, -1).astype(np.int32), y


def config(**hyperparams):
    hp = HyperParams(**{**dict(training_length=12, evaluation_span=5, print_span=2,
                               rampup_length=4, rampdown_length=3, input_noise=0.0,
                               translate=False), **hyperparams})
    return RunConfig(hyperparams=hp, batch_size=10, width=4, eval_mean_decay=0.9, seed=3,
                     data={"dataset": "synthetic"})


def streams(scale=1.0):
    x, y, true_y = data()

    def stream(skip):
        ds = tf.data.Dataset.from_tensor_slices((x * scale, y)).repeat().batch(10)
        return ds.skip(skip)

    evaluation = tf.data.Dataset.from_tensor_slices((x[20:40], true_y[20:40])).batch(10)
    return stream, evaluation


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_writes_logs_checkpoints_export_and_results(tmp_path):
    stream, evaluation = streams()
    lines = []
    results = train(config(), stream, evaluation, tmp_path / "run", console=lines.append)
    run = tmp_path / "run"
    assert results["step"] == 12
    assert {"teacher_error", "student_error", "eval/error/ema", "seconds"} <= set(results)
    assert json.loads((run / "results.json").read_text())["step"] == 12
    saved = json.loads((run / "config.json").read_text())
    assert saved["hyperparams"]["training_length"] == 12 and saved["width"] == 4

    # Evaluation at step 0, every evaluation_span and at the end (12 is not a multiple of 5).
    assert [int(r["step"]) for r in read_csv(run / "validation_log.csv")] == [0, 5, 10, 12]
    training = read_csv(run / "training_log.csv")
    assert [int(r["step"]) for r in training] == [2, 4, 6, 8, 10, 12]
    assert {"train/error/1", "train/cons_cost/mt", "learning_rate", "ema_decay"} <= set(training[0])
    assert any(line.startswith("step      4:   error/1:") for line in lines)
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.suffix == ".index") == \
        ["ckpt-10.index", "ckpt-12.index", "ckpt-5.index"]  # the last three kept
    assert list((run / "tensorboard" / "train").iterdir())
    loaded = tf.saved_model.load(str(run / "teacher"))
    x, _, _ = data()
    probabilities = loaded.signatures["serving_default"](images=tf.constant(x[:3]))["probabilities"]
    np.testing.assert_allclose(probabilities.numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_rerunning_a_finished_run_resumes_at_its_end(tmp_path):
    stream, evaluation = streams()
    first = train(config(), stream, evaluation, tmp_path, console=lambda _: None)
    lines = []
    second = train(config(), stream, evaluation, tmp_path, console=lines.append)
    assert "resumed from" in lines[0] and lines[0].endswith("at step 12")
    assert second["eval/error/ema"] == first["eval/error/ema"]
    assert [int(r["step"]) for r in read_csv(tmp_path / "validation_log.csv")] == [0, 5, 10, 12]


def test_resume_continues_exactly_where_the_run_stopped(tmp_path):
    """A run stopped at step 5 and resumed ends with the weights of an uninterrupted run."""
    stream, evaluation = streams()
    quiet = dict(console=lambda _: None)
    train(config(), stream, evaluation, tmp_path / "whole", **quiet)

    # The same run cut short: its stream runs dry after 7 batches (init + 6 steps).
    def short_stream(skip):
        return stream(skip).take(max(0, 7 - skip))

    with pytest.raises(RuntimeError, match="training stream ended at step 6, before "
                                           "training_length=12: it must be endless"):
        train(config(), short_stream, evaluation, tmp_path / "cut", **quiet)
    assert not (tmp_path / "cut" / "results.json").exists()
    train(config(), stream, evaluation, tmp_path / "cut", **quiet)

    whole = tf.train.load_checkpoint(str(tmp_path / "whole" / "checkpoints"))
    cut = tf.train.load_checkpoint(str(tmp_path / "cut" / "checkpoints"))
    bookkeeping = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")
    names = [n for n in whole.get_variable_to_shape_map() if n not in bookkeeping]
    assert len(names) > 100  # weights, eval means, Adam slots, beta powers, RNG states, step
    for name in names:
        np.testing.assert_array_equal(cut.get_tensor(name), whole.get_tensor(name), err_msg=name)
    assert [int(r["step"]) for r in read_csv(tmp_path / "cut" / "training_log.csv")] == \
        [2, 4, 6, 8, 10, 12]


def test_a_run_with_other_settings_is_refused(tmp_path):
    stream, evaluation = streams()
    prepare_results_dir(tmp_path, config())  # what a run writes first
    with pytest.raises(ResultsDirectoryError,
                       match=r"Differences \(saved -> requested\): "
                             r"hyperparams.max_consistency_cost: 100.0 -> 5.0"):
        train(config(max_consistency_cost=5.0), stream, evaluation, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "config.json"]


def test_config_json_of_a_convlarge_run_is_its_config_as_before():
    """No "student" key without a custom student: config.json of older runs still matches."""
    record = config().to_dict()
    assert "student" not in record and run_record(config()) == record
    assert run_record(config(), student=keras.Sequential())["student"] == "Sequential"


def test_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("someone else's")
    stream, evaluation = streams()
    with pytest.raises(ResultsDirectoryError, match="not a results directory of this project"):
        train(config(), stream, evaluation, tmp_path)


def test_divergence_stops_with_the_step_and_metric_and_keeps_the_checkpoint(tmp_path):
    stream, evaluation = streams(scale=1e30)
    with pytest.raises(TrainingDiverged, match=r"Training diverged at step \d+: \S+ = (nan|inf)"):
        train(config(normalize_input=False), stream, evaluation, tmp_path, console=lambda _: None)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-0")


def test_streams_of_the_wrong_kind_are_refused(tmp_path):
    _, evaluation = streams()

    def batches(images, labels=None):
        labels = np.zeros(4, np.int32) if labels is None else labels
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)

    small = batches(np.zeros((4, 28, 28, 3), np.float32))
    with pytest.raises(ValueError, match=r"evaluation images must have the training images' "
                                         r"\(height, width, channels\). Received: "
                                         r"training=\(28, 28, 3\), evaluation=\(32, 32, 3\)"):
        train(config(), lambda skip: small, evaluation, tmp_path)
    flat = batches(np.zeros((4, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"training images must be batches of shape \(batch, "
                                         r"height, width, channels\). Received: shape=\(None, "
                                         r"32, 32\)"):
        train(config(), lambda skip: flat, evaluation, tmp_path)
    ints = batches(np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(TypeError, match="training images must be floating point"):
        train(config(), lambda skip: ints, evaluation, tmp_path)
    with pytest.raises(TypeError, match="evaluation labels must be integers"):
        train(config(), lambda skip: small, batches(np.zeros((4, 28, 28, 3), np.float32),
                                                    np.zeros(4, np.float32)), tmp_path)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    # Any image size and number of channels, the same for both streams.
    gray = batches(np.zeros((4, 20, 24, 1), np.float16))
    assert tuple(check_stream(gray, "training")) == (20, 24, 1)


def test_export_refuses_a_non_empty_directory_before_training(tmp_path):
    stream, evaluation = streams()
    target = tmp_path / "export"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        train(config(), stream, evaluation, tmp_path / "run", export_dir=target,
              console=lambda _: None)
    assert (target / "keep.txt").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_convlarge_on_28x28x1_images_with_100_classes(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.uniform(size=(200, 28, 28, 1)).astype(np.float32)
    y = (np.arange(200) % 100).astype(np.int32)

    def stream(skip):
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(10).skip(skip)

    evaluation = tf.data.Dataset.from_tensor_slices((x[:20], y[:20])).batch(10)
    run = dataclasses.replace(config(training_length=2, evaluation_span=2), num_classes=100)
    results = train(run, stream, evaluation, tmp_path / "run", console=lambda _: None)
    assert results["step"] == 2
    serve = tf.saved_model.load(str(tmp_path / "run" / "teacher")).signatures["serving_default"]
    assert serve.structured_input_signature[1]["images"].shape.as_list() == [None, 28, 28, 1]
    outputs = serve(images=tf.constant(x[:3]))
    assert outputs["probabilities"].shape == (3, 100)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)


def custom_student():
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(4, 3, strides=2, kernel_initializer=keras.initializers.GlorotUniform(
        seed=1))(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.3, seed=2)(keras.layers.ReLU()(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(
        10, kernel_initializer=keras.initializers.GlorotUniform(seed=3))(h))


def test_a_custom_student_run_resumes_exactly(tmp_path):
    from tests.test_callbacks import Interrupt, Interrupted, final_state

    stream, evaluation = streams()
    noisy = config(input_noise=0.2, translate=True)  # random draws that must resume too
    quiet = dict(console=lambda _: None)
    train(noisy, stream, evaluation, tmp_path / "reference", student=custom_student(), **quiet)
    with pytest.raises(Interrupted):
        train(noisy, stream, evaluation, tmp_path / "run", student=custom_student(),
              callbacks=[Interrupt(0)], **quiet)  # after the checkpoint at step 5
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-5")
    results = train(noisy, stream, evaluation, tmp_path / "run", student=custom_student(),
                    **quiet)
    assert results["step"] == 12
    # Every variable of the student, the teacher (BN statistics included), the input stages'
    # and dropout's generators and the optimizer, bit for bit.
    state, reference = final_state(tmp_path / "run"), final_state(tmp_path / "reference")
    assert state.keys() == reference.keys()
    # 8 weights and a dropout generator per network (the student's 6 trainable weights stored
    # once, as the optimizer's), 2 input-stage generators; the optimizer's step, 2 x 6 slots
    # and 2 beta products; the init flag; the running total and count of each of the 14
    # training metrics.
    assert len(reference) == 2 * 9 + 2 + (1 + 12 + 2) + 1 + 2 * 14
    for name, value in reference.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    assert read_csv(tmp_path / "run" / "validation_log.csv") == \
        read_csv(tmp_path / "reference" / "validation_log.csv")


def test_a_run_that_fails_in_its_set_up_leaves_the_directory_to_the_corrected_command(tmp_path):
    stream, evaluation = streams()
    inputs = keras.Input((32, 32, 3))
    three_classes = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="returns 3 class logits, but the model has "
                                         "num_classes=10"):
        train(config(), stream, evaluation, tmp_path / "run", student=three_classes,
              console=lambda _: None)
    assert not (tmp_path / "run" / "config.json").exists()
    results = train(config(training_length=2, evaluation_span=2), stream, evaluation,
                    tmp_path / "run", student=custom_student(), console=lambda _: None)
    assert results["step"] == 2


def checkpoint_state(directory):
    reader = tf.train.load_checkpoint(str(directory / "checkpoints"))
    bookkeeping = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name not in bookkeeping}


def logs_without_timing(directory):
    return {name: [{k: v for k, v in row.items() if k != "seconds_per_step"}
                   for row in read_csv(directory / name)]
            for name in ("training_log.csv", "validation_log.csv")}


class SendSignal(keras.callbacks.Callback):
    """Sends this process `signal_number` after step `step`, as a preempting scheduler would."""

    def __init__(self, step, signal_number):
        super().__init__()
        self.step, self.signal_number = step, signal_number

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            os.kill(os.getpid(), self.signal_number)


# Sent after step 6 (between the evaluations at 5 and 10, on a log row), a signal is handled
# at the next batch end: step 7, between two log rows (6, 8). Sent after step 4, it is handled
# at step 5, an epoch's last batch: after that epoch's evaluation and checkpoint.
@pytest.mark.parametrize("signal_number, sent, stop", [
    (signal.SIGTERM, 6, 7), (signal.SIGTERM, 4, 5),
    pytest.param(signal.SIGINT, 6, 7, marks=pytest.mark.slow)])
def test_a_signal_checkpoints_the_step_reached_and_the_rerun_ends_bit_equal(
        tmp_path, signal_number, sent, stop):
    stream, evaluation = streams()
    quiet = dict(console=lambda _: None)
    train(config(), stream, evaluation, tmp_path / "whole", **quiet)
    before = signal.getsignal(signal_number)
    lines = []
    with pytest.raises(RunInterrupted) as stopped:
        train(config(), stream, evaluation, tmp_path / "cut", console=lines.append,
              callbacks=[SendSignal(sent, signal_number)])
    assert stopped.value.step == stop and stopped.value.exit_code == 75
    assert stopped.value.checkpoint.endswith(f"ckpt-{stop}")
    assert signal.getsignal(signal_number) is before  # the handlers are put back
    assert not (tmp_path / "cut" / "results.json").exists()
    # The logs are those of an uninterrupted run so far: no evaluation at step 7, the
    # evaluation at the epoch's end, 5.
    assert [int(r["step"]) for r in read_csv(tmp_path / "cut" / "validation_log.csv")] == [0, 5]

    lines = []
    results = train(config(), stream, evaluation, tmp_path / "cut", console=lines.append)
    assert results["step"] == 12 and "resumed from" in lines[0]
    assert lines[0].endswith(f"at step {stop}")
    reference = checkpoint_state(tmp_path / "whole")
    state = checkpoint_state(tmp_path / "cut")
    assert state.keys() == reference.keys() and any("train_metrics" in k for k in state)
    for name, value in reference.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    # The row at step 8 averages steps 7 and 8: the running means were checkpointed at 7.
    assert logs_without_timing(tmp_path / "cut") == logs_without_timing(tmp_path / "whole")


def test_a_second_process_on_the_same_run_is_refused_naming_the_holder(tmp_path):
    stream, evaluation = streams()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tensorflow_mean_teacher import run_lock\n"
         "with run_lock.hold(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError, match=rf"in use by another run: pid {holder.pid} on "
                                                rf"host {socket.gethostname()}"):
            train(config(), stream, evaluation, tmp_path, console=lambda _: None)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing written


def test_a_config_json_that_is_not_json_is_refused_naming_the_line(tmp_path):
    stream, evaluation = streams()
    prepare_results_dir(tmp_path, config())
    text = (tmp_path / "config.json").read_text().splitlines()
    text[1] = text[1].rstrip(",")  # a comma lost in a hand edit
    (tmp_path / "config.json").write_text("\n".join(text))
    # The error is found where the next key starts: line 3, column 3.
    with pytest.raises(ResultsDirectoryError, match=r"config.json is not valid JSON: Expecting "
                                                    r"',' delimiter at line 3, column 3: "
                                                    r"'\"data\": {'"):
        train(config(), stream, evaluation, tmp_path, console=lambda _: None)


def test_a_config_json_edited_after_a_checkpoint_is_refused_naming_the_key(tmp_path):
    stream, evaluation = streams()
    short = config(training_length=5)
    train(short, stream, evaluation, tmp_path, console=lambda _: None)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["hyperparams"]["max_learning_rate"] = 0.5  # and the command asks for it too
    (tmp_path / "config.json").write_text(json.dumps(saved))
    edited = RunConfig.from_dict(saved)
    with pytest.raises(ResultsDirectoryError,
                       match=r"config.json was changed after .*ckpt-5 was written, which "
                             r"recorded \(checkpoint -> config.json\): "
                             r"hyperparams.max_learning_rate: 0.003 -> 0.5"):
        train(edited, stream, evaluation, tmp_path, console=lambda _: None)


def test_a_corrupt_latest_checkpoint_is_skipped_and_the_run_still_ends_bit_equal(tmp_path):
    stream, evaluation = streams()
    quiet = dict(console=lambda _: None)
    train(config(), stream, evaluation, tmp_path / "whole", **quiet)
    train(config(training_length=10), stream, evaluation, tmp_path / "cut", **quiet)
    # The same run asked to go on to 12 after its checkpoint at 10 was damaged on disk.
    cut = tmp_path / "cut"
    saved = json.loads((cut / "config.json").read_text())
    saved["hyperparams"]["training_length"] = 12
    (cut / "config.json").write_text(json.dumps(saved))
    for manifest in (cut / "checkpoints").glob("*.manifest.json"):
        record = json.loads(manifest.read_text())
        record["config"]["hyperparams"]["training_length"] = 12
        manifest.write_text(json.dumps(record))
    data = cut / "checkpoints" / "ckpt-10.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    lines = []
    train(config(), stream, evaluation, cut, console=lines.append)
    assert lines[0].startswith("warning: skipped corrupt checkpoint") and "ckpt-10" in lines[0]
    assert lines[0].endswith("resuming from " + str(cut / "checkpoints" / "ckpt-5"))
    reference, state = checkpoint_state(tmp_path / "whole"), checkpoint_state(cut)
    for name, value in reference.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    assert logs_without_timing(cut) == logs_without_timing(tmp_path / "whole")


def test_a_run_killed_after_exporting_to_its_export_dir_finishes_on_the_rerun(tmp_path):
    stream, evaluation = streams()
    quiet = dict(console=lambda _: None)
    train(config(), stream, evaluation, tmp_path / "run", export_dir=tmp_path / "served",
          **quiet)
    (tmp_path / "run" / "results.json").unlink()  # killed after the export, before results
    results = train(config(), stream, evaluation, tmp_path / "run",
                    export_dir=tmp_path / "served", **quiet)  # no overwrite_export: its own
    assert results["step"] == 12 and (tmp_path / "served" / "saved_model.pb").exists()
    with pytest.raises(FileExistsError):  # another run may not overwrite it
        train(config(), stream, evaluation, tmp_path / "other", export_dir=tmp_path / "served",
              **quiet)


def test_a_config_json_tmp_left_by_a_kill_does_not_block_the_run(tmp_path):
    stream, evaluation = streams()
    (tmp_path / "config.json.tmp").write_text('{"batch_si')  # killed while writing it
    results = train(config(), stream, evaluation, tmp_path, console=lambda _: None)
    assert results["step"] == 12
