"""Runs that survive faults, end to end on the quickstart's digits (width 4, 60 steps):

* SIGKILL at named points inside a checkpoint write, a log row and the export (the
  `TFMT_TEST_KILL_AT` hook), and at random moments: every resumed run ends bit-equal to the
  uninterrupted one;
* SIGTERM: a checkpoint at the step reached, exit code 75, a bit-equal resume;
* a second process on the same results directory: refused, naming the holder;
* a read-only results directory (a read-only bind mount in a user namespace): exit code 74.
"""

import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--width=4", "--batch_size=20", "--n_labeled_per_batch=10", "--print_span=10",
         "--rampup_length=20", "--rampdown_length=20", "--skip_supervised", "--deterministic",
         "--training_length=60", "--evaluation_span=20"]


def command(results_dir, *extra):
    return [sys.executable, "-m", "runners.quickstart", f"--results_dir={results_dir}",
            *FLAGS, *extra]


def environment(kill_at=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TFMT_TEST_KILL_AT", None)
    if kill_at:
        env["TFMT_TEST_KILL_AT"] = kill_at
    return env


def run(results_dir, kill_at=None, expect=0):
    completed = subprocess.run(command(results_dir), cwd=REPO, capture_output=True, text=True,
                               timeout=600, env=environment(kill_at))
    assert completed.returncode == expect, completed.stderr[-3000:]
    return completed


def state(results_dir):
    """What must be bit-equal: the final checkpoint, the logs, the results, the export."""
    run_dir = results_dir / "mean_teacher"
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints"))
    bookkeeping = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")
    tensors = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
               if name not in bookkeeping}
    logs = {}
    for name in ("training_log.csv", "validation_log.csv"):
        with open(run_dir / name, newline="") as f:
            logs[name] = [{k: v for k, v in row.items() if k != "seconds_per_step"}
                          for row in csv.DictReader(f)]
    results = json.loads((run_dir / "results.json").read_text())
    results = {k: v for k, v in results.items() if k not in ("seconds", "export_dir")}
    images = np.linspace(0, 1, 4 * 32 * 32 * 3, dtype=np.float32).reshape(4, 32, 32, 3)
    served = tf.saved_model.load(str(run_dir / "teacher")).signatures["serving_default"]
    logits = served(images=tf.constant(images))["logits"].numpy()
    return tensors, logs, results, logits


def assert_bit_equal(actual, expected):
    tensors, logs, results, logits = actual
    assert tensors.keys() == expected[0].keys() and len(tensors) > 100
    for name, value in expected[0].items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)
    assert logs == expected[1]
    assert results == expected[2]
    np.testing.assert_array_equal(logits, expected[3])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("uninterrupted")
    started = time.perf_counter()
    run(directory)
    expected = state(directory)
    assert [int(r["step"]) for r in expected[1]["validation_log.csv"]] == [0, 20, 40, 60]
    return expected, time.perf_counter() - started


def test_killed_inside_each_write_the_run_resumes_bit_equal(tmp_path, reference):
    # One process after another on the same directory, each killed at a named point (the
    # N-th pass in that process); the last one runs to the end.
    points = ["checkpoint_saved:2",  # ckpt-20's files written, not its manifest
              "manifest_staged:2",   # a manifest's temporary file written, not renamed
              "log_row_started:3",   # half of a CSV row written
              "export_staged"]       # the new SavedModel written next to the target
    for point in points:
        completed = run(tmp_path, kill_at=point, expect=-signal.SIGKILL)
        assert not (tmp_path / "mean_teacher" / "results.json").exists(), point
        assert "Traceback" not in completed.stderr, point
    run(tmp_path)
    assert_bit_equal(state(tmp_path), reference[0])
    # The finished run's command again re-exports: killed with the previous export moved
    # aside and the new one not yet in place, then run once more.
    run(tmp_path, kill_at="export_swapped", expect=-signal.SIGKILL)
    assert not (tmp_path / "mean_teacher" / "teacher").exists()
    run(tmp_path)
    assert_bit_equal(state(tmp_path), reference[0])
    assert sorted(p.name for p in (tmp_path / "mean_teacher").iterdir() if "teacher" in p.name) \
        == ["teacher"]  # no staging or previous export left behind


def killed_at_random_moments(results_dir, kills, seconds, seed):
    """Starts the run again and again, SIGKILLing it after a random time, `kills` times."""
    rng = random.Random(seed)
    done = 0
    while done < kills:
        process = subprocess.Popen(command(results_dir), cwd=REPO, env=environment(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            process.wait(timeout=rng.uniform(1.0, seconds))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            done += 1
            continue
        finally:
            process.stderr.close()
        assert process.returncode == 0
        shutil.rmtree(results_dir)  # finished before the kill: start over, kills still due
    run(results_dir)


@pytest.mark.parametrize("kills", [pytest.param(20, marks=pytest.mark.slow), 2])
def test_killed_at_random_moments_the_run_resumes_bit_equal(tmp_path, reference, kills):
    expected, seconds = reference
    killed_at_random_moments(tmp_path / "run", kills, seconds, seed=kills)
    assert_bit_equal(state(tmp_path / "run"), expected)


def test_sigterm_checkpoints_exits_75_and_the_rerun_resumes_bit_equal(tmp_path, reference):
    process = subprocess.Popen(command(tmp_path), cwd=REPO, env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "mean_teacher" / "training_log.csv"
    deadline = time.time() + 300
    while not (log.exists() and "\n10," in log.read_text()):  # training, past step 10
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "SIGTERM received: stopped at step" in errors[0]
    assert "Re-run the same command to resume" in errors[0] and "Traceback" not in stderr
    step = int(errors[0].split("stopped at step ")[1].split(",")[0])
    assert 10 <= step < 60 and f"ckpt-{step}" in errors[0]
    run(tmp_path)
    assert_bit_equal(state(tmp_path), reference[0])


def test_a_second_process_on_a_run_in_use_is_refused_naming_the_first(tmp_path):
    first = subprocess.Popen(command(tmp_path, "--training_length=100000"), cwd=REPO,
                             env=environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "mean_teacher" / "config.json").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        second = subprocess.run(command(tmp_path, "--training_length=100000"), cwd=REPO,
                                env=environment(), capture_output=True, text=True, timeout=300)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is in use by another run: " in errors[0]
    assert f"pid {first.pid} on host {socket.gethostname()}" in errors[0]
    assert "1797 training images" not in second.stdout  # refused before loading the data


def _can_mount_read_only(directory="/tmp"):
    script = f"mount --bind {directory} {directory} && mount -o remount,bind,ro {directory}"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            script], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(shutil.which("unshare") is None or not _can_mount_read_only(),
                    reason="needs unshare with user namespaces for a read-only bind mount")
def test_a_read_only_results_directory_is_a_clear_error_with_exit_74(tmp_path):
    run(tmp_path, kill_at="log_row_started:4", expect=-signal.SIGKILL)  # a run to resume
    checkpoints = tmp_path / "mean_teacher" / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    script = (f"mount --bind {tmp_path} {tmp_path} && mount -o remount,bind,ro {tmp_path} && "
              f"exec {' '.join(command(tmp_path))}")
    completed = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                script], cwd=REPO, env=environment(), capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 74, completed.stderr[-2000:]
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Read-only file system" in errors[0], completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before
