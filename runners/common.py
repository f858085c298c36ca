"""What every runner shares: its flags, the data, one run into a results directory, and the
command line (one `error:` line and exit code 2 for a bad flag value, before any data is loaded).

A runner is three functions (a `Runner`): `define_flags(flag_values)` defines its flags on the
`absl.flags.FlagValues` it is given; `plan(flag_values, args)` turns the parsed flags into what
the command will do (a `Plan` of `PlannedRun`s: settings, results directory, export directory,
...) and refuses every value it can refuse before any data is loaded; `execute(plan)` makes the
runs and prints their results. `run_app(runner)` is every runner's `__main__` (instead of
`absl.app.run`): absl's own parsing errors (a type error such as `--batch_size=abc`, a value out
of range, an unknown flag) and every refusal of `plan` become one line
`error: --FLAG=VALUE: <what is allowed>` on stderr and exit code 2, without a traceback.
`run_command(runner, argv)` is the same program in-process, on flags of its own.

Every original hyperparameter is a flag under its original name (`--training_length`,
`--max_consistency_cost`, ...); a flag that is not given keeps the runner's (or the grid cell's)
value. Only `plan` reads the flags: `execute` takes everything as arguments, so a run is
callable from Python with its settings alone.

Exit codes are decided in one place, `exit_code` (see there).

This module imports TensorFlow only when it is needed (defining the hyperparameter flags,
training), so that `runners.report` uses the same command line without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from absl import flags

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
    # "mean_teacher" (also the Pi model and the supervised baseline, by their hyperparameters)
    # or "temporal_ensembling", with its settings on top of tempens' defaults
    # (TemporalEnsemblingParams; num_examples, num_labels and minibatch_size come from the data).
    method: str = "mean_teacher"
    temporal_ensembling: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Laine & Aila's Pi-model details (MeanTeacher's options of the same names).
    shared_flip: bool = False
    pi_target_gradients: bool = True

    def describe(self) -> str:
        return f"{self.dataset}_{self.n_labeled}labels_seed{self.data_seed}"


# Every dataset of `datasets.load_semi_supervised` has 10 classes, over which the labels are
# balanced: a label count must be a multiple of it.
_BUILT_IN_NUM_CLASSES = 10


def _parse_count_or_word(words: tuple[str, ...]):
    """A parser of '123' (an integer >= 1) or one of `words`; ValueError otherwise."""
    def parse(value: str):
        if value in words:
            return value
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise ValueError(_count_or_word_allowed(words))
        return number
    return parse


def _count_or_word_allowed(words: tuple[str, ...]) -> str:
    return f"must be an integer >= 1 or {' or '.join(repr(word) for word in words)}"


def _hyperparam_validator(name: str) -> Callable[[Any], bool]:
    """Checks one hyperparameter flag as `HyperParams` does, when it is parsed."""
    def settings_class() -> type:
        from tensorflow_mean_teacher.hyperparams import HyperParams

        return HyperParams
    return settings_validator(name, settings_class)


def settings_validator(name: str, settings_class: Callable[[], type]) -> Callable[[Any], bool]:
    """An absl validator of flag `name`: the settings class (`settings_class()`, imported only
    when a value is checked) built with that value alone must accept it."""
    def check(value: Any) -> bool:
        if value is None:
            return True
        try:
            settings_class()(**{name: value})
        except (TypeError, ValueError) as error:
            # "Invalid hyperparameter NAME: it must be in [0, 1]. Received: NAME=2.0" -> the rule
            rule = re.search(r"\b(must be .*?)\.? Received:", str(error))
            raise flags.ValidationError(
                rule.group(1) if rule else f"must be valid: {error}") from None
        return True
    return check


def define_flags(defaults: RunSettings, results_dir: str,
                 flag_values: flags.FlagValues = FLAGS, *,
                 hyperparams: Sequence[str] | None = None, omit: Sequence[str] = ()) -> None:
    """Defines the flags every runner has on `flag_values`, with this runner's defaults.

    `hyperparams`: the hyperparameter flags to define (None: every one); `omit`: common flags
    the runner does not have (a Temporal Ensembling runner has no --teacher_reads_ema).
    """
    from tensorflow_mean_teacher.hyperparams import HyperParams

    for field in dataclasses.fields(HyperParams):
        if hyperparams is not None and field.name not in hyperparams:
            continue
        define = {"bool": flags.DEFINE_boolean, "int": flags.DEFINE_integer,
                  "float": flags.DEFINE_float}[field.type]
        value = defaults.hyperparams.get(field.name, field.default)
        define(field.name, None, f"{_HYPERPARAM_HELP} Runner default: {value}.",
               flag_values=flag_values)
        flags.register_validator(field.name, _hyperparam_validator(field.name),
                                 flag_values=flag_values)
    fv = {"flag_values": flag_values}
    _define_common_flags(defaults, results_dir, fv)
    for name in omit:
        delattr(flag_values, name)
    for name, words in (("n_labeled", ("all",)), ("n_labeled_per_batch", ("vary",))):
        if name in flag_values:
            flags.register_validator(
                name, lambda value, words=words: _is_count_or_word(value, words),
                message=_count_or_word_allowed(words), flag_values=flag_values)


def _define_common_flags(defaults: RunSettings, results_dir: str, fv: dict) -> None:
    flags.DEFINE_string("results_dir", results_dir,
                        "Directory of the run's results; re-running the command resumes it.", **fv)
    flags.DEFINE_string("data_dir", defaults.data_dir,
                        "Directory of the dataset files (see README).", **fv)
    flags.DEFINE_enum("data_source", defaults.data_source, ["files", "tfds"],
                      "Read the original dataset files, or tensorflow-datasets' copy.", **fv)
    flags.DEFINE_integer("data_seed", defaults.data_seed, "Seed of the data split.",
                         lower_bound=0, upper_bound=2**32 - 1, **fv)
    flags.DEFINE_string("n_labeled", str(defaults.n_labeled),
                        "Number of labeled training examples (balanced over classes), or 'all'.",
                        **fv)
    flags.DEFINE_boolean("test_phase", defaults.test_phase,
                         "Train on the whole training set and evaluate on the test set.", **fv)
    flags.DEFINE_integer("batch_size", defaults.batch_size,
                         "Minibatch size: the global batch, split equally over the replicas of "
                         "--distribute.", lower_bound=1, **fv)
    flags.DEFINE_string("n_labeled_per_batch", str(defaults.n_labeled_per_batch),
                        "Labeled examples per minibatch (at most --batch_size), or 'vary'.", **fv)
    flags.DEFINE_integer("width", defaults.width, "Channels of ConvLarge's first block.",
                         lower_bound=1, **fv)
    flags.DEFINE_float("eval_mean_decay", defaults.eval_mean_decay,
                       "Decay of the inference-mode batch-norm means (0.999 in the original).",
                       lower_bound=0.0, upper_bound=0.999999, **fv)
    flags.DEFINE_enum("teacher_reads_ema", defaults.teacher_reads_ema, ["pre", "post"],
                      "Whether the teacher reads its EMA weights before or after the step's "
                      "EMA update (see README).", **fv)
    flags.DEFINE_enum("distribute", "none", ["none", "mirrored", "multi_worker"],
                      "Spread each step over several devices: 'mirrored' (MirroredStrategy, this "
                      "machine's GPUs) or 'multi_worker' (MultiWorkerMirroredStrategy over the "
                      "workers of TF_CONFIG; only the chief writes --results_dir). --batch_size "
                      "stays the global batch and must be divisible by the number of replicas.",
                      **fv)
    flags.DEFINE_boolean("deterministic", defaults.deterministic,
                         "Seed everything and use deterministic TensorFlow ops.", **fv)
    flags.DEFINE_boolean("jit_compile", defaults.jit_compile,
                         "Compile the training step with XLA.", **fv)
    flags.DEFINE_boolean("shared_flip", defaults.shared_flip,
                         "With --flip_horizontally: one flip per image shared by the towers of "
                         "a step (Laine & Aila's Pi model), not one per tower.", **fv)
    flags.DEFINE_boolean("pi_target_gradients", defaults.pi_target_gradients,
                         "The Pi model's cost also backpropagates through its second branch "
                         "(the original's MSE cost, and Laine & Aila's); false: a fixed target.",
                         **fv)
    flags.DEFINE_string("export_dir", None,
                        "Where to export the teacher SavedModel (default: RESULTS_DIR/teacher).",
                        **fv)
    flags.DEFINE_boolean("overwrite_export", False, "Replace a non-empty --export_dir.", **fv)


def _is_count_or_word(value: str, words: tuple[str, ...]) -> bool:
    try:
        _parse_count_or_word(words)(value)
    except ValueError:
        return False
    return True


def settings_from_flags(base: RunSettings, flag_values: flags.FlagValues = FLAGS, *,
                        hyperparams: Sequence[str] | None = None) -> RunSettings:
    """`base` with every flag that was given on the command line applied, checked as far as
    it can be without the data (FlagError naming the flag otherwise). `hyperparams`: the
    hyperparameter flags the runner defined (`define_flags`; None: every one)."""
    from tensorflow_mean_teacher.hyperparams import HyperParams

    names = HyperParams.names() if hyperparams is None else hyperparams
    given = {name: flag_values[name].value for name in names}
    hyperparams = dict(base.hyperparams)
    for field in dataclasses.fields(HyperParams):
        if given.get(field.name) is not None:
            hyperparams[field.name] = flag_values[field.name].value
    changes: dict[str, Any] = {"hyperparams": hyperparams}
    for name in ("data_seed", "test_phase", "batch_size", "width", "eval_mean_decay",
                 "data_source", "data_dir", "teacher_reads_ema", "deterministic", "jit_compile",
                 "shared_flip", "pi_target_gradients"):
        if name in flag_values and flag_values[name].present:
            changes[name] = flag_values[name].value
    if flag_values["n_labeled"].present:
        changes["n_labeled"] = _parse_count_or_word(("all",))(flag_values.n_labeled)
    if "n_labeled_per_batch" in flag_values and flag_values["n_labeled_per_batch"].present:
        changes["n_labeled_per_batch"] = _parse_count_or_word(("vary",))(
            flag_values.n_labeled_per_batch)
    HyperParams.from_dict(hyperparams)  # a bad value fails here, before any data is loaded
    settings = dataclasses.replace(base, **changes)
    _check_settings(settings, flag_values)
    return settings


def _check_settings(settings: RunSettings, flag_values: flags.FlagValues) -> None:
    """What the data loaders and the minibatching would refuse, refused before any data."""
    from datasets.registry import DATASETS

    def named(name: str) -> str:
        value = getattr(settings, name)
        given = "" if name in flag_values and flag_values[name].present \
            else " (the runner's value)"
        return f"--{name}={value}{given}"

    per_batch = settings.n_labeled_per_batch
    if per_batch != "vary" and per_batch > settings.batch_size:
        if "n_labeled_per_batch" in flag_values and flag_values["n_labeled_per_batch"].present:
            raise FlagError(f"{named('n_labeled_per_batch')}: must be 'vary' or from 1 to the "
                            f"batch size, {named('batch_size')}")
        raise FlagError(f"{named('batch_size')}: must be at least the labeled examples per "
                        f"minibatch, {named('n_labeled_per_batch')}")
    if settings.dataset not in DATASETS:  # a runner's own data (train_images): checked there
        return
    if settings.n_labeled != "all" and settings.n_labeled % _BUILT_IN_NUM_CLASSES:
        raise FlagError(
            f"{named('n_labeled')}: must be 'all' or a multiple of {_BUILT_IN_NUM_CLASSES}, the "
            f"number of classes of {settings.dataset} (the labels are balanced over them)")
    if settings.dataset == "digits":
        # The digits are bundled with the code: there is nothing to read elsewhere.
        if settings.data_source != "files":
            raise FlagError(f"{named('data_source')}: must be files: the digits are bundled "
                            "(datasets/data/digits.npz); tensorflow-datasets has no copy")
        if settings.data_dir is not None:
            raise FlagError(f"{named('data_dir')}: must not be given: the digits are bundled "
                            "(datasets/data/digits.npz)")


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
    # Imported here: the command line (and runners.report) stays free of TensorFlow until
    # something trains.
    from tensorflow_mean_teacher import distribution, run_lock

    # First: MultiWorkerMirroredStrategy must exist before any TensorFlow operation runs.
    strategy = distribution.strategy_from_name(distribute)
    distribution.check_global_batch(settings.batch_size, strategy)
    # A second process on this run is refused before it loads any data (train takes the lock
    # again, re-entrantly); only the chief of several workers holds it.
    # (A new results directory is only created by train, once the data is good.)
    holds = distribution.is_chief(strategy) and Path(results_dir).exists()
    with run_lock.hold(results_dir) if holds else contextlib.nullcontext():
        return _execute_locked(settings, results_dir, data, data_record, strategy, export_dir,
                               overwrite_export, console)


def _execute_locked(settings, results_dir, data, data_record, strategy, export_dir,
                    overwrite_export, console) -> dict:
    import datasets
    from tensorflow_mean_teacher.hyperparams import HyperParams
    from tensorflow_mean_teacher.inputs import check_dataset
    from tensorflow_mean_teacher.training import RunConfig, train

    if data is None:
        data = load_data(settings)
    elif callable(data):
        data = data()
    check_dataset(data.train_images, data.train_labels, data.num_classes, what="training")
    check_dataset(data.eval_images, data.eval_labels, data.num_classes, what="evaluation",
                  image_shape=data.image_shape)
    hyperparams = {"normalize_input": data.normalize_input, **settings.hyperparams}
    method_options: dict[str, Any] = {}
    if settings.method == "temporal_ensembling":
        from tensorflow_mean_teacher.temporal_ensembling_params import TemporalEnsemblingParams

        params = TemporalEnsemblingParams.from_dict({
            "num_examples": len(data.train_labels), "num_labels": data.n_labeled,
            "minibatch_size": settings.batch_size, **settings.temporal_ensembling})
        # An evaluation (and a log row) per epoch, as tempens; the length is its num_epochs.
        steps = params.steps_per_epoch
        hyperparams = {"evaluation_span": steps, "print_span": steps, **hyperparams,
                       "training_length": params.training_length}
        method_options = {"method": settings.method, "temporal_ensembling": params}
    config = RunConfig(
        hyperparams=HyperParams.from_dict(hyperparams), batch_size=settings.batch_size,
        seed=settings.data_seed, width=settings.width, num_classes=data.num_classes,
        eval_mean_decay=settings.eval_mean_decay, teacher_reads_ema=settings.teacher_reads_ema,
        deterministic=settings.deterministic, jit_compile=settings.jit_compile,
        shared_flip=settings.shared_flip, pi_target_gradients=settings.pi_target_gradients,
        data={**data_description(settings),
              **((data_record(data) if callable(data_record) else data_record) or {})},
        **method_options,
    )

    # One host copy of the images serves every stream of the run (a new one per `fit` call).
    train_images = datasets.host_images(data.train_images)

    def stream(skip_batches: int):
        if settings.method == "temporal_ensembling":
            return datasets.epoch_dataset(train_images, data.train_labels,
                                          batch_size=settings.batch_size,
                                          seed=settings.data_seed, skip_batches=skip_batches)
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


# ---------------------------------------------------------------------------------------------
# Exit codes: the one place where a runner's exit code for an exception is decided.
# ---------------------------------------------------------------------------------------------

EXIT_USER_ERROR = 2  # the command cannot run as given: one `error:` line, no traceback
# SIGTERM or SIGINT stopped the run after checkpointing it: re-run the same command to resume.
# (sysexits' EX_TEMPFAIL; the same as callbacks.INTERRUPTED_EXIT_CODE.)
EXIT_INTERRUPTED = 75
# A checkpoint, log, export or results file could not be written (a full disk, a read-only
# directory); the previous checkpoint is intact (sysexits' EX_IOERR).
EXIT_WRITE_FAILED = 74
# Ctrl-C before training started (the shell's 128 + SIGINT): nothing was saved.
EXIT_SIGINT = 130
_WRITE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EFBIG, errno.EDQUOT)

# Errors that mean "this command cannot run as given": one line, no traceback, EXIT_USER_ERROR.
# (training.ResultsDirectoryError, a results directory of another run, is a ValueError.)
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, RuntimeError)


class CommandError(Exception):
    """An error of a command that carries its own exit code, e.g. runners.report's 1 for
    "no finished run found"."""

    def __init__(self, message: str, exit_code: int = EXIT_USER_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


def exit_code(error: BaseException) -> int | None:
    """The exit code of a runner that ended with `error`; None: a bug, whose traceback shows.

    THE place where the runners' exit codes for exceptions are decided (`exit_on_user_error`
    applies it to the command line, the plan and the runs alike). A new code goes here, e.g. a
    distinct one for a preempted run, before USER_ERRORS if its exception is one of them. Import
    what it needs here, inside the function: runners.report uses this module without TensorFlow.
    """
    if isinstance(error, CommandError):
        return error.exit_code
    if type(error).__name__ == "RunInterrupted":  # callbacks.RunInterrupted, without importing TF
        return EXIT_INTERRUPTED
    if isinstance(error, OSError) and (type(error).__name__ == "ResultsWriteError"
                                       or error.errno in _WRITE_ERRNOS):
        return EXIT_WRITE_FAILED
    if isinstance(error, USER_ERRORS):
        return EXIT_USER_ERROR
    return None


def exit_on_user_error(function: Callable[[], Any]) -> Any:
    """`function()`; an error with an exit code (`exit_code`) becomes one `error:` line on
    stderr and that exit code; any other exception propagates with its traceback."""
    try:
        return function()
    except KeyboardInterrupt:  # Ctrl-C before training began (there, it checkpoints: 75)
        sys.stdout.flush()
        print("error: interrupted (SIGINT) before training started: nothing to save",
              file=sys.stderr, flush=True)
        sys.exit(EXIT_SIGINT)
    except Exception as error:
        code = exit_code(error)
        if code is None:
            raise
        message = " ".join(str(error).split())
        sys.stdout.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(code)


# ---------------------------------------------------------------------------------------------
# The command line: flags -> plan -> runs
# ---------------------------------------------------------------------------------------------


class FlagError(ValueError):
    """A flag value (or a combination) the command cannot take. The message is one line,
    `--FLAG=VALUE: what is allowed`."""


def _given_values(name: str, argv: Sequence[str]) -> list[str]:
    """The values given to flag `name` in `argv` (--name=V, -name=V, --name V)."""
    found = []
    for position, arg in enumerate(argv):
        for prefix in (f"--{name}=", f"-{name}="):
            if arg.startswith(prefix):
                found.append(arg[len(prefix):])
        if arg in (f"--{name}", f"-{name}") and position + 1 < len(argv):
            found.append(argv[position + 1])
    return found


def _allowed(flag: flags.Flag) -> str | None:
    """What a flag's absl parser allows, in words ("must be a positive integer")."""
    parser = flag.parser
    if isinstance(parser, flags.BooleanParser):
        return f"must be true or false (or --{flag.name} / --no{flag.name})"
    if isinstance(parser, flags.EnumParser):
        return f"must be one of {', '.join(parser.enum_values)}"
    if isinstance(parser, (flags.IntegerParser, flags.FloatParser)):
        return f"must be {parser.syntactic_help}"
    return None


def _flag_error_message(error: flags.Error, flag_values: flags.FlagValues,
                        argv: Sequence[str]) -> str:
    """absl's message for a bad command line, as one line `--FLAG=VALUE: what is allowed`."""
    text = " ".join(str(error).split())
    if isinstance(error, flags.UnrecognizedFlagError):
        argument = error.flagvalue or f"--{error.flagname}"
        hint = re.search(r"Did you mean: (.*?) ?\?$", text)
        guess = "" if hint is None else " (did you mean " + " or ".join(
            f"--{name.strip()}" for name in hint.group(1).split(",")) + "?)"
        return f"{argument}: no such flag{guess}; --helpshort lists this runner's flags"
    parsed = re.fullmatch(r"flag --([\w-]+)=(.*)", text)
    if parsed and parsed.group(1) in flag_values:
        name, rest = parsed.groups()
        # "VALUE: REASON"; VALUE may hold ": " itself: prefer a split whose VALUE was given.
        splits = [(rest[:i], rest[i + 2:]) for i in range(len(rest)) if rest.startswith(": ", i)]
        given = _given_values(name, argv)
        value, reason = next((split for split in splits if split[0] in given),
                             splits[0] if splits else (rest, ""))
        if not reason.startswith("must"):  # absl's words for what its parser refused
            reason = _allowed(flag_values[name]) or reason
        return f"--{name}={value}: {reason}"
    missing = re.fullmatch(r"Missing value for flag (-+[\w-]+)", text)
    if missing:
        return f"{missing.group(1)}: must have a value"
    return text.removeprefix("ERROR:: ")


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """`flag_values(argv)`: the arguments left (argv[0] first); absl's errors as FlagError."""
    try:
        return flag_values(list(argv))
    except flags.Error as error:
        raise FlagError(_flag_error_message(error, flag_values, argv)) from None


def refuse_arguments(args: Sequence[str]) -> None:
    """Refuses positional arguments (a runner that takes flags only)."""
    if args:
        raise FlagError(f"unexpected argument(s) {' '.join(args)}: this runner takes flags only "
                        "(--name=value); --helpshort lists them")


def check_path_flags(flag_values: flags.FlagValues, *names: str) -> None:
    """Refuses a directory flag that is empty, or that is (or is inside) an existing file."""
    for name in names:
        value = flag_values[name].value
        if value is None:
            continue
        if not value.strip():
            raise FlagError(f"--{name}={value}: must be a directory path, not empty")
        path = Path(value)
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            where = "it is a file" if existing == path else f"{existing} is a file"
            raise FlagError(f"--{name}={value}: must be a directory, but {where}")


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run a command will make: what `execute` is called with."""

    name: str  # '' for a runner's one run; 'mean_teacher' / 'supervised'; a grid cell's name
    settings: RunSettings
    results_dir: Path
    export_dir: Path | None = None  # None: RESULTS_DIR/teacher
    overwrite_export: bool = False
    distribute: str = "none"
    data_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # a runner's own

    def execute(self, **kwargs: Any) -> dict:
        """`execute(settings, results_dir, ...)` of this run (kwargs: `data=`, ...)."""
        return execute(self.settings, self.results_dir, distribute=self.distribute,
                       export_dir=self.export_dir, overwrite_export=self.overwrite_export,
                       **kwargs)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a command will do: its runs, in order, under `results_dir`."""

    results_dir: Path
    runs: tuple[PlannedRun, ...]
    list_cells: bool = False  # a grid's --list_cells: print the runs instead of making them


def plan_runs(flag_values: flags.FlagValues, named_settings: Sequence[tuple[str, RunSettings]],
              *, data_options: Mapping[str, Any] | None = None, **plan_options: Any) -> Plan:
    """The plan of runs `(name, settings)` with the common flags' options: each run's results
    (and export, if --export_dir is given) go to RESULTS_DIR/name (EXPORT_DIR/name); a single
    run named '' uses them as they are."""
    check_path_flags(flag_values, "results_dir", "export_dir", "data_dir")
    root = Path(flag_values.results_dir)
    export_root = flag_values.export_dir
    runs = tuple(
        PlannedRun(name=name, settings=settings, results_dir=root / name,
                   export_dir=None if export_root is None else Path(export_root) / name,
                   overwrite_export=flag_values.overwrite_export,
                   distribute=flag_values.distribute if "distribute" in flag_values else "none",
                   data_options=dict(data_options or {}))
        for name, settings in named_settings)
    return Plan(results_dir=root, runs=runs, **plan_options)


@dataclasses.dataclass(frozen=True)
class Runner:
    """A runner's program in three steps (see the module docstring)."""

    define_flags: Callable[[flags.FlagValues], None]
    plan: Callable[[flags.FlagValues, Sequence[str]], Any]  # (parsed flags, positional args)
    execute: Callable[[Any], Any]


def plan_command(runner: Runner, argv: Sequence[str]) -> Any:
    """The plan of a command line (argv[0]: the program), on flags of its own; a bad value
    raises FlagError (or another user error). Loads no data."""
    flag_values = flags.FlagValues()
    runner.define_flags(flag_values)
    args = parse_flags(flag_values, argv)
    return runner.plan(flag_values, args[1:])


def run_command(runner: Runner, argv: Sequence[str]) -> Any:
    """The whole program of `runner` on `argv`, in this process and on flags of its own: what
    `run_app` runs, with the same one-line errors and exit codes (SystemExit)."""
    return exit_on_user_error(lambda: runner.execute(plan_command(runner, argv)))


def run_app(runner: Runner) -> None:
    """The body of every runner's `if __name__ == "__main__":`, instead of `absl.app.run`.

    The runner's flags go on absl's global FLAGS (so --helpshort and --helpfull list them).
    A bad command line, a value `plan` refuses and a user error of the runs each give one
    `error:` line and their exit code (`exit_code`), before any data is loaded for the first
    two.
    """
    from absl import app

    absl_own = set(FLAGS)
    runner.define_flags(FLAGS)
    for name in set(FLAGS) - absl_own:  # --helpshort lists the flags of the main module
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])

    def parse(argv: list[str]) -> list[str]:
        return exit_on_user_error(lambda: parse_flags(FLAGS, argv))

    def main(argv: list[str]) -> None:
        exit_on_user_error(lambda: runner.execute(runner.plan(FLAGS, argv[1:])))

    app.run(main, flags_parser=parse)


def print_json(values: Mapping[str, Any]) -> None:
    print(json.dumps(values, sort_keys=True), flush=True)


def single_runner(settings: RunSettings, runner: str) -> Runner:
    """The program of a runner that makes one run (`settings` with the flags on top) into
    --results_dir (default results/RUNNER), and prints its results as JSON."""
    def define(flag_values: flags.FlagValues) -> None:
        define_flags(settings, results_dir=f"results/{runner}", flag_values=flag_values)

    def plan(flag_values: flags.FlagValues, args: Sequence[str]) -> Plan:
        refuse_arguments(args)
        return plan_runs(flag_values, [("", settings_from_flags(settings, flag_values))])

    def run(plan: Plan) -> None:
        for planned in plan.runs:
            print_json(planned.execute())

    return Runner(define, plan, run)
