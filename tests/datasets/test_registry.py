import numpy as np
import pytest

import datasets
from datasets.registry import DATASETS, load


def test_load_by_name_calls_the_loader():
    by_name = load("digits")
    direct = datasets.load_digits()
    np.testing.assert_array_equal(by_name["test"][0], direct["test"][0])
    np.testing.assert_array_equal(by_name["train"][1], direct["train"][1])


def test_load_passes_arguments_on(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"SVHN file not found"):
        load("svhn", source="files", data_dir=tmp_path)


def test_unknown_name():
    with pytest.raises(
        ValueError,
        match=r"Unknown dataset 'mnist'\. Available: "
        r"\['cifar10', 'digits', 'svhn'\]",
    ):
        load("mnist")


def test_experiment_settings_of_the_original():
    assert DATASETS["svhn"].validation_size == 7325
    assert DATASETS["cifar10"].validation_size == 5000
    assert DATASETS["digits"].validation_size == 144
    # ZCA-whitened CIFAR-10 is fed without per-image normalisation, SVHN with it.
    assert DATASETS["cifar10"].normalize_input is False
    assert DATASETS["svhn"].normalize_input is True


def test_public_api():
    for name in (
        "partition_indices",
        "gcn_zca",
        "load_digits",
        "load_svhn",
        "load_cifar10",
        "training_dataset",
        "evaluation_dataset",
        "host_images",
        "load",
    ):
        assert name in datasets.__all__ and callable(getattr(datasets, name))
