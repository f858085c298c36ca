import numpy as np
import pytest

from datasets.tfds_source import file_order, load_tfds_splits


def test_file_order_restores_the_position_in_the_source_files():
    positions = np.random.RandomState(0).permutation(1200)
    ids = np.array([f"train_{p:06d}".encode() for p in positions])
    order = file_order(ids)
    np.testing.assert_array_equal(positions[order], np.arange(1200))


def test_file_order_compares_numbers_not_strings():
    # 'train_10' sorts before 'train_9' as text; the position must win.
    order = file_order(np.array([b"train_10", b"train_9", b"test_0"]))
    np.testing.assert_array_equal(order, [2, 1, 0])


@pytest.mark.parametrize("bad_id", [b"train-12", b"12", b"train_x1"])
def test_file_order_rejects_unexpected_ids(bad_id):
    with pytest.raises(ValueError, match=r"of the form '<split>_<position>'.*Received: '"):
        file_order(np.array([b"train_1", bad_id]))


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"no prepared 'cifar10' dataset in .*"
        r"or use source='files' \(the hint\)",
    ):
        load_tfds_splits(
            "cifar10", ("train",), data_dir=tmp_path, download=False, files_hint="the hint"
        )
