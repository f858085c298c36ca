"""Temporal Ensembling (Laine & Aila, ICLR 2017) against numpy re-derivations of tempens' train.py.

Tiny on purpose: ConvLarge of width 8 on 16x16 images, N = 40 examples in minibatches of 12
(3 steps an epoch, 4 rows of each epoch's permutation dropped), 4 classes.
"""

import dataclasses
import json
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

import datasets
from tensorflow_mean_teacher.callbacks import RunInterrupted, TrainStreamEnded
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.optimizer import TF1Adam
from tensorflow_mean_teacher.temporal_ensembling import TemporalEnsembling
from tensorflow_mean_teacher.temporal_ensembling_params import (
    TemporalEnsemblingParams,
    TemporalEnsemblingSchedule,
)
from tensorflow_mean_teacher.training import RunConfig, train
from tests.test_training import SendSignal, checkpoint_state, logs_without_timing

N, LABELED, BATCH, CLASSES = 40, 12, 12, 4
STEPS = N // BATCH  # 3 steps an epoch; N - STEPS * BATCH = 4 rows dropped from each epoch
ALPHA = 0.6
# Input noise and dropout on: the recorded quantities are those of the step that ran.
NETWORK = dict(translate=False, input_noise=0.15, student_dropout_probability=0.5)


def data(seed=0):
    rng = np.random.RandomState(seed)
    patterns = rng.uniform(size=(CLASSES, 16, 16, 3)).astype(np.float32)
    y = (np.arange(N) % CLASSES).astype(np.int32)
    x = patterns[y] + 0.3 * rng.normal(size=(N, 16, 16, 3)).astype(np.float32)
    return x, np.where(np.arange(N) < LABELED, y, -1).astype(np.int32), y


def params(**changes):
    return TemporalEnsemblingParams(**{**dict(
        num_examples=N, num_labels=LABELED, minibatch_size=BATCH, num_epochs=4, rampup_length=2,
        rampdown_length=2, learning_rate_max=0.003, unsup_weight_max=30.0,
        prediction_decay=ALPHA), **changes})


def softmax64(logits):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# The ensemble, its targets and the loss, step by step through `fit`


class Recording(TemporalEnsembling):
    """Keeps what its last training step used (for a callback to read after the step)."""

    def start_recording(self):
        b, c = self.params.minibatch_size, self.num_classes
        record = {
            "logits": tf.Variable(tf.zeros((b, c)), trainable=False),
            "targets": tf.Variable(tf.zeros((b, c)), trainable=False),
            "indices": tf.Variable(tf.zeros((b,), tf.int64), trainable=False),
            "labels": tf.Variable(tf.zeros((b,), tf.int32), trainable=False),
            "loss": tf.Variable(0.0, trainable=False),
            "unsup_weight": tf.Variable(0.0, trainable=False),
            "learning_rate": tf.Variable(0.0, trainable=False),
            "class_cost": tf.Variable(0.0, trainable=False),
            "cons_cost": tf.Variable(0.0, trainable=False),
        }
        object.__setattr__(self, "_record", record)  # not part of the model's state

    def compute_train_step(self, images, labels, indices=None):
        values, outputs = super().compute_train_step(images, labels, indices)
        r = self._record
        r["logits"].assign(outputs["class_logits_1"])
        r["targets"].assign(outputs["targets"])
        r["indices"].assign(tf.cast(indices, tf.int64))
        r["labels"].assign(tf.cast(labels, tf.int32))
        r["loss"].assign(values["loss"])
        r["unsup_weight"].assign(values["unsup_weight"])
        r["learning_rate"].assign(values["learning_rate"])
        r["class_cost"].assign(values["train/class_cost/1"])
        r["cons_cost"].assign(values["train/cons_cost/te"])
        return values, outputs


class EveryStep(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        m = self.model
        self.steps.append({
            **{name: v.numpy() for name, v in m._record.items()},
            "ensemble": m.ensemble.numpy(), "epoch_predictions": m.epoch_predictions.numpy(),
            "iterations": int(m.optimizer.iterations.numpy()),
        })


@pytest.fixture(scope="module")
def three_epochs():
    """9 steps (3 epochs) of `fit` on the epoch stream, each step's quantities recorded."""
    x, y, _ = data()
    model = Recording(params(), HyperParams(**NETWORK), num_classes=CLASSES, width=8, seed=2)
    model.compile()
    stream = datasets.epoch_dataset(x, y, batch_size=BATCH, seed=5)
    model.initialize_from_batch(stream)
    model.start_recording()
    recorder = EveryStep()
    model.fit(stream.skip(1), steps_per_epoch=STEPS, epochs=3, verbose=0, callbacks=[recorder])
    # The stream's own rows, step by step, to check the model got those.
    rows = [b[2].numpy() for b in stream.skip(1).take(3 * STEPS)]
    return model, recorder.steps, rows, y


def test_each_step_trains_on_the_streams_batch_once(three_epochs):
    _, steps, rows, y = three_epochs
    assert [s["iterations"] for s in steps] == list(range(1, 3 * STEPS + 1))
    for s, batch_rows in zip(steps, rows, strict=True):
        np.testing.assert_array_equal(s["indices"], batch_rows)
        np.testing.assert_array_equal(s["labels"], y[batch_rows])


def test_the_ensemble_follows_the_numpy_recurrence_over_3_epochs(three_epochs):
    _, steps, _, _ = three_epochs
    ensemble = np.zeros((N, CLASSES))  # Z, float64 as tempens' numpy array
    gathered = np.zeros((N, CLASSES))  # this epoch's z; rows not trained on stay 0
    seen_before = np.zeros(N, bool)
    decayed_without_update = 0
    for t, s in enumerate(steps):
        z = tf.cast(tf.nn.softmax(tf.constant(s["logits"])), tf.float64).numpy()
        gathered[s["indices"]] = z
        if (t + 1) % STEPS:  # within the epoch: the batch's z is stored at its rows, Z unchanged
            np.testing.assert_array_equal(s["epoch_predictions"], gathered)
            np.testing.assert_array_equal(s["ensemble"], ensemble)
            continue
        # The epoch's last step: Z <- alpha Z + (1 - alpha) z, the epoch's z reset to 0.
        trained = np.zeros(N, bool)
        for u in steps[t + 1 - STEPS: t + 1]:
            trained[u["indices"]] = True
        dropped = np.flatnonzero(~trained)
        assert len(dropped) == N - STEPS * BATCH == 4
        assert np.all(gathered[dropped] == 0.0)  # z = 0 where the row fell in the dropped part
        previous = ensemble
        ensemble = ALPHA * ensemble + (1.0 - ALPHA) * gathered
        np.testing.assert_array_equal(s["ensemble"], ensemble)
        np.testing.assert_array_equal(s["epoch_predictions"], 0.0)
        # The dropped rows only decay: alpha * Z.
        np.testing.assert_array_equal(s["ensemble"][dropped], ALPHA * previous[dropped])
        decayed_without_update += int(np.sum(seen_before[dropped]))
        seen_before |= trained
        gathered = np.zeros((N, CLASSES))
    # Some row was dropped after having been trained on: the decay-only case was exercised.
    assert decayed_without_update > 0
    np.testing.assert_array_equal(steps[-1]["ensemble"], ensemble)
    # Each trained row's Z sums to 1 - alpha^(epochs it was trained in)
    # (softmaxes sum to 1; a dropped epoch adds 0).
    assert np.all(ensemble.sum(axis=1) <= 1.0 - ALPHA ** 3 + 1e-6)


def test_the_targets_of_epoch_e_are_the_bias_corrected_ensemble(three_epochs):
    _, steps, _, _ = three_epochs
    ensemble = np.zeros((N, CLASSES))
    for t, s in enumerate(steps):
        epoch = t // STEPS
        if epoch == 0:
            expected = np.zeros((BATCH, CLASSES), np.float32)
        else:
            # Z / (1 - alpha^e) in float64 (tempens' numpy), then float32 (its floatX).
            expected = (ensemble[s["indices"]] / (1.0 - ALPHA ** epoch)).astype(np.float32)
            assert np.abs(expected).sum() > 0
        np.testing.assert_array_equal(s["targets"], expected, err_msg=f"step {t}")
        if (t + 1) % STEPS == 0:
            ensemble = s["ensemble"]  # checked against numpy by the test above


def test_the_loss_is_the_masked_cross_entropy_plus_the_weighted_squared_distance(three_epochs):
    _, steps, _, _ = three_epochs
    p = params()
    for t, s in enumerate(steps):
        epoch = t // STEPS
        z = softmax64(s["logits"])
        labels = s["labels"]
        labeled = labels >= 0
        # tempens: mean over the whole batch of crossentropy * mask (0 for unlabeled rows).
        costs = np.zeros(BATCH)
        costs[labeled] = -np.log(z[labeled, labels[labeled]])
        class_cost = costs.mean()
        cons_cost = np.mean((z - s["targets"].astype(np.float64)) ** 2)
        if epoch == 0:
            weight = 0.0
        else:
            ramp = np.exp(-5.0 * (1.0 - epoch / p.rampup_length) ** 2) \
                if epoch < p.rampup_length else 1.0
            weight = ramp * p.unsup_weight_max * LABELED / N
            assert weight > 0
        assert s["unsup_weight"] == np.float32(weight)
        np.testing.assert_allclose(s["class_cost"], class_cost, rtol=1e-5)
        np.testing.assert_allclose(s["cons_cost"], cons_cost, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(
            s["loss"], class_cost + np.float32(weight) * cons_cost, rtol=1e-5, err_msg=f"step {t}")
    # The run had mixed batches and a non-zero consistency term.
    assert any(0 < (s["labels"] >= 0).sum() < BATCH for s in steps)
    assert any(s["unsup_weight"] > 0 and s["cons_cost"] > 0 for s in steps)


def test_a_step_without_labeled_rows_costs_only_the_consistency(three_epochs):
    """compute_train_step on its own: a batch of unlabeled rows in epoch 3 (w > 0)."""
    model, _, _, _ = three_epochs
    x, y, _ = data()
    rows = np.arange(LABELED, LABELED + BATCH)
    assert np.all(y[rows] == -1)
    values, outputs = model.compute_train_step(
        tf.constant(x[rows]), tf.constant(y[rows]), tf.constant(rows, tf.int64))
    z = softmax64(outputs["class_logits_1"].numpy())
    assert float(values["train/class_cost/1"]) == 0.0
    assert float(values["epoch"]) == 3.0
    expected = (model.ensemble.numpy()[rows] / (1 - ALPHA ** 3)).astype(np.float32)
    np.testing.assert_array_equal(outputs["targets"].numpy(), expected)
    weight = float(values["unsup_weight"])
    assert weight == np.float32(30.0 * LABELED / N)  # after the ramp-up
    np.testing.assert_allclose(float(values["loss"]), weight * np.mean((z - expected) ** 2),
                               rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# tempens' Adam


class Table(keras.optimizers.schedules.LearningRateSchedule):
    """values[step], as a schedule of `optimizer.iterations`."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, step):
        return tf.gather(tf.constant(self.values, tf.float32), step)


def robust_adam(start, gradients, learning_rates, beta1s, beta2, epsilon):
    """tempens' robust_adam re-derived in numpy float64 (without its NaN clearing)."""
    p = start.astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    trajectory = []
    for t, (g, lr, b1) in enumerate(zip(gradients, learning_rates, beta1s, strict=True), 1):
        coef = lr * np.sqrt(1.0 - beta2 ** t) / (1.0 - b1 ** t)
        m = b1 * m + (1.0 - b1) * g
        v = beta2 * v + (1.0 - beta2) * g ** 2
        p = p - coef * m / (np.sqrt(v) + epsilon)
        trajectory.append((p, m, v))
    return trajectory


def tf1_running_adam(start, gradients, learning_rates, beta1s, beta2, epsilon):
    """TF1's AdamOptimizer with running beta products (the other mode), in numpy float64."""
    p = start.astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    b1p, b2p = beta1s[0], beta2
    trajectory = []
    for g, lr, b1 in zip(gradients, learning_rates, beta1s, strict=True):
        coef = lr * np.sqrt(1.0 - b2p) / (1.0 - b1p)
        m = b1 * m + (1.0 - b1) * g
        v = beta2 * v + (1.0 - beta2) * g ** 2
        p = p - coef * m / (np.sqrt(v) + epsilon)
        b1p, b2p = b1p * b1, b2p * beta2
        trajectory.append((p, m, v))
    return trajectory


def test_tempens_adam_is_robust_adam_with_a_changing_lr_and_beta1():
    rng = np.random.RandomState(0)
    start = rng.normal(size=(3, 4)).astype(np.float32)
    gradients = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(5)]
    # float32 values (as the schedules give them), used in float64 by the references.
    learning_rates = np.float32([0.01, 0.02, 0.02, 0.005, 0.001]).astype(np.float64)
    beta1s = np.float32([0.9, 0.9, 0.8, 0.7, 0.5]).astype(np.float64)
    beta2, epsilon = float(np.float32(0.99)), 1e-8
    reference = {"current": robust_adam(start, gradients, learning_rates, beta1s, beta2, epsilon),
                 "running": tf1_running_adam(start, gradients, learning_rates, beta1s, beta2,
                                             epsilon)}
    got = {}
    for mode in ("current", "running"):
        variable = keras.Variable(start)
        optimizer = TF1Adam(learning_rate=Table(learning_rates), beta_1=Table(beta1s),
                            beta_2=0.99, epsilon=epsilon, beta_powers=mode)
        got[mode] = []
        for t, g in enumerate(gradients):
            optimizer.apply([tf.constant(g)], [variable])
            assert int(optimizer.iterations) == t + 1
            m, v = optimizer.slots(variable)
            got[mode].append((variable.numpy(), m.numpy(), v.numpy()))
        for t, (mine, ref) in enumerate(zip(got[mode], reference[mode], strict=True)):
            for name, a, b in zip("pmv", mine, ref, strict=True):
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7,
                                           err_msg=f"{mode} {name} after step {t + 1}")
    # While beta1 is constant (steps 1-2) the two corrections agree; once it changes they don't.
    for t in (0, 1):
        np.testing.assert_allclose(got["current"][t][0], got["running"][t][0], rtol=1e-6)
    for t in (2, 3, 4):
        difference = np.abs(got["current"][t][0] - got["running"][t][0]).max()
        assert difference > 1e-4, f"step {t + 1}: {difference}"
    # The numpy references differ likewise (the test above is not vacuous).
    assert np.abs(reference["current"][4][0] - reference["running"][4][0]).max() > 1e-4


def test_the_model_uses_tempens_adam_with_its_schedules():
    p = params(adam_beta2=0.995, adam_epsilon=1e-7)
    optimizer = TemporalEnsembling(p, HyperParams(**NETWORK), num_classes=CLASSES,
                                   width=8).default_optimizer()
    assert isinstance(optimizer, TF1Adam) and optimizer.beta_powers == "current"
    assert optimizer.beta_2 == 0.995 and optimizer.epsilon == 1e-7
    assert isinstance(optimizer.beta_1, TemporalEnsemblingSchedule)
    assert optimizer.beta_1.quantity == "adam_beta_1" and optimizer.beta_1.params == p
    assert optimizer._learning_rate.quantity == "learning_rate"


# ----------------------------------------------------------------------------------------------
# The epoch stream


def test_the_epoch_stream_gives_each_row_once_per_epoch_and_names_it():
    x, y, _ = data()
    n_epochs = 4
    n_batches = 1 + n_epochs * STEPS
    full = list(datasets.epoch_dataset(x, y, batch_size=BATCH, seed=3).take(n_batches))
    for images, labels, indices in full:
        assert indices.dtype == tf.int64 and labels.dtype == tf.int32
        assert images.dtype == tf.float32 and images.shape == (BATCH, 16, 16, 3)
        np.testing.assert_array_equal(images.numpy(), x[indices.numpy()])
        np.testing.assert_array_equal(labels.numpy(), y[indices.numpy()])
    initialisation = full[0][2].numpy()
    assert len(set(initialisation)) == BATCH
    epochs = [np.concatenate([full[1 + STEPS * e + k][2].numpy() for k in range(STEPS)])
              for e in range(n_epochs)]
    for rows in epochs:
        assert len(rows) == len(set(rows)) == STEPS * BATCH  # each row at most once, 4 dropped
        assert rows.min() >= 0 and rows.max() < N
    assert len({tuple(rows) for rows in epochs}) == n_epochs  # a fresh order every epoch
    dropped = [frozenset(range(N)) - frozenset(rows) for rows in epochs]
    assert len(set(dropped)) > 1  # not always the same rows left out
    other = datasets.epoch_dataset(x, y, batch_size=BATCH, seed=4)
    assert not np.array_equal(next(iter(other.skip(1)))[2].numpy(), full[1][2].numpy())
    # N a multiple of the batch: every row every epoch.
    whole = list(datasets.epoch_dataset(x, y, batch_size=10, seed=3).take(1 + 2 * 4))
    for e in range(2):
        rows = np.concatenate([whole[1 + 4 * e + k][2].numpy() for k in range(4)])
        assert sorted(rows) == list(range(N))


def test_skipping_batches_resumes_the_same_stream():
    x, y, _ = data()
    n_batches = 1 + 4 * STEPS
    full = [b[2].numpy() for b in datasets.epoch_dataset(x, y, batch_size=BATCH, seed=3)
            .take(n_batches)]
    for skip in range(n_batches):
        resumed = datasets.epoch_dataset(x, y, batch_size=BATCH, seed=3, skip_batches=skip)
        got = [b[2].numpy() for b in resumed.take(n_batches - skip)]
        assert len(got) == n_batches - skip
        for k, (a, b) in enumerate(zip(got, full[skip:], strict=True)):
            np.testing.assert_array_equal(a, b, err_msg=f"skip={skip}, batch {skip + k}")
    # Far into the run: whole epochs skipped by the epoch counter.
    far = 1 + 40 * STEPS + 2
    a = next(iter(datasets.epoch_dataset(x, y, batch_size=BATCH, seed=3, skip_batches=far)))
    b = next(iter(datasets.epoch_dataset(x, y, batch_size=BATCH, seed=3).skip(far)))
    np.testing.assert_array_equal(a[2].numpy(), b[2].numpy())
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())


def test_the_epoch_stream_refuses_bad_arguments():
    x, y, _ = data()
    with pytest.raises(ValueError, match=r"batch_size \(41\) must be at most the number of "
                                         r"training examples \(40\)"):
        datasets.epoch_dataset(x, y, batch_size=41)
    with pytest.raises(ValueError, match=r"Received: skip_batches=-1"):
        datasets.epoch_dataset(x, y, batch_size=BATCH, skip_batches=-1)


# ----------------------------------------------------------------------------------------------
# Resuming through `train`


def run_config(**changes):
    te = params()
    hp = HyperParams(**NETWORK, training_length=te.training_length, evaluation_span=5,
                     print_span=2)
    return RunConfig(**{**dict(
        hyperparams=hp, batch_size=BATCH, width=8, num_classes=CLASSES, eval_mean_decay=0.9,
        seed=3, data={"dataset": "synthetic"}, method="temporal_ensembling",
        temporal_ensembling=te), **changes})


def streams():
    x, y, true_y = data()

    def stream(skip):
        return datasets.epoch_dataset(x, y, batch_size=BATCH, seed=1, skip_batches=skip)

    evaluation = tf.data.Dataset.from_tensor_slices((x[LABELED:], true_y[LABELED:])).batch(10)
    return stream, evaluation


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    stream, evaluation = streams()
    directory = tmp_path_factory.mktemp("whole")
    results = train(run_config(), stream, evaluation, directory, console=lambda _: None)
    assert results["step"] == 12
    return directory, results


def interrupt_by_signal(stream, evaluation, directory):
    # Sent after step 6, handled at the next batch end: step 7 is checkpointed.
    with pytest.raises(RunInterrupted) as stopped:
        train(run_config(), stream, evaluation, directory, console=lambda _: None,
              callbacks=[SendSignal(6, signal.SIGTERM)])
    assert stopped.value.step == 7 and stopped.value.checkpoint.endswith("ckpt-7")


def interrupt_by_a_dry_stream(stream, evaluation, directory):
    def dry_stream(skip):  # batch 0 (initialisation) and steps 1..7
        return stream(skip).take(max(0, 8 - skip))

    with pytest.raises(TrainStreamEnded, match="ended at step 7, before training_length=12"):
        train(run_config(), dry_stream, evaluation, directory, console=lambda _: None)


@pytest.mark.parametrize("interrupt", [interrupt_by_signal, interrupt_by_a_dry_stream],
                         ids=["sigterm", "dry-stream"])
def test_a_run_interrupted_within_an_epoch_resumes_bit_equal(tmp_path, uninterrupted_run,
                                                             interrupt):
    """Interrupted after step 7: one batch into epoch 2 (steps 7 to 9), between the evaluations
    at 5 and 10. The rerun ends as the uninterrupted run: weights, optimizer, the ensemble, this
    epoch's predictions, random states (and, after a signal, the logs)."""
    whole_dir, whole = uninterrupted_run
    stream, evaluation = streams()
    interrupt(stream, evaluation, tmp_path)
    assert not (tmp_path / "results.json").exists()
    at_cut = tf.train.load_checkpoint(str(tmp_path / "checkpoints" / "ckpt-7"))
    names = at_cut.get_variable_to_shape_map()
    [predictions] = [n for n in names if n.startswith("temporal_ensemble/epoch_predictions")]
    [ensemble] = [n for n in names if n.startswith("temporal_ensemble/ensemble")]
    # Mid-epoch: one batch of this epoch's predictions gathered, Z after two epochs.
    assert at_cut.get_tensor(ensemble).dtype == np.float64
    assert at_cut.get_tensor(predictions).dtype == np.float64
    assert np.count_nonzero(at_cut.get_tensor(predictions).any(axis=1)) == BATCH
    assert np.count_nonzero(at_cut.get_tensor(ensemble).any(axis=1)) > STEPS * BATCH

    lines = []
    resumed = train(run_config(), stream, evaluation, tmp_path, console=lines.append)
    assert lines[0].endswith("at step 7")
    assert resumed["step"] == 12
    reference, state = checkpoint_state(whole_dir), checkpoint_state(tmp_path)
    assert state.keys() == reference.keys()
    assert ensemble in state and predictions in state
    for name, value in reference.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    assert np.abs(reference[ensemble]).sum() > 0
    # 12 steps = 4 whole epochs: the last step's epoch end reset the epoch's predictions.
    np.testing.assert_array_equal(reference[predictions], 0.0)
    for key in ("eval/error/1", "eval/class_cost/1", "eval/error/ema"):
        assert resumed[key] == whole[key], key
    logs, reference_logs = logs_without_timing(tmp_path), logs_without_timing(whole_dir)
    if interrupt is interrupt_by_signal:
        assert logs == reference_logs
    else:
        # A dry stream ends a Keras epoch, whose end evaluates: an extra row at step 7. The
        # training means survive that evaluation, so every training row is the uninterrupted
        # run's.
        validation = [r for r in logs["validation_log.csv"] if r["step"] != "7"]
        assert validation == reference_logs["validation_log.csv"]
        assert logs["training_log.csv"] == reference_logs["training_log.csv"]
    config = json.loads((whole_dir / "config.json").read_text())
    assert config["method"] == "temporal_ensembling"
    assert config["temporal_ensembling"] == params().to_dict()


def test_a_run_config_must_agree_with_its_temporal_ensembling_settings():
    with pytest.raises(ValueError, match=r"batch_size must equal temporal_ensembling."
                                         r"minibatch_size. Received: batch_size=10, "
                                         r"minibatch_size=12"):
        run_config(batch_size=10)
    with pytest.raises(ValueError, match=r"\(4 x 3 = 12\). Received: training_length=13"):
        run_config(hyperparams=HyperParams(training_length=13))
    with pytest.raises(ValueError, match="needs its settings"):
        run_config(temporal_ensembling=None)
    config = run_config(temporal_ensembling=params().to_dict())
    assert config.temporal_ensembling == params()
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# ----------------------------------------------------------------------------------------------
# Saving, refusals


def test_a_keras_file_restores_the_ensemble_weights_and_the_next_step_exactly(tmp_path):
    x, y, _ = data()
    model = TemporalEnsembling(params(), HyperParams(**NETWORK), num_classes=CLASSES, width=8,
                               seed=2)
    model.compile()
    stream = datasets.epoch_dataset(x, y, batch_size=BATCH, seed=0)
    model.initialize_from_batch(stream)
    model.fit(stream.skip(1), steps_per_epoch=STEPS + 1, epochs=1, verbose=0)  # mid epoch 1
    assert np.abs(model.ensemble.numpy()).sum() > 0
    assert np.abs(model.epoch_predictions.numpy()).sum() > 0
    model.save(tmp_path / "te.keras")
    loaded = keras.saving.load_model(tmp_path / "te.keras")
    assert type(loaded) is TemporalEnsembling and loaded.params == model.params
    np.testing.assert_array_equal(loaded.ensemble.numpy(), model.ensemble.numpy())
    np.testing.assert_array_equal(loaded.epoch_predictions.numpy(),
                                  model.epoch_predictions.numpy())
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)
    assert int(loaded.optimizer.iterations) == STEPS + 1
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)
    np.testing.assert_array_equal(loaded.predict(x[:8], verbose=0),
                                  model.predict(x[:8], verbose=0))
    # The next two steps (the end of epoch 1: an ensemble update) are the same in both.
    rest = stream.skip(1 + STEPS + 1).take(2)
    for m in (model, loaded):
        m.fit(rest, epochs=1, verbose=0)
    np.testing.assert_array_equal(loaded.ensemble.numpy(), model.ensemble.numpy())
    np.testing.assert_array_equal(loaded.epoch_predictions.numpy(), 0.0)
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)


def test_batches_without_indices_are_refused_with_a_clear_message(tmp_path):
    x, y, true_y = data()
    model = TemporalEnsembling(params(), HyperParams(**NETWORK), num_classes=CLASSES, width=8)
    model.compile()
    model.initialize_from_batch(x[:BATCH])
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    with pytest.raises(ValueError, match=r"trains on \(images, labels, indices\) batches \(see "
                                         r"datasets.epoch_dataset\). Received: a tuple of 2 "
                                         r"elements"):
        model.fit(pairs, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="Received: a batch without indices"):
        model.compute_train_step(tf.constant(x[:BATCH]), tf.constant(y[:BATCH]))
    with pytest.raises(ValueError, match=r"\(images, labels, indices\)"):
        model.train_on_batch(x[:BATCH], y[:BATCH])
    assert int(model.optimizer.iterations) == 0
    np.testing.assert_array_equal(model.ensemble.numpy(), 0.0)
    # train() refuses such a stream before it writes anything.
    evaluation = tf.data.Dataset.from_tensor_slices((x, true_y)).batch(10)
    with pytest.raises(ValueError, match=r"must yield \(images, labels, indices\) triples"):
        train(run_config(), lambda skip: pairs.repeat().skip(skip), evaluation,
              tmp_path / "run", console=lambda _: None)
    assert not (tmp_path / "run" / "config.json").exists()
    float_indices = tf.data.Dataset.from_tensor_slices(
        (x, y, np.arange(N, dtype=np.float32))).batch(BATCH)
    with pytest.raises(TypeError, match="indices must be integers"):
        train(run_config(), lambda skip: float_indices.repeat().skip(skip), evaluation,
              tmp_path / "run", console=lambda _: None)
    with pytest.raises(ValueError, match="Received: num_logits=2"):
        TemporalEnsembling(params(), HyperParams(num_logits=2))


def test_mean_teacher_options_are_refused_not_ignored():
    with pytest.raises(ValueError, match="Received: shared_flip=True"):
        TemporalEnsembling(params(), shared_flip=True)
    with pytest.raises(ValueError, match="Received: teacher_reads_ema='post'"):
        TemporalEnsembling(params(), teacher_reads_ema="post")
    with pytest.raises(ValueError, match="Received: pi_target_gradients=False"):
        dataclasses.replace(run_config(), pi_target_gradients=False)
