"""Ablation: the EMA decay of the teacher, on SVHN with 250 labels (the paper's Figure 4).

Port of the original `experiments/svhn_250_vary_ema_decay.py`: 36 Mean Teacher runs evaluated
on the validation split; for each data seed 1000-1003, one EMA decay (during and after the
ramp-up alike) of 0, 0.9, 0.97, 0.99, 0.997, 0.999, 0.9997 and 0.9999, then the default
schedule (0.99 during the ramp-up, 0.999 after). Otherwise the SVHN settings of svhn_final_eval
with 250 labels.

    python -m runners.svhn_250_vary_ema_decay --list_cells
"""

from runners import grid


def parameters():
    for data_seed in grid.ablation_seeds():
        for ema_decay in [0, 0.9, 0.97, 0.99, 0.997, 0.999, 0.9997, 0.9999]:
            yield {"data_seed": data_seed, "ema_decay_during_rampup": ema_decay,
                   "ema_decay_after_rampup": ema_decay}
        yield {"data_seed": data_seed, "ema_decay_during_rampup": 0.99,
               "ema_decay_after_rampup": 0.999}


GRID = grid.make_grid(
    "svhn_250_vary_ema_decay",
    parameters(),
    grid.svhn_ablation_cell,
    name_keys=("data_seed", "ema_decay_during_rampup", "ema_decay_after_rampup"),
)

if __name__ == "__main__":
    grid.run_main(GRID)
