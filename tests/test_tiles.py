"""Tiles: the network only where events are, the input elsewhere, and a halo that covers the
network's reach so that a tile's core sees what the whole frame would."""

from __future__ import annotations

import pytest
import torch

from deflare_cli.model import TrueResidualUNet3D
from deflare_cli.settings import ModelSettings, TileSettings
from deflare_cli.tiles import active_tiles, event_counts, run_network, run_tiles


def conv_only_network(f_maps: tuple[int, ...]) -> TrueResidualUNet3D:
    """Convolutions and ReLUs without GroupNorm: nothing reaches further than the kernels."""
    torch.manual_seed(0)
    model = TrueResidualUNet3D(ModelSettings(f_maps=f_maps, layer_order="cr")).eval()
    torch.nn.init.normal_(model.backbone.final_conv.weight, 0, 0.1)
    return model


def as_network(model: TrueResidualUNet3D):
    @torch.no_grad()
    def network(voxels: torch.Tensor) -> torch.Tensor:
        return model(voxels[:, None])[:, 0]

    return network


@pytest.mark.parametrize("f_maps", [(8, 16), (16, 32, 64)])
def test_reach_is_what_the_network_reaches(f_maps: tuple[int, ...]) -> None:
    model = conv_only_network(f_maps)
    voxels = torch.zeros(1, 1, 8, 160, 160)
    with torch.no_grad():
        before = model(voxels)
        voxels[0, 0, :, 80, 80] = 1
        changed = (model(voxels) - before).abs().amax(dim=(0, 1, 2)) > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    reach = max(
        80 - int(rows.min()), int(rows.max()) - 80, 80 - int(cols.min()), int(cols.max()) - 80
    )
    assert reach == model.settings.reach_px


def test_tiles_with_a_full_halo_equal_the_whole_frame() -> None:
    model = conv_only_network((16, 32, 64))
    torch.manual_seed(1)
    # 2 segments, 100 x 140: tiles of 32 with partial ones at the right and bottom edges
    voxels = (torch.rand(2, 8, 100, 140) < 0.05).float() * torch.randint(-2, 3, (2, 8, 100, 140))
    settings = TileSettings(mode="tiles", size=32, halo=model.settings.reach_px, min_events=0)
    tiles = active_tiles(voxels, settings)
    assert len(tiles) == 2 * 4 * 5  # every tile holds events
    tiled = run_tiles(as_network(model), voxels, tiles, settings)
    whole = as_network(model)(voxels)
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

    def network(voxels: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(voxels.shape))
        return voxels

    dense = torch.ones(1, 8, 64, 64)
    sparse = torch.zeros(1, 8, 64, 64)
    sparse[0, 0, 0, :10] = 1
    settings = TileSettings(size=32, halo=8, min_events=1)
    run_network(network, dense, settings)
    run_network(network, sparse, settings)
    assert calls == [(1, 8, 64, 64), (1, 8, 40, 40)]  # the tile and its halo, cut at the edges
