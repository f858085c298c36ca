import hashlib
import os
import pickle
import re

import numpy as np
import pytest

from datasets.digits import DIGITS_PATH, load_digits, prepare_digit_images
from datasets.partition import partition_indices

# augment.npz layer_norm/x: digits 0..3 prepared with scikit-learn by the fixture generator.
REFERENCE = os.path.join(os.path.dirname(__file__), "..", "data", "reference", "augment.npz")


@pytest.fixture(scope="module")
def raw():
    with np.load(DIGITS_PATH) as data:
        return data["images"], data["labels"]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_bundled_file_is_the_documented_one(raw):
    images, labels = raw
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,)
    assert images.max() == 16 and images.min() == 0
    np.testing.assert_array_equal(
        np.bincount(labels), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    )
    # Checksums recorded in datasets/data/README.md.
    assert hashlib.sha256(images.tobytes()).hexdigest() == (
        "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3"
    )
    assert hashlib.sha256(labels.tobytes()).hexdigest() == (
        "8ba4f891220f5e4c9c819638d1602d74b83618f167043c6da52a2a247841ddf0"
    )


def test_preparation_matches_the_scikit_learn_based_reference(raw):
    with np.load(REFERENCE) as data:
        reference = data["layer_norm/x"]
    prepared = prepare_digit_images(raw[0][:4])
    assert prepared.dtype == np.float32 and prepared.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(prepared[:3], reference[:3])
    # the reference multiplied its image 3 by 255
    np.testing.assert_array_equal(prepared[3] * np.float32(255), reference[3])


def test_upsampling_repeats_each_pixel_in_a_4x4_block():
    image = np.arange(64, dtype=np.uint8).reshape(1, 8, 8) % 17
    prepared = prepare_digit_images(image)
    assert prepared[0, 4 * 2 + 3, 4 * 5 + 1, 2] == np.float32(image[0, 2, 5] / 16)
    np.testing.assert_array_equal(prepared[0, ::4, ::4, 0], image[0] / np.float32(16))
    np.testing.assert_array_equal(prepared[..., 0], prepared[..., 1])
    np.testing.assert_array_equal(prepared[..., 0], prepared[..., 2])


def test_split_shapes_and_types(digits):
    (train_x, train_y), (test_x, test_y) = digits["train"], digits["test"]
    assert set(digits) == {"train", "test"}
    assert train_x.shape == (1442, 32, 32, 3) and test_x.shape == (355, 32, 32, 3)
    assert train_x.dtype == np.float32 and test_x.dtype == np.float32
    assert train_y.dtype == np.int32 and test_y.dtype == np.int32
    assert 0.0 == min(train_x.min(), test_x.min()) and max(train_x.max(), test_x.max()) == 1.0
    np.testing.assert_array_equal(np.bincount(test_y), [35, 36, 35, 36, 36, 36, 36, 35, 34, 36])


def test_split_is_every_fifth_example_of_each_class(raw, digits):
    images, labels = raw
    rank_in_class = np.zeros(len(labels), dtype=int)
    for klass in range(10):
        members = np.flatnonzero(labels == klass)
        rank_in_class[members] = np.arange(len(members))
    is_test = rank_in_class % 5 == 4
    np.testing.assert_array_equal(digits["test"][1], labels[is_test])
    np.testing.assert_array_equal(digits["train"][1], labels[~is_test])
    np.testing.assert_array_equal(digits["test"][0], prepare_digit_images(images[is_test]))
    np.testing.assert_array_equal(digits["train"][0], prepare_digit_images(images[~is_test]))


def test_loading_twice_gives_the_same_split(digits):
    again = load_digits()
    np.testing.assert_array_equal(again["test"][1], digits["test"][1])
    np.testing.assert_array_equal(again["train"][0], digits["train"][0])


def test_training_part_can_be_partitioned(digits):
    evaluation_idx, labeled_idx, unlabeled_idx = partition_indices(
        digits["train"][1], n_labeled=100, validation_size=144, data_seed=0
    )
    assert (len(evaluation_idx), len(labeled_idx), len(unlabeled_idx)) == (144, 100, 1198)
    np.testing.assert_array_equal(np.bincount(digits["train"][1][labeled_idx]), [10] * 10)


def test_wrong_image_shape():
    with pytest.raises(
        ValueError,
        match=r"images must have shape \(N, 8, 8\)\. "
        r"Received shape: \(2, 8, 9\)",
    ):
        prepare_digit_images(np.zeros((2, 8, 9)))


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "digits.npz"
    with pytest.raises(FileNotFoundError, match=rf"digits file .*{path.name} is missing"):
        load_digits(path)


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"digits file .*broken\.npz is corrupt"):
        load_digits(path)


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "digits.npz"
    content = open(DIGITS_PATH, "rb").read()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match=rf"digits file {re.escape(str(path))} is corrupt: "
                                         r"BadZipFile: .*\. Restore"):
        load_digits(path)


def test_object_array_is_refused_without_unpickling(tmp_path, code_payload):
    payload, marker = code_payload("system")
    path = tmp_path / "digits.npz"
    np.savez(path, images=np.array([payload], dtype=object), labels=np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match=rf"digits file {re.escape(str(path))} is corrupt: "
                                         r"'images' is an object array \(pickled data\), which "
                                         r"is never unpickled\. Restore"):
        load_digits(path)
    assert not marker.exists()


def test_a_pickle_in_place_of_the_npz_is_never_unpickled(tmp_path, code_payload):
    payload, marker = code_payload("eval")
    path = tmp_path / "digits.npz"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match=rf"digits file {re.escape(str(path))} is corrupt: it "
                                         r"is neither an npz archive nor an \.npy file \(numpy "
                                         r"would read it as a pickle\), which is never "
                                         r"unpickled\. Restore"):
        load_digits(path)
    assert not marker.exists()


def test_a_single_npy_array_is_refused(tmp_path):
    path = tmp_path / "digits.npz"
    with open(path, "wb") as file:
        np.save(file, np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=rf"digits file {re.escape(str(path))} is corrupt: "
                                         "it is a single .npy array"):
        load_digits(path)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((3, 8, 8), np.uint8), "labels": np.zeros(2, np.uint8)},
         r"expected images \(N, 8, 8\) and N labels, found images \(3, 8, 8\) and labels \(2,\)"),
        ({"images": np.zeros((3, 8, 8), np.uint8), "labels": np.zeros((3, 1), np.uint8)},
         r"expected images \(N, 8, 8\) and N labels, found images \(3, 8, 8\) and labels "
         r"\(3, 1\)"),
        ({"images": np.zeros((3, 8, 8), np.uint8)},
         r"it has no 'labels' array \(arrays found: \['images'\]\)"),
        ({"pixels": np.zeros((3, 8, 8), np.uint8)},
         r"it has no 'images' or 'labels' array \(arrays found: \['pixels'\]\)"),
        ({"images": np.zeros((3, 8, 8), np.uint8), "labels": np.array([0, 10, 1])},
         r"expected labels in 0\.\.9, found values 0\.\.10"),
        ({"images": np.zeros((3, 8, 8), np.uint8), "labels": np.array([0, -1, 1])},
         r"expected labels in 0\.\.9, found values -1\.\.1"),
        ({"images": np.zeros((3, 8, 8), np.uint8), "labels": np.array([0.0, 1.0, 2.0])},
         r"expected integer labels, found dtype float64"),
        ({"images": np.full((3, 8, 8), 255, np.uint8), "labels": np.zeros(3, np.uint8)},
         r"expected images in 0\.\.16, found values 255\.\.255"),
    ],
    ids=["label count", "label shape", "no labels", "other keys", "label 10", "label -1",
         "float labels", "pixels > 16"],
)
def test_file_with_wrong_content_is_named(tmp_path, arrays, message):
    path = tmp_path / "odd.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=rf"digits file {re.escape(str(path))} is corrupt: "
                                         rf"{message}\. Restore"):
        load_digits(path)
