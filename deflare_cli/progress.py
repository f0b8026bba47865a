"""Progress reporting, and running independent jobs one by one or over a process pool.

Library code never prints: long operations call a :class:`Progress` callback, which the CLI
turns into a rich progress bar.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
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
    forked: a forked child would inherit torch's thread pools and any open HDF5 handles.
    """
    results: list[Result] = []
    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(jobs)), initializer=initializer) as pool:
            for done, result in enumerate(pool.imap(function, jobs), start=1):
                results.append(result)
                progress(stage, done, len(jobs))
        return results
    for done, job in enumerate(jobs, start=1):
        results.append(function(job))
        progress(stage, done, len(jobs))
    return results
