"""Small generated event files in every supported layout."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from deflare_cli.events import Events, make_events


@pytest.fixture(autouse=True, scope="session")
def engine_cache(tmp_path_factory) -> Path:
    """Converted models go to a folder of the test session, not the user's cache."""
    import os

    folder = tmp_path_factory.mktemp("engine-cache")
    os.environ["DEFLARE_CACHE_DIR"] = str(folder)
    return folder


def random_events(
    count: int = 2000, duration_us: int = 100_000, size: tuple[int, int] = (48, 64), seed: int = 0
) -> Events:
    """Sorted random events starting at t=0 (the first event) on a small sensor."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, duration_us, count))
    t[0] = 0
    return make_events(
        t,
        rng.integers(0, size[1], count),
        rng.integers(0, size[0], count),
        rng.integers(0, 2, count),
        size,
    )


def write_deflare(path: Path, events: Events, with_size: bool = True) -> Path:
    with h5py.File(path, "w") as h5:
        group = h5.create_group("events")
        for key in "txyp":
            group[key] = getattr(events, key)
        h5.attrs["num_events"] = len(events)
        if with_size:
            h5.attrs["resolution_height"] = events.height
            h5.attrs["resolution_width"] = events.width
    return path


def write_dsec(path: Path, events: Events, t_offset: int = 1_000_000) -> Path:
    """As DSEC stores events: relative u4 times, Blosc/zstd datasets, ms_to_idx, t_offset."""
    relative = events.t - t_offset
    assert relative.min() >= 0
    blosc = hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)
    with h5py.File(path, "w") as h5:
        group = h5.create_group("events")
        group.create_dataset("t", data=relative.astype("u4"), chunks=True, **blosc)
        group.create_dataset("x", data=events.x, chunks=True, **blosc)
        group.create_dataset("y", data=events.y, chunks=True, **blosc)
        group.create_dataset("p", data=(events.p > 0).astype("u1"), chunks=True, **blosc)
        last_ms = int(relative[-1] // 1000) + 1
        ms_to_idx = np.searchsorted(relative, np.arange(last_ms + 1) * 1000, side="left")
        h5.create_dataset("ms_to_idx", data=ms_to_idx.astype("u8"))
        h5.create_dataset("t_offset", data=np.int64(t_offset))
    return path


def write_event_utils(path: Path, events: Events) -> Path:
    with h5py.File(path, "w") as h5:
        group = h5.create_group("events")
        group["ts"] = events.t.astype(np.float64) / 1e6
        group["xs"] = events.x.astype(np.int16)
        group["ys"] = events.y.astype(np.int16)
        group["ps"] = events.p > 0
        h5.attrs["sensor_resolution"] = [events.height, events.width]
    return path


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def same_events(a: Events, b: Events) -> bool:
    return a.sensor_size == b.sensor_size and all(
        np.array_equal(getattr(a, key), getattr(b, key)) for key in "txyp"
    )


@pytest.fixture
def events() -> Events:
    return random_events()


@pytest.fixture
def deflare_file(tmp_path: Path, events: Events) -> Path:
    return write_deflare(tmp_path / "events.h5", events)


def flare_pair(size: tuple[int, int] = (32, 48), seed: int = 0, duration_us: int = 40_000):
    """(input, target) events: a moving edge (target) plus a 100 Hz flickering blob (flare)."""
    rng = np.random.default_rng(seed)
    height, width = size
    t_edge = np.sort(rng.integers(0, duration_us, 3000))
    x_edge = np.clip(
        5 + t_edge * (width - 10) / duration_us + rng.normal(0, 0.5, 3000), 0, width - 1
    )
    y_edge = rng.integers(2, height - 2, 3000)
    t_flare = rng.integers(0, duration_us, 4000)
    cy, cx = rng.integers(6, height - 6), rng.integers(6, width - 6)
    y_flare = np.clip(cy + rng.normal(0, 2.5, 4000), 0, height - 1)
    x_flare = np.clip(cx + rng.normal(0, 2.5, 4000), 0, width - 1)
    p_flare = ((t_flare % 10_000) < 5000).astype(int)
    clean = sort_events(make_events(t_edge, x_edge, y_edge, np.ones(3000), size))
    flare = sort_events(
        make_events(
            np.concatenate([t_edge, t_flare]),
            np.concatenate([x_edge, x_flare]),
            np.concatenate([y_edge, y_flare]),
            np.concatenate([np.ones(3000), p_flare]),
            size,
        )
    )
    return flare, clean


def sort_events(events: Events) -> Events:
    from deflare_cli.events import sort_by_time

    return sort_by_time(events)


def write_pairs(folder: Path, count: int, size: tuple[int, int] = (32, 48), seed: int = 0) -> Path:
    """An E-Deflare style data folder with `count` pairs."""
    flare_dir = folder / "background_with_flare_events"
    clean_dir = folder / "background_with_light_events"
    flare_dir.mkdir(parents=True, exist_ok=True)
    clean_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        flare, clean = flare_pair(size, seed * 1000 + index)
        write_deflare(flare_dir / f"composed_{index:05d}_bg_flare.h5", flare)
        write_deflare(clean_dir / f"composed_{index:05d}_bg_light.h5", clean)
    return folder
