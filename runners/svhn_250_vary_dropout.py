"""Ablation: student and teacher dropout, on SVHN with 250 labels (the paper's Figure 4).

Port of the original `experiments/svhn_250_vary_dropout.py`: 28 runs evaluated on the
validation split, for data seeds 1000-1003 and the dropout pairs (student, teacher) of
{0, 0.25, 0.5, 0.75}^2 where both are equal or the student's is 0.5 (7 per seed); otherwise the
SVHN settings of svhn_final_eval with 250 labels.

Quirks kept from the original: every run is a Pi model (`model_type='pi'`, no EMA teacher),
although the script's default model type is Mean Teacher; and its `parameters()` skipped the
first 21 runs (`idx >= 21`, a manual resume). This runner enumerates the full grid
(`all_parameters()`); `--cell 21-27` runs what the original's last invocation ran.

    python -m runners.svhn_250_vary_dropout --list_cells
"""

from runners import grid

DROPOUTS = [0, 0.25, 0.5, 0.75]


def parameters():
    for data_seed in grid.ablation_seeds():
        for student in DROPOUTS:
            for teacher in DROPOUTS:
                if student in (teacher, 0.5):
                    yield {"data_seed": data_seed, "student_dropout_probability": student,
                           "teacher_dropout_probability": teacher, "model_type": "pi"}


GRID = grid.make_grid(
    "svhn_250_vary_dropout",
    parameters(),
    grid.svhn_ablation_cell,
    name_keys=("data_seed", "student_dropout_probability", "teacher_dropout_probability"),
    note="the original's parameters() skipped cells 0-20 (a manual resume); all cells are "
         "listed here. Every cell is a Pi model, as in the original.",
)

if __name__ == "__main__":
    grid.run_main(GRID)
