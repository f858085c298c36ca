"""One process per results directory: the lock names its holder and dies with it (SIGKILL)."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from tensorflow_mean_teacher import run_lock

HOLD = """
import sys, time
from tensorflow_mean_teacher import run_lock
with run_lock.hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def holder(directory):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)],
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    process = holder(tmp_path)
    try:
        with pytest.raises(run_lock.RunInUseError) as refused, run_lock.hold(tmp_path):
            pass
        message = str(refused.value)
        assert f"pid {process.pid} on host {socket.gethostname()}" in message
        assert str(tmp_path) in message and "--results_dir" in message
    finally:
        process.kill()
        process.wait()


def test_the_lock_dies_with_a_killed_holder(tmp_path):
    process = holder(tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with run_lock.hold(tmp_path) as path:  # no stale lock to clean up
        assert f"pid {os.getpid()} " in path.read_text()


def test_the_lock_is_reentrant_in_a_process_and_released_at_the_end(tmp_path):
    with run_lock.hold(tmp_path):
        with run_lock.hold(tmp_path):  # execute() takes it, then train() again
            pass
        assert run_lock._held[tmp_path.resolve()][1] == 1  # still held, once
    assert tmp_path.resolve() not in run_lock._held
    with run_lock.hold(tmp_path):  # released: taken again at once
        pass
