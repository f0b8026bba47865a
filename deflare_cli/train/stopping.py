"""Ctrl-C during training: the first one finishes the step, saves ``last.pt`` and stops; a
second one aborts at once. SIGTERM (what schedulers and ``timeout`` send) and SIGHUP (a closed
terminal) are handled the same way. Under torchrun all ranks agree to stop at the same step."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from ..devices import Cluster

log = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """Whether this run was asked to stop; set by a stop signal inside :meth:`handling_signals`."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        """First Ctrl-C, SIGTERM or SIGHUP: ask to stop after the step. A second one aborts."""

        def request_stop(signum: int, frame: object) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            name = signal.Signals(signum).name
            log.warning("%s: stopping after this step; last.pt will be saved (again aborts)", name)

        try:
            previous = {signum: signal.signal(signum, request_stop) for signum in STOP_SIGNALS}
        except ValueError:  # not the main thread: no signal handling
            yield
            return
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def agreed(self, cluster: Cluster) -> bool:
        """Whether any rank was asked to stop (all ranks must stop at the same step)."""
        if not cluster.distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.requested = bool(flag.item())
        return self.requested


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave stop signals to the main process (it saves a checkpoint and
    then ends them)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
