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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from event_scores import KEPT, event_scores, read_recording, removal_shares

from deflare_cli.io import find_pairs
from deflare_cli.settings import paired_dirs

QUANTILES = (0.5, 0.9, 0.97, 0.99)


def row(name: str, shares: np.ndarray, threshold: float) -> str:
    """One table row: mean, quantiles and the share at or below the synthetic threshold."""
    quantiles = " | ".join(f"{np.quantile(shares, q):.3f}" for q in QUANTILES)
    kept = float((shares <= threshold).mean())
    return f"| {name} | {len(shares):,} | {shares.mean():.3f} | {quantiles} | {kept:.1%} |"


def main() -> int:
    """Prints the table; a missing folder, pair, label or recording is an error naming it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("pairs_dir", type=Path, help="labelled pairs from deflare synth")
    parser.add_argument(
        "recordings", nargs="+", help="PATH, or PATH:HxW for a file without its size"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()
    pairs = find_pairs(*paired_dirs(args.pairs_dir))
    scored = [event_scores(args.checkpoint, pair.flare_path, args.device) for pair in pairs]
    shares = np.concatenate([s for s, _ in scored])
    flare = np.concatenate([y for _, y in scored])
    threshold = float(np.quantile(shares[~flare], KEPT))
    print(f"{args.checkpoint}; {len(pairs)} labelled pairs in {args.pairs_dir}; synthetic "
          f"threshold (97% of their other events at or below it): {threshold:.3f}")  # fmt: skip
    header = " | ".join(f"q{q * 100:g}" for q in QUANTILES)
    print(f"| events | count | mean | {header} | at or below the threshold |")
    print("|---|---:|---:|" + "---:|" * len(QUANTILES) + "---:|")
    print(row("synthetic flare", shares[flare], threshold))
    print(row("synthetic, the rest", shares[~flare], threshold))
    for name, events in map(read_recording, args.recordings):
        print(row(name, removal_shares(args.checkpoint, events, args.device), threshold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
