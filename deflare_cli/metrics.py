"""The E-Deflare metric suite (DESIGN.md "Evaluation"), and event-level flare removal scores.

Voxel metrics compare one 20 ms segment at a time: net-polarity voxels ``V`` of shape (B, H, W)
(8 bins of 2.5 ms, nearest pixel, no normalisation). Several of them split ``V`` into
``P = max(V, 0)`` and ``N = max(-V, 0)``, stacked as (2, B, H, W). Table values are means over
segments, then over files.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from .codec import events_to_voxel, segment_grid
from .events import Events
from .settings import CodecSettings

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


# ----------------------------------------------------------------------------- removal ranking

RANKING_BINS = 1000


class RemovalRanking:
    """How well a model's removal share ranks flare events above the others, from voxels alone.

    Per cell and polarity: ``n`` events in, the target keeps ``min(target, n)`` of them, the rest
    are flare; every one of them is scored with the cell's removal share ``1 - output / input``
    (exact for a mask model, clamped to [0, 1] for a residual one). Shares are pooled over all
    segments added, in ``RANKING_BINS`` bins (ties within a bin count half). This is what
    ``deflare calibrate`` and ``benchmarks/event_scores.py`` measure per event, without the
    events: a validation score for choosing checkpoints by discrimination, which voxel MSE is
    not (a mask model's MSE improved for hundreds of steps while its ranking stayed at chance).
    """

    def __init__(self) -> None:
        self.flare = torch.zeros(RANKING_BINS, dtype=torch.float64)
        self.other = torch.zeros(RANKING_BINS, dtype=torch.float64)

    def add(self, source: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        """One segment's (or a batch's) input, unrounded output and target voxels."""
        source, output, target = source.float(), output.float(), target.float()
        present = source != 0
        share = torch.zeros_like(source)
        # a diverged model's NaN counts as removing nothing: the trainer reports the divergence
        share[present] = (1 - output[present] / source[present]).nan_to_num(0.0).clamp(0, 1)
        bins = (share * RANKING_BINS).long().clamp(max=RANKING_BINS - 1)
        for sign in (1, -1):
            count = (sign * source).clamp(min=0)
            kept = torch.minimum((sign * target).clamp(min=0), count)
            self.flare += torch.bincount(bins.flatten(), (count - kept).flatten().double(),
                                         minlength=RANKING_BINS)  # fmt: skip
            self.other += torch.bincount(bins.flatten(), kept.flatten().double(),
                                         minlength=RANKING_BINS)  # fmt: skip

    def auc(self) -> float:
        """P(a flare event's share > another event's), ties half; NaN without both kinds."""
        flare, other = self.flare.sum(), self.other.sum()
        if flare == 0 or other == 0:
            return math.nan
        other_below = torch.cumsum(self.other, 0) - self.other
        wins = (self.flare * (other_below + self.other / 2)).sum()
        return float(wins / (flare * other))

    def flare_removed_at(self, kept: float = 0.97) -> float:
        """The share of flare events removed when removing, from the highest share down, whole
        bins while at least ``kept`` of the other events stay."""
        flare, other = self.flare.sum(), self.other.sum()
        if flare == 0 or other == 0:
            return math.nan
        other_removed = torch.cumsum(self.other.flip(0), 0)
        flare_removed = torch.cumsum(self.flare.flip(0), 0)
        allowed = other_removed <= (1 - kept) * other
        return float(flare_removed[allowed].max() / flare) if allowed.any() else 0.0


# ----------------------------------------------------------------------------- point clouds

POINT_METRICS = ("chamfer", "gaussian")
GAUSSIAN_SCALE = 0.4  # of 1 - exp(-d^2 / 0.4), as E-Deflare


def event_points(events: Events, span_us: tuple[int, int]) -> np.ndarray:
    """(N, 4) points (x, y, p, t), each axis on [0, 100] by a range fixed for the pair:
    x by the sensor width, y by the height, p from {-1, +1} to {0, 100}, t by the span."""
    start, end = span_us
    return np.column_stack(
        [
            events.x * (100.0 / events.width),
            events.y * (100.0 / events.height),
            (events.p.astype(np.float64) + 1) * 50.0,
            (events.t - start) * (100.0 / max(end - start, 1)),
        ]
    )


def point_cloud_metrics(
    output: Events, target: Events, span_us: tuple[int, int]
) -> dict[str, float]:
    """One-sided Chamfer distance (mean over output events of the distance to the nearest target
    event) and ``gaussian`` = mean of ``1 - exp(-d^2 / 0.4)``. NaN when either stream is empty:
    an empty output has no defined Chamfer distance (it is not 0)."""
    return TargetScorer(target, span_us, CodecSettings()).point_cloud(output)


# ----------------------------------------------------------------------------- files

LOWER_IS_BETTER = {"chamfer", "gaussian", "mse", "pmse_2", "pmse_4"}
EVENT_METRICS = ("flare_precision", "flare_recall", "flare_f1", "non_flare_kept")
# where the input also labels the light sources' own events (is_light): the rest of the
# non-flare events, and those
LIGHT_METRICS = ("background_kept", "light_kept")
TABLE_METRICS = (*POINT_METRICS, *VOXEL_METRICS)


def pair_span(*streams: Events) -> tuple[int, int]:
    """The common span of a pair's streams: earliest start to latest end."""
    spans = [stream.time_span() for stream in streams if len(stream) or stream.span_us]
    return min(s[0] for s in spans), max(s[1] for s in spans)


def voxel_scores(
    output: Events, target: Events, span_us: tuple[int, int], codec: CodecSettings
) -> dict[str, float]:
    """Voxel metrics per segment of one absolute grid from the pair's start, averaged over
    segments; empty segments count (E-Deflare's code skipped them and misaligned the rest)."""
    return TargetScorer(target, span_us, codec).voxel(output)


class TargetScorer:
    """Scores any number of outputs against one target, building the target's KD-tree and voxel
    grid once (an evaluation scores every method against the same target)."""

    def __init__(self, target: Events, span_us: tuple[int, int], codec: CodecSettings) -> None:
        self.span_us = span_us
        self.codec = codec
        self.grid = segment_grid(span_us, codec.segment_us)
        self.target = target
        self._tree: cKDTree | None = None
        self._voxels: torch.Tensor | None = None

    def point_cloud(self, output: Events) -> dict[str, float]:
        """``chamfer`` and ``gaussian`` (see :func:`point_cloud_metrics`)."""
        if not len(output) or not len(self.target):
            return {"chamfer": math.nan, "gaussian": math.nan}
        if self._tree is None:
            self._tree = cKDTree(event_points(self.target, self.span_us))
        distances, _ = self._tree.query(event_points(output, self.span_us), k=1, workers=-1)
        return {
            "chamfer": float(distances.mean()),
            "gaussian": float((1 - np.exp(-(distances**2) / GAUSSIAN_SCALE)).mean()),
        }

    def voxel(self, output: Events) -> dict[str, float]:
        """Voxel metrics averaged over the segments of the grid (see :func:`voxel_scores`)."""
        if self._voxels is None:
            self._voxels = self._encode(self.target)
        rows = [
            segment_metrics(o, t) for o, t in zip(self._encode(output), self._voxels, strict=True)
        ]
        return mean_metrics(rows)

    def _encode(self, events: Events) -> torch.Tensor:
        return events_to_voxel(replace(events, span_us=self.grid), self.codec).data


def event_scores(
    source: Events, is_flare: np.ndarray, output: Events, is_light: np.ndarray | None = None
) -> dict[str, float]:
    """Flare removal per event, from the input's labels: which input events are gone.

    An input event counts as kept when the output holds an event with the same (t, x, y, p)
    (as a multiset). ``flare_precision``: share of removed events that were flare;
    ``flare_recall``: share of flare events removed; ``non_flare_kept``: share of the other
    events kept. With ``is_light`` (the light sources' own events, which the target keeps), the
    non-flare events split into ``background_kept`` and ``light_kept`` (NaN where a pair has no
    light events). Outputs with new timestamps (resample) keep almost nothing by this rule, so
    read these scores for methods that keep events (filters, preserve mode).
    """
    kept = kept_mask(source, output)
    flare = is_flare.astype(bool)
    removed = ~kept
    true_removed = int((removed & flare).sum())
    precision = true_removed / int(removed.sum()) if removed.any() else math.nan
    recall = true_removed / int(flare.sum()) if flare.any() else math.nan
    if math.isnan(recall):  # no flare events at all
        f1 = math.nan
    elif recall == 0 or math.isnan(precision) or precision == 0:
        f1 = 0.0  # nothing removed, or no flare among the removed
    else:
        f1 = 2 * precision * recall / (precision + recall)
    scores = {
        "flare_precision": precision,
        "flare_recall": recall,
        "flare_f1": f1,
        "non_flare_kept": kept_share(kept, ~flare),
    }
    if is_light is not None:
        light = is_light.astype(bool)
        scores["background_kept"] = kept_share(kept, ~flare & ~light)
        scores["light_kept"] = kept_share(kept, light)
    return scores


def kept_share(kept: np.ndarray, among: np.ndarray) -> float:
    """The share of the ``among`` events (a boolean mask) that ``kept`` holds; NaN if none."""
    return int((kept & among).sum()) / int(among.sum()) if among.any() else math.nan


def kept_mask(source: Events, output: Events) -> np.ndarray:
    """Which source events have a counterpart in the output (multiset match on t, x, y, p)."""
    start = int(min(source.t.min(initial=0), output.t.min(initial=0)))
    source_keys, output_keys = _event_keys(source, start), _event_keys(output, start)
    order = np.argsort(source_keys, kind="stable")
    sorted_source = source_keys[order]
    # the k-th source event with a given key is kept when the output has more than k of them
    rank = np.arange(len(sorted_source)) - np.searchsorted(sorted_source, sorted_source, "left")
    output_sorted = np.sort(output_keys)
    available = np.searchsorted(output_sorted, sorted_source, "right") - np.searchsorted(
        output_sorted, sorted_source, "left"
    )
    kept = np.zeros(len(source), bool)
    kept[order] = rank < available
    return kept


def _event_keys(events: Events, start_us: int) -> np.ndarray:
    """One int64 per event: time since ``start_us`` (30 bits), y, x (16 bits each), polarity."""
    relative = events.t - start_us
    if len(relative) and relative.max() >= 2**30:
        raise ValueError("event-level scores need streams shorter than 17 minutes")
    pixel = (events.y.astype(np.int64) << 16) | events.x
    return (relative << 33) | (pixel << 1) | (events.p > 0)
