"""`runners.common`: a run callable from Python with its settings alone (no flags read), the
class count and image shape taken from the data, and every common flag reaching the settings."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import datasets
from runners import common
from tensorflow_mean_teacher import training

REPO = Path(__file__).resolve().parents[2]


class NoFlags:
    def __getattr__(self, name):
        raise AssertionError(f"execute read the flag {name}: it must take it as an argument")

    def __getitem__(self, name):
        raise AssertionError(f"execute read the flag {name}: it must take it as an argument")


def test_execute_runs_premade_data_without_reading_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "FLAGS", NoFlags())
    # deterministic=True must reach the run; TF's op determinism itself would stay on for the
    # rest of the test session (there is no way back), so record the call instead.
    seeded = []
    monkeypatch.setattr(training, "enable_determinism", seeded.append)
    rng = np.random.RandomState(0)
    labels = np.repeat([0, 1, 2, -1], 6)
    images = (rng.rand(24, 32, 32, 3) * 0.3 + np.maximum(labels, 0)[:, None, None, None] * 0.3)
    calls = []

    def load():
        calls.append(1)
        return datasets.semi_supervised_from_arrays(images.astype(np.float32), labels,
                                                    validation_size=3, data_seed=1)

    settings = common.RunSettings(
        dataset="my_arrays", n_labeled="all", batch_size=8, n_labeled_per_batch=4, width=4,
        eval_mean_decay=0.9, teacher_reads_ema="post", deterministic=True,
        hyperparams=dict(training_length=2, evaluation_span=2, print_span=2, rampup_length=2))
    lines = []
    results = common.execute(settings, tmp_path / "run", data=load,
                             data_record=lambda data: {"image_shape": list(data.image_shape)},
                             export_dir=tmp_path / "exported", console=lines.append)
    assert calls == [1] and seeded == [0]  # the run's seed (data_seed 0)
    assert results["num_classes"] == 3 and results["n_labeled"] == 15 and results["step"] == 2
    assert lines[0].startswith("my_arrays_alllabels_seed0: 21 training images (15 labeled), "
                               "3 evaluation images, 32x32x3, 3 classes")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["num_classes"], config["teacher_reads_ema"], config["deterministic"]) == (
        3, "post", True)
    assert config["data"]["dataset"] == "my_arrays"
    assert config["data"]["image_shape"] == [32, 32, 3]
    assert (tmp_path / "exported" / "saved_model.pb").exists()


FLAGS_SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
    from absl import flags
    from runners import common

    base = common.RunSettings(dataset="svhn", n_labeled=500, hyperparams={"rampup_length": 7})
    common.define_flags(base, results_dir="results/x")
    for argv in json.loads(sys.argv[1]):  # one command line after the other
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["runner", *argv])
        settings = dataclasses.asdict(common.settings_from_flags(base))
        run = common.plan_runs(flags.FLAGS, [("", base)]).runs[0]
        options = {"distribute": run.distribute, "overwrite_export": run.overwrite_export,
                   "export_dir": None if run.export_dir is None else str(run.export_dir)}
        print(json.dumps({"settings": settings, "options": options}))
""")


def parsed(tmp_path, *command_lines):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", FLAGS_SCRIPT, json.dumps(command_lines)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.strip().splitlines()[-len(command_lines):]]


def test_every_common_flag_reaches_the_settings_or_the_options(tmp_path):
    given, defaults = parsed(tmp_path, [
        "--data_source=tfds", "--data_dir=/data/svhn", "--teacher_reads_ema=post",
        "--deterministic", "--jit_compile", "--distribute=mirrored", "--export_dir=/tmp/out",
        "--overwrite_export", "--data_seed=3", "--n_labeled=all", "--test_phase",
        "--batch_size=50", "--n_labeled_per_batch=vary", "--width=8", "--eval_mean_decay=0.9",
        "--max_consistency_cost=2"], [])
    settings = given["settings"]
    assert {key: settings[key] for key in (
        "data_source", "data_dir", "teacher_reads_ema", "deterministic", "jit_compile",
        "data_seed", "n_labeled", "test_phase", "batch_size", "n_labeled_per_batch", "width",
        "eval_mean_decay")} == {
        "data_source": "tfds", "data_dir": "/data/svhn", "teacher_reads_ema": "post",
        "deterministic": True, "jit_compile": True, "data_seed": 3, "n_labeled": "all",
        "test_phase": True, "batch_size": 50, "n_labeled_per_batch": "vary", "width": 8,
        "eval_mean_decay": 0.9}
    assert settings["hyperparams"] == {"rampup_length": 7, "max_consistency_cost": 2.0}
    assert given["options"] == {"distribute": "mirrored", "export_dir": "/tmp/out",
                                "overwrite_export": True}

    assert defaults["settings"] == {**settings, **dict(
        data_source="files", data_dir=None, teacher_reads_ema="pre", deterministic=False,
        jit_compile=False, data_seed=0, n_labeled=500, test_phase=False, batch_size=100,
        n_labeled_per_batch="vary", width=128, eval_mean_decay=0.999,
        hyperparams={"rampup_length": 7})}
    assert defaults["options"] == {"distribute": "none", "export_dir": None,
                                   "overwrite_export": False}
