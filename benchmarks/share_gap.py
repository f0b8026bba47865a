"""Does a model score real scenes like the synthetic scenes its margin was set on? (issue 12)

    python benchmarks/share_gap.py CHECKPOINT PAIRS_DIR RECORDING [RECORDING ...]

A margin calibrated on synthetic pairs keeps 97% of a real scene only if the model is as sure
that real scene events are not flare as it is for synthetic ones. Every event gets the removal
share of its cell (``event_scores.py``, before any margin). For the labelled pairs' flare
events, their other events and each recording (real ones without bright lights are scene alone)
it prints the mean share, quantiles, and the share of the events at or below the *synthetic
threshold*: the share under which 97% of the pairs' other events lie. A recording whose share
there is far below 97% will lose far more than 3% of its events at any margin calibrated on
such pairs. Whole frames, on the CPU unless ``--device`` says otherwise.

``--smooth R,B`` (repeatable) adds a table per setting in which every event's share is the mean
of the shares of all events within ``R`` px and ``B`` bins of 10 ms of its own (a box in space
and time): does deciding on the neighbours' shares, the context a 20 ms, 24 px network lacks,
separate sparse flare from real scenes better? (2026-12-06: no; ``docs/experiments.md``.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from event_scores import KEPT, labelled_shares, read_recording, removal_shares

from deflare_cli.events import Events
from deflare_cli.io import find_pairs
from deflare_cli.settings import paired_dirs

QUANTILES = (0.5, 0.9, 0.97, 0.99)
SMOOTH_BIN_US = 10_000


def smoothed_shares(
    events: Events, shares: np.ndarray, radius_px: int, half_bins: int
) -> np.ndarray:
    """Each event's mean of the shares of the events in the box of half-width ``radius_px``
    pixels and ``half_bins`` bins of ``SMOOTH_BIN_US`` around its own pixel and bin, itself
    included (cut at the sensor's edges and the recording's ends). Memory: a few float32 grids
    of (bins, H, W), fine for the seconds-long recordings this probe reads."""
    from scipy.ndimage import uniform_filter

    height, width = events.sensor_size
    bins = (events.t - events.t.min()) // SMOOTH_BIN_US
    cells = (bins * height + events.y.astype(np.int64)) * width + events.x.astype(np.int64)
    shape = (int(bins.max()) + 1, height, width)
    box = (2 * half_bins + 1, 2 * radius_px + 1, 2 * radius_px + 1)

    def box_mean(weights: np.ndarray | None) -> np.ndarray:
        """Per event: the mean of ``weights`` (None: 1 per event) over its box."""
        grid = np.bincount(cells, weights=weights, minlength=int(np.prod(shape)))
        smooth = uniform_filter(grid.reshape(shape).astype(np.float32), size=box, mode="constant")
        return smooth.ravel()[cells]

    sums, counts = box_mean(shares), box_mean(None)
    return sums / counts  # the event's own cell is in its box: counts > 0


def row(name: str, shares: np.ndarray, threshold: float) -> str:
    """One table row: mean, quantiles and the share at or below the synthetic threshold."""
    quantiles = " | ".join(f"{np.quantile(shares, q):.3f}" for q in QUANTILES)
    kept = float((shares <= threshold).mean())
    return f"| {name} | {len(shares):,} | {shares.mean():.3f} | {quantiles} | {kept:.1%} |"


def smoothing(spec: str) -> tuple[int, int]:
    """``R,B`` as (radius in pixels, half-width in bins), both at least 0."""
    radius, _, half_bins = spec.partition(",")
    try:
        values = int(radius), int(half_bins)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--smooth wants R,B (two integers): {spec!r}") from None
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"--smooth wants R,B of at least 0, got {spec!r}")
    return values


def print_table(
    title: str,
    labelled: list[tuple[Events, np.ndarray, np.ndarray]],
    recordings: list[tuple[str, Events, np.ndarray]],
) -> None:
    """One table: the threshold set on the labelled pairs, then every row."""
    shares = np.concatenate([s for _, s, _ in labelled])
    flare = np.concatenate([y for _, _, y in labelled])
    threshold = float(np.quantile(shares[~flare], KEPT))
    print(f"{title}; synthetic threshold (97% of their other events at or below it): "
          f"{threshold:.3f}")  # fmt: skip
    header = " | ".join(f"q{q * 100:g}" for q in QUANTILES)
    print(f"| events | count | mean | {header} | at or below the threshold |")
    print("|---|---:|---:|" + "---:|" * len(QUANTILES) + "---:|")
    print(row("synthetic flare", shares[flare], threshold))
    print(row("synthetic, the rest", shares[~flare], threshold))
    for name, _, recording_shares in recordings:
        print(row(name, recording_shares, threshold))


def main() -> int:
    """Prints the tables; a missing folder, pair, label or recording is an error naming it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("pairs_dir", type=Path, help="labelled pairs from deflare synth")
    parser.add_argument(
        "recordings", nargs="+", help="PATH, or PATH:HxW for a file without its size"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument(
        "--smooth", type=smoothing, action="append", default=[], metavar="R,B",
        help="a table more, shares averaged within R px and B bins",
    )  # fmt: skip
    args = parser.parse_args()
    labelled = [
        labelled_shares(args.checkpoint, pair.flare_path, args.device)
        for pair in find_pairs(*paired_dirs(args.pairs_dir))
    ]
    recordings = [
        (name, events, removal_shares(args.checkpoint, events, args.device))
        for name, events in map(read_recording, args.recordings)
    ]
    title = f"{args.checkpoint}; {len(labelled)} labelled pairs in {args.pairs_dir}"
    print_table(title, labelled, recordings)
    for radius, half_bins in args.smooth:
        print(f"\nshares averaged within {radius} px and {half_bins} bins of "
              f"{SMOOTH_BIN_US // 1000} ms")  # fmt: skip
        smooth = [(e, smoothed_shares(e, s, radius, half_bins), y) for e, s, y in labelled]
        smooth_recordings = [
            (name, e, smoothed_shares(e, s, radius, half_bins)) for name, e, s in recordings
        ]
        print_table(title, smooth, smooth_recordings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
