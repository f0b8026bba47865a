"""``deflare train``: start the cluster (one process, or one of torchrun's), train or debug."""

from __future__ import annotations

from contextlib import nullcontext

import torch.distributed as dist

from ..devices import freed_memory_kept, start_cluster
from ..errors import DeflareError
from ..progress import Progress, no_progress
from ..settings import TrainSettings
from .debug import run_debug
from .rundir import claim_run_dir
from .trainer import Trainer, TrainResult
from .trees import fit_trees


def train(settings: TrainSettings, progress: Progress = no_progress) -> TrainResult:
    """Train a model as ``settings`` say; see :class:`Trainer`. ``debug`` runs two steps and
    writes the debug pictures instead (see :mod:`deflare_cli.train.debug`). The run-dir is held
    for the run (see :mod:`deflare_cli.train.rundir`)."""
    cluster = start_cluster(settings.runtime.device)
    fresh = settings.resume is None and not settings.debug
    claim = claim_run_dir(settings.run_dir, fresh, settings.overwrite)
    try:
        with (
            claim if cluster.is_main else nullcontext(),  # ranks > 0 share rank 0's claim
            freed_memory_kept(cluster.device),  # a third faster on a CPU (see there)
        ):
            if settings.model.density_head == "trees":
                if cluster.distributed or settings.debug or settings.resume:
                    raise DeflareError(
                        "model.density_head trees is fitted in one go, in one process: no "
                        "torchrun, --debug or --resume"
                    )
                return fit_trees(settings, progress)
            trainer = Trainer(settings, cluster, progress)
            if settings.debug:
                return run_debug(trainer)
            return trainer.run()
    finally:
        if cluster.distributed and dist.is_initialized():
            dist.destroy_process_group()
