"""CIFAR-10 supervised baselines without input augmentation.

Port of the original `experiments/cifar10_supervised_no_augmentation_final_eval.py`: the 34
runs of `cifar10_supervised_final_eval` with translations and flips turned off (the same
quirk: a 40,000-step ramp-up in runs of 7,500-30,000 steps).

    python -m runners.cifar10_supervised_no_augmentation_final_eval --list_cells
"""

from runners import grid


def build(**params):
    return grid.cifar10_supervised_cell(**params, **grid.NO_AUGMENTATION)


GRID = grid.make_grid(
    "cifar10_supervised_no_augmentation_final_eval",
    grid.cifar10_supervised_parameters(),
    build,
    name_keys=("n_labeled", "data_seed"),
)

if __name__ == "__main__":
    grid.run_main(GRID)
