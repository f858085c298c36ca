"""A tiny grid on the bundled digits, end to end: two cells train (width 8, six steps), a second
invocation skips both, and the report reads them. About half a minute on a CPU."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from runners import report

REPO = Path(__file__).resolve().parents[2]

TOY_RUNNER = textwrap.dedent("""
    from runners import common, grid

    def build(data_seed, max_consistency_cost):
        return common.RunSettings(
            dataset="digits", n_labeled=50, data_seed=data_seed, test_phase=True,
            batch_size=20, n_labeled_per_batch=10, width=8, eval_mean_decay=0.9,
            hyperparams=dict(training_length=6, rampup_length=2, rampdown_length=2,
                             print_span=3, evaluation_span=3,
                             max_consistency_cost=max_consistency_cost))

    GRID = grid.make_grid(
        "toy", [{"data_seed": 0, "max_consistency_cost": cost} for cost in (0.0, 1.0)],
        build, name_keys=("data_seed", "max_consistency_cost"))

    if __name__ == "__main__":
        grid.run_main(GRID)
""")


def run_toy(tmp_path, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "toy_grid.py", "--results_dir", "res", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(done.stdout.strip().splitlines()[-1])


def test_cells_train_then_resume_as_skipped_then_report(tmp_path):
    (tmp_path / "toy_grid.py").write_text(TOY_RUNNER)
    stdout, summary = run_toy(tmp_path)
    assert [(c["name"], c["status"]) for c in summary["cells"]] == [
        ("seed0_cost0", "ran"), ("seed0_cost1", "ran")]
    for cell in summary["cells"]:
        cell_dir = tmp_path / cell["results_dir"]
        results = json.loads((cell_dir / "results.json").read_text())
        assert results["step"] == 6
        assert results["teacher_error"] == cell["teacher_error"]
        assert json.loads((cell_dir / "config.json").read_text())["data"]["data_seed"] == 0
        assert (cell_dir / "teacher" / "saved_model.pb").exists()

    stdout, again = run_toy(tmp_path)
    assert "finished earlier, skipped" in stdout
    assert [c["status"] for c in again["cells"]] == ["skipped", "skipped"]
    assert [c["teacher_error"] for c in again["cells"]] == [
        c["teacher_error"] for c in summary["cells"]]

    fields, summaries = report.summarise(report.find_runs([tmp_path / "res"]),
                                         report.load_paper_results())
    assert fields == ["dataset", "n_labeled", "model", "max_consistency_cost"]
    assert [(s["max_consistency_cost"], s["n_seeds"], s["paper"]) for s in summaries] == [
        (0.0, 1, None), (1.0, 1, None)]
