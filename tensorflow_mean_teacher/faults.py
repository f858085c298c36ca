"""Test hook: a process that kills itself at a named point of a write, to test recovery.

`TFMT_TEST_KILL_AT=NAME` (or `NAME:N`, the N-th pass, 1-based) makes the process SIGKILL itself
the first (N-th) time it passes `kill_point(NAME)`. Only the fault tests set it: an outside
SIGKILL at a random moment rarely lands inside a write that lasts milliseconds.
The points are listed in `POINTS`.
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT_VARIABLE = "TFMT_TEST_KILL_AT"
POINTS = (
    "checkpoint_saved",   # TensorFlow's checkpoint files are written; its manifest is not
    "manifest_staged",    # the manifest's temporary file is written, not yet renamed
    "log_row_started",    # half of a CSV log row is written
    "export_staged",      # the new SavedModel is written next to the target
    "export_swapped",     # the previous export is moved aside, the new one not yet in place
)
_passes: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILLs this process here if `TFMT_TEST_KILL_AT` names this point (and pass)."""
    if name not in POINTS:
        raise ValueError(f"Unknown kill point. Received: name={name!r}; known: {POINTS}")
    wanted = os.environ.get(ENVIRONMENT_VARIABLE)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
