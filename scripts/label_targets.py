"""Pairs whose targets are their inputs without the events labelled flare, for fitting trees.

`deflare synth` writes a clean target from separately emulated streams: the scene's events,
drawn once for both files, and the light sources' own events, from a stream of their own. The
trees are fitted on voxel differences (per cell, the input events beyond the target's count are
flare), and there the light's events do not line up: on synthetic night pairs a third of the
light's own input events count as flare for the fit, though the event labels (`is_flare`) say
they are not. A target written as the input minus its `is_flare` events makes the voxel
difference the event labels exactly. The inputs are linked, not copied; nothing is modified.

    python scripts/label_targets.py OUT SOURCE
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deflare_cli.errors import DeflareError, InputError
from deflare_cli.io import read_events, read_flare_labels, write_events
from deflare_cli.io.pairs import find_pairs

FLARE_DIR = "background_with_flare_events"
CLEAN_DIR = "background_with_light_events"


def label_targets(out_dir: Path, source: Path) -> int:
    """Link every input of ``source`` into ``out_dir`` beside a target made from its labels;
    returns the number of pairs. Every input is checked for labels before anything is written."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(out_dir, "exists and is not empty; write the pairs into a new folder")
    pairs = find_pairs(source / FLARE_DIR, source / CLEAN_DIR)
    targets = []
    for pair in pairs:
        events = read_events(pair.flare_path)
        flare = read_flare_labels(pair.flare_path, len(events))  # names the file if missing
        targets.append(events.select(~flare))
    for folder in (FLARE_DIR, CLEAN_DIR):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for pair, target in zip(pairs, targets, strict=True):
        (out_dir / FLARE_DIR / pair.flare_path.name).symlink_to(pair.flare_path.resolve())
        write_events(out_dir / CLEAN_DIR / pair.clean_path.name, target)
    return len(pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("source", type=Path)
    arguments = parser.parse_args()
    try:
        count = label_targets(arguments.out_dir, arguments.source)
    except DeflareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {count} label targets into {arguments.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
