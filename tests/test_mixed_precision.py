"""Mixed precision: compute in float16/bfloat16, keep weights, EMA, eval means and costs in float32,
and a few steps track the float32 ones."""

import csv
import json

import keras
import numpy as np
import pytest

from tests.test_model import make_model, separable_data


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def run_steps(steps):
    x, y = separable_data(20)
    model = make_model(hp={"rampup_length": 0})
    model.initialize_from_batch(x)
    logs = [model.train_on_batch(x, y, return_dict=True) for _ in range(steps)]
    return model, logs


def float32_reference(steps):
    keras.mixed_precision.set_global_policy("float32")
    return run_steps(steps)[1]


def check_float32_state(model):
    for network in (model.student, model.teacher):
        for layer in network.weight_norm_layers:
            for variable in (*layer.parameters, layer.eval_mean):
                assert variable.dtype == "float32", variable.path


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_bfloat16_steps_track_float32(policy):
    model, logs = run_steps(4)
    assert model.student.get_layer("conv_1_1").compute_dtype == "bfloat16"
    check_float32_state(model)
    for mixed, full in zip(logs, float32_reference(4), strict=True):
        for name in ("loss", "train/class_cost/1", "train/class_cost/ema"):
            # bfloat16 keeps 8 bits of mantissa: about 1e-2 per step, compounding.
            assert mixed[name] == pytest.approx(full[name], rel=0.1), name


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_float16_scales_the_loss_and_tracks_float32(policy):
    model, logs = run_steps(10)
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    check_float32_state(model)
    reference = float32_reference(1)
    # The first step's forward pass (before any update) agrees closely.
    for name in ("loss", "train/class_cost/1", "train/class_cost/ema"):
        assert logs[0][name] == pytest.approx(reference[0][name], rel=1e-2), name
    # Steps whose scaled gradients overflow float16 are skipped while the scale drops; then
    # training proceeds.
    assert float(model.optimizer.dynamic_scale.numpy()) < 2.0**15
    assert np.isfinite(logs[-1]["loss"]) and logs[-1]["loss"] < logs[0]["loss"]


def _skip_count(model):
    # The scale halves on every skipped step and grows only after 2,000 finite ones.
    return int(round(np.log2(2.0**15 / float(model.optimizer.dynamic_scale.numpy()))))


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_a_skipped_step_moves_everything_but_the_student_update(policy):
    x, y = separable_data(20)
    model = make_model(hp={"rampup_length": 0})
    model.initialize_from_batch(x)
    inner = model.optimizer.inner_optimizer
    history = []
    while len(history) < 16 and not (history and not history[-1]):  # until one is applied
        student = [v.numpy() for v in model.student.trainable_variables]
        eval_mean = model.teacher.get_layer("conv_1_1").eval_mean.numpy()
        beta_1_power = float(inner.beta_1_power.numpy())
        skips = _skip_count(model)
        model.train_on_batch(x, y)
        skipped = _skip_count(model) == skips + 1
        history.append(skipped)
        # Every step moves the counter, and the teacher's eval means.
        assert int(model.optimizer.iterations.numpy()) == len(history)
        assert not np.array_equal(model.teacher.get_layer("conv_1_1").eval_mean.numpy(),
                                  eval_mean)
        # Only an applied step moves the student's weights and Adam's running beta products.
        unchanged = all(np.array_equal(now.numpy(), before) for now, before in zip(
            model.student.trainable_variables, student, strict=True))
        assert unchanged == skipped
        assert (float(inner.beta_1_power.numpy()) == beta_1_power) == skipped
    # float16 overflows at the initial scale 2**15: the first steps are skipped, then one is not.
    assert history[0] and not history[-1], history


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_a_skipped_step_still_moves_the_teacher_by_the_ema(policy):
    x, y = separable_data(20)
    model = make_model(hp={"rampup_length": 0})
    model.initialize_from_batch(x)
    while _skip_count(model) == 0 or _applied_steps(model) < 2:  # teacher != student now
        model.train_on_batch(x, y)
    # Force an overflow: the next step's scaled gradients are infinite.
    model.optimizer.dynamic_scale.assign(2.0**60)
    decay = float(model.train_on_batch(x, y, return_dict=True)["ema_decay"])
    teacher_before = model.teacher.get_layer("conv_2_1").kernel.numpy()
    student = model.student.get_layer("conv_2_1").kernel.numpy()
    steps = int(model.optimizer.iterations.numpy())
    model.optimizer.dynamic_scale.assign(2.0**60)
    model.train_on_batch(x, y)
    assert float(model.optimizer.dynamic_scale.numpy()) == 2.0**59  # skipped
    assert int(model.optimizer.iterations.numpy()) == steps + 1
    np.testing.assert_array_equal(model.student.get_layer("conv_2_1").kernel.numpy(), student)
    expected = teacher_before - (teacher_before - student) * (1 - decay)
    np.testing.assert_allclose(model.teacher.get_layer("conv_2_1").kernel.numpy(), expected,
                               rtol=1e-6, atol=1e-8)
    assert not np.allclose(expected, teacher_before, rtol=0, atol=1e-9)


def _applied_steps(model):
    return int(model.optimizer.iterations.numpy()) - _skip_count(model)


class ScaleRecorder(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.scale = float(self.model.optimizer.dynamic_scale.numpy())
        self.steps = int(self.model.optimizer.iterations.numpy())


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_train_counts_skipped_steps_as_steps(policy, tmp_path):
    from tensorflow_mean_teacher.training import train
    from tests.test_training import config, streams

    stream, evaluation = streams()
    recorder = ScaleRecorder()
    results = train(config(training_length=6, evaluation_span=3), stream, evaluation,
                    tmp_path / "run", callbacks=[recorder], console=lambda line: None)
    # Loss scaling skipped steps (the scale fell from 2**15), and the run still took its 6
    # steps on 6 batches, evaluating and checkpointing on schedule.
    assert recorder.scale < 2.0**15 and recorder.steps == 6
    assert results["step"] == 6
    assert json.loads((tmp_path / "run" / "results.json").read_text())["step"] == 6
    rows = list(csv.DictReader(open(tmp_path / "run" / "validation_log.csv")))
    assert [int(row["step"]) for row in rows] == [0, 3, 6]
