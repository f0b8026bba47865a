"""Classic filters to compare deflare with, written from their papers' descriptions.

Every filter takes events and returns the events it keeps (or, for EFR, re-emits); none modifies
its input. Parameters live in :class:`deflare_cli.settings.BaselineSettings`.

The neighbourhood filters (background activity, PFD) process time in chunks of ``chunk_us``
(default 0.5 ms): an event sees the state left by all earlier chunks, not by events of its own
chunk. That vectorises them (1 M events in well under a second) at the cost of ignoring support
younger than one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .events import Events, concat_events, make_events, pixel_index
from .settings import BaselineSettings

# The 8 neighbours of a pixel, as (dy, dx).
NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _chunks(events: Events, chunk_us: int) -> Iterator[slice]:
    """Consecutive time chunks of a sorted stream, as slices."""
    if not len(events):
        return
    start = int(events.t[0])
    edges = np.arange(start, int(events.t[-1]) + chunk_us + 1, chunk_us)
    bounds = np.searchsorted(events.t, edges)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if hi > lo:
            yield slice(int(lo), int(hi))


def _neighbour_values(grid: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(8, N) values of a padded (H + 2, W + 2) grid at the neighbours of pixels (y, x)."""
    return np.stack([grid[y + 1 + dy, x + 1 + dx] for dy, dx in NEIGHBOURS])


# ----------------------------------------------------------------------------- BAF


def background_activity_filter(events: Events, settings: BaselineSettings) -> Events:
    """Delbruck's background-activity filter (jAER, libcaer, dv-processing).

    An event passes when any of its 8 neighbours (not itself) fired within ``baf_dt_us``;
    afterwards its own pixel's timestamp is updated, passed or not.
    """
    last = np.full((events.height + 2, events.width + 2), -(2**62), np.int64)
    keep = np.zeros(len(events), bool)
    for part in _chunks(events, settings.chunk_us):
        t, y, x = events.t[part], events.y[part].astype(np.int64), events.x[part].astype(np.int64)
        newest = _neighbour_values(last, y, x).max(axis=0)
        keep[part] = t - newest <= settings.baf_dt_us
        last[y + 1, x + 1] = t  # in time order: the newest of the chunk wins
    return events.select(keep)


# ----------------------------------------------------------------------------- PFD


def polarity_focused_filter(
    events: Events, settings: BaselineSettings, variant: str = "B"
) -> Events:
    """PFD-A / PFD-B (Shi et al., polarity-focused denoising).

    Stage 1 keeps an event if one of its 8 neighbours had a same-polarity event within
    ``pfd_dt0_us``. Stage 2 counts polarity flips in a window of ``pfd_dt_us``: ``Mf`` the
    pixel's own, ``Ne`` the active neighbours, ``Ma`` the neighbours' flips. An event is kept if
    stage 1 passed, ``Ne > pfd_min_neighbours`` and the score is below ``pfd_max_score``: the score
    is ``|Mf - Ma/Ne|`` for PFD-A and ``Ma/Ne`` for PFD-B. Flicker flips polarity all the time;
    moving edges do not.
    """
    if variant not in ("A", "B"):
        raise ValueError("variant must be 'A' or 'B'")
    height, width = events.sensor_size
    padded = (height + 2, width + 2)
    same_polarity_last = np.full((2, *padded), -(2**62), np.int64)
    last_polarity = np.zeros(height * width, np.int8)
    window = _FlipWindow(height, width, max(1, settings.pfd_dt_us // settings.chunk_us))
    keep = np.zeros(len(events), bool)
    for part in _chunks(events, settings.chunk_us):
        t, p = events.t[part], events.p[part]
        y, x = events.y[part].astype(np.int64), events.x[part].astype(np.int64)
        channel = (p > 0).astype(np.int64)
        newest = np.stack(
            [same_polarity_last[channel, y + 1 + dy, x + 1 + dx] for dy, dx in NEIGHBOURS]
        ).max(axis=0)
        stage1 = t - newest <= settings.pfd_dt0_us
        same_polarity_last[channel, y + 1, x + 1] = t
        pixel = y * width + x
        window.add(pixel, _flips(pixel, p, last_polarity))
        own_flips, active_neighbours, neighbour_flips = window.counts(y, x)
        ratio = neighbour_flips / np.maximum(active_neighbours, 1)
        score = np.abs(own_flips - ratio) if variant == "A" else ratio
        keep[part] = (
            stage1 & (active_neighbours > settings.pfd_min_neighbours)
            & (score < settings.pfd_max_score)
        )  # fmt: skip
    return events.select(keep)


def _flips(pixel: np.ndarray, p: np.ndarray, last_polarity: np.ndarray) -> np.ndarray:
    """Per event: 1 if its polarity differs from its pixel's previous event; updates the map."""
    order = np.argsort(pixel, kind="stable")  # by pixel, in time within each pixel
    sorted_pixel, sorted_p = pixel[order], p[order]
    previous = np.empty_like(sorted_p)
    previous[1:] = sorted_p[:-1]
    new_pixel = np.r_[True, sorted_pixel[1:] != sorted_pixel[:-1]]
    previous[new_pixel] = last_polarity[sorted_pixel[new_pixel]]
    flips = np.zeros(len(p), np.int16)
    flips[order] = (previous != 0) & (previous != sorted_p)
    last_polarity[pixel] = p  # in time order: the newest wins
    return flips


class _FlipWindow:
    """Per-pixel flip and activity counts over the last ``slots`` chunks (a ring buffer)."""

    def __init__(self, height: int, width: int, slots: int) -> None:
        self.shape = (height + 2, width + 2)
        self.width = width
        self.flips = np.zeros((slots, height * width), np.int16)
        self.active = np.zeros((slots, height * width), np.int16)
        self.flip_sum = np.zeros(self.shape, np.int32)
        self.active_sum = np.zeros(self.shape, np.int32)
        self.slot = 0

    def add(self, pixel: np.ndarray, flips: np.ndarray) -> None:
        slots = len(self.flips)
        self.slot = (self.slot + 1) % slots
        inner = (slice(1, -1), slice(1, -1))
        self.flip_sum[inner] -= self.flips[self.slot].reshape(self.shape[0] - 2, -1)
        self.active_sum[inner] -= self.active[self.slot].reshape(self.shape[0] - 2, -1)
        self.flips[self.slot] = np.bincount(pixel, flips, minlength=self.flips.shape[1])
        self.active[self.slot] = np.bincount(pixel, minlength=self.flips.shape[1]) > 0
        self.flip_sum[inner] += self.flips[self.slot].reshape(self.shape[0] - 2, -1)
        self.active_sum[inner] += self.active[self.slot].reshape(self.shape[0] - 2, -1)

    def counts(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """(own flips, active neighbours, neighbours' flips) of pixels (y, x)."""
        own = self.flip_sum[y + 1, x + 1]
        active = (_neighbour_values(self.active_sum, y, x) > 0).sum(axis=0)
        neighbour_flips = _neighbour_values(self.flip_sum, y, x).sum(axis=0)
        return own, active, neighbour_flips


# ----------------------------------------------------------------------------- EFR


def event_flicker_removal(events: Events, settings: BaselineSettings) -> Events:
    """EFR (Wang et al., ICRA 2022): per-pixel linear comb filters on the polarity signal.

    Per pixel, ``x(t) = sum (p_i - b) delta(t - t_i)`` (``b`` its mean polarity when it has at
    least 20 events) goes through two cascaded comb filters ``y = x - x(t - d) + rho y(t - d)``
    with ``d1 = 1 / f0``, ``rho1``, then ``d2 = d1 / 10``, ``rho2 = 1 - (1 - rho1) / 10``; they
    notch f0 and its harmonics. The output is integrated and an event of its sign is emitted each
    time the integral crosses +-threshold (which is then subtracted). Time is sampled every
    ``efr_step_us``. The filter lags by ``d1 + d2``; as E-Deflare's wrapper, the raw events of that
    first stretch are passed through.
    """
    if not len(events):
        return events
    step = settings.efr_step_us
    delay1 = max(1, round(1e6 / settings.efr_f0_hz / step))
    delay2 = max(1, round(delay1 / 10))
    rho2 = 1 - (1 - settings.efr_rho1) / 10
    start = int(events.t[0])
    samples = int((events.t[-1] - start) // step) + 1
    pixels, which = np.unique(pixel_index(events), return_inverse=True)
    counts = np.bincount(which)
    mean_p = np.bincount(which, events.p) / counts
    bias = np.where(counts >= 20, mean_p, 0.0)
    sample = (events.t - start) // step
    pieces = []
    chunk = max(1, 4_000_000 // samples)  # pixels per block: ~16 MB per signal
    for lo in range(0, len(pixels), chunk):
        hi = min(lo + chunk, len(pixels))
        mine = (which >= lo) & (which < hi)
        signal = np.zeros((samples, hi - lo), np.float32)  # time-major: comb blocks are rows
        np.add.at(signal, (sample[mine], which[mine] - lo), events.p[mine] - bias[which[mine]])
        filtered = _comb(_comb(signal, delay1, settings.efr_rho1), delay2, rho2)
        pieces.append(_emit(filtered, pixels[lo:hi], settings.efr_threshold))
    rows, sample_index, polarity = (np.concatenate(column) for column in zip(*pieces, strict=True))
    lag_end = start + (delay1 + delay2) * step
    # the middle of the sample, but never after the last input event: the last sample's middle
    # could lie past the recording's end (and outside the evaluation grid)
    emitted_t = np.minimum(start + sample_index * step + step // 2, int(events.t[-1]))
    late = emitted_t >= lag_end
    early = events.select(events.t < lag_end)
    y, x = np.divmod(rows[late], events.width)
    emitted = make_events(emitted_t[late], x, y, polarity[late], events.sensor_size)
    return concat_events([early, emitted], events)


def _comb(signal: np.ndarray, delay: int, rho: float) -> np.ndarray:
    """``y[n] = x[n] - x[n - D] + rho y[n - D]`` along axis 0 (time), D samples at a time."""
    output = np.empty_like(signal)
    output[:delay] = signal[:delay]
    for begin in range(delay, len(signal), delay):
        end = min(begin + delay, len(signal))
        width = end - begin
        output[begin:end] = (
            signal[begin:end] - signal[begin - delay : begin - delay + width]
            + rho * output[begin - delay : begin - delay + width]
        )  # fmt: skip
    return output


def _emit(filtered: np.ndarray, pixels: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """Integrate each pixel's (column's) signal over time and emit an event per +-threshold
    crossing: (pixel, sample, p).

    With ``K`` events emitted so far and ``u`` the integral in thresholds, the rule "emit while
    the remainder is beyond +-threshold" changes ``K`` only when ``|u - K| >= 1``, and then to
    ``floor(u)`` (rising) or ``ceil(u)`` (falling).
    """
    integral = np.cumsum(filtered, axis=0, dtype=np.float64) / threshold
    emitted = np.zeros(filtered.shape[1], np.float64)
    difference = np.empty_like(emitted)
    rows, samples, polarity = [], [], []
    for n in range(len(filtered)):
        column = integral[n]
        np.subtract(column, emitted, out=difference)
        changed = np.flatnonzero(np.abs(difference) >= 1)
        if not len(changed):
            continue
        rising = difference[changed] > 0
        new = np.where(rising, np.floor(column[changed]), np.ceil(column[changed]))
        change = (new - emitted[changed]).astype(np.int64)
        emitted[changed] = new
        repeats = np.abs(change)
        rows.append(np.repeat(pixels[changed], repeats))
        samples.append(np.full(int(repeats.sum()), n, np.int64))
        polarity.append(np.repeat(np.where(rising, 1, -1).astype(np.int8), repeats))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8)
    return np.concatenate(rows), np.concatenate(samples), np.concatenate(polarity)


# ----------------------------------------------------------------------------- anti-flicker


def anti_flicker_filter(events: Events, settings: BaselineSettings) -> Events:
    """Anti-flicker as in Prophesee's Metavision: drop pixels that blink at a steady rate.

    Per pixel, ON bursts start with an ON event at least half the band's shortest period after
    the previous ON event. When ``antiflicker_periods`` successive burst periods lie in the band
    and agree within 25%, the pixel's events are dropped until the rhythm breaks. Steady lights
    do not blink and pass untouched.
    """
    if not len(events):
        return events
    low_hz, high_hz = settings.antiflicker_band_hz
    pixel = pixel_index(events)
    order = np.lexsort((events.t, pixel))
    sorted_pixel, sorted_t, sorted_p = pixel[order], events.t[order], events.p[order]
    on = np.flatnonzero(sorted_p > 0)
    on_pixel, on_t = sorted_pixel[on], sorted_t[on]
    gap = 0.5e6 / high_hz
    first_on = np.r_[True, on_pixel[1:] != on_pixel[:-1]]
    burst = first_on | (np.diff(on_t, prepend=on_t[0]) > gap)
    burst_at = on[burst]  # positions in the sorted stream
    burst_pixel, burst_t = sorted_pixel[burst_at], sorted_t[burst_at]
    period = np.diff(burst_t, prepend=burst_t[0]).astype(np.float64)
    same_pixel = np.r_[False, burst_pixel[1:] == burst_pixel[:-1]]
    previous_period = np.r_[0.0, period[:-1]]
    in_band = same_pixel & (period >= 1e6 / high_hz) & (period <= 1e6 / low_hz)
    steady = np.abs(period - previous_period) <= 0.25 * np.maximum(previous_period, 1)
    good = in_band & (steady | ~np.r_[False, same_pixel[:-1]])
    run = _run_lengths(good)
    flagged = run >= settings.antiflicker_periods
    # every event inherits the flag of its pixel's latest burst
    latest = np.searchsorted(burst_at, np.arange(len(sorted_t)), side="right") - 1
    valid = latest >= 0
    valid[valid] &= burst_pixel[latest[valid]] == sorted_pixel[valid]
    drop_sorted = np.zeros(len(sorted_t), bool)
    drop_sorted[valid] = flagged[latest[valid]]
    keep = np.ones(len(events), bool)
    keep[order[drop_sorted]] = False
    return events.select(keep)


def _run_lengths(good: np.ndarray) -> np.ndarray:
    """For each position, how many consecutive True values end there (0 where False)."""
    count = np.cumsum(good)
    reset = np.maximum.accumulate(np.where(~good, count, 0))
    return count - reset
