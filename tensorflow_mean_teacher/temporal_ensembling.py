"""`TemporalEnsembling`: Laine & Aila's Temporal Ensembling (ICLR 2017) as a training mode of the
same model and network, faithful to their own code (smlaine2/tempens, `train.py`).

One step, at global step t of epoch e = t // S (S = N // minibatch_size steps per epoch):
1. the schedules of epoch e (`temporal_ensembling_params.scheduled_values`);
2. the student runs once in training mode; z = softmax of its logits;
3. loss = sum(cross-entropy over the labeled rows) / batch size
   + w(e) * mean((z - target)^2) over every row and class,
   target = Z[index] / (1 - alpha^e), zeros in epoch 0 (where w = 0);
4. Adam in tempens' form (bias correction with the current beta1 to the power t + 1);
5. z is stored at the examples' rows of this epoch's predictions;
6. after the epoch's last step: Z <- alpha Z + (1 - alpha) z_epoch, and the epoch's
   predictions start again from zeros. An example whose row fell in the dropped partial batch
   gets z = 0 for that epoch, as in the original's basic mode.

Z and the epoch's predictions are float64 (N, classes) variables, as the original's numpy
arrays: they are part of `training_checkpoint()`, so a resumed run is exact. There is no
teacher: evaluation, `predict` and the export use the student, and the `ema` metrics repeat
the student's (so that reports read every method alike).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tensorflow_mean_teacher import losses
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.model import MeanTeacher
from tensorflow_mean_teacher.optimizer import TF1Adam
from tensorflow_mean_teacher.temporal_ensembling_params import (
    SCHEDULED,
    TemporalEnsemblingParams,
    TemporalEnsemblingSchedule,
    epoch_of_step,
    scheduled_values,
)

TRAIN_METRIC_NAMES = ("train/error/1", "train/class_cost/1", "train/cons_cost/te")
# MeanTeacher's options without a meaning here, and their defaults.
MEAN_TEACHER_ONLY = {"teacher_reads_ema": "pre", "teacher_state": "own",
                     "compute_pi_branch": None, "shared_flip": False,
                     "pi_target_gradients": True}


@keras.saving.register_keras_serializable(package="tensorflow_mean_teacher")
class TemporalEnsembling(MeanTeacher):
    """Temporal Ensembling on ConvLarge or any Keras network, trained with `fit`.

    Its batches are `(images, labels, indices)`: `indices` are the rows of the training set
    (0..num_examples-1) the examples come from (`datasets.epoch_dataset` makes such a stream,
    in whole epochs). The model counts epochs in steps, so a stream must give each epoch as
    S = num_examples // minibatch_size batches of its rows.

    Args:
        params: a `TemporalEnsemblingParams`, a dict of overrides, or None for the defaults
            (tempens' CIFAR-10 preset); `num_examples`, `num_labels` and `minibatch_size` must
            describe the training data.
        hyperparams: the network's and the inputs' settings, under their Mean Teacher names
            (`input_noise`, `student_dropout_probability`, `translate`, `flip_horizontally`,
            `normalize_input`); the costs and schedules of `HyperParams` are not used.
        student, num_classes, image_shape, width, eval_mean_decay, seed: as `MeanTeacher`'s.
    """

    def __init__(self, params: TemporalEnsemblingParams | dict | None = None,
                 hyperparams: HyperParams | dict | None = None, *,
                 student: keras.Model | None = None, num_classes: int | None = None,
                 image_shape: tuple[int, int, int] | None = None, width: int = 128,
                 eval_mean_decay: float = 0.999, seed: int | None = None, **kwargs):
        if params is None:
            params = TemporalEnsemblingParams()
        elif not isinstance(params, TemporalEnsemblingParams):
            params = TemporalEnsemblingParams.from_dict(params)
        if hyperparams is None:
            hyperparams = HyperParams()
        elif not isinstance(hyperparams, HyperParams):
            hyperparams = HyperParams.from_dict(hyperparams)
        if hyperparams.num_logits != 1:
            raise ValueError("Temporal Ensembling uses one output head. "
                             f"Received: num_logits={hyperparams.num_logits}")
        # Mean Teacher's options mean nothing here: refused unless at their defaults.
        for name, default in MEAN_TEACHER_ONLY.items():
            value = kwargs.pop(name, default)
            if value != default:
                raise ValueError(f"{name} is a Mean Teacher option; Temporal Ensembling has one "
                                 f"tower and no teacher. Received: {name}={value!r}")
        kwargs.setdefault("name", "temporal_ensembling")
        super().__init__(hyperparams.replace(ema_consistency=True), student=student,
                         num_classes=num_classes, image_shape=image_shape, width=width,
                         compute_pi_branch=False, eval_mean_decay=eval_mean_decay, seed=seed,
                         **kwargs)
        self.params = params
        self._train_trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", *SCHEDULED, "epoch", *TRAIN_METRIC_NAMES)
        }
        self.ensemble = None
        self.epoch_predictions = None
        if self.built:  # a functional student is built by MeanTeacher's constructor
            self._make_ensemble()

    def build(self, input_shape) -> None:
        super().build(input_shape)
        if getattr(self, "params", None) is not None:  # else: during MeanTeacher.__init__
            self._make_ensemble()

    def _make_ensemble(self) -> None:
        if self.ensemble is None:
            shape = (self.params.num_examples, self.num_classes)
            # float64, as the original's numpy arrays: the targets then match its to the bit.
            # autocast=False: never read as float16 under mixed precision.
            self.ensemble = self.add_weight(name="ensemble", shape=shape, dtype="float64",
                                            initializer="zeros", trainable=False,
                                            autocast=False)
            self.epoch_predictions = self.add_weight(
                name="epoch_predictions", shape=shape, dtype="float64", initializer="zeros",
                trainable=False, autocast=False)

    def default_optimizer(self) -> TF1Adam:
        """tempens' Adam: scheduled learning rate and beta1, bias correction with beta ** t."""
        p = self.params
        return TF1Adam(
            learning_rate=TemporalEnsemblingSchedule(p, "learning_rate"),
            beta_1=TemporalEnsemblingSchedule(p, "adam_beta_1"),
            beta_2=p.adam_beta2, epsilon=p.adam_epsilon, beta_powers="current",
        )

    def compile(self, optimizer=None, **kwargs):
        if self.distribute_strategy.num_replicas_in_sync > 1:
            raise ValueError(
                "TemporalEnsembling keeps per-example predictions of the whole training set and "
                "runs on one device. Received: a strategy with "
                f"{self.distribute_strategy.num_replicas_in_sync} replicas")
        super().compile(optimizer, **kwargs)

    def training_checkpoint(self, *, train_metrics: bool = True) -> tf.train.Checkpoint:
        """`MeanTeacher.training_checkpoint` plus the ensemble and this epoch's predictions."""
        checkpoint = super().training_checkpoint(train_metrics=train_metrics)
        checkpoint.temporal_ensemble = tf.train.Checkpoint(
            ensemble=self.ensemble, epoch_predictions=self.epoch_predictions)
        return checkpoint

    def targets(self, indices, epoch) -> tf.Tensor:
        """The training targets of rows `indices` in `epoch`: Z / (1 - alpha^epoch), float32."""
        alpha = tf.constant(self.params.prediction_decay, tf.float64)
        epoch = tf.cast(epoch, tf.float64)
        rows = tf.gather(self.ensemble, indices)
        corrected = tf.math.divide_no_nan(rows, 1.0 - tf.pow(alpha, epoch))
        return tf.cast(corrected, tf.float32)

    def compute_train_step(self, images, labels, indices=None) -> tuple[dict, dict]:
        if indices is None:
            raise ValueError(
                "TemporalEnsembling trains on (images, labels, indices) batches: `indices` are "
                "the training-set rows of the examples (see datasets.epoch_dataset). "
                "Received: a batch without indices")
        labels = tf.cast(labels, tf.int32)
        indices = tf.cast(indices, tf.int64)
        step = self.optimizer.iterations
        schedule = scheduled_values(self.params, step)
        epoch = epoch_of_step(self.params, step)
        targets = self.targets(indices, epoch)
        variables = self._optimized_variables()
        with tf.GradientTape() as tape:
            class_logits, _ = self._tower("student", images, True)
            class_logits = tf.cast(class_logits, tf.float32)
            regularization = list(self.student.losses)
            predictions = tf.nn.softmax(class_logits)
            class_cost = tf.reduce_mean(losses.classification_costs(class_logits, labels))
            cons_cost = tf.reduce_mean(tf.square(predictions - targets))
            loss = class_cost + schedule["unsup_weight"] * cons_cost
            if regularization:
                loss = loss + tf.cast(tf.add_n(regularization), loss.dtype)
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        kept = [(g, v) for g, v in zip(gradients, variables, strict=True) if g is not None]
        self._apply_gradients([g for g, _ in kept], [v for _, v in kept])

        # The tf.Variable under the Keras variable: a scatter writes only the batch's rows.
        self.epoch_predictions.value.scatter_update(
            tf.IndexedSlices(tf.cast(predictions, tf.float64), indices))
        epoch_ended = tf.equal(
            tf.math.floormod(tf.cast(self.optimizer.iterations, tf.int64),
                             self.params.steps_per_epoch), 0)
        tf.cond(epoch_ended, self._end_epoch, tf.no_op)
        values = {
            "loss": loss,
            **schedule,
            "epoch": tf.cast(epoch, tf.float32),
            "train/error/1": losses.mean_error(class_logits, labels),
            "train/class_cost/1": class_cost,
            "train/cons_cost/te": cons_cost,
        }
        return values, {"class_logits_1": class_logits, "targets": targets}

    def _end_epoch(self):
        """Z <- alpha Z + (1 - alpha) z_epoch, in float64; the next epoch starts from zeros."""
        alpha = tf.constant(self.params.prediction_decay, tf.float64)
        self.ensemble.assign(alpha * self.ensemble + (1.0 - alpha) * self.epoch_predictions)
        self.epoch_predictions.assign(tf.zeros_like(self.epoch_predictions))
        return tf.no_op()

    def train_step(self, data):
        if not (isinstance(data, (tuple, list)) and len(data) == 3):
            raise ValueError(
                "TemporalEnsembling trains on (images, labels, indices) batches (see "
                "datasets.epoch_dataset). Received: "
                + (f"a {type(data).__name__} of {len(data)} elements"
                   if isinstance(data, (tuple, list)) else f"a {type(data).__name__}"))
        images, labels, indices = data
        values, _ = self.compute_train_step(images, labels, indices)
        return self._track_training(values, labels)

    def compute_evaluation(self, images, labels) -> tuple[dict, dict]:
        """The student's eval quantities, under both suffixes ("1" and "ema"): no teacher."""
        labels = tf.cast(labels, tf.int32)
        class_logits, cons_logits = self._tower("student", images, False)
        per_example, logits = {}, {}
        for suffix in ("1", "ema"):
            logits[f"class_logits_{suffix}"] = class_logits
            logits[f"cons_logits_{suffix}"] = cons_logits
            per_example[f"eval/error/{suffix}"] = losses.errors(class_logits, labels)
            per_example[f"eval/class_cost/{suffix}"] = losses.classification_costs(
                class_logits, labels)
            per_example[f"eval/res_cost/{suffix}"] = losses.logit_distance_costs(
                class_logits, cons_logits, self.hyperparams.logit_distance_cost)
        return per_example, logits

    def call(self, images, training=False):
        """The student's class logits (what `predict` returns)."""
        return self._tower("student", images, training)[0]

    def predict_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        return self._tower("student", images, False)[0]

    def export_teacher(self, path, *, overwrite: bool = False):
        """Temporal Ensembling has no teacher: exports the student (`export_student`)."""
        return self.export_student(path, overwrite=overwrite)

    def get_config(self) -> dict:
        config = super().get_config()
        for name in MEAN_TEACHER_ONLY:
            config.pop(name, None)
        return {**config, "params": self.params.to_dict()}
