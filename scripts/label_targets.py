"""Pairs whose targets are their inputs without the events labelled flare, for fitting trees.

`deflare synth` writes a clean target from separately emulated streams: the scene's events,
drawn once for both files, and the light sources' own events, from a stream of their own. The
trees are fitted on voxel differences (per cell, the input events beyond the target's count are
flare), and there the light's events do not line up: on synthetic night pairs a third of the
light's own input events count as flare for the fit, though the event labels (`is_flare`) say
they are not. A target written as the input minus its `is_flare` events makes the voxel
difference the event labels exactly. The inputs are linked, not copied; nothing is modified.
The pairs are written into a hidden folder beside OUT, renamed to OUT once all are there
(`deflare_cli.io.atomic_folder`): an interrupted run leaves no half-made folder.

    python scripts/label_targets.py OUT SOURCE
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deflare_cli.errors import DeflareError, InputError
from deflare_cli.io import (
    atomic_folder,
    check_new_folder,
    read_event_column,
    read_events,
    read_flare_labels,
    write_events,
)
from deflare_cli.io.pairs import find_pairs
from deflare_cli.progress import Progress, ProgressLines, no_progress
from deflare_cli.settings import paired_dirs


def label_targets(out_dir: Path, source: Path, progress: Progress = no_progress) -> int:
    """Link every input of ``source`` into ``out_dir`` beside a target made from its labels;
    returns the number of pairs. Every input is checked for labels before anything is written,
    one pair at a time is held in memory, and ``out_dir`` appears only once it is complete."""
    check_new_folder(out_dir)  # before reading every input's labels
    pairs = find_pairs(*paired_dirs(source))
    for pair in pairs:  # read_event_column checks the labels line up with the events' times
        if read_event_column(pair.flare_path, "is_flare") is None:
            raise InputError(
                pair.flare_path, "has no /events/is_flare labels (made by deflare synth)"
            )
    with atomic_folder(out_dir) as staging:
        flare_dir, clean_dir = paired_dirs(staging)
        for folder in (flare_dir, clean_dir):
            folder.mkdir()
        for done, pair in enumerate(pairs, start=1):
            events = read_events(pair.flare_path)
            flare = read_flare_labels(pair.flare_path, len(events))
            (flare_dir / pair.flare_path.name).symlink_to(pair.flare_path.resolve())
            write_events(clean_dir / pair.clean_path.name, events.select(~flare))
            progress("label targets", done, len(pairs))
    return len(pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="new (or empty) folder for the pairs")
    parser.add_argument("source", type=Path, help="pairs made by deflare synth (with labels)")
    arguments = parser.parse_args()
    lines = ProgressLines(lambda line: print(line, file=sys.stderr))
    try:
        count = label_targets(arguments.out_dir, arguments.source, lines)
    except DeflareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {count} label targets into {arguments.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
