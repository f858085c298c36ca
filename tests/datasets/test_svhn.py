import os
import re

import numpy as np
import pytest
import scipy.io

from datasets.semi_supervised import load_semi_supervised
from datasets.svhn import load_svhn


def _write_mat(path, n_examples, seed):
    """A file in the layout of the real SVHN *_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1)."""
    rng = np.random.RandomState(seed)
    x = rng.randint(0, 256, size=(32, 32, 3, n_examples)).astype(np.uint8)
    y = rng.randint(1, 11, size=(n_examples, 1)).astype(np.uint8)
    y[0, 0] = 10  # the digit 0 is stored as 10
    y[1, 0] = 1
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y


@pytest.fixture
def svhn_dir(tmp_path):
    written = {
        "train": _write_mat(tmp_path / "train_32x32.mat", 7, seed=0),
        "test": _write_mat(tmp_path / "test_32x32.mat", 5, seed=1),
        "extra": _write_mat(tmp_path / "extra_32x32.mat", 3, seed=2),
    }
    return tmp_path, written


def test_reads_the_mat_files(svhn_dir):
    directory, written = svhn_dir
    data = load_svhn(source="files", data_dir=directory)
    assert set(data) == {"train", "test"}
    for split in ("train", "test"):
        x, y = data[split]
        raw_x, raw_y = written[split]
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape == (raw_x.shape[3], 32, 32, 3)
        for n in range(len(x)):
            np.testing.assert_array_equal(x[n], raw_x[:, :, :, n].astype(np.float32))
        expected_y = raw_y[:, 0].astype(np.int32)
        expected_y[expected_y == 10] = 0
        np.testing.assert_array_equal(y, expected_y)
        assert y[0] == 0 and y[1] == 1
    # raw pixel values, not rescaled
    assert data["train"][0].max() == 255.0


def test_reads_extra_when_asked(svhn_dir):
    directory, written = svhn_dir
    data = load_svhn(source="files", data_dir=directory, include_extra=True)
    assert set(data) == {"train", "test", "extra"}
    x, y = data["extra"]
    np.testing.assert_array_equal(x[2], written["extra"][0][:, :, :, 2])
    assert y[0] == 0


def test_missing_files_say_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as raised:
        load_svhn(source="files", data_dir=tmp_path)
    message = str(raised.value)
    assert f"SVHN file not found: {os.path.join(tmp_path, 'train_32x32.mat')}" in message
    assert "download train_32x32.mat, test_32x32.mat from http://ufldl.stanford.edu/" in message
    assert f"into {tmp_path}" in message


def test_missing_extra_is_named(svhn_dir):
    directory, _ = svhn_dir
    os.remove(directory / "extra_32x32.mat")
    load_svhn(source="files", data_dir=directory)  # extra is not needed here
    with pytest.raises(
        FileNotFoundError,
        match=r"extra_32x32\.mat\. To fix it, download "
        r"train_32x32\.mat, test_32x32\.mat, extra_32x32\.mat",
    ):
        load_svhn(source="files", data_dir=directory, include_extra=True)


def test_default_directory_is_the_original_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = os.path.join("data", "images", "svhn", "train_32x32.mat")
    with pytest.raises(FileNotFoundError, match=rf"SVHN file not found: {expected}"):
        load_svhn(source="files")


@pytest.mark.parametrize("keep", ["half", 3000])
def test_truncated_file_is_named(svhn_dir, keep):
    directory, _ = svhn_dir
    path = directory / "test_32x32.mat"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2 if keep == "half" else keep])
    with pytest.raises(ValueError, match=rf"SVHN file {re.escape(str(path))} is corrupt or "
                                         r"truncated \(.*\)\. Download it again from http"):
        load_svhn(source="files", data_dir=directory)


def test_garbage_file_is_named(svhn_dir):
    directory, _ = svhn_dir
    (directory / "train_32x32.mat").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(ValueError, match=r"SVHN file .*train_32x32\.mat is corrupt or truncated"):
        load_svhn(source="files", data_dir=directory)


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.zeros((28, 28, 3, 2), np.uint8), np.ones((2, 1), np.uint8),
         r"expected X of shape \(32, 32, 3, N\) and dtype uint8, found \(28, 28, 3, 2\) uint8"),
        (np.zeros((32, 32, 3, 2), np.float64), np.ones((2, 1), np.uint8),
         r"expected X of shape \(32, 32, 3, N\) and dtype uint8, found \(32, 32, 3, 2\) float64"),
        (np.zeros((32, 32, 3, 2), np.uint8), np.ones((3, 1), np.uint8),
         r"expected 2 labels in 1\.\.10, found 3 labels in 1\.\.10"),
        (np.zeros((32, 32, 3, 2), np.uint8), "ab",
         r"expected numeric labels y, found dtype <U2"),
    ],
    ids=["X shape", "X dtype", "label count", "text labels"],
)
def test_wrong_arrays_are_named(svhn_dir, x, y, message):
    directory, _ = svhn_dir
    path = directory / "train_32x32.mat"
    scipy.io.savemat(path, {"X": x, "y": y})
    with pytest.raises(ValueError,
                       match=rf"SVHN file {re.escape(str(path))} is corrupt: {message}"):
        load_svhn(source="files", data_dir=directory)


@pytest.mark.parametrize("missing", ["X", "y"])
def test_missing_key_is_named(svhn_dir, missing):
    directory, _ = svhn_dir
    path = directory / "train_32x32.mat"
    arrays = {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)}
    del arrays[missing]
    scipy.io.savemat(path, arrays)
    present = "X" if missing == "y" else "y"
    with pytest.raises(ValueError, match=rf"SVHN file {re.escape(str(path))} is corrupt: it has "
                                         rf"no '{missing}' array \(arrays found: "
                                         rf"\['{present}'\]\)"):
        load_svhn(source="files", data_dir=directory)


@pytest.mark.parametrize("bad_label", [0, 11, 2.5, np.nan])
def test_labels_out_of_range_are_named(svhn_dir, bad_label):
    directory, _ = svhn_dir
    y = np.ones((2, 1), np.uint8 if float(bad_label).is_integer() else np.float64)
    y[1, 0] = bad_label
    path = directory / "test_32x32.mat"
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": y})
    with pytest.raises(
        ValueError,
        match=rf"SVHN file {re.escape(str(path))} is corrupt: expected 2 labels in "
        rf"1\.\.10, found 2 labels, 1 of them outside 1\.\.10 \(first: {re.escape(str(y[1, 0]))}\)",
    ):
        load_svhn(source="files", data_dir=directory)


def test_a_bad_file_is_named_through_load_semi_supervised(svhn_dir):
    directory, _ = svhn_dir
    path = directory / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"SVHN file {re.escape(str(path))} is corrupt"):
        load_semi_supervised("svhn", n_labeled=2, data_dir=directory)


def test_tfds_without_prepared_data_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as raised:
        load_svhn(source="tfds", data_dir=tmp_path)
    message = str(raised.value)
    assert "TensorFlow Datasets has no prepared 'svhn_cropped' dataset in" in message
    assert str(tmp_path) in message
    assert "download=True" in message and "tfds build svhn_cropped" in message
    assert "source='files' (download train_32x32.mat, test_32x32.mat from" in message


def test_unknown_source():
    with pytest.raises(
        ValueError,
        match=r"source must be one of \('tfds', 'files'\)\. "
        r"Received: source='web'",
    ):
        load_svhn(source="web")


def test_download_needs_tfds(tmp_path):
    with pytest.raises(ValueError, match=r"download=True needs source='tfds'"):
        load_svhn(source="files", data_dir=tmp_path, download=True)


def test_tfds_source_gives_the_files_in_file_order(tmp_path, svhn_dir, offline_tfds):
    import tensorflow_datasets as tfds

    directory, _ = svhn_dir
    _write_mat(directory / "train_32x32.mat", 16, seed=3)  # enough rows to be reordered
    offline_tfds({name: str(directory / name) for name in os.listdir(directory)})
    tfds_dir = tmp_path / "tfds"

    from_tfds = load_svhn(source="tfds", data_dir=tfds_dir, download=True, include_extra=True)
    from_files = load_svhn(source="files", data_dir=directory, include_extra=True)
    assert set(from_tfds) == {"train", "test", "extra"}
    for split in from_files:
        assert from_tfds[split][0].dtype == np.float32 and from_tfds[split][1].dtype == np.int32
        np.testing.assert_array_equal(from_tfds[split][0], from_files[split][0])
        np.testing.assert_array_equal(from_tfds[split][1], from_files[split][1])

    # TFDS itself stores the rows shuffled, so the reordering above did real work.
    stored = tfds.builder("svhn_cropped", data_dir=tfds_dir).as_dataset(
        split="train", batch_size=-1
    )
    stored_ids = list(tfds.as_numpy(stored)["id"])
    assert stored_ids != sorted(stored_ids)

    # Once prepared, no download is needed.
    again = load_svhn(source="tfds", data_dir=tfds_dir)
    np.testing.assert_array_equal(again["test"][0], from_files["test"][0])


def test_tfds_download_failure_is_explained(tmp_path, offline_tfds):
    offline_tfds({})  # every download fails
    with pytest.raises(
        RuntimeError,
        match=r"Downloading and preparing 'svhn_cropped' with "
        r"TensorFlow Datasets in .* failed \(AssertionError: unexpected download"
        r".*use source='files'",
    ):
        load_svhn(source="tfds", data_dir=tmp_path, download=True)
