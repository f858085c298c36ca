"""Ablation: the consistency cost function, from MSE to KL, on SVHN (the paper's Figure 4).

Port of the original `experiments/svhn_250_vary_trust.py`: 36 Mean Teacher runs evaluated on
the validation split, for data seeds 1000-1003 and a consistency trust of 0 (MSE), 0.01, 0.1,
0.3, 0.5, 0.7, 0.9, 0.99 and 1 (KL divergence). Otherwise the SVHN settings of
svhn_final_eval.

Quirks kept from the original: its `parameters()` skipped the first 23 runs (`idx > 22`, a
manual resume); this runner enumerates the full grid (`all_parameters()`), and `--cell 23-35`
runs what the original's last invocation ran. And despite the name, its `run()` defaults to
500 labels, not 250, so every run has 500 labels.

    python -m runners.svhn_250_vary_trust --list_cells
    python -m runners.svhn_250_vary_trust --cell 23-35
"""

from runners import grid


def parameters():
    for data_seed in grid.ablation_seeds():
        for consistency_trust in [0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0]:
            yield {"data_seed": data_seed, "consistency_trust": consistency_trust}


def build(**params):
    return grid.svhn_ablation_cell(n_labeled=500, **params)


GRID = grid.make_grid(
    "svhn_250_vary_trust",
    parameters(),
    build,
    name_keys=("data_seed", "consistency_trust"),
    note="the original's parameters() skipped cells 0-22 (a manual resume); all cells are "
         "listed here. Every cell has 500 labels, as the original's run() default (despite "
         "the name).",
)

if __name__ == "__main__":
    grid.run_main(GRID)
