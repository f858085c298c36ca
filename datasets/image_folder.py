"""Your own images from a folder: one subfolder per class, and optionally `unlabeled/`.

The layout of `keras.utils.image_dataset_from_directory`, which lists, decodes and resizes the
files here:

    data_dir/
        cat/        *.png, *.jpg, *.jpeg, *.bmp, *.gif (subfolders are walked too)
        dog/
        unlabeled/  images without a label (optional)

Classes are the subfolders in alphabetical order (class id 0, 1, ...), `unlabeled/` excepted.
Unlike Keras, a folder that cannot be right is refused, naming the path: a missing or empty
`data_dir`, a class folder without images, a file that is not an image (a non-image file in a
class folder would be silently skipped by Keras), an image that does not decode (Keras would
fail in the middle of reading, without naming the file). Hidden files that are not images
(`.DS_Store`) and hidden folders beside the classes (`.ipynb_checkpoints`) are ignored; an image
file Keras reads is checked whatever its name.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["IMAGE_FORMATS", "UNLABELED_DIR", "ImageFolder", "load_image_folder"]

# The extensions keras.utils.image_dataset_from_directory reads.
IMAGE_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
UNLABELED_DIR = "unlabeled"
_BATCH = 256  # images decoded per tf.data batch when reading the folder


class ImageFolder(NamedTuple):
    """The images of a folder, in Keras' order (class by class, files sorted by path)."""

    images: np.ndarray  # float32 (N, H, W, C), pixels in [0, 1]
    labels: np.ndarray  # int32 (N,): index into class_names, -1 for the unlabeled/ images
    class_names: tuple[str, ...]
    file_paths: tuple[str, ...]  # the file of each image


def _check_image_size(image_size: object) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, numbers.Integral) else image_size
    if not (isinstance(size, Sequence) and len(size) == 2 and all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1
            for n in size)):
        raise ValueError("image_size must be None (the size of the files), an integer or "
                         f"(height, width), integers >= 1. Received: image_size={image_size!r}")
    return int(size[0]), int(size[1])


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _class_folders(data_dir: Path) -> list[str]:
    if not data_dir.exists():
        raise FileNotFoundError(f"The image folder does not exist. Received: data_dir={data_dir}")
    if not data_dir.is_dir():
        raise NotADirectoryError(f"The image folder must be a directory of class subfolders. "
                                 f"Received: data_dir={data_dir}")
    entries = sorted(os.listdir(data_dir))
    # The same subfolders as Keras: hidden ones (.ipynb_checkpoints) are not classes.
    folders = [name for name in entries if (data_dir / name).is_dir() and
               not name.startswith(".")]
    if not folders:
        raise ValueError(
            f"{data_dir} has no class subfolder. Put the images of each class in a subfolder "
            f"named after the class (and unlabeled images in {UNLABELED_DIR}/), e.g. "
            f"{data_dir / 'cat'}/1.png, {data_dir / 'dog'}/1.png.")
    loose = [name for name in entries if name.lower().endswith(IMAGE_FORMATS) and
             not name.startswith(".") and (data_dir / name).is_file()]
    if loose:
        raise ValueError(
            f"{data_dir / loose[0]} is not in a class subfolder, so it has no class (and would "
            f"be ignored). Move it into the subfolder of its class, or into {UNLABELED_DIR}/.")
    return folders


def _check_files(data_dir: Path, folders: Sequence[str], listed: set[str]) -> None:
    """Refuses a file that Keras would skip: it is not one of the image formats."""
    for folder in folders:
        for root, _, files in sorted(os.walk(data_dir / folder)):
            for name in sorted(files):
                path = Path(root) / name
                if os.fspath(path) not in listed and not _is_hidden(path, data_dir):
                    raise ValueError(
                        f"{path} is not an image file: the images must be "
                        f"{', '.join(IMAGE_FORMATS)} files. Remove it (or move it out of "
                        f"{data_dir}).")


def _decode(path: tf.Tensor, channels: int = 0) -> tf.Tensor:
    # Keras' own decoder call, so a file that decodes here decodes when Keras reads it.
    return tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)


def _image_shapes(paths: Sequence[str]) -> list[tuple[int, int, int]]:
    """(height, width, channels) of every file as it decodes; refuses one that does not."""
    shapes = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        lambda path: tf.shape(_decode(path)), num_parallel_calls=tf.data.AUTOTUNE)
    try:
        return [tuple(int(n) for n in shape) for shape in shapes.as_numpy_iterator()]
    except tf.errors.OpError:
        pass  # tf.data's error does not say which file failed: decode them one by one
    for path in paths:
        try:
            _decode(tf.constant(path))
        except tf.errors.OpError as error:
            reason = error.message.split("[Op:")[0].split("}}")[-1].strip()
            raise ValueError(f"{path} is not a readable image ({reason}). Remove or replace "
                             "it.") from None
    raise RuntimeError(f"Decoding the {len(paths)} images failed, but every one decodes on "
                       "its own: did the files change while they were read?")


def _common_size(paths: Sequence[str], shapes: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    first = shapes[0][:2]
    for path, shape in zip(paths, shapes, strict=True):
        if shape[:2] != first:
            raise ValueError(
                f"The images have different sizes ({paths[0]} is {first[0]}x{first[1]}, "
                f"{path} is {shape[0]}x{shape[1]}), so they need a common size: pass "
                "image_size=(height, width) (--image_size in runners.train_images) to resize "
                "them all.")
    return first


def load_image_folder(
    data_dir: str | os.PathLike,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    unlabeled_dir: str | None = UNLABELED_DIR,
) -> ImageFolder:
    """Reads every image of a folder of class subfolders into memory.

    Args:
        data_dir: the folder: one subfolder per class (its name is the class name), plus
            optionally `unlabeled_dir`, whose images are unlabeled (label -1).
        image_size: (height, width), or one integer for square images, to resize every image
            to (bilinear, as Keras); None: the size of the files, which must all agree.
        channels: 1 (grayscale) or 3 (RGB); None: from the files, 3 if any file has colour,
            else 1. An alpha channel is dropped (the model sees the colours only).
        unlabeled_dir: name of the subfolder of unlabeled images; None: every subfolder is a
            class.

    Returns:
        `ImageFolder(images, labels, class_names, file_paths)`: images float32 (N, H, W, C) in
        [0, 1]; labels int32 class ids (indices into class_names), -1 for unlabeled images.

    Raises:
        FileNotFoundError: `data_dir` does not exist.
        ValueError: naming the path, for a folder without class subfolders, fewer than 2
            classes, a class folder without images, a file that is not an image or does not
            decode, or images of different sizes without `image_size`.
    """
    import keras  # imported here: only this loader needs it

    size = _check_image_size(image_size)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None (from the files), 1 or 3. "
                         f"Received: channels={channels!r}")
    # Normalised as Keras' file paths are below ('a/../b' -> 'b'), so the two can be compared.
    data_dir = Path(os.path.normpath(data_dir))
    folders = _class_folders(data_dir)
    class_names = tuple(name for name in folders if name != unlabeled_dir)
    if len(class_names) < 2:
        found = ", ".join(f"{name}/" for name in class_names) or "none"
        raise ValueError(
            f"{data_dir} needs at least 2 class subfolders to classify; it has {found}"
            + (f" (besides {unlabeled_dir}/)" if unlabeled_dir in folders else "") + ".")

    def read(**options) -> tf.data.Dataset:
        return keras.utils.image_dataset_from_directory(
            os.fspath(data_dir), labels="inferred", label_mode="int", shuffle=False,
            batch_size=_BATCH, data_format="channels_last", verbose=False, **options)

    try:
        # Lists the files only: Keras reads them when the dataset is iterated.
        listing = read(image_size=(1, 1))
        file_paths = [os.path.normpath(path) for path in listing.file_paths]
        if list(listing.class_names) != folders:
            raise RuntimeError(f"Keras sees the classes {listing.class_names} in {data_dir}, "
                               f"this loader {folders}: please report this.")
    except ValueError as error:
        if "No images found" not in str(error):
            raise
        file_paths = []  # Keras found no image at all; the first empty class is named below
    _check_files(data_dir, folders, set(file_paths))
    counts = {name: 0 for name in folders}
    for path in file_paths:
        counts[Path(path).relative_to(data_dir).parts[0]] += 1
    for name in class_names:
        if counts[name] == 0:
            raise ValueError(f"The class folder {data_dir / name} has no image "
                             f"({', '.join(IMAGE_FORMATS)} files). Add images or remove it.")

    # Decoded twice: here to check every file and learn the size and colours Keras needs
    # to be told, then by Keras.
    shapes = _image_shapes(file_paths)
    if size is None:
        size = _common_size(file_paths, shapes)
    if channels is None:
        channels = 3 if any(shape[2] >= 3 for shape in shapes) else 1
    dataset = read(image_size=size, color_mode="rgb" if channels == 3 else "grayscale",
                   interpolation="bilinear")
    if [os.path.normpath(path) for path in dataset.file_paths] != file_paths:
        raise RuntimeError(f"The files of {data_dir} changed while they were read.")
    images, folder_ids = [], []
    for batch_images, batch_ids in dataset.as_numpy_iterator():
        images.append(batch_images / np.float32(255))  # Keras gives the 0..255 pixel values
        folder_ids.append(batch_ids)
    folder_ids = np.concatenate(folder_ids)
    # Keras numbers every subfolder, unlabeled/ included; ours are the classes only.
    to_label = np.array([class_names.index(name) if name in class_names else -1
                         for name in folders], np.int32)
    return ImageFolder(np.concatenate(images).astype(np.float32), to_label[folder_ids],
                       class_names, tuple(file_paths))
