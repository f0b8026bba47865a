"""Memory estimates decide the tiling before anything large is allocated (issue 15)."""

from __future__ import annotations

import pytest

from deflare_cli.budget import GB, activation_bytes, check_encode, deflare_bytes, fit_tiling
from deflare_cli.errors import InputError
from deflare_cli.settings import ModelSettings, TileSettings

DEFAULT = ModelSettings(f_maps=[16, 32, 64])
EDEFLARE = ModelSettings(f_maps=[32, 64, 128, 256])
AUTO = TileSettings(halo=24)


def fit(sensor, tiles=AUTO, model=DEFAULT, budget=2.0, on_host=True, segments=1):
    return fit_tiling("rec.h5", model, 8, sensor, segments, tiles, budget, on_host)


def test_whole_frames_are_kept_where_they_fit() -> None:
    assert fit((480, 640)) == AUTO
    assert fit((480, 640), AUTO.model_copy(update={"mode": "frame"})).mode == "frame"


def test_auto_runs_tiles_where_whole_frames_would_not_fit() -> None:
    fitted = fit((720, 1280))
    assert fitted.mode == "tiles" and fitted.pass_pixels == AUTO.pass_pixels
    assert fit((720, 1280), budget=5.0) == AUTO  # a bigger budget allows frames again
    assert fit((720, 1280), on_host=False) == AUTO  # a GPU holds the forward pass itself


def test_fewer_pixels_per_pass_before_refusing() -> None:
    fitted = fit((720, 1280), model=EDEFLARE)
    assert fitted.mode == "tiles" and fitted.pass_pixels < AUTO.pass_pixels
    assert deflare_bytes(EDEFLARE, 8, (720, 1280), 1, fitted) <= 2 * GB


def test_needs_no_tiling_can_meet_name_the_way_round() -> None:
    with pytest.raises(InputError, match=r"rec.h5: deflaring a 3000x3000 sensor .*--memory-gb"):
        fit((3000, 3000))
    with pytest.raises(InputError, match=r"whole 720x1280 frames .*--tiling auto"):
        fit((720, 1280), AUTO.model_copy(update={"mode": "frame"}))
    with pytest.raises(InputError, match="--batch-size"):
        fit((1080, 1920), segments=16)
    assert fit((3000, 3000), budget=4.0).mode == "tiles"


def test_encoding_a_long_recording_at_once_is_refused() -> None:
    check_encode("rec.h5", 50, 8, (480, 640), 2.0)  # one second
    with pytest.raises(InputError, match=r"3,000 segments .*\(--time-window\)"):
        check_encode("rec.h5", 3_000, 8, (480, 640), 2.0)  # a minute: 29 GB of voxels


def test_a_network_that_pools_space_alone_is_counted_with_its_deeper_levels() -> None:
    """Its deeper levels keep all 8 bins: (16, 32, 64) holds 1 + 1/2 + 1/4 of its first
    level's activations instead of 1 + 1/4 + 1/16, so its forward pass weighs 4/3 as much."""
    space = DEFAULT.model_copy(update={"pooling": "xy"})
    frames = [activation_bytes(model, 1, 8, 480, 640) for model in (DEFAULT, space)]
    assert frames[0] == 16 * 4 * 8 * 480 * 640  # unchanged for the networks measured
    assert frames[1] / frames[0] == pytest.approx(4 / 3)
    budget = deflare_bytes(DEFAULT, 8, (480, 640), 1, None) / GB + 0.05
    assert fit((480, 640), budget=budget) == AUTO  # whole frames fit the default network...
    assert fit((480, 640), model=space, budget=budget).mode == "tiles"  # ...but not this one


def test_a_density_net_is_counted_by_its_voxels_not_by_a_u_nets_activations() -> None:
    """DensityNet (the default model) has no activation maps: whole 720x1280 frames, measured
    at 660 MB for one segment per pass and 1,256 MB for four, fit the default budget and are
    estimated above what they took; a U-Net of the same f_maps would not fit."""
    density = ModelSettings(
        backbone="DensityNet", f_maps=[32, 32], input_norm="frame", output="mask"
    )
    assert fit((720, 1280), model=density) == AUTO
    one, four = (deflare_bytes(density, 8, (720, 1280), n, None) for n in (1, 4))
    assert 660e6 < one < 2 * GB and 1256e6 < four
    assert fit((720, 1280), model=ModelSettings(f_maps=[32, 32])).mode == "tiles"
