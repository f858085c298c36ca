"""SVHN supervised baselines without input augmentation.

Port of the original `experiments/svhn_supervised_no_augmentation_final_eval.py`: the 34 runs
of `svhn_supervised_final_eval` with translations (and flips) turned off.

    python -m runners.svhn_supervised_no_augmentation_final_eval --list_cells
"""

from runners import grid


def build(**params):
    return grid.svhn_supervised_cell(**params, **grid.NO_AUGMENTATION)


GRID = grid.make_grid(
    "svhn_supervised_no_augmentation_final_eval",
    grid.svhn_supervised_parameters(),
    build,
    name_keys=("n_labeled", "data_seed"),
)

if __name__ == "__main__":
    grid.run_main(GRID)
