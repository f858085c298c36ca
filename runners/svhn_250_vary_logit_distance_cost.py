"""Ablation: two output heads and the cost between them, on SVHN (the paper's Figure 4).

Port of the original `experiments/svhn_250_vary_logit_distance_cost.py`: 24 Mean Teacher runs
evaluated on the validation split; for each data seed 1000-1003, two logit heads with a logit
distance cost of 0, 0.001, 0.01, 0.1 and 1, then one head. Otherwise the SVHN settings of
svhn_final_eval.

Quirk kept from the original: despite the name, its `run()` defaults to 500 labels, not 250,
and the grid does not set the label count, so every run has 500 labels.

    python -m runners.svhn_250_vary_logit_distance_cost --list_cells
"""

from runners import grid


def parameters():
    for data_seed in grid.ablation_seeds():
        for logit_distance_cost in [0.0, 0.001, 0.01, 0.1, 1.0]:
            yield {"data_seed": data_seed, "num_logits": 2,
                   "logit_distance_cost": logit_distance_cost}
        yield {"data_seed": data_seed, "num_logits": 1, "logit_distance_cost": 0.0}


def build(**params):
    return grid.svhn_ablation_cell(n_labeled=500, **params)


GRID = grid.make_grid(
    "svhn_250_vary_logit_distance_cost",
    parameters(),
    build,
    name_keys=("data_seed", "num_logits", "logit_distance_cost"),
    note="every cell has 500 labels, as the original's run() default (despite the name).",
)

if __name__ == "__main__":
    grid.run_main(GRID)
