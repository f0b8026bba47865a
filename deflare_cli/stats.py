"""Statistics of a recording that anyone can compare (``deflare info``, issue 12).

Real and synthetic recordings differ most in how sparse they are, so next to size, duration and
rate this reports the share of pixels that fire at least once per 20 ms window (the model's
segment) and how many events an active pixel fires in such a window, and how often a pixel's
next event follows within 20 ms with the opposite polarity: real sensors do that often (edges
that move back and forth, textures, and on Prophesee sensors noise that comes as an OFF event
with an ON a few milliseconds later), while a synthetic scene whose pixels only ever see a
monotone change hardly does, and a model trained on it learns that mixed polarity means flare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import InputError
from .events import Events
from .io import EventFileReader, list_event_files
from .settings import ReadSettings, paired_dirs

WINDOW_US = 20_000  # one model segment
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class RecordingStats:
    """What ``deflare info`` prints for one recording."""

    name: str
    height: int
    width: int
    duration_s: float
    events: int
    rate_meps: float  # million events per second
    active_percent: float  # pixels with at least one event per 20 ms window, mean over windows
    on_percent: float
    per_active_pixel: tuple[float, ...]  # quantiles QUANTILES of events per active pixel per window
    flip_percent: float = 0.0  # events whose pixel's next event is opposite and within 20 ms
    format: str = ""  # HDF5 layout or camera format (deflare_cli.io.formats)
    provenance: dict[str, str] = field(default_factory=dict)  # deflare_* attributes

    def as_dict(self) -> dict:
        return asdict(self)


def recording_stats(events: Events, name: str = "", window_us: int = WINDOW_US) -> RecordingStats:
    """Statistics of ``events`` over their time span, cut into windows of ``window_us``.

    Windows start at the first event; the last, partial window is left out unless the recording
    is shorter than one window (then that one window is used as it is).
    """
    height, width = events.sensor_size
    count = len(events)
    if count == 0:
        return RecordingStats(name, height, width, 0.0, 0, 0.0, 0.0, 0.0, (0.0,) * len(QUANTILES))
    t = events.t.astype(np.int64)
    start = int(t.min())
    duration_us = max(int(t.max()) - start + 1, 1)
    full_windows = duration_us // window_us
    window = (t - start) // window_us
    used = window < full_windows if full_windows else np.ones(count, bool)
    num_windows = max(full_windows, 1)
    pixel = events.y[used].astype(np.int64) * width + events.x[used]
    _, per_pixel = np.unique(window[used] * (height * width) + pixel, return_counts=True)
    active = len(per_pixel) / (num_windows * height * width)
    quantiles = np.quantile(per_pixel, QUANTILES) if len(per_pixel) else np.zeros(len(QUANTILES))
    return RecordingStats(
        name=name,
        height=height,
        width=width,
        duration_s=duration_us / 1e6,
        events=count,
        rate_meps=count / (duration_us / 1e6) / 1e6,
        active_percent=100 * active,
        on_percent=100 * float((events.p > 0).mean()),
        per_active_pixel=tuple(float(q) for q in quantiles),
        flip_percent=100 * flip_share(events, window_us),
    )


def flip_share(events: Events, within_us: int = WINDOW_US) -> float:
    """Share of ``events`` whose pixel's next event comes less than ``within_us`` later with the
    opposite polarity (over the whole recording, not cut into windows)."""
    if len(events) < 2:
        return 0.0
    pixel = events.y.astype(np.int64) * events.sensor_size[1] + events.x
    order = np.lexsort((events.t, pixel))
    pixel, t, on = pixel[order], events.t[order].astype(np.int64), events.p[order] > 0
    flips = (pixel[1:] == pixel[:-1]) & (t[1:] - t[:-1] < within_us) & (on[1:] != on[:-1])
    return float(flips.sum()) / len(events)


def file_stats(path: Path, read: ReadSettings = ReadSettings()) -> RecordingStats:
    """:func:`recording_stats` of an event file (any format the readers take), with its format
    and deflare's provenance attributes."""
    with EventFileReader(path, read) as reader:
        events = reader.read(*reader.span_us)
        details = {"format": reader.format, "provenance": reader.provenance}
    return replace(recording_stats(events, name=path.name), **details)


def summarise(rows: list[RecordingStats]) -> dict[str, tuple[float, float, float]]:
    """(min, median, max) over recordings of rate, active share, median events per active pixel
    and flip share."""
    columns = {
        "rate_meps": [row.rate_meps for row in rows],
        "active_percent": [row.active_percent for row in rows],
        "median_per_active_pixel": [row.per_active_pixel[0] for row in rows],
        "flip_percent": [row.flip_percent for row in rows],
    }
    return {name: (float(np.min(v)), float(np.median(v)), float(np.max(v)))
            for name, v in columns.items()}  # fmt: skip


def collect_stats(sources: list[Path], read: ReadSettings = ReadSettings()) -> list[RecordingStats]:
    """:func:`file_stats` of each file, and of every event file in each folder, in order; a
    folder of pairs (``deflare synth``'s output) gives its inputs, the recordings with flare."""
    rows = []
    for source in sources:
        files = [source]
        if source.is_dir():
            inputs = paired_dirs(source)[0]
            files = list_event_files(source) or (
                list_event_files(inputs) if inputs.is_dir() else []
            )
            if not files:
                raise InputError(source, "holds no event files (nor a folder of pairs' inputs)")
        rows.extend(file_stats(path, read) for path in files)
    return rows
