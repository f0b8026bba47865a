"""``deflare train --debug``: two training steps, then pictures of what the model sees and does.

Writes ``RUN_DIR/debug_output/epoch_000_iter_NNN/`` with the seed's folders (input, target and
output as events and voxels, the learned residual as voxel and events) and ``debug_summary.txt``
with residual statistics and the identity check ``output == input + residual``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..codec import Voxels, voxel_to_events
from ..io import make_folder
from ..model import count_parameters
from ..viz import draw_events, plot_voxel_bins
from .data import VoxelCache
from .trainer import Trainer, TrainResult

DEBUG_STEPS = 2


def run_debug(trainer: Trainer) -> TrainResult:
    """Run ``DEBUG_STEPS`` optimizer steps and write the debug folder (rank 0 only)."""
    losses = trainer.run_steps(DEBUG_STEPS)
    folder = trainer.run_dir / "debug_output" / f"epoch_000_iter_{trainer.position.step:03d}"
    if trainer.cluster.is_main:
        write_debug_folder(trainer, folder, losses)
    return TrainResult(
        run_dir=trainer.run_dir,
        steps=trainer.position.step,
        epochs_completed=0,
        best_metric=min(losses),
        last_checkpoint=trainer.run_dir / "last.pt",
        best_checkpoint=None,
        parameters=count_parameters(trainer.model),
        skipped_pairs=trainer.skipped,
        debug_dir=folder,
    )


@torch.no_grad()
def write_debug_folder(trainer: Trainer, folder: Path, losses: list[float]) -> None:
    """Pictures and statistics of the first full-frame segment of the first training pair."""
    entry = trainer.train_set.entries[0]
    tensors = VoxelCache.load(entry.path)
    inputs = tensors["input"][0].float()
    targets = tensors["target"][0].float()
    trainer.model.eval()
    batch = inputs[None, None].to(trainer.cluster.device)
    residual = trainer.model.residual(batch)[0, 0].float().cpu()
    outputs = trainer.model(batch)[0, 0].float().cpu()
    trainer.model.train()

    segment_us = trainer.settings.codec.segment_us
    bin_ms = segment_us / inputs.shape[0] / 1000
    panels = [
        ("input", inputs, "1_input_events", "2_input_voxel"),
        ("target", targets, "3_target_events", "4_target_voxel"),
        ("output", outputs, "5_output_events", "6_output_voxel"),
        ("residual", residual, "8_residual_events", "7_residual_voxel"),
    ]
    for name, voxel, events_folder, voxel_folder in panels:
        title = f"{name}, pair {entry.pair.pair_id} segment 0"
        make_folder(folder / voxel_folder)
        plot_voxel_bins(voxel, folder / voxel_folder / "voxel_bins.png", title, bin_ms)
        events = voxel_to_events(Voxels(voxel[None].contiguous(), 0, segment_us))
        draw_events(events, folder / events_folder, f"{title} (decoded from voxels)")
    summary = _summary(trainer, entry.pair.pair_id, losses, inputs, residual, outputs)
    (folder / "debug_summary.txt").write_text(summary)


def _summary(
    trainer: Trainer,
    pair_id: str,
    losses: list[float],
    inputs: torch.Tensor,
    residual: torch.Tensor,
    outputs: torch.Tensor,
) -> str:
    difference = (outputs - (inputs + residual)).abs().max().item()
    lines = [
        "deflare train --debug",
        f"model: TrueResidualUNet3D, backbone {trainer.settings.model.backbone}, "
        f"f_maps {list(trainer.settings.model.f_maps)}, "
        f"{count_parameters(trainer.model):,} parameters",
        f"device: {trainer.cluster.device}, steps run: {len(losses)}, "
        f"losses: {', '.join(f'{loss:.6g}' for loss in losses)}",
        f"sample: pair {pair_id}, segment 0, full frame {tuple(inputs.shape)}",
        "",
        "residual analysis (output = input + residual):",
    ]
    for name, tensor in (("input", inputs), ("residual", residual), ("output", outputs)):
        lines.append(
            f"  {name:8s} mean {tensor.mean().item():+.6f}  std {tensor.std().item():.6f}  "
            f"sum {tensor.sum().item():+.1f}  non-zero {int((tensor != 0).sum())}"
        )
    lines += [
        f"  identity check: output == input + residual: {difference == 0} "
        f"(max |difference| {difference:.3g})",
        "",
    ]
    return "\n".join(lines)
