"""Data for the Mean Teacher port: loaders (also of your own images), label split, preprocessing,
tf.data streams."""

from datasets.cifar10 import load_cifar10
from datasets.digits import load_digits
from datasets.image_folder import ImageFolder, load_image_folder
from datasets.minibatching import (
    UNLABELED,
    epoch_dataset,
    evaluation_dataset,
    host_images,
    training_dataset,
)
from datasets.partition import extra_unlabeled_indices, partition_indices, training_rows
from datasets.preprocessing import cached_gcn_zca, gcn_zca
from datasets.registry import DATASETS, load
from datasets.semi_supervised import (
    SemiSupervisedData,
    load_semi_supervised,
    semi_supervised_from_arrays,
    semi_supervised_from_folder,
)
from datasets.svhn import load_svhn

__all__ = [
    "DATASETS",
    "ImageFolder",
    "SemiSupervisedData",
    "UNLABELED",
    "cached_gcn_zca",
    "epoch_dataset",
    "evaluation_dataset",
    "extra_unlabeled_indices",
    "gcn_zca",
    "host_images",
    "load",
    "load_cifar10",
    "load_digits",
    "load_image_folder",
    "load_semi_supervised",
    "load_svhn",
    "partition_indices",
    "semi_supervised_from_arrays",
    "semi_supervised_from_folder",
    "training_dataset",
    "training_rows",
]
