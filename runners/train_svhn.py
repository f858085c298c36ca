"""Mean Teacher on SVHN with 500 labels, evaluated on the validation split: the quick runner.

    python -m runners.train_svhn [--data_dir DIR] [--results_dir DIR]

The settings of the original `train_svhn.py`: 500 labels (data seed 0), 50 labeled images in
every minibatch of 100, consistency cost 50, a 5,000-step ramp-up, no ramp-down and 40,000 steps.
It converges faster than the paper's settings (`runners.svhn_final_eval`). Re-running the
command resumes the run. The last line on stdout is the results as one JSON object.
"""

from runners import common

SETTINGS = common.RunSettings(
    dataset="svhn", n_labeled=500, data_seed=0, test_phase=False, n_extra_unlabeled=0,
    batch_size=100, n_labeled_per_batch=50,
    hyperparams=dict(rampdown_length=0, rampup_length=5000, training_length=40000,
                     max_consistency_cost=50.0),
)

RUNNER = common.single_runner(SETTINGS, "train_svhn")

if __name__ == "__main__":
    common.run_app(RUNNER)
