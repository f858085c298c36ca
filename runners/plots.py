"""Test error against training step, one curve per group of runs, from their validation logs.

    from runners import plots
    plots.error_curves({"mean_teacher": [run1, run2], "pi": [run3]}, "errors.png")

A group is a label (e.g. a method name) and the results directories of its seeds. Each run's
`validation_log.csv` (what training writes: a `step` column and one column per evaluation
metric, errors as fractions, a row at step 0 and every evaluation span) gives its curve.

`curve_data(groups, metric)` gives, per group, the steps logged by every run of the group (runs
with different step grids are compared on the steps they share), the mean error over the runs
at each step, in percent, and the band from the lowest to the highest run (min..max, not a
standard deviation: with the few seeds of a group it shows every run); `make_figure` draws that,
and `error_curves` writes it as a PNG, atomically (a temporary file, then `os.replace`).

The default metric, `eval/error/ema`, is the teacher's error (the EMA of the student's weights);
Temporal Ensembling has no teacher and logs its student's error there too. `metric` may also be
{label: column}, e.g. the student's `eval/error/1` for some groups.

Colours are fixed per method, whatever the order of the groups (supervised grey, pi orange,
temporal_ensembling green, mean_teacher blue; other groups take the remaining colours of
matplotlib's default cycle); several groups of one method share its colour with different line
styles. The y axis is logarithmic when the errors span more than a factor of 5 (a curve falling
from 90% to 5% is then readable at its end), linear otherwise.

matplotlib is imported only when a figure is made, with its file-only Agg canvas and without
pyplot (no global backend is chosen), so `runners.report` runs without it unless it plots.
A missing or unreadable log is a `PlotError` (a `runners.report.ReportError`, a ValueError
subclass) naming the file.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runners.report import ReportError, model_name

VALIDATION_LOG = "validation_log.csv"
DEFAULT_METRIC = "eval/error/ema"
# One colour per method (matplotlib's tab10), whatever the order of the groups.
METHOD_COLOURS = {"supervised": "#7f7f7f", "pi": "#ff7f0e", "temporal_ensembling": "#2ca02c",
                  "mean_teacher": "#1f77b4"}
# The rest of the default cycle, for groups of other methods.
OTHER_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
LINE_STYLES = ("-", "--", "-.", ":")
# A log y axis when the largest error is more than this times the smallest.
LOG_SCALE_RATIO = 5.0
DPI = 120


class PlotError(ReportError, ValueError):
    """A run cannot be plotted (its validation log is missing or unreadable): one line that
    names the file; exit code 2 from a command."""


def read_curve(run_dir: str | os.PathLike, metric: str = DEFAULT_METRIC) -> dict[int, float]:
    """{step: `metric`} (a fraction, as logged) from one run's validation log."""
    path = Path(run_dir) / VALIDATION_LOG
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except FileNotFoundError:
        raise PlotError(f"{path}: no validation log (the run has no {VALIDATION_LOG})") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        reason = getattr(error, "strerror", None) or error
        raise PlotError(f"{path}: cannot be read ({reason})") from None
    if "step" not in columns or metric not in columns:
        logged = ", ".join(name for name in columns if name.startswith("eval/")) or "none"
        raise PlotError(f"{path}: has no columns 'step' and {metric!r} (its eval columns: "
                        f"{logged})")
    if not rows:
        raise PlotError(f"{path}: has no rows")
    curve = {}
    for line, row in enumerate(rows, start=2):
        try:
            step, value = int(row["step"]), float(row[metric])
        except (TypeError, ValueError):
            raise PlotError(f"{path}, line {line}: step {row.get('step')!r} and {metric} "
                            f"{row.get(metric)!r} are not numbers") from None
        curve[step] = value  # a step logged twice: its last row
    return curve


def _metric_of(metric: str | Mapping[str, str], label: str) -> str:
    return metric if isinstance(metric, str) else metric.get(label, DEFAULT_METRIC)


def curve_data(groups: Mapping[str, Sequence[str | os.PathLike]],
               metric: str | Mapping[str, str] = DEFAULT_METRIC) -> dict[str, dict[str, Any]]:
    """{label: {"steps", "mean", "low", "high", "runs"}}: the numbers `make_figure` draws.

    `steps`: the steps every run of the group logged, ascending; `mean`, `low`, `high`: the
    mean, lowest and highest error over the group's runs at each of them, in percent; `runs`:
    the number of runs. `metric`: the logged column, or {label: column} (`eval/error/ema` for a
    label it does not name).
    """
    data = {}
    for label, run_dirs in groups.items():
        if not run_dirs:
            raise PlotError(f"group {label!r} has no runs to plot")
        column = _metric_of(metric, label)
        curves = [read_curve(run_dir, column) for run_dir in run_dirs]
        steps = sorted(set.intersection(*(set(curve) for curve in curves)))
        if not steps:
            raise PlotError(f"the runs of group {label!r} have no logged step in common: "
                            + ", ".join(str(Path(run_dir) / VALIDATION_LOG)
                                        for run_dir in run_dirs))
        values = 100.0 * np.array([[curve[step] for step in steps] for curve in curves])
        data[label] = {"steps": steps, "mean": values.mean(axis=0).tolist(),
                       "low": values.min(axis=0).tolist(), "high": values.max(axis=0).tolist(),
                       "runs": len(curves), "metric": column}
    return data


def _read_config(run_dir: str | os.PathLike) -> dict | None:
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def method_of(label: str, run_dirs: Sequence[str | os.PathLike] = ()) -> str | None:
    """The method of a group: that of its runs' config.json (`runners.report.model_name`) if
    they agree, else the label's first word if it names a method (`mean_teacher, translate=`)."""
    configs = [_read_config(run_dir) for run_dir in run_dirs]
    names = {model_name(config) for config in configs if config is not None}
    if len(names) == 1 and None not in configs:
        return names.pop()
    word = re.match(r"\w+", label)
    return word.group() if word and word.group() in METHOD_COLOURS else None


def _evaluated_on(run_dirs: Sequence[str | os.PathLike]) -> str:
    """'test', 'validation' (every run with test_phase false) or '' (a mixture)."""
    on_test = {(_read_config(run_dir) or {}).get("data", {}).get("test_phase") is not False
               for run_dir in run_dirs}
    if on_test == {False}:
        return "validation"
    return "test" if on_test <= {True} else ""


def _styles(data: Mapping[str, dict], methods: Mapping[str, str | None]) -> dict[str, tuple]:
    """(colour, line style) per label: a method's colour, a line style per group of it."""
    others = iter(OTHER_COLOURS * (len(data) // len(OTHER_COLOURS) + 1))
    colours, seen, styles = {}, {}, {}
    for label in data:
        method = methods.get(label)
        key = method if method is not None else ("label", label)
        if key not in colours:
            colours[key] = METHOD_COLOURS.get(method) or next(others)
        styles[label] = (colours[key], LINE_STYLES[seen.get(key, 0) % len(LINE_STYLES)])
        seen[key] = seen.get(key, 0) + 1
    return styles


def _step_label(step: float, _position=None) -> str:
    """25,000 -> '25k', 1,500 -> '1,500': short tick labels of a long run."""
    if abs(step) >= 10_000 and step % 1000 == 0:
        return f"{step / 1000:g}k"
    return f"{step:,.0f}"


def make_figure(data: Mapping[str, dict], *, title: str | None = None,
                methods: Mapping[str, str | None] | None = None, evaluated_on: str = "test"):
    """The matplotlib Figure of `curve_data`'s result: per group a line (the mean, labelled
    'LABEL (N seeds)') and a band (lowest to highest run), in that order; `methods`: {label:
    method} for the colours (default: the label's first word)."""
    try:
        from matplotlib import ticker
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise PlotError(f"plotting needs matplotlib ({error}): pip install 'matplotlib>=3.7'"
                        ) from None
    if methods is None:
        methods = {label: method_of(label) for label in data}
    figure = Figure(figsize=(9, 5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    styles = _styles(data, methods)
    metrics = {label: curve.get("metric", DEFAULT_METRIC) for label, curve in data.items()}
    one_metric = len(set(metrics.values())) == 1
    for label, curve in data.items():
        colour, style = styles[label]
        runs = curve["runs"]
        # Each group's metric in its legend entry when they differ, else once on the y axis.
        suffix = "" if one_metric else f", {metrics[label]}"
        axes.plot(curve["steps"], curve["mean"], color=colour, linestyle=style, linewidth=2,
                  marker="o" if len(curve["steps"]) == 1 else None,
                  label=f"{label} ({runs} seed{'s' if runs != 1 else ''}{suffix})")
        axes.fill_between(curve["steps"], curve["low"], curve["high"], color=colour,
                          alpha=0.18, linewidth=0)
    values = [v for curve in data.values() for key in ("low", "high") for v in curve[key]
              if math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > LOG_SCALE_RATIO:
        axes.set_yscale("log")
        axes.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        axes.yaxis.set_minor_locator(ticker.LogLocator(subs=(4.0, 6.0, 7.0, 8.0, 9.0)))
        axes.yaxis.set_minor_formatter(ticker.NullFormatter())
        axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        axes.set_ylim(bottom=0)
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(_step_label))
    axes.set_xlabel("training step")
    axes.set_ylabel(f"{evaluated_on} error (%)".strip().capitalize()
                    + (f", {next(iter(metrics.values()))}" if one_metric and metrics else ""))
    axes.grid(True, which="major", alpha=0.35)
    axes.grid(True, which="minor", alpha=0.12)
    axes.set_title(title or f"{(evaluated_on + ' error').strip().capitalize()} "
                   "against training step")
    notes = ["mean over seeds,", "band: lowest to highest seed"]
    if any(methods.get(label) == "temporal_ensembling" and metric == "eval/error/ema"
           for label, metric in metrics.items()):
        notes += ["temporal_ensembling has no teacher:", "its eval/error/ema is its student's"]
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
                alignment="left", title="\n".join(notes))
    return figure


def error_curves(groups: Mapping[str, Sequence[str | os.PathLike]], path: str | os.PathLike, *,
                 title: str | None = None,
                 metric: str | Mapping[str, str] = DEFAULT_METRIC) -> Path:
    """Writes the PNG of test error (percent) against training step for `groups` ({label:
    results directories}): a line per group, the mean over its runs, and a band from the lowest
    to the highest run. Returns `path`. PlotError if a run's validation log is missing or
    unreadable (naming it) or the file cannot be written."""
    path = Path(path)
    data = curve_data(groups, metric)
    all_runs = [run_dir for run_dirs in groups.values() for run_dir in run_dirs]
    figure = make_figure(data, title=title,
                         methods={label: method_of(label, groups[label]) for label in data},
                         evaluated_on=_evaluated_on(all_runs))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(temporary, format="png", dpi=DPI)
        os.replace(temporary, path)
    except OSError as error:
        raise PlotError(f"{path}: cannot be written ({error.strerror or error})") from None
    finally:
        temporary.unlink(missing_ok=True)
    return path
