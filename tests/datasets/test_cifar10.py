import os
import pickle
import re

import numpy as np
import pytest

from datasets.cifar10 import load_cifar10, read_cifar10_batches
from datasets.semi_supervised import load_semi_supervised

ZCA_FIXTURE = os.path.join(os.path.dirname(__file__), "..", "data", "reference", "zca.npz")
TRAIN_SIZES = (20, 20, 20, 20, 16)  # the fixture's 96 training images over 5 batches


@pytest.fixture(scope="module")
def reference():
    with np.load(ZCA_FIXTURE) as data:
        return {key: data[key] for key in data.files}


def _planar_rows(images):
    """NHWC uint8 -> CIFAR rows: the R plane, then G, then B, each 32x32 row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _python2_style(payload):
    # Python 2 numpy wrote numpy.core.* globals; protocol 2 keeps module names as plain text.
    assert b"numpy._core.multiarray" in payload
    return payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _write_batch(path, images, labels, python2_style=False):
    batch = {
        b"batch_label": b"a test batch",
        b"labels": [int(label) for label in labels],
        b"data": _planar_rows(images),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    payload = pickle.dumps(batch, protocol=2)
    path.write_bytes(_python2_style(payload) if python2_style else payload)


def _write_cifar(root, train_images, train_labels, test_images, test_labels):
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    bounds = np.cumsum((0, *TRAIN_SIZES))
    for i in range(5):
        part = slice(bounds[i], bounds[i + 1])
        _write_batch(
            directory / f"data_batch_{i + 1}",
            train_images[part],
            train_labels[part],
            python2_style=(i == 1),
        )
    _write_batch(directory / "test_batch", test_images, test_labels)
    return directory


@pytest.fixture
def cifar_root(tmp_path, reference):
    train_labels = (np.arange(96) * 7) % 10
    test_labels = np.arange(24) % 10
    directory = _write_cifar(
        tmp_path / "cifar",
        reference["train_images_uint8"],
        train_labels,
        reference["test_images_uint8"],
        test_labels,
    )
    return tmp_path / "cifar", directory, train_labels, test_labels


def test_batches_are_read_as_nhwc(cifar_root, reference):
    root, _, train_labels, test_labels = cifar_root
    raw = read_cifar10_batches(root)
    train_images, labels = raw["train"]
    np.testing.assert_array_equal(train_images, reference["train_images_uint8"])
    np.testing.assert_array_equal(labels, train_labels)
    np.testing.assert_array_equal(raw["test"][0], reference["test_images_uint8"])
    np.testing.assert_array_equal(raw["test"][1], test_labels)
    # pixel (row 3, column 5, channel G) of image 0 is entry 1024 + 3 * 32 + 5 of its row
    row = _planar_rows(reference["train_images_uint8"][:1])[0]
    assert train_images[0, 3, 5, 1] == row[1024 + 3 * 32 + 5]


def test_load_whitens_like_the_original(cifar_root, reference, tmp_path):
    root, _, train_labels, test_labels = cifar_root
    cache_dir = tmp_path / "cache"
    data = load_cifar10(source="files", data_dir=root, cache_dir=cache_dir)
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    assert train_x.dtype == np.float32 and train_y.dtype == np.int32
    np.testing.assert_allclose(train_x, reference["train_x"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(test_x, reference["test_x"], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(train_y, train_labels)
    np.testing.assert_array_equal(test_y, test_labels)
    assert len(os.listdir(cache_dir)) == 1

    cached = load_cifar10(source="files", data_dir=root, cache_dir=cache_dir)
    np.testing.assert_array_equal(cached["train"][0], train_x)
    np.testing.assert_array_equal(cached["test"][0], test_x)


def test_missing_directory_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as raised:
        load_cifar10(source="files", data_dir=tmp_path)
    message = str(raised.value)
    expected_file = os.path.join(tmp_path, "cifar-10-batches-py", "data_batch_1")
    assert f"CIFAR-10 batch file not found: {expected_file}." in message
    assert "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert f"extract it in {tmp_path}, so that" in message
    assert (
        "holds data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch"
        in message
    )


def test_default_directory_is_the_original_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = os.path.join("data", "images", "cifar", "cifar10", "cifar-10-batches-py")
    with pytest.raises(FileNotFoundError, match=rf"not found: {expected}"):
        load_cifar10(source="files")


def test_one_missing_batch_is_named(cifar_root):
    root, directory, _, _ = cifar_root
    os.remove(directory / "data_batch_4")
    with pytest.raises(FileNotFoundError, match=r"not found: .*data_batch_4\. To fix it"):
        read_cifar10_batches(root)


def test_truncated_batch_is_named(cifar_root):
    root, directory, _, _ = cifar_root
    path = directory / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(
        ValueError,
        match=r"CIFAR-10 batch file .*data_batch_3 is corrupt or "
        r"truncated",
    ):
        read_cifar10_batches(root)


def test_pickle_that_would_run_code_is_refused(cifar_root):
    root, directory, _, _ = cifar_root
    path = directory / "test_batch"
    path.write_bytes(pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(
        ValueError,
        match=rf"CIFAR-10 batch file {re.escape(str(path))} is not a CIFAR-10 batch: its pickle "
        r"refers to \w+\.getcwd, which could run code, so it was refused without loading it",
    ):
        read_cifar10_batches(root)


@pytest.mark.parametrize("kind", ["system", "eval"])
@pytest.mark.parametrize("where", ["whole file", "inside the batch"])
def test_pickle_payload_is_never_run(cifar_root, code_payload, kind, where):
    root, directory, _, _ = cifar_root
    payload, marker = code_payload(kind)
    if where == "inside the batch":  # a real-looking batch with the payload as its labels
        payload = {b"data": np.zeros((2, 3072), np.uint8), b"labels": payload}
    path = directory / "data_batch_3"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    function = r"(posix|os)\.system" if kind == "system" else r"(__builtin__|builtins)\.eval"
    with pytest.raises(ValueError, match=rf"CIFAR-10 batch file {re.escape(str(path))} is not a "
                                         rf"CIFAR-10 batch: its pickle refers to {function}, "
                                         "which could run code"):
        load_cifar10(source="files", data_dir=root)
    assert not marker.exists()


def test_wrong_row_length_is_named(cifar_root):
    root, directory, _, _ = cifar_root
    batch = {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}
    (directory / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(
        ValueError,
        match=r"data_batch_2 is corrupt: expected data of shape "
        r"\(N, 3072\) and dtype uint8, found \(2, 3000\) uint8",
    ):
        read_cifar10_batches(root)


@pytest.mark.parametrize("bad_label", [10, -1])
def test_bad_labels_are_named(cifar_root, bad_label):
    root, directory, _, _ = cifar_root
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, bad_label]}
    (directory / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    low, high = min(0, bad_label), max(0, bad_label)
    with pytest.raises(
        ValueError,
        match=rf"test_batch is corrupt: expected 2 labels in 0\.\.9, "
        rf"found shape \(2,\) with values {low}\.\.{high}",
    ):
        read_cifar10_batches(root)


@pytest.mark.parametrize(
    "batch, message",
    [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]},
         r"it has 2 images but 3 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.5, 1.0]},
         r"expected a list of integer labels, found shape \(2,\) and dtype float64"),
        ({b"data": np.zeros((2, 3072), np.uint8)},
         r"it has no b'labels' entry \(entries found: \[\"b'data'\"\]\)"),
        ([np.zeros((2, 3072), np.uint8), [0, 1]],
         r"expected a dict with b'data' and b'labels', found list"),
    ],
    ids=["lengths differ", "float labels", "no labels", "not a dict"],
)
def test_wrong_batch_content_is_named(cifar_root, batch, message):
    root, directory, _, _ = cifar_root
    path = directory / "data_batch_5"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=rf"CIFAR-10 batch file {re.escape(str(path))} is "
                                         rf"corrupt: {message}\. Download it again"):
        load_cifar10(source="files", data_dir=root)


def test_a_bad_batch_is_named_through_load_semi_supervised(cifar_root):
    root, directory, _, _ = cifar_root
    path = directory / "test_batch"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"CIFAR-10 batch file {re.escape(str(path))} is "
                                         "corrupt or truncated"):
        load_semi_supervised("cifar10", n_labeled=10, data_dir=root)


def test_tfds_without_prepared_data_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as raised:
        load_cifar10(source="tfds", data_dir=tmp_path)
    message = str(raised.value)
    assert "TensorFlow Datasets has no prepared 'cifar10' dataset in" in message
    assert "download=True" in message and "tfds build cifar10" in message
    assert "source='files' (download https://www.cs.toronto.edu/~kriz/cifar-10-python" in message


def _write_binary_version(root, train_images, train_labels, test_images, test_labels):
    """The layout TFDS downloads: cifar-10-batches-bin/*.bin, records of label byte + row."""
    directory = root / "cifar-10-batches-bin"
    directory.mkdir(parents=True)

    def records(images, labels):
        rows = _planar_rows(images)
        return b"".join(
            bytes([int(label)]) + row.tobytes() for label, row in zip(labels, rows, strict=True)
        )

    bounds = np.cumsum((0, *TRAIN_SIZES))
    for i in range(5):
        part = slice(bounds[i], bounds[i + 1])
        (directory / f"data_batch_{i + 1}.bin").write_bytes(
            records(train_images[part], train_labels[part])
        )
    (directory / "test_batch.bin").write_bytes(records(test_images, test_labels))
    (directory / "batches.meta.txt").write_text("\n".join(f"class_{i}" for i in range(10)))


def test_tfds_source_matches_the_files(cifar_root, reference, tmp_path, offline_tfds):
    root, _, train_labels, test_labels = cifar_root
    binary_root = tmp_path / "binary"
    _write_binary_version(
        binary_root,
        reference["train_images_uint8"],
        train_labels,
        reference["test_images_uint8"],
        test_labels,
    )
    offline_tfds({"cifar-10-binary.tar.gz": str(binary_root)})
    from_tfds = load_cifar10(source="tfds", data_dir=tmp_path / "tfds", download=True)
    from_files = load_cifar10(source="files", data_dir=root)
    for split in ("train", "test"):
        np.testing.assert_array_equal(from_tfds[split][0], from_files[split][0])
        np.testing.assert_array_equal(from_tfds[split][1], from_files[split][1])
    np.testing.assert_allclose(from_tfds["test"][0], reference["test_x"], atol=1e-4)


def test_unknown_source():
    with pytest.raises(
        ValueError,
        match=r"source must be one of \('tfds', 'files'\)\. "
        r"Received: source='mat'",
    ):
        load_cifar10(source="mat")


def test_download_needs_tfds(tmp_path):
    with pytest.raises(ValueError, match=r"download=True needs source='tfds'"):
        load_cifar10(source="files", data_dir=tmp_path, download=True)
