"""Grids of runs: what the experiment runners share.

An experiment runner (`runners/svhn_final_eval.py`, ...) describes the grid of the original
experiment script as data: a list of parameter dicts, one per run, in the original's order, and a
function that turns one dict into `RunSettings`. `make_grid` numbers the cells and names them;
`run_main` gives the runner its command line:

    python -m runners.<runner> --list_cells              # the grid: index, name, settings
    python -m runners.<runner> --cell 3 --cell 10-12     # some cells (also --cell 3,10,11,12)
    python -m runners.<runner> --only model_type=pi      # cells whose parameter has that value
    python -m runners.<runner>                           # every cell, in order

Cell N's results go to `<results_dir>/<cell name>`; running the same command again resumes an
interrupted cell and skips the finished ones (those with a results.json), after checking that
they ran with the requested settings. A run flag given on the command line (a hyperparameter
such as `--training_length=1000`, or `--data_seed`, `--width`, ...) overrides that value in
every selected cell; `--export_dir`, if given, is a parent: each cell exports to
EXPORT_DIR/<cell name>. `runner(grid)` is the grid's `common.Runner`: its `plan` has one run per
selected cell (and `list_cells`); a bad `--cell`/`--only` is one `error:` line, exit code 2.

The second half of this module holds the settings of the original scripts that several runners
share (their `model_hyperparameters()` and `run()` bodies, and their seed loops).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from absl import flags

from runners import common


class Cell(NamedTuple):
    """One run of a grid."""

    index: int
    name: str  # also the name of its results directory
    settings: common.RunSettings
    params: Mapping[str, Any]  # the entry of the original's parameters() that it comes from


@dataclasses.dataclass(frozen=True)
class Grid:
    runner: str  # module name under runners/; the default results dir is results/<runner>
    cells: tuple[Cell, ...]
    note: str = ""  # shown by --list_cells (e.g. a quirk of the original's grid)

    @property
    def default_results_dir(self) -> str:
        return f"results/{self.runner}"


# How a parameter appears in a cell name: a prefix for its value.
_NAME_PREFIXES = {
    "n_labeled": "labels",  # suffix, see _name_token
    "model_type": "",
    "data_seed": "seed",
    "n_extra_unlabeled": "extra",
    "max_consistency_cost": "cost",
    "student_dropout_probability": "student_dropout",
    "teacher_dropout_probability": "teacher_dropout",
    "ema_decay_during_rampup": "ema_rampup",
    "ema_decay_after_rampup": "ema",
    "num_logits": "logits",
    "logit_distance_cost": "logit_distance",
    "dropout": "dropout",
    "input_noise": "noise",
    "augmentation": "augmentation_",
    "consistency_trust": "trust",
}


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _name_token(key: str, value: Any) -> str:
    if key == "n_labeled":
        return "all_labels" if value == "all" else f"{value}labels"
    return _NAME_PREFIXES.get(key, f"{key}_") + _format_value(value)


def make_grid(runner: str, parameters: Iterable[Mapping[str, Any]],
              build: Callable[..., common.RunSettings], *, name_keys: Sequence[str],
              note: str = "") -> Grid:
    """Numbers the runs of `parameters` and names each from its `name_keys` values."""
    cells = []
    for index, params in enumerate(parameters):
        params = dict(params)
        name = "_".join(_name_token(key, params[key]) for key in name_keys)
        cells.append(Cell(index, name, build(**params), params))
    names = [cell.name for cell in cells]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise AssertionError(f"{runner}: cell names are not unique: {repeated}")
    return Grid(runner, tuple(cells), note)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


_MISSING = object()


def _help_settings(grid: Grid) -> common.RunSettings:
    """The first cell, for the defaults shown by --help: a hyperparameter that not every cell
    shares reads 'set by each cell' (only the help text uses these values)."""
    first = grid.cells[0].settings
    keys = dict.fromkeys(key for cell in grid.cells for key in cell.settings.hyperparams)
    shown = {}
    for key in keys:
        values = {repr(cell.settings.hyperparams.get(key, _MISSING)) for cell in grid.cells}
        shown[key] = first.hyperparams[key] if len(values) == 1 else "set by each cell"
    return dataclasses.replace(first, hyperparams=shown)


def define_flags(grid: Grid, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The flags of every runner (runners.common) and the grid's own, on `flag_values`."""
    common.define_flags(_help_settings(grid), results_dir=grid.default_results_dir,
                        flag_values=flag_values)
    flags.DEFINE_multi_string(
        "cell", [], f"Run only this cell: an index, a range N-M or a comma list; repeatable. "
        f"Default: all {len(grid.cells)} cells. See --list_cells.", flag_values=flag_values)
    flags.DEFINE_multi_string(
        "only", [], "Run only the cells whose original parameter KEY has VALUE (KEY=VALUE, "
        "repeatable; the same KEY twice means either value), e.g. model_type=pi, n_labeled=1000.",
        flag_values=flag_values)
    flags.DEFINE_boolean("list_cells", False,
                         "Print the selected cells (index, name, settings) and exit.",
                         flag_values=flag_values)


def plan(grid: Grid, flag_values: flags.FlagValues, args: Sequence[str] = ()) -> common.Plan:
    """One run per selected cell (the flags' values on top of its settings), into
    RESULTS_DIR/<cell name>; `list_cells` from --list_cells."""
    common.refuse_arguments(args)
    cells = select_cells(grid, flag_values.cell, flag_values.only)
    return common.plan_runs(
        flag_values,
        [(cell.name, common.settings_from_flags(cell.settings, flag_values)) for cell in cells],
        list_cells=flag_values.list_cells)


def runner(grid: Grid) -> common.Runner:
    """The grid runner's program: its flags, its plan, and `execute_plan`."""
    return common.Runner(define_flags=lambda flag_values: define_flags(grid, flag_values),
                         plan=lambda flag_values, args: plan(grid, flag_values, args),
                         execute=lambda planned: execute_plan(grid, planned))


def run_main(grid: Grid) -> None:
    """The body of a grid runner's __main__."""
    common.run_app(runner(grid))


def parse_cell_indices(values: Sequence[str], n_cells: int) -> list[int]:
    """`--cell` values ('3', '3,5', '10-12') -> sorted distinct indices; ValueError if bad."""
    chosen = set()
    for value in values:
        for part in value.split(","):
            part = part.strip()
            first, dash, last = part.partition("-")
            try:
                start = int(first)
                stop = int(last) if dash else start
            except ValueError:
                raise common.FlagError(
                    f"--cell={value}: must be a cell index N, a range N-M or a comma list of "
                    f"them; {part!r} is not a cell index") from None
            for index in (start, stop):
                if not 0 <= index < n_cells:
                    raise common.FlagError(
                        f"--cell={value}: no cell {index}; this grid has cells 0-{n_cells - 1} "
                        "(see --list_cells)")
            if stop < start:
                raise common.FlagError(f"--cell={value}: the range {part} is empty")
            chosen.update(range(start, stop + 1))
    return sorted(chosen)


def _matches(value: Any, wanted: str) -> bool:
    if isinstance(value, bool):
        return wanted.lower() in (("true", "1", "on") if value else ("false", "0", "off"))
    if str(value) == wanted:
        return True
    if isinstance(value, (int, float)):
        try:
            return float(wanted) == value
        except ValueError:
            return False
    return False


def select_cells(grid: Grid, cell_values: Sequence[str] = (),
                 only_values: Sequence[str] = ()) -> list[Cell]:
    """The cells that `--cell` and `--only` select (all of them if neither is given)."""
    cells = list(grid.cells)
    if cell_values:
        indices = set(parse_cell_indices(cell_values, len(grid.cells)))
        cells = [cell for cell in cells if cell.index in indices]
    wanted: dict[str, list[str]] = {}
    keys = list(dict.fromkeys(key for cell in grid.cells for key in cell.params))
    for value in only_values:
        key, equals, expected = value.partition("=")
        key, expected = key.strip(), expected.strip()
        if not equals or key not in keys:
            raise common.FlagError(
                f"--only={value}: must be KEY=VALUE with KEY one of {', '.join(keys)}")
        if not any(_matches(cell.params.get(key), expected) for cell in grid.cells):
            values = dict.fromkeys(_format_value(cell.params[key]) for cell in grid.cells
                                   if key in cell.params)
            raise common.FlagError(
                f"--only={value}: no cell of this grid has {key}={expected}; its values: "
                f"{', '.join(values)}")
        wanted.setdefault(key, []).append(expected)
    cells = [cell for cell in cells
             if all(any(_matches(cell.params.get(key), expected) for expected in values)
                    for key, values in wanted.items())]
    if not cells:
        selection = " ".join([*(f"--cell={value}" for value in cell_values),
                              *(f"--only={value}" for value in only_values)])
        raise common.FlagError(f"{selection}: no cell of this grid matches them all "
                               "(see --list_cells)")
    return cells


def describe_settings(settings: common.RunSettings) -> str:
    data = (f"{settings.dataset} n_labeled={settings.n_labeled} data_seed={settings.data_seed} "
            f"test_phase={settings.test_phase} n_extra_unlabeled={settings.n_extra_unlabeled} "
            f"batch_size={settings.batch_size} n_labeled_per_batch={settings.n_labeled_per_batch}")
    if settings.width != 128:
        data += f" width={settings.width}"
    if settings.eval_mean_decay != 0.999:
        data += f" eval_mean_decay={settings.eval_mean_decay}"
    hyper = " ".join(f"{key}={value}" for key, value in settings.hyperparams.items())
    return f"{data} | {hyper}"


def _expected_config(settings: common.RunSettings) -> dict:
    """The part of a run's config.json that these settings fix."""
    return {
        "batch_size": settings.batch_size, "width": settings.width,
        "eval_mean_decay": settings.eval_mean_decay,
        "teacher_reads_ema": settings.teacher_reads_ema,
        "hyperparams": dict(settings.hyperparams),
        "data": common.data_description(settings),
    }


def config_differences(expected: Mapping, saved: Mapping, prefix: str = "") -> list[str]:
    """Where `saved` differs from `expected`, for the keys of `expected` only."""
    found = []
    for key, value in expected.items():
        old = saved.get(key, "<absent>")
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            found += config_differences(value, old, f"{prefix}{key}.")
        elif old != value:
            found.append(f"{prefix}{key}: {old!r} -> {value!r}")
    return found


def _finished_results(cell: Cell, cell_dir: Path) -> dict | None:
    """The results of a finished cell, None if it has not finished; refuses other settings."""
    results_path = cell_dir / "results.json"
    if not results_path.exists():
        return None
    config_path = cell_dir / "config.json"
    saved = json.loads(config_path.read_text()) if config_path.exists() else {}
    changed = config_differences(_expected_config(cell.settings), saved)
    if changed:
        raise ValueError(
            f"cell {cell.index} ({cell.name}) finished in {cell_dir} with other settings "
            "(saved -> requested): " + "; ".join(changed)
            + ". Use another --results_dir, or the settings of the finished run.")
    return json.loads(results_path.read_text())


def execute_plan(grid: Grid, planned: common.Plan) -> None:
    """Lists the planned cells, or runs them in order (skipping the finished ones) and prints
    a JSON summary."""
    started = time.perf_counter()
    by_name = {cell.name: cell for cell in grid.cells}
    cells = [by_name[run.name]._replace(settings=run.settings) for run in planned.runs]
    root = planned.results_dir
    if planned.list_cells:
        _list(grid, cells, root)
        return
    summary = []
    for position, (cell, run) in enumerate(zip(cells, planned.runs, strict=True), start=1):
        results = _finished_results(cell, run.results_dir)
        if results is not None:
            print(f"== cell {cell.index} ({cell.name}): finished earlier, skipped; "
                  f"results in {run.results_dir}", flush=True)
            status = "skipped"
        else:
            print(f"== cell {cell.index} ({cell.name}), {position} of {len(cells)}: "
                  f"{describe_settings(cell.settings)}", flush=True)
            results = run.execute()
            status = "ran"
            import keras  # only when training; the rest of the runner stays light

            keras.backend.clear_session()
        summary.append({
            "index": cell.index, "name": cell.name, "status": status,
            "results_dir": str(run.results_dir),
            "teacher_error": results.get("teacher_error"),
            "student_error": results.get("student_error"),
        })
    common.print_json({"runner": grid.runner, "results_dir": str(root), "cells": summary,
                       "seconds": round(time.perf_counter() - started, 1)})


def _list(grid: Grid, cells: Sequence[Cell], root: Path) -> None:
    print(f"{grid.runner}: {len(cells)} of {len(grid.cells)} cells; "
          f"results in {root}/<name>")
    if grid.note:
        print(f"note: {grid.note}")
    width = max(len(cell.name) for cell in cells)
    for cell in cells:
        done = "done" if (root / cell.name / "results.json").exists() else "    "
        print(f"{cell.index:4d}  {done}  {cell.name:<{width}}  {describe_settings(cell.settings)}")


# ---------------------------------------------------------------------------------------------
# The original experiments' settings
# ---------------------------------------------------------------------------------------------

MINIBATCH_SIZE = 100  # every original script
MODEL_TYPES = ("mean_teacher", "pi")  # the Pi model: consistency with the student, no EMA
NO_AUGMENTATION = {"translate": False, "flip_horizontally": False}

# SVHN training length by the number of extra unlabeled images.
SVHN_TRAINING_LENGTH = {0: 180000, 100000: 400000, 500000: 600000}


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}. Received: {model_type!r}")


def svhn_cell(*, n_labeled: int | str, data_seed: int, model_type: str = "mean_teacher",
              n_extra_unlabeled: int = 0, test_phase: bool = True,
              **changes: Any) -> common.RunSettings:
    """An SVHN Mean Teacher / Pi run of the svhn_* scripts; `changes` go on top.

    With all labels: labeled-only minibatches and consistency cost 100, also on labeled
    images. With n_labeled labels: one labeled image per minibatch, and consistency cost 1 on
    the unlabeled images only. The training length depends on the extra unlabeled images.
    """
    _check_model_type(model_type)
    if n_labeled == "all":
        labeled_per_batch, cost, on_labeled = MINIBATCH_SIZE, 100.0, True
    else:
        labeled_per_batch, cost, on_labeled = 1, 1.0, False
    hyperparams = {
        "ema_consistency": model_type == "mean_teacher",
        "max_consistency_cost": cost,
        "apply_consistency_to_labeled": on_labeled,
        "training_length": SVHN_TRAINING_LENGTH[n_extra_unlabeled],
        **changes,
    }
    return common.RunSettings(
        dataset="svhn", n_labeled=n_labeled, data_seed=data_seed, test_phase=test_phase,
        n_extra_unlabeled=n_extra_unlabeled, batch_size=MINIBATCH_SIZE,
        n_labeled_per_batch=labeled_per_batch, hyperparams=hyperparams)


def _supervised_cell(dataset: str, base: Mapping[str, Any], *, n_labeled: int | str,
                     data_seed: int, training_length: int, rampdown_length: int,
                     test_phase: bool = True, **changes: Any) -> common.RunSettings:
    """A supervised baseline of the *_supervised_* scripts: labeled-only minibatches and no
    consistency cost (the teacher is still the student's EMA)."""
    hyperparams = {
        **base,
        "ema_consistency": True,
        "max_consistency_cost": 0.0,
        "apply_consistency_to_labeled": False,
        "rampdown_length": rampdown_length,
        "training_length": training_length,
        **changes,
    }
    return common.RunSettings(
        dataset=dataset, n_labeled=n_labeled, data_seed=data_seed, test_phase=test_phase,
        batch_size=MINIBATCH_SIZE, n_labeled_per_batch=MINIBATCH_SIZE, hyperparams=hyperparams)


def svhn_supervised_cell(**params: Any) -> common.RunSettings:
    """An SVHN supervised baseline of svhn_supervised_*."""
    return _supervised_cell("svhn", {}, **params)


# What every CIFAR-10 script sets (before its own changes): flips, the ZCA-whitened input kept
# as it is, and the slower EMA and Adam beta_2 from the start.
_CIFAR10_BASE = {
    "flip_horizontally": True,
    "adam_beta_2_during_rampup": 0.999,
    "ema_decay_during_rampup": 0.999,
    "normalize_input": False,
}


def cifar10_cell(*, n_labeled: int | str, data_seed: int, model_type: str,
                 test_phase: bool = True, **changes: Any) -> common.RunSettings:
    """A CIFAR-10 Mean Teacher / Pi run of the cifar10_*final_eval scripts.

    With all labels: labeled-only minibatches and consistency cost 100. With n_labeled labels:
    minibatches drawn from all images ('vary') and a consistency cost of
    100 * n_labeled / 50000. Consistency applies to labeled images too.
    """
    _check_model_type(model_type)
    if n_labeled == "all":
        labeled_per_batch, cost = MINIBATCH_SIZE, 100.0
    else:
        labeled_per_batch, cost = "vary", 100.0 * n_labeled / 50000
    hyperparams = {
        **_CIFAR10_BASE,
        "ema_consistency": model_type == "mean_teacher",
        "max_consistency_cost": cost,
        "apply_consistency_to_labeled": True,
        "rampdown_length": 25000,
        "training_length": 150000,
        **changes,
    }
    return common.RunSettings(
        dataset="cifar10", n_labeled=n_labeled, data_seed=data_seed, test_phase=test_phase,
        batch_size=MINIBATCH_SIZE, n_labeled_per_batch=labeled_per_batch,
        hyperparams=hyperparams)


def cifar10_supervised_cell(**params: Any) -> common.RunSettings:
    """A CIFAR-10 supervised baseline of cifar10_supervised_*, with the CIFAR-10 base settings."""
    return _supervised_cell("cifar10", _CIFAR10_BASE, **params)


def final_eval_seeds(n_labeled: int | str) -> range:
    """The final evaluations' data seeds: 10 from 2000, or 4 when every label is used."""
    return range(2000, 2000 + (4 if n_labeled == "all" else 10))


def final_eval_parameters(n_labeled_values: Sequence[int | str], *,
                          n_extra_values: Sequence[int] | None = None
                          ) -> Iterator[dict[str, Any]]:
    """The runs of the *_final_eval scripts, in their order: labels, [extra,] model, seed.

    With `n_extra_values` (SVHN), a run with extra unlabeled images exists for 500 labels only.
    """
    for n_labeled in n_labeled_values:
        for n_extra in (n_extra_values if n_extra_values is not None else (None,)):
            for model_type in MODEL_TYPES:
                if n_extra and n_labeled != 500:
                    continue
                for data_seed in final_eval_seeds(n_labeled):
                    params = {"test_phase": True, "model_type": model_type,
                              "n_labeled": n_labeled, "data_seed": data_seed}
                    if n_extra is not None:
                        params["n_extra_unlabeled"] = n_extra
                    yield params


def supervised_parameters(n_labeled_values: Sequence[int],
                          schedule: Callable[[int], tuple[int, int]],
                          all_labels_schedule: tuple[int, int]) -> Iterator[dict[str, Any]]:
    """The runs of the *_supervised_* scripts: 10 seeds from 0 per label count, then 4 seeds
    with all labels. `schedule(n_labeled)` is (training_length, rampdown_length)."""
    for n_labeled in n_labeled_values:
        training_length, rampdown_length = schedule(n_labeled)
        for data_seed in range(10):
            yield {"test_phase": True, "n_labeled": n_labeled, "data_seed": data_seed,
                   "training_length": training_length, "rampdown_length": rampdown_length}
    training_length, rampdown_length = all_labels_schedule
    for data_seed in range(4):
        yield {"test_phase": True, "n_labeled": "all", "data_seed": data_seed,
               "training_length": training_length, "rampdown_length": rampdown_length}


def svhn_supervised_parameters() -> Iterator[dict[str, Any]]:
    return supervised_parameters([250, 500, 1000], lambda n: (40000, 10000), (180000, 25000))


def cifar10_supervised_parameters() -> Iterator[dict[str, Any]]:
    # 750 epochs of the labeled images (minibatches of 100), the last 100 epochs ramping down.
    return supervised_parameters([4000, 2000, 1000], lambda n: (750 * n // 100, 100 * n // 100),
                                 (150000, 25000))


def svhn_ablation_cell(*, data_seed: int, n_labeled: int = 250, model_type: str = "mean_teacher",
                       **changes: Any) -> common.RunSettings:
    """A run of the svhn_250_vary_* scripts: evaluated on the validation split, no extra
    unlabeled images, and the SVHN settings of `svhn_cell` with `changes` on top."""
    return svhn_cell(n_labeled=n_labeled, data_seed=data_seed, model_type=model_type,
                     test_phase=False, **changes)


def ablation_seeds() -> range:
    """The data seeds of the svhn_250_vary_* scripts."""
    return range(1000, 1004)
