"""Read an event file, encode it into voxels and decode them again, from Python.

python examples/encode_decode.py EVENTS.h5 [--window-ms 0:40]
"""

from __future__ import annotations

import argparse

import numpy as np

from deflare_cli.codec import events_to_voxel, voxel_to_events
from deflare_cli.io import read_events
from deflare_cli.settings import CodecSettings, ReadSettings, parse_time_window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("events_file")
    parser.add_argument("--window-ms", help="START:END in ms from the recording's start")
    args = parser.parse_args()
    window = parse_time_window(args.window_ms) if args.window_ms else None
    events = read_events(args.events_file, ReadSettings(time_window_ms=window))
    voxels = events_to_voxel(events, CodecSettings(num_bins=8, segment_us=20_000))
    decoded = voxel_to_events(voxels, seed=0)
    print(f"{len(events)} events -> voxels {tuple(voxels.data.shape)} -> {len(decoded)} events")
    print(f"net polarity kept: {int(events.p.sum())} == {int(decoded.p.sum())}")
    print(f"cells with events: {int((voxels.data != 0).sum())}, "
          f"largest |cell|: {int(voxels.data.abs().max())}, "
          f"events lost to cancellation: {len(events) - len(decoded)} "
          f"({100 * (1 - len(decoded) / len(events)):.1f}%)")  # fmt: skip
    assert np.all(np.diff(decoded.t) >= 0)


if __name__ == "__main__":
    main()
