"""SVHN final evaluation (the paper's Table 1 and its extra-unlabeled runs): Mean Teacher, Pi.

Port of the original `experiments/svhn_final_eval.py`: 128 runs on the test set, in the
original's order: 500, 250, 1000, all and 100 labels; for 500 labels also with 500,000 and
100,000 extra unlabeled images (from SVHN 'extra'); each with Mean Teacher and with the Pi
model, over data seeds 2000-2009 (2000-2003 with all labels).

With n labels: one labeled image per minibatch of 100 and a consistency cost of 1 on the
unlabeled images only; with all labels: labeled-only minibatches, consistency cost 100, also on
the labeled images. 180,000 steps (400,000 / 600,000 with 100,000 / 500,000 extra images).

    python -m runners.svhn_final_eval --list_cells
    python -m runners.svhn_final_eval --only n_labeled=250 --only n_extra_unlabeled=0
"""

from runners import grid

GRID = grid.make_grid(
    "svhn_final_eval",
    grid.final_eval_parameters([500, 250, 1000, "all", 100], n_extra_values=[500000, 100000, 0]),
    grid.svhn_cell,
    name_keys=("n_labeled", "n_extra_unlabeled", "model_type", "data_seed"),
)

if __name__ == "__main__":
    grid.run_main(GRID)
