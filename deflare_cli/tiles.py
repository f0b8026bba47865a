"""Running the network only where events are.

Real recordings are sparse: 0.3-9% of pixels fire in a 20 ms segment, so most of a frame is
empty and the network's output there is its input. A segment is cut into a grid of
``size x size`` tiles; a tile with at least ``min_events`` events is busy. Neighbouring busy
tiles are merged into rectangles (:func:`regions`) wherever one window costs fewer pixels than
several, because every window carries ``halo`` pixels of context on each side (zeros beyond
the sensor's edge, as the whole-frame convolutions see), and a halo of 24 px around a 32 px
tile makes its window 6x the tile. Each rectangle runs with its halo, windows of one shape
batched together, and only the rectangle's own core is written back. Every other cell passes
through unchanged.

The halo defaults to the network's reach through its convolutions (24 px for the default
network, 52 px for E-DeflareNet's four levels: ``ModelSettings.reach_px``), so each core sees
the context the whole frame would. GroupNorm's statistics are the one global part: over a
window rather than a mostly empty frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .settings import TileSettings

Network = Callable[[torch.Tensor], torch.Tensor]  # (N, B, h, w) -> (N, B, h, w)

# ``auto`` runs tiles only where their windows hold at most this share of the frames' pixels.
# Windows change GroupNorm's statistics (on davis346_emlb_demo tiles at 93% of the pixels
# removed 15% more events than whole frames, all of them scene), so tiles are taken where they
# at least halve the work, and moderately busy scenes keep the whole frame's output.
AUTO_SHARE = 0.5


@dataclass(frozen=True)
class Region:
    """A rectangle of one segment whose cells go through the network: its core is
    ``[top, bottom) x [left, right)`` in pixels (cut at the sensor's edges)."""

    segment: int
    top: int
    bottom: int
    left: int
    right: int


def event_counts(voxels: torch.Tensor, size: int) -> torch.Tensor:
    """(S, rows, cols) events per tile (at least: opposite events in one cell cancel)."""
    height, width = voxels.shape[-2:]
    rows, cols = math.ceil(height / size), math.ceil(width / size)
    activity = voxels.abs().sum(dim=1)  # (S, H, W)
    activity = F.pad(activity, (0, cols * size - width, 0, rows * size - height))
    return activity.reshape(-1, rows, size, cols, size).sum(dim=(2, 4))


def busy_tiles(voxels: torch.Tensor, settings: TileSettings) -> torch.Tensor:
    """(S, rows, cols) bool: the tiles that hold at least ``min_events`` (and one) events."""
    return event_counts(voxels, settings.size) >= max(settings.min_events, 1)


def regions(voxels: torch.Tensor, settings: TileSettings) -> list[Region]:
    """The rectangles to run: every busy tile lies in exactly one, no two overlap, and no
    window (core and halo) exceeds ``pass_pixels``."""
    height, width = voxels.shape[-2:]
    size = settings.size
    found = []
    for segment, busy in enumerate(busy_tiles(voxels, settings).tolist()):
        for top, bottom, left, right in _merged(busy, settings):
            found.append(Region(segment, top * size, min(bottom * size, height),
                                left * size, min(right * size, width)))  # fmt: skip
    return found


def _merged(busy: list[list[bool]], settings: TileSettings) -> list[list[int]]:
    """Busy tiles of one segment as [top, bottom, left, right) rectangles of tiles, greedily:
    runs of a row join across gaps narrower than two halos, and a run joins the rectangle
    above it where the joint window has no more pixels than the two apart."""
    size, halo = settings.size, settings.halo or 0

    def window(rect: list[int]) -> int:
        return ((rect[1] - rect[0]) * size + 2 * halo) * ((rect[3] - rect[2]) * size + 2 * halo)

    # runs no wider than the side of a square window of a pass: on a busy sensor, rows of
    # squares waste fewer halo pixels than one-tile-high strips the width of the sensor
    widest = max((math.isqrt(settings.pass_pixels) - 2 * halo) // size, 1)
    done: list[list[int]] = []
    open_: list[list[int]] = []  # rectangles that reach the row above
    for row, line in enumerate(busy):
        runs: list[list[int]] = []
        for col, is_busy in enumerate(line):
            if not is_busy:
                continue
            if runs and (col - runs[-1][1]) * size <= 2 * halo and col + 1 - runs[-1][0] <= widest:
                runs[-1][1] = col + 1
            else:
                runs.append([col, col + 1])
        still_open = []
        for left, right in runs:
            run = [row, row + 1, left, right]
            for rect in open_:
                joint = [rect[0], row + 1, min(rect[2], left), max(rect[3], right)]
                others = [other for other in done + open_ + still_open if other is not rect]
                if (left < rect[3] and rect[2] < right
                        and window(joint) <= min(window(rect) + window(run), settings.pass_pixels)
                        and not any(_overlap(joint, other) for other in others)):  # fmt: skip
                    open_.remove(rect)
                    run = joint
                    break
            still_open.append(run)
        done.extend(open_)
        open_ = still_open
    return done + open_


def _overlap(one: list[int], other: list[int]) -> bool:
    return (one[0] < other[1] and other[0] < one[1]
            and one[2] < other[3] and other[2] < one[3])  # fmt: skip


def windows_cost_less(voxels: torch.Tensor, found: list[Region], settings: TileSettings) -> bool:
    """Whether running these regions (with halos) touches at most ``AUTO_SHARE`` of the pixels
    of the whole frames."""
    height, width = voxels.shape[-2:]
    pixels = 0
    for region in found:
        top, bottom, left, right = _window(region, settings.halo or 0, height, width)
        pixels += (bottom - top) * (right - left)
    return pixels <= AUTO_SHARE * voxels.shape[0] * height * width


def run_regions(
    network: Network, voxels: torch.Tensor, found: list[Region], settings: TileSettings
) -> torch.Tensor:
    """(S, B, H, W) voxels -> the network's output on the given regions, the input elsewhere.

    Each region runs in a window of its core and ``halo`` pixels around it, cut at the
    sensor's edges (the whole-frame network sees its convolutions' zero padding there, not
    zero inputs). With ``size`` and ``halo`` multiples of the network's size multiple, the
    windows also keep its pooling grid, so a core matches the whole frame's output for a halo
    of at least the network's reach (up to GroupNorm). Windows of one shape run in batches of
    at most ``pass_pixels``.
    """
    output = voxels.clone()
    height, width = voxels.shape[-2:]
    groups: dict[tuple[int, int], list[tuple[Region, tuple[int, int, int, int]]]] = {}
    for region in found:
        window = _window(region, settings.halo or 0, height, width)
        groups.setdefault((window[1] - window[0], window[3] - window[2]), []).append(
            (region, window)
        )
    for (window_height, window_width), members in groups.items():
        batch = max(settings.pass_pixels // (window_height * window_width), 1)
        for first in range(0, len(members), batch):
            chunk = members[first : first + batch]
            stacked = torch.stack(
                [voxels[r.segment, :, w[0] : w[1], w[2] : w[3]] for r, w in chunk]
            )
            for (region, window), patch in zip(chunk, network(stacked), strict=True):
                rows, cols = slice(region.top, region.bottom), slice(region.left, region.right)
                inside = (slice(rows.start - window[0], rows.stop - window[0]),
                          slice(cols.start - window[2], cols.stop - window[2]))  # fmt: skip
                output[region.segment, :, rows, cols] = patch[:, inside[0], inside[1]]
    return output


def _window(region: Region, halo: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a region's core with its halo, cut at the sensor's edges."""
    return (max(region.top - halo, 0), min(region.bottom + halo, height),
            max(region.left - halo, 0), min(region.right + halo, width))  # fmt: skip


def run_network(network: Network, voxels: torch.Tensor, settings: TileSettings) -> torch.Tensor:
    """(S, B, H, W) through the network as ``settings.mode`` says: tiles, whole frames, or
    (``auto``) tiles when their windows cover at most half the frames' pixels."""
    if settings.mode == "frame":
        return network(voxels)
    found = regions(voxels, settings)
    if settings.mode == "auto" and not windows_cost_less(voxels, found, settings):
        return network(voxels)
    return run_regions(network, voxels, found, settings)
