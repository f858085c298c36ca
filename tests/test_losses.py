import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher import losses


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def logits():
    rng = np.random.RandomState(3)
    return rng.normal(size=(6, 10)).astype(np.float32), rng.normal(size=(6, 10)).astype(np.float32)


LABELS = np.array([3, -1, 0, -1, 9, 2], np.int32)


def test_classification_cost_is_zero_for_unlabeled_and_averaged_over_the_whole_batch(logits):
    l1, _ = logits
    costs = losses.classification_costs(tf.constant(l1), tf.constant(LABELS)).numpy()
    p = softmax(l1.astype(np.float64))
    expected = np.array([-np.log(p[i, y]) if y != -1 else 0.0 for i, y in enumerate(LABELS)])
    np.testing.assert_allclose(costs, expected, rtol=1e-5)
    assert costs.mean() == pytest.approx(expected.sum() / 6, rel=1e-5)


def test_error_counts_labeled_rows_only(logits):
    l1, _ = logits
    predictions = l1.argmax(axis=1)
    labeled = LABELS != -1
    expected = np.mean(predictions[labeled] != LABELS[labeled])
    assert float(losses.mean_error(tf.constant(l1), tf.constant(LABELS))) == pytest.approx(expected)
    no_labels = tf.constant([-1, -1], tf.int32)
    assert np.isnan(float(losses.mean_error(tf.constant(l1[:2]), no_labels)))


def numpy_consistency(l1, l2, trust):
    s1, s2 = softmax(l1.astype(np.float64)), softmax(l2.astype(np.float64))
    if trust == 0:
        return ((s1 - s2) ** 2).mean(axis=1)
    multiplier = 2 * (1 - 1 / 10) / 10**2 / trust**2
    m1 = trust * s1 + (1 - trust) / 10
    m2 = trust * s2 + (1 - trust) / 10
    return (m2 * np.log(m2 / m1)).sum(axis=1) * multiplier


@pytest.mark.parametrize("trust", [0.0, 0.3, 0.9, 1.0])
def test_consistency_cost_forms(logits, trust):
    l1, l2 = logits
    mask = np.array([True, True, False, True, True, False])
    costs = losses.consistency_costs(tf.constant(l1), tf.constant(l2), 7.0,
                                     tf.constant(mask), trust).numpy()
    expected = numpy_consistency(l1, l2, trust) * mask * 7.0
    np.testing.assert_allclose(costs, expected, rtol=2e-4, atol=1e-9)


def test_kl_gives_gradients_only_to_the_first_logits_mse_to_both(logits):
    l1, l2 = map(tf.constant, logits)
    mask = tf.ones([6], tf.bool)
    for trust, second_has_gradient in ((0.0, True), (1.0, False)):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([l1, l2])
            cost = tf.reduce_sum(losses.consistency_costs(l1, l2, 1.0, mask, trust))
        g1, g2 = tape.gradient(cost, [l1, l2])
        assert np.abs(g1.numpy()).max() > 1e-4
        assert (np.abs(g2.numpy()).max() > 1e-4) == second_has_gradient, trust


def test_logit_distance_cost(logits):
    l1, l2 = logits
    costs = losses.logit_distance_costs(tf.constant(l1), tf.constant(l2), 0.01).numpy()
    np.testing.assert_allclose(costs, 0.01 * ((l1 - l2) ** 2).sum(axis=1), rtol=1e-5)


def test_total_cost_is_the_mean_of_the_three_batch_sums():
    class_costs, cons_costs, res_costs = ([1.0, 2.0, 0.0, 3.0], [0.5, 0.5, 0.5, 0.5],
                                          [0.0, 0.1, 0.2, 0.3])
    total = float(losses.total_cost(*map(tf.constant, (class_costs, cons_costs, res_costs))))
    assert total == pytest.approx((6.0 + 2.0 + 0.6) / 3)
    # Not the sum of the three batch means (which is 4x smaller at batch size 4).
    assert total != pytest.approx(np.mean(class_costs) + np.mean(cons_costs) + np.mean(res_costs))
