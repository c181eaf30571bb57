"""Tests of sleepppg.children: each child runs in a session of its own, its exit status comes back, and a
signal this process received is passed on to it once it runs. (tests/test_demo.py sends real signals to
run_demo and checks that no step outlives it.)"""
from __future__ import annotations

import signal
import sys
import time

from sleepppg.children import ChildProcesses, exit_status, signal_name


def test_exit_status_and_signal_name_follow_the_shell():
    assert exit_status(signal.SIGINT) == 130 and exit_status(signal.SIGTERM) == 143
    assert signal_name(signal.SIGINT) == "SIGINT" and signal_name(99) == "signal 99"


def test_a_child_runs_in_a_session_of_its_own_and_its_exit_status_comes_back():
    children = ChildProcesses()
    own_session = "import os, sys; sys.exit(0 if os.getsid(0) == os.getpid() else 1)"
    assert children.run([sys.executable, "-c", own_session]) == 0
    assert children.run([sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
    assert children.received == [] and not children.killed


def test_a_signal_received_before_a_child_starts_reaches_it_and_a_stuck_child_is_killed():
    children = ChildProcesses(grace_s=0.5)
    children.received.append(signal.SIGTERM)  # as the handler records a `kill -TERM` between two children
    t0 = time.monotonic()
    assert children.run([sys.executable, "-c", "import time; time.sleep(60)"]) == -signal.SIGTERM
    assert not children.killed and time.monotonic() - t0 < 30
    ignore_sigterm = lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)  # noqa: E731  (before exec: no race)
    assert children.run(["sleep", "60"], preexec_fn=ignore_sigterm) == -signal.SIGKILL
    assert children.killed
