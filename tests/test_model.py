import keras
import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher import HyperParams, MeanTeacher
from tensorflow_mean_teacher.schedules import SCHEDULED_QUANTITIES

QUICK = dict(rampup_length=5, rampdown_length=0, training_length=1000, max_learning_rate=0.003,
             input_noise=0.05, translate=False, student_dropout_probability=0.0,
             teacher_dropout_probability=0.0, max_consistency_cost=10.0,
             ema_decay_during_rampup=0.9, ema_decay_after_rampup=0.95)


def separable_data(n=120, seed=0, labeled=40):
    """Ten classes, each a fixed random pattern plus noise; the first `labeled` rows labeled."""
    rng = np.random.RandomState(seed)
    patterns = rng.uniform(size=(10, 32, 32, 3)).astype(np.float32)
    y = np.arange(n) % 10
    x = patterns[y] + 0.3 * rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    y = np.where(np.arange(n) < labeled, y, -1).astype(np.int32)
    return x, y


def make_model(**overrides):
    hp = {**QUICK, **overrides.pop("hp", {})}
    model = MeanTeacher(HyperParams(**hp), width=8, seed=overrides.pop("seed", 1), **overrides)
    model.compile()
    return model


def test_fit_refuses_an_uninitialised_model():
    model = make_model()
    x, y = separable_data(20)
    for call in (lambda: model.fit(x, y, epochs=1, verbose=0),
                 lambda: model.train_on_batch(x, y),
                 lambda: model.evaluate(x, y, verbose=0)):
        with pytest.raises(RuntimeError, match="initialize_from_batch"):
            call()


def test_argument_validation():
    with pytest.raises(ValueError, match="teacher_reads_ema must be one of .* Received: "
                                         "teacher_reads_ema='during'"):
        MeanTeacher(teacher_reads_ema="during")
    with pytest.raises(ValueError, match="Pi model .* Received: compute_pi_branch=False"):
        MeanTeacher({"ema_consistency": False}, compute_pi_branch=False)
    with pytest.raises(ValueError, match="Unknown hyperparameter"):
        MeanTeacher({"rampup": 3})
    with pytest.raises(ValueError, match="do not pass `loss`"):
        MeanTeacher(width=4).compile(loss="mse")


def test_initialisation_copies_the_student_into_the_teacher():
    model = make_model()
    x, y = separable_data(20)
    model.initialize_from_batch(tf.data.Dataset.from_tensor_slices((x, y)).batch(20))
    assert bool(model.is_initialized.numpy())
    for t_layer, s_layer in zip(model.teacher.weight_norm_layers,
                                model.student.weight_norm_layers, strict=True):
        for t, s in zip(t_layer.parameters, s_layer.parameters, strict=True):
            np.testing.assert_array_equal(t.numpy(), s.numpy())
        assert not np.allclose(s_layer.g.numpy(), 1.0)  # the data-dependent init ran
        np.testing.assert_array_equal(t_layer.eval_mean.numpy(), 0.0)
    assert len(model.trainable_variables) == 33  # the teacher is not optimised


def test_ema_reads_the_pre_step_student_then_adam_moves_it():
    model = make_model(hp={"rampup_length": 0})  # full learning rate from the first step
    x, y = separable_data(20)
    model.initialize_from_batch(x)
    model.train_on_batch(x, y)  # now teacher != student

    def parameters(network):
        return [v.numpy() for layer in network.weight_norm_layers for v in layer.parameters]

    student_before, teacher_before = parameters(model.student), parameters(model.teacher)
    logs = model.train_on_batch(x, y, return_dict=True)
    decay = logs["ema_decay"]
    assert decay == pytest.approx(0.95)  # after the (zero-length) ramp-up
    student_after, teacher_after = parameters(model.student), parameters(model.teacher)
    worst_pre = worst_post = 0.0
    for t0, t1, s0, s1 in zip(teacher_before, teacher_after, student_before, student_after,
                              strict=True):
        scale = max(np.abs(t0).max(), 1e-3)  # b starts at exactly zero
        worst_pre = max(worst_pre, np.abs(t1 - (t0 - (t0 - s0) * (1 - decay))).max() / scale)
        worst_post = max(worst_post, np.abs(t1 - (t0 - (t0 - s1) * (1 - decay))).max() / scale)
    assert worst_pre < 1e-6 and worst_post > 1e-5
    moved = [np.abs(s1 - s0).max() for s0, s1 in zip(student_before, student_after, strict=True)]
    assert max(moved) > 1e-3
    # The unused second head (num_logits=1) gets no update, as in TF1.
    assert moved[-3:] == [0.0, 0.0, 0.0]
    assert int(model.optimizer.iterations) == 2


def test_train_logs_use_the_original_names_and_the_step_values():
    model = make_model()
    x, y = separable_data(20)
    model.initialize_from_batch(x)
    logs = model.train_on_batch(x, y, return_dict=True)
    expected = {"loss", *SCHEDULED_QUANTITIES, "train/error/1", "train/error/ema",
                "train/class_cost/1", "train/class_cost/ema", "train/cons_cost/mt",
                "train/res_cost/1", "train/res_cost/ema", "train/total_cost/mt"}
    assert set(logs) == expected  # no Pi-branch metrics in a lean Mean Teacher step
    assert logs["loss"] == pytest.approx(logs["train/total_cost/mt"])
    # The classification cost is over the whole batch: 20 rows, all labeled here.
    assert logs["train/class_cost/1"] > 0
    pi = make_model(compute_pi_branch=True)
    pi.initialize_from_batch(x)
    assert {"train/cons_cost/pi", "train/total_cost/pi"} <= set(pi.train_on_batch(
        x, y, return_dict=True))


def test_fit_learns_and_the_teacher_tracks_the_student():
    model = make_model()
    x, y = separable_data(120)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(120, seed=0).repeat().batch(20)
    model.initialize_from_batch(train)
    initial = model.student.get_layer("conv_2_2").kernel.numpy()
    history = model.fit(train, epochs=4, steps_per_epoch=15, shuffle=False, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0], history["loss"]
    # Training-mode errors on the labeled rows. (Inference mode needs converged eval means,
    # a 0.999 moving average from zero: thousands of steps, as in the original.)
    assert history["train/error/1"][-1] < 0.2 < history["train/error/1"][0], history
    assert history["train/error/ema"][-1] < 0.2, history
    # The teacher is an average of recent students: close to the student, far from the start.
    student = model.student.get_layer("conv_2_2").kernel.numpy()
    teacher = model.teacher.get_layer("conv_2_2").kernel.numpy()
    assert np.abs(teacher - student).max() < 0.5 * np.abs(student - initial).max()
    predictions = model.predict(x[:5], verbose=0)
    np.testing.assert_allclose(predictions, model.teacher(x[:5], training=False)[0].numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pi_target_gradients", [True, False])
def test_pi_model_backpropagates_through_the_second_tower(pi_target_gradients):
    """FORMAT.md 2.1: the fixtures cannot see this path (their two towers are equal). With input
    noise the towers differ; the step's gradient must include the second tower's part (the
    original's and Laine & Aila's), or leave it out with pi_target_gradients=False."""
    hp = dict(ema_consistency=False, rampup_length=0, input_noise=0.3, max_consistency_cost=50.0)
    model = make_model(hp=hp, pi_target_gradients=pi_target_gradients)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    x, _ = separable_data(16)
    y = np.full(16, -1, np.int32)  # only the consistency cost: gradient from the Pi path alone
    model.initialize_from_batch(x)
    seed_states = [g.state for g in _seed_generators(model)]
    saved = [s.numpy() for s in seed_states]
    kernel = model.student.get_layer("conv_3_3").kernel

    def pi_gradient(stop_second_tower):
        restore_draws()
        with tf.GradientTape() as tape:
            class_1, _ = model.student(x, training=True)
            class_2, _ = model.pi_branch(x, training=True)
            if stop_second_tower:
                class_2 = tf.stop_gradient(class_2)
            s1, s2 = tf.nn.softmax(class_1), tf.nn.softmax(class_2)
            cost = tf.reduce_sum(50.0 * tf.reduce_mean(tf.square(s1 - s2), -1)) / 3
        return tape.gradient(cost, kernel).numpy()

    def restore_draws():
        for state, value in zip(seed_states, saved, strict=True):
            state.assign(value)

    full, stopped = pi_gradient(False), pi_gradient(True)
    assert np.abs(full - stopped).max() > 0.1 * np.abs(full).max()
    k0 = kernel.numpy()
    restore_draws()
    model.train_on_batch(x, y)  # SGD(1): the kernel moves by minus the gradient it used
    used = k0 - kernel.numpy()
    expected = full if pi_target_gradients else stopped
    np.testing.assert_allclose(used, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("shared_flip", [True, False])
def test_shared_flip_gives_the_pair_one_flip_per_image(shared_flip):
    """Without noise, translation or dropout the two Pi towers see the same images exactly when
    the flip is shared; with a flip per tower they differ (and, through the batch-norm means of
    the batch, so does every output)."""
    hp = dict(ema_consistency=False, input_noise=0.0, flip_horizontally=True)
    model = make_model(hp=hp, shared_flip=shared_flip)
    x, y = separable_data(32)
    model.initialize_from_batch(x)
    _, logits = model.compute_train_step(tf.constant(x), tf.constant(y))
    differs = np.abs(logits["class_logits_1"].numpy()
                     - logits["class_logits_2"].numpy()).max(axis=1) > 1e-4
    if shared_flip:
        assert not differs.any()
        # ... and the shared flip is a real one: the step's images are not the inputs.
        flipped = model.shared_flip_stage(tf.constant(x), training=True).numpy()
        assert 0 < np.mean([not np.array_equal(f, i) for f, i in zip(flipped, x, strict=True)]) < 1
    else:
        assert differs.all()


def _seed_generators(model):
    found = []
    for network in (model.student, model.pi_branch):
        for layer in network._flatten_layers():
            generator = getattr(layer, "seed_generator", None)
            if generator is not None and generator not in found:
                found.append(generator)
    return found


def test_same_seed_same_weights():
    def run():
        model = make_model(seed=4, hp={"translate": True, "student_dropout_probability": 0.3})
        x, y = separable_data(40)
        model.initialize_from_batch(x[:20])
        model.fit(x, y, batch_size=20, epochs=2, shuffle=False, verbose=0)
        return [v.numpy() for v in model.weights]

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_training_checkpoint_restores_every_state(tmp_path, dropout):
    hp = {"student_dropout_probability": dropout, "teacher_dropout_probability": dropout,
          "translate": True}
    model = make_model(hp=hp, compute_pi_branch=True)
    x, y = separable_data(20)
    model.initialize_from_batch(x)
    model.train_on_batch(x, y)
    path = model.training_checkpoint().save(str(tmp_path / "ckpt"))
    saved = [v.numpy() for v in model.variables]
    model.train_on_batch(x, y)
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(saved, model.variables,
                                                                 strict=True))
    model.training_checkpoint().restore(path).assert_consumed()
    for a, v in zip(saved, model.variables, strict=True):
        np.testing.assert_array_equal(a, v.numpy(), err_msg=v.path)
    assert int(model.optimizer.iterations) == 1


def test_initialisation_before_compile_then_training():
    model = MeanTeacher(HyperParams(**QUICK), width=4, seed=2)
    x, y = separable_data(20)
    model.initialize_from_batch(x)  # before compile(): the optimizer is built by compile's user
    model.compile()
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and int(model.optimizer.iterations) == 1


def test_error_metrics_average_over_labeled_examples_and_skip_unlabeled_batches():
    x, y = separable_data(20)
    unlabeled = np.full(10, -1, np.int32)

    def fresh():
        model = make_model(seed=5)
        model.initialize_from_batch(x)
        return model

    first = fresh().train_on_batch(x[:10], y[:10], return_dict=True)  # 10 labeled rows
    two_batches = tf.data.Dataset.from_tensor_slices(
        (x, np.concatenate([y[:10], unlabeled]))).batch(10)
    history = fresh().fit(two_batches, shuffle=False, verbose=0).history
    epoch = {k: v[-1] for k, v in history.items()}
    # The unlabeled batch (a NaN error in the original) adds nothing to the running error...
    assert epoch["train/error/1"] == pytest.approx(first["train/error/1"])
    assert epoch["train/error/ema"] == pytest.approx(first["train/error/ema"])
    # ...while the costs are means over batches.
    assert np.isfinite(epoch["train/class_cost/1"])
    assert epoch["train/class_cost/1"] < first["train/class_cost/1"]


def test_evaluation_reports_the_teachers_class_cost_as_loss():
    model = make_model()
    x, y = separable_data(20)
    model.initialize_from_batch(x)
    values = model.evaluate(x, y, batch_size=10, verbose=0, return_dict=True)
    logits = model.teacher(x, training=False)[0].numpy()
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(len(y)), y].mean()
    assert values["loss"] == pytest.approx(expected, rel=1e-5)
    assert values["loss"] == values["eval/class_cost/ema"]


def test_sample_weights_are_refused():
    model = make_model()
    x, y = separable_data(20)
    model.initialize_from_batch(x)
    with pytest.raises(ValueError, match="does not support sample weights"):
        model.fit(x, y, sample_weight=np.ones(len(y)), batch_size=10, verbose=0)
