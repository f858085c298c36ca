"""Cell selection (--cell, --only) and naming in runners.grid, in-process (no flags parsed)."""

import pytest

from runners import common, grid


def toy_grid():
    params = [{"n_labeled": n, "model_type": m, "data_seed": s}
              for n in (250, "all") for m in ("mean_teacher", "pi") for s in (0, 1)]
    return grid.make_grid(
        "toy", params,
        lambda n_labeled, model_type, data_seed: common.RunSettings(
            dataset="svhn", n_labeled=n_labeled, data_seed=data_seed),
        name_keys=("n_labeled", "model_type", "data_seed"))


def test_cells_are_numbered_and_named_in_order():
    cells = toy_grid().cells
    assert [cell.index for cell in cells] == list(range(8))
    assert cells[0].name == "250labels_mean_teacher_seed0"
    assert cells[7].name == "all_labels_pi_seed1"
    assert toy_grid().default_results_dir == "results/toy"


def test_repeated_names_are_refused():
    with pytest.raises(AssertionError, match="not unique"):
        grid.make_grid("toy", [{"data_seed": 0}, {"data_seed": 0}],
                       lambda data_seed: common.RunSettings("svhn", 250, data_seed),
                       name_keys=("data_seed",))


@pytest.mark.parametrize("values, expected", [
    (["3"], [3]),
    (["3,1", "1"], [1, 3]),
    (["2-4"], [2, 3, 4]),
    (["0-1, 6"], [0, 1, 6]),
])
def test_parse_cell_indices(values, expected):
    assert grid.parse_cell_indices(values, 8) == expected


@pytest.mark.parametrize("value, message", [
    ("8", "--cell=8: no cell 8; this grid has cells 0-7"),
    ("x", "--cell=x: must be a cell index N, a range N-M or a comma list of them; 'x' is not"),
    ("5-2", "--cell=5-2: the range 5-2 is empty"),
    ("-1", "--cell=-1: must be a cell index"),
])
def test_parse_cell_indices_refuses(value, message):
    with pytest.raises(ValueError, match=message):
        grid.parse_cell_indices([value], 8)
    assert issubclass(common.FlagError, ValueError)


def test_select_by_parameter_values():
    toy = toy_grid()
    assert [c.index for c in grid.select_cells(toy, only_values=["model_type=pi"])] == [2, 3, 6, 7]
    chosen = grid.select_cells(toy, only_values=["n_labeled=all", "data_seed=1"])
    assert [c.index for c in chosen] == [5, 7]
    either = grid.select_cells(toy, only_values=["data_seed=0", "data_seed=1", "n_labeled=250"])
    assert [c.index for c in either] == [0, 1, 2, 3]
    both = grid.select_cells(toy, ["0-5"], ["model_type=pi"])
    assert [c.index for c in both] == [2, 3]
    assert len(grid.select_cells(toy)) == 8


def test_select_refuses_unknown_keys_and_empty_selections():
    toy = toy_grid()
    with pytest.raises(ValueError, match="--only=seed=1: must be KEY=VALUE with KEY one of "
                                         "n_labeled, model_type, data_seed"):
        grid.select_cells(toy, only_values=["seed=1"])
    with pytest.raises(ValueError, match="--only=model_type: must be KEY=VALUE"):
        grid.select_cells(toy, only_values=["model_type"])
    with pytest.raises(ValueError, match="--only=model_type=ladder: no cell of this grid has "
                                         "model_type=ladder; its values: mean_teacher, pi"):
        grid.select_cells(toy, only_values=["model_type=ladder"])
    with pytest.raises(ValueError, match="--cell=0-1 --only=model_type=pi: no cell of this "
                                         "grid matches them all"):
        grid.select_cells(toy, ["0-1"], ["model_type=pi"])


def test_float_and_bool_parameters_match_their_spellings():
    assert grid._matches(0.5, "0.50")
    assert grid._matches(0, "0.0")
    assert grid._matches(True, "true") and grid._matches(False, "off")
    assert not grid._matches("all", "1000")


def test_config_differences_only_look_at_the_requested_keys():
    expected = {"batch_size": 100, "hyperparams": {"training_length": 10}}
    saved = {"batch_size": 100, "seed": 4, "hyperparams": {"training_length": 12, "x": 1}}
    assert grid.config_differences(expected, saved) == ["hyperparams.training_length: 12 -> 10"]
    assert grid.config_differences(expected, {**saved, "hyperparams": {"training_length": 10}}) \
        == []
