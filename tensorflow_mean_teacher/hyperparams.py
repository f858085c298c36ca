"""The Mean Teacher hyperparameters, under the names and defaults of the original TF1 code.

`HyperParams` is immutable and validated on construction: a reader of the paper's code finds
every knob under the name they know (`max_consistency_cost`, `rampup_length`, ...), and a wrong
value fails before any training starts, with a message naming the key, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class HyperParams:
    """Every hyperparameter of the original `Model.DEFAULT_HYPERPARAMS`, with the same defaults.

    Consistency: `ema_consistency` (Mean Teacher if True, Pi model if False),
    `apply_consistency_to_labeled`, `max_consistency_cost`, `ema_decay_during_rampup`,
    `ema_decay_after_rampup`, `consistency_trust` (0: MSE, 1: KL, in between: mixture KL),
    `num_logits` (1 or 2), `logit_distance_cost`.
    Optimizer: `max_learning_rate`, `adam_beta_1_before_rampdown`, `adam_beta_1_after_rampdown`,
    `adam_beta_2_during_rampup`, `adam_beta_2_after_rampup`, `adam_epsilon`.
    Architecture: `input_noise`, `student_dropout_probability`, `teacher_dropout_probability`.
    Schedule (in training steps): `rampup_length`, `rampdown_length`, `training_length`.
    Augmentation: `flip_horizontally`, `translate`, `normalize_input`.
    Output: `print_span`, `evaluation_span` (in steps).
    """

    # Consistency
    ema_consistency: bool = True
    apply_consistency_to_labeled: bool = True
    max_consistency_cost: float = 100.0
    ema_decay_during_rampup: float = 0.99
    ema_decay_after_rampup: float = 0.999
    consistency_trust: float = 0.0
    num_logits: int = 1
    logit_distance_cost: float = 0.0
    # Optimizer
    max_learning_rate: float = 0.003
    adam_beta_1_before_rampdown: float = 0.9
    adam_beta_1_after_rampdown: float = 0.5
    adam_beta_2_during_rampup: float = 0.99
    adam_beta_2_after_rampup: float = 0.999
    adam_epsilon: float = 1e-8
    # Architecture
    input_noise: float = 0.15
    student_dropout_probability: float = 0.5
    teacher_dropout_probability: float = 0.5
    # Training schedule
    rampup_length: int = 40000
    rampdown_length: int = 25000
    training_length: int = 150000
    # Input augmentation
    flip_horizontally: bool = False
    translate: bool = True
    normalize_input: bool = True
    # Output schedule
    print_span: int = 20
    evaluation_span: int = 500

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _coerce(field, getattr(self, field.name)))
        self._check_ranges()

    def _check_ranges(self) -> None:
        def require(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(
                    f"Invalid hyperparameter {name}: it must be {allowed}. "
                    f"Received: {name}={getattr(self, name)!r}"
                )

        for name in ("ema_decay_during_rampup", "ema_decay_after_rampup",
                     "adam_beta_1_before_rampdown", "adam_beta_1_after_rampdown",
                     "adam_beta_2_during_rampup", "adam_beta_2_after_rampup",
                     "student_dropout_probability", "teacher_dropout_probability"):
            require(name, 0.0 <= getattr(self, name) < 1.0, "in [0, 1)")
        require("consistency_trust", 0.0 <= self.consistency_trust <= 1.0, "in [0, 1]")
        require("num_logits", self.num_logits in (1, 2), "1 or 2")
        for name in ("max_consistency_cost", "logit_distance_cost", "max_learning_rate",
                     "input_noise", "rampup_length", "rampdown_length"):
            require(name, getattr(self, name) >= 0, ">= 0")
        require("adam_epsilon", self.adam_epsilon > 0, "> 0")
        for name in ("training_length", "print_span", "evaluation_span"):
            require(name, getattr(self, name) >= 1, ">= 1")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HyperParams:
        """Builds from a mapping; an unknown key is an error that lists the known ones."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ValueError(
                f"Unknown hyperparameter(s): {', '.join(unknown)}. "
                f"Allowed: {', '.join(cls.names())}"
            )
        return cls(**values)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> HyperParams:
        """A copy with some values changed (validated like a new object)."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    """Accepts numpy scalars and integral floats where the original took ints; refuses the rest."""
    kind = field.type
    name = field.name
    if hasattr(value, "item") and not isinstance(value, (bool, int, float)):
        value = value.item()  # numpy scalar -> Python scalar
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeError(f"Hyperparameter {name} must be a bool. Received: {name}={value!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise TypeError(
                f"Hyperparameter {name} must be an integer. Received: {name}={value!r}"
            )
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"Hyperparameter {name} must be a number. Received: {name}={value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"Hyperparameter {name} must be finite. Received: {name}={value!r}")
        return value
    raise AssertionError(f"unhandled hyperparameter type {kind!r}")
