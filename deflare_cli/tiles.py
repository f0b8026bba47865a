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

Two ways in: :func:`run_network` takes whole voxel grids (any caller), and :func:`encode_tiles`
with :func:`run_tiles` builds the windows from the events themselves and hands back only the
regions' cores, for ``deflare`` on sparse streams. Every pass over a whole 1280x720 grid costs
milliseconds per segment on the host (a window of 16 segments is 472 MB of float32), which a
GPU spends on the network itself, so the second way touches no whole grid at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .codec import count_segments
from .events import Events
from .model import frame_density
from .settings import CodecSettings, TileSettings

# (N, B, h, w) voxels and (N,) events per pixel of the whole frame each was cut from (what a
# model with ``input_norm: frame`` scales by; None: they are whole frames) -> (N, B, h, w)
Network = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
Window = tuple[int, int, int, int]  # (top, bottom, left, right) in pixels

# ``auto`` runs tiles only where their windows hold at most this share of the frames' pixels.
# Windows change GroupNorm's statistics (on davis346_emlb_demo tiles at 93% of the pixels
# removed 15% more events than whole frames, all of them scene), so tiles are taken where they
# at least halve the work, and moderately busy scenes keep the whole frame's output. DensityNet's
# tiles are exact, and still pay only below about half: a window costs more per pixel than a
# frame (dense 640x480, windows at 94% of the pixels: 0.25 s per segment, whole frames 0.14 s;
# sparse 1280x720 at 12%: 0.07 s, 0.15 s; the default model, 2026-12-08).
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
    return busy_regions(busy_tiles(voxels, settings).tolist(), height, width, settings)


def busy_regions(
    busy: list[list[list[bool]]], height: int, width: int, settings: TileSettings
) -> list[Region]:
    """:func:`regions` of a (S, rows, cols) map of busy tiles on a ``height x width`` sensor."""
    size = settings.size
    found = []
    for segment, busy_of_segment in enumerate(busy):
        for top, bottom, left, right in _merged(busy_of_segment, settings):
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
        for number, (left, right) in enumerate(runs):
            run = [row, row + 1, left, right]
            # the row's runs still to come count too: a joint that reached over one of them
            # would overlap it (two regions editing the same cells)
            coming = [[row, row + 1, *later] for later in runs[number + 1 :]]
            for rect in open_:
                joint = [rect[0], row + 1, min(rect[2], left), max(rect[3], right)]
                others = [other for other in done + open_ + still_open if other is not rect]
                others += coming
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
    segments, _bins, height, width = voxels.shape
    return _windows_cost_less((segments, height, width), found, settings)


def _windows_cost_less(
    frames: tuple[int, int, int], found: list[Region], settings: TileSettings
) -> bool:
    """:func:`windows_cost_less` for ``frames`` = (segments, height, width)."""
    segments, height, width = frames
    pixels = 0
    for region in found:
        top, bottom, left, right = _window(region, settings.halo or 0, height, width)
        pixels += (bottom - top) * (right - left)
    return pixels <= AUTO_SHARE * segments * height * width


def run_regions(
    network: Network,
    voxels: torch.Tensor,
    found: list[Region],
    settings: TileSettings,
) -> torch.Tensor:
    """(S, B, H, W) voxels -> the network's output on the given regions, the input elsewhere.

    Each region runs in a window of its core and ``halo`` pixels around it, cut at the
    sensor's edges (the whole-frame network sees its convolutions' zero padding there, not
    zero inputs). With ``size`` and ``halo`` multiples of the network's size multiple, the
    windows also keep its pooling grid, so a core matches the whole frame's output for a halo
    of at least the network's reach (up to GroupNorm). Windows of one shape run in batches of
    at most ``pass_pixels``. Each window goes with its segment's
    :func:`~.model.frame_density`.
    """
    output = voxels.clone()
    height, width = voxels.shape[-2:]
    density = frame_density(voxels)
    for chunk in _passes(found, settings, height, width):
        stacked = torch.stack([voxels[r.segment, :, w[0] : w[1], w[2] : w[3]] for r, w in chunk])
        patches = network(stacked, density[[region.segment for region, _ in chunk]])
        for (region, window), patch in zip(chunk, patches, strict=True):
            rows, cols = slice(region.top, region.bottom), slice(region.left, region.right)
            output[region.segment, :, rows, cols] = _core(patch, region, window)
    return output


def _passes(
    found: list[Region], settings: TileSettings, height: int, width: int
) -> list[list[tuple[Region, Window]]]:
    """The regions with their windows, grouped into forward passes: windows of one shape
    together, at most ``pass_pixels`` per pass (one window at least)."""
    groups: dict[tuple[int, int], list[tuple[Region, Window]]] = {}
    for region in found:
        window = _window(region, settings.halo or 0, height, width)
        groups.setdefault((window[1] - window[0], window[3] - window[2]), []).append(
            (region, window)
        )
    passes = []
    for (window_height, window_width), members in groups.items():
        batch = max(settings.pass_pixels // (window_height * window_width), 1)
        passes.extend(members[first : first + batch] for first in range(0, len(members), batch))
    return passes


def _core(patch: torch.Tensor, region: Region, window: Window) -> torch.Tensor:
    """The (B, h, w) cells of ``region``'s core in the (B, window h, window w) ``patch``."""
    top, left = region.top - window[0], region.left - window[2]
    rows, cols = region.bottom - region.top, region.right - region.left
    return patch[:, top : top + rows, left : left + cols]


def _window(region: Region, halo: int, height: int, width: int) -> Window:
    """(top, bottom, left, right) of a region's core with its halo, cut at the sensor's edges."""
    return (max(region.top - halo, 0), min(region.bottom + halo, height),
            max(region.left - halo, 0), min(region.right + halo, width))  # fmt: skip


def run_network(network: Network, voxels: torch.Tensor, settings: TileSettings) -> torch.Tensor:
    """(S, B, H, W) through the network as ``settings.mode`` says: tiles, whole frames, or
    (``auto``) tiles when their windows cover at most half the frames' pixels. Whole frames go
    without a density: a model that needs one takes it from them."""
    if settings.mode == "frame":
        return network(voxels, None)
    found = regions(voxels, settings)
    if settings.mode == "auto" and not windows_cost_less(voxels, found, settings):
        return network(voxels, None)
    return run_regions(network, voxels, found, settings)


@dataclass(frozen=True)
class TiledVoxels:
    """A window of segments encoded only inside the windows the network runs on.

    Attributes:
        t0_us: start of segment 0 in microseconds.
        num_segments: segments in the window.
        sensor_size: (height, width) in pixels.
        density: (S,) :func:`~.model.frame_density` of each segment's whole frame.
        passes: per forward pass, the regions with their windows and the stacked input
            (N, B, window height, window width) float32, as :func:`run_regions` would cut them
            out of the whole grid.
    """

    t0_us: int
    num_segments: int
    sensor_size: tuple[int, int]
    density: torch.Tensor
    passes: list[tuple[list[tuple[Region, Window]], torch.Tensor]]


@dataclass(frozen=True)
class Core:
    """One region's cells before and after the network, (B, h, w) float32 each."""

    region: Region
    input: torch.Tensor
    output: torch.Tensor


def encode_tiles(
    events: Events, codec: CodecSettings, settings: TileSettings
) -> TiledVoxels | None:
    """The windows that :func:`run_network` would run on the voxels of ``events`` (whole
    segments over ``events.time_span()``, as :func:`~.codec.events_to_voxel` encodes them),
    built from the events alone; ``None`` where ``settings`` pick whole frames (``frame``, or
    ``auto`` with windows over half the frames' pixels)."""
    if settings.mode == "frame":
        return None
    t0, end = events.time_span()
    num_segments = count_segments((t0, end), codec.segment_us)
    height, width = events.sensor_size
    bins = (events.t - t0) // codec.bin_us  # bins counted from t0 across segments
    counts = _tile_counts(events, bins, num_segments, codec.num_bins, settings.size)
    busy = counts >= max(settings.min_events, 1)
    found = busy_regions(busy.tolist(), height, width, settings)
    if settings.mode == "auto" and not _windows_cost_less(
        (num_segments, height, width), found, settings
    ):
        return None
    bounds = np.searchsorted(bins, np.arange(num_segments + 1) * codec.num_bins)
    passes = [
        (chunk, _window_voxels(events, bins, bounds, chunk, codec.num_bins))
        for chunk in _passes(found, settings, height, width)
    ]
    density = torch.from_numpy(counts.sum(axis=(1, 2)) / (height * width)).float()
    return TiledVoxels(t0, num_segments, (height, width), density, passes)


def _tile_counts(
    events: Events, bins: np.ndarray, num_segments: int, num_bins: int, size: int
) -> np.ndarray:
    """(S, rows, cols) :func:`event_counts` of the events' voxels: per tile, the sum over its
    cells of |net polarity|, so opposite events in one cell cancel as they do in the grid."""
    height, width = events.sensor_size
    rows, cols = -(-height // size), -(-width // size)
    cells, inverse = np.unique(
        bins * (height * width) + events.y.astype(np.int64) * width + events.x, return_inverse=True
    )
    net = np.abs(np.bincount(inverse, weights=events.p, minlength=len(cells)))
    segment, pixel = cells // (num_bins * height * width), cells % (height * width)
    y, x = np.divmod(pixel, width)
    tile = (segment * rows + y // size) * cols + x // size
    counts = np.bincount(tile, weights=net, minlength=num_segments * rows * cols)
    return counts.reshape(num_segments, rows, cols)


def _window_voxels(
    events: Events,
    bins: np.ndarray,
    bounds: np.ndarray,
    chunk: list[tuple[Region, Window]],
    num_bins: int,
) -> torch.Tensor:
    """(N, B, h, w) voxels of one pass's windows (all of one shape) from the events of their
    segments (``events[bounds[s]:bounds[s + 1]]`` for segment ``s``)."""
    window_height, window_width = chunk[0][1][1] - chunk[0][1][0], chunk[0][1][3] - chunk[0][1][2]
    cells, weights = [], []
    for number, (region, (top, bottom, left, right)) in enumerate(chunk):
        span = slice(bounds[region.segment], bounds[region.segment + 1])
        y, x = events.y[span].astype(np.int64), events.x[span].astype(np.int64)
        inside = (y >= top) & (y < bottom) & (x >= left) & (x < right)
        bin_in_window = number * num_bins + bins[span][inside] - region.segment * num_bins
        cells.append(
            (bin_in_window * window_height + y[inside] - top) * window_width + x[inside] - left
        )
        weights.append(events.p[span][inside])
    size = len(chunk) * num_bins * window_height * window_width
    counts = np.bincount(np.concatenate(cells), np.concatenate(weights), minlength=size)
    return torch.from_numpy(counts.astype(np.float32)).view(
        len(chunk), num_bins, window_height, window_width
    )


def run_tiles(network: Network, tiled: TiledVoxels) -> list[Core]:
    """The network on every pass of ``tiled``: each region's core before and after it (cells
    outside every core pass through unchanged)."""
    cores = []
    for chunk, stacked in tiled.passes:
        outputs = network(stacked, tiled.density[[region.segment for region, _ in chunk]])
        for (region, window), before, after in zip(chunk, stacked, outputs, strict=True):
            cores.append(Core(region, _core(before, region, window), _core(after, region, window)))
    return cores
