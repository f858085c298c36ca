"""CIFAR-10 final evaluation (the paper's Table 2, ConvNet): Mean Teacher and Pi model.

Port of the original `experiments/cifar10_final_eval.py`: 68 runs on the test set, for 1000,
2000, 4000 and all labels, each with Mean Teacher and with the Pi model, over data seeds
2000-2009 (2000-2003 with all labels). ZCA-whitened input, translations and horizontal flips,
150,000 steps. With n labels, minibatches are drawn from all images and the consistency cost
is 100 * n / 50000; with all labels, it is 100.

    python -m runners.cifar10_final_eval --list_cells
    python -m runners.cifar10_final_eval --cell 0
    python -m runners.cifar10_final_eval --only n_labeled=4000 --only model_type=mean_teacher
"""

from runners import grid

GRID = grid.make_grid(
    "cifar10_final_eval",
    grid.final_eval_parameters([1000, 2000, 4000, "all"]),
    grid.cifar10_cell,
    name_keys=("n_labeled", "model_type", "data_seed"),
)

if __name__ == "__main__":
    grid.run_main(GRID)
