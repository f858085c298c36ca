import os
import pickle
import re
import warnings

import numpy as np
import pytest

from datasets import preprocessing
from datasets.preprocessing import cached_gcn_zca, gcn_zca

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "data", "reference", "zca.npz")


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def reference_output(reference):
    return gcn_zca(reference["train_images_uint8"], reference["test_images_uint8"])


def test_matches_the_original_preprocessing(reference, reference_output):
    train_x, test_x = reference_output
    assert train_x.dtype == np.float32 and test_x.dtype == np.float32
    assert train_x.shape == (96, 32, 32, 3) and test_x.shape == (24, 32, 32, 3)
    np.testing.assert_allclose(train_x, reference["train_x"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(test_x, reference["test_x"], rtol=0, atol=1e-4)


def _numpy_gcn_zca(train, test, scale=55.0, min_divisor=1e-8, bias=0.1):
    """Textbook re-derivation: per-image GCN, then ZCA from np.cov and an eigendecomposition."""

    def gcn(images):
        flat = images.reshape(len(images), -1).astype(np.float64)
        flat = flat - flat.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(flat, axis=1) / scale
        norms = np.where(norms < min_divisor, 1.0, norms)
        return flat / norms[:, None]

    train_flat, test_flat = gcn(train), gcn(test)
    mean = train_flat.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(
        np.cov(train_flat, rowvar=False) + bias * np.eye(train_flat.shape[1])
    )
    whitening = eigenvectors @ np.diag(1.0 / np.sqrt(eigenvalues)) @ eigenvectors.T
    return (
        ((train_flat - mean) @ whitening).reshape(train.shape),
        ((test_flat - mean) @ whitening).reshape(test.shape),
    )


# More images than pixels (eigendecomposition of the covariance) and fewer (thin SVD).
@pytest.mark.parametrize("image_shape", [(2, 3, 3), (5, 6, 3)])
def test_matches_a_numpy_re_derivation_on_small_images(image_shape):
    rng = np.random.RandomState(0)
    train = rng.randint(0, 256, size=(40, *image_shape)).astype(np.uint8)
    test = rng.randint(0, 256, size=(7, *image_shape)).astype(np.uint8)
    # A constant image exercises the min-divisor rule (its norm after centring is 0).
    train[3] = 77
    test[0] = 200
    train_x, test_x = gcn_zca(train, test)
    expected_train, expected_test = _numpy_gcn_zca(train, test)
    assert np.all(np.isfinite(train_x)) and np.all(np.isfinite(test_x))
    np.testing.assert_allclose(train_x, expected_train, rtol=0, atol=1e-5)
    np.testing.assert_allclose(test_x, expected_test, rtol=0, atol=1e-5)
    # a constant image is mapped like the all-zero GCN vector
    np.testing.assert_allclose(test_x[0], expected_test[0], atol=1e-5)


def test_nearly_constant_image_is_not_amplified():
    # Its norm after centring is below 55 * 1e-8, so GCN divides by 1 instead of by the norm.
    pattern = np.random.RandomState(4).normal(size=(1, 4, 4, 3))
    images = np.concatenate([0.5 + 1e-9 * pattern, np.random.RandomState(5).rand(1, 4, 4, 3)])
    normalized = preprocessing._global_contrast_normalize(images.reshape(2, -1))
    centred = images[0].ravel() - images[0].mean()
    np.testing.assert_allclose(normalized[0], centred, rtol=1e-6, atol=0)
    assert np.linalg.norm(normalized[0]) < 1e-7
    np.testing.assert_allclose(np.linalg.norm(normalized[1]), 55.0)


def test_re_derivation_agrees_with_the_fixture_too(reference):
    # Guards the re-derivation itself, on a 4x4 crop to keep the eigendecomposition small.
    train = reference["train_images_uint8"]
    test = reference["test_images_uint8"]
    ours = gcn_zca(train[:, :4, :4], test[:, :4, :4])
    theirs = _numpy_gcn_zca(train[:, :4, :4], test[:, :4, :4])
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5)
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-5)


def test_both_whitening_routes_give_the_same_matrix():
    centred = np.random.RandomState(3).normal(size=(30, 40))
    centred -= centred.mean(axis=0)
    low_rank = preprocessing._low_rank_whitening_matrix(centred)
    # Pad with zero rows: the covariance is unchanged up to the (n - 1) normaliser, so
    # rescale to keep it equal, and the eigendecomposition route is taken.
    n_padded = 60
    padded = np.zeros((n_padded, 40))
    padded[:30] = centred * np.sqrt((n_padded - 1) / 29)
    full = preprocessing._whitening_matrix(padded)
    np.testing.assert_allclose(low_rank, full, atol=1e-10)


def test_float_input_gives_the_same_result_as_integer_input():
    rng = np.random.RandomState(1)
    train = rng.randint(0, 256, size=(30, 4, 4, 3)).astype(np.uint8)
    test = rng.randint(0, 256, size=(5, 4, 4, 3)).astype(np.uint8)
    from_uint8 = gcn_zca(train, test)
    from_float = gcn_zca(train.astype(np.float32), test.astype(np.float64))
    np.testing.assert_allclose(from_uint8[0], from_float[0], atol=1e-6)
    np.testing.assert_allclose(from_uint8[1], from_float[1], atol=1e-6)


@pytest.mark.parametrize(
    ("train", "test", "message"),
    [
        (
            np.zeros((4, 8, 8)),
            np.zeros((2, 8, 8, 3)),
            r"train_images must be NHWC images, a "
            r"4-D array\. Received shape: \(4, 8, 8\)",
        ),
        (
            np.zeros((4, 8, 8, 3)),
            np.zeros((2, 8, 7, 3)),
            r"same image shape\. Received: "
            r"\(8, 8, 3\) and \(8, 7, 3\)",
        ),
        (
            np.zeros((1, 8, 8, 3)),
            np.zeros((2, 8, 8, 3)),
            r"at least 2 training images .* "
            r"Received: 1",
        ),
        (np.full((4, 2, 2, 3), np.nan), np.zeros((2, 2, 2, 3)), r"train_images contains NaN"),
        (np.zeros((4, 2, 2, 3)), np.full((2, 2, 2, 3), np.inf), r"test_images contains NaN"),
        (
            np.zeros((4, 2, 2, 3), dtype=bool),
            np.zeros((2, 2, 2, 3)),
            r"train_images must hold "
            r"integer or float pixels\. Received dtype: bool",
        ),
    ],
)
def test_input_errors(train, test, message):
    with pytest.raises(ValueError, match=message):
        gcn_zca(train, test)


@pytest.fixture
def small_images():
    rng = np.random.RandomState(2)
    return (
        rng.randint(0, 256, size=(20, 4, 4, 3)).astype(np.uint8),
        rng.randint(0, 256, size=(6, 4, 4, 3)).astype(np.uint8),
    )


def test_cache_stores_once_and_reuses(tmp_path, small_images, monkeypatch):
    train, test = small_images
    first = cached_gcn_zca(train, test, tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].startswith("gcn_zca_") and files[0].endswith(".npz")
    expected = gcn_zca(train, test)
    np.testing.assert_array_equal(first[0], expected[0])
    np.testing.assert_array_equal(first[1], expected[1])

    def must_not_recompute(*args):
        raise AssertionError("recomputed although a cache file exists")

    monkeypatch.setattr(preprocessing, "gcn_zca", must_not_recompute)
    second = cached_gcn_zca(train, test, tmp_path)
    np.testing.assert_array_equal(second[0], expected[0])
    np.testing.assert_array_equal(second[1], expected[1])
    assert second[0].dtype == np.float32


def test_cache_key_depends_on_the_pixels(tmp_path, small_images):
    train, test = small_images
    cached_gcn_zca(train, test, tmp_path)
    changed = test.copy()
    changed[0, 0, 0, 0] ^= 1
    result = cached_gcn_zca(train, changed, tmp_path)
    assert len(os.listdir(tmp_path)) == 2
    np.testing.assert_array_equal(result[1], gcn_zca(train, changed)[1])


def test_no_cache_dir_writes_nothing(tmp_path, small_images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cached_gcn_zca(*small_images, None)
    assert os.listdir(tmp_path) == []


def _cache_file(tmp_path, images):
    cached_gcn_zca(*images, tmp_path)
    (path,) = tmp_path.iterdir()
    return path


def _spoil(path, case, payload):
    train_x = np.zeros((20, 4, 4, 3), np.float32)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "not a zip":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif case == "object array":
        np.savez(path, train_x=np.array([payload], dtype=object), test_x=train_x[:6])
    elif case == "a pickle":
        path.write_bytes(pickle.dumps(payload))
    elif case == "missing key":
        np.savez(path, train_x=train_x)
    elif case == "wrong shape":
        np.savez(path, train_x=train_x[:19], test_x=train_x[:6])
    elif case == "wrong dtype":
        np.savez(path, train_x=train_x.astype(np.float64), test_x=train_x[:6])
    else:
        raise AssertionError(case)


SPOILED = {
    "truncated": r"BadZipFile",
    "not a zip": r"BadZipFile",
    "object array": r"'train_x' is an object array \(pickled data\), which is never unpickled",
    "a pickle": r"it is neither an npz archive nor an \.npy file \(numpy would read it as a "
                r"pickle\), which is never unpickled",
    "missing key": r"it has no 'test_x' array",
    "wrong shape": r"train_x is \(19, 4, 4, 3\) float32, expected \(20, 4, 4, 3\) float32",
    "wrong dtype": r"train_x is \(20, 4, 4, 3\) float64, expected \(20, 4, 4, 3\) float32",
}


@pytest.mark.parametrize("case", list(SPOILED))
def test_an_unusable_cache_file_is_recomputed_with_a_warning(tmp_path, small_images, case,
                                                             code_payload):
    """Never unpickled nor used: recomputed, replaced, and named in a warning."""
    path = _cache_file(tmp_path, small_images)
    payload, marker = code_payload("system")
    _spoil(path, case, payload)
    with pytest.warns(RuntimeWarning, match=rf"cached preprocessed file {re.escape(str(path))} "
                                            rf"is unusable \({SPOILED[case]}.*\); recomputing"):
        train_x, test_x = cached_gcn_zca(*small_images, tmp_path)
    assert not marker.exists()
    expected = gcn_zca(*small_images)
    np.testing.assert_array_equal(train_x, expected[0])
    np.testing.assert_array_equal(test_x, expected[1])
    # The file was replaced by a good one: read again without a warning.
    assert [file.name for file in tmp_path.iterdir()] == [path.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(cached_gcn_zca(*small_images, tmp_path)[1], expected[1])


def test_failed_write_leaves_no_file(tmp_path, small_images, monkeypatch):
    def failing_savez(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        cached_gcn_zca(*small_images, tmp_path)
    assert os.listdir(tmp_path) == []
