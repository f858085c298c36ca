"""Summarises finished runs: test error per setting over seeds, beside the paper's figures.

    python -m runners.report results/
    python -m runners.report results/svhn_final_eval results/svhn_supervised_final_eval
    python -m runners.report results/ --format csv      # or json

Every directory under the given roots that holds a `results.json` beside a `config.json` (what
a finished run writes) is one run. Runs are grouped by setting: dataset, number of labels,
model (mean_teacher, pi, or supervised: no consistency cost and labeled-only minibatches), and
every other setting whose value differs within the collection (e.g. translate, test_phase,
training_length); data seeds are what a group averages over.

For each setting: the number of seeds, the final error of the teacher (the EMA model,
`eval/error/ema`) and of the student (`eval/error/1`) in percent, mean ± sample standard
deviation, and the figure of the paper (Tarvainen & Valpola, NIPS 2017, Tables 1 and 2;
runners/data/paper_results.json) where the setting is the paper's. Exits with status 1 if no
finished run is found, 2 (one `error:` line) if a root is not a directory, none is given, or a
flag is bad (`--format=xml`). It runs without TensorFlow.
"""

from __future__ import annotations

import csv
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
# ema_consistency, which the model column already shows.
IGNORED_FIELDS = {"print_span", "evaluation_span", "ema_consistency", "seed", "data_seed",
                  "deterministic", "jit_compile"}

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
    """'supervised', 'mean_teacher' or 'pi' from a run's config.json."""
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
        if key not in ("data", "hyperparams"):
            fields.setdefault(key, value)
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


def report(roots: Sequence[str], output_format: str = "table") -> str:
    """The report of the runs under `roots`; ReportError if there is none."""
    runs = find_runs(roots)
    if not runs:
        raise ReportError(
            f"no finished runs under {', '.join(roots)}: found no results.json beside a "
            "config.json", exit_code=1)
    paper = load_paper_results()
    fields, summaries = summarise(runs, paper)
    if output_format == "csv":
        return format_csv(fields, summaries)
    if output_format == "json":
        return format_json(fields, summaries, roots, paper)
    return format_table(fields, summaries, roots, paper)


@dataclass(frozen=True)
class Plan:
    """What a report command will do: read the runs under `roots`, print them as `format`."""

    roots: tuple[str, ...]
    format: str = "table"


def define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_enum("format", "table", list(FORMATS), "Output format.",
                      flag_values=flag_values)


def plan(flag_values: flags.FlagValues, args: Sequence[str]) -> Plan:
    """The roots are the positional arguments; each must be a directory."""
    if not args:
        raise ReportError("give one or more results directories, e.g. "
                          "python -m runners.report results/")
    for root in args:
        if not Path(root).is_dir():
            raise ReportError(f"{root} is not a directory")
    return Plan(roots=tuple(args), format=flag_values.format)


def execute(planned: Plan) -> None:
    print(report(list(planned.roots), planned.format))


RUNNER = common.Runner(define_flags, plan, execute)

if __name__ == "__main__":
    common.run_app(RUNNER)
