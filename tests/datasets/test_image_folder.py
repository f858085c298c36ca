"""`load_image_folder` on folders of PNG files written here: labels, classes, pixels, sizes,
channels, and every bad folder refused with its path named."""

import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from datasets.image_folder import load_image_folder


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_png(pixels.astype(np.uint8)))


def random_pixels(seed, shape):
    return np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)


def make_folder(root: Path, counts: dict, shape=(6, 5, 3), seed=0) -> dict:
    """`counts[name]` PNG files per subfolder; returns {path: pixels}."""
    written = {}
    for name, count in counts.items():
        for i in range(count):
            seed += 1
            path = root / name / f"img{i}.png"
            written[str(path)] = random_pixels(seed, shape)
            write_png(path, written[str(path)])
    return written


def test_classes_labels_and_pixels_of_an_rgb_folder(tmp_path):
    written = make_folder(tmp_path, {"dog": 2, "cat": 3, "unlabeled": 2, "zebra": 1})
    folder = load_image_folder(tmp_path)
    assert folder.class_names == ("cat", "dog", "zebra")
    np.testing.assert_array_equal(folder.labels, [0, 0, 0, 1, 1, -1, -1, 2])
    assert folder.labels.dtype == np.int32
    assert [Path(p).relative_to(tmp_path).as_posix() for p in folder.file_paths] == [
        "cat/img0.png", "cat/img1.png", "cat/img2.png", "dog/img0.png", "dog/img1.png",
        "unlabeled/img0.png", "unlabeled/img1.png", "zebra/img0.png"]
    assert folder.images.shape == (8, 6, 5, 3) and folder.images.dtype == np.float32
    for image, path in zip(folder.images, folder.file_paths, strict=True):
        np.testing.assert_allclose(image, written[path] / 255.0, atol=1e-6)


def test_grayscale_files_give_one_channel_and_mixed_files_three(tmp_path):
    gray = make_folder(tmp_path / "gray", {"a": 2, "b": 2}, shape=(4, 7, 1))
    folder = load_image_folder(tmp_path / "gray")
    assert folder.images.shape == (4, 4, 7, 1)
    np.testing.assert_allclose(folder.images[3], gray[folder.file_paths[3]] / 255.0, atol=1e-6)

    as_rgb = load_image_folder(tmp_path / "gray", channels=3)
    assert as_rgb.images.shape == (4, 4, 7, 3)
    np.testing.assert_array_equal(as_rgb.images[..., 0], as_rgb.images[..., 2])

    make_folder(tmp_path / "mixed", {"a": 1, "b": 1}, shape=(4, 7, 1))
    make_folder(tmp_path / "mixed", {"c": 1}, shape=(4, 7, 3))
    assert load_image_folder(tmp_path / "mixed").images.shape == (3, 4, 7, 3)


def test_image_size_resizes_bilinearly_like_keras(tmp_path):
    written = make_folder(tmp_path, {"a": 2, "b": 1}, shape=(9, 6, 3))
    folder = load_image_folder(tmp_path, image_size=(4, 8))
    assert folder.images.shape == (3, 4, 8, 3)
    expected = tf.image.resize(written[folder.file_paths[1]].astype(np.float32), (4, 8)) / 255
    np.testing.assert_allclose(folder.images[1], expected.numpy(), atol=1e-6)
    assert 0.0 <= folder.images.min() and folder.images.max() <= 1.0
    assert load_image_folder(tmp_path, image_size=5).images.shape == (3, 5, 5, 3)


def test_different_sizes_need_image_size(tmp_path):
    make_folder(tmp_path, {"a": 1}, shape=(6, 6, 3))
    make_folder(tmp_path, {"b": 1}, shape=(8, 6, 3))
    message = (rf"{re.escape(str(tmp_path / 'a' / 'img0.png'))} is 6x6, "
               rf"{re.escape(str(tmp_path / 'b' / 'img0.png'))} is 8x6.*--image_size")
    with pytest.raises(ValueError, match=message):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, image_size=(6, 6)).images.shape == (2, 6, 6, 3)


def test_hidden_files_and_folders_are_ignored_and_subfolders_read(tmp_path):
    make_folder(tmp_path, {"a": 1, "b": 1, "a/nested": 1, ".ipynb_checkpoints": 1})
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\1junk")
    (tmp_path / "README.txt").write_text("a note beside the class folders")
    folder = load_image_folder(tmp_path)
    assert folder.class_names == ("a", "b")
    assert [Path(p).relative_to(tmp_path).as_posix() for p in folder.file_paths] == [
        "a/img0.png", "a/nested/img0.png", "b/img0.png"]


def test_without_an_unlabeled_dir_every_subfolder_is_a_class(tmp_path):
    make_folder(tmp_path, {"a": 1, "unlabeled": 1})
    folder = load_image_folder(tmp_path, unlabeled_dir=None)
    assert folder.class_names == ("a", "unlabeled")
    np.testing.assert_array_equal(folder.labels, [0, 1])


def bad_folder(root: Path, case: str) -> tuple[Path, type, str]:
    """Builds a bad folder; returns (data_dir, error type, regex naming the offending path)."""
    if case == "missing":
        return root / "nowhere", FileNotFoundError, rf"data_dir={re.escape(str(root))}/nowhere$"
    make_folder(root, {"a": 2, "b": 2})
    if case == "garbage png":
        (root / "b" / "broken.png").write_bytes(b"this is not a png")
        path = root / "b" / "broken.png"
        return root, ValueError, rf"{re.escape(str(path))} is not a readable image \(Unknown"
    if case == "truncated png":
        good = (root / "a" / "img0.png").read_bytes()
        (root / "a" / "img0.png").write_bytes(good[: len(good) // 2])
        return root, ValueError, rf"{re.escape(str(root / 'a' / 'img0.png'))} is not a readable"
    if case == "random bytes":
        path = root / "a" / "noise.png"
        path.write_bytes(np.random.RandomState(0).bytes(300))
        return root, ValueError, rf"{re.escape(str(path))} is not a readable image \(Unknown"
    if case == "truncated jpeg":
        path = root / "b" / "photo.jpg"
        good = tf.io.encode_jpeg(random_pixels(1, (6, 5, 3))).numpy()
        path.write_bytes(good[: len(good) // 2])
        return root, ValueError, rf"{re.escape(str(path))} is not a readable image \(.*JPEG"
    if case == "text file":
        (root / "a" / "notes.txt").write_text("not an image")
        path = root / "a" / "notes.txt"
        return root, ValueError, rf"{re.escape(str(path))} is not an image file: .*\.png"
    if case == "empty class":
        (root / "c").mkdir()
        (root / "c" / ".DS_Store").write_bytes(b"junk")
        return root, ValueError, rf"class folder {re.escape(str(root / 'c'))} has no image"
    if case == "loose image":
        write_png(root / "stray.png", random_pixels(0, (6, 5, 3)))
        return root, ValueError, rf"{re.escape(str(root / 'stray.png'))} is not in a class"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "garbage png", "random bytes", "truncated png",
                                  "truncated jpeg", "text file", "empty class", "loose image"])
def test_a_bad_folder_is_refused_naming_the_path(tmp_path, case):
    data_dir, error, message = bad_folder(tmp_path, case)
    with pytest.raises(error, match=message):
        load_image_folder(data_dir)


def test_folders_without_two_classes_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no class folder here")
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / 'empty'))} has no class "
                                         "subfolder"):
        load_image_folder(tmp_path / "empty")
    make_folder(tmp_path / "one", {"a": 2, "unlabeled": 2})
    with pytest.raises(ValueError, match=r"at least 2 class subfolders.*it has a/ \(besides "
                                         r"unlabeled/\)"):
        load_image_folder(tmp_path / "one")
    for name in ("a", "b"):  # class folders, but no image anywhere
        (tmp_path / "nothing" / name).mkdir(parents=True)
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / 'nothing' / 'a'))} has "
                                         "no image"):
        load_image_folder(tmp_path / "nothing")


@pytest.mark.parametrize("image_size", [0, (4,), (4, -1), "28", (4.0, 4)])
def test_a_bad_image_size_is_refused(tmp_path, image_size):
    make_folder(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(ValueError, match=r"image_size must be .* Received: image_size="):
        load_image_folder(tmp_path, image_size=image_size)


def test_a_path_with_dot_dot_reads_the_same_folder(tmp_path):
    make_folder(tmp_path / "images", {"a": 1, "b": 1})
    (tmp_path / "elsewhere").mkdir()
    folder = load_image_folder(tmp_path / "elsewhere" / ".." / "images")
    assert folder.file_paths == (str(tmp_path / "images" / "a" / "img0.png"),
                                 str(tmp_path / "images" / "b" / "img0.png"))
