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

Without `student=`, the networks are the original's ConvLarge towers. With `student=` any Keras
network is the student; the teacher is a structural copy of it (`networks.structural_copy`), and
the input perturbations run as a separate `InputStage` per tower.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tensorflow_mean_teacher import distribution, losses, networks
from tensorflow_mean_teacher.architecture import ConvLarge
from tensorflow_mean_teacher.export import export_network
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.layers import InputStage
from tensorflow_mean_teacher.optimizer import TF1Adam
from tensorflow_mean_teacher.saving import load_extra_state, save_extra_state
from tensorflow_mean_teacher.schedules import (
    SCHEDULED_QUANTITIES,
    MeanTeacherSchedule,
    scheduled_values,
)

TEACHER_READ_VARIANTS = ("pre", "post")
# What the teacher's non-trainable weights (batch-norm moving statistics) do: "own", each network
# keeps its own, moved by its own forward passes (the original's eval means); "copy", the
# teacher's are set to the student's at every EMA update.
TEACHER_STATE_POLICIES = ("own", "copy")
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
# Evaluation's `loss` (so that Keras' default `monitor="val_loss"` works): the teacher's
# classification cost, the network `predict` uses.
EVAL_LOSS = "eval/class_cost/ema"


@keras.saving.register_keras_serializable(package="tensorflow_mean_teacher")
class MeanTeacher(keras.Model):
    """Mean Teacher (or the Pi model) on ConvLarge or on any Keras network, trained with `fit`.

    Args:
        hyperparams: a `HyperParams`, a dict of overrides, or None for the original defaults.
        student: any `keras.Model` mapping images to class logits, or to a pair
            `(class_logits, consistency_logits)` (with `num_logits=2`). None: the original's
            ConvLarge. The teacher is a structural copy that starts with the student's weights;
            the EMA covers every trainable weight. `input_noise`, `translate`,
            `flip_horizontally` and `normalize_input` run as a separate input stage, drawn
            independently per tower; the network's own layers (e.g. its dropout) run in training
            mode in both towers (`student_dropout_probability` and
            `teacher_dropout_probability` are ConvLarge's).
        num_classes: number of classes; labels are in [0, num_classes) or -1 (unlabeled).
            ConvLarge: 10 by default. A custom student: taken from its logits (checked if given).
        image_shape: (height, width, channels) of the images; None: from the first batch.
        width: channels of ConvLarge's first block (128 in the original; smaller for tests).
        teacher_reads_ema: "pre" (the teacher tower uses the EMA weights as they were at the start
            of the step) or "post" (after this step's EMA update, as the CuriousAI PyTorch code).
        teacher_state: the teacher's non-trainable weights (batch-norm moving statistics, eval
            means): "own" (default, the original's: each network keeps its own, moved by its own
            forward passes) or "copy" (set to the student's at every EMA update).
        compute_pi_branch: run the second student tower (the Pi-model target) and report
            `train/cons_cost/pi` and `train/total_cost/pi`. None: only when the Pi model is
            trained (`ema_consistency=False`), so a Mean Teacher step runs two towers, not three.
            With a custom student it is a second pass of the student (own input draws).
        eval_mean_decay: decay of ConvLarge's eval means (the inference-mode batch-norm means);
            0.999 in the original. From zero, they need a few thousand steps to converge: lower
            it (e.g. 0.99) for short runs.
        seed: seed of every random draw (input perturbations, dropout, initial V).
        shared_flip: with `flip_horizontally`, one flip per image drawn once per step and
            shared by every tower of the step (Laine & Aila's Pi model flips the pair alike);
            False (the original's): each tower flips independently. Translations and noise
            stay independent.
        pi_target_gradients: whether the Pi model's cost also backpropagates through its
            second branch (True: the original's MSE cost, and Laine & Aila's Pi model) or
            treats it as a fixed target (False). The KL costs never backpropagate into their
            target, as in TF1.

    ConvLarge (and any network defining `data_dependent_initialization(images)`) needs
    `initialize_from_batch(images)` once before training: the original's data-dependent
    initialisation, which consumes one training batch. Other networks are built (and the teacher
    copied) on `build`, `initialize_from_batch` or the first `fit`.
    """

    def __init__(self, hyperparams: HyperParams | dict | None = None, *,
                 student: keras.Model | None = None, num_classes: int | None = None,
                 image_shape: tuple[int, int, int] | None = None, width: int = 128,
                 teacher_reads_ema: str = "pre", teacher_state: str = "own",
                 compute_pi_branch: bool | None = None, eval_mean_decay: float = 0.999,
                 seed: int | None = None, shared_flip: bool = False,
                 pi_target_gradients: bool = True, **kwargs):
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
        if teacher_state not in TEACHER_STATE_POLICIES:
            raise ValueError(
                f"teacher_state must be one of {TEACHER_STATE_POLICIES}. "
                f"Received: teacher_state={teacher_state!r}"
            )
        if compute_pi_branch is None:
            compute_pi_branch = not hyperparams.ema_consistency
        if not compute_pi_branch and not hyperparams.ema_consistency:
            raise ValueError(
                "The Pi model (ema_consistency=False) needs its second student tower. "
                "Received: compute_pi_branch=False"
            )
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 2):
            raise ValueError(
                f"num_classes must be an integer >= 2. Received: num_classes={num_classes!r}"
            )
        if image_shape is not None:
            image_shape = tuple(image_shape)
            if len(image_shape) != 3 or any(int(d) != d or d < 1 for d in image_shape):
                raise ValueError(
                    "image_shape must be (height, width, channels) of positive integers. "
                    f"Received: image_shape={image_shape!r}"
                )
            image_shape = tuple(int(d) for d in image_shape)
        self.hyperparams = hyperparams
        self.num_classes = None if num_classes is None else int(num_classes)
        self.image_shape = image_shape
        self.width = int(width)
        self.teacher_reads_ema = teacher_reads_ema
        self.teacher_state = teacher_state
        self.compute_pi_branch = bool(compute_pi_branch)
        self.eval_mean_decay = float(eval_mean_decay)
        self.seed = seed
        self.shared_flip = bool(shared_flip)
        self.pi_target_gradients = bool(pi_target_gradients)
        # Drawn once per step and applied before every tower: the towers themselves do not flip.
        self._tower_flips = hyperparams.flip_horizontally and not self.shared_flip

        offset = lambda k: None if seed is None else seed * 7 + k  # noqa: E731
        self.pi_branch = None
        self.shared_flip_stage = None
        if self.shared_flip and hyperparams.flip_horizontally:
            self.shared_flip_stage = InputStage(
                normalize_input=False, flip_horizontally=True, translate=False, input_noise=0.0,
                seed=offset(9), name="shared_flip", dtype="float32")
        if student is None:
            self._build_convlarge(offset)
        else:
            self._adopt_student(student, offset)
        self.is_initialized = self.add_weight(
            name="is_initialized", shape=(), dtype="bool", initializer="zeros", trainable=False,
        )
        # ([(teacher, student) trainable weights], [the other weight pairs]), once both are built.
        self._pairs = None

        names = [n for n in TRAIN_METRIC_NAMES if self.compute_pi_branch or n not in _PI_ONLY]
        self._train_trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", *SCHEDULED_QUANTITIES, *names)
        }
        self._eval_trackers = {name: keras.metrics.Mean(name=name)
                               for name in ("loss", *EVAL_METRIC_NAMES)}
        if not self.uses_convlarge and student.built:
            shape = self.image_shape or networks.declared_image_shape(student)
            if shape is not None:  # e.g. a functional student: ready before any data
                self.build((None, *shape))

    def _build_convlarge(self, offset) -> None:
        """The original's towers: student, teacher and (optionally) the tied Pi branch."""
        hp = self.hyperparams
        if self.num_classes is None:
            self.num_classes = 10
        tower = dict(
            num_classes=self.num_classes, num_logits=hp.num_logits, width=self.width,
            input_noise=hp.input_noise, normalize_input=hp.normalize_input,
            flip_horizontally=self._tower_flips, translate=hp.translate,
            eval_mean_decay=self.eval_mean_decay,
        )
        self.student_input_stage = self.teacher_input_stage = self.pi_input_stage = None
        self.student = ConvLarge(**tower, dropout_probability=hp.student_dropout_probability,
                                 seed=offset(1), name="student")
        self.teacher = ConvLarge(**tower, dropout_probability=hp.teacher_dropout_probability,
                                 seed=offset(2), name="teacher")
        # The teacher learns only through the EMA, never from the optimizer.
        self.teacher.trainable = False
        if self.compute_pi_branch:
            # The original's secondary tower: student weights, the teacher's dropout rate.
            self.pi_branch = ConvLarge(
                **tower, dropout_probability=hp.teacher_dropout_probability, seed=offset(3),
                tied_to=self.student, name="pi_branch",
            )

    def _adopt_student(self, student: keras.Model, offset) -> None:
        """A custom student, its structural copy as the teacher, one input stage per tower."""
        networks.check_student(student)
        hp = self.hyperparams

        def stage(k, name):
            return InputStage(
                normalize_input=hp.normalize_input, flip_horizontally=self._tower_flips,
                translate=hp.translate, input_noise=hp.input_noise, seed=offset(k), name=name,
                dtype="float32",  # per-image statistics in float32 under mixed precision too
            )

        self.student = student
        self.teacher = networks.structural_copy(student)
        # Not `teacher.trainable = False`: Keras layers such as BatchNormalization then run in
        # inference mode, and the original's teacher runs in training mode.
        self.student_input_stage = stage(4, "student_input_stage")
        self.teacher_input_stage = stage(5, "teacher_input_stage")
        self.pi_input_stage = stage(6, "pi_input_stage") if self.compute_pi_branch else None
        self._teacher_seed = offset(8)

    @property
    def uses_convlarge(self) -> bool:
        return self.student_input_stage is None

    @property
    def requires_initialization(self) -> bool:
        """Whether the student needs `initialize_from_batch` (a data-dependent init) first."""
        return hasattr(self.student, networks.INITIALIZATION_HOOK)

    def build(self, input_shape) -> None:
        """Creates every variable for images of `input_shape` (batch, height, width, channels).

        No data-dependent initialisation: a custom student without one is then ready to train
        (the teacher starts as its copy); ConvLarge still needs `initialize_from_batch` or a
        restored state.
        """
        image_shape = tuple(int(d) for d in input_shape[1:])
        self._set_image_shape(image_shape)
        sample = tf.zeros((1, *image_shape), tf.float32)
        with self.distribute_strategy.scope():
            # Inference-mode calls: they create the variables and move no state.
            for name in self._tower_names():
                self._tower(name, sample, training=False)
            if not self.uses_convlarge:
                self._start_teacher_as_copy()
                if not self.requires_initialization:
                    self.is_initialized.assign(True)
            if getattr(self, "optimizer", None) is not None:  # None or absent before compile()
                self.optimizer.build(self.student.trainable_variables)
        self.built = True

    def _set_image_shape(self, image_shape: tuple) -> None:
        if self.image_shape is not None and tuple(self.image_shape) != tuple(image_shape):
            raise ValueError(
                f"This model takes images of shape {tuple(self.image_shape)} (height, width, "
                f"channels). Received: images of shape (batch, {', '.join(map(str, image_shape))})"
            )
        self.image_shape = tuple(image_shape)

    def _tower_names(self) -> tuple[str, ...]:
        return ("student", "teacher", "pi") if self.compute_pi_branch else ("student", "teacher")

    def _start_teacher_as_copy(self) -> None:
        """The teacher of a custom student: the student's weights, its own random draws, and
        no weight the optimizer would see."""
        pairs = networks.weight_pairs(self.student, self.teacher)
        for student_weight, teacher_weight in pairs:
            teacher_weight.assign(student_weight)
            teacher_weight.trainable = False
        networks.reseed(self.teacher, self._teacher_seed)
        self._pairs = None

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
        self._pairs = None  # the student's trainable weights may have changed since (unfreezing)
        if self.built:
            # The optimizer's variables exist as soon as the model's, made as `build` makes them
            # (same list, same name scope) whatever the order of compile and build: a saved
            # optimizer state then loads one to one.
            with self.distribute_strategy.scope(), keras.name_scope(self.name, caller=self):
                self.optimizer.build(self.student.trainable_variables)

    def initialize_from_batch(self, images) -> None:
        """Builds the model on a first training batch, with the network's data-dependent init.

        ConvLarge: the student runs on `images` in training mode (with its random
        perturbations) in the initialisation form of every layer: each layer's g is set so that
        its output has unit variance per channel on this batch, and b to zero. The teacher then
        starts as a copy of the student, and every eval mean at zero. A custom student that
        defines `data_dependent_initialization(images)` gets it on the perturbed batch; any
        other is built, and its teacher copied. `images` may be an array/tensor of images, an
        `(images, labels)` pair or a `tf.data.Dataset` of them (its first batch is used, as the
        original consumes the first training batch).
        """
        if isinstance(images, tf.data.Dataset):
            images = next(iter(images))
        if isinstance(images, (tuple, list)):
            images = images[0]
        images = tf.convert_to_tensor(images, tf.float32)
        if images.shape.rank != 4:
            raise ValueError(
                "initialize_from_batch takes a batch of images (batch, height, width, "
                f"channels). Received: shape {images.shape}"
            )
        if self.built:
            self._set_image_shape(tuple(images.shape[1:]))
        else:
            # Every variable (and the optimizer's, if compiled) made by `build`, as
            # `load_model` makes them (`build_from_config`): same variables, same paths.
            self.build((None, *images.shape[1:]))
        if self.shared_flip_stage is not None:
            # The towers do not flip: the initialisation batch is flipped as a step's would be.
            images = self.shared_flip_stage(images, training=True)
        if self.requires_initialization:
            # Under a tf.distribute strategy the init runs on the whole batch, so every replica
            # gets the same weights.
            with self.distribute_strategy.scope():
                if self.uses_convlarge:
                    self.student.data_dependent_initialization(images)
                    for teacher_var, student_var in self._teacher_student_pairs():
                        teacher_var.assign(student_var)
                    for network in (self.student, self.teacher, self.pi_branch):
                        for layer in (network.weight_norm_layers if network else ()):
                            layer.eval_mean.assign(tf.zeros_like(layer.eval_mean))
                else:
                    hook = getattr(self.student, networks.INITIALIZATION_HOOK)
                    hook(self.student_input_stage(images, training=True))
                    self._start_teacher_as_copy()
        self.is_initialized.assign(True)

    def training_checkpoint(self, *, train_metrics: bool = True) -> tf.train.Checkpoint:
        """The complete training state, for `tf.train.Checkpoint`/`CheckpointManager`.

        Student, teacher and Pi-branch weights and eval means (or every weight of a custom
        student and its teacher), every random generator, the optimizer (slots, running beta
        products, the step), the initialisation flag and, with `train_metrics`, the running
        means of the training metrics (so that a run stopped between two log rows logs the
        same next row once resumed; checkpoints written before they were saved lack them).
        """
        if self.uses_convlarge:
            towers = {"student": self.student, "teacher": self.teacher,
                      "pi_branch": self.pi_branch}
            parts = {name: tower.state_checkpoint() for name, tower in towers.items() if tower}
        else:
            # Everything by position (not name): the teacher copy's layer names may differ.
            parts = {
                name: tf.train.Checkpoint(variables=list(layer.variables))
                for name, layer in (("student", self.student), ("teacher", self.teacher),
                                    ("student_input_stage", self.student_input_stage),
                                    ("teacher_input_stage", self.teacher_input_stage),
                                    ("pi_input_stage", self.pi_input_stage))
                if layer is not None
            }
        if self.shared_flip_stage is not None:
            parts["shared_flip"] = tf.train.Checkpoint(
                state=self.shared_flip_stage.seed_generator.state)
        if train_metrics:
            parts["train_metrics"] = tf.train.Checkpoint(
                variables=[v for tracker in self.train_metrics for v in tracker.variables])
        return tf.train.Checkpoint(**parts, optimizer=self.optimizer,
                                   is_initialized=self.is_initialized)

    def _require_initialized(self, what: str, data=None) -> None:
        if bool(self.is_initialized.numpy()):
            return
        if not self.requires_initialization and data is not None:
            shape = _images_shape(data)
            if shape is not None:  # a custom student needs no data: build it for these images
                self.build(shape)
                return
        if self.requires_initialization:
            raise RuntimeError(
                f"MeanTeacher.{what}() needs an initialised model. Call "
                "`model.initialize_from_batch(first_training_batch_images)` once before "
                "training (the network's data-dependent initialisation), or restore a "
                "checkpoint."
            )
        raise RuntimeError(
            f"MeanTeacher.{what}() needs a built model. Call `model.build((None, height, "
            "width, channels))` or `model.initialize_from_batch(images)` first."
        )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds a model created in a strategy's scope from a first batch that it averages
        # over the replicas; under MultiWorkerMirroredStrategy that average fails on an
        # (images, labels) pair (keras-team/keras#20585). An initialised MeanTeacher (which
        # fit/evaluate/predict require) has every variable already: nothing to build.
        if self.built and bool(self.is_initialized.numpy()):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def fit(self, x=None, *args, **kwargs):
        self._require_initialized("fit", x)
        return super().fit(x, *args, **kwargs)

    def train_on_batch(self, x, *args, **kwargs):
        self._require_initialized("train_on_batch", x)
        return super().train_on_batch(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._require_initialized("evaluate", x)
        # Keras' evaluate resets every metric, the training means too. `fit` evaluates at an
        # epoch's end (and where a finite stream runs dry, within a log span): keep the
        # training means, so that the checkpoint written after it holds them and a resumed
        # run logs the uninterrupted run's next row.
        kept = [(v, v.numpy()) for tracker in self.train_metrics for v in tracker.variables]
        try:
            return super().evaluate(x, *args, **kwargs)
        finally:
            for variable, value in kept:
                variable.assign(value)

    def predict(self, x, *args, **kwargs):
        self._require_initialized("predict", x)
        return super().predict(x, *args, **kwargs)

    # ----------------------------------------------------------------------------------------
    # The training step

    def _tower(self, name: str, images, training: bool):
        """(class_logits, cons_logits) of tower `name`: "student", "teacher" or "pi"."""
        if self.uses_convlarge:
            network = {"student": self.student, "teacher": self.teacher,
                       "pi": self.pi_branch}[name]
            return network(images, training=training)
        stage = {"student": self.student_input_stage, "teacher": self.teacher_input_stage,
                 "pi": self.pi_input_stage}[name]
        network = self.teacher if name == "teacher" else self.student  # Pi: a student pass
        outputs = network(stage(images, training=training), training=training)
        class_logits, cons_logits = networks.logit_pair(outputs, self.hyperparams.num_logits)
        if self.num_classes is None:
            self.num_classes = int(class_logits.shape[-1])
        elif class_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"The student returns {class_logits.shape[-1]} class logits, but the model has "
                f"num_classes={self.num_classes}."
            )
        return class_logits, cons_logits

    def _weight_pairs(self) -> tuple[list, list]:
        """(teacher, student) pairs of the trainable weights (the EMA) and of the others."""
        if self._pairs is None:
            if self.uses_convlarge:
                trainable = list(self._teacher_student_pairs())
                others = [(t.eval_mean, s.eval_mean) for t, s in zip(
                    self.teacher.weight_norm_layers, self.student.weight_norm_layers,
                    strict=True)]
            else:
                optimized = {id(v) for v in self.student.trainable_weights}
                trainable, others = [], []
                for student_w, teacher_w in networks.weight_pairs(self.student, self.teacher):
                    group = trainable if id(student_w) in optimized else others
                    group.append((teacher_w, student_w))
            # Plain attribute: Keras would otherwise track the lists as new state of the model.
            object.__setattr__(self, "_pairs", (trainable, others))
        return self._pairs

    def _teacher_student_pairs(self):
        for teacher_layer, student_layer in zip(
            self.teacher.weight_norm_layers, self.student.weight_norm_layers, strict=True
        ):
            yield from zip(teacher_layer.parameters, student_layer.parameters, strict=True)

    def _update_teacher(self, ema_decay) -> None:
        """teacher -= (teacher - student) * (1 - decay), as TF1's ExponentialMovingAverage."""
        complement = 1.0 - ema_decay
        trainable, others = self._weight_pairs()
        for teacher_var, student_var in trainable:
            teacher_var.assign_sub((teacher_var - student_var) * complement)
        if self.teacher_state == "copy":
            for teacher_var, student_var in others:
                teacher_var.assign(student_var)

    def _optimized_variables(self) -> list:
        """The student's weights that the cost depends on (not the unused second head)."""
        unused = set()
        if self.uses_convlarge and self.hyperparams.num_logits == 1:
            unused = {id(v) for v in self.student.fc_secondary.parameters}
        return [v for v in self.student.trainable_variables if id(v) not in unused]

    def _apply_gradients(self, gradients: list, variables: list) -> None:
        """The optimizer step; a step skipped by loss scaling still moves the step counter."""
        self.optimizer.apply(gradients, variables)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # Loss scaling skips the update of a step with non-finite gradients, and Keras then
            # leaves the step counter too. Everything else of the step has moved (the EMA, the
            # eval means, the data), so the counter moves as well: the schedules, the logs and
            # a resumed run's data position stay in step. Only the student's weights, Adam's
            # moments and its beta products keep their values, as if the gradient were zero.
            skipped = tf.logical_not(self.optimizer.check_finite(gradients))
            self.optimizer.iterations.assign_add(tf.cast(skipped, self.optimizer.iterations.dtype))

    def compute_train_step(self, images, labels) -> tuple[dict, dict]:
        """One training step; returns (this step's metric values, the towers' logits).

        The metric values are the original's `training_metrics` of the step. `train_step`
        feeds them to the Keras metrics; the conformance tool also reads the logits.
        """
        hp = self.hyperparams
        labels = tf.cast(labels, tf.int32)
        if self.shared_flip_stage is not None:
            images = self.shared_flip_stage(images, training=True)
        schedule = scheduled_values(hp, self.optimizer.iterations)
        if self.teacher_reads_ema == "post":
            self._update_teacher(schedule["ema_decay"])
        class_ema, cons_ema = map(tf.stop_gradient, self._tower("teacher", images, True))

        variables = self._optimized_variables()
        consistency_mask = tf.logical_or(
            tf.equal(labels, -1), tf.constant(hp.apply_consistency_to_labeled)
        )

        def consistency(target_logits):
            return losses.consistency_costs(cons_1, target_logits, schedule["cons_coefficient"],
                                            consistency_mask, hp.consistency_trust)

        with tf.GradientTape() as tape:
            class_1, cons_1 = self._tower("student", images, True)
            # A custom student's regularisation losses, of this pass (Keras replaces them at
            # every call, and the Pi branch calls the student again). ConvLarge has none.
            regularization = list(self.student.losses)
            class_costs_1 = losses.classification_costs(class_1, labels)
            res_costs_1 = losses.logit_distance_costs(class_1, cons_1, hp.logit_distance_cost)
            cons_costs_mt = consistency(class_ema)
            total_mt = losses.total_cost(class_costs_1, cons_costs_mt, res_costs_1)
            values = {"train/total_cost/mt": total_mt}
            logits = {"class_logits_1": class_1, "cons_logits_1": cons_1,
                      "class_logits_ema": class_ema, "cons_logits_ema": cons_ema}
            if self.compute_pi_branch:
                class_2, _ = self._tower("pi", images, True)
                if not self.pi_target_gradients:
                    class_2 = tf.stop_gradient(class_2)
                cons_costs_pi = consistency(class_2)
                values["train/cons_cost/pi"] = tf.reduce_mean(cons_costs_pi)
                values["train/total_cost/pi"] = losses.total_cost(
                    class_costs_1, cons_costs_pi, res_costs_1)
                logits["class_logits_2"] = class_2
            loss = total_mt if hp.ema_consistency else values["train/total_cost/pi"]
            if regularization:
                loss = loss + tf.cast(tf.add_n(regularization), loss.dtype)
            # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer: the loss is
            # scaled here, and unscaled (non-finite steps skipped) in apply. Else the identity.
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        if not self.uses_convlarge:  # weights the cost does not reach, e.g. an unused head
            kept = [(g, v) for g, v in zip(gradients, variables, strict=True) if g is not None]
            gradients, variables = [g for g, _ in kept], [v for _, v in kept]

        if self.teacher_reads_ema == "pre":
            self._update_teacher(schedule["ema_decay"])
        self._apply_gradients(gradients, variables)

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
        return self._track_training(values, labels)

    def _track_training(self, values: dict, labels) -> dict:
        """Feeds a step's values to the training metrics; returns their running means."""
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
        for suffix, name in (("1", "student"), ("ema", "teacher")):
            class_logits, cons_logits = self._tower(name, images, False)
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
        per_example["loss"] = per_example[EVAL_LOSS]
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
        class_logits, _ = self._tower("teacher", images, training)
        return class_logits

    def predict_step(self, data):
        images, _ = _unpack(data)
        return self._tower("teacher", images, False)[0]

    def export_teacher(self, path, *, overwrite: bool = False):
        """Writes the teacher (inference mode) as a SavedModel; see `export.export_network`."""
        return self._export("teacher", path, overwrite)

    def export_student(self, path, *, overwrite: bool = False):
        """Writes the student (inference mode) as a SavedModel, like `export_teacher`."""
        return self._export("student", path, overwrite)

    def _export(self, name: str, path, overwrite: bool):
        self._require_initialized(f"export_{name}")
        network = self.teacher if name == "teacher" else self.student
        stage = self.teacher_input_stage if name == "teacher" else self.student_input_stage
        return export_network(
            lambda images: self._tower(name, images, False), path, overwrite=overwrite,
            image_shape=self.image_shape, track=[t for t in (network, stage) if t is not None])

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "hyperparams": self.hyperparams.to_dict(),
            "student": None if self.uses_convlarge
            else keras.saving.serialize_keras_object(self.student),
            "num_classes": self.num_classes,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "width": self.width,
            "teacher_reads_ema": self.teacher_reads_ema,
            "teacher_state": self.teacher_state,
            "compute_pi_branch": self.compute_pi_branch,
            "eval_mean_decay": self.eval_mean_decay,
            "seed": self.seed,
            "shared_flip": self.shared_flip,
            "pi_target_gradients": self.pi_target_gradients,
        }

    @classmethod
    def from_config(cls, config: dict) -> MeanTeacher:
        config = dict(config)
        if config.get("student") is not None:
            config["student"] = keras.saving.deserialize_keras_object(config["student"])
        return cls(**config)

    # ----------------------------------------------------------------------------------------
    # Saving: `save("x.keras")`/`load_model`, `save_weights`/`load_weights`

    def get_build_config(self) -> dict | None:
        # Keras records a build config only when `build` runs; give the image shape whenever
        # the model is built, so that `load_model` rebuilds every variable before loading.
        if self.built and self.image_shape is not None:
            return {"input_shape": [None, *self.image_shape]}
        return super().get_build_config()

    def build_from_config(self, config: dict) -> None:
        # Keras' Model.build_from_config turns a failed build into a warning, after which the
        # load skips every weight it has no variable for: fail instead.
        if "input_shape" not in config:
            raise ValueError(
                "A MeanTeacher build config holds the images' input_shape. "
                f"Received: config={config!r}"
            )
        self.build(config["input_shape"])

    def compile_from_config(self, config: dict) -> None:
        # Keras skips compile() on load when a model overrides it (and then drops the saved
        # optimizer state); ours only adds defaults and checks, so run it.
        self.compile(**keras.saving.deserialize_keras_object(config))

    def save_own_variables(self, store) -> None:
        super().save_own_variables(store)
        # Keras does not save SeedGenerator states (see tensorflow_mean_teacher/saving.py).
        save_extra_state(self, store)

    def load_own_variables(self, store) -> None:
        super().load_own_variables(load_extra_state(self, store))


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


def _images_shape(data) -> tuple | None:
    """The (batch, height, width, channels) shape of the images in `fit`'s or `predict`'s x."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        spec = spec[0] if isinstance(spec, (tuple, list)) else spec
        shape = getattr(spec, "shape", None)
    else:
        first = data[0] if isinstance(data, (tuple, list)) else data
        shape = getattr(first, "shape", None)
    if shape is None or len(shape) != 4 or any(d is None for d in tuple(shape)[1:]):
        return None
    return (None, *(int(d) for d in tuple(shape)[1:]))


def _unpack(data):
    """(images, labels) from a batch; the labels may be absent for prediction."""
    if isinstance(data, (tuple, list)):
        if len(data) not in (1, 2, 3):
            raise ValueError(f"Expected (images, labels) batches. Received {len(data)} elements.")
        if len(data) == 3 and data[2] is not None:
            # The original's costs weigh every example alike (the classification cost over the
            # whole batch, the consistency cost over every example): no per-example weights.
            raise ValueError(
                "MeanTeacher does not support sample weights: its costs weigh every example "
                "alike, as the original's. Pass (images, labels) batches, with label -1 for "
                "examples that should get no classification cost. Received: a batch of "
                "(images, labels, sample_weight)"
            )
        return data[0], (data[1] if len(data) > 1 else None)
    return data, None
