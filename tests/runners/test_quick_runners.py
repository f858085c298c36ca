"""The quick runners' settings against the original train_svhn.py / train_cifar10.py."""

from runners import train_cifar10, train_svhn
from tensorflow_mean_teacher.hyperparams import HyperParams


def test_train_svhn_settings():
    s = train_svhn.SETTINGS
    assert (s.dataset, s.n_labeled, s.data_seed, s.test_phase, s.n_extra_unlabeled) == (
        "svhn", 500, 0, False, 0)
    assert (s.batch_size, s.n_labeled_per_batch) == (100, 50)
    assert HyperParams.from_dict(s.hyperparams) == HyperParams(
        rampdown_length=0, rampup_length=5000, training_length=40000, max_consistency_cost=50.0)


def test_train_cifar10_settings():
    s = train_cifar10.SETTINGS
    assert (s.dataset, s.n_labeled, s.data_seed, s.test_phase) == ("cifar10", 4000, 0, False)
    assert (s.batch_size, s.n_labeled_per_batch) == (100, 50)
    assert HyperParams.from_dict(s.hyperparams) == HyperParams(
        flip_horizontally=True, normalize_input=False, rampdown_length=0, rampup_length=5000,
        training_length=40000, max_consistency_cost=50.0)
