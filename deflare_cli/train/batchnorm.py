"""Precise BatchNorm statistics for models whose layers normalise by BatchNorm (``layer_order``
with ``b``, as ``configs/frame_norm.yaml``).

In training, BatchNorm normalises each batch by its own statistics and keeps running averages
of them (momentum 0.1: mostly the last ten batches) for inference. Sparse training crops make
those batch statistics heavy-tailed (one dense crop moves a batch's variance by orders of
magnitude), so the running averages are whatever the last few batches were. A network trained
on the sparse textured recipe alone validated at event AUC 0.765 at step 800 with its running
averages, and at 0.878 with statistics recomputed over 40 batches of training crops
(docs/experiments.md, 2026-12-07). Recomputing them as one average over many batches, with the
weights fixed ("precise BN"), gives inference the statistics that the weights were trained
under. It changes no weight and, since training mode never reads the running averages, no step
of training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import default_collate

from ..progress import Progress, no_progress
from .data import EventVoxelDataset

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, targets, frame densities

# The epoch whose crops and flips the statistics are computed on: one no training run reaches,
# so they are the same crops at every recomputation and in a resumed run.
STATISTICS_EPOCH = 1_000_000


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers (none in GroupNorm models such as the first U-Nets)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    batches: Iterable[Batch],
    forward: Callable[[Batch], object],
    progress: Progress = no_progress,
    total: int = 0,
) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` by their plain mean
    over ``batches`` (each run through ``forward`` in training mode, without gradients, and
    reported to ``progress`` as one of ``total``); returns how many batches were used. Models
    without BatchNorm are left alone (0). The layers' momentum and the model's mode are
    restored afterwards."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative mean over the batches that follow
    model.train()
    count = 0
    try:
        for count, batch in enumerate(batches, start=1):
            forward(batch)
            progress("BatchNorm statistics", count, total)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return count


def statistics_batches(
    dataset: EventVoxelDataset, count: int, batch_size: int, seed: int
) -> Iterator[Batch]:
    """``count`` batches (fewer when the dataset is smaller) of ``dataset``'s samples, drawn
    the same way every time for a given seed, without touching the dataset's own epoch or any
    global random state (a resumed run trains exactly as an uninterrupted one)."""
    crops = copy.copy(dataset)  # shares the open voxel files; has its own epoch
    crops.set_epoch(STATISTICS_EPOCH)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(crops), generator=generator)[: count * batch_size].tolist()
    for start in range(0, len(order), batch_size):
        yield default_collate([crops[index] for index in order[start : start + batch_size]])
