"""The Temporal Ensembling runners: Laine & Aila's settings, and a short run of each."""

import json

import numpy as np
import pytest

import datasets
from runners import common, tempens, tempens_cifar10_4000, tempens_svhn_500, tempens_svhn_1000
from tensorflow_mean_teacher.temporal_ensembling_params import TemporalEnsemblingParams

RUNNERS = {"tempens_cifar10_4000": tempens_cifar10_4000, "tempens_svhn_500": tempens_svhn_500,
           "tempens_svhn_1000": tempens_svhn_1000}


@pytest.mark.parametrize("name, dataset, n_labeled, learning_rate", [
    ("tempens_cifar10_4000", "cifar10", 4000, 0.003),
    ("tempens_svhn_500", "svhn", 500, 0.001),
    ("tempens_svhn_1000", "svhn", 1000, 0.001),
])
def test_the_settings_are_laine_and_ailas(name, dataset, n_labeled, learning_rate):
    settings = RUNNERS[name].SETTINGS
    assert (settings.dataset, settings.n_labeled, settings.test_phase) == (dataset, n_labeled,
                                                                          True)
    assert (settings.method, settings.batch_size, settings.n_labeled_per_batch) == (
        "temporal_ensembling", 100, "vary")
    params = TemporalEnsemblingParams.from_dict(settings.temporal_ensembling)
    # tempens' config.py: its defaults, and the Temporal Ensembling preset of the dataset.
    assert (params.num_epochs, params.rampup_length, params.rampdown_length) == (300, 80, 50)
    assert (params.learning_rate_max, params.unsup_weight_max) == (learning_rate, 30.0)
    assert (params.prediction_decay, params.adam_beta1, params.rampdown_beta1_target,
            params.adam_beta2, params.adam_epsilon) == (0.6, 0.9, 0.5, 0.999, 1e-8)
    assert settings.hyperparams == dict(input_noise=0.15, student_dropout_probability=0.5,
                                        translate=True, flip_horizontally=dataset == "cifar10")


def tiny_data(seed=0):
    rng = np.random.RandomState(seed)
    patterns = rng.uniform(size=(10, 16, 16, 3)).astype(np.float32)
    y = (np.arange(130) % 10).astype(np.int32)
    x = patterns[y] + 0.2 * rng.normal(size=(130, 16, 16, 3)).astype(np.float32)
    ey = (np.arange(30) % 10).astype(np.int32)
    ex = patterns[ey] + 0.2 * rng.normal(size=(30, 16, 16, 3)).astype(np.float32)
    return datasets.semi_supervised_from_arrays(x, y, eval_images=ex, eval_labels=ey,
                                                n_labeled=20)


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_each_runner_trains_a_short_run_end_to_end(name, tmp_path, capsys):
    results_dir = tmp_path / "run"
    plan = common.plan_command(RUNNERS[name].RUNNER, [
        name, f"--results_dir={results_dir}", "--num_epochs=3", "--batch_size=32", "--width=8",
        "--rampup_length=1", "--rampdown_length=1", "--learning_rate_max=0.002"])
    (run,) = plan.runs
    results = run.execute(data=tiny_data())
    steps = 130 // 32
    assert results["step"] == 3 * steps
    config = json.loads((results_dir / "config.json").read_text())
    assert config["method"] == "temporal_ensembling"
    assert config["temporal_ensembling"] == {
        **TemporalEnsemblingParams().to_dict(), **RUNNERS[name].SETTINGS.temporal_ensembling,
        "num_epochs": 3, "rampup_length": 1, "rampdown_length": 1, "learning_rate_max": 0.002,
        "num_examples": 130, "num_labels": 20, "minibatch_size": 32}
    # tempens' rampup_length is in epochs: the Mean Teacher hyperparameter keeps its default.
    assert config["hyperparams"]["rampup_length"] == 40000
    assert config["hyperparams"]["training_length"] == 3 * steps
    # One evaluation per epoch, as tempens.
    rows = (results_dir / "validation_log.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == [0, steps, 2 * steps, 3 * steps]
    log = (results_dir / "training_log.csv").read_text().splitlines()
    header = log[0].split(",")
    epochs = [float(row.split(",")[header.index("epoch")]) for row in log[1:]]
    weights = [float(row.split(",")[header.index("unsup_weight")]) for row in log[1:]]
    assert epochs == [0.0, 1.0, 2.0]
    assert weights[0] == 0.0 and weights[1] == pytest.approx(30.0 * 20 / 130, rel=1e-6)
    assert (results_dir / "teacher" / "saved_model.pb").exists()


def test_mean_teacher_flags_that_mean_nothing_here_are_not_defined():
    with pytest.raises(SystemExit) as exit_info:
        common.run_command(tempens_svhn_500.RUNNER, ["prog", "--max_consistency_cost=3"])
    assert exit_info.value.code == common.EXIT_USER_ERROR
    flag_values = common.flags.FlagValues()
    tempens_svhn_500.RUNNER.define_flags(flag_values)
    assert not set(tempens.OMITTED_FLAGS) & set(flag_values)
    assert set(tempens.NETWORK_HYPERPARAMS) | set(tempens.SETTING_FLAGS) <= set(flag_values)
