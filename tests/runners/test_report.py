"""runners.report on synthetic results directories in the format training.py writes."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runners import report
from tensorflow_mean_teacher.hyperparams import HyperParams

REPO = Path(__file__).resolve().parents[2]


def write_run(directory: Path, *, dataset="cifar10", n_labeled=4000, data_seed=2000,
              model="mean_teacher", teacher=0.12, student=0.13, test_phase=True,
              n_extra_unlabeled=0, **hyperparams):
    """A finished run: config.json and results.json as training.train writes them."""
    supervised = model == "supervised"
    per_batch = 100 if supervised or n_labeled == "all" else "vary"
    defaults = {"flip_horizontally": dataset == "cifar10",
                "normalize_input": dataset != "cifar10",
                "ema_consistency": model != "pi"}
    if supervised:
        defaults["max_consistency_cost"] = 0.0
    hp = HyperParams(**{**defaults, **hyperparams}).to_dict()
    config = {
        "hyperparams": hp, "batch_size": 100, "seed": data_seed, "width": 128,
        "num_classes": 10, "teacher_reads_ema": "pre", "eval_mean_decay": 0.999,
        "deterministic": False, "jit_compile": False,
        "data": {"dataset": dataset, "n_labeled": n_labeled, "data_seed": data_seed,
                 "test_phase": test_phase, "n_extra_unlabeled": n_extra_unlabeled,
                 "n_labeled_per_batch": per_batch},
    }
    results = {"step": hp["training_length"], "eval/error/ema": teacher, "eval/error/1": student,
               "teacher_error": teacher, "student_error": student, "seconds": 1.0,
               "export_dir": str(directory / "teacher")}
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "results.json").write_text(json.dumps(results))
    (directory / "teacher").mkdir()  # an export, which has no results.json


@pytest.fixture
def collection(tmp_path):
    """CIFAR-10 4000 labels: 3 Mean Teacher seeds, 2 Pi seeds, 1 supervised; one run without
    augmentation; and a stray directory that is not a run."""
    root = tmp_path / "results"
    for seed, (teacher, student) in zip(range(2000, 2003), [(0.12, 0.14), (0.13, 0.15),
                                                            (0.14, 0.16)], strict=True):
        write_run(root / "final" / f"mt{seed}", data_seed=seed, teacher=teacher,
                  student=student)
    for seed in (2000, 2001):
        write_run(root / "final" / f"pi{seed}", data_seed=seed, model="pi", teacher=0.13,
                  student=0.15)
    write_run(root / "supervised" / "s0", data_seed=0, model="supervised", teacher=0.2,
              student=0.21, training_length=30000, rampdown_length=4000)
    (root / "notes").mkdir()
    (root / "notes" / "results.json").write_text("{}")  # no config.json beside it: ignored
    return root


def test_groups_by_dataset_labels_and_model(collection):
    fields, summaries = report.summarise(report.find_runs([collection]),
                                         report.load_paper_results())
    # The settings that differ between the supervised run and the others are shown too.
    assert fields == ["dataset", "n_labeled", "model", "n_labeled_per_batch",
                      "max_consistency_cost", "rampdown_length", "training_length"]
    assert [(s["model"], s["n_seeds"]) for s in summaries] == [
        ("mean_teacher", 3), ("pi", 2), ("supervised", 1)]
    mean_teacher = summaries[0]
    assert mean_teacher["teacher_error"]["mean"] == pytest.approx(13.0)
    assert mean_teacher["teacher_error"]["std"] == pytest.approx(1.0)
    assert mean_teacher["student_error"]["mean"] == pytest.approx(15.0)
    assert mean_teacher["data_seeds"] == [2000, 2001, 2002]
    assert summaries[1]["teacher_error"]["std"] == pytest.approx(0.0)
    assert summaries[2]["teacher_error"]["std"] is None  # a single seed
    assert summaries[2]["settings"]["training_length"] == 30000
    # The paper's Table 2, CIFAR-10 with 4000 labels.
    assert [(s["paper"]["error"], s["paper"]["std"]) for s in summaries] == [
        (12.31, 0.28), (13.20, 0.27), (20.66, 0.57)]


def test_a_differing_hyperparameter_splits_the_groups(collection):
    write_run(collection / "noaug" / "mt2000", data_seed=2000, translate=False,
              flip_horizontally=False, teacher=0.2, student=0.2)
    fields, summaries = report.summarise(report.find_runs([collection]),
                                         report.load_paper_results())
    assert fields[:3] == ["dataset", "n_labeled", "model"]
    assert fields[-2:] == ["flip_horizontally", "translate"]
    rows = [(s["model"], s["translate"], s["n_seeds"], s["paper"] is not None)
            for s in summaries]
    assert rows == [("mean_teacher", False, 1, False), ("mean_teacher", True, 3, True),
                    ("pi", True, 2, True), ("supervised", True, 1, True)]


def test_no_paper_figure_for_validation_runs_or_extra_images(tmp_path):
    write_run(tmp_path / "a", dataset="svhn", n_labeled=250, test_phase=False)
    write_run(tmp_path / "b", dataset="svhn", n_labeled=500, n_extra_unlabeled=100000)
    write_run(tmp_path / "c", dataset="svhn", n_labeled=250)
    fields, summaries = report.summarise(report.find_runs([tmp_path]),
                                         report.load_paper_results())
    assert "test_phase" in fields and "n_extra_unlabeled" in fields
    papers = {(s["n_labeled"], s["settings"].get("test_phase"),
               s["settings"].get("n_extra_unlabeled")): s["paper"] for s in summaries}
    assert papers[(250, False, 0)] is None
    assert papers[(500, True, 100000)] is None
    assert papers[(250, True, 0)]["error"] == 4.35


def test_table_output(collection):
    text = report.report([str(collection)], "table")
    lines = text.splitlines()
    assert lines[0] == f"6 runs, 3 settings, under {collection}"
    header = lines[2].split()
    assert header[:4] == ["dataset", "n_labeled", "model", "n_labeled_per_batch"]
    assert "seeds" in header
    row = next(line for line in lines if " mean_teacher " in line)
    assert "13.00 ± 1.00" in row and "15.00 ± 1.00" in row and "12.31 ± 0.28 (Table 2)" in row
    assert "Tarvainen" in text


def test_csv_output(collection):
    rows = list(csv.DictReader(io.StringIO(report.report([str(collection)], "csv"))))
    assert [row["model"] for row in rows] == ["mean_teacher", "pi", "supervised"]
    assert float(rows[0]["teacher_error_mean"]) == pytest.approx(13.0)
    assert float(rows[0]["teacher_error_std"]) == pytest.approx(1.0)
    assert rows[2]["teacher_error_std"] == ""
    assert rows[0]["paper_error"] == "12.31" and rows[0]["paper_table"] == "Table 2"


def test_json_output_from_several_roots(collection):
    data = json.loads(report.report([str(collection / "final"), str(collection / "supervised")],
                                    "json"))
    assert data["grouped_by"][:4] == ["dataset", "n_labeled", "model", "n_labeled_per_batch"]
    assert [s["n_seeds"] for s in data["settings"]] == [3, 2, 1]
    assert data["settings"][0]["teacher_error"]["mean"] == pytest.approx(13.0)
    assert len(data["settings"][0]["runs"]) == 3
    assert "Tarvainen" in data["paper_citation"]


def test_paper_results_file():
    paper = report.load_paper_results()
    assert "Tarvainen" in paper["citation"] and "Mean teachers are better role models" in \
        paper["citation"]
    assert "source" in paper
    keys = [(e["dataset"], e["n_labeled"], e["model"]) for e in paper["results"]]
    assert len(keys) == len(set(keys))
    for entry in paper["results"]:
        if entry["model"] == "temporal_ensembling":  # Laine & Aila's own figures
            assert entry["table"] == "Laine & Aila 2017"
        else:
            assert entry["table"] == {"svhn": "Table 1", "cifar10": "Table 2"}[entry["dataset"]]
            assert entry["model"] in ("mean_teacher", "pi", "supervised")
        assert 0 < entry["std"] < entry["error"] < 50
    assert "arXiv:1610.02242" in paper["source"]
    te = {(e["dataset"], e["n_labeled"]): (e["error"], e["std"]) for e in paper["results"]
          if e["model"] == "temporal_ensembling"}
    assert te == {("cifar10", 4000): (12.16, 0.24), ("svhn", 500): (5.12, 0.13),
                  ("svhn", 1000): (4.42, 0.16)}
    by_key = {key: e["error"] for key, e in zip(keys, paper["results"], strict=True)}
    for dataset, n_labeled in [("svhn", 250), ("cifar10", 1000), ("cifar10", 4000)]:
        assert (by_key[(dataset, n_labeled, "mean_teacher")] < by_key[(dataset, n_labeled, "pi")]
                < by_key[(dataset, n_labeled, "supervised")])


def run_report(*args, cwd):
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "runners.report", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_on_runs(collection, tmp_path):
    done = run_report(str(collection), "--format=csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("dataset,n_labeled,model,n_labeled_per_batch,")
    assert len(done.stdout.splitlines()) == 4


def test_cli_without_runs_fails_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    done = run_report("empty", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: no finished runs under empty: found no results.json "
                                   "beside a config.json")
    missing = run_report("nowhere", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: nowhere is not a directory"
