"""One process per results directory: an OS lock (`fcntl.flock`) on `RESULTS_DIR/.lock`.

The kernel releases the lock when its holder exits in any way, SIGKILL included, so there is no
stale lock to clean up. The file also says who holds it (pid, host, start time), for the
message that refuses a second process. Re-entrant within a process (`execute` takes it before
loading the data, `train` again): a count per directory.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from tensorflow_mean_teacher.checkpoints import write_failure

LOCK_FILE = ".lock"
_held: dict[Path, tuple[int, int]] = {}  # directory -> (file descriptor, depth)


class RunInUseError(RuntimeError):
    """Another process holds the results directory."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "a process that has not written its name yet"


@contextlib.contextmanager
def hold(results_dir: str | os.PathLike) -> Iterator[Path]:
    """Holds the lock of `results_dir` (created if absent) for the `with` block.

    Raises `RunInUseError` naming the holder if another process has it.
    """
    directory = Path(results_dir).resolve()
    if directory in _held:
        descriptor, depth = _held[directory]
        _held[directory] = (descriptor, depth + 1)
        try:
            yield directory / LOCK_FILE
        finally:
            _release(directory)
        return
    path = directory / LOCK_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (FileNotFoundError, FileExistsError, NotADirectoryError):
        raise
    except OSError as error:  # a read-only or full file system
        raise write_failure("the lock file", path, error) from error
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise RunInUseError(
            f"{results_dir} is in use by another run: {_holder(path)}. Wait for it to end or "
            "stop it, or use another --results_dir."
        ) from None
    except BaseException:
        os.close(descriptor)
        raise
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"pid {os.getpid()} on host {socket.gethostname()}, since "
                          f"{started}\n".encode(), 0)
    _held[directory] = (descriptor, 1)
    try:
        yield path
    finally:
        _release(directory)


def _release(directory: Path) -> None:
    descriptor, depth = _held[directory]
    if depth > 1:
        _held[directory] = (descriptor, depth - 1)
        return
    del _held[directory]
    os.close(descriptor)  # releases the flock; the file stays (an unlinked lock file races)
