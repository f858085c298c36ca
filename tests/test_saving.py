"""`model.save("x.keras")`/`load_model` and `save_weights`/`load_weights` keep the whole training
state: every weight, eval mean, random generator, the optimizer (slots, TF1 beta products, step)
and the initialisation flag, so that the reloaded model predicts and trains on bit for bit as the
saved one would."""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher import (
    ConvLarge,
    HyperParams,
    MeanTeacher,
    MeanTeacherSchedule,
    TF1Adam,
)
from tensorflow_mean_teacher.layers import Dropout, InputStage, WeightNormConv2D, WeightNormDense

# Every random perturbation on; a schedule short enough that the continued steps cross the
# beta-2 switch (end of ramp-up) and the start of the ramp-down (scheduled beta 1).
HP = dict(training_length=6, rampup_length=2, rampdown_length=3, flip_horizontally=True,
          max_consistency_cost=10.0)
BATCH = 8
VARIANTS = {
    "mean_teacher": {},
    "pi_model": {"ema_consistency": False},
    "two_logits": {"num_logits": 2, "logit_distance_cost": 0.01},
}


def data(n_batches=5, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.uniform(size=(n_batches * BATCH, 32, 32, 3)).astype(np.float32)
    y = np.where(np.arange(len(x)) % 2 == 0, np.arange(len(x)) % 10, -1).astype(np.int32)
    return x, y


def make_model(hp=None, width=4, run_eagerly=True, **kwargs):
    # Eager steps: a traced Mean Teacher step costs seconds to trace, for each model.
    model = MeanTeacher(HyperParams(**{**HP, **(hp or {})}), width=width, eval_mean_decay=0.99,
                        seed=0, **kwargs)
    model.compile(run_eagerly=run_eagerly)
    return model


def trained_model(hp=None, **kwargs):
    """After the data-dependent init and three `fit` steps."""
    x, y = data()
    model = make_model(hp, **kwargs)
    model.initialize_from_batch(x[:BATCH])
    model.fit(x[BATCH:4 * BATCH], y[BATCH:4 * BATCH], batch_size=BATCH, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 3
    return model


def state(model) -> dict:
    """Every variable of the model and of its optimizer, by a path of layer positions and names
    (the seed generators' own names are numbered per process, so not comparable between models;
    a cloned teacher may have its student's name)."""
    found, seen = {}, set()

    def add(key, variable):
        if id(variable) not in seen:  # the tied Pi branch shares the student's V, g, b
            seen.add(id(variable))
            assert key not in found, key
            found[key] = variable.numpy()

    def walk(layer, prefix):
        for variable in layer._trainable_variables + layer._non_trainable_variables:
            add(f"{prefix}/{variable.name}", variable)
        for index, generator in enumerate(layer._seed_generators):
            add(f"{prefix}/seed_generator_{index}", generator.state)
        for index, sublayer in enumerate(layer._layers):
            walk(sublayer, f"{prefix}/{index}:{sublayer.name}")

    walk(model, model.name)
    for variable in model.optimizer.variables:
        add(f"optimizer/{variable.path}", variable)
    every = {id(v) for v in model.variables} | {id(v) for v in model.optimizer.variables}
    assert seen == every, "a variable escaped the comparison"
    return found


def assert_same_state(expected: dict, actual: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def predictions(model, x) -> dict:
    """Both networks' logits in inference mode."""
    outputs = {"predict": model.predict(x, verbose=0)}
    for name in ("student", "teacher"):
        logits = getattr(model, name)(x, training=False)
        logits = logits if isinstance(logits, (tuple, list)) else (logits,)
        for index, value in enumerate(logits):
            outputs[f"{name}_{index}"] = np.asarray(value)
    return outputs


def continue_training(model, steps=2) -> tuple[dict, dict]:
    """`steps` more `fit` steps on fixed batches; the final state and the logs."""
    x, y = data(n_batches=steps, seed=1)
    history = model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0).history
    return state(model), history


def assert_same_continuation(saved, reloaded) -> None:
    x, _ = data(seed=2)
    expected_predictions = predictions(saved, x[:BATCH])
    for key, value in predictions(reloaded, x[:BATCH]).items():
        np.testing.assert_array_equal(value, expected_predictions[key], err_msg=key)
    expected_state, expected_logs = continue_training(saved)
    actual_state, actual_logs = continue_training(reloaded)
    assert_same_state(expected_state, actual_state)
    assert actual_logs == expected_logs
    assert int(reloaded.optimizer.iterations) == 5


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_keras_file_restores_the_training_state(tmp_path, variant):
    # One variant with fit's traced step, the others eager (the same state either way).
    model = trained_model(VARIANTS[variant], run_eagerly=variant != "mean_teacher")
    path = tmp_path / "mt.keras"
    model.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. Keras skipping compile() or weights
        reloaded = keras.models.load_model(path)
    assert type(reloaded.optimizer) is TF1Adam
    assert bool(reloaded.is_initialized.numpy())
    assert (reloaded.pi_branch is None) == (variant != "pi_model")
    assert_same_state(state(model), state(reloaded))
    assert_same_continuation(model, reloaded)


def test_weights_file_restores_the_training_state_of_a_fresh_model(tmp_path):
    model = trained_model()
    path = tmp_path / "mt.weights.h5"
    model.save_weights(path)
    fresh = make_model()
    fresh.build((None, 32, 32, 3))  # every variable, the optimizer's too; not initialised
    assert not bool(fresh.is_initialized.numpy())
    fresh.load_weights(path)
    assert bool(fresh.is_initialized.numpy())
    assert_same_state(state(model), state(fresh))
    assert_same_continuation(model, fresh)


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory):
    """A trained model (not to be trained further) and its `.weights.h5`."""
    model = trained_model()
    path = tmp_path_factory.mktemp("saved") / "mt.weights.h5"
    model.save_weights(path)
    return model, path


def test_weights_load_into_a_model_compiled_after_its_init(saved_weights):
    """The order of initialize_from_batch and compile does not change the optimizer's
    variables (BackupAndRestore loads into a model set up either way)."""
    model, path = saved_weights
    x, _ = data(seed=3)
    fresh = MeanTeacher(HyperParams(**HP), width=4, eval_mean_decay=0.99, seed=0)
    fresh.initialize_from_batch(x[:BATCH])
    fresh.compile()
    fresh.load_weights(path)
    assert_same_state(state(model), state(fresh))


def test_saving_an_uninitialised_model(tmp_path):
    x, y = data()
    model = make_model()
    model.save(tmp_path / "mt.keras")
    reloaded = keras.models.load_model(tmp_path / "mt.keras")
    assert not reloaded.built and not bool(reloaded.is_initialized.numpy())
    with pytest.raises(RuntimeError, match="initialize_from_batch"):
        reloaded.fit(x, y, batch_size=BATCH, verbose=0)


@pytest.mark.parametrize(("other", "message"), [
    ({"width": 8}, "could not be loaded"),  # other shapes
    ({"hp": {"ema_consistency": False}}, "could not be loaded"),  # a Pi branch not in the file
    ({"hp": {"student_dropout_probability": 0.0}}, "4 random generators.*states of 6"),
])
def test_a_load_into_another_configuration_fails(saved_weights, other, message):
    fresh = make_model(**other)
    fresh.build((None, 32, 32, 3))
    with pytest.raises(ValueError, match=message):
        fresh.load_weights(saved_weights[1])


def test_a_load_that_cannot_restore_the_optimizer(saved_weights):
    model, path = saved_weights
    other = make_model()
    other.compile(optimizer=keras.optimizers.SGD(0.1))
    other.build((None, 32, 32, 3))
    with pytest.raises(ValueError, match="optimizer state of 69 variables.*has 2"):
        other.load_weights(path)
    # Uncompiled (as load_model(compile=False)): the weights load, with a warning that the
    # optimizer state, and so the step, did not.
    uncompiled = MeanTeacher(HyperParams(**HP), width=4, eval_mean_decay=0.99, seed=0)
    uncompiled.build((None, 32, 32, 3))
    with pytest.warns(UserWarning, match="not compiled"):
        uncompiled.load_weights(path)
    x, _ = data(seed=2)
    for name in ("student", "teacher"):
        np.testing.assert_array_equal(getattr(uncompiled, name)(x[:BATCH])[0],
                                      getattr(model, name)(x[:BATCH])[0])


def test_configs_of_every_layer_and_of_the_optimizer_round_trip():
    hp = HyperParams(**HP)
    objects = [
        ConvLarge(width=4, num_logits=2, seed=3, name="tower"),
        WeightNormConv2D(8, 3, padding="valid", activation="leaky_relu", eval_mean_decay=0.9),
        WeightNormDense(10, eval_mean_decay=0.99),
        InputStage(flip_horizontally=True, translate_scale=3, seed=5),
        Dropout(0.3, seed=7),
        TF1Adam(learning_rate=MeanTeacherSchedule(hp, "learning_rate"),
                beta_1=MeanTeacherSchedule(hp, "adam_beta_1"), beta_2=0.99, epsilon=1e-6),
    ]
    for obj in objects:
        serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(obj)))
        copy = keras.saving.deserialize_keras_object(serialized)
        assert type(copy) is type(obj)
        assert copy.get_config() == obj.get_config()
    step = tf.constant(1, tf.int64)
    assert float(copy.beta_1(step)) == float(objects[-1].beta_1(step))
    # The tied Pi branch has no standalone config: MeanTeacher rebuilds it from its own.
    tied = ConvLarge(width=4, tied_to=objects[0])
    with pytest.raises(NotImplementedError):
        tied.get_config()


def test_keras_file_restores_a_custom_student_with_batch_norm(tmp_path):
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dropout(0.3, seed=1)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    student = keras.Model(inputs, keras.layers.Dense(10)(h), name="custom")
    model = MeanTeacher(HyperParams(**HP), student=student, seed=0)
    model.compile(run_eagerly=True)
    x, y = data()
    model.fit(x[:3 * BATCH], y[:3 * BATCH], batch_size=BATCH, shuffle=False, verbose=0)
    path = tmp_path / "mt.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert_same_state(state(model), state(reloaded))
    assert_same_continuation(model, reloaded)
