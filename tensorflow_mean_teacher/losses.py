"""The costs and error of the original, per example, with its conventions.

Label -1 marks an unlabeled example. The classification cost is zero for unlabeled rows and is
averaged over the *whole* batch; the error is averaged over labeled rows only.
"""

from __future__ import annotations

import tensorflow as tf


def labeled_mask(labels: tf.Tensor) -> tf.Tensor:
    return tf.not_equal(labels, -1)


def classification_costs(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-example cross-entropy, 0 for unlabeled rows. Their batch mean is the original cost."""
    labeled = labeled_mask(labels)
    safe_labels = tf.where(labeled, labels, tf.zeros_like(labels))
    costs = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
    return tf.where(labeled, costs, tf.zeros_like(costs))


def errors(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-example 0/1 error of the argmax; meaningful on labeled rows only (weight by the mask)."""
    predictions = tf.argmax(logits, axis=-1, output_type=labels.dtype)
    return tf.cast(tf.not_equal(predictions, labels), tf.float32)


def mean_error(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Error over the labeled rows (NaN if there are none, as in the original)."""
    labeled = labeled_mask(labels)
    return tf.reduce_mean(tf.boolean_mask(errors(logits, labels), labeled))


def consistency_costs(logits1: tf.Tensor, logits2: tf.Tensor, coefficient, mask: tf.Tensor,
                      trust: float) -> tf.Tensor:
    """Per-example distance between the two softmaxes, times `coefficient` where `mask`.

    trust 0: mean squared difference of the softmaxes (gradients reach both sides).
    trust 1: KL(softmax2 || softmax1); 0 < trust < 1: KL between the softmaxes each mixed with
    the uniform distribution (weight `trust` on the softmax). Both KL forms are scaled by
    2 (1 - 1/C) / C^2 / trust^2 so that their gradients match the MSE's as trust -> 0.
    """
    num_classes = logits1.shape[-1]
    softmax1, softmax2 = tf.nn.softmax(logits1), tf.nn.softmax(logits2)
    if float(trust) == 0.0:
        costs = tf.reduce_mean(tf.square(softmax1 - softmax2), axis=-1)
    else:
        # float32 like the original's hyperparameter variable, so (1 - trust) rounds the same.
        trust32 = tf.constant(trust, tf.float32)
        multiplier = tf.constant(2 * (1 - 1 / num_classes) / num_classes**2, tf.float32)
        multiplier = multiplier / tf.square(trust32)
        if float(trust) == 1.0:
            # The TF1 cross-entropy op does not backpropagate into its labels.
            target = tf.stop_gradient(softmax2)
            cross_entropy = tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=logits1)
            entropy = tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=logits2)
            costs = (cross_entropy - entropy) * multiplier
        else:
            uniform = tf.constant(1 / num_classes, tf.float32, shape=[num_classes])
            mixed1 = trust32 * softmax1 + (1.0 - trust32) * uniform
            mixed2 = trust32 * softmax2 + (1.0 - trust32) * uniform
            costs = tf.reduce_sum(mixed2 * tf.math.log(mixed2 / mixed1), axis=1) * multiplier
    return costs * tf.cast(mask, tf.float32) * coefficient


def logit_distance_costs(class_logits: tf.Tensor, cons_logits: tf.Tensor,
                         logit_distance_cost: float) -> tf.Tensor:
    """`logit_distance_cost` times the squared distance between the two heads' logits."""
    return logit_distance_cost * tf.reduce_sum(tf.square(class_logits - cons_logits), axis=1)


def total_cost(class_costs: tf.Tensor, cons_costs: tf.Tensor, res_costs: tf.Tensor) -> tf.Tensor:
    """The minimised cost: the mean of the three per-cost *batch sums*.

    (sum class + sum cons + sum res) / 3, not the sum of the means. The scale matters: it sets the
    size of the gradients against Adam's epsilon.
    """
    batch_sums = tf.reduce_sum(tf.stack([class_costs, cons_costs, res_costs]), axis=1)
    return tf.reduce_mean(batch_sums)
