"""Mean Teacher on SVHN with 500 labels, evaluated on the validation split: the quick runner.

    python -m runners.train_svhn [--data_dir DIR] [--results_dir DIR]

The settings of the original `train_svhn.py`: 500 labels (data seed 0), 50 labeled images in
every minibatch of 100, consistency cost 50, a 5,000-step ramp-up, no ramp-down and 40,000 steps.
It converges faster than the paper's settings (`runners.svhn_final_eval`). Re-running the
command resumes the run. The last line on stdout is the results as one JSON object.
"""

from absl import app

from runners import common

SETTINGS = common.RunSettings(
    dataset="svhn", n_labeled=500, data_seed=0, test_phase=False, n_extra_unlabeled=0,
    batch_size=100, n_labeled_per_batch=50,
    hyperparams=dict(rampdown_length=0, rampup_length=5000, training_length=40000,
                     max_consistency_cost=50.0),
)

FLAGS = common.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    results = common.exit_on_user_error(lambda: common.execute(
        common.settings_from_flags(SETTINGS), FLAGS.results_dir, export_dir=FLAGS.export_dir))
    common.print_json(results)


if __name__ == "__main__":
    common.define_flags(SETTINGS, results_dir="results/train_svhn")
    app.run(main)
