"""Mean Teacher on your own images: a folder with one subfolder per class, and `unlabeled/`.

    python -m runners.train_images --data_dir DIR [--image_size 28,28] [--n_labeled 100]
        [--eval_dir DIR] [--results_dir DIR] [--training_length ...]

The layout is that of `keras.utils.image_dataset_from_directory` (`datasets.image_folder`):
`DIR/<class name>/*.png|jpg|jpeg|bmp|gif`, and the unlabeled images in `DIR/unlabeled/`. The
classes are the subfolders, the number of channels comes from the files (grayscale: 1, colour:
3), the image size from `--image_size` or from the files. Without `--eval_dir`, a
`--validation_size` share of the labeled images is held out for evaluation; `--n_labeled` keeps
that many labels, balanced over the classes ('all': every label of the class folders).

The defaults are the settings of the original quick runners (`train_svhn.py`): batches of 100
with 50 labeled images, consistency cost 50, a 5,000-step ramp-up, 40,000 steps. Re-running the
command resumes the run. The last line on stdout is the results as one JSON object.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import app, flags

from runners import common

SETTINGS = common.RunSettings(
    dataset="image_folder", n_labeled="all", data_seed=0, test_phase=False,
    batch_size=100, n_labeled_per_batch=50,
    hyperparams=dict(rampdown_length=0, rampup_length=5000, training_length=40000,
                     max_consistency_cost=50.0),
)


def parse_image_size(value: str | None) -> tuple[int, int] | None:
    """'28,28' or '28x28' -> (28, 28); '28' -> (28, 28); None -> None (from the files)."""
    if value is None:
        return None
    parts = value.replace("x", ",").split(",")
    try:
        size = tuple(int(part) for part in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"--image_size must be HEIGHT,WIDTH or SIZE, positive integers, e.g. "
                         f"28,28 or 28. Received: --image_size={value!r}")
    return size


def parse_validation_size(value: str | None) -> int | float | None:
    """'500' -> 500 images; '0.1' -> a tenth of the labeled images; None -> the default."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise ValueError("--validation_size must be a number of images or a fraction in (0, 1). "
                         f"Received: --validation_size={value!r}") from None


def define_flags() -> None:
    common.define_flags(SETTINGS, results_dir="results/train_images")
    flags.DEFINE_string("image_size", None, "Resize every image to HEIGHT,WIDTH (or SIZE for "
                        "square images). Default: the size of the files, which must all agree.")
    flags.DEFINE_string("eval_dir", None, "A folder with the same class subfolders to evaluate "
                        "on (implies --test_phase). Default: hold out --validation_size of the "
                        "labeled images of --data_dir.")
    flags.DEFINE_string("validation_size", None, "Without --eval_dir: the labeled images held "
                        "out for evaluation, a number or a fraction in (0, 1). Default: 0.1.")
    flags.mark_flag_as_required("data_dir")
    for name, parse in (("image_size", parse_image_size),
                        ("validation_size", parse_validation_size)):
        flags.register_validator(name, lambda value, parse=parse: _parses(parse, value),
                                 message=parse.__doc__.splitlines()[0])


def _parses(parse, value: str | None) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


def folder_settings(settings: common.RunSettings, eval_dir: str | None) -> common.RunSettings:
    """The run's settings, refusing the common flags that do not apply to an image folder."""
    if settings.data_source != "files":
        raise ValueError("--data_source=tfds is for the built-in datasets; train_images reads "
                         f"--data_dir. Received: --data_source={settings.data_source}")
    if settings.test_phase and eval_dir is None:
        raise ValueError("--test_phase evaluates on a test set: pass it as --eval_dir DIR.")
    return dataclasses.replace(settings, test_phase=eval_dir is not None)


def run(settings: common.RunSettings, results_dir: str, *, image_size: tuple[int, int] | None,
        eval_dir: str | None, validation_size: int | float | None,
        **options: Any) -> dict:
    """Reads the folder (once the distribution strategy exists) and runs `common.execute`."""
    import datasets  # imported here to keep flag parsing light

    if eval_dir is not None and validation_size is not None:
        raise ValueError("--validation_size holds out images when there is no --eval_dir; with "
                         f"--eval_dir it has no use. Received: --validation_size="
                         f"{validation_size}, --eval_dir={eval_dir}")

    def load() -> datasets.SemiSupervisedData:
        return datasets.semi_supervised_from_folder(
            settings.data_dir, eval_dir=eval_dir, image_size=image_size,
            validation_size=validation_size, n_labeled=settings.n_labeled,
            data_seed=settings.data_seed)

    def record(data: datasets.SemiSupervisedData) -> dict[str, Any]:
        # Lists, as config.json stores them: a changed folder refuses to resume the run.
        # Absolute paths: the same folder resumes from any working directory.
        return {"data_dir": os.path.abspath(settings.data_dir),
                "eval_dir": None if eval_dir is None else os.path.abspath(eval_dir),
                "image_size": None if image_size is None else list(image_size),
                "validation_size": validation_size, "image_shape": list(data.image_shape),
                "class_names": list(data.class_names),
                "num_images": len(data.train_labels) + len(data.eval_labels)}

    return common.execute(settings, results_dir, data=load, data_record=record, **options)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    FLAGS = flags.FLAGS
    results = common.exit_on_user_error(lambda: run(
        folder_settings(common.settings_from_flags(SETTINGS), FLAGS.eval_dir),
        FLAGS.results_dir, image_size=parse_image_size(FLAGS.image_size),
        eval_dir=FLAGS.eval_dir, validation_size=parse_validation_size(FLAGS.validation_size),
        **common.execute_options_from_flags()))
    common.print_json(results)


if __name__ == "__main__":
    define_flags()
    app.run(main)
