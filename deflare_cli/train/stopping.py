"""Ctrl-C during training: the first one finishes the step, saves ``last.pt`` and stops; a
second one aborts at once. Under torchrun all ranks agree to stop at the same step."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from ..devices import Cluster

log = logging.getLogger(__name__)


class StopRequest:
    """Whether this run was asked to stop; set by SIGINT inside :meth:`handling_sigint`."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def handling_sigint(self) -> Iterator[None]:
        """First Ctrl-C: ask to stop after the step. A second one aborts at once."""

        def request_stop(signum: int, frame: object) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            log.warning("stopping after this step; last.pt will be saved (Ctrl-C again aborts)")

        try:
            previous = signal.signal(signal.SIGINT, request_stop)
        except ValueError:  # not the main thread: no signal handling
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def agreed(self, cluster: Cluster) -> bool:
        """Whether any rank was asked to stop (all ranks must stop at the same step)."""
        if not cluster.distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.requested = bool(flag.item())
        return self.requested


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process (it saves a checkpoint)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
