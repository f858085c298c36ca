import keras
import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.optimizer import TF1Adam
from tensorflow_mean_teacher.schedules import MeanTeacherSchedule


def numpy_tf1_adam(theta, grads, lrs, beta1s, beta2s, eps):
    """TF1 AdamOptimizer + ApplyAdam in float64, with per-step betas."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    b1p, b2p = beta1s[0], beta2s[0]  # initialised from the betas at step 0
    for g, lr, b1, b2 in zip(grads, lrs, beta1s, beta2s, strict=True):
        alpha = lr * np.sqrt(1 - b2p) / (1 - b1p)
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        theta = theta - alpha * m / (np.sqrt(v) + eps)
        b1p, b2p = b1p * b1, b2p * b2
    return theta, m, v, b1p, b2p


def run_port(theta0, grads, optimizer):
    var = keras.Variable(theta0.astype(np.float32))
    for g in grads:
        optimizer.apply([tf.constant(g, tf.float32)], [var])
    m, v = optimizer.slots(var)
    return var.numpy(), m.numpy(), v.numpy()


def scheduled(values):
    values = np.asarray(values, np.float32)
    return lambda step: tf.gather(values, tf.minimum(step, len(values) - 1))


def test_running_beta_products_with_switching_betas():
    rng = np.random.RandomState(0)
    theta0 = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) for _ in range(8)]
    lrs = [1e-2] * 8
    beta1s = [0.9, 0.9, 0.9, 0.9, 0.8, 0.7, 0.6, 0.5]
    beta2s = [0.99] * 4 + [0.999] * 4
    port = run_port(theta0, grads, TF1Adam(1e-2, scheduled(beta1s), scheduled(beta2s), 1e-8))
    expected = numpy_tf1_adam(theta0, grads, lrs, beta1s, beta2s, 1e-8)
    for got, want in zip(port, expected[:3], strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)

    # beta ** t (what Keras' Adam does) is clearly different after the switch.
    powered = theta0.copy()
    m = np.zeros_like(theta0)
    v = np.zeros_like(theta0)
    for t, (g, b1, b2) in enumerate(zip(grads, beta1s, beta2s, strict=True)):
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        alpha = 1e-2 * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        powered = powered - alpha * m / (np.sqrt(v) + 1e-8)
    assert np.abs(port[0] - powered).max() > 100 * np.abs(port[0] - expected[0]).max()


def test_beta_powers_start_from_step_zero_betas_and_multiply():
    optimizer = TF1Adam(0.1, scheduled([0.9, 0.8, 0.7]), scheduled([0.99, 0.999, 0.999]))
    run_port(np.zeros(2), [np.ones(2)] * 3, optimizer)
    assert float(optimizer.beta_1_power) == pytest.approx(0.9 * 0.9 * 0.8 * 0.7, rel=1e-6)
    assert float(optimizer.beta_2_power) == pytest.approx(0.99 * 0.99 * 0.999 * 0.999, rel=1e-6)
    assert int(optimizer.iterations) == 3


def test_epsilon_is_added_to_sqrt_v():
    # One step from zero slots: theta -= lr * g / (|g| + eps) (bias corrections cancel).
    g = np.array([1e-6, 1.0])
    lr, eps = 0.5, 1e-6
    theta, *_ = run_port(np.zeros(2), [g], TF1Adam(lr, 0.9, 0.99, eps))
    alpha = lr * np.sqrt(1 - 0.99) / (1 - 0.9)
    m, v = 0.1 * g, 0.01 * g * g
    np.testing.assert_allclose(theta, -alpha * m / (np.sqrt(v) + eps), rtol=1e-5)


def test_the_mean_teacher_schedule_drives_the_betas():
    hp = HyperParams(rampup_length=2, rampdown_length=2, training_length=4)
    optimizer = TF1Adam(MeanTeacherSchedule(hp, "learning_rate"),
                        MeanTeacherSchedule(hp, "adam_beta_1"),
                        MeanTeacherSchedule(hp, "adam_beta_2"), hp.adam_epsilon)
    run_port(np.zeros(1), [np.ones(1)] * 4, optimizer)
    beta1 = [0.9, 0.9, 0.9, 0.9 * np.exp(-3.125) + 0.5 * (1 - np.exp(-3.125))]
    beta2 = [0.99, 0.99, 0.999, 0.999]
    assert float(optimizer.beta_1_power) == pytest.approx(0.9 * np.prod(beta1), rel=1e-6)
    assert float(optimizer.beta_2_power) == pytest.approx(0.99 * np.prod(beta2), rel=1e-6)


def test_config_round_trip_and_validation():
    hp = HyperParams()
    optimizer = TF1Adam(MeanTeacherSchedule(hp, "learning_rate"),
                        MeanTeacherSchedule(hp, "adam_beta_1"), 0.95, 1e-7)
    clone = TF1Adam.from_config(optimizer.get_config())
    assert isinstance(clone.beta_1, MeanTeacherSchedule) and clone.beta_2 == 0.95
    assert clone.epsilon == 1e-7
    with pytest.raises(ValueError, match="beta_1 must be in \\[0, 1\\). Received: beta_1=1.5"):
        TF1Adam(beta_1=1.5)
    with pytest.raises(ValueError, match="epsilon must be > 0. Received: epsilon=0"):
        TF1Adam(epsilon=0)
