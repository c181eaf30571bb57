"""Child processes that never outlive the script that starts them, and that its signals reach.

`ChildProcesses.run(cmd)` starts each command in a session of its own, so it and every process it starts form one
process group that a terminal's Ctrl-C, Ctrl-\\ or hang-up does not reach directly: the script decides what does.
While `forwarding()` is active, SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to the script (by the terminal or by
`kill PID`) are recorded and passed on, once each, to the running child's whole process group; the child then has
`grace_s` seconds to end, after which the group is killed with SIGKILL, and `run` returns. Whatever the child
left running in its group after a signal is killed too. Ctrl-Z (SIGTSTP) stops the child's group with the script,
and `fg` or `bg` (SIGCONT) continues both. A signal that arrives between two children is recorded all the same:
the caller checks `received` before it starts the next one, and ends with `exit_status(signum)`, 128 + the
signal's number, as a shell reports a process killed by it (130 for SIGINT, 143 for SIGTERM).

Usage:
    children = ChildProcesses(grace_s=30)
    with children.forwarding():
        returncode = children.run(["python", "train_ppg_only.py"])
        if children.received:
            sys.exit(exit_status(children.received[0]))
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from typing import Iterator

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
STOP_GRACE_S = 30.0  # s a child may take to stop after a forwarded signal (a training run saves its checkpoint)
POLL_S = 0.1  # s between checks of a running child for signals to pass on
SIGNAL_EXIT_BASE = 128  # a shell reports a process ended by signal N as exit status 128 + N


def exit_status(signum: int) -> int:
    """The exit status a shell reports for a process ended by `signum` (130 for SIGINT, 143 for SIGTERM)."""
    return SIGNAL_EXIT_BASE + int(signum)


def signal_name(signum: int) -> str:
    """'SIGINT' for 2; 'signal 99' for a number that names no signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _signal_group(pgid: int, signum: int) -> None:
    """Send `signum` to process group `pgid`; nothing when no process of it is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


class ChildProcesses:
    """Runs one child process group at a time and passes the signals this process receives on to it.

    Attributes:
        received: the forwarded signals this process received, in order (empty: none).
        killed: whether the last child outlived its grace period and was killed with SIGKILL.
    """

    def __init__(self, grace_s: float = STOP_GRACE_S):
        self.grace_s = grace_s
        self.received: list[int] = []
        self.killed = False
        self._pgid: int | None = None  # the running child's process group
        self._forwarded = 0  # how many of `received` the running child has been sent

    @contextlib.contextmanager
    def forwarding(self) -> Iterator[ChildProcesses]:
        """Handle FORWARDED_SIGNALS and SIGTSTP for the duration of the block, then restore the handlers before.
        Only the main thread can install handlers; elsewhere the block runs without them (Ctrl-C then reaches
        `run` as KeyboardInterrupt, which it treats as a received SIGINT)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._record) for signum in FORWARDED_SIGNALS}
        previous[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, self._stop_with_child)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                if handler is not None:  # None: a handler not set from Python, which cannot be put back
                    signal.signal(signum, handler)

    def _record(self, signum: int, frame) -> None:
        # Only recorded here: the waiting loop in `run` passes it on, so no signal is sent twice.
        self.received.append(signum)

    def _stop_with_child(self, signum: int, frame) -> None:
        # A child in a session of its own ignores the terminal's SIGTSTP, hence SIGSTOP; this process stops
        # until SIGCONT (`fg`, `bg`), then continues the child.
        pgid = self._pgid
        if pgid is not None:
            _signal_group(pgid, signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)
        if pgid is not None:
            _signal_group(pgid, signal.SIGCONT)

    def _forward_pending(self) -> None:
        while self._pgid is not None and self._forwarded < len(self.received):
            _signal_group(self._pgid, self.received[self._forwarded])
            self._forwarded += 1

    def run(self, cmd: list[str], **popen_kwargs) -> int:
        """Run `cmd` in a new session and wait for it to end.

        Args:
            cmd: the command.
            popen_kwargs: passed to subprocess.Popen (e.g. stdout).
        Returns:
            Its exit status; negative: the signal that ended it (-9 also when it was killed after `grace_s`).
        """
        proc = subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)
        self._pgid, self._forwarded, self.killed = proc.pid, 0, False
        deadline = None
        try:
            while True:
                try:
                    return proc.wait(timeout=POLL_S)
                except subprocess.TimeoutExpired:
                    pass
                except KeyboardInterrupt:  # no handler installed (not in `forwarding()`)
                    self.received.append(signal.SIGINT)
                self._forward_pending()
                if self.received and deadline is None:
                    deadline = time.monotonic() + self.grace_s
                if deadline is not None and time.monotonic() >= deadline and not self.killed:
                    self.killed = True
                    _signal_group(proc.pid, signal.SIGKILL)
        finally:
            self._pgid = None
            if proc.poll() is None:  # an error in this process: the child must not outlive it
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            if self.received:  # what the child left behind in its group
                _signal_group(proc.pid, signal.SIGKILL)
