"""Deflare a recording segment by segment, from Python: the loop `deflare deflare` runs.

    python examples/deflare_in_segments.py RECORDING CHECKPOINT

Reads 20 ms at a time (so a long recording never has to fit in memory), encodes it, runs the
model and keeps the input events the model keeps (preserve mode), printing counts per segment.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from deflare_cli.codec import Voxels, count_segments, events_to_voxel
from deflare_cli.infer import load_deflarer, preserve_events, run_model
from deflare_cli.io import EventFileReader
from deflare_cli.settings import InferSettings, RuntimeSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("recording", type=Path)
    parser.add_argument("checkpoint", type=Path)
    args = parser.parse_args()
    cpu = RuntimeSettings(device="cpu")
    deflarer = load_deflarer(InferSettings(checkpoint=args.checkpoint, runtime=cpu))
    segment_us = deflarer.codec.segment_us
    kept_total = seen_total = 0
    with EventFileReader(args.recording) as reader:
        start, end = reader.span_us
        for index in range(count_segments((start, end), segment_us)):
            segment_start = start + index * segment_us
            events = reader.read(segment_start, segment_start + segment_us)
            voxels = events_to_voxel(events, deflarer.codec)  # (1, 8, H, W)
            predicted = run_model(deflarer, voxels.data)
            kept = preserve_events(
                events, voxels.data[0], Voxels(predicted, segment_start, segment_us),
                np.random.default_rng([0, index]),
            )  # fmt: skip
            print(f"segment {index}: {len(events)} events in, {len(kept)} out")
            seen_total += len(events)
            kept_total += len(kept)
    print(f"total: {seen_total} in, {kept_total} out")


if __name__ == "__main__":
    main()
