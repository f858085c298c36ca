"""The runners' command lines, in subprocesses: listing and selecting cells, skipping finished
cells, and one-line errors for bad flag values. Nothing here trains."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tensorflow_mean_teacher.hyperparams import HyperParams

REPO = Path(__file__).resolve().parents[2]


def run_module(module, *args, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", f"runners.{module}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def cell_lines(stdout):
    """The cell lines of a --list_cells output: (index, done, name, settings)."""
    found = []
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit():
            done = parts[1] == "done"
            name = parts[2] if done else parts[1]
            found.append((int(parts[0]), done, name, line))
    return found


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def write_finished_trust_cell(results_dir: Path, name="seed1000_trust0", seed=1000, trust=0.0):
    """A finished cell of svhn_250_vary_trust, as training.py writes it."""
    cell_dir = results_dir / name
    cell_dir.mkdir(parents=True)
    hyperparams = HyperParams(ema_consistency=True, max_consistency_cost=1.0,
                              apply_consistency_to_labeled=False, training_length=180000,
                              consistency_trust=trust).to_dict()
    config = {
        "hyperparams": hyperparams, "batch_size": 100, "seed": seed, "width": 128,
        "num_classes": 10, "teacher_reads_ema": "pre", "eval_mean_decay": 0.999,
        "deterministic": False, "jit_compile": False,
        "data": {"dataset": "svhn", "n_labeled": 500, "data_seed": seed, "test_phase": False,
                 "n_extra_unlabeled": 0, "n_labeled_per_batch": 1},
    }
    (cell_dir / "config.json").write_text(json.dumps(config))
    results = {"step": 180000, "eval/error/ema": 0.05, "eval/error/1": 0.06,
               "teacher_error": 0.05, "student_error": 0.06}
    (cell_dir / "results.json").write_text(json.dumps(results))
    return cell_dir


def test_list_cells_prints_the_whole_grid_and_the_quirk(tmp_path):
    done = run_module("svhn_250_vary_trust", "--list_cells", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = cell_lines(done.stdout)
    assert [index for index, *_ in lines] == list(range(36))
    assert lines[0][2] == "seed1000_trust0"
    assert "n_labeled=500" in lines[0][3] and "consistency_trust=0.0" in lines[0][3]
    assert "test_phase=False" in lines[0][3]
    assert "skipped cells 0-22" in done.stdout
    assert not (tmp_path / "results").exists()  # listing creates nothing


def test_cell_selection_flag_overrides_and_finished_marks(tmp_path):
    write_finished_trust_cell(tmp_path / "res", name="seed1002_trust0.7", seed=1002, trust=0.7)
    done = run_module("svhn_250_vary_trust", "--list_cells", "--cell", "23-25",
                      "--cell", "30", "--training_length=5", "--results_dir", "res",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = cell_lines(done.stdout)
    assert [(index, finished) for index, finished, *_ in lines] == [
        (23, True), (24, False), (25, False), (30, False)]
    assert lines[0][2] == "seed1002_trust0.7"
    assert all("training_length=5 " in line for *_, line in lines)


def test_only_filters_on_the_original_parameters(tmp_path):
    done = run_module("cifar10_final_eval", "--list_cells", "--only", "model_type=pi",
                      "--only", "n_labeled=all", "--max_consistency_cost=3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = cell_lines(done.stdout)
    assert [index for index, *_ in lines] == [64, 65, 66, 67]
    assert all("max_consistency_cost=3.0" in line for *_, line in lines)
    assert all("ema_consistency=False" in line for *_, line in lines)


@pytest.mark.parametrize("flag, expected", [
    ("--cell=9999", ["--cell=9999: no cell 9999", "0-35"]),
    ("--training_length=-3", ["--training_length=-3: must be >= 1"]),
    ("--n_labeled=abc", ["--n_labeled=abc: must be"]),
    ("--distribute=bogus", ["--distribute=bogus: must be one of none, mirrored, multi_worker"]),
])
def test_bad_flag_values_give_one_line_and_no_traceback(tmp_path, flag, expected):
    done = run_module("svhn_250_vary_trust", flag, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    assert all(part in errors[0] for part in expected), errors[0]
    assert not (tmp_path / "results").exists()


def test_a_finished_cell_is_skipped(tmp_path):
    write_finished_trust_cell(tmp_path / "res")
    done = run_module("svhn_250_vary_trust", "--cell", "0", "--results_dir", "res", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "cell 0 (seed1000_trust0): finished earlier, skipped" in done.stdout
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["runner"] == "svhn_250_vary_trust"
    assert summary["cells"] == [{
        "index": 0, "name": "seed1000_trust0", "status": "skipped",
        "results_dir": str(Path("res") / "seed1000_trust0"),
        "teacher_error": 0.05, "student_error": 0.06}]


def test_a_finished_cell_with_other_settings_is_refused(tmp_path):
    write_finished_trust_cell(tmp_path / "res")
    done = run_module("svhn_250_vary_trust", "--cell", "0", "--results_dir", "res",
                      "--max_consistency_cost=2", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1
    assert "hyperparams.max_consistency_cost: 1.0 -> 2.0" in errors[0]


def test_quick_runner_refuses_a_bad_hyperparameter_before_loading_data(tmp_path):
    done = run_module("train_svhn", "--training_length=-3", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and "--training_length=-3: must be >= 1" in errors[0]
