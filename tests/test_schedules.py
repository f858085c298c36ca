import json
import math

import numpy as np
import pytest

from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.schedules import (
    MeanTeacherSchedule,
    scheduled_values,
    sigmoid_rampdown,
    sigmoid_rampup,
    step_rampup,
)
from tests.conftest import TRAJECTORY_FIXTURES, load_reference


def closed_form(hp: HyperParams, t: int) -> dict:
    """The paper's schedules in float64."""
    up = math.exp(-5 * (1 - t / hp.rampup_length) ** 2) if t < hp.rampup_length else 1.0
    start = hp.training_length - hp.rampdown_length
    down = math.exp(-12.5 * (1 - (hp.training_length - t) / hp.rampdown_length) ** 2) \
        if t >= start else 1.0
    switch = 0.0 if t < hp.rampup_length else 1.0
    return {
        "learning_rate": up * down * hp.max_learning_rate,
        "adam_beta_1": down * hp.adam_beta_1_before_rampdown
        + (1 - down) * hp.adam_beta_1_after_rampdown,
        "adam_beta_2": (1 - switch) * hp.adam_beta_2_during_rampup
        + switch * hp.adam_beta_2_after_rampup,
        "ema_decay": (1 - switch) * hp.ema_decay_during_rampup
        + switch * hp.ema_decay_after_rampup,
        "cons_coefficient": up * hp.max_consistency_cost,
    }


@pytest.mark.parametrize("t", [0, 1, 10, 39999, 40000, 124999, 125000, 140000, 149999, 150000])
def test_schedules_match_the_closed_forms(t):
    hp = HyperParams()
    port = scheduled_values(hp, t)
    for name, expected in closed_form(hp, t).items():
        assert float(port[name]) == pytest.approx(expected, rel=2e-6, abs=1e-12), name


def test_ramp_shapes():
    assert float(sigmoid_rampup(0, 10)) == pytest.approx(math.exp(-5))
    assert float(sigmoid_rampup(5, 10)) == pytest.approx(math.exp(-1.25))
    assert float(sigmoid_rampup(10, 10)) == 1.0
    assert float(sigmoid_rampdown(89, 10, 100)) == 1.0
    assert float(sigmoid_rampdown(90, 10, 100)) == 1.0
    assert float(sigmoid_rampdown(100, 10, 100)) == pytest.approx(math.exp(-12.5))
    assert float(sigmoid_rampdown(95, 10, 100)) == pytest.approx(math.exp(-12.5 * 0.25))
    assert [float(step_rampup(t, 3)) for t in range(5)] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("t", [0, 1, 7, 8, 9, 100])
def test_zero_lengths_give_no_nan(t):
    hp = HyperParams(rampup_length=0, rampdown_length=0, training_length=8)
    values = {k: float(v) for k, v in scheduled_values(hp, t).items()}
    assert all(np.isfinite(v) for v in values.values()), values
    assert values["cons_coefficient"] == hp.max_consistency_cost  # no ramp-up at all
    expected_down = 1.0 if t < 8 else math.exp(-12.5)  # the limit of the ramp-down
    assert values["learning_rate"] == pytest.approx(expected_down * hp.max_learning_rate)


@pytest.mark.parametrize("fixture", TRAJECTORY_FIXTURES)
def test_schedules_equal_the_tf1_values(fixture):
    ref = load_reference(fixture)
    hp = HyperParams.from_dict(json.loads(str(ref["hyperparams_json"])))
    for t in ref["global_step_before_step"]:
        port = scheduled_values(hp, int(t))
        for name in port:
            np.testing.assert_allclose(float(port[name]), ref[f"train_metric/{name}"][t],
                                       rtol=1e-6, err_msg=f"{name} at step {t}")


def test_keras_schedule_wrapper_and_config():
    hp = HyperParams(rampup_length=10)
    schedule = MeanTeacherSchedule(hp, "learning_rate")
    assert float(schedule(5)) == pytest.approx(closed_form(hp, 5)["learning_rate"], rel=1e-6)
    clone = MeanTeacherSchedule.from_config(schedule.get_config())
    assert clone.hyperparams == hp and clone.quantity == "learning_rate"
    with pytest.raises(ValueError, match="Received: quantity='lr'"):
        MeanTeacherSchedule(hp, "lr")
