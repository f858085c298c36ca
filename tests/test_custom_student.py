"""MeanTeacher on networks other than ConvLarge: the copy, the EMA, the state policy, the stages."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher import HyperParams, MeanTeacher, networks

SHAPE = (28, 28, 1)
CLASSES = 3
HP = dict(training_length=20, rampup_length=4, rampdown_length=4, evaluation_span=10,
          max_consistency_cost=10.0, ema_decay_during_rampup=0.9, ema_decay_after_rampup=0.9,
          input_noise=0.0, translate=False)


def functional_student(seed=0, two_heads=False, dropout_seed=None):
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, strides=2, kernel_initializer=init)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    if dropout_seed is not None:
        x = keras.layers.Dropout(0.5, seed=dropout_seed)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(CLASSES, kernel_initializer=init)(x)
    if two_heads:
        return keras.Model(inputs, [logits, keras.layers.Dense(CLASSES)(x)])
    return keras.Model(inputs, logits)


@keras.saving.register_keras_serializable(package="tests")
class SubclassedStudent(keras.Model):
    def __init__(self, classes=CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.conv = keras.layers.Conv2D(4, 3, strides=2)
        self.norm = keras.layers.BatchNormalization()
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(classes)

    def call(self, images, training=False):
        return self.head(self.pool(self.norm(self.conv(images), training=training)))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, *SHAPE)).astype("float32")
    labels = rng.integers(0, CLASSES, n).astype("int32")
    labels[n // 2:] = -1
    return images, labels


def test_functional_student_is_ready_and_its_teacher_is_a_copy():
    model = MeanTeacher(HyperParams(**HP), student=functional_student(), seed=0)
    assert model.built and bool(model.is_initialized.numpy())
    assert model.image_shape == SHAPE and model.num_classes == CLASSES
    assert model.teacher is not model.student
    student_weights, teacher_weights = model.student.weights, model.teacher.weights
    assert len(student_weights) == len(teacher_weights) == 8
    for s, t in zip(student_weights, teacher_weights, strict=True):
        assert s is not t
        np.testing.assert_array_equal(s.numpy(), t.numpy())
    # Only the student is optimised.
    assert {id(v) for v in model.trainable_variables} == \
        {id(v) for v in model.student.trainable_variables}


def test_after_each_step_the_teacher_is_the_ema_of_the_pre_step_student():
    hp = HyperParams(**HP)
    model = MeanTeacher(hp, student=functional_student(), seed=0)
    model.compile()
    images, labels = data()
    optimized = model.student.trainable_weights
    teacher_of = dict(zip((id(v) for v in model.student.weights), model.teacher.weights,
                          strict=True))
    assert len(optimized) == 6  # conv kernel and bias, BN gamma and beta, dense kernel and bias
    for step in range(3):
        decay = hp.ema_decay_during_rampup
        student_before = [v.numpy() for v in optimized]
        teacher_before = [teacher_of[id(v)].numpy() for v in optimized]
        model.train_on_batch(images, labels)
        for index, weight in enumerate(optimized):
            expected = teacher_before[index] + (1 - decay) * (
                student_before[index] - teacher_before[index])
            np.testing.assert_allclose(teacher_of[id(weight)].numpy(), expected, rtol=1e-6,
                                       atol=1e-7, err_msg=f"{weight.path} at step {step}")
            # Every weight moved, so a weight left out of the EMA would fail above.
            if step > 0:
                assert not np.array_equal(teacher_of[id(weight)].numpy(), teacher_before[index])
        assert not all(np.array_equal(v.numpy(), b)
                       for v, b in zip(optimized, student_before, strict=True))


def test_fit_through_keras_on_28x28x1_with_three_classes():
    model = MeanTeacher(HyperParams(**HP), student=functional_student(), seed=0)
    model.compile()
    images, labels = data(32)
    history = model.fit(images, labels, batch_size=8, epochs=2, verbose=0).history
    assert int(model.optimizer.iterations.numpy()) == 8
    assert np.isfinite(history["loss"]).all()
    values = model.evaluate(images[:16], np.abs(labels[:16]), verbose=0, return_dict=True)
    assert values["loss"] == pytest.approx(values["eval/class_cost/ema"])
    assert model.predict(images[:4], verbose=0).shape == (4, CLASSES)


def _bn(network, name):
    layer = next(x for x in network.layers if isinstance(x, keras.layers.BatchNormalization))
    return getattr(layer, name).numpy()


def test_teacher_state_own_keeps_each_networks_statistics():
    images, labels = data()
    own = MeanTeacher(HyperParams(**HP), student=functional_student(), seed=0)
    own.compile()
    own.train_on_batch(images, labels)  # from here the teacher's weights differ from the student's
    before = _bn(own.teacher, "moving_mean")
    # The teacher's forward pass in training mode moves its own statistics (BatchNorm runs in
    # training mode in the teacher, as the original's teacher tower), with its own weights.
    conv_out = own.teacher.layers[1](own.teacher_input_stage(images))
    batch_mean = tf.reduce_mean(conv_out, axis=[0, 1, 2]).numpy()
    own.train_on_batch(images, labels)
    momentum = 0.99
    np.testing.assert_allclose(_bn(own.teacher, "moving_mean"),
                               momentum * before + (1 - momentum) * batch_mean, rtol=1e-4,
                               atol=1e-7)
    assert not np.allclose(_bn(own.teacher, "moving_mean"), _bn(own.student, "moving_mean"),
                           rtol=1e-3, atol=0)

    copy = MeanTeacher(HyperParams(**HP), student=functional_student(), teacher_state="copy",
                       seed=0)
    copy.compile()
    copy.train_on_batch(images, labels)
    copy.train_on_batch(images, labels)
    np.testing.assert_array_equal(_bn(copy.teacher, "moving_mean"),
                                  _bn(copy.student, "moving_mean"))
    np.testing.assert_array_equal(_bn(copy.teacher, "moving_variance"),
                                  _bn(copy.student, "moving_variance"))


def test_student_and_teacher_draw_their_own_perturbations():
    images, _ = data(4)
    hp = HyperParams(**{**HP, "input_noise": 0.3, "translate": True})
    model = MeanTeacher(hp, student=functional_student(dropout_seed=7), seed=0)
    student = model._tower("student", images, True)[0].numpy()
    teacher = model._tower("teacher", images, True)[0].numpy()
    assert not np.allclose(student, teacher, atol=1e-4)
    # Same weights and no randomness: the towers agree exactly.
    quiet = MeanTeacher(HyperParams(**HP), student=functional_student(), seed=0)
    np.testing.assert_allclose(quiet._tower("student", images, True)[0].numpy(),
                               quiet._tower("teacher", images, True)[0].numpy(), rtol=1e-6)
    # A user's fixed-seed Dropout is re-seeded in the copy: its masks differ from the student's.
    generators = [g for layer in model.teacher._flatten_layers() for g in layer._seed_generators]
    originals = [g for layer in model.student._flatten_layers() for g in layer._seed_generators]
    assert len(generators) == len(originals) == 1
    assert not np.array_equal(generators[0].state.numpy(), originals[0].state.numpy())


def test_sequential_and_subclassed_students():
    images, labels = data()
    sequential = keras.Sequential([
        keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(CLASSES)])
    for student in (sequential, SubclassedStudent()):
        model = MeanTeacher(HyperParams(**HP), student=student, seed=0)
        model.compile()
        model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 2
        trainable, _ = model._weight_pairs()
        assert len(trainable) == len(student.trainable_weights) > 0
        for teacher_weight, student_weight in trainable:
            assert teacher_weight.shape == student_weight.shape
            assert not teacher_weight.trainable


def test_two_heads_and_pi_model_with_a_custom_student():
    images, labels = data()
    two = MeanTeacher(HyperParams(**{**HP, "num_logits": 2, "logit_distance_cost": 0.01}),
                      student=functional_student(two_heads=True), seed=0)
    two.compile()
    values = two.train_on_batch(images, labels, return_dict=True)
    assert values["train/res_cost/1"] > 0
    with pytest.raises(ValueError, match="num_logits=2 needs a student that returns a pair"):
        MeanTeacher(HyperParams(num_logits=2), student=functional_student(), seed=0)

    pi = MeanTeacher(HyperParams(**{**HP, "ema_consistency": False, "input_noise": 0.3}),
                     student=functional_student(), seed=0)
    pi.compile()
    values = pi.train_on_batch(images, labels, return_dict=True)
    assert values["train/cons_cost/pi"] > 0  # two student passes with their own input noise
    assert values["loss"] == pytest.approx(values["train/total_cost/pi"])


class InitialisedNetwork(keras.Model):
    """A network with a data-dependent initialisation hook (as ConvLarge)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.head = keras.layers.Dense(CLASSES)
        self.seen = None

    def data_dependent_initialization(self, images):
        self(images)
        self.seen = images.shape
        self.head.bias.assign(tf.fill([CLASSES], 0.5))

    def call(self, images, training=False):
        return self.head(self.flatten(images))

    def get_config(self):
        return super().get_config()


def test_initialisation_hook_is_required_and_used():
    images, labels = data()
    model = MeanTeacher(HyperParams(**HP), student=InitialisedNetwork(), seed=0)
    model.compile()
    assert model.requires_initialization
    with pytest.raises(RuntimeError, match="initialize_from_batch"):
        model.fit(images, labels, batch_size=8, verbose=0)
    model.initialize_from_batch(images)
    assert model.student.seen == images.shape
    np.testing.assert_array_equal(model.teacher.head.bias.numpy(), [0.5] * CLASSES)
    model.fit(images, labels, batch_size=8, verbose=0)
    # A network without the hook needs nothing: fit builds it from the data.
    plain = MeanTeacher(HyperParams(**HP), student=SubclassedStudent(), seed=0)
    plain.compile()
    assert not plain.requires_initialization and not plain.built
    plain.fit(images, labels, batch_size=8, verbose=0)
    assert plain.image_shape == SHAPE


def test_bad_students_are_refused():
    with pytest.raises(TypeError, match="student must be a keras.Model"):
        MeanTeacher(student=keras.layers.Dense(3))
    with pytest.raises(ValueError, match="num_classes=5"):
        MeanTeacher(student=functional_student(), num_classes=5)
    with pytest.raises(ValueError, match="teacher_state must be one of"):
        MeanTeacher(student=functional_student(), teacher_state="ema")
    model = MeanTeacher(HyperParams(**HP), student=functional_student(), seed=0)
    with pytest.raises(ValueError, match=r"takes images of shape \(28, 28, 1\)"):
        model.build((None, 32, 32, 3))


def test_logit_pair_conventions():
    a, b = tf.ones([2, 3]), tf.zeros([2, 3])
    assert networks.logit_pair(a, 1)[1] is networks.logit_pair(a, 1)[0]
    class_logits, cons_logits = networks.logit_pair((a, b), 2)
    np.testing.assert_array_equal(cons_logits.numpy(), b.numpy())
    class_logits, cons_logits = networks.logit_pair((a, b), 1)  # second head unused
    np.testing.assert_array_equal(cons_logits.numpy(), a.numpy())
    with pytest.raises(ValueError, match="Received: 3 outputs"):
        networks.logit_pair((a, a, a), 1)
