"""Temporal Ensembling (Laine & Aila, ICLR 2017) on CIFAR-10 with 4000 labels, on the test set.

    python -m runners.tempens_cifar10_4000 [--data_dir DIR] [--results_dir DIR] [--data_seed N]

The setting of Laine & Aila's own code (tempens, `config.py`, its CIFAR-10 Temporal Ensembling
preset): 300 epochs of minibatches of 100 over every training example, learning rate 0.003 and
w_max 30 (times M/N), 80-epoch ramp-up and 50-epoch ramp-down, alpha 0.6, on ConvLarge with
noise 0.15 and dropout 0.5, translations by up to 2 pixels, horizontal flips and ZCA.
Published error (Laine & Aila): 12.16 ± 0.24%; `python -m runners.report` shows it beside yours.
Re-running the command resumes the run. The last line on stdout is the results as one JSON object.
"""

from runners import tempens
from tensorflow_mean_teacher.temporal_ensembling_params import PRESETS

SETTINGS = tempens.settings("cifar10", 4000, **PRESETS["cifar10"])

RUNNER = tempens.runner(SETTINGS, "tempens_cifar10_4000")

if __name__ == "__main__":
    tempens.common.run_app(RUNNER)
