"""The background scene and the camera that looks at it.

Surfaces are a dead-leaves texture: occluding shapes with power-law sizes and constant
reflectance, the usual synthetic stand-in for natural images when training restoration networks
(Lee, Mumford & Huang 2001; Achddou et al. 2021). Its sharp edges make background events lie on
thin moving edges, as real sensors show, instead of broad blobs of one polarity. A smooth
illumination field (light pools, vignetting) multiplies it. The camera drifts and shakes
(issue 12: drift plus 2-15 Hz vibration of 0.5-5 px), and a few objects move on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter, map_coordinates

from .parameters import MovingObject, PairParameters

LEAF_EXPONENT = 3.0  # p(r) ~ r^-3: scale-invariant sizes, as natural images have
LEAF_MIN_PX = 8.0  # the smallest leaf of a scene at 640x480 (times the sensor's scale)
OPTICS_BLUR_PX = 0.7  # the lens's own blur: edges one or two pixels wide
TEXTURED_LEAVES = 0.5  # share of a textured scene's leaves that carry its fine texture


def make_texture(
    shape: tuple[int, int], params: PairParameters, rng: np.random.Generator
) -> np.ndarray:
    """(h, w) scene intensity: dead leaves times a smooth illumination field, mean about
    ``params.scene_level``."""
    reflectance, leaves = dead_leaves(
        shape, params.contrast, params.clutter, params.scale, rng, with_leaves=True
    )
    if params.texture_contrast > 0:
        reflectance *= surface_texture(leaves, params)
    illumination = np.exp(0.5 * params.contrast * smooth_noise(shape, 120 * params.scale, rng))
    image = gaussian_filter(reflectance * illumination, OPTICS_BLUR_PX)
    return (image * (params.scene_level / image.mean())).astype(np.float32)


def surface_texture(leaves: np.ndarray, params: PairParameters) -> np.ndarray:
    """(h, w) fine texture of the scene's surfaces, mean about 1, from a map of which leaf
    covers each pixel (-1: the plain ground): a share of the leaves (``TEXTURED_LEAVES``)
    carries log-normal noise of spread ``params.texture_contrast`` and grain
    ``params.texture_grain_px``; the ground and the other leaves stay flat, as walls, roads and
    sky do. Its own random stream, so that the rest of the scene is the one the pair would have
    without it."""
    rng = np.random.default_rng([*params.seed, 6])
    textured = np.append(rng.random(int(leaves.max()) + 1) < TEXTURED_LEAVES, False)
    grain = smooth_noise(leaves.shape, params.texture_grain_px, rng)
    texture = np.exp(params.texture_contrast * grain - params.texture_contrast**2 / 2)
    return np.where(textured[leaves], texture, np.float32(1))  # index -1: the ground, flat


def dead_leaves(
    shape: tuple[int, int],
    contrast: float,
    clutter: float,
    scale: float,
    rng: np.random.Generator,
    with_leaves: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Occluding discs and rectangles, radii drawn from r^-3 between 8 px and half the
    canvas, painted back to front on a plain ground. There are ``clutter * H * W / (pi r_min
    r_max)`` of them: at 640x480 they cover about 3% of the view at clutter 0.3 (bare ground, as
    a night road), 19% at 1 and 46% at 3 (measured), so large plain areas remain, as in real
    scenes, where the classic model covers everything."""
    height, width = shape
    r_min, r_max = LEAF_MIN_PX * scale, min(shape) / 2
    count = int(min(clutter * height * width / (math.pi * r_min * r_max), 60_000))
    # Inverse-CDF sampling of p(r) ~ r^-(a+1) on [r_min, r_max].
    a = LEAF_EXPONENT - 1
    u = rng.random(count)
    radii = (r_min**-a - u * (r_min**-a - r_max**-a)) ** (-1 / a)
    values = np.exp(contrast * rng.standard_normal(count)).astype(np.float32)
    centres_y, centres_x = rng.uniform(0, height, count), rng.uniform(0, width, count)
    ground = np.float32(np.exp(contrast * rng.standard_normal()))
    discs = rng.random(count) < 0.6
    aspects = np.exp(rng.uniform(-0.7, 0.7, count))
    leaves = np.full(shape, -1, np.int32)  # which leaf covers each pixel; -1: the ground
    for k in np.argsort(-radii, kind="stable"):  # large leaves first, small ones on top
        _paint_leaf(leaves, centres_y[k], centres_x[k], radii[k], aspects[k], discs[k], k)
    image = np.append(values, ground)[leaves]  # index -1: the ground
    return (image, leaves) if with_leaves else image


def _paint_leaf(
    image: np.ndarray, cy: float, cx: float, radius: float, aspect: float, disc: bool, value: float
) -> None:
    """Paint one leaf (an ellipse, or its bounding rectangle) of constant value in place."""
    ry, rx = radius / math.sqrt(aspect), radius * math.sqrt(aspect)
    y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, image.shape[0])
    x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, image.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    if not disc:
        image[y0:y1, x0:x1] = value
        return
    dy = (np.arange(y0, y1, dtype=np.float32)[:, None] - cy) / ry
    dx = (np.arange(x0, x1, dtype=np.float32)[None, :] - cx) / rx
    patch = image[y0:y1, x0:x1]
    patch[dy**2 + dx**2 <= 1] = value


def smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise low-passed at ``scale`` pixels (in the Fourier domain), unit variance."""
    noise = rng.standard_normal(shape).astype(np.float32)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    gain = np.exp(-((fy**2 + fx**2) * (scale**2) * 2 * math.pi**2))
    smooth = np.fft.irfft2(np.fft.rfft2(noise) * gain, s=shape).astype(np.float32)
    return smooth / (smooth.std() + 1e-6)


@dataclass
class Camera:
    """Image -> texture coordinates at time t: rotate and zoom about the centre, then shift by
    the drift and the shake. The texture has ``margin`` pixels around the image's view."""

    params: PairParameters
    duration_s: float

    @property
    def margin(self) -> int:
        """Texture border (pixels) that the motion can never look past."""
        p = self.params
        reach = math.hypot(*p.drift_px_per_ms) * self.duration_s * 1000
        reach += sum(sum(v.amplitude_px) for v in p.vibration)
        half_diagonal = math.hypot(p.height, p.width) / 2
        reach += (abs(math.radians(p.rotation_deg)) + abs(p.zoom)) * half_diagonal
        return int(math.ceil(reach)) + 8

    def shift(self, t_s: float) -> tuple[float, float]:
        """Texture shift (pixels) at time t: drift plus shake."""
        vx, vy = self.params.drift_px_per_ms
        shake = [
            sum(a * math.sin(2 * math.pi * f * t_s + phase)
                for a, f, phase in zip(v.amplitude_px, v.frequency_hz, v.phase, strict=True))
            for v in self.params.vibration
        ]  # fmt: skip
        return vx * t_s * 1000 + shake[0], vy * t_s * 1000 + shake[1]

    def _pose(self, t_s: float) -> tuple[float, float]:
        fraction = t_s / self.duration_s
        return math.radians(self.params.rotation_deg) * fraction, 1 + self.params.zoom * fraction

    def texture_affine(self, t_s: float) -> np.ndarray:
        """(2, 3) matrix A with (tx, ty) = A @ (x, y, 1): image pixel -> texture pixel at t."""
        height, width, margin = self.params.height, self.params.width, self.margin
        angle, zoom = self._pose(t_s)
        sx, sy = self.shift(t_s)
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        return np.array([
            [cos, -sin, (-cos * width + sin * height) / 2 + width / 2 + margin + sx],
            [sin, cos, (-sin * width - cos * height) / 2 + height / 2 + margin + sy],
        ])  # fmt: skip

    def to_texture(self, x: np.ndarray, y: np.ndarray, t_s: float) -> tuple[np.ndarray, ...]:
        affine = self.texture_affine(t_s)
        return tuple(row[0] * x + row[1] * y + row[2] for row in affine)

    def to_image(self, tx: float, ty: float, t_s: float) -> tuple[float, float]:
        height, width, margin = self.params.height, self.params.width, self.margin
        angle, zoom = self._pose(t_s)
        sx, sy = self.shift(t_s)
        dx = (tx - sx - width / 2 - margin) * zoom
        dy = (ty - sy - height / 2 - margin) * zoom
        x = math.cos(angle) * dx + math.sin(angle) * dy + width / 2
        y = -math.sin(angle) * dx + math.cos(angle) * dy + height / 2
        return x, y

    def max_speed_px_per_s(self) -> float:
        """An upper bound of how fast the image moves, for the sampling rate."""
        p = self.params
        speed = math.hypot(*p.drift_px_per_ms) * 1000
        speed += sum(2 * math.pi * a * f for v in p.vibration
                     for a, f in zip(v.amplitude_px, v.frequency_hz, strict=True))  # fmt: skip
        half_diagonal = math.hypot(p.height, p.width) / 2
        speed += (abs(math.radians(p.rotation_deg)) + abs(p.zoom)) * half_diagonal / self.duration_s
        return speed + max((math.hypot(*o.velocity_px_per_ms) * 1000 for o in p.objects), default=0)


def render_background(
    texture: np.ndarray, camera: Camera, times_s: np.ndarray, level: float
) -> np.ndarray:
    """(K, H, W) background intensity at each time: the texture seen through the moving camera
    (bilinear sampling), with the moving objects on top."""
    height, width = camera.params.height, camera.params.width
    frames = np.empty((len(times_s), height, width), np.float32)
    source = torch.from_numpy(texture)[None, None]
    grid = torch.empty((1, height, width, 2))
    # grid_sample's coordinates of the image's pixel centres (align_corners=False)
    across = (2 * torch.arange(width, dtype=torch.float32) + 1) / width - 1
    down = (2 * torch.arange(height, dtype=torch.float32) + 1) / height - 1
    for k, t_s in enumerate(times_s):
        theta = _normalised(camera.texture_affine(float(t_s)), camera, texture.shape)
        for axis, (a, b, c) in enumerate(theta.astype(np.float32).tolist()):
            # F.affine_grid's (H*W, 3) x (3, 2) product, as an outer sum: 10x faster
            torch.add((down * b + c)[:, None], across * a, out=grid[0, :, :, axis])
        frames[k] = F.grid_sample(source, grid, align_corners=False)[0, 0].numpy()
        for moving in camera.params.objects:
            draw_object(frames[k], moving, float(t_s), level)
    return frames


def interpolate_frames(
    frames: np.ndarray, frame_times: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """(len(times), H, W) frames at ``times``: linear between the two ``frames`` around each, the
    first or last frame outside ``frame_times``. A lit scene's flicker needs more samples than its
    motion (and a warm-up before it): rendering them all cost 70% of such a pair."""
    out = np.empty((len(times), *frames.shape[1:]), np.float32)
    after = np.clip(np.searchsorted(frame_times, times), 1, len(frame_times) - 1)
    span = (frame_times[after] - frame_times[after - 1]).astype(np.float64)
    weights = np.clip((times - frame_times[after - 1]) / span, 0, 1).astype(np.float32)
    source, target = torch.from_numpy(frames), torch.from_numpy(out)
    for k, (index, weight) in enumerate(zip(after.tolist(), weights.tolist(), strict=True)):
        torch.lerp(source[index - 1], source[index], weight, out=target[k])
    return out


def _normalised(affine: np.ndarray, camera: Camera, texture_shape: tuple[int, int]) -> np.ndarray:
    """The pixel affine map in grid_sample's [-1, 1] coordinates (align_corners=False): pixel
    x = ((u + 1) W - 1) / 2 on the image side, u = (2 tx + 1) / W_tex - 1 on the texture side."""
    height, width = camera.params.height, camera.params.width
    theta = np.empty((2, 3))
    for row, size in ((0, texture_shape[1]), (1, texture_shape[0])):
        a, b, c = affine[row]
        theta[row] = (
            a * width / size,
            b * height / size,
            (2 / size) * (a * (width - 1) / 2 + b * (height - 1) / 2 + c + 0.5) - 1,
        )
    return theta


def draw_object(frame: np.ndarray, moving: MovingObject, t_s: float, level: float) -> None:
    """Paint a moving object (anti-aliased over about one pixel) into ``frame`` in place."""
    vx, vy = moving.velocity_px_per_ms
    cx, cy = moving.x + vx * t_s * 1000, moving.y + vy * t_s * 1000
    stretch = math.sqrt(moving.aspect)
    ry, rx = moving.radius_px / stretch, moving.radius_px * stretch
    y0, y1 = max(int(cy - ry) - 2, 0), min(int(cy + ry) + 3, frame.shape[0])
    x0, x1 = max(int(cx - rx) - 2, 0), min(int(cx + rx) + 3, frame.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    if moving.disc:
        inside = (1 - np.sqrt((dy / ry) ** 2 + (dx / rx) ** 2)) * min(rx, ry)
    else:
        inside = np.minimum(ry - np.abs(dy), rx - np.abs(dx))
    cover = np.clip(inside + 0.5, 0, 1)
    surface = moving.reflectance * level
    if moving.texture_seed is not None:  # the texture moves with the object (bilinear)
        texture = object_texture(moving.texture_seed, math.ceil(ry) + 3, math.ceil(rx) + 3)
        rows = np.broadcast_to(dy + (texture.shape[0] - 1) / 2, cover.shape)
        cols = np.broadcast_to(dx + (texture.shape[1] - 1) / 2, cover.shape)
        surface = surface * map_coordinates(texture, [rows, cols], order=1, mode="nearest")
    patch = frame[y0:y1, x0:x1]
    patch *= 1 - cover
    patch += cover * surface


# Objects' surfaces are finer than the scene's (leaves from 1.5 px) and of the scene's mid
# contrast; one texture per object, made once and reused for each of the pair's ~100 frames.
OBJECT_LEAF_MIN_PX = 1.5
OBJECT_CONTRAST = 0.6


@lru_cache(maxsize=64)
def object_texture(seed: int, half_height: int, half_width: int) -> np.ndarray:
    """(2 half_height + 1, 2 half_width + 1) reflectance of a textured object's surface, mean
    1: dead leaves (clutter 3, so that they cover most of it) blurred by the lens."""
    shape = (2 * half_height + 1, 2 * half_width + 1)
    rng = np.random.default_rng(seed)
    leaves = dead_leaves(shape, OBJECT_CONTRAST, 3.0, OBJECT_LEAF_MIN_PX / LEAF_MIN_PX, rng)
    texture = gaussian_filter(leaves, OPTICS_BLUR_PX)
    texture /= texture.mean()
    texture.flags.writeable = False  # shared by every frame (and cached)
    return texture
