"""Summarises finished runs: test error per setting over seeds, beside the paper's figures.

    python -m runners.report results/
    python -m runners.report results/svhn_final_eval results/svhn_supervised_final_eval
    python -m runners.report results/ --format csv      # or json
    python -m runners.report results/ --plot errors.png # and a plot of error against step

Every directory under the given roots that holds a `results.json` beside a `config.json` (what
a finished run writes) is one run. Runs are grouped by setting: dataset, number of labels,
model (mean_teacher, pi, supervised: no consistency cost and labeled-only minibatches, or
temporal_ensembling: a config with "method": "temporal_ensembling"), and every other setting
whose value differs within the collection (e.g. translate, test_phase, training_length); data
seeds are what a group averages over.

For each setting: the number of seeds, the final error of the teacher (the EMA model,
`eval/error/ema`) and of the student (`eval/error/1`) in percent, mean ± sample standard
deviation, and the figure of the paper (Tarvainen & Valpola, NIPS 2017, Tables 1 and 2;
runners/data/paper_results.json) where the setting is the paper's. Temporal Ensembling has no
teacher: its runs log their student's error as `eval/error/ema` too.

`--plot PATH` also writes a PNG of the error (`eval/error/ema`, percent) against training step
of the same groups, from each run's `validation_log.csv` (`runners.plots`: a line per group, the
mean over its seeds, and a band from the lowest to the highest seed), labelled by model, plus
the differing settings where several groups have the same model; then prints `plot: PATH`
after the table (on stderr with --format csv or json, which keep stdout parseable). PATH must
end in .png and be in an existing directory; it is refused before any run is read. Plotting
needs matplotlib, imported only then.

Exits with status 1 if no finished run is found, 2 (one `error:` line) if a root is not a
directory, none is given, a flag is bad (`--format=xml`, `--plot=nowhere/errors.png`) or a run
to plot has no readable validation log. It runs without TensorFlow.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from absl import flags

from runners import common  # its command line, without TensorFlow

PAPER_RESULTS = Path(__file__).parent / "data" / "paper_results.json"

# Always shown; together with the settings that differ, they define a group.
FIXED_FIELDS = ("dataset", "n_labeled", "model")
# Settings that never tell experiments apart (logging, seeds, how the run was executed), and
# ema_consistency and method, which the model column already shows.
IGNORED_FIELDS = {"print_span", "evaluation_span", "ema_consistency", "method", "seed",
                  "data_seed", "deterministic", "jit_compile"}

FORMATS = ("table", "csv", "json")


class ReportError(common.CommandError):
    """The report cannot be made as asked: one line to the user and a non-zero exit (2, or 1
    when there is no finished run)."""


@dataclass(frozen=True)
class Run:
    path: Path
    fields: dict[str, Any]  # the run's settings, flattened (see run_fields)
    data_seed: Any
    teacher_error: float  # percent
    student_error: float  # percent


def model_name(config: dict) -> str:
    """'temporal_ensembling', 'supervised', 'mean_teacher' or 'pi' from a run's config.json."""
    if config.get("method") == "temporal_ensembling":
        return "temporal_ensembling"
    hyperparams = config.get("hyperparams", {})
    data = config.get("data", {})
    if (hyperparams.get("max_consistency_cost") == 0
            and data.get("n_labeled_per_batch") == config.get("batch_size")):
        return "supervised"
    return "mean_teacher" if hyperparams.get("ema_consistency", True) else "pi"


def run_fields(config: dict) -> dict[str, Any]:
    """The settings of a run from its config.json, as one flat dict."""
    data = config.get("data", {})
    fields = {"dataset": data.get("dataset"), "n_labeled": data.get("n_labeled"),
              "model": model_name(config)}
    for key, value in data.items():
        fields.setdefault(key, value)
    for key, value in config.items():
        if key not in ("data", "hyperparams", "temporal_ensembling"):
            fields.setdefault(key, value)
    # Temporal Ensembling's settings, one field each (those of the data excepted: the dataset
    # and n_labeled show them).
    for key, value in (config.get("temporal_ensembling") or {}).items():
        if key not in ("num_examples", "num_labels", "minibatch_size"):
            fields.setdefault(f"te_{key}", value)
    for key, value in config.get("hyperparams", {}).items():
        fields.setdefault(key, value)
    return {key: value for key, value in fields.items() if key not in IGNORED_FIELDS}


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def find_runs(roots: Iterable[str | Path]) -> list[Run]:
    """Every finished run under `roots` (a results.json beside a config.json)."""
    runs = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ReportError(f"{root} is not a directory")
        for results_path in sorted(root.rglob("results.json")):
            config_path = results_path.parent / "config.json"
            if not config_path.is_file():
                continue
            try:
                config = json.loads(config_path.read_text())
                results = json.loads(results_path.read_text())
                teacher = float(results.get("eval/error/ema", results.get("teacher_error")))
                student = float(results.get("eval/error/1", results.get("student_error")))
            except (OSError, ValueError, TypeError) as error:
                _warn(f"skipping {results_path.parent}: unreadable results ({error})")
                continue
            seed = config.get("data", {}).get("data_seed", config.get("seed"))
            runs.append(Run(results_path.parent, run_fields(config), seed,
                            100.0 * teacher, 100.0 * student))
    return runs


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def grouping_fields(runs: Sequence[Run]) -> list[str]:
    """The fixed fields, then every other setting whose value differs within `runs`."""
    names = list(dict.fromkeys(name for run in runs for name in run.fields))
    differing = [name for name in names if name not in FIXED_FIELDS
                 and len({_canonical(run.fields.get(name)) for run in runs}) > 1]
    return [*FIXED_FIELDS, *differing]


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (2, "")
    if isinstance(value, (bool, int, float)):
        return (0, float(value))
    return (1, str(value))


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None}


def load_paper_results(path: Path = PAPER_RESULTS) -> dict:
    return json.loads(path.read_text())


def paper_figure(settings: dict[str, Any], paper: dict) -> dict | None:
    """The paper's figure for a setting, if the setting is the paper's: test set, no extra
    unlabeled images, translations, and horizontal flips exactly on CIFAR-10."""
    dataset = settings.get("dataset")
    if not (settings.get("test_phase") is True and not settings.get("n_extra_unlabeled")
            and settings.get("translate") is True
            and settings.get("flip_horizontally") is (dataset == "cifar10")):
        return None
    for entry in paper["results"]:
        if (entry["dataset"], entry["n_labeled"], entry["model"]) == (
                dataset, settings.get("n_labeled"), settings.get("model")):
            return entry
    return None


def summarise(runs: Sequence[Run], paper: dict) -> tuple[list[str], list[dict]]:
    """(grouping fields, one summary per setting), settings in a stable, readable order."""
    fields = grouping_fields(runs)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(_canonical(run.fields.get(f)) for f in fields), []).append(run)
    summaries = []
    for members in groups.values():
        settings = {name: value for name, value in members[0].fields.items()
                    if all(_canonical(m.fields.get(name)) == _canonical(value) for m in members)}
        seeds = sorted({m.data_seed for m in members}, key=_sort_key)
        if len(seeds) < len(members):
            _warn(f"{len(members)} runs but {len(seeds)} distinct data seeds in the setting "
                  + ", ".join(f"{f}={members[0].fields.get(f)}" for f in fields))
        summaries.append({
            **{name: members[0].fields.get(name) for name in fields},
            "n_seeds": len(seeds),
            "data_seeds": seeds,
            "teacher_error": _mean_std([m.teacher_error for m in members]),
            "student_error": _mean_std([m.student_error for m in members]),
            "paper": paper_figure(settings, paper),
            "settings": settings,
            "runs": sorted(str(m.path) for m in members),
        })
    summaries.sort(key=lambda s: tuple(_sort_key(s[name]) for name in fields))
    return fields, summaries


def _format_error(stats: dict[str, float | None]) -> str:
    if stats["std"] is None or math.isnan(stats["std"]):
        return f"{stats['mean']:.2f}"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _format_paper(entry: dict | None) -> str:
    if entry is None:
        return "-"
    return f"{entry['error']:.2f} ± {entry['std']:.2f} ({entry['table']})"


def format_table(fields: Sequence[str], summaries: Sequence[dict], roots: Sequence[str],
                 paper: dict) -> str:
    header = [*fields, "seeds", "teacher error %", "student error %", "paper error %"]
    rows = [[str(s[name]) for name in fields]
            + [str(s["n_seeds"]), _format_error(s["teacher_error"]),
               _format_error(s["student_error"]), _format_paper(s["paper"])]
            for s in summaries]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    n_runs = sum(len(s["runs"]) for s in summaries)
    lines = [f"{n_runs} runs, {len(summaries)} settings, under {', '.join(roots)}", ""]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    lines += [line(row) for row in [header, ["-" * w for w in widths], *rows]]
    lines += [
        "",
        "teacher: the EMA model (eval/error/ema); student: eval/error/1; "
        "mean ± sample standard deviation over seeds.",
        "paper: test error of the paper's ConvNet (mean ± std over 10 runs, 4 with all labels), "
        "shown for test-set runs with the paper's augmentation and no extra unlabeled images.",
        f"       {paper['citation']}",
    ]
    if any(s["model"] == "temporal_ensembling" for s in summaries):
        lines.insert(-2, "temporal_ensembling has no teacher: its teacher column is its "
                         "student's error.")
    return "\n".join(lines)


def format_csv(fields: Sequence[str], summaries: Sequence[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*fields, "n_seeds", "teacher_error_mean", "teacher_error_std",
                     "student_error_mean", "student_error_std", "paper_error", "paper_std",
                     "paper_table"])

    def number(value):
        return "" if value is None else f"{value:.4f}"

    for s in summaries:
        paper = s["paper"] or {}
        writer.writerow([*(s[name] for name in fields), s["n_seeds"],
                         number(s["teacher_error"]["mean"]), number(s["teacher_error"]["std"]),
                         number(s["student_error"]["mean"]), number(s["student_error"]["std"]),
                         paper.get("error", ""), paper.get("std", ""), paper.get("table", "")])
    return out.getvalue().rstrip("\n")


def format_json(fields: Sequence[str], summaries: Sequence[dict], roots: Sequence[str],
                paper: dict) -> str:
    return json.dumps({"roots": list(roots), "grouped_by": list(fields),
                       "error_unit": "percent", "paper_citation": paper["citation"],
                       "settings": list(summaries)}, indent=2, sort_keys=True)


def plot_groups(fields: Sequence[str], summaries: Sequence[dict]) -> dict[str, list[Path]]:
    """{label: run directories} per setting, as `summarise` groups them. The label is the
    model, plus `name=value` for each grouping field whose value differs between the settings
    of that model (when there are several)."""
    by_model: dict[Any, list[dict]] = {}
    for summary in summaries:
        by_model.setdefault(summary["model"], []).append(summary)
    groups = {}
    for summary in summaries:
        same_model = by_model[summary["model"]]
        differing = [name for name in fields if name != "model" and len(
            {_canonical(other[name]) for other in same_model}) > 1]
        label = ", ".join([str(summary["model"]),
                           *(f"{name}={summary[name]}" for name in differing)])
        groups[label] = [Path(run) for run in summary["runs"]]
    return groups


def plot_title(summaries: Sequence[dict]) -> str:
    datasets = {(s["dataset"], s["n_labeled"]) for s in summaries}
    if len(datasets) == 1:
        ((dataset, n_labeled),) = datasets
        where = f"{dataset}, {n_labeled} labels"
    else:
        where = f"{len(datasets)} datasets and label counts"
    n_runs = sum(len(s["runs"]) for s in summaries)
    return f"{where}: error against training step ({n_runs} runs)"


def report(roots: Sequence[str], output_format: str = "table", *,
           plot: str | Path | None = None) -> str:
    """The report of the runs under `roots`; ReportError if there is none. With `plot`, also
    writes the PNG of their error curves there (`runners.plots.error_curves`)."""
    runs = find_runs(roots)
    if not runs:
        raise ReportError(
            f"no finished runs under {', '.join(roots)}: found no results.json beside a "
            "config.json", exit_code=1)
    paper = load_paper_results()
    fields, summaries = summarise(runs, paper)
    if plot is not None:
        from runners import plots  # matplotlib, only to plot

        plots.error_curves(plot_groups(fields, summaries), plot, title=plot_title(summaries))
    if output_format == "csv":
        return format_csv(fields, summaries)
    if output_format == "json":
        return format_json(fields, summaries, roots, paper)
    return format_table(fields, summaries, roots, paper)


@dataclass(frozen=True)
class Plan:
    """What a report command will do: read the runs under `roots`, print them as `format`,
    and with `plot` write the PNG of their error curves there."""

    roots: tuple[str, ...]
    format: str = "table"
    plot: str | None = None


def define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_enum("format", "table", list(FORMATS), "Output format.",
                      flag_values=flag_values)
    flags.DEFINE_string("plot", None, "Also write a PNG of the error against training step of "
                        "each setting (mean and min..max band over seeds) to this .png path.",
                        flag_values=flag_values)


def check_plot_path(value: str) -> None:
    """ReportError unless `value` is a .png path in an existing directory (not a directory
    itself), and matplotlib can be imported; reads nothing."""
    path = Path(value)
    if path.suffix.lower() != ".png":
        raise ReportError(f"--plot={value}: must be a .png file")
    if path.is_dir():
        raise ReportError(f"--plot={value}: must be a file, but it is a directory")
    parent = path.parent
    if not parent.is_dir():
        existing = next((p for p in parent.parents if p.exists()), None)
        if parent.exists() or (existing is not None and not existing.is_dir()):
            file = parent if parent.exists() else existing
            raise ReportError(f"--plot={value}: must be in a directory, but {file} is a file")
        raise ReportError(f"--plot={value}: must be in an existing directory, but {parent} "
                          "does not exist")
    if importlib.util.find_spec("matplotlib") is None:
        raise ReportError(f"--plot={value}: plotting needs matplotlib: "
                          "pip install 'matplotlib>=3.7'")


def plan(flag_values: flags.FlagValues, args: Sequence[str]) -> Plan:
    """The roots are the positional arguments; each must be a directory."""
    if not args:
        raise ReportError("give one or more results directories, e.g. "
                          "python -m runners.report results/")
    if flag_values.plot is not None:
        check_plot_path(flag_values.plot)
    for root in args:
        if not Path(root).is_dir():
            raise ReportError(f"{root} is not a directory")
    return Plan(roots=tuple(args), format=flag_values.format, plot=flag_values.plot)


def execute(planned: Plan) -> None:
    if planned.plot is None:
        print(report(list(planned.roots), planned.format))
        return
    print(report(list(planned.roots), planned.format, plot=planned.plot))
    # After the table; csv and json keep stdout to themselves.
    print(f"plot: {planned.plot}", file=sys.stdout if planned.format == "table" else sys.stderr)


RUNNER = common.Runner(define_flags, plan, execute)

if __name__ == "__main__":
    common.run_app(RUNNER)
