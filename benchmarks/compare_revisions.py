"""The training step of today's working tree against that of a git revision, in the same run.

Run from the repository root:

    python -m benchmarks.compare_revisions --base 072f306 --batch 100 --steps 4 --rounds 3 \\
        --json /tmp/compare.json

`--base REV` (default `HEAD`, the last commit) is checked out, detached, into a temporary
`git worktree`; the worktree is removed at the end, also after an error or Ctrl-C. Then, for
`--rounds` rounds, in alternating order (current base, base current, current base, ... so that
the machine's drift over the run falls on both sides alike), each tree measures its own step in
a process of its own:

    python -m benchmarks.train_step --xla off --mode_only --json TMP --batch B --steps S ...

with the tree as working directory and as PYTHONPATH, so that each process imports its own
tree's `tensorflow_mean_teacher`, `datasets` and `benchmarks.train_step` (checked before the
first run). `--warmup`, `--labeled_per_batch`, `--matmul_size`, `--conv_batch`,
`--peak_repeats` and `--pi_branch` are passed through to both, with the same values.

Per revision, over all its rounds (the timed steps pooled): the median step time, images/s
(batch / that median), the median of the per-step shares of the conv peak measured right
before each step (`percent_of_peak_conv_per_step`, see `benchmarks.train_step`), and the
largest peak RSS of its processes. Then the ratio current/base of the two median step times,
the same ratio round by round (each round's two processes ran next to each other), and the
verdict: "no regression" if the ratio is at most 1 + `--tolerance` (1.05), else "slower by X%".
The table goes to stdout, progress lines to stderr, every number to `--json`.

Exit codes: 0 when measured (whatever the verdict), 1 if a measuring process failed, 2 for bad
arguments (including a revision that git cannot resolve, or one whose
`benchmarks/train_step.py` has no `--mode_only`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_STEP = "benchmarks/train_step.py"
LABELS = ("current", "base")
# Flags of `benchmarks.train_step` given to every measuring process (besides --xla,
# --mode_only, --json): a base revision's script must know them all.
FORWARDED = ("batch", "steps", "warmup", "width", "labeled_per_batch", "matmul_size",
             "conv_batch", "peak_repeats")
# Keys of a `--mode_only` report's "result" that are kept per run (the first six are needed).
RUN_KEYS = ("step_seconds", "step_seconds_median", "images_per_second", "percent_of_peak_conv",
            "percent_of_peak_conv_per_step", "peak_rss_mib", "percent_of_max_conv",
            "peak_conv_gflops", "first_call_seconds", "cpu_utilization", "final_loss",
            "jit_compile", "pi_branch_computed")
NEEDED_KEYS = RUN_KEYS[:6]
STDERR_TAIL_LINES = 25

_START = time.perf_counter()


class MeasurementError(RuntimeError):
    """A measuring process failed or wrote no usable report."""


def log(message: str) -> None:
    """A progress line on stderr, with the seconds since the comparison started."""
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Arithmetic (pure)


def run_order(rounds: int) -> list[tuple[str, str]]:
    """The order of the two trees in each round: current first in even rounds, base in odd."""
    return [LABELS if i % 2 == 0 else LABELS[::-1] for i in range(rounds)]


def median_ratio(current_seconds: Sequence[float], base_seconds: Sequence[float]) -> float:
    """Median step time of the current tree over that of the base (> 1: current is slower)."""
    return statistics.median(current_seconds) / statistics.median(base_seconds)


def per_round_ratios(runs: Sequence[dict]) -> list[float]:
    """For each round, its current run's median step time over its base run's."""
    by_round: dict[int, dict[str, dict]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["revision"]] = run
    return [pair["current"]["step_seconds_median"] / pair["base"]["step_seconds_median"]
            for _, pair in sorted(by_round.items())]


def verdict(ratio: float, tolerance: float = 0.05) -> str:
    """ "no regression" if the current step is at most `tolerance` slower, else by how much."""
    if ratio <= 1 + tolerance:
        return "no regression"
    return f"slower by {(ratio - 1) * 100:.1f}%"


def summarize_revision(runs: Sequence[dict], batch: int) -> dict:
    """One revision's figures over all its runs, with the timed steps pooled."""
    seconds = [s for run in runs for s in run["step_seconds"]]
    shares = [p for run in runs for p in run.get("percent_of_peak_conv_per_step")
              or [run["percent_of_peak_conv"]]]
    median = statistics.median(seconds)
    return {
        "runs": len(runs),
        "step_seconds": seconds,
        "step_seconds_median": median,
        "step_seconds_min": min(seconds),
        "step_seconds_max": max(seconds),
        "images_per_second": batch / median,
        "percent_of_peak_conv": statistics.median(shares),
        "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
        "round_step_seconds_medians": [run["step_seconds_median"] for run in runs],
    }


def compare(runs: Sequence[dict], batch: int, tolerance: float) -> dict:
    """The two revisions' summaries, the ratios and the verdict, from the runs' results."""
    summaries = {label: summarize_revision([r for r in runs if r["revision"] == label], batch)
                 for label in LABELS}
    ratio = median_ratio(summaries["current"]["step_seconds"], summaries["base"]["step_seconds"])
    rounds = per_round_ratios(runs)
    return {
        **summaries,
        "ratio": ratio,
        "per_round_ratios": rounds,
        "median_of_per_round_ratios": statistics.median(rounds),
        "tolerance": tolerance,
        "regression": ratio > 1 + tolerance,
        "verdict": verdict(ratio, tolerance),
    }


# ------------------------------------------------------------------------------------------
# Git


def git(*arguments: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *arguments], cwd=cwd, capture_output=True, text=True,
                          check=False)


def resolve_revision(parser: argparse.ArgumentParser, revision: str) -> str:
    """The full commit hash of `revision`; a parser error naming it if git cannot resolve it."""
    if git("rev-parse", "--is-inside-work-tree").returncode != 0:
        parser.error(f"{REPO} is not a git working tree: cannot check out --base {revision!r}")
    if revision.startswith("-"):
        parser.error(f"--base {revision!r}: not a revision (git rev-parse failed)")
    resolved = git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}")
    if resolved.returncode != 0:
        parser.error(f"--base {revision!r} is not a commit of this repository "
                     f"(git rev-parse --verify {revision}^{{commit}} failed)")
    return resolved.stdout.strip()


def check_train_step(parser: argparse.ArgumentParser, text: str | None, where: str) -> None:
    """A parser error unless `text` (a benchmarks/train_step.py) has every flag the run needs."""
    if text is None:
        parser.error(f"{where} has no {TRAIN_STEP}: nothing to measure the step with")
    if '"--mode_only"' not in text:
        parser.error(f"{where}'s {TRAIN_STEP} lacks --mode_only (one XLA mode measured in the "
                     "process, results as JSON), which this comparison runs: choose a later "
                     "revision as --base")
    missing = [f"--{name}" for name in FORWARDED if f'"--{name}"' not in text]
    if missing:
        parser.error(f"{where}'s {TRAIN_STEP} lacks {', '.join(missing)}, which this "
                     "comparison passes to both trees")


def add_worktree(commit: str, parent: Path) -> Path:
    path = parent / commit[:12]
    added = git("worktree", "add", "--detach", "--quiet", str(path), commit)
    if added.returncode != 0:
        raise MeasurementError(f"git worktree add {path} {commit} failed: {added.stderr.strip()}")
    return path


def remove_worktree(path: Path) -> None:
    """Removes the worktree and git's record of it, whatever state it is in."""
    removed = git("worktree", "remove", "--force", str(path))
    if removed.returncode != 0:
        log(f"git worktree remove failed ({removed.stderr.strip()}); deleting {path}")
    shutil.rmtree(path, ignore_errors=True)
    git("worktree", "prune")


# ------------------------------------------------------------------------------------------
# Measuring processes


def child_env(tree: Path) -> dict[str, str]:
    """The environment of a process of `tree`: the tree first on PYTHONPATH, the other not."""
    env = dict(os.environ)
    inherited = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry
                 and Path(entry).resolve() not in (REPO, tree.resolve())]
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *inherited])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def check_imports(tree: Path) -> dict[str, str]:
    """Where a process of `tree` finds the project's packages; an error unless in the tree."""
    code = ("import importlib.util as u\n"
            "for name in ('tensorflow_mean_teacher', 'datasets', 'benchmarks.train_step'):\n"
            "    print(name, u.find_spec(name).origin)\n")
    found = subprocess.run([sys.executable, "-c", code], cwd=tree, env=child_env(tree),
                           capture_output=True, text=True, check=False)
    if found.returncode != 0:
        raise MeasurementError(f"cannot locate the packages of {tree}: {found.stderr.strip()}")
    origins = dict(line.split(" ", 1) for line in found.stdout.splitlines())
    for name, origin in origins.items():
        if not Path(origin).resolve().is_relative_to(tree.resolve()):
            raise MeasurementError(f"a process in {tree} imports {name} from {origin}")
    return origins


def child_command(args: argparse.Namespace, json_path: Path) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.train_step", "--xla", args.xla, "--mode_only",
               "--json", str(json_path)]
    for name in FORWARDED:
        command += [f"--{name}", str(getattr(args, name))]
    return command + (["--pi_branch"] if args.pi_branch else [])


def measure(args: argparse.Namespace, tree: Path, json_path: Path, stderr_path: Path) -> dict:
    """One measuring process in `tree`; its result's kept keys, or a MeasurementError."""
    command = child_command(args, json_path)
    start = time.perf_counter()
    with open(stderr_path, "w") as stderr:
        completed = subprocess.run(command, cwd=tree, env=child_env(tree),
                                   stdout=subprocess.DEVNULL,
                                   stderr=None if args.verbose else stderr, check=False)
    wall = time.perf_counter() - start
    tail = "\n".join(stderr_path.read_text(errors="replace").splitlines()[-STDERR_TAIL_LINES:])
    where = f"the process in {tree} ({' '.join(command[1:4])} ...)"
    if completed.returncode != 0 or not json_path.exists():
        raise MeasurementError(f"{where} exited with code {completed.returncode}"
                               + (f"; the end of its stderr:\n{tail}" if tail else ""))
    result = json.loads(json_path.read_text()).get("result", {})
    if "error" in result:
        raise MeasurementError(f"{where} failed: {result['error']}")
    missing = [key for key in NEEDED_KEYS if key not in result]
    if missing:
        raise MeasurementError(f"{where} wrote no {', '.join(missing)} in its --mode_only JSON")
    return {**{key: result[key] for key in RUN_KEYS if key in result}, "wall_seconds": wall}


def measure_rounds(args: argparse.Namespace, trees: dict[str, Path], names: dict[str, str],
                   scratch: Path) -> list[dict]:
    runs = []
    order = run_order(args.rounds)
    total = 2 * args.rounds
    for round_index, pair in enumerate(order):
        for label in pair:
            number = len(runs) + 1
            log(f"run {number}/{total} (round {round_index + 1}/{args.rounds}): {names[label]}"
                f" in {trees[label]}")
            stem = scratch / f"run{number}_{label}"
            load = os.getloadavg()[0]
            run = measure(args, trees[label], stem.with_suffix(".json"),
                          stem.with_suffix(".stderr"))
            runs.append({"round": round_index, "revision": label, "load_average_before": load,
                         **run})
            log(f"  {names[label]}: median step {run['step_seconds_median']:.4f} s, "
                f"{run['images_per_second']:.1f} images/s, "
                f"{run['percent_of_peak_conv']:.0f}% of the conv peak, "
                f"peak RSS {run['peak_rss_mib']:.0f} MiB ({run['wall_seconds']:.0f} s)")
    return runs


# ------------------------------------------------------------------------------------------
# Report


def format_table(report: dict) -> str:
    s, base = report["settings"], report["base"]
    names = {"current": "current tree", "base": f"base {base['revision']}"}
    lines = [
        f"Training step, today's working tree vs {base['revision']} ({base['commit'][:12]}): "
        f"ConvLarge width {s['width']}, batch {s['batch']}, XLA {s['xla']}"
        + (", Pi branch" if s["pi_branch"] else ""),
        f"{s['rounds']} round(s) x {s['steps']} timed step(s) per tree, order "
        + " ".join("".join("A" if label == "current" else "B" for label in pair)
                   for pair in report["order"])
        + " (A: current, B: base), each run a process of its own",
        "",
        f"{'':32}" + "".join(f"{names[label]:>22}" for label in LABELS),
    ]
    rows = (
        ("median step (s)", "step_seconds_median", ".4f"),
        ("images / s", "images_per_second", ".1f"),
        ("% of conv peak (median)", "percent_of_peak_conv", ".0f"),
        ("peak RSS, max of runs (MiB)", "peak_rss_mib", ".0f"),
        ("fastest step (s)", "step_seconds_min", ".4f"),
        ("slowest step (s)", "step_seconds_max", ".4f"),
    )
    for title, key, spec in rows:
        lines.append(f"{title:32}" + "".join(f"{format(report[label][key], spec):>22}"
                                             for label in LABELS))
    rounds = ", ".join(f"{r:.3f}" for r in report["per_round_ratios"])
    lines += [
        "",
        f"median step current / base: {report['ratio']:.3f} (per round: {rounds}; "
        f"median of these {report['median_of_per_round_ratios']:.3f})",
        f"verdict: {report['verdict']} (ratio {'<=' if not report['regression'] else '>'} "
        f"{1 + report['tolerance']:.2f})",
    ]
    if not report["train_step_identical"]:
        lines.append(f"note: the two trees' {TRAIN_STEP} differ, so each measured with its own")
    if report["current"].get("dirty") is False and base["commit"] == report["current"]["head"]:
        lines.append("note: the working tree has no uncommitted changes and --base is HEAD: "
                     "the same code on both sides")
    start, end = s["load_average_at_start"][0], s["load_average_at_end"][0]
    lines.append(f"1-min load average at start / end: {start:.2f} / {end:.2f}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_revisions",
        description="Times the training step of the working tree and of a git revision side "
                    "by side, in alternating processes, and says whether it got slower.")
    parser.add_argument("--base", default="HEAD",
                        help="git revision to compare with (default HEAD, the last commit)")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=3,
                        help="processes per tree, alternating AB BA AB ...")
    parser.add_argument("--width", type=int, default=128, help="ConvLarge width (128: original)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps after the first (trace/compile) call")
    parser.add_argument("--labeled_per_batch", type=int,
                        help="labeled rows of the timed batch (default: half the batch)")
    parser.add_argument("--matmul_size", type=int, default=4096,
                        help="of the machine-peak matmul each process measures first")
    parser.add_argument("--conv_batch", type=int, default=100,
                        help="batch of the peak conv measured before each step")
    parser.add_argument("--peak_repeats", type=int, default=5)
    parser.add_argument("--xla", choices=("off", "on"), default="off")
    parser.add_argument("--pi_branch", action="store_true",
                        help="also compute the Pi-branch tower (the TF1 three-tower step)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="verdict 'no regression' up to a ratio of 1 + this")
    parser.add_argument("--json", type=Path, help="write every number to this JSON file")
    parser.add_argument("--verbose", action="store_true",
                        help="show the measuring processes' stderr (else kept, shown on failure)")
    args = parser.parse_args(argv)
    for name in ("batch", "steps", "rounds", "width", "matmul_size", "conv_batch",
                 "peak_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, not {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, not {args.warmup}")
    if not args.tolerance >= 0:
        parser.error(f"--tolerance must be >= 0, not {args.tolerance}")
    if args.labeled_per_batch is None:
        args.labeled_per_batch = max(1, args.batch // 2)
    if not 1 <= args.labeled_per_batch <= args.batch:
        parser.error("--labeled_per_batch must be from 1 to --batch")
    args.commit = resolve_revision(parser, args.base)
    shown = git("show", f"{args.commit}:{TRAIN_STEP}")
    args.base_train_step = shown.stdout if shown.returncode == 0 else None
    check_train_step(parser, args.base_train_step, f"--base {args.base}")
    current = REPO / TRAIN_STEP
    check_train_step(parser, current.read_text() if current.exists() else None,
                     "the working tree")
    return args


def _raise_system_exit(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> dict:
    """Measures both trees, prints the table, writes the JSON; returns the report."""
    args = parse_args(argv)
    head = git("rev-parse", "HEAD").stdout.strip()
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    settings = {
        "batch": args.batch, "steps": args.steps, "rounds": args.rounds, "width": args.width,
        "warmup": args.warmup, "labeled_per_batch": args.labeled_per_batch,
        "matmul_size": args.matmul_size, "conv_batch": args.conv_batch,
        "peak_repeats": args.peak_repeats, "xla": args.xla, "pi_branch": args.pi_branch,
        "python": sys.executable, "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
    }
    names = {"current": "current tree", "base": f"base {args.base}"}
    # SIGTERM/SIGHUP end the run through `finally` (the worktree is removed), as Ctrl-C does.
    previous = {sig: signal.signal(sig, _raise_system_exit)
                for sig in (signal.SIGTERM, signal.SIGHUP)}
    scratch = Path(tempfile.mkdtemp(prefix="mt-compare-revisions-"))
    worktree = None
    try:
        log(f"checking out {args.base} ({args.commit[:12]}) into a worktree under {scratch}")
        worktree = add_worktree(args.commit, scratch)
        trees = {"current": REPO, "base": worktree}
        imports = {label: check_imports(tree) for label, tree in trees.items()}
        runs = measure_rounds(args, trees, names, scratch)
    except MeasurementError as error:
        log(f"error: {error}")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        log("interrupted")
        raise SystemExit(130) from None
    finally:
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C: still clean up
        try:
            if worktree is not None:
                log(f"removing the worktree {worktree}")
                remove_worktree(worktree)
            shutil.rmtree(scratch, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, handler)
            for sig, old in previous.items():
                signal.signal(sig, old)

    compared = compare(runs, args.batch, args.tolerance)
    current_train_step = (REPO / TRAIN_STEP).read_text()
    report = {
        "ratio": compared["ratio"],
        "per_round_ratios": compared["per_round_ratios"],
        "median_of_per_round_ratios": compared["median_of_per_round_ratios"],
        "verdict": compared["verdict"],
        "regression": compared["regression"],
        "tolerance": args.tolerance,
        "current": {"tree": str(REPO), "head": head, "dirty": dirty,
                    "imports": imports["current"], **compared["current"]},
        "base": {"revision": args.base, "commit": args.commit,
                 "tree": f"{worktree} (removed)", "imports": imports["base"],
                 **compared["base"]},
        "order": [list(pair) for pair in run_order(args.rounds)],
        "runs": runs,
        "train_step_identical": current_train_step == args.base_train_step,
        "command": child_command(args, Path("TMP"))[1:],
        "settings": {**settings, "load_average_at_end": list(os.getloadavg())},
    }
    print(format_table(report), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
