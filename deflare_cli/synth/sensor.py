"""The DVS emulator: intensity frames in, events out (after v2e, ESIM and DVS-Voltmeter).

Each pixel low-passes its log intensity (the photoreceptor; its cutoff falls with light, so dim
pixels respond late and weakly) and keeps a reference level; whenever the filtered level moves a
threshold beyond the reference, an event fires and the reference moves to the crossed level, so
a big change gives several events. Thresholds vary per pixel (fixed mismatch). Timestamps are
interpolated linearly between samples (ESIM). An event within the refractory period of the
pixel's previous event is dropped. Noise the sensor adds on its own (shot noise that grows as
light falls, leak events, hot pixels) comes from :func:`sensor_noise`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..settings import SynthSettings
from .parameters import DARK_LEVEL, PairParameters

# The photoreceptor reaches its full bandwidth (``cutoff_hz``) at this intensity (a bright
# surface in daylight); below, the cutoff falls in proportion to the light (v2e), down to
# ``MIN_BANDWIDTH`` of it.
BRIGHT_LEVEL = 1.0
MIN_BANDWIDTH = 0.05
# log-intensity slack for float32 rounding when telling which pixels can never fire (levels
# are at most about 20 in size, where float32 steps are 2e-6)
FIRE_MARGIN = 1e-3
# the delay of a shot-noise event's return (noise_returns): log-normal, median 4 ms, spread 0.4
# (10th-90th percentile 2.4-6.7 ms, as in the public EVT3 street sample)
NOISE_RETURN_US = 4_000
NOISE_RETURN_SIGMA = 0.4


@dataclass
class Sensor:
    """Per-pixel contrast thresholds (fixed per pixel, as v2e), refractory period, bandwidth."""

    on: np.ndarray  # (H, W) log-intensity step of an ON event
    off: np.ndarray
    refractory_us: int
    cutoff_hz: float

    @staticmethod
    def draw(settings: SynthSettings, params: PairParameters, rng: np.random.Generator) -> Sensor:
        shape = (params.height, params.width)
        sigma = params.threshold_sigma
        on = np.clip(params.threshold_on + sigma * rng.standard_normal(shape), 0.05, None)
        off = np.clip(params.threshold_off + sigma * rng.standard_normal(shape), 0.05, None)
        return Sensor(on.astype(np.float32), off.astype(np.float32), params.refractory_us,
                      settings.cutoff_hz)  # fmt: skip


class Photoreceptor:
    """First-order low-pass of log intensity whose cutoff is proportional to the light.

    Discretised by implicit Euler (``alpha = x / (1 + x)``, ``x = 2 pi f_c dt``): stable at any
    step, and cheaper than the exact ``1 - exp(-x)`` in the emulator's innermost loop."""

    def __init__(self, frame: np.ndarray, cutoff_hz: float) -> None:
        self.cutoff_hz = cutoff_hz
        self.level = log_intensity(frame)
        self.previous = self.level.copy()  # the level before the last step
        # buffers reused at every step: fresh megabyte arrays per sample cost page faults
        self._light = np.empty_like(self.level)
        self._gain = np.empty_like(self.level)
        self._scratch = np.empty_like(self.level)

    def step(self, frame: np.ndarray, dt_s: float) -> np.ndarray:
        """The filtered log intensity after ``dt_s`` seconds at ``frame``'s light (flat); the
        one before stays in ``previous``. Both are the photoreceptor's own buffers, which the
        next step overwrites: copy to keep them."""
        light = self._light
        _to_float32(frame, out=light)
        light += np.float32(DARK_LEVEL)
        full = np.float32(2 * math.pi * self.cutoff_hz * dt_s)
        gain, scratch = self._gain, self._scratch
        np.multiply(light, full / BRIGHT_LEVEL, out=gain)
        np.clip(gain, full * MIN_BANDWIDTH, full, out=gain)
        np.add(gain, 1, out=scratch)
        np.divide(gain, scratch, out=gain)
        target = _log_in_place(light)
        target -= self.level
        target *= gain
        np.add(self.level, target, out=self.previous)  # the new level, in the older buffer
        self.level, self.previous = self.previous, self.level
        return self.level


def emulate(
    frames: np.ndarray,
    times_us: np.ndarray,
    sensor: Sensor,
    region: tuple[slice, slice],
    thin: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, ...]:
    """DVS events of intensity frames (K, h, w) over ``region`` of the sensor.

    ``thin(k, pixels)``, when given, says which events of the interval ending at sample k to keep
    (pixels are flat indices into the region): mixing can drop events as they are made.

    Only the pixels that can fire are run (:func:`can_fire`): the same events, several times
    cheaper, since most of a night background and of a flare layer's box never changes by a
    threshold.

    Returns (t, x, y, p) in sensor coordinates, not sorted.
    """
    width = frames.shape[2]
    frames = frames.reshape(len(frames), -1)
    on = sensor.on[region].ravel()
    off = sensor.off[region].ravel()
    lit = np.flatnonzero(can_fire(frames, np.minimum(on, off)))
    if len(lit) == frames.shape[1]:
        lit = None
    else:
        # take, not frames[:, lit]: fancy indexing there lays the copy out pixel-major, and
        # every step then gathers its frame across strides (40% of a lit 1280x720 pair)
        frames, on, off = np.take(frames, lit, axis=1), on[lit], off[lit]
    below = -off  # the level an OFF event needs, relative to the reference
    photoreceptor = Photoreceptor(frames[0], sensor.cutoff_hz)
    reference = photoreceptor.level.copy()
    last_event = np.full(reference.shape, -(10**12), np.int64)
    difference = np.empty_like(reference)
    fired, fired_off = np.empty(reference.shape, bool), np.empty(reference.shape, bool)
    pieces: list[tuple[np.ndarray, ...]] = []
    for k in range(1, len(frames)):
        current = photoreceptor.step(frames[k], (times_us[k] - times_us[k - 1]) / 1e6)
        previous = photoreceptor.previous
        np.subtract(current, reference, out=difference)
        np.greater_equal(difference, on, out=fired)
        np.less_equal(difference, below, out=fired_off)
        active = np.flatnonzero(np.logical_or(fired, fired_off, out=fired))
        if len(active):
            t, pixel, p = _crossings(active, difference, current, previous, reference, on, off,
                                     times_us[k - 1], times_us[k], last_event,
                                     sensor.refractory_us)  # fmt: skip
            if lit is not None:
                pixel = lit[pixel]
            if thin is not None:
                keep = thin(k, pixel)
                t, pixel, p = t[keep], pixel[keep], p[keep]
            pieces.append((t, pixel, p))
    if not pieces:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    t, pixel, p = (np.concatenate(column) for column in zip(*pieces, strict=True))
    y, x = np.divmod(pixel, width)
    return t, x + region[1].start, y + region[0].start, p


def can_fire(frames: np.ndarray, least_threshold: np.ndarray) -> np.ndarray:
    """(N,) whether each pixel of (K, N) frames can ever fire: whether its log intensity spans
    at least its smaller threshold over the samples.

    The photoreceptor's level is a running mix of the previous level and the new log
    intensity, and starts at the first one, so it never leaves their range; the reference
    starts at the first level and moves only when an event fires. A pixel whose range is
    smaller than both thresholds therefore never fires (a margin covers float rounding).
    Minimum and maximum go frame by frame through torch: no (K, N) temporary, and float16
    flare frames are compared without numpy's slow conversion.
    """
    low = torch.from_numpy(np.ascontiguousarray(frames[0])).clone()
    high = low.clone()
    for k in range(1, len(frames)):
        frame = torch.from_numpy(np.ascontiguousarray(frames[k]))
        torch.minimum(low, frame, out=low)
        torch.maximum(high, frame, out=high)
    span = log_intensity(high.numpy()) - log_intensity(low.numpy())
    return span >= least_threshold - FIRE_MARGIN


def log_intensity(frame: np.ndarray) -> np.ndarray:
    """Flattened float32 log of a frame plus the dark current."""
    values = _to_float32(frame, out=np.empty(frame.size, np.float32))
    values += DARK_LEVEL
    return _log_in_place(values)


def _to_float32(frame: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``frame`` flattened into the float32 buffer ``out``, through torch: flare frames are
    float16, and numpy converts float16 about 5x slower than torch's vectorised copy."""
    torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(frame).reshape(-1)))
    return out


def _log_in_place(values: np.ndarray) -> np.ndarray:
    """``np.log(values, out=values)`` for float32, through torch: numpy has no vectorised
    float32 log without AVX512F (9.9 ms for a 1280x720 frame on an AVX2 EPYC, torch 2.0 ms),
    and the emulator takes a log of every pixel at every sample."""
    torch.log(torch.from_numpy(values), out=torch.from_numpy(values))
    return values


def _crossings(
    active: np.ndarray,
    difference: np.ndarray,
    current: np.ndarray,
    previous: np.ndarray,
    reference: np.ndarray,
    on: np.ndarray,
    off: np.ndarray,
    t_start: int,
    t_end: int,
    last_event: np.ndarray,
    refractory_us: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events of the pixels that crossed a threshold between two samples; updates the state."""
    rising = difference[active] > 0
    step = np.where(rising, on[active], -off[active])
    count = np.floor(difference[active] / step).astype(np.int64)
    pixel = np.repeat(active, count)
    index = np.arange(len(pixel)) - np.repeat(np.cumsum(count) - count, count) + 1
    level = reference[pixel] + index * np.repeat(step, count)
    start, end = previous[pixel], current[pixel]
    fraction = np.clip((level - start) / np.where(end != start, end - start, 1), 0, 1)
    t = t_start + np.round(fraction * (t_end - t_start)).astype(np.int64)
    p = np.repeat(np.where(rising, 1, -1), count).astype(np.int8)
    reference[active] += count * step
    keep = _outside_refractory(pixel, t, last_event, refractory_us)
    return t[keep], pixel[keep], p[keep]


def _outside_refractory(
    pixel: np.ndarray, t: np.ndarray, last_event: np.ndarray, refractory_us: int
) -> np.ndarray:
    """Keep an event only if its pixel's previous kept event is older than the refractory time.

    The events of one pixel between two samples come in time order (the crossed levels are
    monotone) and consecutively, so the rule runs over the j-th event of every pixel at once.
    """
    keep = np.ones(len(pixel), bool)
    if not len(pixel):
        return keep
    first = np.r_[True, pixel[1:] != pixel[:-1]]
    rank = np.arange(len(pixel)) - np.maximum.accumulate(np.where(first, np.arange(len(pixel)), 0))
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.cumsum(np.bincount(rank))
    for lo, hi in zip(np.r_[0, bounds[:-1]], bounds, strict=True):
        at_rank = by_rank[lo:hi]
        ok = t[at_rank] - last_event[pixel[at_rank]] >= refractory_us
        keep[at_rank[~ok]] = False
        last_event[pixel[at_rank[ok]]] = t[at_rank[ok]]
    return keep


def sensor_noise(params: PairParameters, duration_us: int, rng: np.random.Generator) -> tuple:
    """(t, x, y, p) of the events the sensor makes without any change of light: shot noise (both
    polarities, uniform in space and time; a share ``params.noise_pair_share`` of it followed by
    its return, :func:`noise_returns`), leak events (ON) and a few hot pixels."""
    height, width = params.height, params.width
    parts = []
    for rate_hz, on_share in ((params.shot_noise_hz, 0.5), (params.leak_hz, 1.0)):
        count = rng.poisson(rate_hz * height * width * duration_us / 1e6)
        t = rng.integers(0, duration_us, count)
        x, y = rng.integers(0, width, count), rng.integers(0, height, count)
        parts.append((t, x, y, np.where(rng.random(count) < on_share, 1, -1)))
    if params.noise_pair_share > 0:
        parts.append(noise_returns(parts[0], params.noise_pair_share, duration_us, rng))
    for _ in range(params.hot_pixels):
        rate = rng.uniform(50, 500)
        hot_t = rng.integers(0, duration_us, rng.poisson(rate * duration_us / 1e6))
        parts.append((hot_t, np.full(len(hot_t), rng.integers(width)),
                      np.full(len(hot_t), rng.integers(height)),
                      np.where(rng.random(len(hot_t)) < 0.5, 1, -1)))  # fmt: skip
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def noise_returns(noise: tuple, share: float, duration_us: int, rng: np.random.Generator) -> tuple:
    """(t, x, y, p): the opposite event that follows a share of the shot-noise events ``noise``
    at their pixel, ``NOISE_RETURN_US`` later (log-normal), those within ``duration_us``.

    A photon-noise excursion that crosses a threshold moves the pixel's reference to its peak;
    as the excursion relaxes, the level falls back about a threshold below that reference and
    often crosses the opposite one. Prophesee recordings show this as isolated pairs of
    opposite events a few milliseconds apart: in the public EVT3 street sample (Expelliarmus),
    about one isolated noise event in ten has its return, 2.5-6.6 ms later (10th-90th
    percentile, median 4.2 ms); DAVIS and DVXplorer recordings show few such pairs. Without
    them, synthetic scenes hardly ever fire opposite events at one pixel within 20 ms, while
    synthetic flare often does, and a model learns that this alone means flare.
    """
    t, x, y, p = noise
    chosen = rng.random(len(t)) < share
    spread = np.exp(NOISE_RETURN_SIGMA * rng.standard_normal(int(chosen.sum())))
    returned = t[chosen] + np.round(NOISE_RETURN_US * spread).astype(np.int64)
    inside = returned < duration_us
    return returned[inside], x[chosen][inside], y[chosen][inside], -p[chosen][inside]
