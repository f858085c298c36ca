"""Ablation: the consistency cost weight, on SVHN with 250 labels (the paper's Figure 4).

Port of the original `experiments/svhn_250_vary_consistency_cost.py`: 28 Mean Teacher runs
evaluated on the validation split (not the test set), for data seeds 1000-1003 and a maximum
consistency cost of 0, 0.1, 0.3, 1, 3, 10 and 30; otherwise the SVHN settings of
svhn_final_eval with 250 labels (180,000 steps, one labeled image per minibatch).

    python -m runners.svhn_250_vary_consistency_cost --list_cells
"""

from runners import grid


def parameters():
    for data_seed in grid.ablation_seeds():
        for max_consistency_cost in [0, 0.1, 0.3, 1, 3, 10, 30]:
            yield {"data_seed": data_seed, "max_consistency_cost": max_consistency_cost}


GRID = grid.make_grid(
    "svhn_250_vary_consistency_cost",
    parameters(),
    grid.svhn_ablation_cell,
    name_keys=("data_seed", "max_consistency_cost"),
)

if __name__ == "__main__":
    grid.run_main(GRID)
