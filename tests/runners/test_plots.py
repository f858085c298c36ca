"""runners.plots and `runners.report --plot` on results directories written by hand, in the
format training writes (config.json, results.json, validation_log.csv), with known numbers."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import to_hex

from runners import common, plots, report

EVAL_COLUMNS = ("eval/error/1", "eval/error/ema", "eval/class_cost/1", "eval/class_cost/ema",
                "eval/res_cost/1", "eval/res_cost/ema")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(directory: Path, teacher, student=None, *, steps=None, model="mean_teacher",
              data_seed=0, dataset="cifar10", n_labeled=4000, translate=True, test_phase=True,
              log=True):
    """A finished run whose validation log has `teacher` (fractions) as eval/error/ema and
    `student` as eval/error/1, at `steps` (default 0, 10, 20, ...), as MetricsLog writes it."""
    student = [value + 0.01 for value in teacher] if student is None else student
    steps = list(range(0, 10 * len(teacher), 10)) if steps is None else steps
    hyperparams = {"max_consistency_cost": 0.0 if model == "supervised" else 100.0,
                   "ema_consistency": model != "pi", "translate": translate,
                   "training_length": steps[-1], "evaluation_span": 10}
    config = {"hyperparams": hyperparams, "batch_size": 100, "seed": data_seed,
              "data": {"dataset": dataset, "n_labeled": n_labeled, "data_seed": data_seed,
                       "test_phase": test_phase, "n_extra_unlabeled": 0,
                       "n_labeled_per_batch": 100 if model == "supervised" else "vary"}}
    if model == "temporal_ensembling":
        config["method"] = "temporal_ensembling"
        config["temporal_ensembling"] = {"num_epochs": 3, "minibatch_size": 100}
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "results.json").write_text(json.dumps({
        "step": steps[-1], "eval/error/ema": teacher[-1], "eval/error/1": student[-1],
        "teacher_error": teacher[-1], "student_error": student[-1]}))
    if log:
        with (directory / "validation_log.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *EVAL_COLUMNS])
            writer.writeheader()
            for step, t, s in zip(steps, teacher, student, strict=True):
                writer.writerow({"step": step, "eval/error/1": float(s),
                                 "eval/error/ema": float(t), "eval/class_cost/1": 2.0 * s,
                                 "eval/class_cost/ema": 2.0 * t, "eval/res_cost/1": 0.0,
                                 "eval/res_cost/ema": 0.0})
    return directory


RNG = np.random.default_rng(7)
# Errors falling from about 90% to a few percent, per method and seed.
CURVES = {model: [np.clip(np.linspace(0.9, end, 5) + RNG.normal(0, 0.01, 5), 0.01, 1).tolist()
                  for _ in range(n)]
          for model, end, n in [("supervised", 0.30, 2), ("pi", 0.15, 2),
                                ("temporal_ensembling", 0.12, 3), ("mean_teacher", 0.08, 3)]}


@pytest.fixture
def collection(tmp_path):
    root = tmp_path / "results"
    groups = {}
    for model, curves in CURVES.items():
        groups[model] = [write_run(root / model / f"seed{seed}", curve, model=model,
                                   data_seed=seed) for seed, curve in enumerate(curves)]
    return root, groups


def test_curve_data_is_mean_and_min_max_of_the_logged_numbers(collection):
    _, groups = collection
    data = plots.curve_data(groups)
    assert list(data) == list(CURVES)
    for model, curves in CURVES.items():
        percent = 100 * np.array(curves)
        assert data[model]["steps"] == [0, 10, 20, 30, 40]
        assert data[model]["runs"] == len(curves)
        np.testing.assert_allclose(data[model]["mean"], percent.mean(axis=0))
        np.testing.assert_allclose(data[model]["low"], percent.min(axis=0))
        np.testing.assert_allclose(data[model]["high"], percent.max(axis=0))
    # The student's column, for one group.
    student = plots.curve_data(groups, {"pi": "eval/error/1"})
    np.testing.assert_allclose(student["pi"]["mean"],
                               100 * (np.array(CURVES["pi"]) + 0.01).mean(axis=0))
    np.testing.assert_allclose(student["supervised"]["mean"], data["supervised"]["mean"])


def test_runs_with_different_step_grids_share_their_common_steps(tmp_path):
    a = write_run(tmp_path / "a", [0.9, 0.5, 0.3, 0.2, 0.1], steps=[0, 10, 20, 30, 40])
    b = write_run(tmp_path / "b", [0.8, 0.4, 0.2], steps=[0, 20, 40])
    data = plots.curve_data({"mean_teacher": [a, b]})["mean_teacher"]
    assert data["steps"] == [0, 20, 40]
    np.testing.assert_allclose(data["mean"], [85.0, 35.0, 15.0])
    np.testing.assert_allclose(data["low"], [80.0, 30.0, 10.0])
    np.testing.assert_allclose(data["high"], [90.0, 40.0, 20.0])
    c = write_run(tmp_path / "c", [0.5], steps=[5])
    with pytest.raises(plots.PlotError, match="no logged step in common"):
        plots.curve_data({"x": [a, c]})


def test_the_figure_has_a_line_and_a_band_per_group_in_the_methods_colours(collection):
    _, groups = collection
    data = plots.curve_data(groups)
    methods = {label: plots.method_of(label, groups[label]) for label in groups}
    assert methods == {model: model for model in CURVES}  # from config.json (TE: "method")
    figure = plots.make_figure(data, title="Four methods", methods=methods)
    (axes,) = figure.axes
    lines = [line for line in axes.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == len(groups) and len(axes.collections) == len(groups)
    assert [line.get_label() for line in lines] == [
        "supervised (2 seeds)", "pi (2 seeds)", "temporal_ensembling (3 seeds)",
        "mean_teacher (3 seeds)"]
    for line, model in zip(lines, CURVES, strict=True):
        assert to_hex(line.get_color()) == plots.METHOD_COLOURS[model]
        np.testing.assert_allclose(line.get_ydata(), data[model]["mean"])
        np.testing.assert_array_equal(line.get_xdata(), [0, 10, 20, 30, 40])
    assert axes.get_title() == "Four methods"
    assert axes.get_xlabel() == "training step" and "error (%)" in axes.get_ylabel()
    assert axes.get_yscale() == "log"  # 90% down to a few percent
    legend = axes.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [
        line.get_label() for line in lines]
    assert "lowest to highest" in legend.get_title().get_text()
    assert "temporal_ensembling has no teacher" in legend.get_title().get_text()
    # Two groups of one method: its colour, two line styles; an unknown method: another.
    figure = plots.make_figure({"mean_teacher, translate=False": data["pi"],
                                "mean_teacher, translate=True": data["mean_teacher"],
                                "other": data["supervised"]})
    lines = figure.axes[0].get_lines()
    assert [to_hex(line.get_color()) for line in lines[:2]] == [
        plots.METHOD_COLOURS["mean_teacher"]] * 2
    assert lines[0].get_linestyle() != lines[1].get_linestyle()
    assert to_hex(lines[2].get_color()) not in plots.METHOD_COLOURS.values()
    # A narrow range of errors: a linear axis.
    narrow = {"pi": {**data["pi"], "mean": [12, 11, 10, 10, 10], "low": [11] * 5,
                     "high": [13] * 5}}
    assert plots.make_figure(narrow).axes[0].get_yscale() == "linear"


def test_error_curves_writes_a_png(collection, tmp_path):
    _, groups = collection
    path = tmp_path / "out" / "errors.png"
    path.parent.mkdir()
    path.write_bytes(b"an older plot")
    assert plots.error_curves(groups, path, title="Four methods") == path
    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 10_000
    image = matplotlib.image.imread(path)
    assert image.shape == (5 * plots.DPI, 9 * plots.DPI, 4)
    assert image[..., :3].std() > 0.05  # not blank
    assert sorted(p.name for p in path.parent.iterdir()) == ["errors.png"]  # no temporary


def test_a_missing_or_unreadable_log_is_refused_naming_the_file(tmp_path):
    good = write_run(tmp_path / "good", [0.9, 0.1])
    missing = write_run(tmp_path / "missing", [0.9, 0.1], log=False)
    with pytest.raises(plots.PlotError) as error:
        plots.error_curves({"mean_teacher": [good, missing]}, tmp_path / "out.png")
    assert str(missing / "validation_log.csv") in str(error.value)
    assert isinstance(error.value, report.ReportError) and isinstance(error.value, ValueError)
    assert not (tmp_path / "out.png").exists()
    bad = write_run(tmp_path / "bad", [0.9, 0.1])
    (bad / "validation_log.csv").write_text("step,eval/error/ema\n0,0.9\n10,oops\n")
    with pytest.raises(plots.PlotError, match=r"bad/validation_log.csv, line 3: .*'oops'"):
        plots.curve_data({"mean_teacher": [bad]})
    (bad / "validation_log.csv").write_text("step,eval/error/1\n0,0.9\n")
    with pytest.raises(plots.PlotError, match=r"bad/validation_log.csv: has no columns 'step' "
                                              r"and 'eval/error/ema' \(its eval columns: "
                                              r"eval/error/1\)"):
        plots.curve_data({"mean_teacher": [bad]})
    (bad / "validation_log.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(plots.PlotError, match="bad/validation_log.csv: "):
        plots.curve_data({"mean_teacher": [bad]})


def test_model_name_of_temporal_ensembling():
    assert report.model_name({"method": "temporal_ensembling",
                              "hyperparams": {"max_consistency_cost": 0.0},
                              "batch_size": 100, "data": {"n_labeled_per_batch": 100}}) \
        == "temporal_ensembling"
    assert report.model_name({"method": "mean_teacher"}) == "mean_teacher"


def test_plot_labels_are_the_models_plus_what_differs(tmp_path):
    write_run(tmp_path / "a", [0.9, 0.2], data_seed=1)
    write_run(tmp_path / "b", [0.9, 0.3], data_seed=2)
    write_run(tmp_path / "c", [0.9, 0.4], translate=False)
    write_run(tmp_path / "d", [0.9, 0.5], model="pi", translate=False)
    fields, summaries = report.summarise(report.find_runs([tmp_path]),
                                         report.load_paper_results())
    groups = report.plot_groups(fields, summaries)
    assert {label: sorted(p.name for p in runs) for label, runs in groups.items()} == {
        "mean_teacher, translate=False": ["c"], "mean_teacher, translate=True": ["a", "b"],
        "pi": ["d"]}


def run_report(*args):
    return common.run_command(report.RUNNER, ["report", *args])


def test_report_with_plot_end_to_end(collection, tmp_path, capsys):
    root, groups = collection
    path = tmp_path / "errors.png"
    run_report(str(root), f"--plot={path}")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"10 runs, 4 settings, under {root}"
    assert any(" temporal_ensembling " in line for line in lines)
    assert lines[-1] == f"plot: {path}" and lines.count(f"plot: {path}") == 1
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(path).shape[2] == 4
    # With --format=csv stdout stays CSV; the plot line goes to stderr.
    run_report(str(root), "--format=csv", f"--plot={path}")
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("dataset,n_labeled,model,")
    assert len(out.splitlines()) == 5 and err.strip().splitlines()[-1] == f"plot: {path}"


def test_report_plot_of_a_run_without_log_is_one_error_line(tmp_path, capsys):
    write_run(tmp_path / "runs" / "a", [0.9, 0.2])
    write_run(tmp_path / "runs" / "b", [0.9, 0.2], log=False, data_seed=1)
    with pytest.raises(SystemExit) as exited:
        run_report(str(tmp_path / "runs"), f"--plot={tmp_path / 'x.png'}")
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    assert err == (f"error: {tmp_path / 'runs' / 'b' / 'validation_log.csv'}: no validation log "
                   "(the run has no validation_log.csv)\n")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("value, message", [
    ("nowhere/x.png", "--plot=nowhere/x.png: must be in an existing directory, but nowhere "
                      "does not exist"),
    ("afile/x.png", "--plot=afile/x.png: must be in a directory, but afile is a file"),
    ("afile/sub/x.png", "--plot=afile/sub/x.png: must be in a directory, but afile is a file"),
    ("x.jpg", "--plot=x.jpg: must be a .png file"),
    ("", "--plot=: must be a .png file"),
    ("adir.png", "--plot=adir.png: must be a file, but it is a directory"),
])
def test_bad_plot_paths_are_refused_before_anything_is_read(value, message, tmp_path,
                                                            monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "adir.png").mkdir()
    monkeypatch.setattr(report, "find_runs", lambda *a, **k: pytest.fail("runs were read"))
    with pytest.raises(SystemExit) as exited:
        run_report("results", f"--plot={value}")
    out, err = capsys.readouterr()
    assert (exited.value.code, out, err) == (2, "", f"error: {message}\n")
    with pytest.raises(report.ReportError, match=re.escape(message)):
        common.plan_command(report.RUNNER, ["report", "results", f"--plot={value}"])


def test_the_report_imports_matplotlib_only_to_plot():
    code = ("import sys, runners.report as r; r.report; "
            "assert 'matplotlib' not in sys.modules and 'tensorflow' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert done.returncode == 0, done.stderr
