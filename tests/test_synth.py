"""Synthetic pairs: layout, determinism, mixing invariants, the DVS emulator."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import file_digest, write_deflare

from deflare_cli.errors import DeflareError
from deflare_cli.io import read_events
from deflare_cli.settings import RuntimeSettings, SynthSettings
from deflare_cli.synth import draw_parameters, synthesise, synthesise_pair
from deflare_cli.synth import sensor as sensor_module
from deflare_cli.synth.mixing import mix
from deflare_cli.synth.optics import flicker, light_templates
from deflare_cli.synth.parameters import LightSource, MovingObject
from deflare_cli.synth.scene import dead_leaves, draw_object, interpolate_frames, surface_texture
from deflare_cli.synth.sensor import Photoreceptor, Sensor, emulate, sensor_noise

SMALL = {"sensor_sizes": ((96, 128),), "duration_ms": 30, "dark_fraction": 0.0}
IDEAL_CUTOFF_HZ = 1e12  # a photoreceptor that follows the light at once


def small_settings(out_dir: Path, **values) -> SynthSettings:
    return SynthSettings(out_dir=out_dir, **{**SMALL, "num_files": 2, **values})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesise(small_settings(out, seed=5))
    return out


def test_layout_dtypes_and_manifest(dataset: Path) -> None:
    flare = sorted((dataset / "background_with_flare_events").iterdir())
    clean = sorted((dataset / "background_with_light_events").iterdir())
    assert [p.name for p in flare] == ["composed_00000_bg_flare.h5", "composed_00001_bg_flare.h5"]
    assert [p.name for p in clean] == ["composed_00000_bg_light.h5", "composed_00001_bg_light.h5"]
    with h5py.File(flare[0]) as h5:
        assert h5["events/t"].dtype == np.int64 and h5["events/p"].dtype == np.int8
        assert h5["events/is_flare"].shape == h5["events/t"].shape
        assert h5["events/is_light"].shape == h5["events/t"].shape
        assert not np.any(h5["events/is_flare"][:] & h5["events/is_light"][:])
        light_events = int(h5["events/is_light"][:].sum())
        assert (h5.attrs["resolution_height"], h5.attrs["resolution_width"]) == (96, 128)
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert len(manifest["pairs"]) == 2 and manifest["settings"]["seed"] == 5
    entry = manifest["pairs"][0]
    assert entry["input"] == "background_with_flare_events/composed_00000_bg_flare.h5"
    assert 1 <= len(entry["parameters"]["lights"]) <= 3
    events = read_events(flare[0])
    assert entry["counts"]["input_events"] == len(events)
    assert entry["counts"]["input_light_events"] == light_events
    assert events.t.min() >= 0 and events.t.max() < 30_000
    assert set(np.unique(events.p)) <= {-1, 1}


def test_flare_inputs_hold_more_events_than_targets(dataset: Path) -> None:
    for index in range(2):
        flare = read_events(
            dataset / f"background_with_flare_events/composed_{index:05d}_bg_flare.h5"
        )
        clean = read_events(
            dataset / f"background_with_light_events/composed_{index:05d}_bg_light.h5"
        )
        assert len(flare) > len(clean) > 0
        with h5py.File(
            dataset / f"background_with_flare_events/composed_{index:05d}_bg_flare.h5"
        ) as h5:
            assert h5["events/is_flare"][:].sum() > 0


def test_parameters_do_not_depend_on_the_order_regimes_are_listed_in(tmp_path: Path) -> None:
    """A YAML file written by another tool (e.g. with sorted keys) lists the regimes in
    another order: the pairs must stay the same."""
    listed = small_settings(tmp_path, regimes={"night": 0.5, "dusk": 0.3, "day": 0.2})
    shuffled = small_settings(tmp_path, regimes={"day": 0.2, "dusk": 0.3, "night": 0.5})
    drawn = [[draw_parameters(settings, index).regime for index in range(40)]
             for settings in (listed, shuffled)]  # fmt: skip
    assert drawn[0] == drawn[1] and set(drawn[0]) == {"night", "dusk", "day"}
    for index in range(5):
        assert draw_parameters(listed, index) == draw_parameters(shuffled, index)


def test_deterministic_for_a_seed_and_independent_of_workers(tmp_path: Path, dataset: Path) -> None:
    again = tmp_path / "again"
    synthesise(small_settings(again, seed=5, runtime=RuntimeSettings(workers=2)))
    for sub in ("background_with_flare_events", "background_with_light_events"):
        for path in (dataset / sub).iterdir():
            assert file_digest(path) == file_digest(again / sub / path.name)
    other = tmp_path / "other"
    synthesise(small_settings(other, seed=6, num_files=1))
    name = "background_with_flare_events/composed_00000_bg_flare.h5"
    assert file_digest(other / name) != file_digest(dataset / name)


def test_refuses_a_folder_with_pairs_unless_overwrite(dataset: Path) -> None:
    with pytest.raises(DeflareError, match="--overwrite"):
        synthesise(small_settings(dataset, seed=5))


def _stream(t, x, y, p=None):
    t = np.asarray(t, np.int64)
    p = np.ones(len(t), np.int64) if p is None else np.asarray(p)
    return t, np.asarray(x, np.int64), np.asarray(y, np.int64), p


class FixedWeights:
    """Background weights for input/target per event, flare and light keep probabilities."""

    def __init__(self, w_input, w_target, flare, light):
        self.values = (np.asarray(w_input), np.asarray(w_target), flare, light)

    def background_kept(self, t, x, y):
        return self.values[0], self.values[1]

    def light_kept(self, t, x, y):
        return np.full(len(t), self.values[3])


class FixedLookup:
    def __init__(self, light_share):
        self.light_share = np.asarray(light_share)

    def at(self, t, x, y):
        return np.ones(len(t)), self.light_share


def test_mixing_keeps_input_background_in_target_and_labels_flare(tmp_path: Path) -> None:
    settings = small_settings(tmp_path, shot_noise_hz=(0, 0), leak_hz=(0, 0), hot_pixels=(0, 0))
    params = draw_parameters(settings, 0)
    rng = np.random.default_rng(0)
    count = 4000
    background = _stream(
        np.arange(count) * 4, rng.integers(0, 128, count), rng.integers(0, 96, count)
    )
    w_input = rng.uniform(0, 1, count)
    w_target = np.minimum(1, w_input + rng.uniform(0, 0.5, count))
    flare = _stream(np.arange(500) * 4 + 1, np.zeros(500), np.zeros(500))
    light = _stream(np.arange(100) * 4 + 2, np.ones(100), np.ones(100))
    light_share = np.where(np.arange(500) < 100, 0.9, 0.1)  # first 100 flare events: the source
    weights = FixedWeights(w_input, w_target, 0.8, 1.0)
    flare_kept = rng.random(500) < weights.values[2]
    pair = mix(params, 30_000, background, flare, light, weights, FixedLookup(light_share),
               flare_kept, rng)  # fmt: skip
    input_t, target_t = pair.flare_input.t, set(pair.clean_target.t.tolist())
    from_background = input_t[input_t % 4 == 0]
    assert 0.3 * count < len(from_background) < 0.7 * count
    assert set(from_background.tolist()) <= target_t  # kept in the input => kept in the target
    assert len(target_t & set(range(0, 4 * count, 4))) > len(from_background)
    labels, light = pair.is_flare, pair.is_light
    assert np.all(labels[input_t % 4 == 0] == 0)  # background is never flare
    assert not np.any(light[input_t % 4 == 0])  # nor the light's
    from_flare = input_t % 4 == 1
    source = from_flare & (input_t < 400)
    assert np.all(labels[source] == 0) and np.all(labels[from_flare & ~source] == 1)
    # the source's own events are labelled as the light's: the target keeps their like
    assert np.array_equal(light, source) and not np.any(labels & light)
    assert pair.counts["input_light_events"] == source.sum() > 0
    assert pair.counts["input_flare_events"] == labels.sum()
    assert set((input_t[from_flare] - 1) // 4) <= set(range(500))
    assert not np.any(pair.clean_target.t % 4 == 1)  # no flare event reaches the target


def test_emulator_on_a_sinusoidal_log_intensity() -> None:
    threshold, amplitude, frequency, cycles = 0.2, 1.05, 100.0, 10
    times = np.linspace(0, cycles / frequency * 1e6, 4001).round().astype(np.int64)
    log_intensity = amplitude * np.sin(2 * math.pi * frequency * times / 1e6)
    frames = (np.exp(log_intensity) - 0.02)[:, None, None].astype(np.float32)  # 1 pixel
    sensor = Sensor(np.full((1, 1), threshold, np.float32), np.full((1, 1), threshold, np.float32),
                    0, IDEAL_CUTOFF_HZ)  # fmt: skip
    t, x, y, p = emulate(frames, times, sensor, (slice(0, 1), slice(0, 1)))
    # each half cycle crosses the 2 * floor(A / C) levels between -A and +A: half ON, half OFF
    expected = 4 * math.floor(amplitude / threshold) * cycles
    assert abs(len(t) - expected) <= 5  # the first quarter cycle starts at 0, not at -A
    assert abs((p > 0).sum() - (p < 0).sum()) <= 1
    order = np.argsort(t, kind="stable")
    first_on = t[order][p[order] > 0][0]
    # the first ON event is where sin first reaches C: t = asin(C/A) / (2 pi f)
    assert abs(first_on - math.asin(threshold / amplitude) / (2 * math.pi * frequency) * 1e6) < 10


def test_pixels_that_cannot_fire_are_left_out_with_the_same_events(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    times = np.arange(0, 20_000, 200, dtype=np.int64)
    # log intensities that wander by 0-0.4 per pixel: some pixels span less than a threshold
    steps = rng.normal(0, 1, (len(times), 24, 32)).cumsum(axis=0)
    steps /= np.abs(steps).max(axis=0)
    frames = np.exp(steps * rng.uniform(0, 0.2, (24, 32))).astype(np.float32)
    sensor = Sensor(rng.uniform(0.1, 0.3, (24, 32)).astype(np.float32),
                    rng.uniform(0.1, 0.3, (24, 32)).astype(np.float32), 100, 2000.0)  # fmt: skip
    region = (slice(0, 24), slice(0, 32))
    least = np.minimum(sensor.on, sensor.off).ravel()
    can = sensor_module.can_fire(frames.reshape(len(times), -1), least)
    assert 0.2 < can.mean() < 0.8  # both kinds of pixel are there
    pruned = emulate(frames, times, sensor, region)
    monkeypatch.setattr(sensor_module, "can_fire", lambda frames, _: np.ones(frames.shape[1], bool))
    every_pixel = emulate(frames, times, sensor, region)
    order = [np.lexsort((e[1], e[2], e[0])) for e in (pruned, every_pixel)]
    for a, b in zip(pruned, every_pixel, strict=True):
        assert np.array_equal(a[order[0]], b[order[1]])
    assert len(pruned[0]) > 50
    fired = np.zeros((24, 32), bool)
    fired[pruned[2], pruned[1]] = True
    assert not np.any(fired.ravel() & ~can)  # no event from a pixel said unable to fire


def test_refractory_period_limits_the_event_rate() -> None:
    times = np.linspace(0, 10_000, 101).round().astype(np.int64)
    frames = np.exp(np.linspace(0, 8, 101))[:, None, None].astype(np.float32)  # a steep ramp
    sensor = Sensor(np.full((1, 1), 0.2, np.float32), np.full((1, 1), 0.2, np.float32), 1000,
                    IDEAL_CUTOFF_HZ)  # fmt: skip
    t, *_ = emulate(frames, times, sensor, (slice(0, 1), slice(0, 1)))
    assert len(t) <= 11 and np.all(np.diff(np.sort(t)) >= 1000)


def test_flicker_waveforms() -> None:
    params = draw_parameters(SynthSettings(out_dir=Path("x"), seed=2, dark_fraction=0), 0)
    light = params.lights[0]
    times = np.linspace(0, 0.1, 10_001)
    for wave in ("sine", "square", "triangle"):
        light.flicker, light.frequency_hz, light.depth = wave, 100.0, 0.5
        values = flicker(light, times)
        assert values.max() == pytest.approx(1.5, abs=1e-3) and values.min() == pytest.approx(
            0.5, abs=1e-3
        )
    light.flicker = "steady"
    assert np.all(flicker(light, times) == 1)


def test_background_from_real_recordings(tmp_path: Path) -> None:
    from conftest import random_events

    backgrounds = tmp_path / "real"
    backgrounds.mkdir()
    recording = random_events(count=20_000, duration_us=90_000, size=(96, 128))
    write_deflare(backgrounds / "street.h5", recording)
    settings = small_settings(tmp_path / "out", background_dir=backgrounds, num_files=1)
    synthesise(settings)
    clean = read_events(tmp_path / "out/background_with_light_events/composed_00000_bg_light.h5")
    window = recording.time_slice(0, 30_000)
    assert len(clean) >= 0.5 * len(window)  # most real background events survive in the target
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["background_files"] == [str(backgrounds / "street.h5")]


def test_pair_is_a_function_of_seed_and_index(tmp_path: Path) -> None:
    settings = small_settings(tmp_path)
    first, _ = synthesise_pair(settings, 1)
    second, _ = synthesise_pair(settings, 1)
    assert np.array_equal(first.flare_input.t, second.flare_input.t)
    assert np.array_equal(first.is_flare, second.is_flare)


def test_photoreceptor_of_a_dim_pixel_responds_later() -> None:
    """The cutoff falls with light (v2e): the same step in log intensity reaches half its height
    later in a dim pixel than in a bright one."""
    dt_s = 1e-4
    before = np.array([0.002, 0.5], np.float32)
    after = before * 4
    receptor = Photoreceptor(before, cutoff_hz=300)
    start = receptor.level.copy()
    half = np.log(4 * before + 0.02) / 2 + start / 2
    reached = [None, None]
    for step in range(1, 2000):
        level = receptor.step(after, dt_s)
        for pixel in range(2):
            if reached[pixel] is None and level[pixel] >= half[pixel]:
                reached[pixel] = step
    assert reached[1] is not None and reached[0] is not None
    assert reached[0] > 5 * reached[1]
    assert reached[1] * dt_s < 2e-3  # a bright pixel: about one time constant of 300 Hz


def test_sensor_noise_rates_and_polarities() -> None:
    params = draw_parameters(SynthSettings(out_dir=Path("x"), **SMALL), 0)
    params.shot_noise_hz, params.leak_hz, params.hot_pixels = 2.0, 0.0, 0
    duration_us = 1_000_000
    t, x, y, p = sensor_noise(params, duration_us, np.random.default_rng(0))
    expected = 2.0 * 96 * 128
    assert abs(len(t) - expected) < 5 * math.sqrt(expected)
    assert abs((p > 0).mean() - 0.5) < 0.02 and t.min() >= 0 and t.max() < duration_us
    params.shot_noise_hz, params.leak_hz = 0.0, 0.5
    *_, p = sensor_noise(params, duration_us, np.random.default_rng(0))
    assert len(p) > 0 and np.all(p == 1)  # leak events are ON events


def _quiet_scene(tmp_path: Path, **values) -> SynthSettings:
    """One steady light over a dim scene, no noise, no objects: events come from motion only."""
    return small_settings(
        tmp_path, regimes={"night": 1.0}, steady_fraction=1.0, max_lights=1, max_objects=0,
        shot_noise_hz=(0, 0), leak_hz=(0, 0), hot_pixels=(0, 0), num_files=1, **values,
    )  # fmt: skip


def test_flare_of_a_steady_light_comes_from_camera_motion(tmp_path: Path) -> None:
    """Flare events are never painted on: a steady light seen by a camera that barely moves (it
    still rolls and zooms slowly) gives few, and a shaking camera makes its halo and rays sweep
    over pixels and fire."""
    still = _quiet_scene(tmp_path, drift_px_per_ms=(0, 0), vibration_px=(0, 0))
    shaking = _quiet_scene(tmp_path, drift_px_per_ms=(0, 0), vibration_px=(10, 10))
    pair_still, _ = synthesise_pair(still, 0)
    pair_shaking, _ = synthesise_pair(shaking, 0)
    assert pair_shaking.counts["flare_events_kept"] > 3 * pair_still.counts["flare_events_kept"]
    assert pair_shaking.counts["flare_events_kept"] > 100


def test_night_is_sparser_than_day(tmp_path: Path) -> None:
    """Illumination regimes: the dark current caps the contrast a dim scene can show."""
    counts = {}
    for regime in ("night", "day"):
        settings = small_settings(tmp_path, regimes={regime: 1.0}, shot_noise_hz=(0, 0),
                                  leak_hz=(0, 0), hot_pixels=(0, 0), num_files=1)  # fmt: skip
        pair, params = synthesise_pair(settings, 0)
        assert params.regime == regime
        counts[regime] = pair.counts["background_events"]
    assert counts["night"] < 0.5 * counts["day"]


def test_sensor_sizes_are_drawn_per_pair(tmp_path: Path) -> None:
    sizes = ((60, 80), (96, 128))
    settings = small_settings(tmp_path / "mixed", sensor_sizes=sizes, num_files=10)
    manifest = synthesise(settings)
    seen = {
        (pair["parameters"]["height"], pair["parameters"]["width"]) for pair in manifest["pairs"]
    }
    assert seen == set(sizes)
    for pair in manifest["pairs"]:
        events = read_events(tmp_path / "mixed" / pair["input"])
        assert events.sensor_size == (pair["parameters"]["height"], pair["parameters"]["width"])


def test_dark_pairs_have_nothing_to_remove(tmp_path: Path) -> None:
    """``dark_fraction`` pairs have no bright light: input and target are the same events."""
    settings = small_settings(tmp_path, dark_fraction=1.0, num_files=1)
    pair, params = synthesise_pair(settings, 0)
    assert params.lights == [] and pair.counts["input_flare_events"] == 0
    assert len(pair.flare_input) > 0
    assert np.array_equal(pair.flare_input.t, pair.clean_target.t)
    assert np.array_equal(pair.flare_input.x, pair.clean_target.x)
    assert np.array_equal(pair.flare_input.p, pair.clean_target.p)
    # the share does not change the other pairs of a seed
    lit = draw_parameters(small_settings(tmp_path, dark_fraction=0.0), 3)
    some_dark = draw_parameters(small_settings(tmp_path, dark_fraction=0.5), 3)
    assert some_dark.lights in ([], lit.lights)


def test_a_scene_lit_by_mains_light_flickers_and_its_events_stay_in_the_target(
    tmp_path: Path,
) -> None:
    """``scene_flicker``: a still camera on a dark pair (no bright light) by day sees almost
    nothing until mains light on the scene makes its surfaces fire at the flicker frequency; those
    events are scene, so the target keeps them all. The photoreceptors start settled (a warm-up
    before the pair): ON and OFF events alternate from the first cycle on."""
    values = {"dark_fraction": 1.0, "drift_px_per_ms": (0, 0), "vibration_px": (0, 0),
              "max_objects": 0, "duration_ms": 100, "regimes": {"day": 1.0},
              "shot_noise_hz": (0, 0), "leak_hz": (0, 0), "hot_pixels": (0, 0), "num_files": 1,
              "scene_flicker_depth": (0.4, 0.4)}  # fmt: skip
    steady, _ = synthesise_pair(small_settings(tmp_path, **values), 0)
    pair, params = synthesise_pair(small_settings(tmp_path, scene_flicker=1.0, **values), 0)
    lit = params.scene_flicker
    assert lit is not None and lit.depth == pytest.approx(0.4)
    assert min(abs(lit.frequency_hz - 100), abs(lit.frequency_hz - 120)) < 1
    assert len(pair.flare_input) > 20 * max(len(steady.flare_input), 1)
    assert pair.counts["input_flare_events"] == 0
    assert np.array_equal(pair.flare_input.t, pair.clean_target.t)
    # ON events as it brightens, OFF as it dims: the rate of ON minus OFF events swings at the
    # flicker frequency (the rate of all events, at twice that)
    events = pair.flare_input
    rate = np.bincount(events.t // 250, weights=events.p, minlength=400)[:400]
    spectrum = np.abs(np.fft.rfft(rate - rate.mean()))
    frequencies = np.fft.rfftfreq(len(rate), d=250e-6)
    assert abs(frequencies[np.argmax(spectrum)] - lit.frequency_hz) <= 10
    on = pair.flare_input.p > 0
    assert 0.3 < on.mean() < 0.7
    # at dusk a pixel's low-pass (cutoff of a few Hz) would settle from a flicker peak to the
    # mean with a burst of one polarity; the warm-up leaves the first 20 ms like the rest
    dusk, _ = synthesise_pair(
        small_settings(tmp_path, scene_flicker=1.0, **{**values, "regimes": {"dusk": 1.0}}), 0
    )
    per_10_ms = np.bincount(dusk.flare_input.t // 10_000, minlength=10)[:10]
    assert per_10_ms[:2].max() <= 2 * np.median(per_10_ms[2:])


def test_frames_between_the_rendered_ones_are_linear_and_held_outside() -> None:
    frames = np.stack([np.full((2, 3), value, np.float32) for value in (1.0, 3.0, 7.0)])
    frame_times = np.array([0, 10, 20])
    times = np.array([-50, 0, 5, 10, 12, 20, 30])
    out = interpolate_frames(frames, frame_times, times)
    assert out.shape == (7, 2, 3) and out.dtype == np.float32
    assert out[:, 0, 0].tolist() == pytest.approx([1.0, 1.0, 2.0, 3.0, 3.8, 7.0, 7.0])


def test_scene_flicker_follows_a_mains_light_in_view_and_leaves_other_pairs_alone(
    tmp_path: Path,
) -> None:
    settings = small_settings(tmp_path, scene_flicker=1.0, steady_fraction=0.0, pwm_fraction=0.0)
    params = draw_parameters(settings, 0)
    light = params.lights[0]
    assert light.flicker in ("sine", "triangle") and params.scene_flicker is not None
    assert params.scene_flicker.frequency_hz == light.frequency_hz
    assert params.scene_flicker.phase == light.phase
    # the share does not change the rest of a pair, nor pairs without it (own random stream)
    plain = draw_parameters(small_settings(tmp_path, steady_fraction=0.0, pwm_fraction=0.0), 0)
    assert plain.scene_flicker is None and plain.lights == params.lights
    a, _ = synthesise_pair(small_settings(tmp_path, seed=9), 1)
    b, _ = synthesise_pair(small_settings(tmp_path, seed=9, scene_flicker=0.0), 1)
    assert np.array_equal(a.flare_input.t, b.flare_input.t)


def test_synth_command_takes_the_scene_flicker_share_and_depth(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deflare_cli.cli import app

    out = tmp_path / "lit"
    common = ["--num-files", "2", "--duration-ms", "20", "--sensor-size", "60x80"]
    result = CliRunner().invoke(
        app,
        ["synth", str(out), *common, "--scene-flicker", "1", "--scene-flicker-depth", "0.3", "0.3"],
    )
    assert result.exit_code == 0, result.output
    pairs = json.loads((out / "manifest.json").read_text())["pairs"]
    assert [pair["parameters"]["scene_flicker"]["depth"] for pair in pairs] == [0.3, 0.3]
    bad = tmp_path / "bad"
    result = CliRunner().invoke(
        app, ["synth", str(bad), *common, "--scene-flicker-depth", "0.5", "0.1"]
    )
    assert result.exit_code != 0 and "scene_flicker_depth" in result.output
    assert not bad.exists()


def test_scene_flicker_depth_can_depend_on_the_regime() -> None:
    """``scene_flicker_depth_by_regime``: a lamp is most of the light at night and little of it
    by day, so each regime may have its own depth range; a regime without one takes
    ``scene_flicker_depth``, and every other parameter of a pair stays as it was."""
    common = {"out_dir": Path("x"), "seed": 3, "scene_flicker": 1.0,
              "regimes": {"night": 1.0, "dusk": 1.0, "day": 1.0}}  # fmt: skip
    by_regime = {"night": (0.5, 0.5), "day": (0.01, 0.01)}
    plain = SynthSettings(**common, scene_flicker_depth=(0.2, 0.2))
    varied = SynthSettings(**common, scene_flicker_depth=(0.2, 0.2),
                           scene_flicker_depth_by_regime=by_regime)  # fmt: skip
    expected = {"night": 0.5, "dusk": 0.2, "day": 0.01}
    seen = set()
    for index in range(12):
        before, after = draw_parameters(plain, index), draw_parameters(varied, index)
        assert after.scene_flicker.depth == pytest.approx(expected[after.regime])
        assert before.scene_flicker.depth == pytest.approx(0.2)
        before.scene_flicker = after.scene_flicker = None
        assert before == after
        seen.add(after.regime)
    assert seen == {"night", "dusk", "day"}
    with pytest.raises(ValueError, match="scene_flicker_depth_by_regime.dusk"):
        SynthSettings(out_dir=Path("x"), scene_flicker_depth_by_regime={"dusk": (0.3, 0.1)})


def test_a_textured_object_fires_inside_its_outline_as_it_moves() -> None:
    """A plain object changes the light of its outline alone; a textured one (``object_texture``)
    changes its inside too, and its texture moves with it, not with the frame."""
    frames = {}
    for seed in (None, 7):
        moving = MovingObject(
            x=40.0, y=30.0, velocity_px_per_ms=(1.0, 0.0), radius_px=20.0,
            aspect=1.0, disc=False, reflectance=2.0, texture_seed=seed,
        )  # fmt: skip
        shots = [np.full((60, 90), 0.1, np.float32) for _ in range(2)]
        draw_object(shots[0], moving, 0.0, 1.0)
        draw_object(shots[1], moving, 0.003, 1.0)  # 3 px to the right
        frames[seed] = shots
    inside = (slice(16, 45), slice(28, 56))  # 4+ px from the outline at both times
    plain, textured = frames[None], frames[7]
    assert np.array_equal(plain[0][inside], plain[1][inside])
    assert np.abs(np.log(textured[1][inside] / textured[0][inside])).max() > 0.2
    # the same surface, 3 px further on
    assert np.allclose(textured[1][20:40, 35:50], textured[0][20:40, 32:47], rtol=1e-4)


def test_the_object_texture_share_changes_nothing_else(tmp_path: Path) -> None:
    plain = draw_parameters(small_settings(tmp_path, max_objects=6), 2)
    textured = draw_parameters(small_settings(tmp_path, max_objects=6, object_texture=1.0), 2)
    assert plain.objects and all(o.texture_seed is None for o in plain.objects)
    assert all(o.texture_seed is not None for o in textured.objects)
    untextured = [replace(o, texture_seed=None) for o in textured.objects]
    assert untextured == plain.objects and textured.lights == plain.lights


def test_objects_take_their_size_and_speed_ranges(tmp_path: Path) -> None:
    settings = small_settings(tmp_path, max_objects=8, object_radius_px=(30.0, 60.0),
                              object_speed_px_per_ms=(0.5, 0.5))  # fmt: skip
    for index in range(4):
        params = draw_parameters(settings, index)
        for moving in params.objects:
            assert 30 * params.scale <= moving.radius_px <= 60 * params.scale
            assert math.hypot(*moving.velocity_px_per_ms) == pytest.approx(0.5 * params.scale)
    with pytest.raises(ValueError, match="object_radius_px"):
        small_settings(tmp_path, object_radius_px=(40.0, 4.0))


def test_a_bright_lights_glare_fades_to_zero_before_its_template_ends() -> None:
    # Cut off at the template's square edge, a bright halo and its rays left a hard-edged square
    # of flare whose sides fired as straight lines while the camera shook.
    light = LightSource(
        x=0, y=0, kind="point", radius_px=4, aspect=1, peak=3000.0, flicker="steady",
        frequency_hz=100, depth=0, phase=0, halo_radius_px=30, halo_strength=1, num_rays=6,
        ray_angle=0.3, ray_length_px=160, ray_width=2, ray_strength=1,
    )  # fmt: skip
    floor = 0.05  # below this the flare moves a pixel's log intensity by under 5%
    _core, with_glare = light_templates(light, floor)
    edges = np.concatenate([with_glare[0], with_glare[-1], with_glare[:, 0], with_glare[:, -1]])
    assert with_glare.max() > 1000 and edges.max() < floor


def test_surface_texture_covers_half_the_leaves_and_leaves_the_ground_flat(tmp_path: Path) -> None:
    """Real surfaces are textured, so a moving one fires inside its outline too; walls, roads
    and sky stay plain. ``surface_texture`` multiplies a share of the leaves by fine log-normal
    noise and nothing else."""
    params = replace(draw_parameters(small_settings(tmp_path), 0), texture_contrast=0.5,
                     texture_grain_px=2.0)  # fmt: skip
    image, leaves = dead_leaves((120, 160), 0.5, 3.0, 0.5, np.random.default_rng(1), True)
    assert np.array_equal(image, dead_leaves((120, 160), 0.5, 3.0, 0.5, np.random.default_rng(1)))
    assert len(np.unique(image[leaves == -1])) == 1  # the plain ground
    texture = surface_texture(leaves, params)
    assert np.all(texture[leaves == -1] == 1)
    large = [k for k in np.unique(leaves) if k >= 0 and (leaves == k).sum() >= 50]
    spreads = np.array([np.log(texture[leaves == k]).std() for k in large])
    textured = spreads > 0
    assert len(large) > 10 and 0.25 < textured.mean() < 0.75
    assert np.median(spreads[textured]) > 0.3  # the others: exactly 1 everywhere


def test_the_surface_texture_share_changes_nothing_else(tmp_path: Path) -> None:
    plain = draw_parameters(small_settings(tmp_path), 1)
    textured = draw_parameters(small_settings(tmp_path, surface_texture=1.0), 1)
    assert plain.texture_contrast == 0 and textured.texture_contrast > 0
    assert replace(textured, texture_contrast=0.0, texture_grain_px=0.0) == plain


def test_a_textured_scene_fires_inside_its_surfaces(tmp_path: Path) -> None:
    settings = small_settings(tmp_path, regimes={"dusk": 1.0}, dark_fraction=1.0)
    plain, _ = synthesise_pair(settings, 0)
    textured, _ = synthesise_pair(settings.model_copy(update={"surface_texture": 1.0}), 0)
    assert textured.counts["target_events"] > 1.3 * plain.counts["target_events"]


def test_noise_returns_follow_their_shot_noise_event_at_its_pixel() -> None:
    """Each return is the opposite event at a chosen noise event's pixel, 2-7 ms later for most
    (log-normal, median 4 ms), and none falls after the pair's end."""
    rng = np.random.default_rng(0)
    count, duration_us = 20_000, 100_000
    t = np.sort(rng.integers(0, duration_us, count))
    x, y = np.arange(count) % 640, np.arange(count) // 640  # one noise event per pixel
    p = np.where(rng.random(count) < 0.5, 1, -1)
    rt, rx, ry, rp = sensor_module.noise_returns((t, x, y, p), 0.3, duration_us, rng)
    source = ry * 640 + rx  # the index of the noise event at that pixel
    assert np.all(rp == -p[source]) and np.all(rt > t[source]) and rt.max() < duration_us
    delay = rt - t[source]
    assert 2_000 < np.quantile(delay, 0.1) and np.quantile(delay, 0.9) < 7_000
    assert abs(np.median(delay) - 4_000) < 200
    inside = t < duration_us - 10_000  # a return can only be lost past the end
    assert abs(np.isin(np.flatnonzero(inside), source).mean() - 0.3) < 0.02


def test_noise_pairs_give_the_target_opposite_events_at_one_pixel(tmp_path: Path) -> None:
    """Noise returns are sensor noise, so the clean target has them too: its pixels then fire
    the opposite polarity within 20 ms far more often (deflare info's flips)."""
    from deflare_cli.stats import flip_share

    noisy = {"shot_noise_hz": (20.0, 20.0), "leak_hz": (0, 0), "hot_pixels": (0, 0),
             "num_files": 1, "regimes": {"night": 1.0}}  # fmt: skip
    single, params = synthesise_pair(small_settings(tmp_path, **noisy), 0)
    paired, paired_params = synthesise_pair(
        small_settings(tmp_path, noise_pairs=(0.5, 0.5), **noisy), 0
    )
    assert params.noise_pair_share == 0 and paired_params.noise_pair_share == 0.5
    assert replace(paired_params, noise_pair_share=0.0) == params
    assert flip_share(paired.clean_target) > flip_share(single.clean_target) + 0.1
    assert paired.counts["target_events"] > single.counts["target_events"]
