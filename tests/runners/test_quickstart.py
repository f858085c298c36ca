"""The quickstart end to end on the bundled digits, a SIGKILL in the middle, and determinism."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

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


def final_state(results_dir):
    reader = tf.train.load_checkpoint(str(results_dir / "mean_teacher" / "checkpoints"))
    skip = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name not in skip}


def log(results_dir, name):
    with open(results_dir / "mean_teacher" / name, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds_per_step"}
                for row in csv.DictReader(f)]


def test_deterministic_runs_repeat_and_survive_sigkill(tmp_path):
    flags = ["--skip_supervised", "--deterministic", "--training_length=300",
             "--evaluation_span=50"]
    first, second, killed = tmp_path / "first", tmp_path / "second", tmp_path / "killed"
    run(first, *flags)
    run(second, *flags)

    process = subprocess.Popen(command(killed, *flags), cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = killed / "mean_teacher" / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints / "ckpt-100.index").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "mean_teacher" / "results.json").exists()
    run(killed, *flags)

    reference = final_state(first)
    assert len(reference) > 100
    for other in (second, killed):
        state = final_state(other)
        assert state.keys() == reference.keys()
        for name, value in reference.items():
            np.testing.assert_array_equal(state[name], value, err_msg=f"{other.name}: {name}")
        for name in ("training_log.csv", "validation_log.csv"):
            assert log(other, name) == log(first, name), f"{other.name}: {name}"
    assert [int(r["step"]) for r in log(killed, "validation_log.csv")] == \
        [0, 50, 100, 150, 200, 250, 300]
