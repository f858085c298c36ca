"""Ablation: the noise of the model, on SVHN with 250 labels (the paper's Figure 4).

Port of the original `experiments/svhn_250_vary_perturbation.py`: 32 Mean Teacher runs
evaluated on the validation split, for data seeds 1000-1003 and each combination of dropout
(0.5 or 0, student and teacher alike), input noise (0.15 or 0) and translations (on or off).
Otherwise the SVHN settings of svhn_final_eval with 250 labels.

Quirk kept from the original: its `parameters()` skipped the first 6 runs (`idx >= 6`, a
manual resume). This runner enumerates the full grid (`all_parameters()`); `--cell 6-31` runs
what the original's last invocation ran.

    python -m runners.svhn_250_vary_perturbation --list_cells
"""

from runners import grid


def parameters():
    for data_seed in grid.ablation_seeds():
        for dropout in [0.5, 0.0]:
            for input_noise in [0.15, 0.0]:
                for augmentation in [True, False]:
                    yield {"data_seed": data_seed, "dropout": dropout,
                           "input_noise": input_noise, "augmentation": augmentation}


def build(*, data_seed, dropout, input_noise, augmentation):
    return grid.svhn_ablation_cell(
        data_seed=data_seed, student_dropout_probability=dropout,
        teacher_dropout_probability=dropout, input_noise=input_noise, translate=augmentation)


GRID = grid.make_grid(
    "svhn_250_vary_perturbation",
    parameters(),
    build,
    name_keys=("data_seed", "dropout", "input_noise", "augmentation"),
    note="the original's parameters() skipped cells 0-5 (a manual resume); all cells are "
         "listed here.",
)

if __name__ == "__main__":
    grid.run_main(GRID)
