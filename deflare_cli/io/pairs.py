"""Paired recordings: an input with flare and its clean target, found by ID in two folders.

E-Deflare's layout pairs ``background_with_flare_events/composed_NNNNN_bg_flare.h5`` (input)
with ``background_with_light_events/composed_NNNNN_bg_light.h5`` (target) by NNNNN; other file
names pair when their names are equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..events import Events
from ..settings import ReadSettings, paired_dirs
from .files import list_event_files
from .reader import read_events

_ID_PATTERN = re.compile(r"^composed_(\d+)_bg_(?:flare|light)$")


@dataclass(frozen=True)
class Pair:
    """One training or test example: two files."""

    pair_id: str
    flare_path: Path
    clean_path: Path


def pair_id(path: Path) -> str:
    """``composed_00042_bg_flare.h5`` -> ``00042``; other names pair by their stem."""
    match = _ID_PATTERN.match(path.stem)
    return match.group(1) if match else path.stem


def pair_paths(folder: Path, pair_id: str) -> tuple[Path, Path]:
    """Where the pair ``pair_id`` lies in ``folder`` (as .h5; ``with_suffix`` for another
    format) for :func:`find_pairs` to find it again: E-Deflare's names for a numeric ID, the ID
    itself in both folders otherwise."""
    flare_dir, clean_dir = paired_dirs(folder)
    if pair_id.isdigit():
        return (
            flare_dir / f"composed_{pair_id}_bg_flare.h5",
            clean_dir / f"composed_{pair_id}_bg_light.h5",
        )
    return flare_dir / f"{pair_id}.h5", clean_dir / f"{pair_id}.h5"


def find_pairs(flare_dir: Path, clean_dir: Path) -> list[Pair]:
    """Pair input and target files by ID; a file without a partner is an error listing them."""
    flare = {pair_id(p): p for p in list_event_files(flare_dir)}
    clean = {pair_id(p): p for p in list_event_files(clean_dir)}
    lonely = sorted(set(flare) ^ set(clean))
    if lonely:
        names = [str(flare.get(i) or clean.get(i)) for i in lonely]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise InputError(flare_dir.parent, f"{len(names)} file(s) without a partner: {shown}")
    if not flare:
        raise InputError(flare_dir, "no event files to train on")
    return [Pair(i, flare[i], clean[i]) for i in sorted(flare)]


def read_pair(pair: Pair, read: ReadSettings = ReadSettings()) -> tuple[Events, Events]:
    """(input, target) events of a pair; their sensor sizes must agree."""
    flare = read_events(pair.flare_path, read)
    clean = read_events(pair.clean_path, read)
    if flare.sensor_size != clean.sensor_size:
        raise InputError(
            pair.clean_path,
            f"sensor size {clean.sensor_size} differs from its input's {flare.sensor_size}",
        )
    return flare, clean
