"""The E-Deflare metric suite (DESIGN.md "Evaluation").

Voxel metrics compare one 20 ms segment at a time: net-polarity voxels ``V`` of shape (B, H, W)
(8 bins of 2.5 ms, nearest pixel, no normalisation). Several of them split ``V`` into
``P = max(V, 0)`` and ``N = max(-V, 0)``, stacked as (2, B, H, W). Table values are means over
segments, then over files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VOXEL_METRICS = ("mse", "pmse_2", "pmse_4", "r_f1", "t_f1", "tp_f1")
F1_THRESHOLD = 0.001  # a split cell counts as active from one event on


def split_polarity(voxel: torch.Tensor) -> torch.Tensor:
    """(B, H, W) net voxel -> (2, B, H, W): positive part, negative part (both >= 0)."""
    return torch.stack([voxel.clamp(min=0), (-voxel).clamp(min=0)])


def voxel_mse(output: torch.Tensor, target: torch.Tensor) -> float:
    """``mean((output - target)^2)`` over all B*H*W cells of the net voxels."""
    return float(((output.double() - target.double()) ** 2).mean())


def pooled_mse(output: torch.Tensor, target: torch.Tensor, k: int) -> float:
    """``pmse_k``: split both voxels, average-pool P and N over k x k pixels (stride k), then MSE.

    Pooling forgives small spatial misplacements that plain MSE punishes.
    """
    pooled = [F.avg_pool2d(split_polarity(v).double(), k, stride=k) for v in (output, target)]
    return float(((pooled[0] - pooled[1]) ** 2).mean())


def binary_f1(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    """F1 of two boolean masks; 0 when both are empty (as the E-Deflare code does)."""
    true_positive = int((predicted & actual).sum())
    total = int(predicted.sum()) + int(actual.sum())
    return 2 * true_positive / total if total else 0.0


def f1_scores(output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``r_f1`` on (2, B, H, W) cells, ``t_f1`` after summing time -> (2, H, W), ``tp_f1`` after
    summing time and polarity -> (H, W); each cell active when > 0.001."""
    split_output, split_target = split_polarity(output), split_polarity(target)
    return {
        "r_f1": binary_f1(split_output > F1_THRESHOLD, split_target > F1_THRESHOLD),
        "t_f1": binary_f1(split_output.sum(1) > F1_THRESHOLD, split_target.sum(1) > F1_THRESHOLD),
        "tp_f1": binary_f1(
            split_output.sum((0, 1)) > F1_THRESHOLD, split_target.sum((0, 1)) > F1_THRESHOLD
        ),
    }


def segment_metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """All voxel metrics of one segment: (B, H, W) output against (B, H, W) target."""
    if output.shape != target.shape or output.ndim != 3:
        raise ValueError(f"expected two (B, H, W) voxels, got {output.shape} and {target.shape}")
    return {
        "mse": voxel_mse(output, target),
        "pmse_2": pooled_mse(output, target, 2),
        "pmse_4": pooled_mse(output, target, 4),
        **f1_scores(output, target),
    }


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Column means of metric rows (keys of the first row)."""
    if not rows:
        return {}
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}
