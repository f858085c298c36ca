"""SVHN final evaluation without input augmentation: Mean Teacher and Pi model.

Port of the original `experiments/svhn_no_augmentation_final_eval.py`: the runs of
`svhn_final_eval` without extra unlabeled images (88 of them: 500, 250, 1000, all and 100
labels, Mean Teacher and Pi, 10 seeds from 2000, 4 with all labels) with translations (and
flips, already off for SVHN) turned off.

    python -m runners.svhn_no_augmentation_final_eval --list_cells
"""

from runners import grid


def build(**params):
    return grid.svhn_cell(**params, **grid.NO_AUGMENTATION)


GRID = grid.make_grid(
    "svhn_no_augmentation_final_eval",
    grid.final_eval_parameters([500, 250, 1000, "all", 100], n_extra_values=[0]),
    build,
    name_keys=("n_labeled", "model_type", "data_seed"),
)

if __name__ == "__main__":
    grid.run_main(GRID)
