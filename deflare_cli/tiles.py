"""Running the network only where events are.

Real recordings are sparse: 0.3-9% of pixels fire in a 20 ms segment, so most of a frame is
empty and the network's output there is its input. A segment is cut into a grid of
``size x size`` tiles; each tile with at least ``min_events`` events is run with ``halo`` pixels
of its neighbourhood around it (zeros beyond the sensor's edge, as the whole-frame convolutions
see), the tiles of all segments of a window batched together, and only the tile's own core is
written back. Every other cell passes through unchanged.

The halo defaults to the network's reach through its convolutions (24 px for the default
network, 52 px for E-DeflareNet's four levels: ``ModelSettings.reach_px``), so each core sees
the context the whole frame would. GroupNorm's statistics are the one global part: over a tile
rather than a mostly empty frame, closer to the 128 x 128 crops the network was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .settings import TileSettings

Network = Callable[[torch.Tensor], torch.Tensor]  # (N, B, h, w) -> (N, B, h, w)


@dataclass(frozen=True)
class Tile:
    """One tile of one segment: its core is ``[top, top + size) x [left, left + size)``."""

    segment: int
    top: int
    left: int


def event_counts(voxels: torch.Tensor, size: int) -> torch.Tensor:
    """(S, rows, cols) events per tile (at least: opposite events in one cell cancel)."""
    height, width = voxels.shape[-2:]
    rows, cols = math.ceil(height / size), math.ceil(width / size)
    activity = voxels.abs().sum(dim=1)  # (S, H, W)
    activity = F.pad(activity, (0, cols * size - width, 0, rows * size - height))
    return activity.reshape(-1, rows, size, cols, size).sum(dim=(2, 4))


def active_tiles(voxels: torch.Tensor, settings: TileSettings) -> list[Tile]:
    """The tiles of every segment that hold at least ``min_events`` (and one) events."""
    counts = event_counts(voxels, settings.size)
    needed = max(settings.min_events, 1)
    picked = torch.nonzero(counts >= needed).tolist()
    return [Tile(segment, row * settings.size, col * settings.size) for segment, row, col in picked]


def tiles_cost_less(voxels: torch.Tensor, tiles: list[Tile], settings: TileSettings) -> bool:
    """Whether running these tiles (with halos) touches fewer pixels than the whole frames."""
    side = settings.size + 2 * (settings.halo or 0)
    frames = voxels.shape[0] * voxels.shape[-2] * voxels.shape[-1]
    return len(tiles) * side * side < frames


def run_tiles(
    network: Network, voxels: torch.Tensor, tiles: list[Tile], settings: TileSettings
) -> torch.Tensor:
    """(S, B, H, W) voxels -> the network's output on the given tiles, the input elsewhere.

    Each tile runs in a window of its core and ``halo`` pixels around it, cut at the sensor's
    edges (the whole-frame network sees its convolutions' zero padding there, not zero
    inputs). With ``size`` and ``halo`` multiples of the network's size multiple, the windows
    also keep its pooling grid, so a core matches the whole frame's output for a halo of at
    least the network's reach (up to GroupNorm). Windows of one shape run in batches.
    """
    output = voxels.clone()
    height, width = voxels.shape[-2:]
    groups: dict[tuple[int, int], list[tuple[Tile, tuple[int, int, int, int]]]] = {}
    for tile in tiles:
        window = _window(tile, settings, height, width)
        groups.setdefault((window[1] - window[0], window[3] - window[2]), []).append((tile, window))
    for members in groups.values():
        for first in range(0, len(members), settings.batch):
            chunk = members[first : first + settings.batch]
            batch = torch.stack([voxels[t.segment, :, w[0] : w[1], w[2] : w[3]] for t, w in chunk])
            for (tile, window), patch in zip(chunk, network(batch), strict=True):
                _write_core(output, tile, window, patch, settings.size)
    return output


def _window(tile: Tile, settings: TileSettings, height: int, width: int) -> tuple[int, ...]:
    """(top, bottom, left, right) of a tile's core with its halo, cut at the sensor's edges."""
    halo = settings.halo or 0
    top, left = max(tile.top - halo, 0), max(tile.left - halo, 0)
    bottom = min(tile.top + settings.size + halo, height)
    right = min(tile.left + settings.size + halo, width)
    return top, bottom, left, right


def _write_core(
    output: torch.Tensor, tile: Tile, window: tuple[int, ...], patch: torch.Tensor, size: int
) -> None:
    bottom, right = min(tile.top + size, output.shape[-2]), min(tile.left + size, output.shape[-1])
    rows = slice(tile.top - window[0], bottom - window[0])
    cols = slice(tile.left - window[2], right - window[2])
    output[tile.segment, :, tile.top : bottom, tile.left : right] = patch[:, rows, cols]


def run_network(network: Network, voxels: torch.Tensor, settings: TileSettings) -> torch.Tensor:
    """(S, B, H, W) through the network as ``settings.mode`` says: tiles, whole frames, or
    (``auto``) tiles when they cover less than the frames."""
    if settings.mode == "frame":
        return network(voxels)
    tiles = active_tiles(voxels, settings)
    if settings.mode == "auto" and not tiles_cost_less(voxels, tiles, settings):
        return network(voxels)
    return run_tiles(network, voxels, tiles, settings)
