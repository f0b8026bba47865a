"""Progress reporting, and running independent jobs one by one or over a process pool.

Library code never prints: long operations call a :class:`Progress` callback, which the CLI
turns into a rich progress bar.
"""

from __future__ import annotations

import _thread
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol, TypeVar


class Progress(Protocol):
    """Called by long library operations, e.g. ``progress("reading", 4_000_000, 9_000_000)``.

    The CLI draws one bar per stage; ``detail`` is a short status such as the current loss.
    """

    def __call__(self, stage: str, done: int, total: int, detail: str = "") -> None: ...


def no_progress(stage: str, done: int, total: int, detail: str = "") -> None:
    """A progress callback that does nothing."""


Job = TypeVar("Job")
Result = TypeVar("Result")


def map_jobs(
    function: Callable[[Job], Result],
    jobs: Sequence[Job],
    workers: int,
    stage: str,
    progress: Progress = no_progress,
    initializer: Callable[[], None] | None = None,
) -> list[Result]:
    """``[function(job) for job in jobs]``, over ``workers`` spawned processes when more than one
    is asked for and there is more than one job; results in the jobs' order either way.

    ``function`` and the jobs must pickle (a module-level function, plain data). Spawned, not
    forked: a forked child would inherit torch's thread pools and any open HDF5 handles. The
    workers leave Ctrl-C to the parent (which ends the pool) and die with it, also when it is
    killed with SIGKILL.
    """
    results: list[Result] = []
    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        start = partial(_start_worker, initializer, os.getpid())
        with context.Pool(min(workers, len(jobs)), initializer=start) as pool:
            running = partial(_run_job, function)
            for done, result in enumerate(pool.imap(running, jobs), start=1):
                results.append(result)
                progress(stage, done, len(jobs))
        return results
    for done, job in enumerate(jobs, start=1):
        results.append(function(job))
        progress(stage, done, len(jobs))
    return results


def _start_worker(initializer: Callable[[], None] | None, parent: int) -> None:
    """``parent``: the pool's process, passed from it: a worker that starts after its parent
    died already sees another parent (init) and must not take that one for its own.

    SIGTERM (``Pool.terminate``, which every pool gets on leaving its ``with`` block) is taken
    by one thread of its own: blocked in every other thread, waited for in that one. A Python
    handler alone runs only in the main thread and only between bytecodes, so a SIGTERM that the
    kernel gave to another thread while the main thread waited on the pool's queue lock was
    never acted on, and ``Pool.terminate`` waited for the worker forever (seen twice: in a test
    and in ``make demo``'s evaluate step).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _unwind_job)  # run in the main thread by _stop()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads made later inherit it
    threading.Thread(target=_stop_on_sigterm, daemon=True).start()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if initializer is not None:
        initializer()


_job_running = False  # in a worker: whether it is inside a job (not the pool's own code)


def _run_job(function: Callable[[Job], Result], job: Job) -> Result:
    global _job_running
    _job_running = True
    try:
        return function(job)
    finally:
        _job_running = False


def _stop_on_sigterm() -> None:
    signal.sigwait({signal.SIGTERM})
    _stop()


def _stop() -> None:
    """End this worker. Waiting for work or sending a result: at once. Inside a job: unwind it
    in the main thread (its temporary files are removed on the way out), and exit hard if that
    has not happened within ``GRACE_SECONDS`` (the main thread stuck in native code)."""
    if _job_running:
        _thread.interrupt_main(signal.SIGTERM)
        time.sleep(GRACE_SECONDS)
    os._exit(1)


def _unwind_job(signum: int, frame: object) -> None:
    raise SystemExit(1)


def _exit_with_parent(parent: int) -> None:
    """End this worker as soon as its parent is gone (killed, even by SIGKILL), instead of
    going on writing files for nobody. (Linux's PR_SET_PDEATHSIG did not fire reliably for a
    multithreaded parent in tests; polling is portable.)"""
    while os.getppid() == parent:
        time.sleep(0.2)
    _stop()


GRACE_SECONDS = 5.0
