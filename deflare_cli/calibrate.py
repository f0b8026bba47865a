"""``deflare calibrate``: choose how sure the model must be before it removes an event.

A network trained with MSE predicts, per cell, the expected clean count. Rounding that (margin 0)
removes a one-event cell's event as soon as the model finds flare more likely than not. On
recordings unlike its training data the model is less sure than it thinks, and rounding removes
scene events. The margin of :func:`deflare_cli.infer.removal_counts` asks for more certainty.

Calibration runs the model once over labelled synthetic pairs (``deflare synth`` writes which
input events are flare), decodes the predictions with every margin of a grid, and picks the
smallest margin that keeps at least ``min_kept`` of the non-flare events (mean over pairs, each
pair counting the same). The mean can meet the target while some pairs do not; since a
do-no-harm check judges each recording on its own, ``max_share_below`` can also bound the share
of pairs that keep less than ``min_kept`` (1: no bound). Pairs from ``deflare synth`` also label
the light sources' own events (``is_light``), which the target keeps. With ``min_light_kept``
the two are judged apart, as the real goal of issue 12 is (background kept, light core kept):
``min_kept`` then applies to the background (neither flare nor light) and ``min_light_kept`` to
the light's events, each on average and, with ``max_share_below``, pair by pair. The choice is
written into an exported model, which ``deflare deflare`` then applies by default. Calibrate
on validation pairs, never on the recordings you will judge the model by. With ``report``,
every pair's scores at every margin go to a CSV: it names the pairs that keep less than
``min_kept`` and so hold the margin up.

Above margin 0.5 a cell holding a single event never loses it, whatever the model predicts
(:func:`deflare_cli.infer.removal_counts`; at margin ``m`` it goes only where the model predicts
at most ``0.5 - m``), and no cell is ever emptied. Sparse flare, as at night, is almost all such
cells: on 16 synthetic night pairs 95% of the flare events sit alone in their cell, so above 0.5
even a perfect model could remove 1.8% of it (mean over the pairs). Each margin's score
therefore also gives the share of the flare a perfect model could remove there
(:func:`reachable_flare`), and a margin above 0.5 is reported as one that leaves sparse flare.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import export_checkpoint
from .codec import cell_index
from .events import Events
from .infer import Deflarer, decode_window, load_deflarer, predict_windows, removal_counts
from .io import (
    Pair,
    atomic_output,
    find_pairs,
    read_events,
    read_flare_labels,
    read_light_labels,
)
from .metrics import kept_mask, kept_share
from .progress import Progress, no_progress
from .settings import CalibrateSettings, CodecSettings, Removal

# 0 .. 0.9 by 0.05, and by 0.01 just under 0.5: with threshold removal a margin m edits a cell
# whose removal share is at least 0.5 + m, and a trees model's shares crowd between 0.95 and 1
MARGINS = tuple(sorted({round(0.05 * step, 2) for step in range(19)} | {0.46, 0.47, 0.48, 0.49}))


@dataclass
class MarginScore:
    """Per pair at one margin: the share of flare events removed and of other events kept;
    of these, the background (neither flare nor light) and the light's own events where the
    pairs label them (pairs without light events have no light share)."""

    margin: float
    flare_removed: list[float] = field(default_factory=list)
    others_kept: list[float] = field(default_factory=list)
    flare_reachable: list[float] = field(default_factory=list)
    background_kept: list[float] = field(default_factory=list)
    light_kept: list[float] = field(default_factory=list)

    @property
    def flare_recall(self) -> float:
        """Mean over the pairs with flare."""
        return _mean(self.flare_removed)

    @property
    def reachable(self) -> float:
        """Mean over the pairs with flare of what a perfect model could remove at this margin."""
        return _mean(self.flare_reachable)

    @property
    def non_flare_kept(self) -> float:
        """Mean over the pairs: each recording counts the same, as the do-no-harm check does."""
        return _mean(self.others_kept)

    def mean(self, shares: str) -> float:
        """The mean over the pairs of the list ``shares`` names (e.g. ``light_kept``)."""
        return _mean(getattr(self, shares))

    def pairs_below(self, min_kept: float, shares: str = "others_kept") -> int:
        """Pairs that keep less than ``min_kept`` of their non-flare events (or of the list
        ``shares`` names): the mean can meet the target while some recordings do not."""
        return sum(kept < min_kept for kept in getattr(self, shares))

    def meets(self, min_kept: float, max_share_below: float, shares: str = "others_kept") -> bool:
        """The pairs' mean share (``shares``) reaches ``min_kept``, with at most
        ``max_share_below`` of them under it on their own."""
        values = getattr(self, shares)
        return self.mean(shares) >= min_kept and self.pairs_below(
            min_kept, shares
        ) <= max_share_below * len(values)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


@dataclass
class Calibration:
    """Every margin's scores and the one chosen (None: no margin keeps enough)."""

    scores: list[MarginScore]
    margin: float | None
    pairs: int
    light_labels: bool = False  # every pair labels its light events


# settings.report: per pair and margin, its input file and scores (NaN where it has no flare or
# no other events), and whether the margin is the chosen one
REPORT_COLUMNS = ["pair", "margin", "flare_removed", "non_flare_kept", "background_kept",
                  "light_kept", "reachable", "chosen"]  # fmt: skip


def calibrate(settings: CalibrateSettings, progress: Progress = no_progress) -> Calibration:
    """Score every margin on the labelled pairs; export the model with the chosen one."""
    deflarer = load_deflarer(settings.infer.model_copy(update={"margin": 0.0}))
    pairs = find_pairs(*settings.paired_dirs())
    scores = [MarginScore(margin) for margin in MARGINS]
    rows: list[dict[str, Any]] = []
    for done, pair in enumerate(pairs, start=1):
        rows += _score_pair(deflarer, pair, scores, settings)
        progress("calibrating", done, len(pairs))
    light_labels = all(row["background_kept"] is not None for row in rows)
    margin = choose_margin(
        scores, settings.min_kept, settings.max_share_below, settings.min_light_kept
    )
    calibration = Calibration(scores, margin, len(pairs), light_labels and bool(rows))
    if settings.report is not None:
        write_report(settings.report, [{**row, "chosen": row["margin"] == margin} for row in rows])
    if calibration.margin is not None and settings.output is not None:
        notes = {"calibrated_on": str(settings.data_dir), "min_kept": settings.min_kept,
                 "max_share_below": settings.max_share_below,
                 "min_light_kept": settings.min_light_kept}  # fmt: skip
        export_checkpoint(
            settings.infer.checkpoint, settings.output, notes=notes, margin=calibration.margin
        )
    return calibration


def choose_margin(
    scores: list[MarginScore],
    min_kept: float,
    max_share_below: float = 1.0,
    min_light_kept: float | None = None,
) -> float | None:
    """The smallest margin whose pairs keep ``min_kept`` of their non-flare events on average,
    with at most ``max_share_below`` of them keeping less on their own; None if none does.
    With ``min_light_kept``, ``min_kept`` applies to the background alone and the light's events
    must meet ``min_light_kept`` in the same way."""
    if min_light_kept is None:
        good = [s.margin for s in scores if s.meets(min_kept, max_share_below)]
    else:
        good = [
            s.margin
            for s in scores
            if s.meets(min_kept, max_share_below, "background_kept")
            and (not s.light_kept or s.meets(min_light_kept, max_share_below, "light_kept"))
        ]
    return min(good) if good else None


def write_report(path: Path, rows: list[dict[str, Any]]) -> None:
    """The per-pair scores as a CSV (``REPORT_COLUMNS``), written atomically."""
    with atomic_output(path) as temp_path, open(temp_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _score_pair(
    deflarer: Deflarer, pair: Pair, scores: list[MarginScore], settings: CalibrateSettings
) -> list[dict[str, Any]]:
    """Run the model once over a pair's input and add each margin's counts to ``scores``;
    the pair's rows of the report."""
    source = read_events(pair.flare_path, settings.infer.read)
    flare = read_flare_labels(pair.flare_path, len(source))
    light = read_light_labels(pair.flare_path, len(source), settings.min_light_kept is not None)
    # Per window: preserve mode keeps each window's events inside it, so the kept masks of the
    # windows, in order, are the recording's (no copy of the whole output per margin).
    kept: dict[float, list[np.ndarray]] = {score.margin: [] for score in scores}
    for window in predict_windows(deflarer, source, source.time_span()):
        for score in scores:
            output = decode_window(replace(deflarer, margin=score.margin), *window)
            kept[score.margin].append(kept_mask(window[0], output))
    margins = [score.margin for score in scores]
    reachable = reachable_flare(source, flare, deflarer.codec, margins, deflarer.removal)
    rows = []
    for score, perfect in zip(scores, reachable, strict=True):
        mask = np.concatenate(kept[score.margin])
        row = {"pair": str(pair.flare_path), "margin": score.margin, "reachable": perfect,
               "flare_removed": kept_share(~mask, flare),
               "non_flare_kept": kept_share(mask, ~flare),
               "background_kept": None, "light_kept": None}  # fmt: skip
        if light is not None:
            row["background_kept"] = kept_share(mask, ~flare & ~light)
            row["light_kept"] = kept_share(mask, light)
        for column, values in (("flare_removed", score.flare_removed),
                               ("non_flare_kept", score.others_kept),
                               ("background_kept", score.background_kept),
                               ("light_kept", score.light_kept)):  # fmt: skip
            if row[column] is not None and not np.isnan(row[column]):
                values.append(row[column])
        if flare.any():
            score.flare_reachable.append(perfect)
        rows.append(row)
    return rows


def reachable_flare(
    events: Events,
    flare: np.ndarray,
    codec: CodecSettings,
    margins: list[float],
    rule: Removal = "rounded",
) -> list[float]:
    """Per margin, the share of the ``flare`` events (a boolean mask of ``events``) that a
    perfect model, one predicting every cell's clean count, could remove: the flare's net count
    of each cell through :func:`removal_counts`, at most the cell's flare events. Cells are the
    codec's time bins counted from the first event, as the windows are."""
    flare = np.asarray(flare, bool)
    if not flare.any():
        return [float("nan")] * len(margins)
    ours = events.select(flare)
    cells = cell_index(ours, events.time_span()[0], codec.segment_us // codec.num_bins)
    _, inverse = np.unique(cells, return_inverse=True)
    net = torch.from_numpy(np.bincount(inverse, weights=np.sign(ours.p).astype(float)))
    count = np.bincount(inverse)
    removable = [
        removal_counts(net, torch.zeros_like(net), margin, rule).abs().numpy() for margin in margins
    ]
    return [float(np.minimum(per_cell, count).sum() / len(ours)) for per_cell in removable]


def default_output(checkpoint: Path) -> Path:
    """``RUN_DIR/best.pt`` -> ``RUN_DIR/best.calibrated.pt``."""
    return checkpoint.with_name(f"{checkpoint.stem}.calibrated.pt")
