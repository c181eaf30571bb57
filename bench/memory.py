"""Memory of a process tree, for the benchmarks: its peak while a piece of code runs, and this process's peak.

- `tree_memory_bytes(pid)`: the memory of `pid` and all its descendants now, psutil's PSS (proportional set
  size: pages shared by forked workers are split between them, not counted twice) where the platform has it
  (Linux), else the RSS;
- `PeakMemory(pid, interval)`: samples `tree_memory_bytes` every `interval` seconds in a thread and keeps the
  highest; a context manager;
- `peak_resident_bytes()`: this process's own peak resident set size (VmHWM, Linux).

Usage: with PeakMemory(os.getpid(), interval=0.05) as sampler: ...; then sampler.peak_bytes
"""

from __future__ import annotations

import threading

import psutil

SAMPLE_INTERVAL_S = 0.5  # default sampling period; a short benchmark passes a shorter one


def peak_resident_bytes() -> int:
    """This process's peak resident set size in bytes (VmHWM of /proc/self/status, Linux).

    Not getrusage's ru_maxrss: Linux carries it over fork and exec, so a child started by a big parent reports
    at least the parent's size. psutil has no peak figure on Linux, hence /proc.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants; [] when `pid` does not exist."""
    try:
        root = psutil.Process(pid)
        return [pid] + [child.pid for child in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def process_memory_bytes(process: psutil.Process) -> int:
    """One process's PSS where psutil can read it (Linux), else its RSS."""
    try:
        full = process.memory_full_info()
        return int(getattr(full, "pss", full.rss))
    except psutil.AccessDenied:  # another user's process: its RSS is still readable
        return int(process.memory_info().rss)


def tree_memory_bytes(pid: int) -> int | None:
    """The memory of `pid` and its descendants in bytes (PSS where available, else RSS, summed); None when
    `pid` does not exist."""
    try:
        root = psutil.Process(pid)
        processes = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    total = 0
    for process in processes:
        try:
            total += process_memory_bytes(process)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):  # it ended between listing and reading
            pass
    return total


class PeakMemory:
    """Samples a process tree's memory (`tree_memory_bytes`) every `interval` seconds in a thread; `.peak_bytes`
    is the highest so far, `stop()` ends sampling and returns it in GB. Also a context manager."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL_S):
        self.pid, self.interval = pid, interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, tree_memory_bytes(self.pid) or 0)
            self._stop.wait(self.interval)

    def stop(self) -> float:
        """Stop sampling; the peak in GB."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return round(self.peak_bytes / 1e9, 2)

    def __enter__(self) -> "PeakMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
