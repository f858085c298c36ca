"""Checkpoints that are complete or absent: a manifest of checksums written after the data.

TensorFlow's `CheckpointManager` writes a checkpoint's files, then its `checkpoint` state file.
Neither says whether the files are intact later (a disk error, a truncated copy, an edit), and a
process killed while the manager replaces a checkpoint of the same number leaves a mixture. So
each checkpoint `ckpt-N` gets `ckpt-N.manifest.json`, written atomically once its files are
complete: their sizes and SHA-256 sums, the step and the run's config record. On resume
`latest_complete` takes the newest checkpoint whose files match its manifest; a checkpoint
without one was interrupted while being written and is skipped; a corrupt one is skipped with a
warning naming it and the one used, and if no intact one is left the run is refused rather than
started over.

A directory written before manifests existed (no `MANIFESTS` marker) resumes from
TensorFlow's latest checkpoint, unchecked, as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tensorflow as tf

from tensorflow_mean_teacher.faults import kill_point

MANIFEST_SUFFIX = ".manifest.json"
MARKER = "MANIFESTS"
_NUMBERED = re.compile(r"ckpt-(\d+)(?:\.index|\.manifest\.json)")


class CorruptCheckpointError(ValueError):
    """No intact checkpoint is left in a run's directory, and some were damaged."""


class ResultsWriteError(OSError):
    """A checkpoint, log or export could not be written (a full disk, a read-only directory)."""


def write_failure(what: str, path: str | os.PathLike, error: BaseException,
                  intact: str | None = None) -> ResultsWriteError:
    """The error for a failed write: what, where, the system's reason and what is left."""
    reason = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    # TensorFlow's messages start with the op's function and end with the op's name.
    reason = re.sub(r"^\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]$", "", str(reason))
    message = f"Could not write {what} {str(path)!r}: {' '.join(str(reason).split())}."
    if intact:
        message += f" {intact}"
    failure = ResultsWriteError(getattr(error, "errno", None) or 0, message)
    failure.args = (message,)  # str(error) is the message alone
    return failure


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_files(prefix: str | os.PathLike) -> list[Path]:
    """The files of checkpoint `prefix` (`.../ckpt-N`): its index and its data shards."""
    prefix = Path(prefix)
    return sorted(p for p in prefix.parent.glob(prefix.name + ".*")
                  if p.name == prefix.name + ".index" or p.name.startswith(
                      prefix.name + ".data-"))


def manifest_path(prefix: str | os.PathLike) -> Path:
    return Path(str(prefix) + MANIFEST_SUFFIX)


def write_manifest(prefix: str | os.PathLike, step: int, record: Mapping[str, Any]) -> Path:
    """Writes the manifest of the complete checkpoint `prefix` (atomically, synced)."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in checkpoint_files(prefix)}
    text = json.dumps({"checkpoint": Path(prefix).name, "step": step, "files": files,
                       "config": dict(record)}, indent=1, sort_keys=True)
    path = manifest_path(prefix)
    staged = path.with_name(path.name + ".tmp")
    with staged.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    kill_point("manifest_staged")
    os.replace(staged, path)
    return path


def read_manifest(prefix: str | os.PathLike) -> dict | None:
    """The manifest of `prefix`, or None if it has none; ValueError if it is not readable."""
    path = manifest_path(prefix)
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"its manifest {path.name} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"its manifest {path.name} has no file list")
    return manifest


def check(prefix: str | os.PathLike, *, checksums: bool = True) -> tuple[str, str]:
    """('complete' | 'incomplete' | 'corrupt', why) for checkpoint `prefix`; without
    `checksums` only the files' presence and sizes are compared (a cheap check)."""
    try:
        manifest = read_manifest(prefix)
    except ValueError as error:
        return "corrupt", str(error)
    if manifest is None:
        return "incomplete", "it has no manifest: its write was interrupted"
    expected = manifest["files"]
    present = {p.name for p in checkpoint_files(prefix)}
    if not expected or not any(name.endswith(".index") for name in expected):
        return "corrupt", "its manifest lists no index file"
    for name, entry in sorted(expected.items()):
        path = Path(prefix).parent / name
        if not isinstance(entry, dict):
            return "corrupt", f"its manifest's entry of {name} is not a size and a checksum"
        if name not in present:
            return "corrupt", f"{name} is missing"
        size = path.stat().st_size
        if size != entry.get("bytes"):
            return "corrupt", f"{name} has {size} bytes, its manifest {entry.get('bytes')}"
        if checksums and _sha256(path) != entry.get("sha256"):
            return "corrupt", f"{name} does not match its checksum"
    extra = sorted(present - set(expected))
    if extra:
        return "corrupt", f"{', '.join(extra)} not in its manifest"
    return "complete", ""


def _numbers(directory: Path) -> list[int]:
    found = {int(m.group(1)) for p in directory.iterdir()
             if (m := _NUMBERED.fullmatch(p.name))} if directory.is_dir() else set()
    return sorted(found, reverse=True)


def latest_complete(directory: str | os.PathLike, console: Callable[[str], None] = print
                    ) -> tuple[str | None, dict | None]:
    """The newest intact checkpoint of `directory` and its manifest; (None, None) if none.

    Skipped checkpoints are reported on `console`. Raises `CorruptCheckpointError` if some
    were corrupt and none is intact: the run is not started over silently.
    """
    directory = Path(directory)
    if not (directory / MARKER).exists():
        return tf.train.latest_checkpoint(str(directory)), None  # written before manifests
    skipped = []
    for number in _numbers(directory):
        prefix = directory / f"ckpt-{number}"
        status, why = check(prefix)
        if status == "complete":
            if skipped:
                console(f"warning: skipped {'; '.join(skipped)}; resuming from {prefix}")
            return str(prefix), read_manifest(prefix)
        skipped.append(f"{status} checkpoint {prefix} ({why})")
    if any(entry.startswith("corrupt") for entry in skipped):
        raise CorruptCheckpointError(
            f"No intact checkpoint in {directory}: {'; '.join(skipped)}. Refusing to start the "
            "run over: restore the files, or move the results directory aside to start afresh."
        )
    if skipped:
        console(f"warning: skipped {'; '.join(skipped)}; starting from step 0")
    return None, None


def manager(checkpoint: tf.train.Checkpoint, directory: str | os.PathLike
            ) -> tf.train.CheckpointManager:
    """A `CheckpointManager` that keeps every checkpoint: `save` removes the old ones itself,
    once the new one's manifest makes it complete (the manager's own sweep runs before)."""
    return tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=None)


def save(manager: tf.train.CheckpointManager, step: int, record: Mapping[str, Any], *,
         keep: int = 3) -> str:
    """`manager.save` at `step`, then the manifest that makes the checkpoint complete, then
    the removal of the checkpoints older than the newest `keep` complete ones.

    `manager` must keep every checkpoint (`checkpoints.manager`). A failed write (a full disk,
    a read-only directory) removes what it wrote and raises `ResultsWriteError`; the earlier
    checkpoints are untouched.
    """
    if manager._max_to_keep is not None:  # its sweep would run before the manifest exists
        raise ValueError("The CheckpointManager must keep every checkpoint (max_to_keep=None, "
                         f"checkpoints.manager). Received: max_to_keep={manager._max_to_keep}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1. Received: keep={keep}")
    directory = Path(manager.directory)
    prefix = directory / f"ckpt-{step}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        marker = directory / MARKER
        if not marker.exists():
            # Checkpoints written before manifests existed were resumed unchecked: they get
            # their manifests now, so that they do not read as interrupted writes later.
            for number in _numbers(directory):
                earlier = directory / f"ckpt-{number}"
                if number != step and read_manifest(earlier) is None:
                    write_manifest(earlier, number, record)
            marker.write_text("Each checkpoint here has a manifest (see checkpoints.py).\n")
        # A checkpoint of this number is about to be replaced: until its new manifest is
        # written it is incomplete, not the old complete one.
        manifest_path(prefix).unlink(missing_ok=True)
        path = manager.save(checkpoint_number=step)
        kill_point("checkpoint_saved")
        write_manifest(path, step, record)
    except (OSError, tf.errors.OpError) as error:
        _remove_partial(prefix)
        previous = _complete_numbers(directory)
        intact = (f"The previous checkpoint {directory / f'ckpt-{previous[0]}'} is intact."
                  if previous else "No earlier complete checkpoint exists.")
        raise write_failure("checkpoint", prefix, error, intact) from error
    _remove_old(directory, keep)
    return path


def _complete_numbers(directory: Path) -> list[int]:
    """The steps of the complete checkpoints (by the cheap check), newest first."""
    return [n for n in _numbers(directory)
            if check(directory / f"ckpt-{n}", checksums=False)[0] == "complete"]


def _remove_old(directory: Path, keep: int) -> None:
    """Removes every checkpoint older than the newest `keep` complete ones (their manifests
    first, so that a kill in between leaves incomplete checkpoints, never corrupt ones)."""
    kept = _complete_numbers(directory)[:keep]
    if len(kept) < keep:
        return
    for number in _numbers(directory):
        if number < kept[-1]:
            prefix = directory / f"ckpt-{number}"
            manifest_path(prefix).unlink(missing_ok=True)
            _remove_partial(prefix)


def _remove_partial(prefix: Path) -> None:
    for leftover in [*prefix.parent.glob(prefix.name + ".*"),
                     *prefix.parent.glob(prefix.name + "_temp*")]:
        try:
            tf.io.gfile.rmtree(str(leftover)) if leftover.is_dir() else leftover.unlink()
        except OSError:
            pass
