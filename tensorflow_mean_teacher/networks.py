"""Any Keras network as a Mean Teacher tower: its structural copy, its weight pairs, its logits.

A student is a `keras.Model` (Sequential, functional or subclassed) mapping images to class
logits, or to a pair `(class_logits, consistency_logits)` for the two-head variant. The teacher
is a structural copy with its own variables; the EMA pairs the two networks' weights one to one,
in the order Keras creates them (the same for a network and its copy).
"""

from __future__ import annotations

import keras
import tensorflow as tf

# A network that defines this method gets a data-dependent initialisation from the first
# training batch (ConvLarge's); `MeanTeacher.fit` refuses such a network until it has had it.
INITIALIZATION_HOOK = "data_dependent_initialization"


def check_student(student) -> None:
    if not isinstance(student, keras.Model):
        raise TypeError(
            "student must be a keras.Model (Sequential, functional or subclassed) that maps "
            f"images to class logits. Received: student={student!r}"
        )


def structural_copy(network: keras.Model) -> keras.Model:
    """A network of the same structure (and name) with new variables: Keras' `clone_model`
    where it applies; a subclassed network is rebuilt from its config, as Keras recommends."""
    try:
        return keras.models.clone_model(network, clone_function=lambda layer: _fresh(layer))
    except ValueError:
        pass  # a subclassed model: clone_model cannot see its structure
    try:
        config = network.get_config()
    except NotImplementedError as error:
        raise TypeError(
            f"A subclassed student must implement get_config() (and from_config() if its "
            f"constructor needs it) so that the teacher can be a copy of it. Received: "
            f"student of type {type(network).__name__}"
        ) from error
    return network.__class__.from_config(config)


def _fresh(layer: keras.layers.Layer) -> keras.layers.Layer:
    if isinstance(layer, keras.layers.InputLayer):
        return layer
    return layer.__class__.from_config(layer.get_config())


def declared_image_shape(network) -> tuple[int, ...] | None:
    """(height, width, channels) from a network's declared input (a functional model's), if it
    has a complete one; else None."""
    try:
        shape = tuple(network.inputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return shape if len(shape) == 3 and all(d is not None for d in shape) else None


def weight_pairs(student: keras.Model, teacher: keras.Model) -> list[tuple]:
    """(student_weight, teacher_weight) for every weight, matched by creation order."""
    student_weights, teacher_weights = student.weights, teacher.weights
    if len(student_weights) != len(teacher_weights):
        raise ValueError(
            f"The teacher copy has {len(teacher_weights)} weights, the student "
            f"{len(student_weights)}: the student's structure cannot be copied. Build the "
            "student's layers in __init__ (not in call) and give it a complete get_config()."
        )
    for s, t in zip(student_weights, teacher_weights, strict=True):
        if tuple(s.shape) != tuple(t.shape):
            raise ValueError(
                f"Student weight {s.path} has shape {tuple(s.shape)} but its teacher copy "
                f"{t.path} has {tuple(t.shape)}: the copy is not the same structure."
            )
    return list(zip(student_weights, teacher_weights, strict=True))


def reseed(network: keras.Model, seed: int | None) -> None:
    """Gives every random generator of `network` a new state, so that a copy of a network whose
    layers have fixed seeds (e.g. `Dropout(0.5, seed=1)`) draws independently of it."""
    generators = [g for layer in network._flatten_layers() for g in layer._seed_generators]
    for index, generator in enumerate(generators):
        fresh = keras.random.SeedGenerator(None if seed is None else seed * 1009 + index)
        generator.state.assign(fresh.state.value)


def logit_pair(outputs, num_logits: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(class_logits, consistency_logits) in float32 from a network's outputs.

    One tensor: both. A pair: with num_logits 2 the second gives the consistency logits; with
    num_logits 1 the class logits serve both, as in the original (the second head is unused).
    """
    if isinstance(outputs, (tuple, list)):
        if len(outputs) != 2:
            raise ValueError(
                "A student returns class logits or a pair (class_logits, consistency_logits). "
                f"Received: {len(outputs)} outputs"
            )
        class_logits, cons_logits = outputs
    elif isinstance(outputs, dict):
        raise ValueError(
            "A student returns class logits or a pair (class_logits, consistency_logits), not "
            f"a dict. Received keys: {sorted(outputs)}"
        )
    else:
        if num_logits == 2:
            raise ValueError(
                "num_logits=2 needs a student that returns a pair (class_logits, "
                "consistency_logits). Received: one output"
            )
        class_logits = cons_logits = outputs
    if class_logits.shape.rank != 2:
        raise ValueError(
            "A student's class logits must have shape (batch, num_classes). Received: "
            f"shape {class_logits.shape}"
        )
    class_logits = tf.cast(class_logits, tf.float32)
    cons_logits = tf.cast(cons_logits, tf.float32)
    return (class_logits, cons_logits) if num_logits == 2 else (class_logits, class_logits)
