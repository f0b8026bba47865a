"""Writing event files in the deflare layout, piece by piece and atomically.

``/events/{t,x,y,p}`` (int64 us, uint16, uint16, int8 +-1) with root attributes ``num_events``,
``resolution_height``, ``resolution_width``, the stream's span (``t_start_us``, ``t_end_us``)
when known, and any provenance attributes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import hdf5plugin
import numpy as np

from ..events import T_DTYPE, XY_DTYPE, Events
from ..settings import WriteSettings
from .files import atomic_output

WRITE_CHUNK = 1 << 18  # HDF5 chunk length (events): datasets grow by appends


def write_events(
    target: str | Path | BinaryIO,
    events: Events,
    settings: WriteSettings = WriteSettings(),
    attrs: dict[str, Any] | None = None,
    columns: dict[str, np.ndarray] | None = None,
) -> None:
    """Write events in the deflare layout, atomically (a temp file renamed into place).

    ``/events/{t,x,y,p}`` (int64 us, uint16, uint16, int8 +-1) with root attributes
    ``num_events``, ``resolution_height``, ``resolution_width``, the stream's span
    (``t_start_us``, ``t_end_us``) when known, and any ``attrs`` (e.g. provenance).
    ``columns`` adds per-event datasets beside them (e.g. ``is_flare``), which readers ignore.
    A stream target (stdout) receives the finished file's bytes.
    """
    for name, column in (columns or {}).items():
        if name in ("t", "x", "y", "p") or len(column) != len(events):
            raise ValueError(f"column {name!r} must be new and hold one value per event")
    with EventFileWriter(target, events.sensor_size, settings) as writer:
        writer.append(events)
        for name, column in (columns or {}).items():
            writer.add_column(name, column)
        writer.finish(events.span_us, attrs)


class EventFileWriter:
    """Writes a deflare-layout event file piece by piece, atomically.

    ``append`` events in time order, then ``finish``; the file appears under its name only when
    the ``with`` block ends without error. Otherwise nothing is left behind.
    """

    def __init__(
        self,
        target: str | Path | BinaryIO,
        sensor_size: tuple[int, int],
        settings: WriteSettings = WriteSettings(),
    ) -> None:
        self.target = target
        self.sensor_size = sensor_size
        self.settings = settings
        self.count = 0
        self._finished = False

    def __enter__(self) -> EventFileWriter:
        self._output = atomic_output(self.target)
        temp_path = self._output.__enter__()
        try:
            self._h5 = h5py.File(temp_path, "w")
            group = self._h5.create_group("events")
            options = _compression_options(self.settings)
            for key, dtype in (("t", T_DTYPE), ("x", XY_DTYPE), ("y", XY_DTYPE), ("p", np.int8)):
                group.create_dataset(key, shape=(0,), maxshape=(None,), dtype=dtype, **options)
        except BaseException:
            self._output.__exit__(*sys.exc_info())
            raise
        return self

    def append(self, events: Events) -> None:
        """Add events (later than those already written)."""
        if events.sensor_size != self.sensor_size:
            raise ValueError(f"sensor size {events.sensor_size} != {self.sensor_size}")
        new_count = self.count + len(events)
        for key in "txyp":
            dataset = self._h5["events"][key]
            dataset.resize((new_count,))
            dataset[self.count : new_count] = getattr(events, key)
        self.count = new_count

    def add_column(self, name: str, values: np.ndarray) -> None:
        """Store a per-event dataset ``/events/NAME`` (after all events are appended)."""
        options = _compression_options(self.settings)
        if self.settings.compression == "none" or not len(values):
            options = {}
        else:
            options["chunks"] = (min(WRITE_CHUNK, len(values)),)
        self._h5["events"].create_dataset(name, data=values, **options)

    def finish(
        self, span_us: tuple[int, int] | None = None, attrs: dict[str, Any] | None = None
    ) -> None:
        """Write the attributes; call once, after the last ``append``."""
        self._h5.attrs["num_events"] = self.count
        self._h5.attrs["resolution_height"], self._h5.attrs["resolution_width"] = self.sensor_size
        if span_us is not None:
            self._h5.attrs["t_start_us"], self._h5.attrs["t_end_us"] = span_us
        for key, value in (attrs or {}).items():
            self._h5.attrs[key] = value
        self._finished = True

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        self._h5.close()
        if exc_type is None and not self._finished:
            exc_type, exc = RuntimeError, RuntimeError("EventFileWriter closed before finish()")
        if exc_type is None:
            self._output.__exit__(None, None, None)
        else:
            self._output.__exit__(exc_type, exc, traceback)


def _compression_options(settings: WriteSettings) -> dict[str, Any]:
    """Chunked (needed to grow the datasets), optionally compressed."""
    options: dict[str, Any] = {"chunks": (WRITE_CHUNK,)}
    if settings.compression == "zstd":
        options.update(hdf5plugin.Zstd(clevel=3))
    elif settings.compression == "gzip":
        options.update(compression="gzip", compression_opts=4, shuffle=True)
    elif settings.compression == "lzf":
        options.update(compression="lzf", shuffle=True)
    return options
