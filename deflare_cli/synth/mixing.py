"""Mixing flare into a scene, after E-Deflare (Han et al., arXiv 2512.09016).

With ``w_bg = I_bg / (I_bg + I_flare)``, the input keeps each background event with probability
``w_bg`` and each flare event with ``1 - w_bg``: flare suppresses background events where it is
bright. The target keeps background events with ``I_bg / (I_bg + I_light)`` plus the light
events. One random draw per background event serves both, so an event kept in the input is kept
in the target too (independent draws would add label noise). Sensor noise is the same in input
and target: it is the camera's, not the flare's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..events import Events, make_events, time_order
from ..io import read_events
from ..settings import ReadSettings
from .parameters import PairParameters
from .sensor import sensor_noise

# what each input event comes from (the rest, 0: the scene and the sensor's noise)
FLARE, LIGHT = 1, 2


@dataclass
class SynthPair:
    """A synthesised pair and what it is made of.

    Per input event: ``is_flare`` (flare outside the light sources) and ``is_light`` (the light
    sources' own events, which the target keeps); events with neither are the scene's and noise.
    """

    flare_input: Events
    is_flare: np.ndarray
    is_light: np.ndarray
    clean_target: Events
    counts: dict[str, int]


def flare_thinning(
    flare: Layer, background: np.ndarray, background_index: np.ndarray, rng: np.random.Generator
) -> Callable[[int, np.ndarray], np.ndarray]:
    """The mixing draw for flare events of one sample interval (see :func:`emulate`)."""
    top, left = flare.region[0].start, flare.region[1].start
    width = flare.frames.shape[2]

    def keep(k: int, pixel: np.ndarray) -> np.ndarray:
        ry, rx = np.divmod(pixel, width)
        i_flare = flare.frames[k].ravel()[pixel].astype(np.float32)
        i_bg = background[background_index[k], ry + top, rx + left]
        return rng.random(len(pixel)) < i_flare / (i_bg + i_flare)

    return keep


def real_background(
    params: PairParameters, duration_ms: float, files: Sequence[Path]
) -> tuple[np.ndarray, ...]:
    """Background events of pair ``index`` from a real recording: file ``index mod n``, the
    ``index // n``-th window of the pair's duration (wrapping around within the file)."""
    index = params.index
    path = Path(files[index % len(files)])
    with_size = ReadSettings(sensor_size=(params.height, params.width))
    whole = read_events(path, with_size)
    start, end = whole.time_span()
    windows = max(1, int((end - start) // (duration_ms * 1000)))
    first = start + (index // len(files)) % windows * round(duration_ms * 1000)
    window = whole.time_slice(first, first + round(duration_ms * 1000))
    return (window.t - first, window.x.astype(np.int64), window.y.astype(np.int64),
            window.p.astype(np.int64))  # fmt: skip


@dataclass
class Layer:
    """Rendered intensity frames of some layers over a region of the sensor."""

    frames: np.ndarray  # (K, h, w)
    region: tuple[slice, slice]
    times: np.ndarray

    def at(self, t: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Intensity at event positions and times (nearest sample; 0 outside the region)."""
        _, height, width = self.frames.shape
        ry, rx = y - self.region[0].start, x - self.region[1].start
        inside = np.flatnonzero((ry >= 0) & (ry < height) & (rx >= 0) & (rx < width))
        values = np.zeros(len(t), np.float32)
        sample = nearest(self.times, t[inside]).astype(np.int64)
        flat = (sample * height + ry[inside]) * width + rx[inside]
        values[inside] = self.frames.ravel()[flat]
        return values


@dataclass
class FlareLookup:
    """Flare and light intensity at event positions and times."""

    flare: Layer
    light: Layer

    def at(self, t: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.flare.at(t, x, y), self.light.at(t, x, y)


@dataclass
class IntensityWeights:
    """E-Deflare's weights from rendered intensities: ``w_bg = I_bg / (I_bg + I_other)``."""

    background: np.ndarray  # (K, H, W)
    background_times: np.ndarray
    flare: FlareLookup

    def _background(self, t: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.background[nearest(self.background_times, t), y, x]

    def background_kept(self, t, x, y) -> tuple[np.ndarray, np.ndarray]:
        """P(kept in input), P(kept in target) of background events."""
        i_bg = self._background(t, x, y)
        i_flare, i_light = self.flare.at(t, x, y)
        return i_bg / (i_bg + i_flare), i_bg / (i_bg + i_light)

    def light_kept(self, t, x, y) -> np.ndarray:
        i_bg = self._background(t, x, y)
        i_light = self.flare.light.at(t, x, y)
        return i_light / (i_bg + i_light)


@dataclass
class CountWeights:
    """Weights for real backgrounds, whose intensity is unknown: local event counts (per pixel,
    over the pair's duration, summed over a 9x9 neighbourhood) stand in for intensities."""

    background: np.ndarray  # (H, W) counts
    flare: np.ndarray
    light: np.ndarray

    @staticmethod
    def from_events(params: PairParameters, *streams: tuple[np.ndarray, ...]) -> CountWeights:
        shape = (params.height, params.width)
        maps = []
        for _t, x, y, _p in streams:
            counts = np.bincount(y * shape[1] + x, minlength=shape[0] * shape[1])
            maps.append(_box_sum(counts.reshape(shape).astype(np.float32), 4))
        return CountWeights(*maps)

    def background_kept(self, t, x, y) -> tuple[np.ndarray, np.ndarray]:
        c_bg, c_flare, c_light = self.background[y, x], self.flare[y, x], self.light[y, x]
        in_input = c_bg / np.maximum(c_bg + c_flare, 1e-9)
        # counts need not nest like intensities do: keep "kept in input => kept in target"
        return in_input, np.maximum(in_input, c_bg / np.maximum(c_bg + c_light, 1e-9))

    def flare_kept(self, t, x, y) -> np.ndarray:
        c_bg, c_flare = self.background[y, x], self.flare[y, x]
        return c_flare / np.maximum(c_bg + c_flare, 1e-9)

    def light_kept(self, t, x, y) -> np.ndarray:
        c_bg, c_light = self.background[y, x], self.light[y, x]
        return c_light / np.maximum(c_bg + c_light, 1e-9)


def _box_sum(image: np.ndarray, radius: int) -> np.ndarray:
    """Sum over a (2r+1)^2 neighbourhood (zero outside), via cumulative sums."""
    padded = np.pad(image, radius + 1)
    summed = padded.cumsum(0).cumsum(1)
    size = 2 * radius + 1
    return (summed[size:, size:] - summed[:-size, size:] - summed[size:, :-size]
            + summed[:-size, :-size])  # fmt: skip


def nearest(times: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the nearest sample; samples are evenly spaced from 0 (``_sample_times``).

    float32 holds microsecond times of a pair exactly (< 2**24), and is twice as fast.
    """
    scale = np.float32((len(times) - 1) / times[-1])
    index = (t.astype(np.float32) * scale + np.float32(0.5)).astype(np.int32)
    return np.minimum(index, len(times) - 1)


def mix(
    params: PairParameters,
    duration_us: int,
    bg_events: tuple[np.ndarray, ...],
    flare_events: tuple[np.ndarray, ...],
    light_events: tuple[np.ndarray, ...],
    weights: IntensityWeights | CountWeights,
    flare_lookup: FlareLookup,
    flare_kept: np.ndarray,
    rng: np.random.Generator,
) -> SynthPair:
    """E-Deflare's forward model with one draw per background event, plus sensor noise.

    ``flare_kept`` marks the flare events that won their mixing draw (made by the caller: the
    emulator itself draws them for rendered backgrounds, see :func:`flare_thinning`).
    """
    bg_t, bg_x, bg_y, _ = bg_events
    w_input, w_target = weights.background_kept(bg_t, bg_x, bg_y)
    draw = rng.random(len(bg_t))
    in_input, in_target = draw < w_input, draw < w_target  # in_input implies in_target

    fl_t, fl_x, fl_y, _ = flare_events
    f_flare, f_light = flare_lookup.at(fl_t, fl_x, fl_y)
    # An event of the flare stream where the source itself dominates is a light event, not flare.
    source = np.where(f_light <= 0.5 * f_flare, FLARE, LIGHT).astype(np.int8)

    li_t, li_x, li_y, _ = light_events
    light_kept = rng.random(len(li_t)) < weights.light_kept(li_t, li_x, li_y)

    noise = (*sensor_noise(params, duration_us, rng), 0)
    size = (params.height, params.width)
    flare_part = _pick(flare_events, flare_kept, source[flare_kept])
    flare_input, labels = _stream(
        size, duration_us, _pick(bg_events, in_input, 0), flare_part, noise
    )
    clean_target, _ = _stream(
        size, duration_us, _pick(bg_events, in_target, 0), _pick(light_events, light_kept, 0), noise
    )
    counts = {
        "background_events": int(len(bg_t)),
        "flare_events_kept": int(flare_kept.sum()),
        "light_stream_events": int(len(li_t)),
        "noise_events": int(len(noise[0])),
        "input_events": len(flare_input),
        "target_events": len(clean_target),
        "input_flare_events": int((labels == FLARE).sum()),
        "input_light_events": int((labels == LIGHT).sum()),
    }
    return SynthPair(flare_input, labels == FLARE, labels == LIGHT, clean_target, counts)


def _pick(stream: tuple[np.ndarray, ...], mask: np.ndarray, label: object) -> tuple:
    """(t, x, y, p, label) of the masked events of a stream."""
    return (*(column[mask] for column in stream), label)


def _stream(size: tuple[int, int], duration_us: int, *parts: tuple) -> tuple[Events, np.ndarray]:
    """Merge (t, x, y, p, label) parts into one time-sorted stream and its labels."""
    t = np.concatenate([part[0] for part in parts])
    x = np.concatenate([part[1] for part in parts])
    y = np.concatenate([part[2] for part in parts])
    p = np.concatenate([part[3] for part in parts])
    labels = np.concatenate(
        [np.broadcast_to(np.asarray(part[4], np.int8), len(part[0])) for part in parts]
    )
    # The last sample is at t = duration: a crossing there belongs to the next window.
    inside = t < duration_us
    t, x, y, p, labels = t[inside], x[inside], y[inside], p[inside], labels[inside]
    order = time_order(t)
    events = make_events(t[order], x[order], y[order], p[order] > 0, size, span_us=(0, duration_us))
    return events, labels[order]
