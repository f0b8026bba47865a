"""Write a small example recording: a moving edge, a 100 Hz flickering light and noise.

    python examples/make_example_events.py runs/demo/example.h5 [--seed 0]

A hand-made toy (no optics, no DVS emulation) showing how to build and write events from
Python; `deflare synth` makes realistic pairs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from deflare_cli.events import make_events, sort_by_time
from deflare_cli.io import write_events

HEIGHT, WIDTH = 480, 640
DURATION_US = 100_000


def moving_edge(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A vertical bright edge sweeping right at 1.5 px/ms: ON events along its front."""
    t = np.sort(rng.integers(0, DURATION_US, 60_000))
    x = np.clip(100 + t * 1.5e-3 + rng.normal(0, 0.7, t.size), 0, WIDTH - 1)
    y = rng.integers(60, 420, t.size)
    return t, x, y, np.ones(t.size)


def flickering_light(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A light at (480, 120) flickering at 100 Hz: ON bursts while it brightens, OFF after."""
    t = rng.integers(0, DURATION_US, 150_000)
    phase = (t % 10_000) / 10_000
    radius = np.abs(rng.normal(0, 25, t.size))
    angle = rng.uniform(0, 2 * np.pi, t.size)
    x = np.clip(480 + radius * np.cos(angle), 0, WIDTH - 1)
    y = np.clip(120 + radius * np.sin(angle), 0, HEIGHT - 1)
    return t, x, y, (phase < 0.5).astype(int)


def noise(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    t = rng.integers(0, DURATION_US, 20_000)
    return (
        t,
        rng.integers(0, WIDTH, t.size),
        rng.integers(0, HEIGHT, t.size),
        rng.integers(0, 2, t.size),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    parts = [moving_edge(rng), flickering_light(rng), noise(rng)]
    t, x, y, p = (np.concatenate(column) for column in zip(*parts, strict=True))
    events = sort_by_time(make_events(t, x, y, p, (HEIGHT, WIDTH), span_us=(0, DURATION_US)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_events(args.output, events)
    print(f"wrote {args.output}: {len(events)} events over {DURATION_US / 1000:g} ms")


if __name__ == "__main__":
    main()
