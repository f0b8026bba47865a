"""``deflare synth``: paired flare / clean event recordings from a physical model.

Each pair is a procedural scene seen by a moving camera, with 1-3 bright light sources whose
lens flare (glare halo, starburst streaks, ghost reflections) is rendered around them:

1. **Intensity over time**, three streams: background ``I_bg`` (a textured scene under camera
   motion), light ``I_light`` (the sources alone) and flare ``I_flare`` (sources plus their
   scattered light). Sources flicker at 80-140 Hz (sine, square or triangle; about 30% steady).
2. **A DVS emulator** turns each stream into events: per-pixel log-intensity threshold crossings
   with per-pixel thresholds, timestamps interpolated between samples (as ESIM), a refractory
   period. The flare stream is sampled at least 20 times per flicker cycle.
3. **Mixing** after E-Deflare (Han et al., arXiv 2512.09016): the input keeps each background
   event with probability ``w_bg = I_bg / (I_bg + I_flare)`` and each flare event with ``1 - w_bg``;
   the target keeps background events with ``I_bg / (I_bg + I_light)`` plus the light events. One
   random draw per background event serves both, so an event kept in the input is kept in the
   target too (independent draws would add label noise).
4. **Sensor noise** (background activity and a few hot pixels) is the same in input and target:
   it is the camera's, not the flare's.

The input file carries ``/events/is_flare`` (1 for events of the flare stream outside the light
sources themselves), which ordinary readers ignore and evaluation uses for event-level scores.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DeflareError
from .events import Events, make_events, time_order
from .io import atomic_output, list_event_files, read_events, write_events
from .progress import Progress, map_jobs, no_progress
from .settings import ReadSettings, SynthSettings, paired_dirs

log = logging.getLogger(__name__)

BACKGROUND_RATE_HZ = 1000  # background frames per second: the camera moves <= 2 px per frame
MARGIN = 220  # texture border (px) so that motion never reveals its edge
DARK_LEVEL = 0.02  # floor of every stream's intensity (a dark pixel still has dark current)


# ----------------------------------------------------------------------------- parameters


@dataclass
class LightSource:
    """One bright source, in image coordinates at t=0; its flare moves with it."""

    x: float
    y: float
    kind: str  # "point" or "area"
    radius_px: float
    aspect: float
    peak: float  # intensity relative to a mid-grey background of 0.5
    flicker: str  # "steady", "sine", "square", "triangle"
    frequency_hz: float
    depth: float  # modulation depth (max - min) / (max + min)
    phase: float
    halo_radius_px: float
    halo_strength: float
    num_rays: int
    ray_angle: float
    ray_length_px: float
    ray_width: float
    ray_strength: float
    ghosts: list[dict[str, float]] = field(default_factory=list)


@dataclass
class PairParameters:
    """Everything random about one pair, kept in the manifest."""

    index: int
    seed: list[int]
    velocity_px_per_ms: tuple[float, float]
    rotation_deg: float
    zoom: float
    contrast: float
    threshold_on: float
    threshold_off: float
    noise_hz_per_pixel: float
    hot_pixels: int
    lights: list[LightSource]


def draw_parameters(settings: SynthSettings, index: int) -> PairParameters:
    """The random scene of pair ``index``: a function of (seed, index) alone."""
    rng = np.random.default_rng([settings.seed, index, 1])
    speed = rng.uniform(0.1, 1.0) * settings.max_speed_px_per_ms
    angle = rng.uniform(0, 2 * math.pi)
    num_lights = int(rng.integers(1, settings.max_lights + 1))
    return PairParameters(
        index=index,
        seed=[settings.seed, index],
        velocity_px_per_ms=(speed * math.cos(angle), speed * math.sin(angle)),
        rotation_deg=float(rng.uniform(-4, 4)),
        zoom=float(rng.uniform(-0.05, 0.05)),
        contrast=float(rng.uniform(0.3, 0.9)),
        threshold_on=float(rng.uniform(*settings.threshold)),
        threshold_off=float(rng.uniform(*settings.threshold)),
        noise_hz_per_pixel=float(rng.uniform(*settings.noise_hz_per_pixel)),
        hot_pixels=int(rng.integers(settings.hot_pixels[0], settings.hot_pixels[1] + 1)),
        lights=[_draw_light(settings, rng) for _ in range(num_lights)],
    )


def _draw_light(settings: SynthSettings, rng: np.random.Generator) -> LightSource:
    height, width = settings.height, settings.width
    steady = rng.random() < settings.steady_fraction
    blades = int(rng.integers(4, 9))
    # An N-blade aperture gives 2N spikes for odd N and N for even N (far-field diffraction).
    rays = 2 * blades if blades % 2 else blades
    scale = min(height, width) / 480
    return LightSource(
        x=float(rng.uniform(0.1, 0.9) * width),
        y=float(rng.uniform(0.1, 0.75) * height),
        kind="point" if rng.random() < 0.6 else "area",
        radius_px=float(rng.uniform(1.5, 6) * scale),
        aspect=float(rng.uniform(0.5, 2.0)),
        peak=float(rng.uniform(5, 30)),
        flicker="steady" if steady else str(rng.choice(["sine", "square", "triangle"])),
        frequency_hz=0.0 if steady else float(rng.uniform(*settings.flicker_hz)),
        depth=0.0 if steady else float(rng.uniform(0.1, 1.0)),
        phase=float(rng.uniform(0, 2 * math.pi)),
        halo_radius_px=float(rng.uniform(6, 30) * scale),
        halo_strength=float(rng.uniform(0.3, 1.5)),
        num_rays=rays,
        ray_angle=float(rng.uniform(0, 2 * math.pi)),
        ray_length_px=float(rng.uniform(30, 160) * scale),
        ray_width=float(rng.uniform(0.6, 2.0)),
        ray_strength=float(rng.uniform(0.1, 0.8)),
        ghosts=[
            {
                "scale": float(rng.choice([-1, 1]) * rng.uniform(0.2, 1.2)),
                "radius_px": float(rng.uniform(6, 45) * scale),
                "strength": float(rng.uniform(0.02, 0.12)),
                "ring": float(rng.random() < 0.4),
            }
            for _ in range(int(rng.integers(0, 5)))
        ],
    )


# ----------------------------------------------------------------------------- scene


def flicker(light: LightSource, times_s: np.ndarray) -> np.ndarray:
    """Relative intensity over time: ``1 + depth * wave``, wave in [-1, 1] (never below 2%)."""
    if light.flicker == "steady":
        return np.ones_like(times_s)
    phase = 2 * math.pi * light.frequency_hz * times_s + light.phase
    if light.flicker == "sine":
        wave = np.sin(phase)
    elif light.flicker == "square":
        wave = np.where(np.sin(phase) >= 0, 1.0, -1.0)
    else:
        wave = 2 / math.pi * np.arcsin(np.sin(phase))
    return np.maximum(1 + light.depth * wave, 0.02)


def make_texture(shape: tuple[int, int], contrast: float, rng: np.random.Generator) -> np.ndarray:
    """A procedural scene: smooth shading, noise at several scales and hard-edged objects."""
    height, width = shape
    image = np.zeros(shape, np.float32)
    for scale, weight in ((80, 0.35), (24, 0.15)):  # smooth shading at two scales
        image += weight * _smooth_noise(shape, scale, rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(8, 22))):  # objects: rectangles, discs, bars
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        size = rng.uniform(10, 70)
        value = rng.uniform(-1.0, 1.0)
        kind = rng.integers(3)
        y0, y1 = int(max(cy - size * 2, 0)), int(min(cy + size * 2, height))
        x0, x1 = int(max(cx - size * 2, 0)), int(min(cx + size * 2, width))
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        if kind == 0:
            mask = (np.abs(dy) < size) & (np.abs(dx) < size * rng.uniform(0.3, 2))
        elif kind == 1:
            mask = dy**2 + dx**2 < size**2
        else:
            angle = rng.uniform(0, math.pi)
            mask = np.abs(dx * math.sin(angle) - dy * math.cos(angle)) < size * 0.15
            mask &= dy**2 + dx**2 < (3 * size) ** 2
        image[y0:y1, x0:x1][mask] = value
    image = (image - image.mean()) / (image.std() + 1e-6)
    # log-normal-ish intensities around 0.5 with the pair's contrast
    return np.clip(0.5 * np.exp(contrast * 0.6 * image), 0.03, 3.0).astype(np.float32)


def _smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise low-passed at ``scale`` pixels (in the Fourier domain), unit variance."""
    noise = rng.standard_normal(shape).astype(np.float32)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    gain = np.exp(-((fy**2 + fx**2) * (scale**2) * 2 * math.pi**2))
    smooth = np.fft.irfft2(np.fft.rfft2(noise) * gain, s=shape).astype(np.float32)
    return smooth / (smooth.std() + 1e-6)


@dataclass
class Camera:
    """Image -> texture coordinates at time t: rotate and zoom about the centre, then shift."""

    settings: SynthSettings
    params: PairParameters

    def to_texture(self, x: np.ndarray, y: np.ndarray, t_s: float) -> tuple[np.ndarray, ...]:
        height, width = self.settings.height, self.settings.width
        fraction = t_s / (self.settings.duration_ms / 1000)
        angle = math.radians(self.params.rotation_deg) * fraction
        zoom = 1 + self.params.zoom * fraction
        vx, vy = self.params.velocity_px_per_ms
        dx, dy = x - width / 2, y - height / 2
        tx = (math.cos(angle) * dx - math.sin(angle) * dy) / zoom + width / 2 + MARGIN
        ty = (math.sin(angle) * dx + math.cos(angle) * dy) / zoom + height / 2 + MARGIN
        return tx + vx * t_s * 1000, ty + vy * t_s * 1000

    def to_image(self, tx: float, ty: float, t_s: float) -> tuple[float, float]:
        height, width = self.settings.height, self.settings.width
        fraction = t_s / (self.settings.duration_ms / 1000)
        angle = math.radians(self.params.rotation_deg) * fraction
        zoom = 1 + self.params.zoom * fraction
        vx, vy = self.params.velocity_px_per_ms
        dx = (tx - vx * t_s * 1000 - width / 2 - MARGIN) * zoom
        dy = (ty - vy * t_s * 1000 - height / 2 - MARGIN) * zoom
        x = math.cos(angle) * dx + math.sin(angle) * dy + width / 2
        y = -math.sin(angle) * dx + math.cos(angle) * dy + height / 2
        return x, y


def render_background(texture: np.ndarray, camera: Camera, times_s: np.ndarray) -> np.ndarray:
    """(K, H, W) background intensity at each time, by bilinear sampling of the texture."""
    height, width = camera.settings.height, camera.settings.width
    frames = np.empty((len(times_s), height, width), np.float32)
    source = torch.from_numpy(texture)[None, None]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tex_h, tex_w = texture.shape
    for k, t_s in enumerate(times_s):
        tx, ty = camera.to_texture(xx, yy, float(t_s))
        grid = np.stack([(tx + 0.5) / tex_w * 2 - 1, (ty + 0.5) / tex_h * 2 - 1], axis=-1)
        sampled = F.grid_sample(
            source, torch.from_numpy(grid.astype(np.float32))[None], align_corners=False
        )
        frames[k] = sampled[0, 0].numpy()
    return frames


# ----------------------------------------------------------------------------- flare


@dataclass
class FlareLayer:
    """A fixed intensity template placed at a moving position, scaled by the flicker."""

    template: np.ndarray  # (h, w), centred
    position: np.ndarray  # (K, 2) x, y in image pixels at each sample time
    gain: np.ndarray  # (K,) flicker


# Template values that stay below this, even at the flicker's peak, are cut off: there the flare
# is far dimmer than any background and mixing would drop nearly all of its events anyway.
TEMPLATE_FLOOR = 0.05


def light_templates(light: LightSource) -> tuple[np.ndarray, np.ndarray]:
    """(core, core plus glare): the source itself, and with its halo and starburst."""
    reach = int(min(max(light.ray_length_px * 1.2, light.halo_radius_px * 5, 12), 240))
    coords = np.arange(-reach, reach + 1, dtype=np.float32)
    dx, dy = np.meshgrid(coords, coords)
    r = np.sqrt(dx**2 + dy**2)
    if light.kind == "point":
        core = np.exp(-(r**2) / (2 * light.radius_px**2))
    else:
        ellipse = (dx / (light.radius_px * light.aspect)) ** 2 + (dy / light.radius_px) ** 2
        core = 1 / (1 + np.exp(np.minimum((ellipse - 1) * 8, 50)))
    halo = (1 + (r / light.halo_radius_px) ** 2) ** -1.5
    theta = np.arctan2(dy, dx)
    rays = np.zeros_like(r)
    for k in range(light.num_rays):
        angle = light.ray_angle + 2 * math.pi * k / light.num_rays
        off_axis = np.angle(np.exp(1j * (theta - angle))) * np.maximum(r, 1)
        rays += np.exp(-(off_axis**2) / (2 * light.ray_width**2))
    rays *= np.exp(-r / light.ray_length_px) / (1 + r / (4 * light.radius_px + 4))
    glare = 0.25 * (light.halo_strength * halo + light.ray_strength * rays)
    peak_gain = 1 + light.depth
    return _crop(light.peak * core, peak_gain), _crop(light.peak * (core + glare), peak_gain)


def _crop(template: np.ndarray, peak_gain: float) -> np.ndarray:
    """The smallest centred square holding every value above the floor (others set to 0)."""
    template = np.where(template * peak_gain >= TEMPLATE_FLOOR, template, 0).astype(np.float32)
    rows = np.flatnonzero(template.any(1))
    centre = template.shape[0] // 2
    if not len(rows):
        return np.zeros((1, 1), np.float32)
    cols = np.flatnonzero(template.any(0))
    half = int(max(centre - rows[0], rows[-1] - centre, centre - cols[0], cols[-1] - centre))
    return template[centre - half : centre + half + 1, centre - half : centre + half + 1]


def ghost_template(ghost: dict[str, float], peak: float, peak_gain: float) -> np.ndarray:
    """A soft disc or ring: an image of the aperture reflected between lens surfaces."""
    radius = ghost["radius_px"]
    reach = int(radius * 1.3) + 2
    coords = np.arange(-reach, reach + 1, dtype=np.float32)
    dx, dy = np.meshgrid(coords, coords)
    r = np.sqrt(dx**2 + dy**2)
    disc = 1 / (1 + np.exp(np.minimum((r - radius) / 1.5, 50)))
    if ghost["ring"]:
        disc = disc * (1 / (1 + np.exp(np.minimum((radius * 0.75 - r) / 1.5, 50))))
    return _crop(peak * ghost["strength"] * disc, peak_gain)


def flare_layers(
    params: PairParameters, camera: Camera, times_s: np.ndarray
) -> tuple[list[FlareLayer], list[FlareLayer]]:
    """(flare layers, light layers): every source with its glare and ghosts, and the sources
    alone, with their positions and flicker over time."""
    settings = camera.settings
    centre = np.array([settings.width / 2, settings.height / 2])
    flare, light_only = [], []
    for light in params.lights:
        tex = camera.to_texture(np.array(light.x), np.array(light.y), 0.0)
        path = np.array([camera.to_image(float(tex[0]), float(tex[1]), t) for t in times_s])
        gain = flicker(light, times_s)
        core, with_glare = light_templates(light)
        light_only.append(FlareLayer(core, path, gain))
        flare.append(FlareLayer(with_glare, path, gain))
        for ghost in light.ghosts:
            # Ghosts sit on the line through the optical centre and the light, mirrored for
            # negative scale.
            ghost_path = centre + ghost["scale"] * (path - centre)
            template = ghost_template(ghost, light.peak, 1 + light.depth)
            flare.append(FlareLayer(template, ghost_path, gain))
    return flare, light_only


def paste(canvas: np.ndarray, template: np.ndarray, x: float, y: float, gain: float) -> None:
    """Add ``gain * template`` centred at sub-pixel (x, y), bilinearly, clipped to the canvas."""
    half_h, half_w = template.shape[0] // 2, template.shape[1] // 2
    ix, iy = math.floor(x), math.floor(y)
    fx, fy = x - ix, y - iy
    for oy, wy in ((0, 1 - fy), (1, fy)):
        for ox, wx in ((0, 1 - fx), (1, fx)):
            weight = gain * wx * wy
            if weight < 1e-6:
                continue
            top, left = iy + oy - half_h, ix + ox - half_w
            y0, x0 = max(top, 0), max(left, 0)
            y1 = min(top + template.shape[0], canvas.shape[0])
            x1 = min(left + template.shape[1], canvas.shape[1])
            if y1 > y0 and x1 > x0:
                canvas[y0:y1, x0:x1] += (
                    weight * template[y0 - top : y1 - top, x0 - left : x1 - left]
                )


# ----------------------------------------------------------------------------- DVS emulator


@dataclass
class Sensor:
    """Per-pixel contrast thresholds (fixed per pixel, as v2e) and the refractory period."""

    on: np.ndarray  # (H, W) log-intensity step of an ON event
    off: np.ndarray
    refractory_us: int

    @staticmethod
    def draw(settings: SynthSettings, params: PairParameters, rng: np.random.Generator) -> Sensor:
        shape = (settings.height, settings.width)
        sigma = settings.threshold_sigma
        on = np.clip(params.threshold_on + sigma * rng.standard_normal(shape), 0.05, None)
        off = np.clip(params.threshold_off + sigma * rng.standard_normal(shape), 0.05, None)
        return Sensor(on.astype(np.float32), off.astype(np.float32), settings.refractory_us)


def emulate(
    frames: np.ndarray,
    times_us: np.ndarray,
    sensor: Sensor,
    region: tuple[slice, slice],
    thin: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, ...]:
    """DVS events of intensity frames (K, h, w) over ``region`` of the sensor.

    Each pixel keeps a reference log intensity; whenever the log intensity moves a threshold
    beyond it, an event fires and the reference moves to the crossed level, so a big change gives
    several events. Timestamps are interpolated linearly between samples (ESIM). An event within
    the refractory period of the pixel's previous event is dropped (its level still counts).

    ``thin(k, pixels)``, when given, says which events of the interval ending at sample k to keep
    (pixels are flat indices into the region): mixing can drop events as they are made.

    Returns (t, x, y, p) in sensor coordinates, not sorted.
    """
    on = sensor.on[region].ravel()
    off = sensor.off[region].ravel()
    width = frames.shape[2]
    reference = _log_intensity(frames[0])
    last_event = np.full(reference.shape, -(10**12), np.int64)
    previous = reference.copy()
    difference = np.empty_like(reference)
    pieces: list[tuple[np.ndarray, ...]] = []
    for k in range(1, len(frames)):
        current = _log_intensity(frames[k])
        np.subtract(current, reference, out=difference)
        active = np.flatnonzero((difference >= on) | (difference <= -off))
        if len(active):
            t, pixel, p = _crossings(active, difference, current, previous, reference, on, off,
                                     times_us[k - 1], times_us[k], last_event,
                                     sensor.refractory_us)  # fmt: skip
            if thin is not None:
                keep = thin(k, pixel)
                t, pixel, p = t[keep], pixel[keep], p[keep]
            pieces.append((t, pixel, p))
        previous = current
    if not pieces:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    t, pixel, p = (np.concatenate(column) for column in zip(*pieces, strict=True))
    y, x = np.divmod(pixel, width)
    return t, x + region[1].start, y + region[0].start, p


def _log_intensity(frame: np.ndarray) -> np.ndarray:
    """Flattened float32 log of a frame above the dark level."""
    values = frame.astype(np.float32).ravel()
    values += DARK_LEVEL
    return np.log(values, out=values)


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


# ----------------------------------------------------------------------------- one pair


@dataclass
class SynthPair:
    """A synthesised pair and what it is made of."""

    flare_input: Events
    is_flare: np.ndarray
    clean_target: Events
    counts: dict[str, int]


def synthesise_pair(
    settings: SynthSettings, index: int, backgrounds: Sequence[Path] = ()
) -> tuple[SynthPair, PairParameters]:
    """Build pair ``index``: deterministic for (seed, index). With ``backgrounds`` (real
    recordings), the background comes from one of them instead of a rendered scene."""
    params = draw_parameters(settings, index)
    rng = np.random.default_rng([settings.seed, index, 2])
    camera = Camera(settings, params)
    sensor = Sensor.draw(settings, params, rng)
    duration_us = round(settings.duration_ms * 1000)

    flare_rate = max(BACKGROUND_RATE_HZ, settings.samples_per_cycle * max(
        [light.frequency_hz for light in params.lights] + [0]))  # fmt: skip
    flare_times = _sample_times(duration_us, flare_rate)
    flare_parts, light_parts = flare_layers(params, camera, flare_times / 1e6)
    flare = _Layer(*_render_layers(flare_parts, settings), flare_times)
    light = _Layer(*_render_layers(light_parts, settings), flare_times)
    light_events = emulate(light.frames, flare_times, sensor, light.region)
    flare_lookup = _FlareLookup(flare, light)

    weights: _IntensityWeights | _CountWeights
    if backgrounds:
        bg_events = real_background(settings, index, backgrounds)
        flare_events = emulate(flare.frames, flare_times, sensor, flare.region)
        weights = _CountWeights.from_events(settings, bg_events, flare_events, light_events)
        fl_t, fl_x, fl_y, _ = flare_events
        flare_kept = rng.random(len(fl_t)) < weights.flare_kept(fl_t, fl_x, fl_y)
    else:
        background_times = _sample_times(duration_us, BACKGROUND_RATE_HZ)
        texture = make_texture(
            (settings.height + 2 * MARGIN, settings.width + 2 * MARGIN), params.contrast, rng
        )
        background = render_background(texture, camera, background_times / 1e6)
        full = (slice(0, settings.height), slice(0, settings.width))
        bg_events = emulate(background, background_times, sensor, full)
        # Mixing keeps a flare event with I_flare / (I_bg + I_flare): decide as events are made,
        # so that the many flare events mixing would drop are never stored or looked up.
        thin = _flare_thinning(flare, background, _nearest(background_times, flare_times), rng)
        flare_events = emulate(flare.frames, flare_times, sensor, flare.region, thin)
        weights = _IntensityWeights(background, background_times, flare_lookup)
        flare_kept = np.ones(len(flare_events[0]), bool)  # drawn already
    pair = _mix(settings, params, bg_events, flare_events, light_events, weights, flare_lookup,
                flare_kept, rng)  # fmt: skip
    return pair, params


def _flare_thinning(
    flare: _Layer, background: np.ndarray, background_index: np.ndarray, rng: np.random.Generator
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
    settings: SynthSettings, index: int, files: Sequence[Path]
) -> tuple[np.ndarray, ...]:
    """Background events of pair ``index`` from a real recording: file ``index mod n``, the
    ``index // n``-th window of the pair's duration (wrapping around within the file)."""
    path = Path(files[index % len(files)])
    duration_ms = settings.duration_ms
    with_size = ReadSettings(sensor_size=(settings.height, settings.width))
    whole = read_events(path, with_size)
    start, end = whole.time_span()
    windows = max(1, int((end - start) // (duration_ms * 1000)))
    first = start + (index // len(files)) % windows * round(duration_ms * 1000)
    window = whole.time_slice(first, first + round(duration_ms * 1000))
    return (window.t - first, window.x.astype(np.int64), window.y.astype(np.int64),
            window.p.astype(np.int64))  # fmt: skip


def _sample_times(duration_us: int, rate_hz: float) -> np.ndarray:
    count = max(2, math.ceil(duration_us * rate_hz / 1e6) + 1)
    return np.linspace(0, duration_us, count).round().astype(np.int64)


def _render_layers(
    layers: list[FlareLayer], settings: SynthSettings
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """(K, h, w) intensity of the layers over the region they ever reach (float16 to halve
    memory: it feeds the emulator through a log and the mixing weights, both tolerant)."""
    height, width = settings.height, settings.width
    top, left, bottom, right = height, width, 0, 0
    for layer in layers:
        half = layer.template.shape[0] // 2 + 1
        xs, ys = layer.position[:, 0], layer.position[:, 1]
        top, bottom = min(top, int(ys.min()) - half), max(bottom, int(ys.max()) + half + 1)
        left, right = min(left, int(xs.min()) - half), max(right, int(xs.max()) + half + 1)
    top, left = min(max(top, 0), height - 1), min(max(left, 0), width - 1)
    bottom, right = max(min(bottom, height), top + 1), max(min(right, width), left + 1)
    count = len(layers[0].gain)
    frames = np.zeros((count, bottom - top, right - left), np.float16)
    canvas = np.zeros(frames.shape[1:], np.float32)
    for k in range(count):
        canvas[:] = 0
        for layer in layers:
            x, y = layer.position[k]
            paste(canvas, layer.template, x - left, y - top, layer.gain[k])
        frames[k] = canvas
    return frames, (slice(top, bottom), slice(left, right))


@dataclass
class _Layer:
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
        nearest = _nearest(self.times, t[inside]).astype(np.int64)
        flat = (nearest * height + ry[inside]) * width + rx[inside]
        values[inside] = self.frames.ravel()[flat]
        return values


@dataclass
class _FlareLookup:
    """Flare and light intensity at event positions and times."""

    flare: _Layer
    light: _Layer

    def at(self, t: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.flare.at(t, x, y), self.light.at(t, x, y)


@dataclass
class _IntensityWeights:
    """E-Deflare's weights from rendered intensities: ``w_bg = I_bg / (I_bg + I_other)``."""

    background: np.ndarray  # (K, H, W)
    background_times: np.ndarray
    flare: _FlareLookup

    def _background(self, t: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.background[_nearest(self.background_times, t), y, x]

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
class _CountWeights:
    """Weights for real backgrounds, whose intensity is unknown: local event counts (per pixel,
    over the pair's duration, summed over a 9x9 neighbourhood) stand in for intensities."""

    background: np.ndarray  # (H, W) counts
    flare: np.ndarray
    light: np.ndarray

    @staticmethod
    def from_events(settings: SynthSettings, *streams: tuple[np.ndarray, ...]) -> _CountWeights:
        shape = (settings.height, settings.width)
        maps = []
        for _t, x, y, _p in streams:
            counts = np.bincount(y * shape[1] + x, minlength=shape[0] * shape[1])
            maps.append(_box_sum(counts.reshape(shape).astype(np.float32), 4))
        return _CountWeights(*maps)

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


def _nearest(times: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the nearest sample; samples are evenly spaced from 0 (``_sample_times``).

    float32 holds microsecond times of a pair exactly (< 2**24), and is twice as fast.
    """
    scale = np.float32((len(times) - 1) / times[-1])
    index = (t.astype(np.float32) * scale + np.float32(0.5)).astype(np.int32)
    return np.minimum(index, len(times) - 1)


def _mix(
    settings: SynthSettings,
    params: PairParameters,
    bg_events: tuple[np.ndarray, ...],
    flare_events: tuple[np.ndarray, ...],
    light_events: tuple[np.ndarray, ...],
    weights: _IntensityWeights | _CountWeights,
    flare_lookup: _FlareLookup,
    flare_kept: np.ndarray,
    rng: np.random.Generator,
) -> SynthPair:
    """E-Deflare's forward model with one draw per background event, plus sensor noise.

    ``flare_kept`` marks the flare events that won their mixing draw (made by the caller: the
    emulator itself draws them for rendered backgrounds, see ``_flare_thinning``).
    """
    bg_t, bg_x, bg_y, _ = bg_events
    w_input, w_target = weights.background_kept(bg_t, bg_x, bg_y)
    draw = rng.random(len(bg_t))
    in_input, in_target = draw < w_input, draw < w_target  # in_input implies in_target

    fl_t, fl_x, fl_y, _ = flare_events
    f_flare, f_light = flare_lookup.at(fl_t, fl_x, fl_y)
    # An event of the flare stream where the source itself dominates is a light event, not flare.
    is_flare = (f_light <= 0.5 * f_flare).astype(np.int8)

    li_t, li_x, li_y, _ = light_events
    light_kept = rng.random(len(li_t)) < weights.light_kept(li_t, li_x, li_y)

    noise = _sensor_noise(settings, params, rng)
    size = (settings.height, settings.width)
    duration_us = round(settings.duration_ms * 1000)
    flare_part = _pick(flare_events, flare_kept, is_flare[flare_kept])
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
        "input_flare_events": int(labels.sum()),
    }
    return SynthPair(flare_input, labels, clean_target, counts)


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


def _sensor_noise(
    settings: SynthSettings, params: PairParameters, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """Background activity (uniform in space and time) and a few hot pixels."""
    height, width = settings.height, settings.width
    duration_us = round(settings.duration_ms * 1000)
    count = rng.poisson(params.noise_hz_per_pixel * height * width * duration_us / 1e6)
    t = rng.integers(0, duration_us, count)
    x, y = rng.integers(0, width, count), rng.integers(0, height, count)
    parts = [(t, x, y)]
    for _ in range(params.hot_pixels):
        rate = rng.uniform(50, 500)
        hot_t = rng.integers(0, duration_us, rng.poisson(rate * duration_us / 1e6))
        parts.append((hot_t, np.full(len(hot_t), rng.integers(width)),
                      np.full(len(hot_t), rng.integers(height))))  # fmt: skip
    t, x, y = (np.concatenate(column) for column in zip(*parts, strict=True))
    p = np.where(rng.random(len(t)) < 0.5, 1, -1)
    return t, x, y, p, 0


# ----------------------------------------------------------------------------- files


def pair_paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    """(input, target) file names in the E-Deflare layout."""
    flare_dir, clean_dir = paired_dirs(out_dir)
    return (
        flare_dir / f"composed_{index:05d}_bg_flare.h5",
        clean_dir / f"composed_{index:05d}_bg_light.h5",
    )


def write_pair(settings: SynthSettings, index: int, backgrounds: Sequence[Path] = ()) -> dict:
    """Synthesise pair ``index`` and write both files; returns its manifest entry."""
    pair, params = synthesise_pair(settings, index, backgrounds)
    flare_path, clean_path = pair_paths(settings.out_dir, index)
    write = settings.write
    attrs = {"deflare_synth_seed": settings.seed, "deflare_synth_index": index}
    write_events(flare_path, pair.flare_input, write, attrs, columns={"is_flare": pair.is_flare})
    write_events(clean_path, pair.clean_target, write, attrs)
    return {
        "index": index,
        "input": str(flare_path.relative_to(settings.out_dir)),
        "target": str(clean_path.relative_to(settings.out_dir)),
        "counts": pair.counts,
        "parameters": asdict(params),
    }


def synthesise(settings: SynthSettings, progress: Progress = no_progress) -> dict:
    """Write ``num_files`` pairs and ``manifest.json`` into ``settings.out_dir``.

    Files are built in parallel over ``workers`` processes; every pair depends on (seed, index)
    alone, so the output does not depend on the number of workers.
    """
    check_out_dir(settings)
    recordings = tuple(background_recordings(settings))
    for folder in paired_dirs(settings.out_dir):
        folder.mkdir(parents=True, exist_ok=True)
    jobs = [(settings, index, recordings) for index in range(settings.num_files)]
    entries = map_jobs(_write_pair_job, jobs, settings.runtime.workers, "synthesising pairs",
                       progress, initializer=_quiet_worker)  # fmt: skip
    manifest = {
        "settings": settings.model_dump(mode="json"),
        "background_files": [str(path) for path in recordings],
        "pairs": entries,
    }
    with atomic_output(settings.out_dir / "manifest.json") as temp_path:
        temp_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def _write_pair_job(job: tuple[SynthSettings, int, tuple[Path, ...]]) -> dict:
    return write_pair(*job)


def _quiet_worker() -> None:
    torch.set_num_threads(1)


def check_out_dir(settings: SynthSettings) -> None:
    """Refuse to mix new pairs into a folder that holds others, unless asked to overwrite."""
    flare_dir, clean_dir = paired_dirs(settings.out_dir)
    existing = [f for d in (flare_dir, clean_dir) if d.is_dir() for f in list_event_files(d)]
    if existing and not settings.overwrite:
        raise DeflareError(
            f"{settings.out_dir}: already holds {len(existing)} event files; choose an empty "
            "folder or pass --overwrite"
        )


def background_recordings(settings: SynthSettings) -> list[Path]:
    """The real recordings to take backgrounds from (``--background-dir``), checked."""
    if settings.background_dir is None:
        return []
    files = list_event_files(settings.background_dir)
    if not files:
        raise DeflareError(f"{settings.background_dir}: no event files for backgrounds")
    return files
