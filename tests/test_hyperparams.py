import dataclasses
import json

import pytest

from tensorflow_mean_teacher.hyperparams import HyperParams
from tests.conftest import load_reference

# The original Model.DEFAULT_HYPERPARAMS, typed from the paper's code.
ORIGINAL_DEFAULTS = {
    "ema_consistency": True, "apply_consistency_to_labeled": True,
    "max_consistency_cost": 100.0, "ema_decay_during_rampup": 0.99,
    "ema_decay_after_rampup": 0.999, "consistency_trust": 0.0, "num_logits": 1,
    "logit_distance_cost": 0.0, "max_learning_rate": 0.003,
    "adam_beta_1_before_rampdown": 0.9, "adam_beta_1_after_rampdown": 0.5,
    "adam_beta_2_during_rampup": 0.99, "adam_beta_2_after_rampup": 0.999, "adam_epsilon": 1e-8,
    "input_noise": 0.15, "student_dropout_probability": 0.5, "teacher_dropout_probability": 0.5,
    "rampup_length": 40000, "rampdown_length": 25000, "training_length": 150000,
    "flip_horizontally": False, "translate": True, "normalize_input": True,
    "print_span": 20, "evaluation_span": 500,
}


def test_defaults_are_the_original_ones():
    assert HyperParams().to_dict() == ORIGINAL_DEFAULTS
    assert list(HyperParams.names()) == list(ORIGINAL_DEFAULTS)


def test_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        HyperParams().num_logits = 2


def test_replace_validates_and_keeps_the_rest():
    hp = HyperParams().replace(num_logits=2, logit_distance_cost=0.01)
    assert (hp.num_logits, hp.logit_distance_cost, hp.rampup_length) == (2, 0.01, 40000)
    with pytest.raises(ValueError, match="num_logits"):
        HyperParams().replace(num_logits=3)


def test_reads_the_fixture_hyperparameters():
    stored = json.loads(str(load_reference("mt_two_logits.npz")["hyperparams_json"]))
    hp = HyperParams.from_dict(stored)
    assert hp.num_logits == 2 and hp.training_length == 8 and hp.translate is False
    assert hp.max_learning_rate == pytest.approx(3e-5)


def test_json_round_trip():
    hp = HyperParams(consistency_trust=0.5, training_length=10)
    assert HyperParams.from_dict(json.loads(hp.to_json())) == hp


def test_unknown_key_names_it_and_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"Unknown hyperparameter\(s\): max_lr\. Allowed: "
                                         r"ema_consistency, .*evaluation_span"):
        HyperParams.from_dict({"max_lr": 0.1})


@pytest.mark.parametrize("key, value, allowed", [
    ("num_logits", 3, "1 or 2"),
    ("consistency_trust", 1.5, r"in \[0, 1\]"),
    ("consistency_trust", -0.1, r"in \[0, 1\]"),
    ("student_dropout_probability", 1.0, r"in \[0, 1\)"),
    ("teacher_dropout_probability", -0.5, r"in \[0, 1\)"),
    ("ema_decay_after_rampup", 1.0, r"in \[0, 1\)"),
    ("adam_beta_2_after_rampup", 1.2, r"in \[0, 1\)"),
    ("rampup_length", -1, ">= 0"),
    ("rampdown_length", -5, ">= 0"),
    ("max_learning_rate", -0.1, ">= 0"),
    ("input_noise", -1.0, ">= 0"),
    ("adam_epsilon", 0.0, "> 0"),
    ("training_length", 0, ">= 1"),
    ("evaluation_span", 0, ">= 1"),
])
def test_out_of_range_values_name_key_value_and_allowed(key, value, allowed):
    with pytest.raises(ValueError, match=f"{key}: it must be {allowed}. Received: {key}={value}"):
        HyperParams(**{key: value})


@pytest.mark.parametrize("key, value, kind", [
    ("num_logits", 1.5, "an integer"),
    ("training_length", "100", "an integer"),
    ("translate", "yes", "a bool"),
    ("max_learning_rate", "0.1", "a number"),
    ("num_logits", True, "an integer"),
])
def test_wrong_types_are_refused(key, value, kind):
    with pytest.raises(TypeError, match=f"{key} must be {kind}"):
        HyperParams(**{key: value})


def test_non_finite_is_refused():
    with pytest.raises(ValueError, match="max_consistency_cost must be finite"):
        HyperParams(max_consistency_cost=float("nan"))


def test_integral_floats_become_ints():
    assert HyperParams(training_length=8.0).training_length == 8
    assert isinstance(HyperParams(training_length=8.0).training_length, int)
