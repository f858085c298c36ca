"""Temporal Ensembling (Laine & Aila, ICLR 2017) on SVHN with 1000 labels, on the test set.

    python -m runners.tempens_svhn_1000 [--data_dir DIR] [--results_dir DIR] [--data_seed N]

The setting of Laine & Aila's own code (tempens, `config.py`, its SVHN Temporal Ensembling
preset): 300 epochs of minibatches of 100 over every training example, learning rate 0.001 and
w_max 30 (times M/N), 80-epoch ramp-up and 50-epoch ramp-down, alpha 0.6, on ConvLarge with
noise 0.15 and dropout 0.5, translations by up to 2 pixels and per-image normalisation.
Published error (Laine & Aila): 4.42 ± 0.16%; `python -m runners.report` shows it beside yours.
Re-running the command resumes the run. The last line on stdout is the results as one JSON object.
"""

from runners import tempens
from tensorflow_mean_teacher.temporal_ensembling_params import PRESETS

SETTINGS = tempens.settings("svhn", 1000, **PRESETS["svhn"])

RUNNER = tempens.runner(SETTINGS, "tempens_svhn_1000")

if __name__ == "__main__":
    tempens.common.run_app(RUNNER)
