"""Progress reporting, and running independent jobs one by one or over a process pool.

Library code never prints: long operations call a :class:`Progress` callback, which the CLI
turns into a rich progress bar on a terminal, or into :class:`ProgressLines` in a log.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar


class Progress(Protocol):
    """Called by long library operations, e.g. ``progress("reading", 4_000_000, 9_000_000)``.

    The CLI draws one bar per stage; ``detail`` is a short status such as the current loss.
    """

    def __call__(self, stage: str, done: int, total: int, detail: str = "") -> None: ...


def no_progress(stage: str, done: int, total: int, detail: str = "") -> None:
    """A progress callback that does nothing."""


class ProgressLines:
    """A :class:`Progress` for logs (``nohup``, a batch scheduler, CI), where no bar is drawn:
    a plain line per stage every ``interval_s`` seconds, e.g. ``training: 250/1,600 (16%),
    0.10/s, 0:41:23 elapsed, ~3:45:00 left; loss 0.83``, and one when that stage ends. Stages
    that end within the interval print nothing, so short commands stay quiet; a stage whose
    count starts again (the next file, the next validation) is timed afresh."""

    def __init__(
        self,
        write: Callable[[str], None],
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.write = write
        self.interval_s = LINE_INTERVAL_S if interval_s is None else interval_s
        self.clock = clock
        self.stages: dict[str, _StageClock] = {}

    def __call__(self, stage: str, done: int, total: int, detail: str = "") -> None:
        now = self.clock()
        state = self.stages.get(stage)
        if state is None or state.ended or done < state.done:
            state = self.stages[stage] = _StageClock(now, done, now, done)
        state.done = done
        if done >= total:
            state.ended = True
            if state.reported:
                self.write(f"{stage}: {done:,}/{total:,} done in {_clock(now - state.started)}")
        elif now - state.printed >= self.interval_s:
            self.write(self._line(stage, state, now, total, detail))
            state.printed, state.reported = now, True

    @staticmethod
    def _line(stage: str, state: _StageClock, now: float, total: int, detail: str) -> str:
        elapsed = now - state.started
        speed = (state.done - state.first_done) / elapsed if elapsed > 0 else 0.0
        share = f" ({state.done / total:.0%})" if total else ""
        line = f"{stage}: {state.done:,}/{total:,}{share}, {speed:.3g}/s, "
        line += f"{_clock(elapsed)} elapsed"
        if speed > 0 and total > state.done:
            line += f", ~{_clock((total - state.done) / speed)} left"
        return f"{line}; {detail}" if detail else line


@dataclass
class _StageClock:
    started: float
    first_done: int
    printed: float
    done: int
    reported: bool = False
    ended: bool = False


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


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
        others = set(multiprocessing.active_children())  # children that are not this pool's
        pool = context.Pool(min(workers, len(jobs)), initializer=start)
        try:  # not `with Pool`: its exit terminates (signals) workers even after success
            for done, result in enumerate(pool.imap(partial(_run_job, function), jobs), 1):
                results.append(result)
                progress(stage, done, len(jobs))
            pool.close()  # the workers end on their own, no signal needed
        except BaseException:
            _end_pool(pool, others)
            raise
        pool.join()
        return results
    for done, job in enumerate(jobs, start=1):
        results.append(function(job))
        progress(stage, done, len(jobs))
    return results


def _end_pool(pool, others: set) -> None:
    """``pool.terminate()``, bounded in time: SIGTERM lets each job unwind (its temporary files
    are removed); workers still alive after ``GRACE_SECONDS`` are killed (the process's
    children other than ``others``, which were there before the pool: replacements the pool
    started meanwhile count as its workers).

    Seen in a CI run: a worker finished its job despite the SIGTERM (a signal handler's
    exception raised inside a destructor is only printed), went back to the pool's queue, and
    ``terminate`` waited for it forever. A worker killed while it holds the queue's lock can
    also block ``terminate`` for good; then the caller goes on without it (the thread is a
    daemon, and the pool's finalizer has already run).
    """
    ender = threading.Thread(target=pool.terminate, daemon=True)
    ender.start()
    ender.join(GRACE_SECONDS)
    if ender.is_alive():
        for worker in set(multiprocessing.active_children()) - others:
            worker.kill()
        ender.join(GRACE_SECONDS)


def _start_worker(initializer: Callable[[], None] | None, parent: int) -> None:
    """``parent``: the pool's process, passed from it: a worker that starts after its parent
    died already sees another parent (init) and must not take that one for its own.

    SIGTERM (``Pool.terminate``) keeps its default action, which the kernel carries out
    whichever thread it lands on, except while a job runs (:func:`_run_job`). A Python handler
    runs only in the main thread between bytecodes: one installed for good made an idle
    worker, blocked on the pool's queue lock, ignore a SIGTERM that another of its threads
    received, and ``Pool.terminate`` then waited for it forever (seen in a test and in
    ``make demo``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if initializer is not None:
        initializer()


def _run_job(function: Callable[[Job], Result], job: Job) -> Result:
    """One job; a SIGTERM meanwhile unwinds it (its temporary files are removed), then exits."""
    previous = signal.signal(signal.SIGTERM, _unwind_job)
    try:
        return function(job)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _unwind_job(signum: int, frame: object) -> None:
    raise SystemExit(1)


def _exit_with_parent(parent: int) -> None:
    """End this worker as soon as its parent is gone (killed, even by SIGKILL), instead of
    going on writing files for nobody: SIGTERM first, so that a job cleans up; if it is stuck
    in native code, exit hard after a grace period. (Linux's PR_SET_PDEATHSIG did not fire
    reliably for a multithreaded parent in tests; polling is portable.)"""
    while os.getppid() == parent:
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    os._exit(1)


GRACE_SECONDS = 5.0
LINE_INTERVAL_S = 60.0  # between two lines of one stage in a log
