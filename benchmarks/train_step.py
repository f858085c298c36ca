"""Speed of the full Mean Teacher training step on this machine, with XLA off and on.

Run from the repository root:

    python -m benchmarks.train_step --batch 100 --steps 4 --json /tmp/bench.json
    python -m benchmarks.train_step --xla off --pi_branch   # the TF1-like three-tower step

Each XLA mode is measured in a process of its own (`--xla both` starts one per mode; with
`--xla off` or `--xla on` the mode runs in this process), so that its peak memory and timings
are its own. In that process, in this order (progress lines on stderr):

1. The machine's peak: a float32 matmul (4096x4096 by default) and the model's largest layer, a
   forward 3x3 convolution 256->256 channels on 16x16 maps at batch 100 (`tf.nn.conv2d`, NHWC),
   in GFLOP/s: best and median of `--peak_repeats` runs after one untimed run.
2. A fresh `MeanTeacher(HyperParams(), width=...)` (the original defaults: input noise,
   translation and dropout on; two towers unless `--pi_branch`), `compile(jit_compile=...)`,
   `initialize_from_batch` on a fixed random batch (`--labeled_per_batch` rows labeled) and the
   optimizer built, in the order of `tensorflow_mean_teacher.training.train` (the runners' loop,
   which then calls `fit`). Timed: `model.train_function`, the very function that `fit` calls
   once per step (Keras' `tf.function` `one_step_on_data` around `train_step`, XLA-compiled
   when `jit_compile=True`), fed by an iterator that repeats the fixed batch.
   The first call (trace, compile and one step) and `--warmup` more steps are not in the
   statistics; then `--steps` steps are timed one by one. Right before each timed step the
   peak convolution above is measured again (best of `--peak_repeats` runs): this machine's
   speed drifts by tens of percent within a minute, so each step is compared with the peak of
   its own moment. A mode that fails (e.g. an XLA compile error) is reported with its error.
3. (In the parent process) the `tf.data` input pipeline alone: `datasets.training_dataset` on
   `--pipeline_examples` random 32x32x3 float32 images (4,000 labeled), batch `--batch`, with
   n_labeled_per_batch=`--labeled_per_batch` (the top-level figure) and 'vary'. As in the
   runners, both streams gather from one `datasets.host_images` copy of the array.

Share of the peak: `percent_of_peak_conv` is the median over the timed steps of (the step's
GFLOP/s / the conv peak measured right before it); `percent_of_max_conv`, the pessimistic
reading, divides the median step's GFLOP/s by the fastest convolution seen anywhere in the
mode's process. Both are reported.

FLOPs per step are counted analytically (`step_flops`: the convolutions and matmuls of
ConvLarge); the TF profiler's count of the traced step graph is reported next to it.
Peak RSS is the process's `ru_maxrss`; the figure after each phase is the peak so far.
The top-level figures of the report are those of the faster mode.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from datasets import host_images, training_dataset
from tensorflow_mean_teacher import HyperParams, MeanTeacher

_START = time.perf_counter()
# The original data sets' number of labeled training images in the CIFAR-10 4000-label runs.
_PIPELINE_LABELED_EXAMPLES = 4000


def log(message: str) -> None:
    """A progress line on stderr, with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarize(seconds: Sequence[float]) -> dict:
    """Median, min, max and quartiles of a list of durations."""
    if len(seconds) > 1:
        quartiles = statistics.quantiles(seconds, n=4, method="inclusive")
    else:
        quartiles = [seconds[0]] * 3
    return {
        "median": statistics.median(seconds), "min": min(seconds), "max": max(seconds),
        "q25": quartiles[0], "q75": quartiles[2],
    }


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------
# FLOP counts


def convlarge_forward_flops(width: int = 128, num_classes: int = 10) -> dict[str, int]:
    """FLOPs (2 x multiply-adds) per 32x32 image of one ConvLarge forward pass, per layer.

    Only the convolutions and matmuls count: the elementwise ops, poolings and weight
    normalisation add well under 1%.
    """
    w = width
    layers = (  # name, output height (= width), kernel, input channels, output channels
        ("conv_1_1", 32, 3, 3, w), ("conv_1_2", 32, 3, w, w), ("conv_1_3", 32, 3, w, w),
        ("conv_2_1", 16, 3, w, 2 * w), ("conv_2_2", 16, 3, 2 * w, 2 * w),
        ("conv_2_3", 16, 3, 2 * w, 2 * w),
        ("conv_3_1", 6, 3, 2 * w, 4 * w), ("conv_3_2", 6, 1, 4 * w, 2 * w),
        ("conv_3_3", 6, 1, 2 * w, w),
        ("fully_connected", 1, 1, w, num_classes), ("fully_connected_1", 1, 1, w, num_classes),
    )
    return {name: 2 * size * size * k * k * c_in * c_out for name, size, k, c_in, c_out in layers}


def step_flops(width: int, batch: int, pi_branch: bool, num_classes: int = 10) -> int:
    """FLOPs of one Mean Teacher step with the default hyperparameters (one logit head).

    Student forward and backward, teacher forward, and the Pi branch's forward if computed
    (it feeds only the reported `train/cons_cost/pi`, so no gradient flows through it).
    The backward of a layer is its weight gradient plus its input gradient, each as many FLOPs
    as its forward; the first convolution has no input gradient (the images need none) and the
    unused second head has no backward.
    """
    forward = convlarge_forward_flops(width, num_classes)
    one_forward = sum(forward.values())
    backward = 2 * (one_forward - forward["fully_connected_1"]) - forward["conv_1_1"]
    towers = 3 if pi_branch else 2
    return batch * (towers * one_forward + backward)


def step_graph(model: MeanTeacher, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Graph, str]:
    """The graph of the step that `model.train_function` traced (Keras' `one_step_on_data`).

    Found in the closure of `train_function`; if Keras' internals differ, `model.train_step`
    is traced afresh on the batch's shapes instead (the same graph, a few seconds more).
    """
    spec = (tf.TensorSpec(images.shape, images.dtype), tf.TensorSpec(labels.shape, labels.dtype))
    function = model.train_function
    closure = dict(zip(function.__code__.co_freevars,
                       (cell.cell_contents for cell in function.__closure__ or ()), strict=True))
    step = getattr(closure.get("one_step_on_data"), "__wrapped__", None)
    source = "Keras one_step_on_data (the traced fit step)"
    if not isinstance(step, tf.types.experimental.PolymorphicFunction):
        step, source = tf.function(model.train_step), "a fresh trace of model.train_step"
    return step.get_concrete_function(spec).graph, source


def profiler_flops(model: MeanTeacher, images: tf.Tensor, labels: tf.Tensor) -> tuple[int, str]:
    """The TF profiler's FLOP count of the traced step graph (`step_graph`), and its source.

    It counts every op with a registered FLOP statistic, before Grappler/XLA prune dead ops.
    """
    graph, source = step_graph(model, images, labels)
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    return int(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops), source


# ------------------------------------------------------------------------------------------
# Measurements


def measure_peak(fn: Callable[[], object], flops: int, repeats: int) -> dict:
    """GFLOP/s of `fn` (one untimed call, then `repeats` timed ones); CPU ops run eagerly."""
    fn()
    seconds = [time_call(fn) for _ in range(repeats)]
    return {
        "gflop": flops / 1e9,
        "best_gflops": flops / min(seconds) / 1e9,
        "median_gflops": flops / statistics.median(seconds) / 1e9,
    }


def conv_peak_probe(conv_batch: int, repeats: int) -> Callable[[], dict]:
    """A function measuring the 3x3 conv 256->256 on 16x16 maps (NHWC) in GFLOP/s, each call."""
    x = tf.random.normal([conv_batch, 16, 16, 256])
    kernel = tf.random.normal([3, 3, 256, 256])
    flops = 2 * conv_batch * 16 * 16 * 9 * 256 * 256
    return lambda: measure_peak(lambda: tf.nn.conv2d(x, kernel, 1, "SAME"), flops, repeats)


def measure_machine_peaks(matmul_size: int, conv_batch: int, repeats: int) -> dict:
    """Peak float32 matmul and 3x3 conv (256->256, 16x16, NHWC) throughput of this machine."""
    a = tf.random.normal([matmul_size, matmul_size])
    b = tf.random.normal([matmul_size, matmul_size])
    log(f"peak: {matmul_size}x{matmul_size} float32 matmul x{repeats}")
    matmul = measure_peak(lambda: tf.matmul(a, b), 2 * matmul_size**3, repeats)
    log(f"peak: 3x3 conv 256->256 on 16x16, batch {conv_batch} x{repeats}")
    conv = conv_peak_probe(conv_batch, repeats)()
    return {"matmul": {"size": matmul_size, **matmul}, "conv": {"batch": conv_batch, **conv}}


def fixed_batch(batch: int, labeled: int, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """Random 32x32x3 images; the first `labeled` rows carry a class, the others -1."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 32, 32, 3), dtype=np.float32)
    labels = np.where(np.arange(batch) < labeled, np.arange(batch) % 10, -1).astype(np.int32)
    return tf.constant(images), tf.constant(labels)


def build_model(width: int, xla: bool, pi_branch: bool, images: tf.Tensor) -> MeanTeacher:
    """The original-default Mean Teacher, compiled and initialised as `training.train` does."""
    model = MeanTeacher(HyperParams(), width=width, compute_pi_branch=pi_branch or None, seed=0)
    model.compile(jit_compile=xla)
    if xla and not model.jit_compile:
        raise RuntimeError("Keras turned jit_compile off: model_supports_jit(model) is False")
    model.initialize_from_batch(images)
    model.optimizer.build(model.student.trainable_variables)
    return model


def time_train_step(model: MeanTeacher, images: tf.Tensor, labels: tf.Tensor,
                    steps: int, warmup: int,
                    before_each_step: Callable[[], dict] | None = None) -> dict:
    """Times `model.train_function` (fit's per-step function) on a repeated fixed batch.

    `before_each_step` (untimed) runs right before every timed step; its results are listed
    under "before_each_step".
    """
    model.make_train_function()
    # No tf.data autotuning for a constant batch: its background thread would only compete for
    # the CPUs, and it makes deleting the iterator block for seconds after XLA-compiled steps.
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    batches = tf.data.Dataset.from_tensors((images, labels)).repeat().with_options(options)
    iterator = iter(batches)
    losses = []

    def step() -> None:
        logs = model.train_function(iterator)
        losses.append(float(logs["loss"]))  # Fetching the loss waits for the step.

    first = time_call(step)
    log(f"  first call (trace, compile, 1 step): {first:.1f} s; {warmup} warm-up step(s)")
    for _ in range(warmup):
        step()
    seconds, cpu_seconds, probes = [], 0.0, []
    for i in range(steps):
        if before_each_step is not None:
            probes.append(before_each_step())
        cpu_start = time.process_time()
        seconds.append(time_call(step))
        cpu_seconds += time.process_time() - cpu_start
        log(f"  step {i + 1}/{steps}: {seconds[-1]:.3f} s")
    stats = summarize(seconds)
    return {
        "jit_compile": bool(model.jit_compile),
        "first_call_seconds": first,
        "step_seconds": seconds,
        **{f"step_seconds_{key}": value for key, value in stats.items()},
        "images_per_second": len(images) / stats["median"],
        # CPU seconds per wall second of the timed steps (at most the number of cores):
        # well below it means that other processes took CPU time, or idle threads.
        "cpu_utilization": cpu_seconds / sum(seconds),
        "final_loss": losses[-1],
        "before_each_step": probes,
    }


def share_of_conv_peak(result: dict, gflop: float, start_peak: dict) -> dict:
    """The step's GFLOP/s against the conv peak measured before each step, and the fastest."""
    adjacent = [probe["best_gflops"] for probe in result["before_each_step"]]
    per_step = [100 * gflop / seconds / peak
                for seconds, peak in zip(result["step_seconds"], adjacent, strict=True)]
    achieved = gflop / result["step_seconds_median"]
    fastest = max([start_peak["best_gflops"], *adjacent])
    return {
        "gflop_per_step": gflop,
        "achieved_gflops": achieved,
        "conv_gflops_before_each_step": adjacent,
        "percent_of_peak_conv_per_step": per_step,
        "peak_conv_gflops": statistics.median(adjacent),
        "percent_of_peak_conv": statistics.median(per_step),
        "peak_conv_gflops_max": fastest,
        "percent_of_max_conv": 100 * achieved / fastest,
    }


def measure_pipeline(images: np.ndarray | tf.Variable, labels: np.ndarray, batch: int,
                     n_labeled_per_batch: int | str, batches: int, warmup: int = 10) -> dict:
    """Images per second that `datasets.training_dataset` delivers, iterated alone."""
    dataset = training_dataset(images, labels, batch_size=batch,
                               n_labeled_per_batch=n_labeled_per_batch, seed=0)
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    return {"n_labeled_per_batch": n_labeled_per_batch, "batches": batches,
            "seconds": seconds, "images_per_second": batches * batch / seconds}


def pipeline_data(n_examples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 images; the first 4,000 (at most) labeled, the rest -1."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n_examples, 32, 32, 3), dtype=np.float32)
    n_labeled = min(_PIPELINE_LABELED_EXAMPLES, n_examples)
    labels = np.full(n_examples, -1, np.int32)
    labels[:n_labeled] = np.arange(n_labeled) % 10
    return images, labels


# ------------------------------------------------------------------------------------------
# Report


def _error_text(error: BaseException, limit: int = 4000) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[: limit // 2] + " [...] " + text[-limit // 2:]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """The report as a readable table."""
    s, flops = report["settings"], report["flops"]
    towers = "3 towers: student, teacher, Pi branch" if report["pi_branch_computed"] else (
        "2 towers: student, teacher (Pi branch not computed)")
    lines = [
        f"Mean Teacher training step - ConvLarge width {s['width']}, batch {s['batch']}, {towers}",
        f"TF {s['tensorflow']}, Keras {s['keras']}, {s['cpu_count']} CPUs; timed: "
        f"model.train_function (fit's step), {s['steps']} steps after warm-up",
        "",
    ]
    results = report["results"]
    rows = (
        ("first call: trace+compile+step (s)", lambda r: _fmt(r["first_call_seconds"], ".1f")),
        ("step time, median (s)", lambda r: _fmt(r["step_seconds_median"], ".3f")),
        ("step time, min - max (s)",
         lambda r: f"{r['step_seconds_min']:.3f} - {r['step_seconds_max']:.3f}"),
        ("step time, quartiles (s)",
         lambda r: f"{r['step_seconds_q25']:.3f} - {r['step_seconds_q75']:.3f}"),
        ("images / s", lambda r: _fmt(r["images_per_second"], ".1f")),
        ("GFLOP / step (analytic)", lambda r: _fmt(r["gflop_per_step"], ".4g")),
        ("achieved GFLOP/s", lambda r: _fmt(r["achieved_gflops"], ".4g")),
        ("conv peak before each step (median)", lambda r: _fmt(r["peak_conv_gflops"], ".4g")),
        ("% of that peak (median over steps)", lambda r: _fmt(r["percent_of_peak_conv"], ".0f")),
        ("fastest conv in the process", lambda r: _fmt(r["peak_conv_gflops_max"], ".4g")),
        ("% of the fastest conv", lambda r: _fmt(r["percent_of_max_conv"], ".0f")),
        ("CPU s per wall s (timed steps)", lambda r: _fmt(r["cpu_utilization"], ".2f")),
        ("peak RSS of its process (MiB)", lambda r: _fmt(r["peak_rss_mib"], ".0f")),
    )
    lines.append(f"{'':36}" + "".join(f"{'XLA ' + mode:>17}" for mode in results))
    for label, cell in rows:
        cells = [("FAILED" if label.startswith("first") else "") if "error" in r else cell(r)
                 for r in results.values()]
        lines.append(f"{label:36}" + "".join(f"{c:>17}" for c in cells))
    lines.append("")
    for mode, r in results.items():
        if "error" in r:
            lines.append(f"XLA {mode} failed: {r['error'].splitlines()[0][:300]}")
    if report.get("xla_on_speedup"):
        ratio = report["xla_on_speedup"]
        verdict = "faster" if ratio >= 1 else "slower"
        lines.append(f"XLA on is {abs(ratio - 1) * 100:.0f}% {verdict} than XLA off "
                     f"(median step off / on = {ratio:.2f})")
    profiler = flops["profiler_gflop_per_step"]
    lines += [
        f"FLOPs: analytic {flops['gflop_per_step']:.4g} GFLOP/step = batch x (towers x "
        f"{flops['forward_gflop_per_image']:.4g} GFLOP forward + student backward ~2x forward)",
        "  TF profiler, traced step graph (also counts elementwise and pruned ops): "
        + (f"{profiler:.4g} GFLOP" if profiler else f"n/a ({flops.get('profiler_error')})"),
    ]
    if report["peaks"]:
        matmul, conv = report["peaks"]["matmul"], report["peaks"]["conv"]
        lines.append(
            f"Machine peak at the start of the XLA {report['xla']} process: matmul "
            f"{matmul['size']}^2 float32 {matmul['best_gflops']:.1f} GFLOP/s (median "
            f"{matmul['median_gflops']:.1f}); conv 3x3 256->256 16x16 batch {conv['batch']} "
            f"{conv['best_gflops']:.1f} GFLOP/s (median {conv['median_gflops']:.1f}); conv peaks "
            "are the best of --peak_repeats runs")
    for p in report["pipeline"].values():
        lines.append(
            f"Input pipeline: training_dataset, {s['pipeline_examples']} float32 images, batch "
            f"{s['batch']}, n_labeled_per_batch={p['n_labeled_per_batch']!r}: "
            f"{p['images_per_second']:.0f} images/s")
    lines.append(f"Peak RSS: the XLA {report['xla']} process {_fmt(report['peak_rss_mib'], '.0f')} "
                 f"MiB; the process that measured the input pipeline "
                 f"{report['pipeline_process_peak_rss_mib']:.0f} MiB ({s['processes']})")
    start, end = s["load_average_at_start"][0], s["load_average_at_end"][0]
    lines.append(f"1-min load average at start / end: {start:.2f} / {end:.2f} "
                 "(much above 0 at start: other processes competed for the CPUs)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step",
        description="Times the full Mean Teacher training step (XLA off/on), the machine's "
                    "peak matmul/conv GFLOP/s and the tf.data input pipeline.")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per XLA mode")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps after the first (trace/compile) call")
    parser.add_argument("--width", type=int, default=128, help="ConvLarge width (128: original)")
    parser.add_argument("--xla", choices=("off", "on", "both"), default="both")
    parser.add_argument("--pi_branch", action="store_true",
                        help="also compute the Pi-branch tower (the TF1 three-tower step)")
    parser.add_argument("--labeled_per_batch", type=int, default=50,
                        help="labeled rows of the timed batch and of the pipeline's batches")
    parser.add_argument("--pipeline_examples", type=int, default=50_000)
    parser.add_argument("--pipeline_batches", type=int, default=200)
    parser.add_argument("--matmul_size", type=int, default=4096)
    parser.add_argument("--conv_batch", type=int, default=100)
    parser.add_argument("--peak_repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the report to this JSON file")
    parser.add_argument("--in_process", action="store_true",
                        help="with --xla both: measure both modes in this process")
    parser.add_argument("--mode_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch", "steps", "width", "pipeline_examples", "pipeline_batches",
                 "matmul_size", "conv_batch", "peak_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if not 1 <= args.labeled_per_batch <= args.batch:
        parser.error("--labeled_per_batch must be from 1 to --batch")
    if args.mode_only and (args.xla == "both" or args.json is None):
        parser.error("--mode_only needs --xla off|on and --json")
    return args


def measure_mode(args: argparse.Namespace, mode: str) -> dict:
    """Everything measured for one XLA mode, in this process (see the module docstring)."""
    peaks = measure_machine_peaks(args.matmul_size, args.conv_batch, args.peak_repeats)
    probe = conv_peak_probe(args.conv_batch, args.peak_repeats)
    images, labels = fixed_batch(args.batch, args.labeled_per_batch)
    gflop = step_flops(args.width, args.batch, args.pi_branch) / 1e9
    profiler = {"profiler_gflop_per_step": None, "profiler_graph": None, "profiler_error": None}
    log(f"train step, XLA {mode}: width {args.width}, batch {args.batch}")
    model = None
    try:
        model = build_model(args.width, mode == "on", args.pi_branch, images)
        result = time_train_step(model, images, labels, args.steps, args.warmup, probe)
        result.update(share_of_conv_peak(result, gflop, peaks["conv"]),
                      pi_branch_computed=bool(model.compute_pi_branch))
    except Exception as error:  # e.g. an XLA compile error: reported, not raised.
        log(f"  failed: {_error_text(error, 300)}")
        result = {"error": _error_text(error)}
    result.update(xla=mode, peak_rss_mib=peak_rss_mib(), peaks=peaks)
    if "error" not in result:
        log("  TF profiler FLOP count of the traced step graph")
        try:
            count, profiler["profiler_graph"] = profiler_flops(model, images, labels)
            profiler["profiler_gflop_per_step"] = count / 1e9
        except Exception as error:
            profiler["profiler_error"] = _error_text(error, 300)
    del model
    gc.collect()
    return {"result": result, "profiler": profiler}


def _forwarded_flags(args: argparse.Namespace, mode: str, json_path: Path) -> list[str]:
    flags = ["--xla", mode, "--mode_only", "--json", str(json_path)]
    for name in ("batch", "steps", "warmup", "width", "labeled_per_batch", "matmul_size",
                 "conv_batch", "peak_repeats"):
        flags += [f"--{name}", str(getattr(args, name))]
    return flags + (["--pi_branch"] if args.pi_branch else [])


def measure_mode_in_subprocess(args: argparse.Namespace, mode: str) -> dict:
    """`measure_mode` in a fresh Python process, so that its memory and threads are its own."""
    with tempfile.TemporaryDirectory() as directory:
        json_path = Path(directory) / "mode.json"
        command = [sys.executable, "-m", "benchmarks.train_step",
                   *_forwarded_flags(args, mode, json_path)]
        log(f"XLA {mode}: in a process of its own")
        completed = subprocess.run(command, cwd=Path(__file__).resolve().parents[1],
                                   stdout=subprocess.DEVNULL, check=False)
        if completed.returncode == 0 and json_path.exists():
            return json.loads(json_path.read_text())
    return {"result": {"xla": mode, "error": f"the process measuring XLA {mode} exited with "
                                             f"code {completed.returncode}"},
            "profiler": {}}


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs every measurement, prints the table, writes the JSON; returns the report."""
    args = parse_args(argv)
    if args.mode_only:  # a child of `--xla both`: one mode, its raw results as JSON
        measured = measure_mode(args, args.xla)
        args.json.write_text(json.dumps(measured, allow_nan=True))
        return measured
    settings = {
        "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "width": args.width,
        "xla": args.xla, "pi_branch_flag": args.pi_branch,
        "labeled_per_batch": args.labeled_per_batch,
        "pipeline_examples": args.pipeline_examples, "pipeline_batches": args.pipeline_batches,
        "peak_repeats": args.peak_repeats,
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": list(os.getloadavg()),
        "timed_function": "model.train_function (Keras one_step_on_data, as called by fit)",
        "processes": "one per XLA mode" if args.xla == "both" and not args.in_process
                     else "this one",
    }
    modes = ("off", "on") if args.xla == "both" else (args.xla,)
    measure = measure_mode if settings["processes"] == "this one" else measure_mode_in_subprocess
    measured = {mode: measure(args, mode) for mode in modes}
    results = {mode: m["result"] for mode, m in measured.items()}

    log(f"input pipeline: {args.pipeline_examples} random float32 images")
    images, labels = pipeline_data(args.pipeline_examples)
    stored = host_images(images)
    pipeline = {
        str(mode): measure_pipeline(stored, labels, args.batch, mode, args.pipeline_batches)
        for mode in (args.labeled_per_batch, "vary")
    }
    del images, stored

    gflop = step_flops(args.width, args.batch, args.pi_branch) / 1e9
    profiled = [m["profiler"] for m in measured.values() if m["profiler"].get("profiler_graph")]
    flops = {
        "method": "analytic: 2 x multiply-adds of ConvLarge's convolutions and matmuls; step = "
                  "towers x forward + student backward (weight + input gradients, none for "
                  "the images)",
        "forward_gflop_per_image": sum(convlarge_forward_flops(args.width).values()) / 1e9,
        "gflop_per_step": gflop,
        **(profiled[0] if profiled else next(iter(measured.values()))["profiler"]),
    }
    timed = [r for r in results.values() if "error" not in r]
    best = min(timed, key=lambda r: r["step_seconds_median"]) if timed else {}
    peaks = best.get("peaks") or next((r["peaks"] for r in results.values() if "peaks" in r), {})
    report = {
        "step_seconds_median": best.get("step_seconds_median"),
        "step_seconds_min": best.get("step_seconds_min"),
        "step_seconds_max": best.get("step_seconds_max"),
        "images_per_second": best.get("images_per_second"),
        "gflop_per_step": gflop,
        "achieved_gflops": best.get("achieved_gflops"),
        "peak_conv_gflops": best.get("peak_conv_gflops"),
        "percent_of_peak_conv": best.get("percent_of_peak_conv"),
        "peak_conv_gflops_max": best.get("peak_conv_gflops_max"),
        "percent_of_max_conv": best.get("percent_of_max_conv"),
        "peak_matmul_gflops": peaks.get("matmul", {}).get("best_gflops"),
        "peak_rss_mib": best.get("peak_rss_mib"),
        "pipeline_process_peak_rss_mib": peak_rss_mib(),
        "xla": best.get("xla"),
        "xla_on_speedup": (results["off"]["step_seconds_median"]
                           / results["on"]["step_seconds_median"]
                           if len(timed) == 2 else None),
        "pi_branch_computed": bool(best.get("pi_branch_computed", args.pi_branch)),
        "pipeline_images_per_second": pipeline[str(args.labeled_per_batch)]["images_per_second"],
        "results": results,
        "flops": flops,
        "peaks": peaks,
        "pipeline": pipeline,
        "settings": {**settings, "load_average_at_end": list(os.getloadavg())},
    }
    print(format_table(report), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
        log(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    report = main()
    sys.exit(0 if "result" in report or report["step_seconds_median"] is not None else 1)
