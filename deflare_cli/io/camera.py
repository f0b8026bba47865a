"""Reading camera formats (``.raw`` EVT2/EVT3, ``.dat``, ``.aedat4``, ``.es``, ``.csv``) through
the optional ``faery`` package, chunk by chunk.

A first pass over the file learns its time span and event count and checks every event's
coordinates, keeping nothing; windows are then decoded in time order from a second pass, so a
long recording needs the memory of one window, as HDF5 files do. A file whose timestamps go
backwards is loaded whole and sorted (see :class:`.reader.EventFileReader`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..events import Events, is_time_sorted, make_events
from ..settings import ReadSettings
from .validity import DroppedEvents, check_block, placeable_rows

NO_SIZE = "the file does not say its sensor size: give it with --sensor-size HxW (e.g. 720x1280)"
NO_HEADER_SIZE = (65535, 1)  # (width, height) faery falls back to; no camera is this shape

END = np.iinfo(np.int64).max  # "to the end" for time_slice


class CameraFile:
    """A camera file, its sensor size, span and count, and its events window by window."""

    def __init__(self, path: Path, settings: ReadSettings) -> None:
        self.path = path
        self.dropped = DroppedEvents() if settings.drop_invalid else None
        faery = _import_faery(path)
        header_size = self._decode(lambda: _header_size(faery, path))
        if settings.sensor_size is None and header_size is None:
            raise InputError(path, NO_SIZE)
        self.sensor_size = settings.sensor_size or (header_size[1], header_size[0])
        height, width = self.sensor_size
        if self.dropped is not None:  # faery refuses events off the size it is given
            width = height = NO_HEADER_SIZE[0]
        self._open = lambda: faery.events_stream_from_file(
            path, dimensions_fallback=(width, height)
        )
        self.count, self.first_us, self.last_us, self.is_sorted = 0, 0, -1, True
        self._decode(self._survey)
        if self.count == 0:
            raise InputError(
                path,
                "contains no events"
                if not self.dropped
                else f"contains no event that can be placed ({self.dropped.count:,} left out)",
            )
        self._chunks: Iterator[np.ndarray] | None = None
        self._buffer = self._empty()  # decoded events at or after self._position
        self._position = 0

    def _survey(self) -> None:
        """The first pass: count, span, order; coordinates checked against the sensor (or,
        with ``drop_invalid``, events off it counted as left out)."""
        previous_last, rows = None, 0
        for whole in self._open():
            chunk = self._placeable(whole, rows)
            rows += len(whole)
            if not len(chunk):
                continue
            t = chunk["t"]
            if (previous_last is not None and int(t[0]) < previous_last) or not is_time_sorted(t):
                self.is_sorted = False
            previous_last = int(t[-1])
            low, high = int(t.min()), int(t.max())
            self.first_us = low if self.count == 0 else min(self.first_us, low)
            self.last_us = max(self.last_us, high)
            self.count += len(chunk)

    def read_all(self) -> Events:
        """Every event, in file order."""
        return self._decode(lambda: concat_in_order([self._events(c) for c in self._open()]))

    def window(self, start_us: int, end_us: int) -> Events:
        """Events with ``start_us <= t < end_us`` of a sorted file. Windows asked for in time
        order continue one pass (holding only what the last chunk had past the window); an
        earlier window starts a new pass."""
        if self._chunks is None or start_us < self._position:
            self._chunks, self._buffer = iter(self._open()), self._empty()
        self._position = end_us
        pieces = [self._buffer.time_slice(start_us, END)]
        while not len(pieces[-1]) or int(pieces[-1].t[-1]) < end_us:
            chunk = self._decode(lambda: next(self._chunks, None))
            if chunk is None:
                break
            pieces.append(self._events(chunk).time_slice(start_us, END))
        joined = concat_in_order(pieces)
        self._buffer = joined.time_slice(end_us, END)
        return joined.time_slice(start_us, end_us)

    def _placeable(self, chunk: np.ndarray, first_row: int | None) -> np.ndarray:
        """The chunk, refused if an event cannot be placed, or without such events when they
        are dropped (counted only when ``first_row`` is given: in the first pass)."""
        block = {"t": chunk["t"], "x": chunk["x"], "y": chunk["y"], "p": chunk["on"]}
        if self.dropped is None:
            check_block(block, first_row or 0, self.sensor_size, str(self.path))
            return chunk
        keep = placeable_rows(block, self.sensor_size)
        if first_row is not None:
            self.dropped.add(keep, first_row)
        return chunk if keep.all() else chunk[keep]

    def _events(self, chunk: np.ndarray) -> Events:
        if self.dropped is not None:
            chunk = self._placeable(chunk, None)
        return make_events(
            chunk["t"], chunk["x"], chunk["y"], chunk["on"].astype(np.int8), self.sensor_size
        )

    def _empty(self) -> Events:
        return make_events([], [], [], [], self.sensor_size)

    def _decode(self, work: Callable):
        try:
            return work()
        except InputError:
            raise
        except Exception as error:  # faery raises plain exceptions from its Rust decoders
            hint = (
                "; give the right size with --sensor-size HxW, or leave such events out with "
                "--drop-invalid"
                if "overflow" in str(error)
                else ""
            )
            raise InputError(
                self.path, f"cannot decode {self.path.suffix} file ({error}){hint}"
            ) from None


def concat_in_order(pieces: list[Events]) -> Events:
    """Pieces already in time order, joined (without the sort of ``concat_events``)."""
    pieces = [piece for piece in pieces if len(piece)] or pieces[:1]
    if len(pieces) == 1:
        return pieces[0]
    columns = [np.concatenate([getattr(piece, key) for piece in pieces]) for key in "txyp"]
    return Events(*columns, pieces[0].height, pieces[0].width)


def _import_faery(path: Path):
    try:
        import faery
    except ImportError:
        raise InputError(
            path,
            f"reading {path.suffix} files needs the optional 'faery' package: "
            "pip install 'deflare[formats]'",
        ) from None
    return faery


def _header_size(faery, path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None: a size no camera has comes back only
    where the header gives none."""
    dimensions = faery.events_stream_from_file(
        path, dimensions_fallback=NO_HEADER_SIZE
    ).dimensions()
    return None if dimensions == NO_HEADER_SIZE else dimensions
