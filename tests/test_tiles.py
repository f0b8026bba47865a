"""Tiles: the network only where events are, the input elsewhere, and a halo that covers the
network's reach so that a tile's core sees what the whole frame would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deflare_cli.codec import events_to_voxel
from deflare_cli.events import Events, make_events, sort_by_time
from deflare_cli.model import TrueResidualUNet3D, frame_density
from deflare_cli.settings import CodecSettings, ModelSettings, TileSettings
from deflare_cli.tiles import (
    Region,
    encode_tiles,
    event_counts,
    regions,
    run_network,
    run_regions,
    run_tiles,
    windows_cost_less,
)


def conv_only_network(
    f_maps: tuple[int, ...], pooling: str = "xyt", input_norm: str = "none", order: str = "cr"
) -> TrueResidualUNet3D:
    """Convolutions and ReLUs without GroupNorm (BatchNorm with ``order`` bcr, fixed in eval
    mode): nothing reaches further than the kernels."""
    torch.manual_seed(0)
    settings = ModelSettings(f_maps=f_maps, layer_order=order, pooling=pooling,
                             input_norm=input_norm)  # fmt: skip
    model = TrueResidualUNet3D(settings).eval()
    torch.nn.init.normal_(model.backbone.final_conv.weight, 0, 0.1)
    return model


def density_network(
    coherence_radii: tuple[int, ...] = (), peak_radii: tuple[int, ...] = ()
) -> TrueResidualUNet3D:
    """A DensityNet whose logits vary: its box densities reach its widest radius (a coherence
    box 2 px further)."""
    torch.manual_seed(0)
    settings = ModelSettings(backbone="DensityNet", f_maps=(8, 8), output="mask",
                             input_norm="frame", density_radii=(1, 5, 12),
                             coherence_radii=coherence_radii, peak_radii=peak_radii)  # fmt: skip
    model = TrueResidualUNet3D(settings).eval()
    torch.nn.init.normal_(model.backbone.final_conv.weight, 0, 0.5)
    return model


def as_network(model: TrueResidualUNet3D):
    @torch.no_grad()
    def network(voxels: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
        return model(voxels[:, None], density=density)[:, 0]

    return network


@pytest.mark.parametrize(
    ("f_maps", "pooling"), [((8, 16), "xyt"), ((16, 32, 64), "xyt"), ((8, 8, 8, 8, 8), "xy")]
)
def test_reach_is_what_the_network_reaches(f_maps: tuple[int, ...], pooling: str) -> None:
    model = conv_only_network(f_maps, pooling)
    size = 256  # room for 5 levels' 108 px on each side
    centre = size // 2
    voxels = torch.zeros(1, 1, 8, size, size)
    with torch.no_grad():
        before = model(voxels)
        voxels[0, 0, :, centre, centre] = 1
        changed = (model(voxels) - before).abs().amax(dim=(0, 1, 2)) > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    reach = max(centre - int(rows.min()), int(rows.max()) - centre,
                centre - int(cols.min()), int(cols.max()) - centre)  # fmt: skip
    assert reach == model.settings.reach_px


@pytest.mark.parametrize(
    ("coherence_radii", "peak_radii", "expected"),
    [((), (), 12), ((3, 12), (), 14), ((), (4, 16), 16)],
)
def test_density_net_reaches_its_widest_box(
    coherence_radii: tuple[int, ...], peak_radii: tuple[int, ...], expected: int
) -> None:
    model = density_network(coherence_radii, peak_radii)
    reach = model.settings.reach_px
    voxels = torch.zeros(1, 1, 8, 64, 64)
    voxels[0, 0, 2, 32, 32] = 1
    voxels[0, 0, 3] = (torch.rand(64, 64) < 0.3).float()  # events whose scores may change
    with torch.no_grad():
        before = model(voxels, raw=True, density=torch.tensor([0.1]))
        voxels[0, 0, 2, 32, 32] = 2
        changed = (model(voxels, raw=True, density=torch.tensor([0.1])) - before).abs()
    rows, cols = torch.nonzero(changed.amax(dim=(0, 1, 2)) > 0, as_tuple=True)
    assert int(rows.min()) == 32 - reach and int(cols.max()) == 32 + reach
    assert reach == expected


@pytest.mark.parametrize(
    ("input_norm", "order"),
    [("none", "cr"), ("frame", "cr"), ("frame", "bcr"), ("frame", "DensityNet"),
     ("frame", "DensityNet coherence"), ("frame", "DensityNet peak")],
)  # fmt: skip
def test_tiles_with_a_full_halo_equal_the_whole_frame(input_norm: str, order: str) -> None:
    # with input_norm frame, each window is scaled by its whole segment's density, not its own
    if order.startswith("DensityNet"):
        model = density_network((3, 12) if "coherence" in order else (),
                                (4, 16) if "peak" in order else ())  # fmt: skip
    else:
        model = conv_only_network((16, 32, 64), input_norm=input_norm, order=order)
    torch.manual_seed(1)
    # 2 segments, 100 x 140: tiles of 32 with partial ones at the right and bottom edges
    voxels = (torch.rand(2, 8, 100, 140) < 0.05).float() * torch.randint(-2, 3, (2, 8, 100, 140))
    voxels[1, :, :50] *= 4  # the segments' densities differ
    whole = as_network(model)(voxels, None)  # whole frames: the model takes their density
    for pass_pixels in (80 * 80, 100 * 140):  # one tile per window; merged windows
        settings = TileSettings(mode="tiles", size=32, halo=model.settings.reach_px,
                                min_events=0, pass_pixels=pass_pixels)  # fmt: skip
        found = regions(voxels, settings)
        covered = torch.zeros(2, 100, 140, dtype=torch.int64)
        for region in found:
            covered[region.segment, region.top : region.bottom, region.left : region.right] += 1
        assert torch.equal(covered, torch.ones_like(covered))  # every cell once
        tiled = run_regions(as_network(model), voxels, found, settings)
        assert torch.allclose(tiled, whole, atol=1e-4)


def test_quiet_tiles_pass_through_unchanged() -> None:
    model = conv_only_network((8, 16))
    voxels = torch.zeros(1, 8, 64, 64)
    voxels[0, 3, 5:9, 5:9] = 1  # 16 events in the top-left tile
    voxels[0, 2, 40, 40] = 1  # one lone event in the bottom-right tile
    settings = TileSettings(mode="tiles", size=32, halo=16, min_events=8)
    assert event_counts(voxels, 32)[0].tolist() == [[16, 0], [0, 1]]
    output = run_network(as_network(model), voxels, settings)
    assert torch.equal(output[..., 32:, :], voxels[..., 32:, :])  # lone event: not run
    assert torch.equal(output[..., :32, 32:], voxels[..., :32, 32:])
    assert not torch.equal(output[..., :32, :32], voxels[..., :32, :32])
    assert torch.equal(voxels[0, 2, 40, 40], torch.tensor(1.0))  # the input is not modified


def test_auto_runs_whole_frames_when_tiles_would_cost_more() -> None:
    calls = []

    def network(voxels: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(voxels.shape))
        return voxels

    dense = torch.ones(1, 8, 64, 64)
    sparse = torch.zeros(1, 8, 64, 64)
    sparse[0, 0, 0, :10] = 1
    settings = TileSettings(size=32, halo=8, min_events=1)
    run_network(network, dense, settings)
    run_network(network, sparse, settings)
    assert calls == [(1, 8, 64, 64), (1, 8, 40, 40)]  # the tile and its halo, cut at the edges


def busy_map(rows: list[str], size: int = 32) -> torch.Tensor:
    """One segment's voxels with one busy tile where a row string has an ``x``."""
    voxels = torch.zeros(1, 8, len(rows) * size, len(rows[0]) * size)
    for row, line in enumerate(rows):
        for col, mark in enumerate(line):
            if mark == "x":
                voxels[0, 0, row * size, col * size] = 16
    return voxels


def rectangles(voxels: torch.Tensor, **settings) -> set[tuple[int, int, int, int]]:
    found = regions(voxels, TileSettings(size=32, min_events=8, **settings))
    return {(r.top // 32, r.bottom // 32, r.left // 32, r.right // 32) for r in found}


def test_neighbouring_busy_tiles_share_one_window() -> None:
    block = busy_map(["x.x...", "xxx...", "......", ".....x"])
    # the halo (24 px) is wider than half a tile: the gap in the top row is joined, the
    # 3x2 block is one window, the lone tile far away another
    assert rectangles(block, halo=24) == {(0, 2, 0, 3), (3, 4, 5, 6)}
    # without a halo nothing is gained by joining: every run stays apart
    assert rectangles(block, halo=0) == {(0, 1, 0, 1), (0, 1, 2, 3), (1, 2, 0, 3), (3, 4, 5, 6)}
    # a window may not exceed the pixels of a pass: the block is cut into narrower ones
    pixels = (32 + 48) * (3 * 32 + 48) - 1  # one row of three tiles and its halo, less one
    cut = rectangles(block, halo=24, pass_pixels=pixels)
    assert all(((bottom - top) * 32 + 48) * ((right - left) * 32 + 48) <= pixels
               for top, bottom, left, right in cut)  # fmt: skip
    assert len(cut) > 2


def covered_once(voxels: torch.Tensor, found: list[Region]) -> bool:
    """Whether the regions cover every busy tile and no cell twice."""
    covered = torch.zeros(voxels.shape[0], *voxels.shape[-2:], dtype=torch.int64)
    for r in found:
        covered[r.segment, r.top : r.bottom, r.left : r.right] += 1
    busy = voxels.abs().sum(dim=1) > 0
    return int(covered.max()) <= 1 and bool((covered[busy] == 1).all())


def test_a_joint_window_never_reaches_over_a_later_run_of_its_row() -> None:
    """Row 1's first run joins the wide rectangle above; the joint then spans the gap to the
    row's second run, which must not become a region of its own over the same cells (it did:
    on gen3_sparklers_night two regions overlapped, and the tiled decoder edited their shared
    cells twice)."""
    voxels = busy_map(["xxxxxx", "xx..xx"])
    found = regions(voxels, TileSettings(size=32, halo=24, min_events=8))
    assert covered_once(voxels, found)
    rng = np.random.default_rng(0)
    for _ in range(200):  # random busy maps: every busy tile in exactly one region
        rows = ["".join(rng.choice([".", "x"], 9, p=[0.6, 0.4])) for _ in range(7)]
        voxels = busy_map(rows)
        halo = int(rng.choice([0, 8, 24, 56]))
        assert covered_once(
            voxels, regions(voxels, TileSettings(size=32, halo=halo, min_events=8))
        ), rows


def test_merged_windows_touch_fewer_pixels_than_tiles_apart() -> None:
    voxels = busy_map(["......", ".xxx..", ".xxx..", "......", "......", "......"])
    merged = regions(voxels, TileSettings(size=32, halo=24, min_events=8))
    apart = [Region(0, r * 32, r * 32 + 32, c * 32, c * 32 + 32) for r in (1, 2) for c in (1, 2, 3)]
    assert len(merged) == 1
    settings = TileSettings(size=32, halo=24)
    # one window of (3*32 + 48) x (2*32 + 48) = 16,128 pixels, under half the frame (18,432);
    # the six tiles apart take 80 x 80 each, 38,400 in all, more than half
    assert windows_cost_less(voxels, merged, settings)
    assert not windows_cost_less(voxels, apart, settings)


def clustered_events(size: tuple[int, int] = (100, 140), seed: int = 0) -> Events:
    """Two 20 ms segments on a sensor with partial edge tiles: blobs of events, stray noise,
    and in one otherwise empty tile 20 positive and 20 negative events in one cell, which
    cancel in the grid (so that tile holds no events there)."""
    rng = np.random.default_rng(seed)
    height, width = size
    columns = []
    for _ in range(6):  # blobs of 60 events, each in one segment
        start = rng.integers(0, 2) * 20_000
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        columns.append((start + rng.integers(0, 20_000, 60),
                        np.clip(cx + rng.normal(0, 4, 60), 0, width - 1),
                        np.clip(cy + rng.normal(0, 4, 60), 0, height - 1),
                        rng.choice([-1, 1], 60)))  # fmt: skip
    columns.append((rng.integers(0, 40_000, 40), rng.integers(0, width, 40),
                    rng.integers(0, height, 40), rng.choice([-1, 1], 40)))  # fmt: skip
    columns.append((np.full(40, 1_000), np.full(40, 100), np.full(40, 97), np.repeat([1, -1], 20)))
    t, x, y, p = (np.concatenate(column) for column in zip(*columns, strict=True))
    return sort_by_time(make_events(t, x, y, p, size, span_us=(0, 40_000)))


@pytest.mark.parametrize("input_norm", ["none", "frame"])
def test_tiles_encoded_from_events_are_those_of_the_grid(input_norm: str) -> None:
    events, codec = clustered_events(), CodecSettings()
    voxels = events_to_voxel(events, codec).data
    network = as_network(conv_only_network((8, 16), input_norm=input_norm))
    settings = TileSettings(mode="tiles", size=32, halo=16, min_events=8)
    found = regions(voxels, settings)
    assert len(found) >= 2 and event_counts(voxels, 32)[0, 3, 3] == 0  # the cancelling cell's
    assert not any(r.segment == 0 and r.top <= 97 < r.bottom and r.left <= 100 < r.right
                   for r in found)  # fmt: skip
    tiled = encode_tiles(events, codec, settings)
    assert tiled is not None and tiled.num_segments == 2 and tiled.t0_us == 0
    assert torch.allclose(tiled.density, frame_density(voxels))
    whole = run_regions(network, voxels, found, settings)
    cores = run_tiles(network, tiled)
    assert {core.region for core in cores} == set(found) and len(cores) == len(found)
    for core in cores:
        cells = (core.region.segment, slice(None), slice(core.region.top, core.region.bottom),
                 slice(core.region.left, core.region.right))  # fmt: skip
        assert torch.equal(core.input, voxels[cells])
        assert torch.allclose(core.output, whole[cells], rtol=1e-5, atol=1e-6)
        assert not torch.equal(core.output, core.input)


def test_tiles_from_events_leave_whole_frames_to_the_grid() -> None:
    events, codec = clustered_events(), CodecSettings()
    assert encode_tiles(events, codec, TileSettings(mode="frame")) is None
    # every tile busy: windows cover the frames, so auto runs them whole
    assert encode_tiles(events, codec, TileSettings(mode="auto", size=32, min_events=0)) is None
    sparse = clustered_events(size=(256, 320))  # the same blobs on a larger sensor
    assert encode_tiles(sparse, codec, TileSettings(mode="auto", size=32, halo=16)) is not None
