"""The port against the TF1 reference fixtures (tests/data/reference, FORMAT.md section 5.2)."""

import json

import numpy as np
import pytest

from tensorflow_mean_teacher import conformance
from tests.conftest import REFERENCE_DIR, TRAJECTORY_FIXTURES

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
