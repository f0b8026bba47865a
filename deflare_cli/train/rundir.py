"""A training's claim on its run-dir: one training at a time, and no silent mixing of runs.

While a training runs it holds an exclusive lock on ``RUN_DIR/.lock`` (``flock``: the kernel
drops it when the process ends, even by kill -9, so a crash never leaves the folder locked). A
second training into the same folder is refused. A fresh (not resumed) training into a folder
that holds another run's checkpoints or metrics is refused too, unless ``overwrite`` is set,
which removes them first: otherwise the old ``best.pt`` would outlive the new run's metrics.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import DeflareError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded there
    fcntl = None

RUN_FILES = ("last.pt", "best.pt", "metrics.csv")
LOCK_NAME = ".lock"


@contextmanager
def claim_run_dir(run_dir: Path, fresh: bool, overwrite: bool) -> Iterator[None]:
    """Hold ``run_dir`` for one training. ``fresh``: the run starts at step 0 (no resume).
    A folder made here is removed again when the run fails before writing anything into it."""
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_NAME, "a+")  # noqa: SIM115  (held until the run ends)
    except OSError as error:
        reason = error.strerror or error
        raise DeflareError(f"{run_dir}: cannot be used as run-dir ({reason})") from None
    try:
        _lock(handle, run_dir)
        if fresh:
            _clear_previous_run(run_dir, overwrite)
        yield
    finally:
        handle.close()  # releases the lock
        if created:
            _remove_if_unused(run_dir)


def _remove_if_unused(run_dir: Path) -> None:
    """Remove a run-dir that holds nothing but the lock and empty folders (a voxel cache)."""
    for child in run_dir.iterdir():
        if child.is_dir() and not any(child.iterdir()):
            child.rmdir()
    if [path.name for path in run_dir.iterdir()] == [LOCK_NAME]:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
        run_dir.rmdir()


def _lock(handle, run_dir: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        raise DeflareError(
            f"{run_dir}: another training is using this run-dir ({owner}); wait for it to end "
            "or choose another --run-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()


def _clear_previous_run(run_dir: Path, overwrite: bool) -> None:
    previous = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not previous:
        return
    if not overwrite:
        raise DeflareError(
            f"{run_dir}: holds an earlier run ({', '.join(previous)}); continue it with "
            f"--resume {run_dir / 'last.pt'}, start over with --overwrite (removes them), "
            "or choose another --run-dir"
        )
    for name in previous:
        (run_dir / name).unlink()
