"""Everything random about one synthetic pair, drawn from (seed, index) alone.

Illumination regimes follow issue 12: backgrounds span three decades of light, with night and
dusk the common case (flare matters most there). Intensities are in units where a mid-grey
daylit surface is 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..settings import SynthSettings

# Every pixel adds this dark current to its light: it caps the contrast a dim scene can show,
# which is what makes night recordings sparse.
DARK_LEVEL = 0.02
# Fine surface texture of a textured scene: spread of its log reflectance, and its grain in
# pixels at 640x480 (log-uniform).
TEXTURE_CONTRAST = (0.1, 0.5)
TEXTURE_GRAIN_PX = (1.0, 4.0)
# Mean background intensity of each regime: three decades from night to day.
REGIME_LEVELS = {"night": (0.002, 0.02), "dusk": (0.02, 0.2), "day": (0.2, 2.0)}
# Shot noise grows as light falls (v2e, DVS-Voltmeter): night rates as drawn, dusk 1/10, day 1/100.
REGIME_NOISE = {"night": 1.0, "dusk": 0.1, "day": 0.01}
# Brightness of a light's core over the scene's (level + dark current): from a dim lamp in
# daylight to a streetlight at night that saturates its surroundings.
LIGHT_OVER_SCENE = (10.0, 3000.0)


@dataclass
class LightSource:
    """One bright source, in image coordinates at t=0; its flare moves with the camera."""

    x: float
    y: float
    kind: str  # "point" or "area"
    radius_px: float
    aspect: float
    peak: float  # intensity of the core
    flicker: str  # "steady", "sine", "triangle" (mains) or "square" (PWM)
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
class Vibration:
    """Camera shake on one axis: a sum of sines (pixels, Hz, radians)."""

    amplitude_px: list[float]
    frequency_hz: list[float]
    phase: list[float]


@dataclass
class MovingObject:
    """A shape that moves on its own across the image (image coordinates, pixels per ms)."""

    x: float
    y: float
    velocity_px_per_ms: tuple[float, float]
    radius_px: float
    aspect: float
    disc: bool
    reflectance: float  # relative to the scene's mean
    # None: one plain surface (events on its outline alone); else the seed of a dead-leaves
    # texture printed on it, so that its inside fires too as it moves (real moving objects,
    # people, cars, boxes, are rarely plain)
    texture_seed: int | None = None


@dataclass
class SceneFlicker:
    """Mains light on the whole scene (a lamp-lit room or street): the background's intensity
    times ``1 + depth * wave`` (``optics.flicker_gain``). Its events are scene, not flare: they
    stay in the target."""

    waveform: str  # "sine" or "triangle"
    frequency_hz: float
    depth: float  # the flickering light's share of the scene's light times its own depth
    phase: float


@dataclass
class PairParameters:
    """Everything random about one pair, kept in the manifest."""

    index: int
    seed: list[int]
    height: int
    width: int
    regime: str
    scene_level: float  # mean background intensity
    contrast: float  # spread of log reflectance of the scene's surfaces
    clutter: float  # how many surfaces lie on the plain ground (see scene.dead_leaves)
    drift_px_per_ms: tuple[float, float]
    vibration: tuple[Vibration, Vibration]
    rotation_deg: float
    zoom: float
    objects: list[MovingObject]
    threshold_on: float
    threshold_off: float
    threshold_sigma: float
    refractory_us: int
    shot_noise_hz: float
    leak_hz: float
    hot_pixels: int
    lights: list[LightSource]
    scene_flicker: SceneFlicker | None = None  # mains light on the whole scene, if any
    # fine texture on every surface (scene.surface_texture): spread of its log reflectance and
    # grain in pixels; 0: flat surfaces, whose events lie on their outlines alone
    texture_contrast: float = 0.0
    texture_grain_px: float = 0.0
    noise_pair_share: float = 0.0  # shot-noise events followed by their return (sensor_noise)

    @property
    def scale(self) -> float:
        """Geometry scale against the 640x480 sensor that sizes are quoted for."""
        return min(self.height, self.width) / 480


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A draw whose logarithm is uniform (``low`` when it is 0); always one draw of ``rng``, so
    that a range set to zero leaves every other parameter of the pair as it was."""
    u = rng.random()
    return float(low * (high / low) ** u) if low > 0 else float(low)


def draw_parameters(settings: SynthSettings, index: int) -> PairParameters:
    """The random scene of pair ``index``: a function of (seed, index) and the settings' values
    alone (not of how many pairs are made, nor of the order a settings file lists them in)."""
    rng = np.random.default_rng([settings.seed, index, 1])
    height, width = settings.sensor_sizes[int(rng.integers(len(settings.sensor_sizes)))]
    # in a fixed order, so that a settings file listing them otherwise makes the same pairs
    regimes = [name for name in REGIME_LEVELS if name in settings.regimes]
    shares = np.array([settings.regimes[name] for name in regimes], float)
    regime = regimes[int(rng.choice(len(regimes), p=shares / shares.sum()))]
    scale = min(height, width) / 480
    speed = log_uniform(rng, *settings.drift_px_per_ms) * scale
    angle = rng.uniform(0, 2 * math.pi)
    params = PairParameters(
        index=index,
        seed=[settings.seed, index],
        height=int(height),
        width=int(width),
        regime=regime,
        scene_level=log_uniform(rng, *REGIME_LEVELS[regime]),
        contrast=float(rng.uniform(0.2, 0.8)),
        clutter=log_uniform(rng, 0.3, 3.0),
        drift_px_per_ms=(speed * math.cos(angle), speed * math.sin(angle)),
        vibration=(_draw_vibration(settings, rng, scale), _draw_vibration(settings, rng, scale)),
        rotation_deg=float(rng.uniform(-2, 2)),
        zoom=float(rng.uniform(-0.03, 0.03)),
        objects=[],
        threshold_on=float(rng.uniform(*settings.threshold)),
        threshold_off=float(rng.uniform(*settings.threshold)),
        threshold_sigma=float(rng.uniform(*settings.threshold_sigma)),
        refractory_us=int(rng.integers(settings.refractory_us[0], settings.refractory_us[1] + 1)),
        shot_noise_hz=log_uniform(rng, *settings.shot_noise_hz) * REGIME_NOISE[regime],
        leak_hz=log_uniform(rng, *settings.leak_hz),
        hot_pixels=int(rng.integers(settings.hot_pixels[0], settings.hot_pixels[1] + 1)),
        lights=[],
    )
    num_objects = int(rng.integers(0, settings.max_objects + 1))
    params.objects = [_draw_object(settings, params, rng) for _ in range(num_objects)]
    num_lights = int(rng.integers(1, settings.max_lights + 1))
    params.lights = [_draw_light(settings, params, rng) for _ in range(num_lights)]
    _draw_own_streams(settings, params)
    return params


def _draw_own_streams(settings: SynthSettings, params: PairParameters) -> None:
    """The choices that each draw from a stream of their own (textured objects, no light, a
    lit scene, textured surfaces, noise pairs), so that a share of 0 makes the pairs of versions
    before it and the other pairs of a seed do not depend on the share."""
    index = params.index
    textures = np.random.default_rng([settings.seed, index, 5])
    for moving in params.objects:
        if textures.random() < settings.object_texture:
            moving.texture_seed = int(textures.integers(2**31))
    # A share of scenes has no bright light at all: there the target is the input, which teaches
    # the model to leave real scenes without flare alone (issue 12: do no harm).
    if np.random.default_rng([settings.seed, index, 3]).random() < settings.dark_fraction:
        params.lights = []
    # A share of scenes is lit by mains light and flickers with it: the scene's edges then fire
    # at 100/120 Hz, and those events are scene, not flare (a model trained without such scenes
    # took a real lamp-lit scene's edges for flare).
    lit = np.random.default_rng([settings.seed, index, 4])
    if lit.random() < settings.scene_flicker:
        params.scene_flicker = _draw_scene_flicker(settings, params, lit)
    # A share of scenes has finely textured surfaces (fabric, hair, print, foliage): moving, they
    # fire inside their outlines too, in interleaved ON and OFF events, as every real recording
    # in ../shared/realdata does; flat leaves fire on their outlines alone, and a model trained
    # on them alone scored real scene events like flare (docs/experiments.md).
    textured = np.random.default_rng([settings.seed, index, 6])
    if textured.random() < settings.surface_texture:
        params.texture_contrast = float(textured.uniform(*TEXTURE_CONTRAST))
        params.texture_grain_px = log_uniform(textured, *TEXTURE_GRAIN_PX) * params.scale
    if settings.noise_pairs[1] > 0:
        pairs = np.random.default_rng([settings.seed, index, 7])
        params.noise_pair_share = float(pairs.uniform(*settings.noise_pairs))


def _draw_scene_flicker(
    settings: SynthSettings, params: PairParameters, rng: np.random.Generator
) -> SceneFlicker:
    """In step with a mains light in view, which then lights the scene; else a light out of
    view. Depth (``scene_flicker_depth``, or ``scene_flicker_depth_by_regime`` for the pair's
    regime): the lamp's own depth (incandescent 6-11%, fluorescent 25-40%, LEDs up to 100%)
    times its share of the scene's light, which is largest at night, where the lamp is most of
    the light, and smallest by day."""
    depth_range = settings.scene_flicker_depth_by_regime.get(
        params.regime, settings.scene_flicker_depth
    )
    depth = log_uniform(rng, *depth_range)
    mains = [light for light in params.lights if light.flicker in ("sine", "triangle")]
    if mains:
        light = mains[0]
        return SceneFlicker(light.flicker, light.frequency_hz, depth, light.phase)
    frequency_hz = float(rng.choice(settings.mains_hz)) * float(rng.uniform(0.995, 1.005))
    waveform = str(rng.choice(["sine", "triangle"]))
    return SceneFlicker(waveform, frequency_hz, depth, float(rng.uniform(0, 2 * math.pi)))


def _draw_vibration(settings: SynthSettings, rng: np.random.Generator, scale: float) -> Vibration:
    """Two shake components, as a hand or a vehicle adds (issue 12: 2-15 Hz, 0.5-5 px)."""
    components = 2
    return Vibration(
        amplitude_px=[
            log_uniform(rng, *settings.vibration_px) * scale / components for _ in range(components)
        ],  # fmt: skip
        frequency_hz=[float(rng.uniform(*settings.vibration_hz)) for _ in range(components)],
        phase=[float(rng.uniform(0, 2 * math.pi)) for _ in range(components)],
    )


def _draw_object(
    settings: SynthSettings, params: PairParameters, rng: np.random.Generator
) -> MovingObject:
    speed = log_uniform(rng, *settings.object_speed_px_per_ms) * params.scale
    angle = rng.uniform(0, 2 * math.pi)
    return MovingObject(
        x=float(rng.uniform(0, params.width)),
        y=float(rng.uniform(0, params.height)),
        velocity_px_per_ms=(speed * math.cos(angle), speed * math.sin(angle)),
        radius_px=log_uniform(rng, *settings.object_radius_px) * params.scale,
        aspect=float(rng.uniform(0.4, 2.5)),
        disc=bool(rng.random() < 0.5),
        reflectance=log_uniform(rng, 0.2, 5.0),
    )


def _draw_flicker(settings: SynthSettings, rng: np.random.Generator) -> tuple[str, float, float]:
    """(waveform, frequency, depth). Mains lighting flickers at twice the mains frequency with
    a near-sinusoidal wave (incandescent 6-11%, fluorescent 25-40%, cheap LEDs more); PWM LED
    drivers give square waves at hundreds of Hz to kHz, often at full depth (DESIGN.md)."""
    if rng.random() < settings.steady_fraction:
        return "steady", 0.0, 0.0
    if rng.random() < settings.pwm_fraction:
        return "square", log_uniform(rng, *settings.pwm_hz), float(rng.uniform(0.3, 1.0))
    mains = float(rng.choice(settings.mains_hz)) * float(rng.uniform(0.995, 1.005))
    return str(rng.choice(["sine", "triangle"])), mains, log_uniform(rng, 0.05, 1.0)


def _draw_light(
    settings: SynthSettings, params: PairParameters, rng: np.random.Generator
) -> LightSource:
    scale = params.scale
    waveform, frequency_hz, depth = _draw_flicker(settings, rng)
    blades = int(rng.integers(4, 9))
    # An N-blade aperture gives 2N spikes for odd N and N for even N (far-field diffraction).
    rays = 2 * blades if blades % 2 else blades
    return LightSource(
        x=float(rng.uniform(0.05, 0.95) * params.width),
        y=float(rng.uniform(0.05, 0.8) * params.height),
        kind="point" if rng.random() < 0.6 else "area",
        radius_px=float(rng.uniform(1.0, 5.0) * scale),
        aspect=float(rng.uniform(0.5, 2.0)),
        peak=(params.scene_level + DARK_LEVEL) * log_uniform(rng, *LIGHT_OVER_SCENE),
        flicker=waveform,
        frequency_hz=frequency_hz,
        depth=depth,
        phase=float(rng.uniform(0, 2 * math.pi)),
        halo_radius_px=float(rng.uniform(4, 30) * scale),
        halo_strength=log_uniform(rng, 0.02, 1.5),
        num_rays=rays,
        ray_angle=float(rng.uniform(0, 2 * math.pi)),
        ray_length_px=float(rng.uniform(20, 160) * scale),
        ray_width=float(rng.uniform(0.6, 2.0)),
        ray_strength=log_uniform(rng, 0.01, 0.8),
        ghosts=[
            {
                "scale": float(rng.choice([-1, 1]) * rng.uniform(0.2, 1.2)),
                "radius_px": float(rng.uniform(6, 45) * scale),
                "strength": log_uniform(rng, 0.003, 0.1),
                "ring": float(rng.random() < 0.4),
            }
            for _ in range(int(rng.integers(0, 5)))
        ],
    )
