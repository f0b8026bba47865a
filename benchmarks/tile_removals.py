"""Where the model acts: how many of its removals fall in tiles with few events (issue 13).

For each recording, runs the model on whole frames (the reference) and counts, per tile size
and per threshold of events a tile needs to be run, the share of tiles that would be skipped
and the share of the model's removals that skipping them would lose. README "Speed" quotes it.

    .venv/bin/python benchmarks/tile_removals.py ../shared/realdata/*.h5 \
        data/test/background_with_flare_events/*.h5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from deflare_cli.infer import load_deflarer, predict_windows, removal_counts
from deflare_cli.io import read_events
from deflare_cli.settings import InferSettings, TileSettings
from deflare_cli.tiles import event_counts

TILE_SIZES = (64, 128)
THRESHOLDS = (1, 8, 16, 32, 64, 128)


def tile_removals(path: Path, deflarer) -> tuple[int, dict[tuple[int, int], tuple[float, float]]]:
    """(removals, {(tile size, threshold): (share of tiles skipped, share of removals lost)})."""
    events = read_events(path)
    lost = dict.fromkeys(_keys(), 0)
    skipped = dict.fromkeys(_keys(), 0)
    tiles = dict.fromkeys(TILE_SIZES, 0)
    removed = 0
    for _, voxels, predicted, _ in predict_windows(deflarer, events, events.time_span()):
        removals = removal_counts(voxels.data, predicted, deflarer.margin, deflarer.removal).abs()
        removed += int(removals.sum())
        for size in TILE_SIZES:
            counts, removed_per_tile = event_counts(voxels.data, size), event_counts(removals, size)
            tiles[size] += counts.numel()
            for threshold in THRESHOLDS:
                quiet = counts < threshold
                lost[size, threshold] += int(removed_per_tile[quiet].sum())
                skipped[size, threshold] += int(quiet.sum())
    shares = {
        (size, threshold): (skipped[size, threshold] / tiles[size],
                            lost[size, threshold] / max(removed, 1))
        for size, threshold in _keys()
    }  # fmt: skip
    return removed, shares


def _keys() -> list[tuple[int, int]]:
    return [(size, threshold) for size in TILE_SIZES for threshold in THRESHOLDS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recordings", nargs="+", type=Path)
    parser.add_argument("--checkpoint", type=Path, help="default: the shipped model")
    args = parser.parse_args()
    torch.set_num_threads(2)
    settings = InferSettings(checkpoint=args.checkpoint, tiles=TileSettings(mode="frame"))
    deflarer = load_deflarer(settings)
    print("| recording | removals | " + " | ".join(f"{s}px/{n}" for s, n in _keys()) + " |")
    print("|---|---:|" + "---:|" * len(_keys()))
    for path in args.recordings:
        removed, shares = tile_removals(path, deflarer)
        cells = [f"{100 * skip:.0f}% / {100 * loss:.1f}%" for skip, loss in shares.values()]
        print(f"| {path.name} | {removed:,} | " + " | ".join(cells) + " |", flush=True)
    print("\ncells: tiles skipped / removals lost, per tile size and events a tile needs")


if __name__ == "__main__":
    main()
