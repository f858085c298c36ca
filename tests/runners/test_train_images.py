"""`python -m runners.train_images` end to end on tiny generated image folders (width 4, batches
of 8, 2 steps), its one-line errors, and its flag parsers."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from runners import common, train_images

REPO = Path(__file__).resolve().parents[2]
TINY = ["--width=4", "--batch_size=8", "--n_labeled_per_batch=4", "--training_length=2",
        "--evaluation_span=2", "--print_span=2", "--rampup_length=2", "--eval_mean_decay=0.9"]


def write_image_folder(root: Path, classes=("circle", "square", "triangle"), per_class=8,
                       n_unlabeled=6, shape=(32, 32, 3)) -> Path:
    """A folder of `keras.utils.image_dataset_from_directory`'s layout, with unlabeled/: each
    class is its own smooth random pattern (4x4 blobs, so a shift by a few pixels keeps it)
    plus noise, so the classes can be told apart, also after per-image normalisation."""
    rng = np.random.RandomState(0)
    coarse = rng.rand(len(classes), 4, 4, shape[2]).astype(np.float32)
    patterns = tf.image.resize(coarse, shape[:2]).numpy() * 200
    folders = [(name, k, per_class) for k, name in enumerate(classes)]
    for name, klass, count in [*folders, ("unlabeled", None, n_unlabeled)]:
        (root / name).mkdir(parents=True)
        for i in range(count):
            pattern = patterns[rng.randint(len(classes)) if klass is None else klass]
            pixels = pattern + rng.rand(*shape) * 55
            tf.io.write_file(str(root / name / f"{i}.png"),
                             tf.io.encode_png(pixels.astype(np.uint8)))
    return root


def run_runner(*args, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "runners.train_images", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def readme_command() -> list[str]:
    """The arguments of the README's train_images command."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Your own images"):]
    command = re.search(r"^python -m runners.train_images (.*)$", section, re.M).group(1)
    return command.split()


def test_the_readme_command_trains_a_folder_end_to_end(tmp_path):
    write_image_folder(tmp_path / "shapes")
    args = readme_command()
    assert "tests/runners/test_train_images.py" in (REPO / "README.md").read_text()
    assert args[:2] == ["--data_dir", "DIR"]
    # The README's command on the generated folder; later flags (a tiny run) take precedence.
    done = run_runner("--data_dir=shapes", *args[2:], "--results_dir=res", "--n_labeled=12",
                      "--validation_size=3", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["num_classes"] == 3 and summary["n_labeled"] == 12 and summary["step"] == 2
    assert 0.0 <= summary["teacher_error"] <= 1.0
    assert "27 training images (12 labeled), 3 evaluation images, 32x32x3, 3 classes" \
        in done.stdout
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert results["step"] == 2 and results["teacher_error"] == summary["teacher_error"]
    config = json.loads((tmp_path / "res" / "config.json").read_text())
    assert config["num_classes"] == 3
    assert config["data"]["class_names"] == ["circle", "square", "triangle"]
    assert config["data"]["image_shape"] == [32, 32, 3] and config["data"]["num_images"] == 30
    assert config["data"]["dataset"] == "image_folder" and config["data"]["n_labeled"] == 12
    assert (tmp_path / "res" / "teacher" / "saved_model.pb").exists()


def test_a_28x28_grayscale_folder_with_an_eval_dir_trains(tmp_path):
    for name in ("train", "test"):
        write_image_folder(tmp_path / name, classes=("a", "b"), per_class=6,
                           n_unlabeled=4 if name == "train" else 0, shape=(28, 28, 1))
    (tmp_path / "test" / "unlabeled").rmdir()
    done = run_runner("--data_dir=train", "--eval_dir=test", "--results_dir=res", *TINY,
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["num_classes"] == 2 and summary["n_labeled"] == 12 and summary["step"] == 2
    assert "16 training images (12 labeled), 12 evaluation images, 28x28x1" in done.stdout
    config = json.loads((tmp_path / "res" / "config.json").read_text())
    assert config["data"]["test_phase"] is True and config["data"]["image_shape"] == [28, 28, 1]


def _broken_png(root):
    (root / "square" / "broken.png").write_bytes(b"not a png at all")
    return f"{Path('shapes') / 'square' / 'broken.png'} is not a readable image"


def _text_file(root):
    (root / "circle" / "notes.txt").write_text("not an image")
    return f"{Path('shapes') / 'circle' / 'notes.txt'} is not an image file"


def _empty_class(root):
    (root / "hexagon").mkdir()
    return f"The class folder {Path('shapes') / 'hexagon'} has no image"


def _no_class(root):
    for path in sorted(root.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    return "shapes has no class subfolder"


def _a_file(root):
    for path in sorted(root.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    root.rmdir()
    root.write_text("a file, not a folder")
    return "--data_dir=shapes: must be a directory, but it is a file"


@pytest.mark.parametrize("spoil", [_broken_png, _text_file, _empty_class, _no_class, _a_file])
def test_a_bad_folder_gives_one_error_line_and_exit_code_2(tmp_path, spoil):
    write_image_folder(tmp_path / "shapes", per_class=2, n_unlabeled=0)
    message = spoil(tmp_path / "shapes")
    done = run_runner("--data_dir=shapes", "--results_dir=res", *TINY, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert message in errors[0]
    assert not (tmp_path / "res").exists()


def test_a_bad_image_size_flag_is_refused_when_parsed(tmp_path):
    done = run_runner("--data_dir=anything", "--image_size=28,abc", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --image_size=28,abc: must be HEIGHT,WIDTH or SIZE, positive "
                      "integers, e.g. 28,28 or 28"], done.stderr


@pytest.mark.parametrize("value, expected", [
    ("28,28", (28, 28)), ("28", (28, 28)), ("24x32", (24, 32)), (" 8 , 9 ", (8, 9)),
    (None, None)])
def test_parse_image_size(value, expected):
    assert train_images.parse_image_size(value) == expected


@pytest.mark.parametrize("value", ["", "0", "28,28,3", "a,b", "-4", "2.5"])
def test_parse_image_size_refuses(value):
    with pytest.raises(ValueError, match=rf"^--image_size={re.escape(value)}: must be "):
        train_images.parse_image_size(value)


def test_parse_validation_size():
    assert train_images.parse_validation_size("50") == 50
    assert train_images.parse_validation_size("0.25") == 0.25
    assert train_images.parse_validation_size(None) is None
    for value in ("ten", "0", "-5", "1.0", "1.5"):
        with pytest.raises(ValueError, match=rf"^--validation_size={value}: must be a number"):
            train_images.parse_validation_size(value)


def test_flags_that_do_not_apply_to_a_folder_are_refused():
    settings = train_images.SETTINGS
    assert train_images.folder_settings(settings, "test_dir").test_phase is True
    assert train_images.folder_settings(settings, None).test_phase is False
    with pytest.raises(ValueError, match="--data_source=tfds: must be files: tfds is for the "
                                         "built-in datasets"):
        train_images.folder_settings(common.RunSettings("image_folder", "all",
                                                        data_source="tfds"), None)
    with pytest.raises(ValueError, match="pass it as --eval_dir"):
        train_images.folder_settings(common.RunSettings("image_folder", "all",
                                                        test_phase=True), None)
    with pytest.raises(ValueError, match="--validation_size holds out images"):
        train_images.run(settings, "unused", image_size=None, eval_dir="test",
                         validation_size=5)
