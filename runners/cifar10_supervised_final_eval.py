"""CIFAR-10 supervised baselines (the paper's Table 2, 'Supervised-only' row).

Port of the original `experiments/cifar10_supervised_final_eval.py`: 34 runs on the test set,
training on the labeled images only (no consistency cost): 4000, 2000 and 1000 labels over data
seeds 0-9, for 750 epochs of the labeled images with a ramp-down over the last 100 (30,000 /
15,000 / 7,500 steps), then all labels over seeds 0-3 for 150,000 steps.

Quirk kept from the original: the ramp-up stays at its default of 40,000 steps, longer than the
7,500-30,000 steps of the runs with 1000-4000 labels, so their learning rate never reaches its
maximum.

    python -m runners.cifar10_supervised_final_eval --list_cells
"""

from runners import grid

GRID = grid.make_grid(
    "cifar10_supervised_final_eval",
    grid.cifar10_supervised_parameters(),
    grid.cifar10_supervised_cell,
    name_keys=("n_labeled", "data_seed"),
)

if __name__ == "__main__":
    grid.run_main(GRID)
