"""Temporal Ensembling's settings and schedules against closed forms of tempens' train.py.

The references are written here with Python's math, in float64 as tempens computes its ramps in
its epoch loop, then rounded once to float32 (tempens passes them through `floatX`).
"""

import dataclasses
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher.temporal_ensembling_params import (
    PRESETS,
    SCHEDULED,
    TemporalEnsemblingParams,
    TemporalEnsemblingSchedule,
    epoch_of_step,
    rampdown,
    rampup,
    scheduled_values,
)


def ref_rampup(epoch, length):
    if epoch < length:
        phase = 1.0 - max(0.0, float(epoch)) / float(length)
        return math.exp(-phase * phase * 5.0)
    return 1.0


def ref_rampdown(epoch, num_epochs, length):
    start = num_epochs - length
    if epoch >= start:
        half = (epoch - start) * 0.5
        return math.exp(-(half * half) / length)
    return 1.0


def ref_schedule(p, step):
    """(learning_rate, adam_beta_1, unsup_weight) of global step `step`, float64, tempens' way."""
    epoch = step // (p.num_examples // p.minibatch_size)
    up = ref_rampup(epoch, p.rampup_length)
    down = ref_rampdown(epoch, p.num_epochs, p.rampdown_length)
    scaled_weight_max = p.unsup_weight_max * (1.0 * p.num_labels / p.num_examples)
    weight = 0.0 if epoch == 0 else up * scaled_weight_max
    return (up * down * p.learning_rate_max,
            down * p.adam_beta1 + (1.0 - down) * p.rampdown_beta1_target,
            weight)


SMALL = TemporalEnsemblingParams(num_examples=1005, num_labels=250, minibatch_size=100,
                                 num_epochs=12, rampup_length=5, rampdown_length=4,
                                 learning_rate_max=0.003, unsup_weight_max=30.0)


def test_closed_forms_of_the_ramps_themselves():
    # Sanity of the references: tempens' values at a few points.
    assert ref_rampup(0, 80) == math.exp(-5.0)
    assert ref_rampup(40, 80) == math.exp(-1.25)
    assert ref_rampup(80, 80) == ref_rampup(300, 80) == 1.0
    assert ref_rampdown(249, 300, 50) == 1.0
    assert ref_rampdown(250, 300, 50) == 1.0  # the first rampdown epoch is still 1
    assert ref_rampdown(299, 300, 50) == math.exp(-(24.5 ** 2) / 50)


@pytest.mark.parametrize("length", [1, 5, 80])
def test_rampup_is_tempens_formula(length):
    epochs = np.arange(0, length + 4)
    got = rampup(tf.constant(epochs), length).numpy()
    assert got.dtype == np.float64
    want = np.array([ref_rampup(e, length) for e in epochs])
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
    assert got[0] == pytest.approx(math.exp(-5.0), rel=1e-15)
    assert np.all(got[epochs >= length] == 1.0)
    assert np.all(np.diff(got) >= 0)


def test_rampup_of_length_zero_is_one_from_the_start():
    assert np.all(rampup(tf.range(5), 0).numpy() == 1.0)


@pytest.mark.parametrize("num_epochs, length", [(300, 50), (12, 4), (3, 1), (5, 5)])
def test_rampdown_is_tempens_code_formula(num_epochs, length):
    epochs = np.arange(num_epochs)
    got = rampdown(tf.constant(epochs), num_epochs, length).numpy()
    assert got.dtype == np.float64
    want = np.array([ref_rampdown(e, num_epochs, length) for e in epochs])
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
    assert np.all(got[: num_epochs - length + 1] == 1.0)
    if length > 1:
        assert got[-1] < 1.0


def test_epoch_of_step_counts_whole_epochs_of_full_minibatches():
    # 1005 examples in minibatches of 100: 10 steps an epoch (5 examples dropped).
    assert SMALL.steps_per_epoch == 10 and SMALL.training_length == 120
    steps = np.arange(0, 125)
    got = epoch_of_step(SMALL, tf.constant(steps)).numpy()
    np.testing.assert_array_equal(got, steps // 10)
    assert got.dtype == np.int64


@pytest.mark.parametrize("params", [
    SMALL,
    SMALL.replace(rampup_length=0, rampdown_length=0),
    SMALL.replace(num_labels=0),
    SMALL.replace(num_labels=1005, minibatch_size=7, num_epochs=6, rampup_length=3,
                  rampdown_length=2, adam_beta1=0.85, rampdown_beta1_target=0.4,
                  learning_rate_max=0.001),
    TemporalEnsemblingParams(),  # tempens' CIFAR-10 preset: 500 steps an epoch, 300 epochs
], ids=["small", "no-ramps", "no-labels", "all-labeled", "defaults"])
def test_scheduled_values_match_tempens_epoch_loop(params):
    s = params.steps_per_epoch
    # Every epoch's first and last step, and a middle one.
    steps = sorted({t for e in range(params.num_epochs) for t in (e * s, e * s + s // 2,
                                                                   e * s + s - 1)})
    values = scheduled_values(params, tf.constant(steps, tf.int64))
    assert {k: v.dtype for k, v in values.items()} == {k: tf.float32 for k in SCHEDULED}
    want = np.array([ref_schedule(params, t) for t in steps])  # (steps, 3) float64
    for column, name in enumerate(SCHEDULED):
        got = values[name].numpy()
        np.testing.assert_allclose(got, want[:, column], rtol=1e-6, atol=0, err_msg=name)
        # Computed in float64 and rounded once: the float32 of tempens' float64 value.
        np.testing.assert_array_equal(got, want[:, column].astype(np.float32), err_msg=name)


def test_scheduled_values_at_landmarks():
    p = SMALL  # 10 steps an epoch, 12 epochs, ramp-up 5 epochs, ramp-down over the last 4
    scaled = 30.0 * 250 / 1005

    def at(step):
        return {k: float(v) for k, v in scheduled_values(p, step).items()}

    # Epoch 0: no consistency weight (no ensemble yet), ramp-up at exp(-5).
    for step in (0, 5, 9):
        v = at(step)
        assert v["unsup_weight"] == 0.0
        assert v["learning_rate"] == np.float32(math.exp(-5.0) * 0.003)
        assert v["adam_beta_1"] == np.float32(0.9)
    # Epoch 1: the weight starts, ramped up.
    v = at(10)
    assert v["unsup_weight"] == np.float32(math.exp(-5 * 0.8 ** 2) * scaled)
    assert v["unsup_weight"] > 0
    # Constant within an epoch.
    assert at(10) == at(19)
    assert at(19) != at(20)
    # After the ramp-up, before the ramp-down: the maxima.
    v = at(60)
    assert v["learning_rate"] == np.float32(0.003)
    assert v["unsup_weight"] == np.float32(scaled)
    assert v["adam_beta_1"] == np.float32(0.9)
    # The first ramp-down epoch (8) is still 1; the last (11) is exp(-1.5^2 / 4).
    assert at(80) == at(60)
    down = math.exp(-(1.5 ** 2) / 4)
    v = at(119)
    assert v["learning_rate"] == np.float32(down * 0.003)
    assert v["adam_beta_1"] == np.float32(down * 0.9 + (1 - down) * 0.5)
    assert v["unsup_weight"] == np.float32(scaled)  # the weight is not ramped down


def test_schedule_is_a_keras_schedule_that_round_trips():
    schedule = TemporalEnsemblingSchedule(SMALL, "adam_beta_1")
    assert float(schedule(tf.constant(119, tf.int64))) == float(
        scheduled_values(SMALL, 119)["adam_beta_1"])
    config = keras.saving.serialize_keras_object(schedule)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, TemporalEnsemblingSchedule)
    assert restored.params == SMALL and restored.quantity == "adam_beta_1"
    assert TemporalEnsemblingSchedule(SMALL.to_dict(), "unsup_weight").params == SMALL
    with pytest.raises(ValueError, match=r"Allowed: learning_rate, adam_beta_1, unsup_weight\. "
                                         r"Received: quantity='ema_decay'"):
        TemporalEnsemblingSchedule(SMALL, "ema_decay")


def test_defaults_and_presets_are_tempens_config():
    p = TemporalEnsemblingParams()
    assert p.to_dict() == dict(
        num_examples=50000, num_labels=4000, minibatch_size=100, num_epochs=300,
        rampup_length=80, rampdown_length=50, learning_rate_max=0.003, adam_beta1=0.9,
        rampdown_beta1_target=0.5, adam_beta2=0.999, adam_epsilon=1e-8, prediction_decay=0.6,
        unsup_weight_max=30.0)
    assert p.steps_per_epoch == 500 and p.training_length == 150000
    assert p.scaled_unsup_weight_max == pytest.approx(30.0 * 4000 / 50000, rel=1e-15)
    assert PRESETS["cifar10"] == {"learning_rate_max": 0.003, "unsup_weight_max": 30.0}
    assert PRESETS["svhn"] == {"learning_rate_max": 0.001, "unsup_weight_max": 30.0}


@pytest.mark.parametrize("changes, name, shown", [
    ({"num_examples": 0, "num_labels": 0}, "num_examples", "0"),
    ({"minibatch_size": 0}, "minibatch_size", "0"),
    ({"num_epochs": 0}, "num_epochs", "0"),
    ({"num_examples": 50, "num_labels": 10, "minibatch_size": 51}, "minibatch_size", "51"),
    ({"num_labels": -1}, "num_labels", "-1"),
    ({"num_labels": 50001}, "num_labels", "50001"),
    ({"rampup_length": -1}, "rampup_length", "-1"),
    ({"rampdown_length": -2}, "rampdown_length", "-2"),
    ({"learning_rate_max": -0.001}, "learning_rate_max", "-0.001"),
    ({"unsup_weight_max": -1.0}, "unsup_weight_max", "-1.0"),
    ({"adam_beta1": 1.0}, "adam_beta1", "1.0"),
    ({"rampdown_beta1_target": -0.1}, "rampdown_beta1_target", "-0.1"),
    ({"adam_beta2": 1.5}, "adam_beta2", "1.5"),
    ({"prediction_decay": 1.0}, "prediction_decay", "1.0"),
    ({"adam_epsilon": 0.0}, "adam_epsilon", "0.0"),
])
def test_a_bad_value_is_refused_naming_it(changes, name, shown):
    with pytest.raises(ValueError, match=rf"Invalid Temporal Ensembling setting {name}: .*"
                                         rf"Received: {name}={shown}$"):
        TemporalEnsemblingParams(**changes)


def test_a_minibatch_larger_than_the_data_explains_the_dropped_partial_batch():
    with pytest.raises(ValueError, match=r"at most num_examples \(50\): an epoch drops its last "
                                         r"partial minibatch"):
        TemporalEnsemblingParams(num_examples=50, num_labels=10, minibatch_size=51)


@pytest.mark.parametrize("changes, error, message", [
    ({"num_epochs": 2.5}, TypeError, "must be an integer. Received: num_epochs=2.5"),
    ({"minibatch_size": "100"}, TypeError, "must be an integer. Received: minibatch_size='100'"),
    ({"num_labels": True}, TypeError, "must be an integer. Received: num_labels=True"),
    ({"learning_rate_max": "0.1"}, TypeError, "Received: learning_rate_max='0.1'"),
    ({"prediction_decay": float("nan")}, ValueError, "finite. Received: prediction_decay=nan"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_it(changes, error, message):
    with pytest.raises(error, match=message.replace(".", r"\.").replace("(", r"\(")):
        TemporalEnsemblingParams(**changes)


def test_numpy_scalars_and_integral_floats_are_accepted_as_their_python_values():
    p = TemporalEnsemblingParams(num_examples=np.int64(300), num_labels=np.int32(30),
                                 minibatch_size=30.0, prediction_decay=np.float32(0.5))
    assert type(p.num_examples) is int and p.num_examples == 300
    assert type(p.minibatch_size) is int and p.minibatch_size == 30
    assert type(p.prediction_decay) is float and p.prediction_decay == 0.5
    assert type(TemporalEnsemblingParams(learning_rate_max=1).learning_rate_max) is float


def test_unknown_keys_are_listed_with_the_allowed_ones():
    with pytest.raises(ValueError) as raised:
        TemporalEnsemblingParams.from_dict({"num_epochs": 10, "max_lr": 1.0, "alpha": 0.6})
    message = str(raised.value)
    assert message.startswith("Unknown Temporal Ensembling setting(s): alpha, max_lr. Allowed: ")
    assert message.endswith(", ".join(TemporalEnsemblingParams.names()))
    with pytest.raises(ValueError, match=r"setting\(s\): decay\. Allowed"):
        SMALL.replace(decay=0.5)


def test_round_trips_through_dict_json_and_replace():
    p = SMALL.replace(prediction_decay=0.75, adam_epsilon=1e-6)
    assert p.prediction_decay == 0.75 and SMALL.prediction_decay == 0.6
    assert TemporalEnsemblingParams.from_dict(p.to_dict()) == p
    assert TemporalEnsemblingParams.from_dict(json.loads(p.to_json())) == p
    assert json.loads(p.to_json()) == p.to_dict()
    assert list(p.to_dict()) == list(TemporalEnsemblingParams.names())
    assert TemporalEnsemblingParams.from_dict({}) == TemporalEnsemblingParams()
    assert hash(p) == hash(TemporalEnsemblingParams.from_dict(p.to_dict()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.num_epochs = 3
