"""Event file readers and the writer."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import (
    file_digest,
    random_events,
    same_events,
    write_deflare,
    write_dsec,
    write_event_utils,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deflare_cli.errors import InputError, OutputError
from deflare_cli.events import make_events
from deflare_cli.io import atomic_folder, read_events, write_events
from deflare_cli.settings import ReadSettings, WriteSettings


def test_deflare_layout_round_trip(tmp_path: Path, events) -> None:
    path = write_deflare(tmp_path / "a.h5", events)
    digest = file_digest(path)
    assert same_events(read_events(path), events)
    assert file_digest(path) == digest  # the input is never modified


def test_dsec_layout_with_blosc_and_offset(tmp_path: Path) -> None:
    events = random_events(count=5000, duration_us=300_000)
    shifted = make_events(events.t + 1_000_000, events.x, events.y, events.p, events.sensor_size)
    path = write_dsec(tmp_path / "dsec.h5", shifted, t_offset=1_000_000)
    loaded = read_events(path, ReadSettings(sensor_size=events.sensor_size))
    assert same_events(loaded, shifted)  # absolute time = t + t_offset


def test_dsec_time_window_uses_ms_to_idx(tmp_path: Path) -> None:
    events = random_events(count=5000, duration_us=300_000)
    shifted = make_events(events.t + 1_000_000, events.x, events.y, events.p, events.sensor_size)
    path = write_dsec(tmp_path / "dsec.h5", shifted, t_offset=1_000_000)
    window = ReadSettings(sensor_size=events.sensor_size, time_window_ms=(100.5, 220.25))
    loaded = read_events(path, window)
    expected = shifted.time_slice(1_100_500, 1_220_250)
    assert same_events(loaded, expected)
    assert loaded.span_us == (1_100_500, 1_220_250)


def test_dsec_default_sensor_size_is_480x640(tmp_path: Path) -> None:
    events = make_events(np.array([5, 6]), [600, 1], [400, 2], [1, 0], (480, 640))
    path = write_dsec(tmp_path / "dsec.h5", events, t_offset=0)
    assert read_events(path).sensor_size == (480, 640)


def test_event_utils_layout(tmp_path: Path, events) -> None:
    path = write_event_utils(tmp_path / "eu.h5", events)
    assert same_events(read_events(path), events)


def test_deflare_time_window_by_bisection(tmp_path: Path, events) -> None:
    path = write_deflare(tmp_path / "a.h5", events)
    loaded = read_events(path, ReadSettings(time_window_ms=(20, 40)))
    assert same_events(loaded, events.time_slice(20_000, 40_000))


def test_sensor_size_flag_overrides_file(tmp_path: Path, events) -> None:
    path = write_deflare(tmp_path / "a.h5", events)
    assert read_events(path, ReadSettings(sensor_size=(720, 1280))).sensor_size == (720, 1280)
    path = write_deflare(tmp_path / "b.h5", events, with_size=False)
    assert read_events(path, ReadSettings(sensor_size=(48, 64))).sensor_size == (48, 64)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from([0, 1]),
    st.lists(st.tuples(st.integers(0, 10**7), st.booleans()), min_size=1, max_size=50),
)
def test_polarity_maps_one_to_plus_anything_else_to_minus(
    tmp_path: Path, variant: int, rows: list
) -> None:
    t = np.sort(np.array([r[0] for r in rows], np.int64))
    on = np.array([r[1] for r in rows])
    stored = on.astype(np.uint8) if variant == 0 else np.where(on, 1, -1).astype(np.int8)
    path = tmp_path / f"p{variant}.h5"
    with h5py.File(path, "w") as h5:
        h5["events/t"], h5["events/x"], h5["events/y"], h5["events/p"] = t, t * 0, t * 0, stored
    loaded = read_events(path, ReadSettings(sensor_size=(1, 1)))
    assert np.array_equal(loaded.p, np.where(on, 1, -1))


def test_unsorted_timestamps_are_sorted_with_a_warning(tmp_path: Path, events, caplog) -> None:
    order = np.random.default_rng(1).permutation(len(events))
    path = write_deflare(tmp_path / "shuffled.h5", events.select(order))
    digest = file_digest(path)
    with caplog.at_level(logging.WARNING):
        loaded = read_events(path)
    assert "not sorted" in caplog.text
    assert np.array_equal(loaded.t, events.t)
    assert np.array_equal(np.sort(loaded.p), np.sort(events.p))
    assert file_digest(path) == digest
    window = read_events(path, ReadSettings(time_window_ms=(10, 30)))
    assert np.array_equal(window.t, events.time_slice(10_000, 30_000).t)


@pytest.mark.parametrize("compression", ["none", "gzip", "lzf", "zstd"])
def test_writer_layout_and_compression(tmp_path: Path, events, compression: str) -> None:
    path = tmp_path / "out.h5"
    write_events(path, events, WriteSettings(compression=compression), {"note": "x"})
    with h5py.File(path, "r") as h5:
        assert h5["events/t"].dtype == np.int64 and h5["events/x"].dtype == np.uint16
        assert h5["events/y"].dtype == np.uint16 and h5["events/p"].dtype == np.int8
        assert h5.attrs["num_events"] == len(events)
        assert (h5.attrs["resolution_height"], h5.attrs["resolution_width"]) == (48, 64)
        assert h5.attrs["note"] == "x"
    assert same_events(read_events(path), events)


def test_writer_keeps_span(tmp_path: Path) -> None:
    events = make_events(np.array([10, 20]), [0, 1], [0, 1], [1, 0], (4, 4), span_us=(0, 100_000))
    write_events(tmp_path / "s.h5", events)
    with h5py.File(tmp_path / "s.h5") as h5:
        assert (h5.attrs["t_start_us"], h5.attrs["t_end_us"]) == (0, 100_000)
    assert read_events(tmp_path / "s.h5").span_us == (0, 100_000)  # a re-encode keeps the grid
    with h5py.File(tmp_path / "s.h5", "r+") as h5:
        h5.attrs["t_end_us"] = 15  # a span that does not hold the events is ignored
    assert read_events(tmp_path / "s.h5").span_us is None


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path: Path, events) -> None:
    path = tmp_path / "out.h5"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_events(path, events, attrs={"bad": object()})
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_writer_refuses_missing_folder(tmp_path: Path, events) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        write_events(tmp_path / "nope" / "out.h5", events)


@pytest.mark.parametrize("suffix", [".es", ".raw", ".aedat4", ".dat", ".csv"])
def test_camera_formats_through_faery(tmp_path: Path, suffix: str) -> None:
    faery = pytest.importorskip("faery")  # a dev dependency: installed by `make install`
    array = np.zeros(4, dtype=faery.EVENTS_DTYPE)
    array["t"], array["x"], array["y"] = [0, 10, 20, 30], [1, 2, 3, 4], [4, 3, 2, 1]
    array["on"] = [True, False, True, False]
    path = tmp_path / f"rec{suffix}"
    faery.events_stream_from_array(array, dimensions=(64, 48)).to_file(path)
    loaded = read_events(path, ReadSettings(sensor_size=(48, 64)))
    assert np.array_equal(loaded.t, [0, 10, 20, 30])
    assert np.array_equal(loaded.x, [1, 2, 3, 4]) and np.array_equal(loaded.y, [4, 3, 2, 1])
    assert np.array_equal(loaded.p, [1, -1, 1, -1])
    if suffix != ".csv":  # csv has no header with the size
        assert read_events(path).sensor_size == (48, 64)


def test_camera_format_without_faery_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "faery", None)
    path = tmp_path / "rec.raw"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match=r"deflare\[formats\]"):
        read_events(path)


def test_an_atomic_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    """Filled, the staging folder becomes the target (which may exist empty); a failure removes
    it and leaves the target as it was; a full target is refused before anything is made."""
    with atomic_folder(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("a")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "a"
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyboardInterrupt), atomic_folder(tmp_path / "empty") as staging:
        (staging / "b.txt").write_text("b")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]
    assert not any((tmp_path / "empty").iterdir())
    with atomic_folder(tmp_path / "empty") as staging:
        (staging / "c.txt").write_text("c")
    assert (tmp_path / "empty" / "c.txt").read_text() == "c"
    with pytest.raises(InputError, match="not empty"), atomic_folder(tmp_path / "out"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]
