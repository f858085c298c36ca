"""Exports a trained network (the teacher by default) as a TensorFlow SavedModel for serving.

The SavedModel runs the network in inference mode (eval means, no dropout, no noise, no
augmentation) and has one signature, `serving_default`:

    inputs:  images         float32 (None, height, width, channels), the network's image shape
    outputs: logits         float32 (None, num_classes)
             probabilities  float32 (None, num_classes), the softmax of the logits

It loads with plain TensorFlow, without this project:
`tf.saved_model.load(path).signatures["serving_default"](images=x)["probabilities"]`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from tensorflow_mean_teacher.checkpoints import write_failure
from tensorflow_mean_teacher.faults import kill_point
from tensorflow_mean_teacher.networks import declared_image_shape

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")


def export_network(network: keras.Model | Callable, path: str | os.PathLike, *,
                   overwrite: bool = False, image_shape: tuple[int, int, int] | None = None,
                   track: list | None = None) -> Path:
    """Writes `network`'s inference-mode class logits and probabilities as a SavedModel.

    `network` is a tower (a Keras model returning `(class_logits, cons_logits)`), or a function
    of the images returning that pair whose Keras objects are listed in `track`. `image_shape`
    is the (height, width, channels) of the signature's images (default: the network's).
    Refuses a `path` that exists and is not empty unless `overwrite`: a SavedModel written over
    another leaves a mixture of both.
    """
    path = Path(path)
    previous = path.with_name(path.name + ".previous")
    if previous.exists() and not path.exists():
        # An export killed between its two renames: put the previous export back first.
        previous.rename(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not overwrite:
            raise FileExistsError(
                f"Export path {str(path)!r} exists and is not empty. Choose a new path, or pass "
                "overwrite=True (--overwrite_export on the runners) to replace it."
            )
    track = [network] if track is None else list(track)
    if not all(getattr(item, "built", True) for item in track):
        raise ValueError("The network is not built: initialise or train it before exporting.")
    if image_shape is None:
        image_shape = declared_image_shape(track[0])
        if image_shape is None:
            raise ValueError(
                f"The image shape of {getattr(track[0], 'name', track[0])!r} is unknown: pass "
                "image_shape=(height, width, channels)."
            )

    def serve(images):
        if isinstance(network, keras.Model):
            logits, _ = network(images, training=False)
        else:
            logits, _ = network(images)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    archive = keras.export.ExportArchive()
    for item in track:
        archive.track(item)
    archive.add_endpoint(
        name=SIGNATURE_NAME, fn=serve,
        input_signature=[tf.TensorSpec((None, *image_shape), tf.float32, name=INPUT_NAME)],
    )
    # Write next to the target and move it in place, so that an interrupted or failed export
    # (a kill, a full disk) leaves no half-written SavedModel behind and the previous one whole.
    staging = path.with_name(path.name + ".partial")
    try:
        if staging.exists():
            _remove_tree(staging)
        archive.write_out(str(staging), verbose=False)
    except (OSError, tf.errors.OpError) as error:
        _remove_quietly(staging)
        raise write_failure(
            "the export", path, error,
            f"The previous export {str(path)!r} is intact." if path.exists() else None,
        ) from error
    kill_point("export_staged")
    if path.exists():
        if previous.exists():
            _remove_tree(previous)
        path.rename(previous)
        kill_point("export_swapped")
    staging.rename(path)
    if previous.exists():
        _remove_tree(previous)
    return path


def _remove_tree(path: Path) -> None:
    tf.io.gfile.rmtree(str(path)) if path.is_dir() else path.unlink()


def _remove_quietly(path: Path) -> None:
    try:
        if path.exists():
            _remove_tree(path)
    except (OSError, tf.errors.OpError):
        pass
