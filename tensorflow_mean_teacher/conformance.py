"""Replays reference fixtures made by the original TF1 code and checks this port against them.

    python -m tensorflow_mean_teacher.conformance FIXTURE.npz [FIXTURE.npz ...]

A fixture (format: tests/data/reference/FORMAT.md) holds the hyperparameters, the batches, and what
the TF1 code computed: the data-dependent init, K training steps, the final weights, eval means,
Adam state and an evaluation. The replay builds a `MeanTeacher` from the stored hyperparameters,
recreates the initial V, runs the same init and steps on the same batches, and compares every
quantity with the tolerance of FORMAT.md section 5.2 (about ten times the float32 noise floor
measured between two kernel sets of the TF1 code itself). Exit status: 0 when every group is
within tolerance, 1 when one is not, 2 (one `error:` line naming the file) when a fixture cannot
be read or is malformed: not an npz, an object array (a pickle, never unpickled: the file is read
with allow_pickle=False), missing keys, inputs of the wrong shape, dtype or labels, or unknown
settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from tensorflow_mean_teacher.architecture import LAYER_NAMES
from tensorflow_mean_teacher.hyperparams import HyperParams
from tensorflow_mean_teacher.model import MeanTeacher
from tensorflow_mean_teacher.npz_files import UnreadableArrays, read_arrays

_REQUIRED_KEYS = ("hyperparams_json", "fixture_json", "batches_x", "batches_y", "eval_x", "eval_y")
_SCHEDULE = ("learning_rate", "adam_beta_1", "adam_beta_2", "ema_decay", "cons_coefficient")
_STUDENT_COSTS = ("class_cost/1", "cons_cost/pi", "cons_cost/mt", "res_cost/1",
                  "total_cost/pi", "total_cost/mt")
_TEACHER_COSTS = ("class_cost/ema", "res_cost/ema")
# FORMAT.md 5.2, per step t = 0..7: the student side loosens as float32 noise compounds.
_STUDENT_LOGITS_RTOL = (5e-5, 5e-5, 1e-4, 5e-4, 2e-3, 2e-2, 2e-2, 2e-2)
_STUDENT_COSTS_RTOL = (1e-5, 1e-5, 1e-5, 1e-4, 1e-3, 2e-3, 1e-2, 1e-2)
_STUDENT_COSTS_ATOL = (2e-7, 2e-6, 1e-5, 5e-5, 2e-3, 4e-3, 8e-3, 2e-2)


class FixtureError(ValueError):
    """A fixture that cannot be read or replayed (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Pass if max|port - ref| <= atol + rtol * max|ref| (normwise; per step if `per_step`)."""

    rtol: float | Sequence[float] = 0.0
    atol: float | Sequence[float] = 0.0
    per_step: bool = False

    def allowed(self, reference: np.ndarray) -> np.ndarray:
        scale = _max_abs(reference, self.per_step)
        return _per_step(self.atol, scale.shape) + _per_step(self.rtol, scale.shape) * scale

    def describe(self) -> str:
        def fmt(value):
            if isinstance(value, (tuple, list)):
                return f"{value[0]:.0e}..{value[-1]:.0e}/step"
            return f"{value:.0e}"
        parts = [f"rtol {fmt(self.rtol)}" if self.rtol else "",
                 f"atol {fmt(self.atol)}" if self.atol else ""]
        return " ".join(p for p in parts if p) or "exact"


def _per_step(value, shape) -> np.ndarray:
    if isinstance(value, (tuple, list)):
        steps = shape[0] if shape else 1
        # A longer fixture keeps the last step's tolerance.
        return np.array([value[min(t, len(value) - 1)] for t in range(steps)]).reshape(shape)
    return np.full(shape, value, dtype=np.float64)


def _max_abs(array: np.ndarray, per_step: bool) -> np.ndarray:
    array = np.abs(np.asarray(array, np.float64))
    if per_step and array.ndim >= 1:
        return array.reshape(array.shape[0], -1).max(axis=1)
    return np.array(array.max() if array.size else 0.0)


def tolerance_for(key: str) -> tuple[str, Tolerance] | None:
    """The group and tolerance of a fixture key (FORMAT.md 5.2); None for inputs and settings."""
    parts = key.split("/")
    if key in ("global_step_before_step", "final/global_step"):
        return "global_step", Tolerance()
    if key.endswith("beta1_power") or key.endswith("beta2_power"):
        return "beta_powers", Tolerance(rtol=1e-6)
    if parts[0] == "init":
        return ("init/g", Tolerance(rtol=3e-5)) if parts[-1] == "g" else ("init/b", Tolerance())
    if parts[0] == "train_metric":
        name = key[len("train_metric/"):]
        metric = name[len("train/"):]
        if name in _SCHEDULE:
            return "train_metric/schedule", Tolerance(rtol=1e-6, per_step=True)
        if metric.startswith("error/"):
            return "train_metric/errors", Tolerance(per_step=True)
        if metric in _TEACHER_COSTS:
            return "train_metric/teacher_costs", Tolerance(rtol=3e-5, atol=1e-5, per_step=True)
        if metric in _STUDENT_COSTS:
            return "train_metric/student_costs", Tolerance(
                rtol=_STUDENT_COSTS_RTOL, atol=_STUDENT_COSTS_ATOL, per_step=True)
        return None
    if parts[0] == "step":
        if key.endswith("_ema"):
            return "step_logits/teacher", Tolerance(rtol=7e-5, per_step=True)
        return "step_logits/student", Tolerance(rtol=_STUDENT_LOGITS_RTOL, per_step=True)
    if parts[0] == "final" and parts[1] in ("student", "teacher"):
        kind = "V" if parts[-1].startswith("V_") else parts[-1]
        student = parts[1] == "student"
        rtol_v, atol_b = (3e-4, 5e-5) if student else (2e-6, 2e-7)
        tolerance = {"g": Tolerance(rtol=3e-5), "V": Tolerance(rtol=rtol_v),
                     "b": Tolerance(atol=atol_b)}[kind]
        return f"final_{parts[1]}/{kind}", tolerance
    if parts[0] == "final" and parts[1] in ("adam_m", "adam_v"):
        return "adam_slots (sanity)", Tolerance(rtol=1.0)
    if parts[0] == "final" and parts[1] == "eval_mean":
        if parts[2] == "ema":
            return "eval_means/teacher", Tolerance(rtol=1e-5)
        return "eval_means/student", Tolerance(rtol=1.5e-3)
    if parts[0] == "eval_metric":
        if parts[2] == "error":
            return "eval_metrics/errors", Tolerance()
        if parts[-1] == "ema":
            return "eval_metrics/teacher", Tolerance(rtol=3e-5)
        return "eval_metrics/student", Tolerance(rtol=7e-3)
    if parts[0] == "eval" and "logits" in parts[-1]:
        if key.endswith("_ema"):
            return "eval_logits/teacher", Tolerance(rtol=6e-5)
        return "eval_logits/student", Tolerance(rtol=2e-2)
    return None


# ---------------------------------------------------------------------------------------------
# Reading and replaying


_IMAGE_SHAPE = (32, 32, 3)  # FORMAT.md 1.1: 32x32x3 patches
_NUM_CLASSES = 10


def _read_arrays(path: str | Path) -> dict:
    """Every array of the npz, read with allow_pickle=False: an object array is refused."""
    try:
        return read_arrays(path)
    except (OSError, UnreadableArrays) as error:
        reason = str(error)
        if "never unpickled" in reason:
            reason += " (FORMAT.md has no pickles)"
        raise FixtureError(f"Cannot read fixture {path}: {reason}") from error


def _check_arrays(path: str | Path, fixture: dict) -> None:
    """Refuses inputs and reference values of the wrong shape or dtype (FORMAT.md 1.1, 1.3)."""
    def refuse(what: str) -> FixtureError:
        return FixtureError(f"Fixture {path}: {what}; not in the FORMAT.md format.")

    def describe(key: str) -> str:
        return f"{key} has shape {fixture[key].shape} and dtype {fixture[key].dtype}"

    for key in ("hyperparams_json", "fixture_json"):
        if fixture[key].shape != () or fixture[key].dtype.kind != "U":
            raise refuse(f"{describe(key)}, expected a 0-d unicode string")
    batches_x, batches_y = fixture["batches_x"], fixture["batches_y"]
    eval_x, eval_y = fixture["eval_x"], fixture["eval_y"]
    if (batches_x.ndim != 5 or batches_x.shape[2:] != _IMAGE_SHAPE or len(batches_x) < 2
            or batches_x.shape[1] < 1 or batches_x.dtype.kind != "f"):
        raise refuse(f"{describe('batches_x')}, expected (K + 1, B, 32, 32, 3) float with K >= 1")
    if batches_y.shape != batches_x.shape[:2] or batches_y.dtype.kind not in "iu":
        raise refuse(f"{describe('batches_y')}, expected {batches_x.shape[:2]} integer")
    if eval_x.ndim != 4 or eval_x.shape[1:] != _IMAGE_SHAPE or len(eval_x) < 1 \
            or eval_x.dtype.kind != "f":
        raise refuse(f"{describe('eval_x')}, expected (M, 32, 32, 3) float")
    if eval_y.shape != eval_x.shape[:1] or eval_y.dtype.kind not in "iu":
        raise refuse(f"{describe('eval_y')}, expected {eval_x.shape[:1]} integer")
    for key in ("batches_y", "eval_y"):
        labels = fixture[key]
        if labels.min() < -1 or labels.max() >= _NUM_CLASSES:
            raise refuse(f"{key} holds labels {labels.min()}..{labels.max()}, expected class ids "
                         f"0..{_NUM_CLASSES - 1} or -1 (unlabeled)")
    for key in ("batches_x", "eval_x"):
        if not np.all(np.isfinite(fixture[key])):
            raise refuse(f"{key} holds NaN or infinite pixels")
    for key, value in fixture.items():
        try:
            rule = tolerance_for(key)
        except IndexError:  # 'final', 'eval_metric/x': a group prefix without its parts
            raise refuse(f"key {key!r} is not a key of FORMAT.md 1.3") from None
        if rule is not None and value.dtype.kind not in "biuf":
            raise refuse(f"{describe(key)}, expected a number array (a reference value)")


def load_fixture(path: str | Path) -> dict:
    """Reads a fixture into a dict of arrays, with `hyperparams` and `settings` parsed.

    Raises FixtureError (exit status 2 of `main`) naming the file for anything that is not a
    fixture of FORMAT.md: not an npz, an object (pickled) array, which is never unpickled,
    missing keys, inputs of the wrong shape, dtype or labels, unusable settings.
    """
    fixture = _read_arrays(path)
    missing = [key for key in _REQUIRED_KEYS if key not in fixture]
    if missing:
        raise FixtureError(f"Fixture {path} lacks the keys {missing}: not in the FORMAT.md format.")
    _check_arrays(path, fixture)
    try:
        hyperparams = json.loads(str(fixture["hyperparams_json"]))
        settings = json.loads(str(fixture["fixture_json"]))
        if not isinstance(hyperparams, dict) or not isinstance(settings, dict):
            raise ValueError("hyperparams_json and fixture_json must be JSON objects")
        fixture["hyperparams"] = HyperParams.from_dict(hyperparams)
    except (ValueError, TypeError) as error:
        raise FixtureError(f"Fixture {path} has unusable hyperparameters: {error}") from error
    fixture["settings"] = settings
    variant = settings.get("ema_race_variant", "pre")
    if variant not in ("pre", "post"):
        raise FixtureError(f"Fixture {path}: unknown ema_race_variant {variant!r}.")
    init_seed = settings.get("init_seed", 1234)
    if not isinstance(init_seed, int) or isinstance(init_seed, bool) or init_seed < 0:
        raise FixtureError(f"Fixture {path}: init_seed must be an integer >= 0, found "
                           f"{init_seed!r}.")
    return fixture


def initial_kernel(layer_index: int, shape, init_seed: int = 1234) -> np.ndarray:
    """The documented V draw of the fixtures: N(0, 0.05) from RandomState(init_seed + index)."""
    random = np.random.RandomState(init_seed + layer_index)
    return random.normal(0.0, 0.05, size=shape).astype(np.float32)


_PROBES: dict[tuple[int, int, int], np.ndarray] = {}


def fingerprint(array, probe_seed: int = 99, n_probes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """([sum, sum of squares], [probe_j . a]) of an array in float64, as FORMAT.md 1.2."""
    a = np.asarray(array, np.float64).ravel()
    key = (a.size, probe_seed, n_probes)
    if key not in _PROBES:
        _PROBES[key] = np.stack([np.random.RandomState(probe_seed + j).normal(size=a.size)
                                 for j in range(n_probes)])
    return np.array([a.sum(), a @ a]), _PROBES[key] @ a


def replay(fixture: dict, *, teacher_reads_ema: str | None = None, jit_compile: bool = False,
           verbose: bool = False) -> dict:
    """Runs the fixture's init, steps and evaluation; returns the port's values by fixture key."""
    settings = fixture["settings"]
    variant = teacher_reads_ema or settings.get("ema_race_variant", "pre")
    model = MeanTeacher(fixture["hyperparams"], teacher_reads_ema=variant, compute_pi_branch=True)
    model.compile()
    batches_x, batches_y = fixture["batches_x"], fixture["batches_y"]
    out: dict[str, np.ndarray] = {}

    # Build the student, then give it the fixture's initial V before the data-dependent init.
    model.student(batches_x[0][:1], training=False)
    init_seed = int(settings.get("init_seed", 1234))
    for index, layer in enumerate(model.student.weight_norm_layers):
        layer.kernel.assign(initial_kernel(index, tuple(layer.kernel.shape), init_seed))
    model.initialize_from_batch(batches_x[0])
    model.optimizer.build(model.student.trainable_variables)
    for name, layer in zip(LAYER_NAMES, model.student.weight_norm_layers, strict=True):
        out[f"init/{name}/g"], out[f"init/{name}/b"] = layer.g.numpy(), layer.b.numpy()
    out["init/beta1_power"] = model.optimizer.beta_1_power.numpy()
    out["init/beta2_power"] = model.optimizer.beta_2_power.numpy()

    step = tf.function(model.compute_train_step, jit_compile=jit_compile)
    metrics, logits, steps_before = {}, {}, []
    for k in range(1, len(batches_x)):
        started = time.perf_counter()
        steps_before.append(int(model.optimizer.iterations.numpy()))
        values, step_logits = step(tf.constant(batches_x[k]), tf.constant(batches_y[k]))
        for name, value in values.items():
            metrics.setdefault(name, []).append(value.numpy())
        for name, value in step_logits.items():
            logits.setdefault(name, []).append(value.numpy())
        if verbose:
            print(f"  step {k - 1}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    out["global_step_before_step"] = np.array(steps_before, np.int32)
    for name, series in metrics.items():
        out[f"train_metric/{name}"] = np.array(series)
    for name, series in logits.items():
        out[f"step/{name}"] = np.array(series)
    out["final/global_step"] = np.array(model.optimizer.iterations.numpy(), np.int32)

    towers = {"student": model.student, "teacher": model.teacher}
    for role, network in towers.items():
        for name, layer in zip(LAYER_NAMES, network.weight_norm_layers, strict=True):
            out[f"final/{role}/{name}/g"] = layer.g.numpy()
            out[f"final/{role}/{name}/b"] = layer.b.numpy()
            _put_fingerprint(out, f"final/{role}/{name}", layer.kernel.numpy())
    for name, layer in zip(LAYER_NAMES, model.student.weight_norm_layers, strict=True):
        for slot_name, slot in zip(("adam_m", "adam_v"), model.optimizer.slots(layer.kernel),
                                   strict=True):
            _put_fingerprint(out, f"final/{slot_name}/{name}", slot.numpy())
        for variable, part in ((layer.g, "g"), (layer.b, "b")):
            m, v = model.optimizer.slots(variable)
            out[f"final/adam_m/{name}/{part}"] = m.numpy()
            out[f"final/adam_v/{name}/{part}"] = v.numpy()
    eval_towers = {"primary": model.student, "secondary": model.pi_branch, "ema": model.teacher}
    for role, network in eval_towers.items():
        for name, layer in zip(LAYER_NAMES, network.weight_norm_layers, strict=True):
            out[f"final/eval_mean/{role}/{name}"] = layer.eval_mean.numpy()
    out["final/beta1_power"] = model.optimizer.beta_1_power.numpy()
    out["final/beta2_power"] = model.optimizer.beta_2_power.numpy()

    # Evaluation through Keras' own path (test_step and its metrics), and the logits.
    results = model.evaluate(fixture["eval_x"], fixture["eval_y"],
                             batch_size=len(fixture["eval_x"]), verbose=0, return_dict=True)
    for name, value in results.items():
        out[f"eval_metric/{name}"] = np.array(value, np.float32)
    _, eval_logits = model.compute_evaluation(fixture["eval_x"], fixture["eval_y"])
    for name, value in eval_logits.items():
        out[f"eval/{name}"] = value.numpy()
    return out


def _put_fingerprint(out: dict, prefix: str, array: np.ndarray) -> None:
    out[f"{prefix}/V_sum_sumsq"], out[f"{prefix}/V_probe_dots"] = fingerprint(array)


# ---------------------------------------------------------------------------------------------
# Comparing


@dataclasses.dataclass
class GroupResult:
    group: str
    tolerance: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst_ratio: float = 0.0  # deviation / allowed deviation; <= 1 passes
    worst_key: str = ""
    n_keys: int = 0

    @property
    def passed(self) -> bool:
        return self.worst_ratio <= 1.0


def compare(fixture: dict, port: dict) -> list[GroupResult]:
    """Groups every checked fixture key and measures the port's deviation against tolerance."""
    groups: dict[str, GroupResult] = {}
    for key, reference in fixture.items():
        rule = tolerance_for(key)
        if rule is None or not isinstance(reference, np.ndarray):
            continue
        group, tolerance = rule
        result = groups.setdefault(group, GroupResult(group, tolerance.describe()))
        result.n_keys += 1
        if key not in port:
            result.worst_ratio, result.worst_key = float("inf"), f"{key} (not computed)"
            continue
        reference = np.asarray(reference, np.float64)
        value = np.asarray(port[key], np.float64)
        if value.shape != reference.shape:
            result.worst_ratio, result.worst_key = float("inf"), f"{key} (shape {value.shape})"
            continue
        deviation = _max_abs(value - reference, tolerance.per_step)
        scale = _max_abs(reference, tolerance.per_step)
        allowed = tolerance.allowed(reference)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(deviation == 0, 0.0, deviation / allowed)
            relative = np.where(scale > 0, deviation / scale, 0.0)
        result.max_abs = max(result.max_abs, float(deviation.max()))
        result.max_rel = max(result.max_rel, float(np.max(relative)))
        worst = float(np.max(ratio))
        if worst >= result.worst_ratio:
            result.worst_ratio, result.worst_key = worst, key
    return sorted(groups.values(), key=lambda r: r.group)


def format_report(name: str, results: list[GroupResult], seconds: float) -> str:
    lines = [f"== {name}  ({seconds:.0f} s)",
             f"  {'group':<28} {'max_abs':>9} {'max_rel':>9}  {'tolerance':<30} "
             f"{'used':>6}  result  worst key"]
    for r in results:
        used = "inf" if r.worst_ratio == float("inf") else f"{r.worst_ratio:.2f}"
        lines.append(
            f"  {r.group:<28} {r.max_abs:9.2e} {r.max_rel:9.2e}  {r.tolerance:<30} {used:>6}  "
            f"{'ok' if r.passed else 'FAIL':<6}  {r.worst_key}"
        )
    return "\n".join(lines)


@dataclasses.dataclass
class FixtureReport:
    name: str
    results: list[GroupResult]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


def check_fixture(path: str | Path, *, teacher_reads_ema: str | None = None,
                  jit_compile: bool = False, verbose: bool = False) -> FixtureReport:
    """Loads, replays and compares one fixture."""
    started = time.perf_counter()
    fixture = load_fixture(path)
    port = replay(fixture, teacher_reads_ema=teacher_reads_ema, jit_compile=jit_compile,
                  verbose=verbose)
    return FixtureReport(Path(path).name, compare(fixture, port), time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tensorflow_mean_teacher.conformance",
        description="Replay TF1 Mean Teacher reference fixtures and check this port against them.",
    )
    parser.add_argument("fixtures", nargs="+", metavar="FIXTURE.npz")
    parser.add_argument("--teacher_reads_ema", choices=("pre", "post"), default=None,
                        help="override the fixture's EMA-read variant (to see that it matters)")
    parser.add_argument("--jit_compile", action="store_true",
                        help="replay the training steps compiled with XLA")
    parser.add_argument("--verbose", action="store_true", help="print each step's time")
    args = parser.parse_args(argv)

    reports = []
    for path in args.fixtures:
        try:
            report = check_fixture(path, teacher_reads_ema=args.teacher_reads_ema,
                                   jit_compile=args.jit_compile, verbose=args.verbose)
        except FixtureError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(format_report(report.name, report.results, report.seconds), flush=True)
        reports.append(report)
    failed = [f"{r.name}:{g.group}" for r in reports for g in r.results if not g.passed]
    n_groups = sum(len(r.results) for r in reports)
    worst = max(((g.worst_ratio, f"{r.name} {g.group}") for r in reports for g in r.results),
                default=(0.0, ""))
    if failed:
        print(f"summary: FAIL: {len(failed)} of {n_groups} groups out of tolerance: "
              f"{', '.join(failed)}")
        return 1
    print(f"summary: PASS: {len(reports)} fixture(s), {n_groups} groups within tolerance "
          f"(largest use of a tolerance: {worst[0]:.2f} in {worst[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
