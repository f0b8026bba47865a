"""Validation during training: E-Deflare's voxel metrics of the model's output, and of the raw
input as the bar to beat, against the targets (full frames); and how well the model's removal
share ranks flare events above the others (:class:`~deflare_cli.metrics.RemovalRanking`)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..devices import autocast
from ..metrics import RemovalRanking, mean_metrics, segment_metrics
from ..progress import Progress, no_progress
from .data import EventVoxelDataset


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    dataset: EventVoxelDataset,
    batch_size: int,
    dtype: torch.dtype | None,
    progress: Progress = no_progress,
    max_batch_pixels: int | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """(model scores, raw input scores): means over the validation segments, and for the model
    ``event_auc`` and ``flare_at_97`` of its removal ranking over all of them.

    The voxel metrics score the rounded output: rounded cells are exactly the voxels of the
    events that decoding would emit, and unrounded near-zero residuals would count as events in
    the F1s. The ranking scores the unrounded output (the removal share before any margin).
    The model is left in training mode. Frames of more than ``max_batch_pixels`` pixels are run
    one at a time.
    """
    device = next(model.parameters()).device
    model.eval()
    batches = same_size_batches(dataset, batch_size, max_batch_pixels)
    loader = DataLoader(dataset, batch_sampler=batches)
    model_rows, raw_rows = [], []
    ranking = RemovalRanking()
    for done, (inputs, targets, density) in enumerate(loader, start=1):
        batch = inputs.to(device).contiguous(memory_format=torch.channels_last_3d)
        with autocast(device, dtype):
            outputs = model(batch, density=density.to(device)).float().cpu()
        ranking.add(inputs, outputs, targets)
        outputs = outputs.round()
        for output, source, target in zip(outputs, inputs, targets, strict=True):
            model_rows.append(segment_metrics(output[0], target[0]))
            raw_rows.append(segment_metrics(source[0], target[0]))
        progress("validating", done, len(loader))
    model.train()
    scores = mean_metrics(model_rows)
    if scores:
        scores |= {"event_auc": ranking.auc(), "flare_at_97": ranking.flare_removed_at(0.97)}
    return scores, mean_metrics(raw_rows)


def same_size_batches(
    dataset: EventVoxelDataset, batch_size: int, max_batch_pixels: int | None = None
) -> list[list[int]]:
    """Batches of sample indices whose full frames have one size (sensors may differ between
    pairs, and frames of two sizes cannot be stacked), in the dataset's order within a size;
    frames of more than ``max_batch_pixels`` pixels one to a batch."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, (entry_index, _segment) in enumerate(dataset.items):
        by_size.setdefault(dataset.entries[entry_index].sensor_size, []).append(index)
    batches = []
    for (height, width), indices in by_size.items():
        alone = max_batch_pixels is not None and height * width > max_batch_pixels
        size = 1 if alone else batch_size
        batches += [indices[start : start + size] for start in range(0, len(indices), size)]
    return batches
