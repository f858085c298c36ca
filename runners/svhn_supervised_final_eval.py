"""SVHN supervised baselines (the paper's Table 1, 'Supervised-only' row).

Port of the original `experiments/svhn_supervised_final_eval.py`: 34 runs on the test set,
training on the labeled images only (no consistency cost): 250, 500 and 1000 labels over data
seeds 0-9 for 40,000 steps (ramp-down 10,000), then all labels over seeds 0-3 for 180,000 steps
(ramp-down 25,000). Note the seeds start at 0 here, at 2000 in svhn_final_eval.

    python -m runners.svhn_supervised_final_eval --list_cells
"""

from runners import grid

GRID = grid.make_grid(
    "svhn_supervised_final_eval",
    grid.svhn_supervised_parameters(),
    grid.svhn_supervised_cell,
    name_keys=("n_labeled", "data_seed"),
)

if __name__ == "__main__":
    grid.run_main(GRID)
