"""The exported teacher loads and predicts in a process that cannot import this project."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_model import make_model, separable_data

LOADER = """
import importlib.util, json, sys
import numpy as np
import tensorflow as tf
assert importlib.util.find_spec("tensorflow_mean_teacher") is None, "project importable"
loaded = tf.saved_model.load(sys.argv[1])
signature = loaded.signatures["serving_default"]
outputs = signature(images=tf.constant(np.load(sys.argv[2])))
np.save(sys.argv[3], outputs["logits"].numpy())
np.save(sys.argv[4], outputs["probabilities"].numpy())
_, inputs = signature.structured_input_signature
print(json.dumps({
    "inputs": {k: [list(v.shape), v.dtype.name] for k, v in inputs.items()},
    "outputs": {k: [list(v.shape), v.dtype.name] for k, v in signature.structured_outputs.items()},
}))
"""


@pytest.fixture(scope="module")
def trained():
    model = make_model(hp={"student_dropout_probability": 0.5, "translate": True})
    x, y = separable_data(40)
    model.initialize_from_batch(x[:20])
    model.fit(x, y, batch_size=20, epochs=2, verbose=0)
    return model, x


def test_saved_teacher_matches_the_in_process_teacher(trained, tmp_path):
    model, x = trained
    path = model.export_teacher(tmp_path / "teacher")
    np.save(tmp_path / "x.npy", x[:7])
    (tmp_path / "load.py").write_text(LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    completed = subprocess.run(
        [sys.executable, str(tmp_path / "load.py"), str(path), str(tmp_path / "x.npy"),
         str(tmp_path / "logits.npy"), str(tmp_path / "probabilities.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    signature = json.loads(completed.stdout.strip().splitlines()[-1])
    assert signature == {
        "inputs": {"images": [[None, 32, 32, 3], "float32"]},
        "outputs": {"logits": [[None, 10], "float32"], "probabilities": [[None, 10], "float32"]},
    }
    expected = model.teacher(x[:7], training=False)[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, atol=1e-5, rtol=0)
    softmax = np.exp(expected - expected.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(np.load(tmp_path / "probabilities.npy"), softmax, atol=1e-5)
    # The teacher, not the student, was exported.
    student = model.student(x[:7], training=False)[0].numpy()
    assert np.abs(student - expected).max() > 1e-3


def test_export_refuses_to_overwrite_unless_told(trained, tmp_path):
    model, _ = trained
    target = tmp_path / "teacher"
    model.export_teacher(target)
    with pytest.raises(FileExistsError, match="exists and is not empty.*overwrite=True"):
        model.export_teacher(target)
    model.export_teacher(target, overwrite=True)
    assert (target / "saved_model.pb").exists()
    assert not (tmp_path / "teacher.partial").exists()


def test_student_export(trained, tmp_path):
    model, x = trained
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model.export_student(tmp_path / "student")))
    logits = loaded.signatures["serving_default"](images=tf.constant(x[:3]))["logits"].numpy()
    np.testing.assert_allclose(logits, model.student(x[:3], training=False)[0].numpy(),
                               atol=1e-5)


def test_a_full_disk_during_an_export_keeps_the_previous_export(trained, tmp_path,
                                                                file_size_limit):
    model, x = trained
    path = tmp_path / "teacher"
    model.export_teacher(path)
    before = {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with file_size_limit(20_000), pytest.raises(
            OSError, match=r"Could not write the export .*teacher.*File too large\. The "
                           r"previous export .*teacher' is intact\."):
        model.export_teacher(path, overwrite=True)
    after = {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]  # no staging left


def test_an_export_killed_between_its_renames_gets_the_previous_one_back(trained, tmp_path):
    model, x = trained
    path = tmp_path / "teacher"
    model.export_teacher(path)
    path.rename(tmp_path / "teacher.previous")  # killed: old moved aside, new not in place
    with pytest.raises(FileExistsError):  # the previous export is back, and not overwritten
        model.export_teacher(path)
    assert (path / "saved_model.pb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]
    model.export_teacher(path, overwrite=True)  # the run's own re-export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]
