"""The training-step benchmark runs end to end at tiny settings; its FLOP count is right.

Speed is measured by `python -m benchmarks.train_step`, never asserted here.
"""

import argparse
import contextlib
import io
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import compare_revisions, train_step

TINY = ["--width", "8", "--batch", "4", "--steps", "2", "--warmup", "0",
        "--labeled_per_batch", "2", "--pipeline_examples", "500", "--pipeline_batches", "3",
        "--matmul_size", "64", "--conv_batch", "1", "--peak_repeats", "1"]

REQUIRED_NUMBERS = ("step_seconds_median", "images_per_second", "gflop_per_step",
                    "achieved_gflops", "peak_conv_gflops", "peak_matmul_gflops", "peak_rss_mib",
                    "pipeline_images_per_second", "percent_of_peak_conv", "peak_conv_gflops_max",
                    "percent_of_max_conv", "pipeline_process_peak_rss_mib")


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (
        math.isfinite(value) and value > 0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run with XLA 'both', where the XLA-on model fails as an XLA error would."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    build_model = train_step.build_model

    def build_or_fail(width, xla, pi_branch, images):
        if xla:
            raise RuntimeError("simulated XLA compile failure\nsecond line")
        return build_model(width, xla, pi_branch, images)

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setattr(train_step, "build_model", build_or_fail)
        report = train_step.main([*TINY, "--xla", "both", "--in_process", "--json", str(path)])
    return report, json.loads(path.read_text()), stdout.getvalue()


def test_json_has_the_required_keys_with_positive_finite_numbers(tiny_run):
    report, written, _ = tiny_run
    assert written == json.loads(json.dumps(report))
    for key in REQUIRED_NUMBERS:
        assert _positive_finite(written[key]), (key, written[key])
    assert written["xla"] == "off"
    assert written["pi_branch_computed"] is False
    settings = written["settings"]
    assert (settings["batch"], settings["steps"], settings["width"]) == (4, 2, 8)
    assert settings["tensorflow"] and settings["cpu_count"] >= 1
    assert set(written["pipeline"]) == {"2", "vary"}


def test_per_mode_results_and_a_failed_mode_is_reported_not_raised(tiny_run):
    _, written, table = tiny_run
    off, on = written["results"]["off"], written["results"]["on"]
    assert off["jit_compile"] is False and len(off["step_seconds"]) == 2
    # A conv peak measured right before each timed step.
    assert len(off["conv_gflops_before_each_step"]) == 2
    assert off["step_seconds_min"] <= off["step_seconds_median"] <= off["step_seconds_max"]
    assert math.isfinite(off["final_loss"])
    assert on["error"].startswith("RuntimeError: simulated XLA compile failure")
    assert written["xla_on_speedup"] is None
    assert written["step_seconds_median"] == off["step_seconds_median"]
    assert _positive_finite(written["flops"]["profiler_gflop_per_step"])
    assert written["flops"]["profiler_graph"].startswith("Keras one_step_on_data")
    assert "FAILED" in table and "XLA on failed: RuntimeError: simulated" in table


def test_pi_branch_flag_builds_the_third_tower():
    model = train_step.build_model(4, False, True, train_step.fixed_batch(2, 1)[0])
    assert model.compute_pi_branch and model.pi_branch is not None


def test_forward_flops_of_full_width_convlarge_match_a_hand_count():
    def conv(size, kernel, c_in, c_out):  # 2 * H * W * k * k * Cin * Cout, output H = W = size
        return 2 * size * size * kernel * kernel * c_in * c_out

    by_hand = (conv(32, 3, 3, 128) + conv(32, 3, 128, 128) + conv(32, 3, 128, 128)  # maxpool
               + conv(16, 3, 128, 256) + conv(16, 3, 256, 256) + conv(16, 3, 256, 256)  # maxpool
               + conv(6, 3, 256, 512)  # valid: 8x8 -> 6x6
               + conv(6, 1, 512, 256) + conv(6, 1, 256, 128)
               + 2 * (2 * 128 * 10))  # two dense heads
    assert by_hand == 1_462_768_640
    assert sum(train_step.convlarge_forward_flops(128).values()) == by_hand


def test_step_flops_are_about_four_forwards_and_the_pi_branch_adds_one():
    forward = sum(train_step.convlarge_forward_flops(128).values())
    mean_teacher = train_step.step_flops(128, 100, pi_branch=False)
    # student forward + backward (~2 forwards) + teacher forward
    assert mean_teacher == pytest.approx(4 * 100 * forward, rel=0.01)
    assert train_step.step_flops(128, 100, pi_branch=True) - mean_teacher == 100 * forward


def test_flags_are_validated():
    with pytest.raises(SystemExit):
        train_step.parse_args(["--batch", "4", "--labeled_per_batch", "5"])
    with pytest.raises(SystemExit):
        train_step.parse_args(["--xla", "maybe"])
    with pytest.raises(SystemExit):
        train_step.parse_args(["--mode_only", "--xla", "both", "--json", "x.json"])


def test_share_of_conv_peak_pairs_each_step_with_the_peak_measured_before_it():
    result = {"step_seconds": [2.0, 4.0, 1.0], "step_seconds_median": 2.0,
              "before_each_step": [{"best_gflops": 400.0}, {"best_gflops": 125.0},
                                   {"best_gflops": 800.0}]}
    share = train_step.share_of_conv_peak(result, 600.0, {"best_gflops": 500.0})
    # 300/400, 150/125, 600/800 GFLOP/s -> 75%, 120%, 75%: median 75%.
    assert share["percent_of_peak_conv_per_step"] == pytest.approx([75.0, 120.0, 75.0])
    assert share["percent_of_peak_conv"] == pytest.approx(75.0)
    assert share["peak_conv_gflops"] == 400.0
    # The pessimistic reading: the median step (300 GFLOP/s) over the fastest conv seen (800).
    assert share["peak_conv_gflops_max"] == 800.0
    assert share["percent_of_max_conv"] == pytest.approx(37.5)


def test_both_modes_run_in_processes_of_their_own(tmp_path):
    path = tmp_path / "bench.json"
    with contextlib.redirect_stdout(io.StringIO()):
        report = train_step.main([*TINY, "--xla", "both", "--json", str(path)])
    assert report["settings"]["processes"] == "one per XLA mode"
    off, on = report["results"]["off"], report["results"]["on"]
    assert off["jit_compile"] is False and on["jit_compile"] is True
    for result in (off, on):
        assert len(result["step_seconds"]) == 2 and math.isfinite(result["final_loss"])
        assert _positive_finite(result["peak_rss_mib"])
    assert report["peak_rss_mib"] == report["results"][report["xla"]]["peak_rss_mib"]
    assert _positive_finite(report["flops"]["profiler_gflop_per_step"])


# ------------------------------------------------------------------------------------------
# benchmarks.compare_revisions: the working tree's step against a git revision's

COMPARE_TINY = ["--batch", "4", "--steps", "1", "--width", "4", "--rounds", "1", "--warmup", "0",
                "--labeled_per_batch", "2", "--matmul_size", "64", "--conv_batch", "1",
                "--peak_repeats", "1"]


def _compare_revisions(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.compare_revisions", *flags],
                          cwd=compare_revisions.REPO, capture_output=True, text=True,
                          check=False)


def _git(*arguments: str) -> str:
    return subprocess.run(["git", *arguments], cwd=compare_revisions.REPO, capture_output=True,
                          text=True, check=True).stdout


@pytest.fixture(scope="module")
def head_comparison(tmp_path_factory):
    """One tiny comparison of the working tree with HEAD (two processes, ~25-50 s)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        _git("rev-parse", "--is-inside-work-tree")
    except subprocess.CalledProcessError:
        pytest.skip("the repository is not a git working tree")
    path = tmp_path_factory.mktemp("compare") / "compare.json"
    completed = _compare_revisions("--base", "HEAD", *COMPARE_TINY, "--json", str(path))
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(path.read_text()), completed, _git("worktree", "list", "--porcelain")


def test_compare_revisions_against_head_reports_both_and_their_ratio(head_comparison):
    report, completed, worktrees_after = head_comparison
    assert report["base"]["revision"] == "HEAD"
    assert report["base"]["commit"] == _git("rev-parse", "HEAD").strip()
    runs = report["runs"]
    assert sorted((run["round"], run["revision"]) for run in runs) == [(0, "base"),
                                                                       (0, "current")]
    for label in ("current", "base"):
        summary = report[label]
        assert len(summary["step_seconds"]) == 1
        assert all(_positive_finite(s) for s in summary["step_seconds"])
        for key in ("step_seconds_median", "images_per_second", "percent_of_peak_conv",
                    "peak_rss_mib"):
            assert _positive_finite(summary[key]), (label, key, summary[key])
        assert summary["images_per_second"] == pytest.approx(4 / summary["step_seconds_median"])
    # Each process imported its own tree's package; the base's tree was a temporary worktree.
    worktree = report["base"]["tree"].removesuffix(" (removed)")
    assert report["current"]["imports"]["tensorflow_mean_teacher"].startswith(
        report["current"]["tree"])
    assert report["base"]["imports"]["tensorflow_mean_teacher"].startswith(worktree)
    assert not worktree.startswith(report["current"]["tree"])
    ratio = (statistics.median(report["current"]["step_seconds"])
             / statistics.median(report["base"]["step_seconds"]))
    assert report["ratio"] == pytest.approx(ratio, rel=1e-12)
    assert report["per_round_ratios"] == [pytest.approx(ratio, rel=1e-12)]
    assert report["verdict"] == ("no regression" if ratio <= 1.05
                                 else f"slower by {(ratio - 1) * 100:.1f}%")
    assert f"verdict: {report['verdict']}" in completed.stdout
    assert "run 2/2" in completed.stderr
    # The temporary worktree is gone, from the disk and from git's list.
    assert not Path(worktree).exists() and worktree not in worktrees_after


def test_compare_revisions_rejects_a_bad_revision_and_bad_numbers():
    bad = _compare_revisions("--base", "no-such-revision-4711", *COMPARE_TINY)
    assert bad.returncode == 2
    assert "no-such-revision-4711" in bad.stderr
    for flag in ("--rounds", "--steps", "--batch", "--width"):
        completed = _compare_revisions(flag, "0")
        assert completed.returncode == 2 and f"{flag} must be a positive integer" in (
            completed.stderr)


def test_compare_revisions_names_a_base_train_step_without_mode_only(capsys):
    parser = argparse.ArgumentParser(prog="compare")
    with pytest.raises(SystemExit) as raised:
        compare_revisions.check_train_step(parser, 'parser.add_argument("--batch")', "--base old")
    assert raised.value.code == 2
    assert "--base old's benchmarks/train_step.py lacks --mode_only" in capsys.readouterr().err


def test_compare_revisions_arithmetic_on_hand_numbers():
    cr = compare_revisions
    assert cr.run_order(3) == [("current", "base"), ("base", "current"), ("current", "base")]
    assert cr.median_ratio([1.0, 3.0, 2.0], [4.0, 1.0, 1.0]) == 2.0
    assert cr.verdict(1.05) == "no regression"
    assert cr.verdict(0.8) == "no regression"
    assert cr.verdict(1.10) == "slower by 10.0%"
    assert cr.verdict(1.10, tolerance=0.2) == "no regression"

    def run(round_index, revision, seconds, shares, rss):
        return {"round": round_index, "revision": revision, "step_seconds": seconds,
                "step_seconds_median": statistics.median(seconds),
                "percent_of_peak_conv": statistics.median(shares),
                "percent_of_peak_conv_per_step": shares, "peak_rss_mib": rss}
    runs = [run(0, "current", [1.1, 1.3], [50.0, 40.0], 900.0),  # median 1.2
            run(0, "base", [1.0, 1.0], [60.0, 60.0], 950.0),  # 1.0
            run(1, "base", [2.0, 2.0], [30.0, 30.0], 800.0),  # 2.0 (a slow moment)
            run(1, "current", [2.2, 2.2], [30.0, 20.0], 700.0)]  # 2.2
    assert cr.per_round_ratios(runs) == pytest.approx([1.2, 1.1])
    compared = cr.compare(runs, batch=10, tolerance=0.05)
    # Pooled steps: current [1.1, 1.3, 2.2, 2.2] -> median 1.75; base [1, 1, 2, 2] -> 1.5.
    assert compared["current"]["step_seconds_median"] == pytest.approx(1.75)
    assert compared["base"]["step_seconds_median"] == pytest.approx(1.5)
    assert compared["ratio"] == pytest.approx(1.75 / 1.5)
    assert compared["median_of_per_round_ratios"] == pytest.approx(1.15)
    assert compared["verdict"] == "slower by 16.7%" and compared["regression"] is True
    assert compared["current"]["images_per_second"] == pytest.approx(10 / 1.75)
    assert compared["current"]["percent_of_peak_conv"] == pytest.approx(35.0)  # of 50 40 30 20
    assert compared["base"]["peak_rss_mib"] == 950.0 and compared["current"]["runs"] == 2
