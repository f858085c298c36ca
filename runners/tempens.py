"""What the Temporal Ensembling runners share: their flags and their one run.

A Temporal Ensembling runner has the common flags (`common.define_flags`) but those that only
mean something for Mean Teacher: of the hyperparameters, only the network's and the inputs'
(`NETWORK_HYPERPARAMS`) and the logging spans; no --n_labeled_per_batch (an epoch is one pass
over every example, labeled and unlabeled mixed), --teacher_reads_ema, --shared_flip or
--pi_target_gradients (one tower), or --distribute (the ensemble is per example, on one
device). Its own settings are flags under tempens' names
(`TemporalEnsemblingParams`): --num_epochs, --rampup_length and --rampdown_length (in
*epochs*), --learning_rate_max, --unsup_weight_max, --prediction_decay, --adam_beta1,
--rampdown_beta1_target, --adam_beta2, --adam_epsilon. An evaluation and a log row come once
per epoch unless --evaluation_span / --print_span (in steps) say otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from absl import flags

from runners import common

NETWORK_HYPERPARAMS = ("input_noise", "student_dropout_probability", "flip_horizontally",
                       "translate", "normalize_input", "print_span", "evaluation_span")
OMITTED_FLAGS = ("n_labeled_per_batch", "teacher_reads_ema", "distribute", "shared_flip",
                 "pi_target_gradients")
# The settings of TemporalEnsemblingParams that are flags (the others come from the data).
SETTING_FLAGS = {
    "num_epochs": (flags.DEFINE_integer, "Epochs of training (passes over every example)."),
    "rampup_length": (flags.DEFINE_integer,
                      "Epochs of the exp(-5(1-t/L)^2) ramp-up of the learning rate and weight."),
    "rampdown_length": (flags.DEFINE_integer,
                        "Last epochs, in which the learning rate and Adam's beta1 ramp down."),
    "learning_rate_max": (flags.DEFINE_float, "Maximum learning rate."),
    "unsup_weight_max": (flags.DEFINE_float,
                         "w_max: maximum unsupervised weight, before the M/N scaling."),
    "prediction_decay": (flags.DEFINE_float, "alpha: decay of the ensemble predictions."),
    "adam_beta1": (flags.DEFINE_float, "Adam's beta1 before the ramp-down."),
    "rampdown_beta1_target": (flags.DEFINE_float, "Adam's beta1 at the end of the ramp-down."),
    "adam_beta2": (flags.DEFINE_float, "Adam's beta2."),
    "adam_epsilon": (flags.DEFINE_float, "Adam's epsilon."),
}


def _settings_class() -> type:
    from tensorflow_mean_teacher.temporal_ensembling_params import TemporalEnsemblingParams

    return TemporalEnsemblingParams


def define_flags(defaults: common.RunSettings, results_dir: str,
                 flag_values: flags.FlagValues) -> None:
    common.define_flags(defaults, results_dir, flag_values, hyperparams=NETWORK_HYPERPARAMS,
                        omit=OMITTED_FLAGS)
    from tensorflow_mean_teacher.temporal_ensembling_params import TemporalEnsemblingParams

    # The common help texts of these flags name Mean Teacher's defaults.
    flag_values["print_span"].help = "Steps between two training log rows (default: one epoch)."
    flag_values["evaluation_span"].help = "Steps between two evaluations (default: one epoch)."
    flag_values["batch_size"].help = "Minibatch size (tempens' minibatch_size)."
    base = TemporalEnsemblingParams()
    for name, (define, help_text) in SETTING_FLAGS.items():
        value = defaults.temporal_ensembling.get(name, getattr(base, name))
        define(name, None, f"{help_text} Runner default: {value}.", flag_values=flag_values)
        flags.register_validator(name, common.settings_validator(name, _settings_class),
                                 flag_values=flag_values)


def settings_from_flags(base: common.RunSettings,
                        flag_values: flags.FlagValues) -> common.RunSettings:
    settings = common.settings_from_flags(base, flag_values, hyperparams=NETWORK_HYPERPARAMS)
    overrides = dict(base.temporal_ensembling)
    for name in SETTING_FLAGS:
        if flag_values[name].value is not None:
            overrides[name] = flag_values[name].value
    return dataclasses.replace(settings, temporal_ensembling=overrides)


def runner(settings: common.RunSettings, name: str) -> common.Runner:
    """The program of a Temporal Ensembling runner: one run into --results_dir (default
    results/NAME), its results printed as JSON."""
    def define(flag_values: flags.FlagValues) -> None:
        define_flags(settings, f"results/{name}", flag_values)

    def plan(flag_values: flags.FlagValues, args: Sequence[str]) -> common.Plan:
        common.refuse_arguments(args)
        return common.plan_runs(flag_values, [("", settings_from_flags(settings, flag_values))])

    def run(planned: common.Plan) -> None:
        for planned_run in planned.runs:
            common.print_json(planned_run.execute())

    return common.Runner(define, plan, run)


def settings(dataset: str, n_labeled: int, **temporal_ensembling: Any) -> common.RunSettings:
    """Laine & Aila's setting: 300 epochs of batches of 100, the test set, their network's
    noise (0.15) and dropout (0.5), translations by up to 2 pixels; flips for CIFAR-10."""
    return common.RunSettings(
        dataset=dataset, n_labeled=n_labeled, test_phase=True, batch_size=100,
        method="temporal_ensembling", temporal_ensembling=temporal_ensembling,
        hyperparams=dict(input_noise=0.15, student_dropout_probability=0.5, translate=True,
                         flip_horizontally=dataset == "cifar10"),
    )
