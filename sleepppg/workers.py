"""Jobs in forked worker processes, where a worker killed by a signal costs only the job it was running.

`run_jobs(task, jobs, workers, died)` returns [task(job) for job in jobs], in job order: in this process when
`workers` is 1 (a kill then ends the whole run, which the next run resumes), else in a pool of `workers` forked
processes. A worker killed by a signal (SIGKILL from the
out-of-memory killer) breaks a concurrent.futures pool: every pending job then raises BrokenProcessPool, and
the pool cannot tell which job killed it. So the jobs that had started in the broken pool are run again at the
end, one at a time, each in a process of its own; a job whose own process dies too gets `died(job, how)`
("killed by signal SIGKILL (9)") as its result. The jobs that had not started go on in a new pool.

Anything that escapes `task` (a full disk), and Ctrl-C, stops the run: the workers are terminated at once,
jobs not yet started are cancelled. Workers die with the main process (Linux), and leave Ctrl-C to it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import signal
import sys
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

log = logging.getLogger("sleepppg.workers")

# in a worker process: started[i] = 1 once the worker takes job i (shared memory made before the fork)
_started = None


def describe_exit(exitcode: int | None) -> str:
    """How a process ended, for a reason line: 'killed by signal SIGKILL (9)' or 'exited with status 1'."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by signal {name} ({-exitcode})"
    return f"exited with status {exitcode} without a result"


def _worker_init(parent_pid: int, started=None) -> None:
    """Worker initializer: on Linux, ask the kernel to SIGKILL this worker when the main process dies
    (kill -9 included), so no orphaned worker keeps running or holding memory after the run is gone; and
    leave Ctrl-C to the main process, which stops the workers (a job in progress is redone next run)."""
    global _started
    _started = started
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # from <sys/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the main process died before the line above took effect
        os._exit(1)


def _tracked(task: Callable, i: int, job: Any) -> Any:
    """task(job) in a pool worker, marked as started first."""
    _started[i] = 1
    return task(job)


def _stop_at_once(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Cancel the jobs not started and terminate the workers (a job in progress is lost; its output is never
    half-written). The worker list must be taken first: shutdown() forgets it (and there is no public one
    before Python 3.14's terminate_workers)."""
    workers_alive = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers_alive:
        process.terminate()


def _progress(total: int, done: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="subjects", unit="subject", disable=not total)


def _pool_round(task: Callable, jobs: list, todo: list[int], workers: int, results: dict[int, Any]) -> list[int]:
    """Run jobs `todo` in one pool of forked workers, filling `results`; return the jobs that had started in a
    worker when the pool broke (none when it did not). Jobs never started stay out of `results`."""
    ctx = multiprocessing.get_context("fork")
    started = ctx.RawArray("b", len(jobs))
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                                  initializer=_worker_init, initargs=(os.getpid(), started))
    try:
        futures = {}
        for i in todo:  # the workers fork at the first submit, before tqdm starts its monitor thread
            try:
                futures[pool.submit(_tracked, task, i, jobs[i])] = i
            except BrokenProcessPool:  # a worker died already: the rest waits for the next pool
                break
        with _progress(len(jobs), len(results)) as bar:  # closed before any error reaches the user
            for future in concurrent.futures.as_completed(futures):
                try:
                    results[futures[future]] = future.result()
                except BrokenProcessPool:
                    continue
                bar.update(1)
    except BaseException:
        _stop_at_once(pool)
        raise
    pool.shutdown()
    return [i for i in todo if i not in results and started[i]]


def _alone_child(send, task: Callable, job: Any, parent_pid: int) -> None:
    """Runs task(job) in a process of its own and sends back ('ok', result) or ('error', exception)."""
    try:
        _worker_init(parent_pid)
        try:
            send.send(("ok", task(job)))
        except BaseException as err:  # noqa: BLE001 - handed to the main process, which raises it
            try:
                send.send(("error", err))
            except Exception:  # noqa: BLE001 - an exception that does not pickle goes as its text
                send.send(("error", RuntimeError(f"{type(err).__name__}: {err}")))
    finally:
        send.close()
        os._exit(0)  # no interpreter teardown in a forked child (the parent's atexit handlers are not ours)


def _run_alone(task: Callable, job: Any, died: Callable[[Any, str], Any]) -> Any:
    """task(job) in a forked process of its own; `died(job, how)` when that process dies without a result."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_alone_child, args=(send, task, job, os.getpid()))
    child.start()
    send.close()
    try:
        kind, payload = receive.recv()
    except EOFError:
        kind, payload = "died", None
    except BaseException:
        child.terminate()
        raise
    finally:
        child.join()
    if kind == "died":
        return died(job, describe_exit(child.exitcode))
    if kind == "error":
        raise payload
    return payload


def run_jobs(task: Callable[[Any], Any], jobs: list, workers: int, died: Callable[[Any, str], Any]) -> list:
    """[task(job) for job in jobs], in `workers` processes (in this process when 1; see the module docstring).

    Args:
        task: a module-level function (it runs in forked workers); returns the job's result.
        died: (job, how its process ended) -> that job's result, for a job whose process was killed.
    Raises:
        whatever escapes `task`, and KeyboardInterrupt: the workers are stopped first.
    """
    results: dict[int, Any] = {}
    if workers <= 1:
        with _progress(len(jobs), 0) as bar:
            for i, job in enumerate(jobs):
                results[i] = task(job)
                bar.update(1)
        return [results[i] for i in range(len(jobs))]
    todo, suspects = list(range(len(jobs))), []
    while todo:
        broke_in = _pool_round(task, jobs, todo, workers, results)
        waiting = [i for i in todo if i not in results and i not in broke_in]
        if broke_in or waiting:
            log.warning("a worker process died: the %d job(s) started in its pool run again at the end, each in "
                        "a process of its own; %d go on in a new pool", len(broke_in), len(waiting))
        if len(waiting) == len(todo):  # the workers died before taking any job: no pool at all from here
            broke_in, waiting = waiting, []
        suspects += broke_in
        todo = waiting
    for i in suspects:
        results[i] = _run_alone(task, jobs[i], died)
    return [results[i] for i in range(len(jobs))]
