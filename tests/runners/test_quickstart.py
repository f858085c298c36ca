"""The quickstart end to end on the bundled digits (kills, preemption and determinism:
test_faults.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = ["--width=4", "--batch_size=20", "--n_labeled_per_batch=10", "--print_span=10",
        "--rampup_length=20", "--rampdown_length=20"]


def command(results_dir, *extra):
    return [sys.executable, "-m", "runners.quickstart", f"--results_dir={results_dir}",
            *TINY, *extra]


def run(results_dir, *extra):
    completed = subprocess.run(command(results_dir, *extra), cwd=REPO, capture_output=True,
                               text=True, timeout=600, env=_env())
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_quickstart_prints_both_errors_as_json(tmp_path):
    completed = run(tmp_path, "--training_length=20", "--evaluation_span=10")
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert {"teacher_error", "student_error", "supervised_error", "n_labeled", "steps",
            "seconds"} <= set(summary)
    assert summary["n_labeled"] == 20 and summary["steps"] == 20
    assert all(0.0 <= summary[k] <= 1.0 for k in ("teacher_error", "supervised_error"))
    for run_dir in ("mean_teacher", "supervised"):
        results = json.loads((tmp_path / run_dir / "results.json").read_text())
        assert results["step"] == 20
        assert (tmp_path / run_dir / "teacher" / "saved_model.pb").exists()
    assert "test error with 20 labels" in completed.stdout
