"""Tests for sleepppg.workers: results in job order whatever the number of workers; a job whose worker is
killed by a signal, or exits, costs only that job; the others go on in a new pool."""
from __future__ import annotations

import os
import signal

import pytest

from sleepppg.workers import describe_exit, run_jobs


def _double_or_die(job):
    """A job: twice the number, or the worker process dies under it."""
    if job == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if job == "exit":
        os._exit(3)
    return 2 * job


def _died(job, how):
    return ("died", job, how)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_in_job_order(workers):
    jobs = list(range(7))
    assert run_jobs(_double_or_die, jobs, workers, _died) == [2 * j for j in jobs]
    assert run_jobs(_double_or_die, [], workers, _died) == []


def test_a_killed_or_exiting_worker_costs_only_its_job():
    main_pid = os.getpid()
    jobs = [1, 2, "kill", 3, 4, 5, "exit", 6]
    results = run_jobs(_double_or_die, jobs, 2, _died)
    assert os.getpid() == main_pid  # no job ran in this process
    assert results == [2, 4, ("died", "kill", "killed by signal SIGKILL (9)"), 6, 8, 10,
                       ("died", "exit", "exited with status 3 without a result"), 12]


def test_describe_exit():
    assert describe_exit(-signal.SIGKILL) == "killed by signal SIGKILL (9)"
    assert describe_exit(-signal.SIGTERM) == "killed by signal SIGTERM (15)"
    assert describe_exit(1) == "exited with status 1 without a result"
