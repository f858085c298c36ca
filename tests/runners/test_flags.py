"""Every flag of every runner is honoured or refused; generated from the flag definitions.

For every runner (each `runners/*.py` with a `__main__`) and every flag it defines, on a fresh
`absl.flags.FlagValues` (so absl's own flags, --helpfull, --verbosity, ..., are not among them):

(a) `PROBES` gives a valid non-default value and where it must show in the runner's plan
    (`Runner.plan`): the plan with it differs from the default plan there, with that value, and
    nowhere else; or, for a flag that cannot apply to that runner, it is refused with a message
    (`Refused`). A flag without an entry fails the test, so a new flag cannot go unchecked.
(b) Bad values (a type error generated from each flag's absl parser; out-of-range and unknown
    values from `BAD`) make the whole program, in this process, print one `error:` line naming
    the flag, its value and what is allowed, and exit with code 2, before anything is executed
    (`common.execute` and the report fail the test if they are reached).

A few subprocesses prove the real command line (`python -m runners.quickstart --n_labeled=abc`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import importlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import keras
import pytest
from absl import flags

from runners import common, compare, grid, plots, report
from tensorflow_mean_teacher.hyperparams import HyperParams

REPO = Path(__file__).resolve().parents[2]
MAIN = re.compile(r'^if __name__ == "__main__":$', re.M)
RUNNER_NAMES = sorted(path.stem for path in (REPO / "runners").glob("*.py")
                      if MAIN.search(path.read_text()))
# Arguments every command line of a runner needs (report: a root; train_images: its folder).
BASE_ARGS = {"report": ["results"], "train_images": ["--data_dir=folder"]}


@functools.cache
def runner_of(name: str) -> common.Runner:
    module = importlib.import_module(f"runners.{name}")
    return module.RUNNER if hasattr(module, "RUNNER") else grid.runner(module.GRID)


def grid_of(name: str) -> grid.Grid | None:
    return getattr(importlib.import_module(f"runners.{name}"), "GRID", None)


@functools.cache
def defined_flags(name: str) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    runner_of(name).define_flags(flag_values)
    return flag_values


CASES = [(runner, flag) for runner in RUNNER_NAMES for flag in defined_flags(runner)]


@pytest.fixture(scope="module", autouse=True)
def workdir(tmp_path_factory):
    """Every command runs here: `results/` (the report's root), `afile` (a file)."""
    root = tmp_path_factory.mktemp("flags")
    (root / "results").mkdir()
    (root / "afile").write_text("a file, not a directory")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        yield root


@pytest.fixture
def nothing_executes(monkeypatch, workdir):
    """Fails the test if a command goes past its plan; checks it created nothing."""
    def executed(*args, **kwargs):
        raise AssertionError("the command executed (loaded data) instead of refusing")

    monkeypatch.setattr(common, "execute", executed)
    monkeypatch.setattr(report, "report", executed)
    before = sorted(workdir.rglob("*"))
    yield
    assert sorted(workdir.rglob("*")) == before


def argv(runner: str, *args: str) -> list[str]:
    return [runner, *BASE_ARGS.get(runner, []), *args]


def plan_of(runner: str, *args: str) -> Any:
    return common.plan_command(runner_of(runner), argv(runner, *args))


_DEFAULT_PLANS: dict[str, Any] = {}


def default_plan(runner: str) -> Any:
    if runner not in _DEFAULT_PLANS:
        _DEFAULT_PLANS[runner] = plan_of(runner)
    return _DEFAULT_PLANS[runner]


def run_in_process(runner: str, *args: str) -> tuple[Any, str, str]:
    """(exit code, stdout, stderr) of the whole program on these arguments."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exited:
        common.run_command(runner_of(runner), argv(runner, *args))
    return exited.value.code, out.getvalue(), err.getvalue()


def assert_one_error_line(code, stdout, stderr, start: str, *parts: str) -> None:
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {start}"), stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert stdout == ""


# --- The plan as a flat dict: 'runs/<run name>/settings/hyperparams/training_length' -> 7 -------

ABSENT = object()  # an expected value: the key is not in the plan (a run that is not made)


def flat(plan: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for field in dataclasses.fields(value):
                walk(f"{prefix}{field.name}/", getattr(value, field.name))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}{key}/", item)
        elif (isinstance(value, tuple) and value
              and all(isinstance(run, common.PlannedRun) for run in value)):
            names = [run.name for run in value]
            assert len(set(names)) == len(names), names
            for run in value:
                walk(f"{prefix}{run.name}/", run)
        else:
            found[prefix.rstrip("/")] = os.fspath(value) if isinstance(value, Path) else value
    walk("", plan)
    return found


@dataclasses.dataclass(frozen=True)
class Under:
    """Expected at runs/<name>/...: ROOT/<name> (a parent directory flag)."""

    root: str

    def at(self, key: str) -> str:
        return os.fspath(Path(self.root) / key.split("/")[1])


@dataclasses.dataclass(frozen=True)
class Probe:
    args: tuple[str, ...]
    # pattern (fnmatch) -> the value at every key of the plan that matches it (Under, ABSENT)
    expect: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # or a check of the whole plan: (context, default plan, plan) -> None
    check: Callable[[Context, Any, Any], None] | None = None


@dataclasses.dataclass(frozen=True)
class Refused:
    """The flag cannot apply to this runner: any non-default value is refused, so."""

    args: tuple[str, ...]
    message: str


@dataclasses.dataclass(frozen=True)
class Context:
    runner: str
    default: Any  # the runner's default plan
    grid: grid.Grid | None


def runs(field: str, value: Any, arg: str | None = None, *, flag: str | None = None) -> Probe:
    """--FLAG=ARG sets `field` of every run to `value`."""
    flag = flag or field.rsplit("/", 1)[-1]
    return Probe((f"--{flag}={value if arg is None else arg}",), {f"runs/*/{field}": value})


def setting(name: str, value: Any, arg: str | None = None) -> Probe:
    return runs(f"settings/{name}", value, arg)


def hyperparam(name: str, value: Any, arg: str | None = None) -> Probe:
    return runs(f"settings/hyperparams/{name}", value, arg)


def effective(settings: common.RunSettings, name: str) -> Any:
    return settings.hyperparams.get(name, getattr(HyperParams(), name))


def flip_hyperparam(name: str, runs_pattern: str = "*") -> Callable[[Context], Probe]:
    """A bool hyperparameter: the opposite of the first run's value."""
    def probe(ctx: Context) -> Probe:
        value = not effective(ctx.default.runs[0].settings, name)
        return Probe((f"--{name}={str(value).lower()}",),
                     {f"runs/{runs_pattern}/settings/hyperparams/{name}": value})
    return probe


def flip(field: str) -> Callable[[Context], Probe]:
    """A bool flag of every run: the opposite of the first run's value."""
    def probe(ctx: Context) -> Probe:
        value = not flat(ctx.default)[f"runs/{ctx.default.runs[0].name}/{field}"]
        return runs(field, value, str(value).lower())
    return probe


def selects(args: Callable[[Context], tuple[str, ...]],
            names: Callable[[Context], list[str]]) -> Callable[[Context], Probe]:
    """A cell selection: the plan has exactly these cells' runs, unchanged, in grid order."""
    def check(ctx: Context, default: Any, plan: Any) -> None:
        wanted = names(ctx)
        assert 0 < len(wanted) < len(default.runs)
        assert [run.name for run in plan.runs] == wanted
        by_name = {run.name: run for run in default.runs}
        assert all(run == by_name[run.name] for run in plan.runs)
        assert (plan.results_dir, plan.list_cells) == (default.results_dir, default.list_cells)
    return lambda ctx: Probe(args(ctx), check=check)


def _only(ctx: Context) -> tuple[str, Any]:
    """A grid parameter that varies, and the value of the grid's last cell."""
    cells = ctx.grid.cells
    key = next(key for key in cells[0].params
               if len({repr(cell.params.get(key)) for cell in cells}) > 1)
    return key, cells[-1].params[key]


HYPERPARAM_PROBES = {
    "ema_consistency": flip_hyperparam("ema_consistency"),
    "apply_consistency_to_labeled": flip_hyperparam("apply_consistency_to_labeled"),
    "max_consistency_cost": hyperparam("max_consistency_cost", 7.5),
    "ema_decay_during_rampup": hyperparam("ema_decay_during_rampup", 0.5),
    "ema_decay_after_rampup": hyperparam("ema_decay_after_rampup", 0.5),
    "consistency_trust": hyperparam("consistency_trust", 0.25),
    "num_logits": hyperparam("num_logits", 2),
    "logit_distance_cost": hyperparam("logit_distance_cost", 0.125),
    "max_learning_rate": hyperparam("max_learning_rate", 0.0125),
    "adam_beta_1_before_rampdown": hyperparam("adam_beta_1_before_rampdown", 0.25),
    "adam_beta_1_after_rampdown": hyperparam("adam_beta_1_after_rampdown", 0.25),
    "adam_beta_2_during_rampup": hyperparam("adam_beta_2_during_rampup", 0.25),
    "adam_beta_2_after_rampup": hyperparam("adam_beta_2_after_rampup", 0.25),
    "adam_epsilon": hyperparam("adam_epsilon", 0.001),
    "input_noise": hyperparam("input_noise", 0.25),
    "student_dropout_probability": hyperparam("student_dropout_probability", 0.25),
    "teacher_dropout_probability": hyperparam("teacher_dropout_probability", 0.25),
    "rampup_length": hyperparam("rampup_length", 7),
    "rampdown_length": hyperparam("rampdown_length", 7),
    "training_length": hyperparam("training_length", 7),
    "flip_horizontally": flip_hyperparam("flip_horizontally"),
    "translate": flip_hyperparam("translate"),
    "normalize_input": flip_hyperparam("normalize_input"),
    "print_span": hyperparam("print_span", 7),
    "evaluation_span": hyperparam("evaluation_span", 7),
}

PROBES: dict[str, Probe | Callable[[Context], Probe | Refused]] = {
    **HYPERPARAM_PROBES,
    # The common flags (runners.common.define_flags).
    "results_dir": Probe(("--results_dir=elsewhere",),
                         {"results_dir": "elsewhere", "runs/*/results_dir": Under("elsewhere")}),
    "export_dir": Probe(("--export_dir=exported",), {"runs/*/export_dir": Under("exported")}),
    "overwrite_export": runs("overwrite_export", True, "true"),
    "distribute": runs("distribute", "mirrored"),
    "data_dir": setting("data_dir", "/data/elsewhere"),
    "data_source": setting("data_source", "tfds"),
    "data_seed": setting("data_seed", 77),
    "n_labeled": setting("n_labeled", 40),
    "test_phase": flip("settings/test_phase"),
    "batch_size": setting("batch_size", 200),
    "n_labeled_per_batch": setting("n_labeled_per_batch", 7),
    "width": setting("width", 24),
    "eval_mean_decay": setting("eval_mean_decay", 0.5),
    "teacher_reads_ema": setting("teacher_reads_ema", "post"),
    "deterministic": flip("settings/deterministic"),
    "jit_compile": flip("settings/jit_compile"),
    "shared_flip": flip("settings/shared_flip"),
    "pi_target_gradients": flip("settings/pi_target_gradients"),
    # The Temporal Ensembling runners' (runners.tempens), under tempens' names.
    "num_epochs": runs("settings/temporal_ensembling/num_epochs", 7),
    "learning_rate_max": runs("settings/temporal_ensembling/learning_rate_max", 0.0125),
    "unsup_weight_max": runs("settings/temporal_ensembling/unsup_weight_max", 7.5),
    "prediction_decay": runs("settings/temporal_ensembling/prediction_decay", 0.25),
    "adam_beta1": runs("settings/temporal_ensembling/adam_beta1", 0.25),
    "rampdown_beta1_target": runs("settings/temporal_ensembling/rampdown_beta1_target", 0.25),
    "adam_beta2": runs("settings/temporal_ensembling/adam_beta2", 0.25),
    # runners.compare's.
    "seeds": Probe(("--seeds=4,5",), {"seeds": (4, 5)}),
    "methods": Probe(("--methods=pi,mean_teacher",), {"methods": ("pi", "mean_teacher")}),
    # The grid runners' (runners.grid.define_flags).
    "cell": selects(lambda ctx: ("--cell=1", "--cell=3-4"),
                    lambda ctx: [ctx.grid.cells[i].name for i in (1, 3, 4)]),
    "only": selects(lambda ctx: ("--only={}={}".format(*_only(ctx)),),
                    lambda ctx: [cell.name for cell in ctx.grid.cells
                                 if cell.params.get(_only(ctx)[0]) == _only(ctx)[1]]),
    "list_cells": Probe(("--list_cells",), {"list_cells": True}),
    # runners.quickstart's.
    "skip_supervised": Probe(("--skip_supervised",), {"runs/supervised/*": ABSENT}),
    # runners.train_images'.
    "image_size": Probe(("--image_size=20x24",), {"runs/*/data_options/image_size": (20, 24)}),
    "eval_dir": Probe(("--eval_dir=held_out",), {"runs/*/data_options/eval_dir": "held_out",
                                                 "runs/*/settings/test_phase": True}),
    "validation_size": Probe(("--validation_size=0.25",),
                             {"runs/*/data_options/validation_size": 0.25}),
    # runners.report's.
    "format": Probe(("--format=csv",), {"format": "csv"}),
    "plot": Probe(("--plot=out.png",), {"plot": "out.png"}),
}

# Where a runner gives a flag another meaning, or cannot apply it.
RUNNER_PROBES = {
    # The baseline's definition fixes these: labeled-only minibatches, no consistency cost.
    ("quickstart", "n_labeled_per_batch"): Probe(
        ("--n_labeled_per_batch=7",), {"runs/mean_teacher/settings/n_labeled_per_batch": 7}),
    ("quickstart", "batch_size"): Probe(
        ("--batch_size=200",), {"runs/*/settings/batch_size": 200,
                                "runs/supervised/settings/n_labeled_per_batch": 200}),
    ("quickstart", "max_consistency_cost"): Probe(
        ("--max_consistency_cost=7.5",),
        {"runs/mean_teacher/settings/hyperparams/max_consistency_cost": 7.5}),
    ("quickstart", "apply_consistency_to_labeled"): flip_hyperparam(
        "apply_consistency_to_labeled", runs_pattern="mean_teacher"),
    # The digits are bundled; an image folder is not a built-in dataset, and has no test set
    # but --eval_dir.
    ("quickstart", "data_dir"): Refused(("--data_dir=/data/elsewhere",),
                                        "--data_dir=/data/elsewhere: must not be given"),
    ("quickstart", "data_source"): Refused(("--data_source=tfds",),
                                           "--data_source=tfds: must be files"),
    ("train_images", "data_source"): Refused(("--data_source=tfds",),
                                             "--data_source=tfds: must be files"),
    # runners.compare: one results directory (and the plot in it by default) for all its runs.
    ("compare", "results_dir"): Probe(("--results_dir=elsewhere",), {
        "results_dir": "elsewhere", "plot": os.path.join("elsewhere", "comparison.png")}),
    ("compare", "plot"): Probe(("--plot=there.png",), {"plot": "there.png"}),
    # tempens' settings in epochs, and its own Adam's epsilon.
    **{(runner, name): runs(f"settings/temporal_ensembling/{name}", value)
       for runner in ("tempens_cifar10_4000", "tempens_svhn_500", "tempens_svhn_1000")
       for name, value in (("rampup_length", 7), ("rampdown_length", 7), ("adam_epsilon", 0.001))},
    ("train_images", "test_phase"): Refused(("--test_phase",),
                                            "--test_phase: evaluates on a test set: pass it as "
                                            "--eval_dir DIR"),
}


def probe_for(runner: str, flag: str) -> Probe | Refused | None:
    probe = RUNNER_PROBES.get((runner, flag), PROBES.get(flag))
    if callable(probe):
        probe = probe(Context(runner, default_plan(runner), grid_of(runner)))
    return probe


@pytest.mark.parametrize("runner, flag", CASES)
def test_each_flag_changes_what_it_says_or_is_refused(runner, flag, nothing_executes):
    probe = probe_for(runner, flag)
    if probe is None:
        pytest.fail(f"runners.{runner} defines --{flag}, which has no entry in PROBES: add a "
                    "valid non-default value and where it must show in the plan")
    assert any(arg.startswith((f"--{flag}=", f"--{flag}")) for arg in probe.args)
    if isinstance(probe, Refused):
        assert_one_error_line(*run_in_process(runner, *probe.args), probe.message)
        return
    default = default_plan(runner)
    plan = plan_of(runner, *probe.args)
    if probe.check is not None:
        probe.check(Context(runner, default, grid_of(runner)), default, plan)
        return
    before, after = flat(default), flat(plan)
    changed = {key for key in before.keys() | after.keys()
               if before.get(key, ABSENT) != after.get(key, ABSENT)}
    assert changed, f"{probe.args} changed nothing in the plan of runners.{runner}"
    for pattern, expected in probe.expect.items():
        keys = [key for key in before.keys() | after.keys()
                if fnmatch.fnmatchcase(key, pattern)]
        assert keys, f"{probe.args}: nothing in the plan matches {pattern}"
        for key in keys:
            want = expected.at(key) if isinstance(expected, Under) else expected
            got = after.get(key, ABSENT)
            assert got is want if want is ABSENT else got == want, (key, got, want)
    stray = sorted(key for key in changed
                   if not any(fnmatch.fnmatchcase(key, pattern) for pattern in probe.expect))
    assert not stray, f"{probe.args} also changed {stray[:5]}"


# --- (b) Bad values -------------------------------------------------------------------------

_IN_01 = "must be in [0, 1)"
# flag -> [(argument, what the error line starts with after 'error: ', what it also says)].
# Type errors of the integer, float, boolean and enum flags are generated (`bad_values`).
BAD: dict[str, list[tuple[str, str, str]]] = {
    **{name: [("1.5", f"--{name}=1.5: ", _IN_01), ("-0.1", f"--{name}=-0.1: ", _IN_01)]
       for name in ("ema_decay_during_rampup", "ema_decay_after_rampup",
                    "adam_beta_1_before_rampdown", "adam_beta_1_after_rampdown",
                    "adam_beta_2_during_rampup", "adam_beta_2_after_rampup",
                    "student_dropout_probability", "teacher_dropout_probability")},
    "consistency_trust": [("2", "--consistency_trust=2.0: ", "must be in [0, 1]")],
    "num_logits": [("3", "--num_logits=3: ", "must be 1 or 2")],
    **{name: [("-1", f"--{name}=-1.0: ", "must be >= 0")]
       for name in ("max_consistency_cost", "logit_distance_cost", "input_noise")},
    "max_learning_rate": [("-1", "--max_learning_rate=-1.0: ", "must be >= 0"),
                          ("nan", "--max_learning_rate=nan: ", "must be finite")],
    "adam_epsilon": [("0", "--adam_epsilon=0.0: ", "must be > 0")],
    **{name: [("-1", f"--{name}=-1: ", "must be >= 0")]
       for name in ("rampup_length", "rampdown_length")},
    **{name: [("0", f"--{name}=0: ", "must be >= 1"), ("-5", f"--{name}=-5: ", "must be >= 1")]
       for name in ("training_length", "print_span", "evaluation_span")},
    "batch_size": [("0", "--batch_size=0: ", "must be a positive integer")],
    "width": [("0", "--width=0: ", "must be a positive integer")],
    "data_seed": [("-1", "--data_seed=-1: ", "must be an integer in the range [0, 4294967295]"),
                  ("4294967296", "--data_seed=4294967296: ", "in the range [0, 4294967295]")],
    "eval_mean_decay": [("1.5", "--eval_mean_decay=1.5: ", "in the range [0.0, 0.999999]")],
    "n_labeled": [(value, f"--n_labeled={value}: ", "must be an integer >= 1 or 'all'")
                  for value in ("abc", "0", "-3")],
    "n_labeled_per_batch": [
        *((value, f"--n_labeled_per_batch={value}: ", "must be an integer >= 1 or 'vary'")
          for value in ("abc", "0")),
        ("1000", "--n_labeled_per_batch=1000: ", "must be 'vary' or from 1 to the batch size")],
    **{name: [("afile", f"--{name}=afile: must", ""), ("", f"--{name}=: must", ""),
              (os.path.join("afile", "sub"), f"--{name}={os.path.join('afile', 'sub')}: must",
               "")]
       for name in ("results_dir", "export_dir", "data_dir", "eval_dir")},
    "image_size": [(value, f"--image_size={value}: ", "must be HEIGHT,WIDTH or SIZE")
                   for value in ("28,abc", "0", "1,2,3")],
    "validation_size": [(value, f"--validation_size={value}: ", "must be a number of images")
                        for value in ("ten", "0", "1.5")],
    "plot": [("out.jpg", "--plot=out.jpg: ", "must be a .png file")],
    "seeds": [(value, f"--seeds={value}: ", "must be a comma-separated list of integers")
              for value in ("x", "1,1", "-1")],
    "methods": [("nope", "--methods=nope: ", "must be a comma-separated list of supervised")],
    "cell": [("9999", "--cell=9999: ", "no cell 9999"),
             ("x", "--cell=x: ", "must be a cell index"), ("4-1", "--cell=4-1: ", "is empty")],
    "only": [("nokey=1", "--only=nokey=1: ", "must be KEY=VALUE with KEY one of"),
             ("data_seed=123456", "--only=data_seed=123456: ",
              "no cell of this grid has data_seed=123456")],
}


def bad_values(runner: str, flag: str) -> list[tuple[str, str, str]] | None:
    parser = defined_flags(runner)[flag].parser
    generated = []
    if isinstance(parser, flags.BooleanParser):
        generated = [("maybe", f"--{flag}=maybe: ", "must be true or false")]
    elif isinstance(parser, flags.EnumParser):
        generated = [("bogus", f"--{flag}=bogus: ",
                      f"must be one of {', '.join(parser.enum_values)}")]
    elif isinstance(parser, flags.IntegerParser):
        generated = [(value, f"--{flag}={value}: ", "must be a") for value in ("abc", "1.5")]
    elif isinstance(parser, flags.FloatParser):
        generated = [("abc", f"--{flag}=abc: ", "must be a")]
    given = BAD.get(flag)
    if given is None and not generated:
        return None
    extra = []
    if flag == "n_labeled" and default_plan(runner).runs[0].settings.dataset != "image_folder":
        extra = [("25", "--n_labeled=25: ", "must be 'all' or a multiple of 10")]
    return generated + (given or []) + extra


@pytest.mark.parametrize("runner, flag", CASES)
def test_bad_values_give_one_error_line_and_exit_code_2(runner, flag, nothing_executes):
    bad = bad_values(runner, flag)
    if bad is None:
        pytest.fail(f"runners.{runner} defines --{flag}, a string flag with no bad values in BAD")
    for value, start, says in bad:
        assert_one_error_line(*run_in_process(runner, f"--{flag}={value}"), start, says)


@pytest.mark.parametrize("runner", RUNNER_NAMES)
def test_unknown_flags_and_stray_arguments_are_refused(runner, nothing_executes):
    assert_one_error_line(*run_in_process(runner, "--no_such_flag=1"),
                          "--no_such_flag=1: no such flag")
    assert_one_error_line(*run_in_process(runner, "--bach_size=3"), "--bach_size=3: no such flag")
    if runner != "report":  # its positional arguments are the roots
        assert_one_error_line(*run_in_process(runner, "stray"), "unexpected argument(s) stray")


def test_every_runner_has_flags_and_the_shared_entry_point():
    assert len(RUNNER_NAMES) == 23 and {"quickstart", "report", "train_images"} <= set(
        RUNNER_NAMES)
    for name in RUNNER_NAMES:
        source = (REPO / "runners" / f"{name}.py").read_text()
        main = source[MAIN.search(source).start():]
        assert "app.run" not in source
        assert "common.run_app(RUNNER)" in main or "grid.run_main(GRID)" in main, name
        assert len(list(defined_flags(name))) >= 1
    builtin = {"helpfull", "helpshort", "verbosity", "logtostderr", "flagfile"}
    assert not builtin & {flag for name in RUNNER_NAMES for flag in defined_flags(name)}


@pytest.mark.parametrize("runner", RUNNER_NAMES)
def test_the_program_executes_exactly_its_plan(runner, monkeypatch, workdir):
    """`main` does what the plan says: each planned run reaches `common.execute` once, in
    order, with the plan's settings, directories and options (and report its roots, format)."""
    tempens = runner.startswith("tempens_")
    if runner == "report":
        args = ["--format=json"]
    elif runner == "compare":
        args = ["--seeds=3", "--methods=temporal_ensembling,pi"]
    elif tempens:  # no --distribute (one device), tempens' length in epochs
        args = ["--num_epochs=7", "--export_dir=exported"]
    else:
        args = ["--training_length=7", "--export_dir=exported", "--distribute=mirrored",
                *(["--cell=0-1"] if grid_of(runner) else [])]
    calls = []

    def execute(settings, results_dir, **options):
        calls.append((settings, Path(results_dir), options))
        return {"teacher_error": 0.1, "student_error": 0.2, "n_labeled": 20, "step": 7,
                "eval/error/1": 0.2, "eval/error/ema": 0.1}

    monkeypatch.setattr(common, "execute", execute)
    monkeypatch.setattr(plots, "error_curves", lambda groups, path, **options: path)
    monkeypatch.setattr(keras.backend, "clear_session", lambda: None)  # after each grid cell
    monkeypatch.setattr(report, "report", lambda roots, output_format: calls.append(
        (roots, output_format)) or "the report")
    out = io.StringIO()
    with redirect_stdout(out):
        common.run_command(runner_of(runner), argv(runner, *args))
    plan = plan_of(runner, *args)
    if runner == "report":
        assert calls == [(["results"], "json")] and out.getvalue() == "the report\n"
        return
    if runner == "compare":  # the methods in their fixed order, each on the seed's data
        assert [(settings, results_dir) for settings, results_dir, _ in calls] == [
            (dataclasses.replace(compare.SETTINGS[method], data_seed=3),
             Path("results/compare") / method / "seed3") for method in plan.methods]
        assert plan.methods == ("pi", "temporal_ensembling")
        assert json.loads(out.getvalue().strip().splitlines()[-1]) == {
            "pi": 0.2, "temporal_ensembling": 0.2, "plot": str(plan.plot)}
        return
    assert len(calls) == len(plan.runs) >= 1
    for (settings, results_dir, options), run in zip(calls, plan.runs, strict=True):
        assert settings == run.settings
        if tempens:
            assert settings.temporal_ensembling["num_epochs"] == 7
        else:
            assert settings.hyperparams["training_length"] == 7
        assert results_dir == run.results_dir
        assert {key: options[key] for key in ("distribute", "export_dir", "overwrite_export")} \
            == {"distribute": "none" if tempens else "mirrored",
                "export_dir": Path("exported") / run.name, "overwrite_export": False}
    assert out.getvalue().strip().splitlines()[-1].startswith("{")  # the JSON summary


def test_train_images_test_phase_is_its_eval_dir(nothing_executes):
    assert plan_of("train_images", "--test_phase", "--eval_dir=held_out").runs[0] \
        == plan_of("train_images", "--eval_dir=held_out").runs[0]
    assert_one_error_line(*run_in_process("train_images", "--notest_phase", "--eval_dir=ev"),
                          "--notest_phase: contradicts --eval_dir=ev")
    assert_one_error_line(*run_in_process("train_images", "--validation_size=5", "--eval_dir=ev"),
                          "--validation_size=5: must not be given with --eval_dir=ev")
    with pytest.raises(common.FlagError, match="^--data_dir: must be given"):
        common.plan_command(runner_of("train_images"), ["train_images"])


def test_exit_codes_are_decided_in_one_place(monkeypatch):
    """`common.exit_code`: user errors 2, a CommandError its own (report: 1), a bug None (its
    traceback shows); the runs' errors go through it as the flags' do."""
    assert common.exit_code(common.FlagError("--x=1: must be 2")) == common.EXIT_USER_ERROR == 2
    assert common.exit_code(RuntimeError("diverged")) == 2
    assert common.exit_code(report.ReportError("no finished runs", exit_code=1)) == 1
    assert common.exit_code(KeyError("bug")) is None

    def failing(error):
        def execute(*args, **kwargs):
            raise error
        return execute

    monkeypatch.setattr(common, "execute", failing(RuntimeError("the cost\nis NaN at step 3")))
    code, stdout, stderr = run_in_process("train_svhn")
    assert (code, stderr) == (2, "error: the cost is NaN at step 3\n")
    monkeypatch.setattr(common, "execute", failing(KeyError("a bug")))
    with redirect_stdout(io.StringIO()), pytest.raises(KeyError, match="a bug"):
        common.run_command(runner_of("train_svhn"), ["train_svhn"])


# --- The real command line ------------------------------------------------------------------

COMMANDS = [
    (["runners.quickstart", "--n_labeled=abc"], "--n_labeled=abc: must be an integer >= 1"),
    (["runners.quickstart", "--consistency_trust", "2"], "--consistency_trust=2.0: must be in"),
    (["runners.quickstart", "--batch_size=abc"], "--batch_size=abc: must be a positive integer"),
    (["runners.quickstart", "--no_such_flag"], "--no_such_flag: no such flag"),
    (["runners.report", "results", "--format=xml"], "--format=xml: must be one of table, csv"),
]


def test_the_command_line_gives_one_error_line_and_exit_code_2(tmp_path):
    """In subprocesses, side by side: one stderr line starting with `error:`, exit code 2, no
    traceback, nothing on stdout (no run started) and no results directory."""
    (tmp_path / "results").mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    processes = [subprocess.Popen([sys.executable, "-m", *command], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command, _ in COMMANDS]
    for process, (command, expected) in zip(processes, COMMANDS, strict=True):
        stdout, stderr = process.communicate(timeout=300)
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert process.returncode == 2, (command, process.returncode, stderr)
        assert len(errors) == 1 and errors[0].startswith(f"error: {expected}"), (command, stderr)
        assert "Traceback" not in stderr and "FATAL" not in stderr and stdout == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results"]
