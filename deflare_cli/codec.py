"""Events <-> voxel grids.

A voxel grid cuts time into fixed segments (default 20 ms) of ``num_bins`` equal bins (default
8 x 2.5 ms) and sums polarity per (bin, pixel): ``voxel[s, b, y, x] += p``. Segment ``s`` covers
``[t0 + s * segment_us, t0 + (s + 1) * segment_us)``: bins are fixed in absolute time, never
stretched to the events' own span, and no event is dropped (E-Deflare, DESIGN.md "Data").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import DeflareError
from .events import P_DTYPE, T_DTYPE, XY_DTYPE, Events, pixel_index
from .progress import Progress, no_progress
from .settings import CodecSettings

# Events per encoding chunk: large enough to amortise the per-call cost of index_add_, small
# enough that the int32 index temporaries stay in cache-friendly sizes (benchmarks/run.py).
ENCODE_CHUNK = 1 << 20
INT32_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class Voxels:
    """A voxel grid with what is needed to turn it back into events.

    Attributes:
        data: (S, B, H, W) float32 tensor, S segments of B time bins.
        t0_us: start of segment 0 in microseconds.
        segment_us: segment length in microseconds (a multiple of B).
        source: where the grid came from (a file name), for provenance.
    """

    data: torch.Tensor
    t0_us: int
    segment_us: int
    source: str = ""

    def __post_init__(self) -> None:
        if self.data.ndim != 4 or self.data.dtype != torch.float32:
            raise TypeError("Voxels.data must be a float32 tensor of shape (S, B, H, W)")
        if self.segment_us % self.num_bins:
            raise ValueError(f"segment_us {self.segment_us} is not a multiple of {self.num_bins}")

    @property
    def num_segments(self) -> int:
        return int(self.data.shape[0])

    @property
    def num_bins(self) -> int:
        return int(self.data.shape[1])

    @property
    def sensor_size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.data.shape[2]), int(self.data.shape[3])

    @property
    def bin_us(self) -> int:
        return self.segment_us // self.num_bins

    @property
    def span_us(self) -> tuple[int, int]:
        """[start, end) in microseconds covered by all segments."""
        return self.t0_us, self.t0_us + self.num_segments * self.segment_us

    def segment_start_us(self, index: int) -> int:
        """Start of segment ``index`` in microseconds."""
        return self.t0_us + index * self.segment_us

    def segment(self, index: int) -> Voxels:
        """Segment ``index`` alone, as a grid of one segment (1, B, H, W) at its own time."""
        data = self.data[index : index + 1].contiguous()
        return Voxels(data, self.segment_start_us(index), self.segment_us, self.source)


def count_segments(span_us: tuple[int, int], segment_us: int) -> int:
    """Segments needed to cover ``[start, end)``: a 100 ms span gives 5 segments of 20 ms."""
    start, end = span_us
    return max(1, math.ceil((end - start) / segment_us))


def segment_grid(span_us: tuple[int, int], segment_us: int) -> tuple[int, int]:
    """``[start, end)`` of the whole segments that cover ``span_us`` from its start."""
    start = span_us[0]
    return start, start + count_segments(span_us, segment_us) * segment_us


class SegmentWindows(Sequence[tuple[int, tuple[int, int]]]):
    """Batches of ``batch`` whole segments covering a span: (first segment index, window),
    computed when asked for, so a long recording costs no memory for its list of windows."""

    def __init__(self, span_us: tuple[int, int], segment_us: int, batch: int) -> None:
        self.start, self.end = segment_grid(span_us, segment_us)
        self.segment_us, self.batch = segment_us, batch
        self.count = -(-((self.end - self.start) // segment_us) // batch)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[int, tuple[int, int]]:  # type: ignore[override]
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(index)
        first = index * self.batch
        start = self.start + first * self.segment_us
        return first, (start, min(start + self.batch * self.segment_us, self.end))


def segment_windows(span_us: tuple[int, int], segment_us: int, batch: int) -> SegmentWindows:
    """Batches of ``batch`` whole segments covering ``span_us``: (first segment index, window)."""
    return SegmentWindows(span_us, segment_us, batch)


def events_to_voxel(
    events: Events,
    codec: CodecSettings = CodecSettings(),
    progress: Progress = no_progress,
) -> Voxels:
    """Encode events into a (S, B, H, W) net-polarity voxel grid.

    The grid starts at the stream's span start (``events.time_span()``) and has as many segments
    as cover the span, so events at segment edges and at the very end all count:
    ``voxels.data.sum() == events.p.sum()``. The input is not modified.
    """
    if not len(events) and events.span_us is None:
        raise DeflareError("cannot encode an empty event stream: it has no time span")
    t0, end = events.time_span()
    num_segments = count_segments((t0, end), codec.segment_us)
    height, width = events.sensor_size
    shape = (num_segments, codec.num_bins, height, width)
    _check_size(shape, codec.max_voxel_gib)
    _check_inside(events, t0, t0 + num_segments * codec.segment_us)

    grid = torch.zeros(math.prod(shape), dtype=torch.float32)
    # int32 index arithmetic is ~15% faster; fall back to int64 for huge grids or spans.
    small = grid.numel() <= INT32_LIMIT and end - t0 <= INT32_LIMIT
    index_dtype = torch.int32 if small else torch.int64
    total = len(events)
    for start in range(0, total, ENCODE_CHUNK):
        stop = min(start + ENCODE_CHUNK, total)
        flat = _flat_index(events, start, stop, t0, codec.bin_us, index_dtype)
        weights = torch.from_numpy(events.p[start:stop]).to(torch.float32)
        grid.index_add_(0, flat, weights)
        progress("encoding", stop, total)
    return Voxels(grid.view(shape), t0, codec.segment_us)


def _flat_index(
    events: Events, start: int, stop: int, t0: int, bin_us: int, dtype: torch.dtype
) -> torch.Tensor:
    """Flat cell index ``(global_bin * H + y) * W + x`` of events[start:stop]."""
    height, width = events.sensor_size
    relative = torch.from_numpy(events.t[start:stop]) - t0
    global_bin = relative.to(dtype).div_(bin_us, rounding_mode="floor")
    y = torch.from_numpy(events.y[start:stop]).to(dtype)
    x = torch.from_numpy(events.x[start:stop]).to(dtype)
    return global_bin.mul_(height * width).add_(y.mul_(width)).add_(x)


def cell_index(events: Events, t0_us: int, bin_us: int) -> np.ndarray:
    """Flat cell index ``(bin * H + y) * W + x`` of every event (int64), bins counted from
    ``t0_us``: the numpy form of the index the encoder builds in torch."""
    height, width = events.sensor_size
    bins = (events.t - t0_us) // bin_us
    return bins * (height * width) + pixel_index(events)


def _check_size(shape: tuple[int, ...], max_gib: float) -> None:
    gib = math.prod(shape) * 4 / 2**30
    if gib > max_gib:
        raise DeflareError(
            f"the voxel grid {tuple(shape)} would need {gib:.1f} GiB (limit {max_gib:g} GiB): "
            "encode a shorter time window (--time-window START:END in ms) or raise max_voxel_gib"
        )


def _check_inside(events: Events, start_us: int, end_us: int) -> None:
    if len(events) and (events.t[0] < start_us or events.t[-1] >= end_us):
        raise DeflareError(
            f"events from {events.t[0]} to {events.t[-1]} us lie outside the grid's "
            f"[{start_us}, {end_us}) us"
        )


def voxel_to_events(voxels: Voxels, seed: int = 0, progress: Progress = no_progress) -> Events:
    """Decode a voxel grid into events.

    Each cell is rounded to an integer n (half to even) and gives |n| events of polarity sign(n),
    with timestamps drawn uniformly (whole microseconds) inside the cell's time bin from a
    generator seeded with ``seed``. For an integer grid ``events_to_voxel(voxel_to_events(v))``
    equals ``v`` exactly. Events come out sorted by time; the input is not modified.
    """
    rng = np.random.default_rng(seed)
    parts: list[tuple[np.ndarray, ...]] = []
    for segment in range(voxels.num_segments):
        parts.append(decode_segment(voxels, segment, rng))
        progress("decoding", segment + 1, voxels.num_segments)
    t, x, y, p = (np.concatenate(column) for column in zip(*parts, strict=True))
    height, width = voxels.sensor_size
    return Events(t, x, y, p, height, width, voxels.span_us)


def decode_segment(
    voxels: Voxels, segment: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t, x, y, p) of one segment, sorted by time."""
    counts = torch.round(voxels.data[segment]).to(torch.int32).flatten().numpy()
    cells = np.flatnonzero(counts)
    return cells_to_events(cells, counts[cells], voxels.segment_start_us(segment), voxels, rng)


def cells_to_events(
    cells: np.ndarray,
    counts: np.ndarray,
    segment_start_us: int,
    layout: Voxels,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Events for signed counts at flat cells ``(bin * H + y) * W + x`` of one segment laid out
    as ``layout``: |count| events of the count's sign each, timestamps uniform in the bin,
    sorted by time. Returns (t, x, y, p)."""
    height, width = layout.sensor_size
    repeats = np.abs(counts)
    cell_of_event = np.repeat(cells, repeats)
    polarity = np.repeat(np.sign(counts).astype(P_DTYPE), repeats)
    bin_index, pixel = np.divmod(cell_of_event, height * width)
    y, x = np.divmod(pixel, width)
    offset = bin_index * layout.bin_us + rng.integers(0, layout.bin_us, size=len(cell_of_event))
    # Offsets inside a 20 ms segment fit 16 bits, where numpy's stable sort is a radix sort
    # (5x faster than sorting int64 timestamps).
    key = offset.astype(np.uint16) if layout.segment_us <= 2**16 else offset
    order = np.argsort(key, kind="stable")
    t = (segment_start_us + offset[order]).astype(T_DTYPE)
    return t, x[order].astype(XY_DTYPE), y[order].astype(XY_DTYPE), polarity[order]
