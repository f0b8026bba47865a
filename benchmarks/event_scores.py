"""How well a model tells flare events from the rest, before any margin (issue 12).

    python benchmarks/event_scores.py CHECKPOINT [CHECKPOINT ...] PAIRS_DIR

PAIRS_DIR holds labelled pairs from ``deflare synth`` (inputs with ``/events/is_flare``): use
calibration or validation pairs to choose between models, and the test set once, at the end.
Every input event gets the model's removal share of its cell: ``(input - output) / |input|``,
signed by the cell's polarity, the share of the cell's events the model takes away (for a mask
model exactly its removal). Pooled over the pairs, it prints the ROC AUC of that score (0.5: no
better than chance) and the share of the flare events that ranking by it removes while keeping
97% of the other events. Unlike ``deflare calibrate``, which decodes with a margin per cell,
this ranks events directly: it measures what the network knows, not what a margin makes of it.
Whole frames, the checkpoint's engine settings otherwise (on the CPU unless `--device` says
otherwise).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from deflare_cli.codec import cell_index
from deflare_cli.events import Events, sort_by_time
from deflare_cli.infer import load_deflarer, predict_windows
from deflare_cli.io import find_pairs, read_events, read_flare_labels
from deflare_cli.settings import (
    InferSettings,
    ReadSettings,
    RuntimeSettings,
    TileSettings,
    paired_dirs,
    parse_sensor_size,
)

KEPT = 0.97


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half):
    the Mann-Whitney U statistic over the product of the class sizes."""
    labels = labels.astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    u = ranks[labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def removed_at_kept(scores: np.ndarray, labels: np.ndarray, kept: float = KEPT) -> float:
    """Share of the positives scoring above the threshold that keeps ``kept`` of the negatives."""
    labels = labels.astype(bool)
    threshold = np.quantile(scores[~labels], kept)
    return float((scores[labels] > threshold).mean())


def read_recording(spec: str) -> tuple[str, Events]:
    """(file name, time-sorted events) of ``PATH``, or of ``PATH:HxW`` for a file that does not
    say its sensor size (a camera's ``.raw`` without geometry); a path with a colon of its own
    is read whole unless what follows its last colon reads as HxW."""
    path, colon, size = spec.rpartition(":")
    if not colon or not re.fullmatch(r"\d+[xX]\d+", size):
        path, size = spec, ""
    settings = ReadSettings(sensor_size=parse_sensor_size(size)) if size else ReadSettings()
    return Path(path).name, sort_by_time(read_events(Path(path), settings))


def removal_shares(checkpoint: Path, events: Events, device: str = "cpu") -> np.ndarray:
    """The removal share of every event's cell (whole frames, margin 0), in the events' order."""
    settings = InferSettings(checkpoint=checkpoint, margin=0.0, tiles=TileSettings(mode="frame"),
                             runtime=RuntimeSettings(device=device), memory_gb=16.0)  # fmt: skip
    deflarer = load_deflarer(settings)
    pieces = []  # windows are consecutive time slices of the (time-sorted) events
    for window, voxels, predicted, _first in predict_windows(deflarer, events, events.time_span()):
        cells = cell_index(window, voxels.t0_us, voxels.bin_us)
        net = voxels.data.flatten().numpy()[cells].astype(np.float64)
        out = predicted.flatten().float().numpy()[cells].astype(np.float64)
        pieces.append(np.sign(net) * (net - out) / np.maximum(np.abs(net), 1))
    shares = np.concatenate(pieces) if pieces else np.empty(0)
    if len(shares) != len(events):
        raise RuntimeError(f"scored {len(shares)} of {len(events)} events")
    return shares


def labelled_shares(
    checkpoint: Path, path: Path, device: str = "cpu"
) -> tuple[Events, np.ndarray, np.ndarray]:
    """(events, removal share, is_flare) of every input event of one labelled file."""
    events = read_events(path)
    labels = read_flare_labels(path, len(events))
    return events, removal_shares(checkpoint, events, device), labels


def event_scores(
    checkpoint: Path, path: Path, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(removal share, is_flare) of every input event of one labelled file."""
    _, shares, labels = labelled_shares(checkpoint, path, device)
    return shares, labels


def main() -> int:
    """Prints the table; a missing folder, pair or label is an error naming the file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", help="checkpoints, then PAIRS_DIR")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()
    *checkpoints, pairs_dir = args.checkpoints
    pairs = find_pairs(*paired_dirs(pairs_dir))
    print(f"{len(pairs)} labelled pairs in {pairs_dir}")
    print(f"| checkpoint | ROC AUC | flare removed at {KEPT:.0%} of the rest kept |")
    print("|---|---:|---:|")
    for checkpoint in checkpoints:
        results = []
        for done, pair in enumerate(pairs, start=1):  # minutes per checkpoint on a CPU
            results.append(event_scores(checkpoint, pair.flare_path, args.device))
            print(f"  {checkpoint.name}: {done}/{len(pairs)} pairs", file=sys.stderr, flush=True)
        scores = np.concatenate([s for s, _ in results])
        labels = np.concatenate([y for _, y in results])
        auc, removed = roc_auc(scores, labels), removed_at_kept(scores, labels)
        print(f"| {checkpoint} | {auc:.3f} | {removed:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
