"""Mean Teacher on CIFAR-10 with 4000 labels, evaluated on the validation split: quick runner.

    python -m runners.train_cifar10 [--data_dir DIR] [--results_dir DIR]

The settings of the original `train_cifar10.py`: 4000 labels (data seed 0), 50 labeled images in
every minibatch of 100, ZCA-whitened input (no per-image normalisation), translations and
horizontal flips, consistency cost 50, a 5,000-step ramp-up, no ramp-down and 40,000 steps. It
converges faster than the paper's settings (`runners.cifar10_final_eval`). Re-running the
command resumes the run. The last line on stdout is the results as one JSON object.
"""

from runners import common

SETTINGS = common.RunSettings(
    dataset="cifar10", n_labeled=4000, data_seed=0, test_phase=False,
    batch_size=100, n_labeled_per_batch=50,
    hyperparams=dict(flip_horizontally=True, normalize_input=False, rampdown_length=0,
                     rampup_length=5000, training_length=40000, max_consistency_cost=50.0),
)

RUNNER = common.single_runner(SETTINGS, "train_cifar10")

if __name__ == "__main__":
    common.run_app(RUNNER)
