"""One pair end to end, and the pair files: scene, optics and sensor model in, the E-Deflare
layout out (``background_with_flare_events/``, ``background_with_light_events/``,
``manifest.json``). Every pair depends on (seed, index) alone."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..errors import DeflareError
from ..io import atomic_output, list_event_files, make_folder, write_events
from ..io.pairs import pair_paths
from ..progress import Progress, map_jobs, no_progress
from ..settings import SynthSettings, paired_dirs
from .mixing import (
    CountWeights,
    FlareLookup,
    IntensityWeights,
    Layer,
    SynthPair,
    flare_thinning,
    mix,
    nearest,
    real_background,
)
from .optics import flare_layers, flicker_gain, render_layers
from .parameters import PairParameters, draw_parameters
from .scene import Camera, interpolate_frames, make_texture, render_background
from .sensor import Sensor, emulate

# Background frames per second: enough that the image moves at most about a pixel per frame,
# within these bounds (the photoreceptor filter is exact at any step).
BACKGROUND_RATE_HZ = (200, 1000)
# A flickering scene starts its photoreceptors this long before the pair, the camera still: they
# start at the first frame's level, and a dim pixel's low-pass (a cutoff of a few Hz) would
# otherwise settle from a flicker peak to the mean with a burst of one polarity, which a steady
# camera never shows.
SCENE_FLICKER_WARMUP_US = 50_000
MAX_FLARE_RATE_HZ = 4000  # caps the flicker sampling of kHz PWM lights (aliased above 333 Hz)


def synthesise_pair(
    settings: SynthSettings, index: int, backgrounds: Sequence[Path] = ()
) -> tuple[SynthPair, PairParameters]:
    """Build pair ``index``: deterministic for (seed, index). With ``backgrounds`` (real
    recordings), the background comes from one of them instead of a rendered scene."""
    params = draw_parameters(settings, index)
    rng = np.random.default_rng([settings.seed, index, 2])
    duration_us = round(settings.duration_ms * 1000)
    camera = Camera(params, duration_us / 1e6)
    sensor = Sensor.draw(settings, params, rng)

    flicker_hz = max([light.frequency_hz for light in params.lights] + [0])
    flare_rate = min(max(BACKGROUND_RATE_HZ[1], settings.samples_per_cycle * flicker_hz),
                     MAX_FLARE_RATE_HZ)  # fmt: skip
    flare_times = sample_times(duration_us, flare_rate)
    flare_parts, light_parts = flare_layers(params, camera, flare_times / 1e6)
    flare = Layer(*render_layers(flare_parts, params, len(flare_times)), flare_times)
    light = Layer(*render_layers(light_parts, params, len(flare_times)), flare_times)
    light_events = emulate(light.frames, flare_times, sensor, light.region)
    flare_lookup = FlareLookup(flare, light)

    weights: IntensityWeights | CountWeights
    if backgrounds:
        bg_events = real_background(params, settings.duration_ms, backgrounds)
        flare_events = emulate(flare.frames, flare_times, sensor, flare.region)
        weights = CountWeights.from_events(params, bg_events, flare_events, light_events)
        fl_t, fl_x, fl_y, _ = flare_events
        flare_kept = rng.random(len(fl_t)) < weights.flare_kept(fl_t, fl_x, fl_y)
    else:
        rate = float(np.clip(camera.max_speed_px_per_s(), *BACKGROUND_RATE_HZ))
        lit = params.scene_flicker
        background_times = sample_times(duration_us, rate)
        margin = camera.margin
        shape = (params.height + 2 * margin, params.width + 2 * margin)
        texture = make_texture(shape, params, rng)
        background = render_background(texture, camera, background_times / 1e6, params.scene_level)
        if lit is not None:  # sampled as a flickering light's flare is, from a still warm-up on
            motion_times, warm_us = background_times, SCENE_FLICKER_WARMUP_US
            flicker_rate = max(rate, min(settings.samples_per_cycle * lit.frequency_hz,
                                         MAX_FLARE_RATE_HZ))  # fmt: skip
            background_times = sample_times(duration_us + warm_us, flicker_rate) - warm_us
            background = interpolate_frames(background, motion_times, background_times)
            gain = flicker_gain(lit.waveform, lit.frequency_hz, lit.depth, lit.phase,
                                background_times / 1e6)  # fmt: skip
            background *= gain.astype(np.float32)[:, None, None]
        full = (slice(0, params.height), slice(0, params.width))
        bg_events = emulate(background, background_times, sensor, full)
        if lit is not None:
            bg_events = tuple(column[bg_events[0] >= 0] for column in bg_events)
        # Mixing keeps a flare event with I_flare / (I_bg + I_flare): decide as events are made,
        # so that the many flare events mixing would drop are never stored or looked up.
        thin = flare_thinning(flare, background, nearest(background_times, flare_times), rng)
        flare_events = emulate(flare.frames, flare_times, sensor, flare.region, thin)
        weights = IntensityWeights(background, background_times, flare_lookup)
        flare_kept = np.ones(len(flare_events[0]), bool)  # drawn already
    pair = mix(params, duration_us, bg_events, flare_events, light_events, weights, flare_lookup,
               flare_kept, rng)  # fmt: skip
    return pair, params


def sample_times(duration_us: int, rate_hz: float) -> np.ndarray:
    """Evenly spaced sample times (microseconds) from 0 to the duration, both included."""
    count = max(2, math.ceil(duration_us * rate_hz / 1e6) + 1)
    return np.linspace(0, duration_us, count).round().astype(np.int64)


def write_pair(settings: SynthSettings, index: int, backgrounds: Sequence[Path] = ()) -> dict:
    """Synthesise pair ``index`` and write both files; returns its manifest entry."""
    pair, params = synthesise_pair(settings, index, backgrounds)
    flare_path, clean_path = pair_paths(settings.out_dir, f"{index:05d}")
    write = settings.write
    attrs = {"deflare_synth_seed": settings.seed, "deflare_synth_index": index}
    labels = {"is_flare": pair.is_flare.astype(np.int8), "is_light": pair.is_light.astype(np.int8)}
    write_events(flare_path, pair.flare_input, write, attrs, columns=labels)
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
    folders = [settings.out_dir, *paired_dirs(settings.out_dir)]
    created = [folder for folder in folders if not folder.exists()]
    try:
        for folder in folders:
            make_folder(folder)
        jobs = [(settings, index, recordings) for index in range(settings.num_files)]
        entries = map_jobs(_write_pair_job, jobs, settings.runtime.workers, "synthesising pairs",
                           progress, initializer=_quiet_worker)  # fmt: skip
    except BaseException:  # a failed run leaves no empty folders behind (pairs it finished stay)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
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
