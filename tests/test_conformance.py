"""The port against the TF1 reference fixtures (tests/data/reference, FORMAT.md section 5.2)."""

import json
import os
import pickle
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tensorflow_mean_teacher import conformance
from tests.conftest import REFERENCE_DIR, TRAJECTORY_FIXTURES

REPO = Path(__file__).resolve().parents[1]

EXPECTED_GROUPS = {
    "adam_slots (sanity)", "beta_powers", "eval_logits/student", "eval_logits/teacher",
    "eval_means/student", "eval_means/teacher", "eval_metrics/errors", "eval_metrics/student",
    "eval_metrics/teacher", "final_student/V", "final_student/b", "final_student/g",
    "final_teacher/V", "final_teacher/b", "final_teacher/g", "global_step", "init/b", "init/g",
    "step_logits/student", "step_logits/teacher", "train_metric/errors",
    "train_metric/schedule", "train_metric/student_costs", "train_metric/teacher_costs",
}


@pytest.mark.parametrize("path", [REFERENCE_DIR / name for name in TRAJECTORY_FIXTURES]
                         + [REFERENCE_DIR / "eigen_no_onednn" / name
                            for name in TRAJECTORY_FIXTURES],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fixture_replays_within_tolerance(path):
    report = conformance.check_fixture(path)
    failures = [r for r in report.results if not r.passed]
    assert not failures, conformance.format_report(report.name, report.results, report.seconds)
    assert {r.group for r in report.results} == EXPECTED_GROUPS
    by_group = {r.group: r for r in report.results}
    # Every key of the fixture was compared (11 layers x g, b; 15 metrics; ...).
    assert by_group["init/g"].n_keys == 11 and by_group["final_teacher/V"].n_keys == 22
    assert by_group["train_metric/student_costs"].n_keys == 6
    assert by_group["eval_means/student"].n_keys == 22  # primary and secondary towers


def test_the_xla_compiled_step_replays_within_tolerance():
    # XLA's own float32 rounding is about ten times the TF1 kernels' (teacher step logits 2e-5
    # to 6e-5 relative instead of 3e-6): within tolerance, with less margin.
    report = conformance.check_fixture(REFERENCE_DIR / "mt_mse.npz", jit_compile=True)
    failures = [r for r in report.results if not r.passed]
    assert not failures, conformance.format_report(report.name, report.results, report.seconds)


def test_the_teacher_read_variant_is_visible():
    """Replaying a `post` fixture with the `pre` ordering must fail on the teacher side."""
    report = conformance.check_fixture(REFERENCE_DIR / "mt_mse__post.npz", teacher_reads_ema="pre")
    failed = {r.group for r in report.results if not r.passed}
    assert "step_logits/teacher" in failed
    assert not any(group.startswith("final_student") for group in failed)


def test_tolerance_rules_follow_format_md():
    assert conformance.tolerance_for("batches_x") is None
    group, tol = conformance.tolerance_for("step/class_logits_1")
    assert group == "step_logits/student" and tol.per_step
    np.testing.assert_allclose(tol.allowed(np.ones((8, 2))),
                               [5e-5, 5e-5, 1e-4, 5e-4, 2e-3, 2e-2, 2e-2, 2e-2])
    group, tol = conformance.tolerance_for("final/teacher/conv_1_1/b")
    assert (group, tol.atol, tol.rtol) == ("final_teacher/b", 2e-7, 0.0)
    group, tol = conformance.tolerance_for("train_metric/train/cons_cost/mt")
    np.testing.assert_allclose(tol.allowed(np.zeros(8)),
                               [2e-7, 2e-6, 1e-5, 5e-5, 2e-3, 4e-3, 8e-3, 2e-2])


def test_compare_flags_a_deviation_beyond_tolerance():
    fixture = {"init/conv_1_1/g": np.array([1.0, 2.0], np.float32)}
    ok = conformance.compare(fixture, {"init/conv_1_1/g": np.array([1.0, 2.00005])})
    bad = conformance.compare(fixture, {"init/conv_1_1/g": np.array([1.0, 2.0002])})
    missing = conformance.compare(fixture, {})
    assert ok[0].passed and not bad[0].passed and not missing[0].passed
    assert bad[0].worst_ratio == pytest.approx(2e-4 / (3e-5 * 2), rel=1e-3)


def test_fingerprint_definition():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    sums, dots = conformance.fingerprint(a)
    np.testing.assert_allclose(sums, [15.0, 55.0])
    probe = np.random.RandomState(99 + 3).normal(size=6)
    assert dots[3] == pytest.approx(probe @ np.arange(6.0))


def test_cli_exit_codes(tmp_path, capsys):
    bad_file = tmp_path / "broken.npz"
    bad_file.write_bytes(b"not a zip file")
    assert conformance.main([str(bad_file)]) == 2
    assert "Cannot read fixture" in capsys.readouterr().err

    with np.load(REFERENCE_DIR / "mt_mse.npz") as data:
        arrays = {key: data[key] for key in data.files}
    hyperparams = json.loads(str(arrays["hyperparams_json"]))
    hyperparams["mystery_knob"] = 1.0
    arrays["hyperparams_json"] = np.array(json.dumps(hyperparams))
    unknown = tmp_path / "unknown.npz"
    np.savez_compressed(unknown, **arrays)
    assert conformance.main([str(unknown)]) == 2
    assert "Unknown hyperparameter(s): mystery_knob" in capsys.readouterr().err

    np.savez_compressed(tmp_path / "empty.npz", x=np.zeros(1))
    assert conformance.main([str(tmp_path / "empty.npz")]) == 2
    assert "lacks the keys" in capsys.readouterr().err


class RunsCode:
    """Unpickling it runs `touch marker`: the payload of a hostile fixture."""

    def __init__(self, marker):
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def fixture_arrays():
    with np.load(REFERENCE_DIR / "mt_mse.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture
def payload(tmp_path):
    """(an object that creates `marker` when unpickled, marker); checked to be live."""
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(RunsCode(marker)))
    assert marker.exists(), "the payload does not run"
    marker.unlink()
    return RunsCode(marker), marker


def _one_error_line(capsys, path) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert str(path) in lines[0] and captured.out == ""
    return lines[0]


def _changed(arrays, case):
    arrays = dict(arrays)
    if case == "batches_x shape":
        arrays["batches_x"] = arrays["batches_x"][:, :, :28]
    elif case == "batches_x dtype":
        arrays["batches_x"] = (arrays["batches_x"] * 255).astype(np.uint8)
    elif case == "batches_y shape":
        arrays["batches_y"] = arrays["batches_y"][:, :8]
    elif case == "eval_y dtype":
        arrays["eval_y"] = arrays["eval_y"].astype(np.float32)
    elif case == "eval_y labels":
        arrays["eval_y"] = arrays["eval_y"] + 5
    elif case == "NaN pixels":
        arrays["eval_x"] = arrays["eval_x"].copy()
        arrays["eval_x"][0, 0, 0, 0] = np.nan
    elif case == "hyperparams not a string":
        arrays["hyperparams_json"] = np.zeros(3)
    elif case == "settings not an object":
        arrays["fixture_json"] = np.array("[1, 2]")
    elif case == "reference value as text":
        arrays["init/conv_1_1/g"] = np.array(["0.5"] * 128)
    elif case == "truncated key name":
        arrays["eval_metric/x"] = np.zeros(())
    else:
        raise AssertionError(case)
    return arrays


MALFORMED = {
    "batches_x shape": r"batches_x has shape \(9, 16, 28, 32, 3\) and dtype float32, expected "
                       r"\(K \+ 1, B, 32, 32, 3\) float",
    "batches_x dtype": r"batches_x has shape \(9, 16, 32, 32, 3\) and dtype uint8",
    "batches_y shape": r"batches_y has shape \(9, 8\) and dtype int32, expected \(9, 16\) integer",
    "eval_y dtype": r"eval_y has shape \(32,\) and dtype float32, expected \(32,\) integer",
    "eval_y labels": r"eval_y holds labels 5\.\.14, expected class ids 0\.\.9 or -1",
    "NaN pixels": r"eval_x holds NaN or infinite pixels",
    "hyperparams not a string": r"hyperparams_json has shape \(3,\) and dtype float64, expected "
                                r"a 0-d unicode string",
    "settings not an object": r"unusable hyperparameters: .*must be JSON objects",
    "reference value as text": r"init/conv_1_1/g has shape \(128,\) and dtype <U3, expected a "
                               r"number array",
    "truncated key name": r"key 'eval_metric/x' is not a key of FORMAT\.md 1\.3",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_fixture_exits_2_with_one_error_line(tmp_path, capsys, fixture_arrays, case):
    path = tmp_path / "malformed.npz"
    np.savez(path, **_changed(fixture_arrays, case))
    assert conformance.main([str(path)]) == 2
    assert re.search(MALFORMED[case], _one_error_line(capsys, path))


@pytest.mark.parametrize("case", ["text", "truncated", "single npy", "member not npy",
                                  "directory"])
def test_an_unreadable_fixture_exits_2_with_one_error_line(tmp_path, capsys, case):
    path = tmp_path / "broken.npz"
    if case == "text":
        path.write_text("not an npz file")
        expected = r"it is neither an npz archive nor an \.npy file"
    elif case == "truncated":
        content = (REFERENCE_DIR / "mt_mse.npz").read_bytes()
        path.write_bytes(content[: len(content) // 2])
        expected = r"Cannot read fixture .*: BadZipFile"
    elif case == "single npy":
        with open(path, "wb") as file:
            np.save(file, np.zeros(3))
        expected = r"it is a single \.npy array, not an npz archive"
    elif case == "member not npy":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("batches_x", b"raw bytes")
        expected = r"key 'batches_x' is not a \.npy array"
    else:
        path.mkdir()
        expected = r"Cannot read fixture .*: IsADirectoryError"
    assert conformance.main([str(path)]) == 2
    assert re.search(expected, _one_error_line(capsys, path))


@pytest.mark.parametrize("where", ["object array", "pickle file"])
def test_a_pickled_fixture_is_never_unpickled(tmp_path, capsys, fixture_arrays, payload, where):
    code, marker = payload
    path = tmp_path / "hostile.npz"
    if where == "object array":
        np.savez(path, **{**fixture_arrays, "batches_x": np.array([code], dtype=object)})
        expected = r"'batches_x' is an object array \(pickled data\), which is never unpickled"
    else:
        path.write_bytes(pickle.dumps(code))
        expected = (r"it is neither an npz archive nor an \.npy file \(numpy would read it as a "
                    r"pickle\), which is never unpickled")
    assert conformance.main([str(path)]) == 2
    assert re.search(rf"Cannot read fixture {re.escape(str(path))}: {expected}",
                     _one_error_line(capsys, path))
    assert not marker.exists()


def test_the_command_line_refuses_a_hostile_fixture_with_one_error_line(tmp_path,
                                                                         fixture_arrays,
                                                                         payload):
    code, marker = payload
    path = tmp_path / "hostile.npz"
    np.savez(path, **{**fixture_arrays, "eval_x": np.array([code], dtype=object)})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "tensorflow_mean_teacher.conformance", str(path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: Cannot read fixture {path}: 'eval_x' is an object array (pickled "
                      "data), which is never unpickled (FORMAT.md has no pickles)"]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not marker.exists()
