"""Mean Teacher on your own images: a folder with one subfolder per class, and `unlabeled/`.

    python -m runners.train_images --data_dir DIR [--image_size 28,28] [--n_labeled 100]
        [--eval_dir DIR] [--results_dir DIR] [--training_length ...]

The layout is that of `keras.utils.image_dataset_from_directory` (`datasets.image_folder`):
`DIR/<class name>/*.png|jpg|jpeg|bmp|gif`, and the unlabeled images in `DIR/unlabeled/`. The
classes are the subfolders, the number of channels comes from the files (grayscale: 1, colour:
3), the image size from `--image_size` or from the files. Without `--eval_dir`, a
`--validation_size` share of the labeled images is held out for evaluation; `--n_labeled` keeps
that many labels, balanced over the classes ('all': every label of the class folders).
`--eval_dir` is the run's test set: `--test_phase` alone (without it) and `--data_source=tfds`
(the built-in datasets') are refused.

The defaults are the settings of the original quick runners (`train_svhn.py`): batches of 100
with 50 labeled images, consistency cost 50, a 5,000-step ramp-up, 40,000 steps. Re-running the
command resumes the run. The last line on stdout is the results as one JSON object.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from absl import flags

from runners import common

SETTINGS = common.RunSettings(
    dataset="image_folder", n_labeled="all", data_seed=0, test_phase=False,
    batch_size=100, n_labeled_per_batch=50,
    hyperparams=dict(rampdown_length=0, rampup_length=5000, training_length=40000,
                     max_consistency_cost=50.0),
)


_IMAGE_SIZE_ALLOWED = "must be HEIGHT,WIDTH or SIZE, positive integers, e.g. 28,28 or 28"
_VALIDATION_SIZE_ALLOWED = "must be a number of images (>= 1) or a fraction in (0, 1)"


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
        raise common.FlagError(f"--image_size={value}: {_IMAGE_SIZE_ALLOWED}")
    return size


def parse_validation_size(value: str | None) -> int | float | None:
    """'500' -> 500 images; '0.1' -> a tenth of the labeled images; None -> the default."""
    if value is None:
        return None
    try:
        size: int | float = int(value)
    except ValueError:
        try:
            size = float(value)
        except ValueError:
            size = 0
    if (isinstance(size, int) and size < 1) or (isinstance(size, float) and not 0 < size < 1):
        raise common.FlagError(f"--validation_size={value}: {_VALIDATION_SIZE_ALLOWED}")
    return size


def define_flags(flag_values: flags.FlagValues) -> None:
    common.define_flags(SETTINGS, results_dir="results/train_images", flag_values=flag_values)
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("image_size", None, "Resize every image to HEIGHT,WIDTH (or SIZE for "
                        "square images). Default: the size of the files, which must all agree.",
                        **fv)
    flags.DEFINE_string("eval_dir", None, "A folder with the same class subfolders to evaluate "
                        "on: the run's test set (--test_phase). Default: hold out "
                        "--validation_size of the labeled images of --data_dir.", **fv)
    flags.DEFINE_string("validation_size", None, "Without --eval_dir: the labeled images held "
                        "out for evaluation, a number or a fraction in (0, 1). Default: 0.1.",
                        **fv)
    for name, parse, allowed in (("image_size", parse_image_size, _IMAGE_SIZE_ALLOWED),
                                 ("validation_size", parse_validation_size,
                                  _VALIDATION_SIZE_ALLOWED)):
        flags.register_validator(name, lambda value, parse=parse: _parses(parse, value),
                                 message=allowed, **fv)


def _parses(parse, value: str | None) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


def folder_settings(settings: common.RunSettings, eval_dir: str | None) -> common.RunSettings:
    """The run's settings, refusing the common flags that do not apply to an image folder."""
    if settings.data_source != "files":
        raise ValueError(f"--data_source={settings.data_source}: must be files: tfds is for the "
                         "built-in datasets; train_images reads the folder --data_dir")
    if settings.test_phase and eval_dir is None:
        raise ValueError("--test_phase: evaluates on a test set: pass it as --eval_dir DIR "
                         "(which implies --test_phase)")
    return dataclasses.replace(settings, test_phase=eval_dir is not None)


def plan(flag_values: flags.FlagValues, args: Sequence[str]) -> common.Plan:
    """The one run on the folder --data_dir; the folder options go to `data_options`."""
    common.refuse_arguments(args)
    if flag_values.data_dir is None:
        raise common.FlagError("--data_dir: must be given: the folder with one subfolder per "
                               "class (and unlabeled/), e.g. --data_dir=DIR")
    common.check_path_flags(flag_values, "eval_dir")
    eval_dir = flag_values.eval_dir
    validation_size = parse_validation_size(flag_values.validation_size)
    if eval_dir is not None and validation_size is not None:
        raise common.FlagError(
            f"--validation_size={flag_values.validation_size}: must not be given with "
            f"--eval_dir={eval_dir}: it holds out images when there is no --eval_dir")
    if flag_values["test_phase"].present and not flag_values.test_phase and eval_dir is not None:
        raise common.FlagError(f"--notest_phase: contradicts --eval_dir={eval_dir}, the run's "
                               "test set")
    settings = folder_settings(common.settings_from_flags(SETTINGS, flag_values), eval_dir)
    return common.plan_runs(flag_values, [("", settings)], data_options=dict(
        image_size=parse_image_size(flag_values.image_size), eval_dir=eval_dir,
        validation_size=validation_size))


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


def execute(planned: common.Plan) -> None:
    for run_plan in planned.runs:
        common.print_json(run(
            run_plan.settings, str(run_plan.results_dir), **run_plan.data_options,
            distribute=run_plan.distribute, export_dir=run_plan.export_dir,
            overwrite_export=run_plan.overwrite_export))


RUNNER = common.Runner(define_flags, plan, execute)

if __name__ == "__main__":
    common.run_app(RUNNER)
