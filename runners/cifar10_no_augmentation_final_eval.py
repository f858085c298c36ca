"""CIFAR-10 final evaluation without input augmentation: Mean Teacher and Pi model.

Port of the original `experiments/cifar10_no_augmentation_final_eval.py`: the runs of
`cifar10_final_eval` (68 of them) with translations and flips turned off, in the original's
order of label counts: 4000, all, 1000, 2000.

    python -m runners.cifar10_no_augmentation_final_eval --list_cells
"""

from runners import grid


def build(**params):
    return grid.cifar10_cell(**params, **grid.NO_AUGMENTATION)


GRID = grid.make_grid(
    "cifar10_no_augmentation_final_eval",
    grid.final_eval_parameters([4000, "all", 1000, 2000]),
    build,
    name_keys=("n_labeled", "model_type", "data_seed"),
)

if __name__ == "__main__":
    grid.run_main(GRID)
