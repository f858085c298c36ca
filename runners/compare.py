"""Supervised-only, the Pi model, Temporal Ensembling and Mean Teacher side by side, on the bundled
digits, over several seeds: a table and a plot.

    python -m runners.compare                       # 4 methods x 3 seeds, 15 to 25 minutes here
    python -m runners.compare --seeds=0,1,2,3,4 --methods=mean_teacher,temporal_ensembling

Every run sees the same 20 labels of its seed (`--seeds` are data seeds: the labeled subset and
every random draw) and trains the same narrow ConvLarge for the same number of steps (about
1,800 batches of 50, the quickstart's setting, `runners.quickstart`), evaluated every 112 steps:
* supervised: labeled-only minibatches, no consistency cost (the original's baseline);
* pi: the Pi model of the Mean Teacher code (`ema_consistency=False`);
* temporal_ensembling: Laine & Aila's method, 64 epochs of 28 batches over every example, with
  its ramps scaled to the run;
* mean_teacher: the quickstart's Mean Teacher.
The error of a method is its trained network's test error: the teacher's for Mean Teacher, the
student's for the others. It prints one progress line per run, then the table (mean ± sample
standard deviation over the seeds, in percent), writes the plot of test error against training
step (mean over the seeds, with a band from the lowest to the highest seed) to `--plot`, and
its last line on stdout is one JSON object: each method's mean test error (a fraction) and
`plot`, the PNG's path. The runs go to RESULTS_DIR/METHOD/seedN; re-running the command resumes
unfinished runs and re-reads finished ones.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from runners import common, quickstart

METHODS = ("supervised", "pi", "temporal_ensembling", "mean_teacher")
# The network each method trains, whose error it reports (Mean Teacher: its teacher).
ERROR_METRIC = {"supervised": "eval/error/1", "pi": "eval/error/1",
                "temporal_ensembling": "eval/error/1", "mean_teacher": "eval/error/ema"}
_MEAN_TEACHER = quickstart.MEAN_TEACHER
_TE_EPOCHS = 64  # x (1,442 // 50 = 28 steps) = 1,792 steps, the others' 1,800
# Every method evaluated at the same steps: every 4 epochs of Temporal Ensembling, 112 steps.
_EVALUATION = {"evaluation_span": 112}
_MEAN_TEACHER = dataclasses.replace(
    _MEAN_TEACHER, hyperparams={**_MEAN_TEACHER.hyperparams, **_EVALUATION})
SETTINGS = {
    "supervised": dataclasses.replace(
        _MEAN_TEACHER, n_labeled_per_batch=_MEAN_TEACHER.batch_size,
        hyperparams={**_MEAN_TEACHER.hyperparams, **quickstart.SUPERVISED_CHANGES}),
    "pi": dataclasses.replace(
        _MEAN_TEACHER, hyperparams={**_MEAN_TEACHER.hyperparams, "ema_consistency": False}),
    "temporal_ensembling": dataclasses.replace(
        _MEAN_TEACHER, n_labeled_per_batch="vary", method="temporal_ensembling",
        hyperparams={**_EVALUATION, **{name: _MEAN_TEACHER.hyperparams[name] for name in (
            "input_noise", "student_dropout_probability", "translate")}},
        temporal_ensembling=dict(num_epochs=_TE_EPOCHS, rampup_length=18, rampdown_length=18,
                                 learning_rate_max=0.003, unsup_weight_max=30.0)),
    "mean_teacher": _MEAN_TEACHER,
}


@dataclasses.dataclass(frozen=True)
class Plan:
    results_dir: Path
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    plot: Path


def _parse_list(name: str, value: str, parse, allowed: str) -> tuple:
    items = [item.strip() for item in value.split(",") if item.strip()]
    try:
        parsed = tuple(parse(item) for item in items)
    except ValueError:
        parsed = ()
    if not parsed or len(set(parsed)) != len(parsed):
        raise common.FlagError(f"--{name}={value}: must be {allowed}, each at most once")
    return parsed


def define_flags(flag_values: flags.FlagValues) -> None:
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("results_dir", "results/compare", "Where the runs go "
                        "(RESULTS_DIR/METHOD/seedN); re-running resumes them.", **fv)
    flags.DEFINE_string("seeds", "0,1,2", "Comma-separated data seeds, one run per method each.",
                        **fv)
    flags.DEFINE_string("methods", ",".join(METHODS),
                        f"Comma-separated methods to compare, of {', '.join(METHODS)}.", **fv)
    flags.DEFINE_string("plot", None, "Where to write the PNG plot "
                        "(default: RESULTS_DIR/comparison.png).", **fv)


def plan(flag_values: flags.FlagValues, args: Sequence[str]) -> Plan:
    common.refuse_arguments(args)
    common.check_path_flags(flag_values, "results_dir")
    methods = _parse_list("methods", flag_values.methods,
                          lambda m: m if m in METHODS else int("not a method"),
                          f"a comma-separated list of {', '.join(METHODS)}")

    def seed(text: str) -> int:
        value = int(text)
        if not 0 <= value < 2**32:
            raise ValueError(text)
        return value

    seeds = _parse_list("seeds", flag_values.seeds, seed,
                        "a comma-separated list of integers in [0, 2^32)")
    results_dir = Path(flag_values.results_dir)
    plot = Path(flag_values.plot) if flag_values.plot else results_dir / "comparison.png"
    if plot.suffix.lower() != ".png":
        raise common.FlagError(f"--plot={plot}: must be a .png file")
    if plot.exists() and plot.is_dir():
        raise common.FlagError(f"--plot={plot}: must be a file, but it is a directory")
    if flag_values.plot and not plot.parent.is_dir():  # (the default's is made by the runs)
        raise common.FlagError(f"--plot={plot}: its directory {plot.parent} does not exist")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise common.FlagError("--plot: drawing needs matplotlib (pip install -r "
                               "requirements.txt)") from None
    return Plan(results_dir, tuple(m for m in METHODS if m in methods), seeds, plot)


def run_dir(planned: Plan, method: str, seed: int) -> Path:
    return planned.results_dir / method / f"seed{seed}"


def format_table(errors: dict[str, list[float]]) -> str:
    """Mean ± sample std of the test error (percent) per method."""
    lines = [f"{'method':<22} {'seeds':>5}  {'test error (%)':>16}"]
    for method, values in errors.items():
        percent = [100.0 * value for value in values]
        spread = statistics.stdev(percent) if len(percent) > 1 else float("nan")
        lines.append(f"{method:<22} {len(percent):>5}  "
                     f"{statistics.fmean(percent):>8.2f} ± {spread:<5.2f}")
    return "\n".join(lines)


def execute(planned: Plan) -> dict:
    started = time.perf_counter()
    total = len(planned.methods) * len(planned.seeds)
    errors: dict[str, list[float]] = {method: [] for method in planned.methods}
    done = 0
    for seed in planned.seeds:
        for method in planned.methods:
            done += 1
            settings = dataclasses.replace(SETTINGS[method], data_seed=seed)
            began = time.perf_counter()
            print(f"[{done}/{total}] {method}, seed {seed}: training "
                  f"({run_dir(planned, method, seed)})", flush=True)
            results = common.execute(settings, run_dir(planned, method, seed),
                                     console=lambda line: None)
            error = float(results[ERROR_METRIC[method]])
            errors[method].append(error)
            print(f"[{done}/{total}] {method}, seed {seed}: test error {100 * error:.2f}% "
                  f"({time.perf_counter() - began:.0f} s; {time.perf_counter() - started:.0f} s "
                  "in all)", flush=True)
    from runners import plots  # matplotlib, once the runs are made

    groups = {method: [run_dir(planned, method, seed) for seed in planned.seeds]
              for method in planned.methods}
    plot = plots.error_curves(groups, planned.plot, metric=ERROR_METRIC,
                              title="Test error on the bundled digits, 20 labels "
                                    f"({len(planned.seeds)} seeds)")
    print(format_table(errors))
    print(f"plot: {plot}")
    summary = {method: statistics.fmean(values) for method, values in errors.items()}
    summary["plot"] = str(plot)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


RUNNER = common.Runner(define_flags, plan, execute)

if __name__ == "__main__":
    common.run_app(RUNNER)
