"""Lens flare from the light's point-spread function, moving with the camera.

A light's core plus its glare (a halo and the starburst of the aperture's diffraction spikes) and
its ghosts (aperture-shaped reflections between lens surfaces, centred on the line through the
optical centre and the light, mirrored across it for negative scale) are intensity templates,
placed where the camera sees the light at each sample time and scaled by the flicker. The sensor
model then turns them into events (``sensor.py``): flare is never painted on as events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .parameters import DARK_LEVEL, LightSource, PairParameters
from .scene import Camera


def flicker(light: LightSource, times_s: np.ndarray) -> np.ndarray:
    """A light's relative intensity over time (:func:`flicker_gain`)."""
    return flicker_gain(light.flicker, light.frequency_hz, light.depth, light.phase, times_s)


def flicker_gain(
    waveform: str, frequency_hz: float, depth: float, phase: float, times_s: np.ndarray
) -> np.ndarray:
    """Relative intensity over time: ``1 + depth * wave``, wave in [-1, 1] (never below 2%)."""
    if waveform == "steady":
        return np.ones_like(times_s)
    angle = 2 * math.pi * frequency_hz * times_s + phase
    if waveform == "sine":
        wave = np.sin(angle)
    elif waveform == "square":
        wave = np.where(np.sin(angle) >= 0, 1.0, -1.0)
    else:
        wave = 2 / math.pi * np.arcsin(np.sin(angle))
    return np.maximum(1 + depth * wave, 0.02)


@dataclass
class FlareLayer:
    """A fixed intensity template placed at a moving position, scaled by the flicker."""

    template: np.ndarray  # (h, w), centred
    position: np.ndarray  # (K, 2) x, y in image pixels at each sample time
    gain: np.ndarray  # (K,) flicker


# Template values that stay below this share of the scene's level plus dark current, even at
# the flicker's peak, are cut off: there the flare moves the log intensity by under 5%, below
# any contrast threshold, and mixing would drop nearly all of its events anyway.
TEMPLATE_FLOOR = 0.05


def light_templates(light: LightSource, floor: float) -> tuple[np.ndarray, np.ndarray]:
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
    glare = 0.25 * (light.halo_strength * halo + light.ray_strength * rays) * edge_taper(r, reach)
    peak_gain = 1 + light.depth
    return (_crop(light.peak * core, peak_gain, floor),
            _crop(light.peak * (core + glare), peak_gain, floor))  # fmt: skip


# Share of a template's reach over which its glare fades to zero.
TAPER_SHARE = 0.4


def edge_taper(r: np.ndarray, reach: float) -> np.ndarray:
    """1 out to ``(1 - TAPER_SHARE) * reach`` pixels from the centre, then a cosine-squared fall
    to 0 at ``reach``. A bright light's halo and rays are far above the floor where the template
    ends: cut off there, they made a hard-edged square of flare whose sides fired as straight
    lines while the camera shook (6-13% of the flare events of synth pairs until 2026-12-04,
    nothing a real lens makes)."""
    inner = (1 - TAPER_SHARE) * reach
    fade = np.clip((r - inner) / (reach - inner), 0, 1)
    return np.cos(0.5 * math.pi * fade) ** 2


def _crop(template: np.ndarray, peak_gain: float, floor: float) -> np.ndarray:
    """The smallest centred square holding every value above the floor. The floor is
    subtracted, not cut, so the template falls continuously to 0: a cut would leave a step of the
    floor's height along its contour."""
    template = np.maximum(template - floor / peak_gain, 0).astype(np.float32)
    rows = np.flatnonzero(template.any(1))
    centre = template.shape[0] // 2
    if not len(rows):
        return np.zeros((1, 1), np.float32)
    cols = np.flatnonzero(template.any(0))
    half = int(max(centre - rows[0], rows[-1] - centre, centre - cols[0], cols[-1] - centre))
    return template[centre - half : centre + half + 1, centre - half : centre + half + 1]


def ghost_template(
    ghost: dict[str, float], peak: float, peak_gain: float, floor: float
) -> np.ndarray:
    """A soft disc or ring: an image of the aperture reflected between lens surfaces."""
    radius = ghost["radius_px"]
    reach = int(radius * 1.3) + 2
    coords = np.arange(-reach, reach + 1, dtype=np.float32)
    dx, dy = np.meshgrid(coords, coords)
    r = np.sqrt(dx**2 + dy**2)
    disc = 1 / (1 + np.exp(np.minimum((r - radius) / 1.5, 50)))
    if ghost["ring"]:
        disc = disc * (1 / (1 + np.exp(np.minimum((radius * 0.75 - r) / 1.5, 50))))
    return _crop(peak * ghost["strength"] * disc, peak_gain, floor)


def flare_layers(
    params: PairParameters, camera: Camera, times_s: np.ndarray
) -> tuple[list[FlareLayer], list[FlareLayer]]:
    """(flare layers, light layers): every source with its glare and ghosts, and the sources
    alone, with their positions and flicker over time."""
    centre = np.array([params.width / 2, params.height / 2])
    floor = TEMPLATE_FLOOR * (params.scene_level + DARK_LEVEL)
    flare, light_only = [], []
    for light in params.lights:
        tex = camera.to_texture(np.array(light.x), np.array(light.y), 0.0)
        path = np.array([camera.to_image(float(tex[0]), float(tex[1]), t) for t in times_s])
        gain = flicker(light, times_s)
        core, with_glare = light_templates(light, floor)
        light_only.append(FlareLayer(core, path, gain))
        flare.append(FlareLayer(with_glare, path, gain))
        for ghost in light.ghosts:
            # Ghosts sit on the line through the optical centre and the light, mirrored for
            # negative scale.
            ghost_path = centre + ghost["scale"] * (path - centre)
            template = ghost_template(ghost, light.peak, 1 + light.depth, floor)
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


def render_layers(
    layers: list[FlareLayer], params: PairParameters, count: int
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """(count, h, w) intensity of the layers over the region they ever reach (float16 to halve
    memory: it feeds the emulator through a log and the mixing weights, both tolerant). With no
    layers (a pair without lights): zeros over one pixel."""
    height, width = params.height, params.width
    top, left, bottom, right = height, width, 0, 0
    for layer in layers:
        half = layer.template.shape[0] // 2 + 1
        xs, ys = layer.position[:, 0], layer.position[:, 1]
        top, bottom = min(top, int(ys.min()) - half), max(bottom, int(ys.max()) + half + 1)
        left, right = min(left, int(xs.min()) - half), max(right, int(xs.max()) + half + 1)
    top, left = min(max(top, 0), height - 1), min(max(left, 0), width - 1)
    bottom, right = max(min(bottom, height), top + 1), max(min(right, width), left + 1)
    frames = np.zeros((count, bottom - top, right - left), np.float16)
    canvas = np.zeros(frames.shape[1:], np.float32)
    as_half = torch.from_numpy(frames)  # torch converts to float16 30x faster than numpy
    for k in range(count):
        canvas[:] = 0
        for layer in layers:
            x, y = layer.position[k]
            paste(canvas, layer.template, x - left, y - top, layer.gain[k])
        as_half[k].copy_(torch.from_numpy(canvas))
    return frames, (slice(top, bottom), slice(left, right))
