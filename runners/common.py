"""What every runner shares: its flags, the data, and one run into a results directory.

A runner module calls `define_flags(...)` with its own defaults (the original script's
settings), then `absl.app.run(main)` where `main` builds the run's `RunSettings` with
`settings_from_flags(...)` and passes them to `execute(...)`. Every original hyperparameter is a
flag under its original name (`--training_length`, `--max_consistency_cost`, ...); a flag that
is not given keeps the runner's (or the grid cell's) value. Only the entry functions read the
flags: `execute` takes everything as arguments, so a run is callable from Python with its
settings alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from absl import flags

from tensorflow_mean_teacher import distribution
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.inputs import check_dataset
from tensorflow_mean_teacher.training import ResultsDirectoryError, RunConfig, train

if TYPE_CHECKING:
    from datasets import SemiSupervisedData

FLAGS = flags.FLAGS

_HYPERPARAM_HELP = "Original hyperparameter; default: the runner's (or grid cell's) value."


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """One run: the data it uses, the hyperparameters on top of the defaults, and how it runs."""

    dataset: str
    n_labeled: int | str
    data_seed: int = 0
    test_phase: bool = False
    n_extra_unlabeled: int = 0
    batch_size: int = 100
    n_labeled_per_batch: int | str = "vary"
    hyperparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eval_mean_decay: float = 0.999
    width: int = 128
    # Where the data is read from: a built-in dataset's source and directory
    # (datasets.load_semi_supervised; None: its default directory), or a runner's own folder.
    data_source: str = "files"
    data_dir: str | None = None
    teacher_reads_ema: str = "pre"
    deterministic: bool = False
    jit_compile: bool = False

    def describe(self) -> str:
        return f"{self.dataset}_{self.n_labeled}labels_seed{self.data_seed}"


def _parse_count_or_word(words: tuple[str, ...]):
    def parse(value: str):
        if value in words:
            return value
        try:
            number = int(value)
        except ValueError:
            raise flags.ValidationError(
                f"must be an integer or one of {', '.join(words)}. Received: {value!r}"
            ) from None
        if number < 0:
            raise flags.ValidationError(f"must be >= 0. Received: {value!r}")
        return number
    return parse


def define_flags(defaults: RunSettings, results_dir: str) -> None:
    """Defines the flags every runner has, with this runner's defaults."""
    for field in dataclasses.fields(HyperParams):
        define = {"bool": flags.DEFINE_boolean, "int": flags.DEFINE_integer,
                  "float": flags.DEFINE_float}[field.type]
        value = defaults.hyperparams.get(field.name, field.default)
        define(field.name, None, f"{_HYPERPARAM_HELP} Runner default: {value}.")
    flags.DEFINE_string("results_dir", results_dir,
                        "Directory of the run's results; re-running the command resumes it.")
    flags.DEFINE_string("data_dir", defaults.data_dir,
                        "Directory of the dataset files (see README).")
    flags.DEFINE_enum("data_source", defaults.data_source, ["files", "tfds"],
                      "Read the original dataset files, or tensorflow-datasets' copy.")
    flags.DEFINE_integer("data_seed", defaults.data_seed, "Seed of the data split.", lower_bound=0)
    flags.DEFINE_string("n_labeled", str(defaults.n_labeled),
                        "Number of labeled training examples (balanced over classes), or 'all'.")
    flags.DEFINE_boolean("test_phase", defaults.test_phase,
                         "Train on the whole training set and evaluate on the test set.")
    flags.DEFINE_integer("batch_size", defaults.batch_size,
                         "Minibatch size: the global batch, split equally over the replicas of "
                         "--distribute.", lower_bound=1)
    flags.DEFINE_string("n_labeled_per_batch", str(defaults.n_labeled_per_batch),
                        "Labeled examples per minibatch, or 'vary'.")
    flags.DEFINE_integer("width", defaults.width, "Channels of ConvLarge's first block.",
                         lower_bound=1)
    flags.DEFINE_float("eval_mean_decay", defaults.eval_mean_decay,
                       "Decay of the inference-mode batch-norm means (0.999 in the original).",
                       lower_bound=0.0, upper_bound=0.999999)
    flags.DEFINE_enum("teacher_reads_ema", defaults.teacher_reads_ema, ["pre", "post"],
                      "Whether the teacher reads its EMA weights before or after the step's "
                      "EMA update (see README).")
    flags.DEFINE_enum("distribute", "none", ["none", "mirrored", "multi_worker"],
                      "Spread each step over several devices: 'mirrored' (MirroredStrategy, this "
                      "machine's GPUs) or 'multi_worker' (MultiWorkerMirroredStrategy over the "
                      "workers of TF_CONFIG; only the chief writes --results_dir). --batch_size "
                      "stays the global batch and must be divisible by the number of replicas.")
    flags.DEFINE_boolean("deterministic", defaults.deterministic,
                         "Seed everything and use deterministic TensorFlow ops.")
    flags.DEFINE_boolean("jit_compile", defaults.jit_compile,
                         "Compile the training step with XLA.")
    flags.DEFINE_string("export_dir", None,
                        "Where to export the teacher SavedModel (default: RESULTS_DIR/teacher).")
    flags.DEFINE_boolean("overwrite_export", False, "Replace a non-empty --export_dir.")
    for name in ("n_labeled", "n_labeled_per_batch"):
        words = ("all",) if name == "n_labeled" else ("vary",)
        flags.register_validator(
            name, lambda v, w=words: _is_count_or_word(v, w),
            message=f"must be an integer >= 0 or one of {words}",
        )


def _is_count_or_word(value: str, words: tuple[str, ...]) -> bool:
    try:
        _parse_count_or_word(words)(value)
    except flags.ValidationError:
        return False
    return True


def settings_from_flags(base: RunSettings) -> RunSettings:
    """`base` with every flag that was given on the command line applied."""
    hyperparams = dict(base.hyperparams)
    for field in dataclasses.fields(HyperParams):
        if FLAGS[field.name].value is not None:
            hyperparams[field.name] = FLAGS[field.name].value
    changes = {"hyperparams": hyperparams}
    for name in ("data_seed", "test_phase", "batch_size", "width", "eval_mean_decay",
                 "data_source", "data_dir", "teacher_reads_ema", "deterministic", "jit_compile"):
        if FLAGS[name].present:
            changes[name] = FLAGS[name].value
    if FLAGS["n_labeled"].present:
        changes["n_labeled"] = _parse_count_or_word(("all",))(FLAGS.n_labeled)
    if FLAGS["n_labeled_per_batch"].present:
        changes["n_labeled_per_batch"] = _parse_count_or_word(("vary",))(
            FLAGS.n_labeled_per_batch)
    HyperParams.from_dict(hyperparams)  # a bad value fails here, before any data is loaded
    return dataclasses.replace(base, **changes)


def data_description(settings: RunSettings) -> dict[str, Any]:
    """What `config.json` records of a run's data (and compares on resume)."""
    return {"dataset": settings.dataset, "n_labeled": settings.n_labeled,
            "data_seed": settings.data_seed, "test_phase": settings.test_phase,
            "n_extra_unlabeled": settings.n_extra_unlabeled,
            "n_labeled_per_batch": settings.n_labeled_per_batch}


def load_data(settings: RunSettings) -> SemiSupervisedData:
    """The built-in dataset `settings.dataset`, split as `settings` say."""
    import datasets  # the top-level data package; imported here to keep flag parsing light

    return datasets.load_semi_supervised(
        settings.dataset, n_labeled=settings.n_labeled, data_seed=settings.data_seed,
        test_phase=settings.test_phase, n_extra_unlabeled=settings.n_extra_unlabeled,
        source=settings.data_source, data_dir=settings.data_dir,
    )


def execute(settings: RunSettings, results_dir: str | os.PathLike, *,
            data: SemiSupervisedData | Callable[[], SemiSupervisedData] | None = None,
            data_record: Mapping[str, Any] | Callable[[SemiSupervisedData], Mapping] | None = None,
            distribute: str = "none",
            export_dir: str | os.PathLike | None = None, overwrite_export: bool = False,
            console: Callable[[str], None] = print) -> dict:
    """Loads the data, runs (or resumes) training, returns the results.

    Args:
        settings: the run.
        results_dir: its results directory (re-running with the same one resumes).
        data: the run's data; None loads the built-in dataset `settings.dataset`
            (`load_data`). A function returning the data is called once the `distribute`
            strategy exists: pass one when making the data runs TensorFlow operations (decoding
            image files) and `distribute` may be 'multi_worker'.
        data_record: more about the data for `config.json` (and the resume check), on top of
            `data_description(settings)`, e.g. the folder the images come from; or a function
            of the loaded data returning it.
        distribute: 'none', 'mirrored' or 'multi_worker' (`distribution.strategy_from_name`).
        export_dir: where to export the teacher (default: RESULTS_DIR/teacher).
        overwrite_export: replace a non-empty `export_dir`.
        console: where the progress lines go.
    """
    import datasets  # the top-level data package; imported here to keep flag parsing light

    # First: MultiWorkerMirroredStrategy must exist before any TensorFlow operation runs.
    strategy = distribution.strategy_from_name(distribute)
    distribution.check_global_batch(settings.batch_size, strategy)
    if data is None:
        data = load_data(settings)
    elif callable(data):
        data = data()
    hyperparams = HyperParams.from_dict(
        {"normalize_input": data.normalize_input, **settings.hyperparams})
    check_dataset(data.train_images, data.train_labels, data.num_classes, what="training")
    check_dataset(data.eval_images, data.eval_labels, data.num_classes, what="evaluation",
                  image_shape=data.image_shape)
    config = RunConfig(
        hyperparams=hyperparams, batch_size=settings.batch_size, seed=settings.data_seed,
        width=settings.width, num_classes=data.num_classes,
        eval_mean_decay=settings.eval_mean_decay, teacher_reads_ema=settings.teacher_reads_ema,
        deterministic=settings.deterministic, jit_compile=settings.jit_compile,
        data={**data_description(settings),
              **((data_record(data) if callable(data_record) else data_record) or {})},
    )

    # One host copy of the images serves every stream of the run (a new one per `fit` call).
    train_images = datasets.host_images(data.train_images)

    def stream(skip_batches: int):
        return datasets.training_dataset(
            train_images, data.train_labels, batch_size=settings.batch_size,
            n_labeled_per_batch=settings.n_labeled_per_batch, seed=settings.data_seed,
            skip_batches=skip_batches)

    evaluation = datasets.evaluation_dataset(datasets.host_images(data.eval_images),
                                             data.eval_labels, batch_size=100)
    height, width, channels = data.image_shape
    console(f"{settings.describe()}: {len(data.train_labels)} training images "
            f"({data.n_labeled} labeled), {len(data.eval_labels)} evaluation images, "
            f"{height}x{width}x{channels}, {data.num_classes} classes; results in {results_dir}")
    results = train(config, stream, evaluation, results_dir, export_dir=export_dir,
                    overwrite_export=overwrite_export, console=console, strategy=strategy)
    return {**results, "n_labeled": data.n_labeled, "num_classes": data.num_classes}


# Errors that mean "this command cannot run as given": one line, no traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, ResultsDirectoryError, RuntimeError)


def exit_on_user_error(function: Callable[[], Any]) -> Any:
    try:
        return function()
    except USER_ERRORS as error:
        message = " ".join(str(error).split())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def print_json(values: Mapping[str, Any]) -> None:
    print(json.dumps(values, sort_keys=True), flush=True)


def execute_options_from_flags() -> dict[str, Any]:
    """`execute`'s keyword arguments of how and where to run, from the common flags."""
    return {"distribute": FLAGS.distribute, "export_dir": FLAGS.export_dir,
            "overwrite_export": FLAGS.overwrite_export}


def single_run_main(settings: RunSettings, runner: str) -> None:
    """The whole program of a runner that makes one run: flags, the run, its results as JSON."""
    from absl import app

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        results = exit_on_user_error(lambda: execute(
            settings_from_flags(settings), FLAGS.results_dir, **execute_options_from_flags()))
        print_json(results)

    define_flags(settings, results_dir=f"results/{runner}")
    app.run(main)
