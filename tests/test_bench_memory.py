"""Tests of bench/memory.py, the process-tree memory the benchmarks report: a child's memory counts in its
parent's tree, a process that is gone has none, and this process's peak is at least what it holds now."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_memory", REPO / "bench" / "memory.py")
memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory)


def test_peak_memory_of_a_process_tree_counts_its_children():
    # a child holding ~300 MB of touched memory under a parent holding ~0: the tree's peak sees it
    child = "b = bytearray(300 * 2**20); import time; time.sleep(2)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, "
                                                     f"'-c', {child!r}])"])
    sampler = memory.PeakMemory(parent.pid, interval=0.1)
    assert parent.wait(timeout=60) == 0
    peak_gb = sampler.stop()
    assert 0.3 <= peak_gb < 1.0
    assert sampler.peak_bytes >= 300 * 2**20  # the child's bytearray, counted in full


def test_tree_pids_and_memory_of_a_running_and_of_a_finished_process():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, "
                                                     "'-c', 'import time; time.sleep(30)'])"])
    try:
        deadline = time.monotonic() + 30
        while len(memory.tree_pids(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = memory.tree_pids(parent.pid)
        assert pids[0] == parent.pid and len(pids) == 2
        assert psutil.Process(pids[1]).ppid() == parent.pid
        assert memory.tree_memory_bytes(parent.pid) > 2 * 2**20  # two Python interpreters
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait(timeout=30)
    assert memory.tree_pids(parent.pid) == [] and memory.tree_memory_bytes(parent.pid) is None


def test_peak_resident_bytes_is_at_least_what_this_process_holds_now():
    held = bytearray(50 * 2**20)  # touched: resident
    assert memory.peak_resident_bytes() >= psutil.Process(os.getpid()).memory_info().rss > len(held)
