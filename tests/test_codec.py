"""The events <-> voxel codec: properties a user relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_events
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deflare_cli.codec import (
    Voxels,
    count_segments,
    events_to_voxel,
    segment_grid,
    segment_windows,
    voxel_to_events,
)
from deflare_cli.errors import DeflareError
from deflare_cli.events import Events, make_events
from deflare_cli.settings import CodecSettings

SIZE = (6, 7)


@st.composite
def event_streams(draw: st.DrawFn) -> Events:
    count = draw(st.integers(1, 300))
    t = np.sort(draw(arrays(np.int64, count, elements=st.integers(0, 250_000))))
    x = draw(arrays(np.int64, count, elements=st.integers(0, SIZE[1] - 1)))
    y = draw(arrays(np.int64, count, elements=st.integers(0, SIZE[0] - 1)))
    p = draw(arrays(np.int64, count, elements=st.sampled_from([0, 1])))
    return make_events(t, x, y, p, SIZE)


@given(event_streams())
def test_voxel_sum_equals_polarity_sum(events: Events) -> None:
    voxels = events_to_voxel(events)
    assert voxels.data.sum().item() == events.p.astype(np.int64).sum()


@given(event_streams())
def test_every_event_lands_in_its_own_bin_and_pixel(events: Events) -> None:
    voxels = events_to_voxel(events)
    expected = np.zeros(tuple(voxels.data.shape), np.int64)
    global_bin = (events.t - voxels.t0_us) // voxels.bin_us
    np.add.at(
        expected,
        (global_bin // voxels.num_bins, global_bin % voxels.num_bins, events.y, events.x),
        events.p,
    )
    assert np.array_equal(voxels.data.numpy().astype(np.int64), expected)


@given(event_streams())
def test_encoding_leaves_input_unchanged(events: Events) -> None:
    before = {key: getattr(events, key).copy() for key in "txyp"}
    events_to_voxel(events)
    assert all(np.array_equal(before[key], getattr(events, key)) for key in "txyp")


@settings(max_examples=50)
@given(
    arrays(np.int64, (3, 8, 4, 5), elements=st.integers(-6, 6)),
    st.integers(0, 10**9),
    st.integers(0, 2**31),
)
def test_encode_of_decode_is_identity_for_integer_voxels(
    grid: np.ndarray, t0_us: int, seed: int
) -> None:
    voxels = Voxels(torch.from_numpy(grid.astype(np.float32)), t0_us, 20_000)
    decoded = voxel_to_events(voxels, seed=seed)
    assert len(decoded) == np.abs(grid).sum()
    assert np.all(np.diff(decoded.t) >= 0)
    again = events_to_voxel(decoded)
    assert again.t0_us == t0_us
    assert torch.equal(again.data, voxels.data)


def test_decoding_leaves_voxels_unchanged() -> None:
    data = torch.tensor([[[[2.6, -1.4], [0.2, -3.0]]]], dtype=torch.float32).repeat(1, 8, 1, 1)
    voxels = Voxels(data.clone(), 0, 20_000)
    voxel_to_events(voxels)
    assert torch.equal(voxels.data, data)


def test_decode_rounds_cells_and_is_seeded() -> None:
    data = torch.zeros(1, 8, 2, 2)
    data[0, 3, 1, 0] = 2.6  # -> 3 positive events in bin 3 (7500..10000 us)
    data[0, 5, 0, 1] = -1.4  # -> 1 negative event in bin 5
    voxels = Voxels(data, 1000, 20_000)
    first, second = voxel_to_events(voxels, seed=7), voxel_to_events(voxels, seed=7)
    assert all(np.array_equal(getattr(first, k), getattr(second, k)) for k in "txyp")
    positive = first.p > 0
    assert positive.sum() == 3 and (~positive).sum() == 1
    assert np.all((first.t[positive] >= 1000 + 7500) & (first.t[positive] < 1000 + 10_000))
    assert np.all(first.x[positive] == 0) and np.all(first.y[positive] == 1)
    other = voxel_to_events(voxels, seed=8)
    assert not np.array_equal(first.t, other.t)


def test_hundred_ms_file_gives_five_segments() -> None:
    events = random_events(duration_us=100_000)
    assert events.time_span() == (0, int(events.t[-1]) + 1)
    assert events_to_voxel(events).num_segments == 5
    assert count_segments((0, 100_000), 20_000) == 5
    assert count_segments((0, 100_001), 20_000) == 6


def test_events_on_segment_edges_and_at_the_end_are_counted() -> None:
    t = np.array([0, 2499, 2500, 19_999, 20_000, 39_999, 100_000])
    events = make_events(t, np.zeros(7), np.zeros(7), np.ones(7), SIZE)
    voxels = events_to_voxel(events)
    assert voxels.num_segments == 6  # [0, 120 ms) holds t = 100 ms
    grid = voxels.data[:, :, 0, 0]
    assert grid[0, 0] == 2 and grid[0, 1] == 1 and grid[0, 7] == 1
    assert grid[1, 0] == 1 and grid[1, 7] == 1 and grid[5, 0] == 1
    assert grid.sum() == 7


def test_bins_are_fixed_in_absolute_time_not_stretched() -> None:
    # Two events 1 ms apart fall in one 2.5 ms bin, however short the stream.
    events = make_events(np.array([500, 1500]), [1, 1], [1, 1], [1, 1], SIZE)
    voxels = events_to_voxel(events)
    assert voxels.num_segments == 1
    assert voxels.data[0, 0, 1, 1] == 2 and voxels.data.abs().sum() == 2


def test_span_keeps_empty_trailing_segments() -> None:
    events = make_events(np.array([10]), [0], [0], [1], SIZE, span_us=(0, 100_000))
    assert events_to_voxel(events).num_segments == 5


def test_other_bin_counts_and_segment_lengths() -> None:
    events = random_events(duration_us=50_000)
    codec = CodecSettings(num_bins=5, segment_us=10_000)
    voxels = events_to_voxel(events, codec)
    assert voxels.data.shape[:2] == (5, 5)
    assert voxels.data.sum().item() == events.p.sum()


def test_empty_stream_without_span_is_refused() -> None:
    empty = make_events(np.array([], np.int64), [], [], [], SIZE)
    with pytest.raises(DeflareError, match="empty"):
        events_to_voxel(empty)


def test_oversized_grid_is_refused_with_advice() -> None:
    events = make_events(np.array([0, 10**10]), [0, 0], [0, 0], [1, 1], (480, 640))
    with pytest.raises(DeflareError, match="--time-window"):
        events_to_voxel(events)


def test_bins_must_divide_the_segment() -> None:
    with pytest.raises(ValueError, match="multiple of num_bins"):
        CodecSettings(num_bins=7, segment_us=20_000)


def test_segment_windows_cover_the_span_in_batches() -> None:
    assert segment_grid((1000, 101_000), 20_000) == (1000, 101_000)
    assert segment_grid((1000, 101_001), 20_000) == (1000, 121_000)
    windows = segment_windows((0, 100_000), 20_000, 2)
    assert list(windows) == [(0, (0, 40_000)), (2, (40_000, 80_000)), (4, (80_000, 100_000))]
    assert len(windows) == 3 and windows[-1] == windows[2] == (4, (80_000, 100_000))
    with pytest.raises(IndexError):
        windows[3]
    # computed on demand: a year of 20 ms segments costs nothing until read
    year = segment_windows((0, 365 * 86_400_000_000), 20_000, 1)
    assert len(year) == 1_576_800_000 and year[len(year) - 1][1][1] == 365 * 86_400_000_000
