"""`MeanTeacher`: a Keras model whose training step is the original TF1 Mean Teacher step.

One step, from the state at its start (global step t = `optimizer.iterations`):
1. the schedules at t (learning rate, Adam betas, EMA decay, consistency coefficient);
2. the teacher (EMA weights) and the student run in training mode on the batch; each network
   moves its own eval means towards its batch means; with the Pi branch, a second student tower
   (same weights, own eval means and random draws) runs too;
3. the costs, and the gradient of the minimised cost with respect to the student's weights;
4. the teacher's weights move towards the student's *pre-step* weights (EMA);
5. TF1 Adam applies the gradients, then its running beta products advance, then t += 1.

The original graph leaves the teacher's reads of its weights unordered against step 4 of the same
step. `teacher_reads_ema` fixes it: "pre" reads them before the update (default), "post" after.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tensorflow_mean_teacher import distribution, losses
from tensorflow_mean_teacher.architecture import ConvLarge
from tensorflow_mean_teacher.export import export_network
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.optimizer import TF1Adam
from tensorflow_mean_teacher.schedules import (
    SCHEDULED_QUANTITIES,
    MeanTeacherSchedule,
    scheduled_values,
)

TEACHER_READ_VARIANTS = ("pre", "post")
TRAIN_METRIC_NAMES = (
    "train/error/1", "train/error/ema", "train/class_cost/1", "train/class_cost/ema",
    "train/cons_cost/pi", "train/cons_cost/mt", "train/res_cost/1", "train/res_cost/ema",
    "train/total_cost/pi", "train/total_cost/mt",
)
EVAL_METRIC_NAMES = (
    "eval/error/1", "eval/error/ema", "eval/class_cost/1", "eval/class_cost/ema",
    "eval/res_cost/1", "eval/res_cost/ema",
)
_PI_ONLY = ("train/cons_cost/pi", "train/total_cost/pi")


@keras.saving.register_keras_serializable(package="tensorflow_mean_teacher")
class MeanTeacher(keras.Model):
    """Mean Teacher (or the Pi model) on the ConvLarge network, trained with `fit`.

    Args:
        hyperparams: a `HyperParams`, a dict of overrides, or None for the original defaults.
        num_classes: number of classes; labels are in [0, num_classes) or -1 (unlabeled).
        width: channels of ConvLarge's first block (128 in the original; smaller for tests).
        teacher_reads_ema: "pre" (the teacher tower uses the EMA weights as they were at the start
            of the step) or "post" (after this step's EMA update, as the CuriousAI PyTorch code).
        compute_pi_branch: run the second student tower (the Pi-model target) and report
            `train/cons_cost/pi` and `train/total_cost/pi`. None: only when the Pi model is
            trained (`ema_consistency=False`), so a Mean Teacher step runs two towers, not three.
        eval_mean_decay: decay of the eval means (the inference-mode batch-norm means); 0.999
            in the original. From zero, they need a few thousand steps to converge: lower it
            (e.g. 0.99) for short runs.
        seed: seed of every random draw (input perturbations, dropout, initial V).

    Before training, call `initialize_from_batch(images)` once: the original's data-dependent
    initialisation of g and b, which consumes one training batch.
    """

    def __init__(self, hyperparams: HyperParams | dict | None = None, *, num_classes: int = 10,
                 width: int = 128, teacher_reads_ema: str = "pre",
                 compute_pi_branch: bool | None = None, eval_mean_decay: float = 0.999,
                 seed: int | None = None, **kwargs):
        kwargs.setdefault("name", "mean_teacher")
        super().__init__(**kwargs)
        if hyperparams is None:
            hyperparams = HyperParams()
        elif not isinstance(hyperparams, HyperParams):
            hyperparams = HyperParams.from_dict(hyperparams)
        if teacher_reads_ema not in TEACHER_READ_VARIANTS:
            raise ValueError(
                f"teacher_reads_ema must be one of {TEACHER_READ_VARIANTS}. "
                f"Received: teacher_reads_ema={teacher_reads_ema!r}"
            )
        if compute_pi_branch is None:
            compute_pi_branch = not hyperparams.ema_consistency
        if not compute_pi_branch and not hyperparams.ema_consistency:
            raise ValueError(
                "The Pi model (ema_consistency=False) needs its second student tower. "
                "Received: compute_pi_branch=False"
            )
        self.hyperparams = hyperparams
        self.num_classes = int(num_classes)
        self.width = int(width)
        self.teacher_reads_ema = teacher_reads_ema
        self.compute_pi_branch = bool(compute_pi_branch)
        self.eval_mean_decay = float(eval_mean_decay)
        self.seed = seed

        hp = hyperparams
        tower = dict(
            num_classes=num_classes, num_logits=hp.num_logits, width=width,
            input_noise=hp.input_noise, normalize_input=hp.normalize_input,
            flip_horizontally=hp.flip_horizontally, translate=hp.translate,
            eval_mean_decay=eval_mean_decay,
        )
        offset = lambda k: None if seed is None else seed * 7 + k  # noqa: E731
        self.student = ConvLarge(**tower, dropout_probability=hp.student_dropout_probability,
                                 seed=offset(1), name="student")
        self.teacher = ConvLarge(**tower, dropout_probability=hp.teacher_dropout_probability,
                                 seed=offset(2), name="teacher")
        # The teacher learns only through the EMA, never from the optimizer.
        self.teacher.trainable = False
        self.pi_branch = None
        if self.compute_pi_branch:
            # The original's secondary tower: student weights, the teacher's dropout rate.
            self.pi_branch = ConvLarge(
                **tower, dropout_probability=hp.teacher_dropout_probability, seed=offset(3),
                tied_to=self.student, name="pi_branch",
            )
        self.is_initialized = self.add_weight(
            name="is_initialized", shape=(), dtype="bool", initializer="zeros", trainable=False,
        )

        names = [n for n in TRAIN_METRIC_NAMES if self.compute_pi_branch or n not in _PI_ONLY]
        self._train_trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", *SCHEDULED_QUANTITIES, *names)
        }
        self._eval_trackers = {name: keras.metrics.Mean(name=name) for name in EVAL_METRIC_NAMES}

    # ----------------------------------------------------------------------------------------
    # Set-up

    def default_optimizer(self) -> TF1Adam:
        """TF1 Adam with the original's scheduled learning rate and betas."""
        hp = self.hyperparams
        return TF1Adam(
            learning_rate=MeanTeacherSchedule(hp, "learning_rate"),
            beta_1=MeanTeacherSchedule(hp, "adam_beta_1"),
            beta_2=MeanTeacherSchedule(hp, "adam_beta_2"),
            epsilon=hp.adam_epsilon,
        )

    def compile(self, optimizer=None, **kwargs):
        """As `keras.Model.compile`; the optimizer defaults to `default_optimizer()`.

        The costs are the original's, so `loss`, `metrics` and `loss_weights` are refused.
        """
        for arg in ("loss", "metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(arg) is not None:
                raise ValueError(
                    f"MeanTeacher computes the original costs and metrics itself; do not pass "
                    f"`{arg}`. Received: {arg}={kwargs[arg]!r}"
                )
        kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=optimizer or self.default_optimizer(), **kwargs)

    def initialize_from_batch(self, images) -> None:
        """The original's data-dependent initialisation, run once before training.

        The student runs on `images` in training mode (with its random perturbations) in the
        initialisation form of every layer: each layer's g is set so that its output has unit
        variance per channel on this batch, and b to zero. The teacher then starts as a copy of
        the student, and every eval mean at zero. `images` may be an array/tensor of images, an
        `(images, labels)` pair or a `tf.data.Dataset` of them (its first batch is used, as the
        original consumes the first training batch).
        """
        if isinstance(images, tf.data.Dataset):
            images = next(iter(images))
        if isinstance(images, (tuple, list)):
            images = images[0]
        images = tf.convert_to_tensor(images, tf.float32)
        # Under a tf.distribute strategy the variables are created here: in its scope. The
        # init runs on the whole batch, so every replica gets the same g and b.
        with self.distribute_strategy.scope():
            self.student(images, training=True, initialize=True)
            sample = images[:1]
            self.teacher(sample, training=False)
            if self.pi_branch is not None:
                self.pi_branch(sample, training=False)
            for teacher_var, student_var in self._teacher_student_pairs():
                teacher_var.assign(student_var)
            for network in (self.student, self.teacher, self.pi_branch):
                for layer in (network.weight_norm_layers if network is not None else ()):
                    layer.eval_mean.assign(tf.zeros_like(layer.eval_mean))
            if getattr(self, "optimizer", None) is not None:  # None or absent before compile()
                self.optimizer.build(self.student.trainable_variables)
        self.is_initialized.assign(True)
        self.built = True

    def training_checkpoint(self) -> tf.train.Checkpoint:
        """The complete training state, for `tf.train.Checkpoint`/`CheckpointManager`.

        Student, teacher and Pi-branch weights and eval means, every random generator, the
        optimizer (slots, running beta products, the step) and the initialisation flag.
        """
        towers = {"student": self.student, "teacher": self.teacher, "pi_branch": self.pi_branch}
        return tf.train.Checkpoint(
            **{name: tower.state_checkpoint() for name, tower in towers.items() if tower},
            optimizer=self.optimizer, is_initialized=self.is_initialized,
        )

    def _require_initialized(self, what: str) -> None:
        if not bool(self.is_initialized.numpy()):
            raise RuntimeError(
                f"MeanTeacher.{what}() needs an initialised model. Call "
                "`model.initialize_from_batch(first_training_batch_images)` once before "
                "training (the original's data-dependent initialisation), or restore a checkpoint."
            )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds a model created in a strategy's scope from a first batch that it averages
        # over the replicas; under MultiWorkerMirroredStrategy that average fails on an
        # (images, labels) pair (keras-team/keras#20585). An initialised MeanTeacher (which
        # fit/evaluate/predict require) has every variable already: nothing to build.
        if self.built and bool(self.is_initialized.numpy()):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def fit(self, *args, **kwargs):
        self._require_initialized("fit")
        return super().fit(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._require_initialized("train_on_batch")
        return super().train_on_batch(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self._require_initialized("evaluate")
        return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        self._require_initialized("predict")
        return super().predict(*args, **kwargs)

    # ----------------------------------------------------------------------------------------
    # The training step

    def _teacher_student_pairs(self):
        for teacher_layer, student_layer in zip(
            self.teacher.weight_norm_layers, self.student.weight_norm_layers, strict=True
        ):
            yield from zip(teacher_layer.parameters, student_layer.parameters, strict=True)

    def _update_teacher(self, ema_decay) -> None:
        """teacher -= (teacher - student) * (1 - decay), as TF1's ExponentialMovingAverage."""
        complement = 1.0 - ema_decay
        for teacher_var, student_var in self._teacher_student_pairs():
            teacher_var.assign_sub((teacher_var - student_var) * complement)

    def _optimized_variables(self) -> list:
        """The student's weights that the cost depends on (not the unused second head)."""
        unused = set()
        if self.hyperparams.num_logits == 1:
            unused = {id(v) for v in self.student.fc_secondary.parameters}
        return [v for v in self.student.trainable_variables if id(v) not in unused]

    def compute_train_step(self, images, labels) -> tuple[dict, dict]:
        """One training step; returns (this step's metric values, the towers' logits).

        The metric values are the original's `training_metrics` of the step. `train_step`
        feeds them to the Keras metrics; the conformance tool also reads the logits.
        """
        hp = self.hyperparams
        labels = tf.cast(labels, tf.int32)
        schedule = scheduled_values(hp, self.optimizer.iterations)
        if self.teacher_reads_ema == "post":
            self._update_teacher(schedule["ema_decay"])
        class_ema, cons_ema = map(tf.stop_gradient, self.teacher(images, training=True))

        variables = self._optimized_variables()
        consistency_mask = tf.logical_or(
            tf.equal(labels, -1), tf.constant(hp.apply_consistency_to_labeled)
        )

        def consistency(target_logits):
            return losses.consistency_costs(cons_1, target_logits, schedule["cons_coefficient"],
                                            consistency_mask, hp.consistency_trust)

        with tf.GradientTape() as tape:
            class_1, cons_1 = self.student(images, training=True)
            class_costs_1 = losses.classification_costs(class_1, labels)
            res_costs_1 = losses.logit_distance_costs(class_1, cons_1, hp.logit_distance_cost)
            cons_costs_mt = consistency(class_ema)
            total_mt = losses.total_cost(class_costs_1, cons_costs_mt, res_costs_1)
            values = {"train/total_cost/mt": total_mt}
            logits = {"class_logits_1": class_1, "cons_logits_1": cons_1,
                      "class_logits_ema": class_ema, "cons_logits_ema": cons_ema}
            if self.pi_branch is not None:
                class_2, _ = self.pi_branch(images, training=True)
                cons_costs_pi = consistency(class_2)
                values["train/cons_cost/pi"] = tf.reduce_mean(cons_costs_pi)
                values["train/total_cost/pi"] = losses.total_cost(
                    class_costs_1, cons_costs_pi, res_costs_1)
                logits["class_logits_2"] = class_2
            loss = total_mt if hp.ema_consistency else values["train/total_cost/pi"]
            # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer: the loss is
            # scaled here, and unscaled (non-finite steps skipped) in apply. Else the identity.
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)

        if self.teacher_reads_ema == "pre":
            self._update_teacher(schedule["ema_decay"])
        self.optimizer.apply(gradients, variables)

        # The totals are batch *sums*: on N replicas each computes its share, and the sum of the
        # gradients is the global one. Reported times N, their mean over replicas (what Keras
        # metrics take) is the global total.
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        for name in ("train/total_cost/mt", "train/total_cost/pi"):
            if name in values:
                values[name] = values[name] * replicas
        values.update({
            "loss": loss * replicas,
            **schedule,
            "train/error/1": losses.mean_error(class_1, labels),
            "train/error/ema": losses.mean_error(class_ema, labels),
            "train/class_cost/1": tf.reduce_mean(class_costs_1),
            "train/class_cost/ema": tf.reduce_mean(losses.classification_costs(class_ema, labels)),
            "train/cons_cost/mt": tf.reduce_mean(cons_costs_mt),
            "train/res_cost/1": tf.reduce_mean(res_costs_1),
            "train/res_cost/ema": tf.reduce_mean(
                losses.logit_distance_costs(class_ema, cons_ema, hp.logit_distance_cost)),
        })
        return values, logits

    def train_step(self, data):
        images, labels = _unpack(data)
        values, _ = self.compute_train_step(images, labels)
        n_labeled = tf.reduce_sum(tf.cast(losses.labeled_mask(tf.cast(labels, tf.int32)),
                                          tf.float32))
        for name, tracker in self._train_trackers.items():
            if name.startswith("train/error/"):
                # Weighted by the labeled count: a running mean over labeled examples, not over
                # batches (a batch without labels has a NaN error and weight 0).
                error = tf.where(n_labeled > 0, values[name], 0.0)
                tracker.update_state(error, sample_weight=n_labeled)
            else:
                tracker.update_state(values[name])
        return _results(self._train_trackers)

    def compute_evaluation(self, images, labels) -> tuple[dict, dict]:
        """Per-example eval quantities of student ("1") and teacher ("ema") in inference mode."""
        labels = tf.cast(labels, tf.int32)
        per_example, logits = {}, {}
        for suffix, network in (("1", self.student), ("ema", self.teacher)):
            class_logits, cons_logits = network(images, training=False)
            logits[f"class_logits_{suffix}"] = class_logits
            logits[f"cons_logits_{suffix}"] = cons_logits
            per_example[f"eval/error/{suffix}"] = losses.errors(class_logits, labels)
            per_example[f"eval/class_cost/{suffix}"] = losses.classification_costs(
                class_logits, labels)
            per_example[f"eval/res_cost/{suffix}"] = losses.logit_distance_costs(
                class_logits, cons_logits, self.hyperparams.logit_distance_cost)
        return per_example, logits

    def test_step(self, data):
        images, labels = _unpack(data)
        per_example, _ = self.compute_evaluation(images, labels)
        labeled = tf.cast(losses.labeled_mask(tf.cast(labels, tf.int32)), tf.float32)
        for name, tracker in self._eval_trackers.items():
            weight = labeled if name.startswith("eval/error/") else None
            tracker.update_state(per_example[name], sample_weight=weight)
        return _results(self._eval_trackers)

    @property
    def train_metrics(self) -> list:
        """The training metrics (running means since their last reset)."""
        return list(self._train_trackers.values())

    @property
    def metrics(self):
        return [*self._train_trackers.values(), *self._eval_trackers.values()]

    def call(self, images, training=False):
        """The teacher's class logits (what `predict` returns)."""
        class_logits, _ = self.teacher(images, training=training)
        return class_logits

    def predict_step(self, data):
        images, _ = _unpack(data)
        return self.teacher(images, training=False)[0]

    def export_teacher(self, path, *, overwrite: bool = False):
        """Writes the teacher (inference mode) as a SavedModel; see `export.export_network`."""
        self._require_initialized("export_teacher")
        return export_network(self.teacher, path, overwrite=overwrite)

    def export_student(self, path, *, overwrite: bool = False):
        """Writes the student (inference mode) as a SavedModel, like `export_teacher`."""
        self._require_initialized("export_student")
        return export_network(self.student, path, overwrite=overwrite)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "hyperparams": self.hyperparams.to_dict(),
            "num_classes": self.num_classes,
            "width": self.width,
            "teacher_reads_ema": self.teacher_reads_ema,
            "compute_pi_branch": self.compute_pi_branch,
            "eval_mean_decay": self.eval_mean_decay,
            "seed": self.seed,
        }


def _results(trackers: dict) -> dict:
    """The trackers' running means, over the examples of every replica when distributed."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return {name: tracker.result() for name, tracker in trackers.items()}
    # Each replica's trackers hold its own share. Summing totals and counts over the replicas
    # gives every replica the global means (exact however the labeled rows are split), so
    # Keras's average of the replicas' logs is the global mean too.
    sums = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack(
        [tracker.total.value for tracker in trackers.values()]
        + [tracker.count.value for tracker in trackers.values()]))
    totals, counts = tf.split(sums, 2)
    means = tf.unstack(tf.math.divide_no_nan(totals, counts))
    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) \
            and distribution.num_workers(strategy) > 1:
        # With several workers Keras reduces each log with strategy.reduce(MEAN, v, axis=0),
        # which fails on a scalar (keras-team/keras#20585): give it that axis.
        means = [tf.reshape(mean, [1]) for mean in means]
    return dict(zip(trackers, means, strict=True))


def _unpack(data):
    """(images, labels) from a batch; the labels may be absent for prediction."""
    if isinstance(data, (tuple, list)):
        if len(data) not in (1, 2, 3):
            raise ValueError(f"Expected (images, labels) batches. Received {len(data)} elements.")
        return data[0], (data[1] if len(data) > 1 else None)
    return data, None

