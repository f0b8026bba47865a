"""Merge folders of paired recordings into one training folder, without copying them.

`deflare train` reads one folder of pairs. A training mix of several recipes (README, "The
recipe": the default model's third stage trains on configs/synth.yaml and
configs/synth_sparse.yaml pairs) is made of several `deflare synth` folders whose pair IDs
collide, since every folder numbers its pairs from 0. This links each pair into OUT under an ID
prefixed by its folder's position (folder 2's pair 00042 becomes 200042; a pair named
night.h5 in both folders becomes 2night.h5), so the files are
neither copied nor modified. OUT appears only once every link is made
(`deflare_cli.io.atomic_folder`): an interrupted run leaves no half-made folder.

    python scripts/merge_pairs.py OUT SOURCE [SOURCE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deflare_cli.errors import DeflareError
from deflare_cli.io import atomic_folder
from deflare_cli.io.pairs import find_pairs, pair_paths
from deflare_cli.settings import paired_dirs


def merge_pairs(out_dir: Path, sources: list[Path]) -> int:
    """Link every pair of ``sources`` into ``out_dir``; returns the number of pairs linked."""
    count = 0
    with atomic_folder(out_dir) as staging:  # a source that fails midway leaves no OUT
        flare_dir, clean_dir = paired_dirs(staging)
        for folder in (flare_dir, clean_dir):
            folder.mkdir()
        for position, source in enumerate(sources, start=1):
            for pair in find_pairs(*paired_dirs(source)):
                links = pair_paths(staging, f"{position}{pair.pair_id}")
                for link, path in zip(links, (pair.flare_path, pair.clean_path), strict=True):
                    link.with_suffix(path.suffix).symlink_to(path.resolve())
                count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="new (or empty) folder for the links")
    parser.add_argument("sources", type=Path, nargs="+", help="folders of pairs, in ID order")
    arguments = parser.parse_args()
    try:
        count = merge_pairs(arguments.out_dir, arguments.sources)
    except DeflareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"linked {count} pairs from {len(arguments.sources)} folders into {arguments.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
