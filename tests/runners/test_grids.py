"""The grids of the experiment runners against the original experiment scripts.

Each expected grid below is written out from a reading of the original script
(`tensorflow/experiments/<name>.py` of CuriousAI/mean-teacher): its `parameters()` or
`all_parameters()` loops, and the hyperparameters its `run()` / `model_hyperparameters()` set.
They are stated here independently of `runners.grid`, and compared as *effective* settings:
the complete `HyperParams` a cell trains with, not just the keys it sets.
"""

import importlib

import pytest

from tensorflow_mean_teacher.hyperparams import HyperParams

SVHN_LENGTH = {0: 180000, 100000: 400000, 500000: 600000}


def cells(runner):
    return importlib.import_module(f"runners.{runner}").GRID.cells


def effective(cell):
    """A cell as (data settings, complete hyperparameters)."""
    s = cell.settings
    data = dict(dataset=s.dataset, n_labeled=s.n_labeled, data_seed=s.data_seed,
                test_phase=s.test_phase, n_extra_unlabeled=s.n_extra_unlabeled,
                batch_size=s.batch_size, n_labeled_per_batch=s.n_labeled_per_batch)
    normalize = {"normalize_input": s.dataset != "cifar10"}  # what the data tells the model
    return data, HyperParams.from_dict({**normalize, **s.hyperparams})


def run(dataset, n_labeled, data_seed, per_batch, *, test_phase=True, extra=0, **hyperparams):
    data = dict(dataset=dataset, n_labeled=n_labeled, data_seed=data_seed,
                test_phase=test_phase, n_extra_unlabeled=extra, batch_size=100,
                n_labeled_per_batch=per_batch)
    normalize = {"normalize_input": dataset != "cifar10"}
    return data, HyperParams(**{**normalize, **hyperparams})


def assert_grid(runner, expected):
    actual = [effective(cell) for cell in cells(runner)]
    assert len(actual) == len(expected)
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got == want, f"{runner} cell {index}"


# --- CIFAR-10 ---------------------------------------------------------------------------------

CIFAR_COMMON = dict(flip_horizontally=True, adam_beta_2_during_rampup=0.999,
                    ema_decay_during_rampup=0.999, normalize_input=False)


def cifar10_final_eval_expected(label_order, **changes):
    expected = []
    for n_labeled in label_order:
        for model_type in ["mean_teacher", "pi"]:
            n_runs = 4 if n_labeled == "all" else 10
            for seed in range(2000, 2000 + n_runs):
                if n_labeled == "all":
                    per_batch, cost = 100, 100.0
                else:
                    per_batch, cost = "vary", 100.0 * n_labeled / 50000
                expected.append(run(
                    "cifar10", n_labeled, seed, per_batch,
                    ema_consistency=model_type == "mean_teacher", max_consistency_cost=cost,
                    apply_consistency_to_labeled=True, rampdown_length=25000,
                    training_length=150000, **{**CIFAR_COMMON, **changes}))
    return expected


def test_cifar10_final_eval():
    expected = cifar10_final_eval_expected([1000, 2000, 4000, "all"])
    assert len(expected) == 68
    assert_grid("cifar10_final_eval", expected)
    grid_cells = cells("cifar10_final_eval")
    # Spot checks, literally.
    assert grid_cells[0].settings.hyperparams["max_consistency_cost"] == 2.0
    assert grid_cells[0].settings.data_seed == 2000
    assert grid_cells[45].settings.hyperparams["max_consistency_cost"] == 8.0  # 4000 labels
    assert grid_cells[10].settings.hyperparams["ema_consistency"] is False  # the first Pi run
    last = grid_cells[67].settings
    assert (last.n_labeled, last.data_seed, last.n_labeled_per_batch) == ("all", 2003, 100)


def test_cifar10_no_augmentation_final_eval():
    expected = cifar10_final_eval_expected([4000, "all", 1000, 2000], translate=False,
                                           flip_horizontally=False)
    assert_grid("cifar10_no_augmentation_final_eval", expected)
    assert cells("cifar10_no_augmentation_final_eval")[20].settings.n_labeled == "all"


def cifar10_supervised_expected(**changes):
    changes = {**CIFAR_COMMON, **changes}
    expected = []
    for n_labeled in [4000, 2000, 1000]:
        for seed in range(10):
            expected.append(run(
                "cifar10", n_labeled, seed, 100, ema_consistency=True,
                max_consistency_cost=0.0, apply_consistency_to_labeled=False,
                training_length=750 * n_labeled // 100, rampdown_length=n_labeled, **changes))
    for seed in range(4):
        expected.append(run(
            "cifar10", "all", seed, 100, ema_consistency=True,
            max_consistency_cost=0.0, apply_consistency_to_labeled=False,
            training_length=150000, rampdown_length=25000, **changes))
    return expected


@pytest.mark.parametrize("runner, changes", [
    ("cifar10_supervised_final_eval", {}),
    ("cifar10_supervised_no_augmentation_final_eval",
     {"translate": False, "flip_horizontally": False}),
])
def test_cifar10_supervised(runner, changes):
    assert_grid(runner, cifar10_supervised_expected(**changes))
    grid_cells = cells(runner)
    assert len(grid_cells) == 34
    lengths = [grid_cells[i].settings.hyperparams["training_length"] for i in (0, 10, 20, 30)]
    assert lengths == [30000, 15000, 7500, 150000]
    # The original leaves the 40,000-step ramp-up in place (a quirk the runner keeps).
    assert "rampup_length" not in grid_cells[20].settings.hyperparams


# --- SVHN final evaluations ------------------------------------------------------------------


def svhn_run(n_labeled, seed, model_type, extra, *, test_phase=True, **changes):
    if n_labeled == "all":
        per_batch, cost, on_labeled = 100, 100.0, True
    else:
        per_batch, cost, on_labeled = 1, 1.0, False
    hyperparams = dict(ema_consistency=model_type == "mean_teacher", max_consistency_cost=cost,
                       apply_consistency_to_labeled=on_labeled,
                       training_length=SVHN_LENGTH[extra])
    hyperparams.update(changes)
    return run("svhn", n_labeled, seed, per_batch, test_phase=test_phase, extra=extra,
               **hyperparams)


def svhn_final_eval_expected(extras, **changes):
    expected = []
    for n_labeled in [500, 250, 1000, "all", 100]:
        for extra in extras:
            for model_type in ["mean_teacher", "pi"]:
                if extra > 0 and n_labeled != 500:
                    continue
                n_runs = 4 if n_labeled == "all" else 10
                for seed in range(2000, 2000 + n_runs):
                    expected.append(svhn_run(n_labeled, seed, model_type, extra, **changes))
    return expected


def test_svhn_final_eval():
    expected = svhn_final_eval_expected([500000, 100000, 0])
    assert len(expected) == 128
    assert_grid("svhn_final_eval", expected)
    grid_cells = cells("svhn_final_eval")
    first = grid_cells[0].settings
    assert (first.n_labeled, first.n_extra_unlabeled, first.data_seed) == (500, 500000, 2000)
    assert first.hyperparams["training_length"] == 600000
    assert grid_cells[20].settings.n_extra_unlabeled == 100000
    assert grid_cells[60].settings.n_labeled == 250
    assert grid_cells[60].settings.n_labeled_per_batch == 1
    assert grid_cells[100].settings.n_labeled == "all"
    assert grid_cells[104].settings.hyperparams["ema_consistency"] is False
    assert grid_cells[127].settings.n_labeled == 100


def test_svhn_no_augmentation_final_eval():
    expected = svhn_final_eval_expected([0], translate=False, flip_horizontally=False)
    assert len(expected) == 88
    assert_grid("svhn_no_augmentation_final_eval", expected)


def svhn_supervised_expected(**changes):
    expected = []
    common = dict(ema_consistency=True, max_consistency_cost=0.0,
                  apply_consistency_to_labeled=False, **changes)
    for n_labeled in [250, 500, 1000]:
        for seed in range(10):
            expected.append(run("svhn", n_labeled, seed, 100, training_length=40000,
                                rampdown_length=10000, **common))
    for seed in range(4):
        expected.append(run("svhn", "all", seed, 100, training_length=180000,
                            rampdown_length=25000, **common))
    return expected


@pytest.mark.parametrize("runner, changes", [
    ("svhn_supervised_final_eval", {}),
    ("svhn_supervised_no_augmentation_final_eval",
     {"translate": False, "flip_horizontally": False}),
])
def test_svhn_supervised(runner, changes):
    assert_grid(runner, svhn_supervised_expected(**changes))
    assert len(cells(runner)) == 34
    assert cells(runner)[30].settings.data_seed == 0  # seeds start at 0, not 2000


# --- SVHN ablations (validation split, 250 labels unless noted) --------------------------------


def ablation(seed, n_labeled=250, model_type="mean_teacher", **changes):
    return svhn_run(n_labeled, seed, model_type, 0, test_phase=False, **changes)


def test_svhn_250_vary_consistency_cost():
    expected = [ablation(seed, max_consistency_cost=cost) for seed in range(1000, 1004)
                for cost in [0, 0.1, 0.3, 1, 3, 10, 30]]
    assert len(expected) == 28
    assert_grid("svhn_250_vary_consistency_cost", expected)


def test_svhn_250_vary_dropout():
    expected = []
    for seed in range(1000, 1004):
        for student, teacher in [(0, 0), (0.25, 0.25), (0.5, 0), (0.5, 0.25), (0.5, 0.5),
                                 (0.5, 0.75), (0.75, 0.75)]:
            expected.append(ablation(seed, model_type="pi", student_dropout_probability=student,
                                     teacher_dropout_probability=teacher))
    assert_grid("svhn_250_vary_dropout", expected)
    grid_cells = cells("svhn_250_vary_dropout")
    assert len(grid_cells) == 28  # the full all_parameters(), although parameters() skipped 21
    assert grid_cells[21].params["data_seed"] == 1003
    assert all(cell.settings.hyperparams["ema_consistency"] is False for cell in grid_cells)


def test_svhn_250_vary_ema_decay():
    expected = []
    for seed in range(1000, 1004):
        for decay in [0, 0.9, 0.97, 0.99, 0.997, 0.999, 0.9997, 0.9999]:
            expected.append(ablation(seed, ema_decay_during_rampup=decay,
                                     ema_decay_after_rampup=decay))
        expected.append(ablation(seed, ema_decay_during_rampup=0.99,
                                 ema_decay_after_rampup=0.999))
    assert len(expected) == 36
    assert_grid("svhn_250_vary_ema_decay", expected)


def test_svhn_250_vary_logit_distance_cost():
    expected = []
    for seed in range(1000, 1004):
        for cost in [0.0, 0.001, 0.01, 0.1, 1.0]:
            expected.append(ablation(seed, n_labeled=500, num_logits=2, logit_distance_cost=cost))
        expected.append(ablation(seed, n_labeled=500, num_logits=1, logit_distance_cost=0.0))
    assert len(expected) == 24
    assert_grid("svhn_250_vary_logit_distance_cost", expected)
    # The original's run() defaults to 500 labels despite the script's name.
    assert {cell.settings.n_labeled for cell in cells("svhn_250_vary_logit_distance_cost")} == {500}


def test_svhn_250_vary_perturbation():
    expected = []
    for seed in range(1000, 1004):
        for dropout in [0.5, 0.0]:
            for noise in [0.15, 0.0]:
                for augmentation in [True, False]:
                    expected.append(ablation(seed, student_dropout_probability=dropout,
                                             teacher_dropout_probability=dropout,
                                             input_noise=noise, translate=augmentation))
    assert len(expected) == 32
    assert_grid("svhn_250_vary_perturbation", expected)
    assert cells("svhn_250_vary_perturbation")[6].params == {
        "data_seed": 1000, "dropout": 0.0, "input_noise": 0.0, "augmentation": True}


def test_svhn_250_vary_trust():
    trusts = [0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0]
    expected = [ablation(seed, n_labeled=500, consistency_trust=trust)
                for seed in range(1000, 1004) for trust in trusts]
    assert_grid("svhn_250_vary_trust", expected)
    grid_cells = cells("svhn_250_vary_trust")
    assert len(grid_cells) == 36  # all_parameters(); the original's parameters() skipped 0-22
    assert grid_cells[23].params == {"data_seed": 1002, "consistency_trust": 0.7}
    assert grid_cells[23].settings.test_phase is False
    assert "0-22" in importlib.import_module("runners.svhn_250_vary_trust").GRID.note


# --- Every grid ------------------------------------------------------------------------------

RUNNERS = [
    "cifar10_final_eval", "cifar10_no_augmentation_final_eval", "cifar10_supervised_final_eval",
    "cifar10_supervised_no_augmentation_final_eval", "svhn_final_eval",
    "svhn_no_augmentation_final_eval", "svhn_supervised_final_eval",
    "svhn_supervised_no_augmentation_final_eval", "svhn_250_vary_consistency_cost",
    "svhn_250_vary_dropout", "svhn_250_vary_ema_decay", "svhn_250_vary_logit_distance_cost",
    "svhn_250_vary_perturbation", "svhn_250_vary_trust",
]


@pytest.mark.parametrize("runner", RUNNERS)
def test_cells_are_numbered_named_and_valid(runner):
    grid = importlib.import_module(f"runners.{runner}").GRID
    assert grid.runner == runner
    assert [cell.index for cell in grid.cells] == list(range(len(grid.cells)))
    names = [cell.name for cell in grid.cells]
    assert len(set(names)) == len(names)
    assert all(name.replace("_", "").replace(".", "").isalnum() for name in names)
    for cell in grid.cells:
        assert cell.settings.batch_size == 100
        HyperParams.from_dict(cell.settings.hyperparams)
