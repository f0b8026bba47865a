"""Writing event files, piece by piece and atomically, in every format deflare reads.

HDF5 layouts (:class:`EventFileWriter`):

- ``deflare``: ``/events/{t,x,y,p}`` (int64 us, uint16, uint16, int8 +-1) with root attributes
  ``num_events``, ``resolution_height``, ``resolution_width``, the stream's span (``t_start_us``,
  ``t_end_us``) when known, and any provenance attributes;
- ``dsec``: as DSEC writes it: ``/events/t`` uint32 us after ``/t_offset`` (int64), ``x``/``y``
  uint16, ``p`` uint8 0/1, Blosc/zstd; ``/ms_to_idx`` (uint64, first row at or after each ms);
- ``event_utils``: ``/events/ts`` float64 seconds, ``xs``/``ys`` int16, ``ps`` bool, attributes
  ``sensor_resolution``, ``num_events``, ``num_pos``, ``num_neg``, ``t0``, ``tk``, ``duration``.

Camera formats go through faery (:class:`CameraFileWriter`), fed window by window from a thread.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import hdf5plugin
import numpy as np

from ..errors import OutputError
from ..events import T_DTYPE, XY_DTYPE, Events
from ..settings import WriteSettings
from .files import atomic_output, require_space

WRITE_CHUNK = 1 << 18  # HDF5 chunk length (events): datasets grow by appends
READ_BACK = 1 << 22  # events per read when DSEC's ms_to_idx is built at the end
U32_MAX = (1 << 32) - 1
# (dataset path, dtype) of t, x, y, p per HDF5 layout
HDF5_COLUMNS = {
    "deflare": (("events/t", T_DTYPE), ("events/x", XY_DTYPE), ("events/y", XY_DTYPE),
                ("events/p", np.int8)),
    "dsec": (("events/t", np.uint32), ("events/x", XY_DTYPE), ("events/y", XY_DTYPE),
             ("events/p", np.uint8)),
    "event_utils": (("events/ts", np.float64), ("events/xs", np.int16), ("events/ys", np.int16),
                    ("events/ps", np.bool_)),
}  # fmt: skip
ROW_BYTES = {layout: sum(np.dtype(dtype).itemsize for _, dtype in columns)
             for layout, columns in HDF5_COLUMNS.items()}  # fmt: skip


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
    """Writes an HDF5 event file (``layout`` deflare, dsec or event_utils) piece by piece,
    atomically.

    ``append`` events in time order, then ``finish``; the file appears under its name only when
    the ``with`` block ends without error. Otherwise nothing is left behind. ``t_offset``: DSEC's
    time origin (default: the first event's time, whole milliseconds).
    """

    def __init__(
        self,
        target: str | Path | BinaryIO,
        sensor_size: tuple[int, int],
        settings: WriteSettings = WriteSettings(),
        layout: str = "deflare",
        t_offset: int | None = None,
        exclusive: bool = False,
    ) -> None:
        self.target = target
        self.exclusive = exclusive
        self.sensor_size = sensor_size
        self.settings = settings
        self.layout = layout
        self.t_offset = t_offset
        self.count = 0
        self.positive = 0
        self._first_t: int | None = None
        self._last_t: int | None = None
        self._finished = False

    def __enter__(self) -> EventFileWriter:
        self._output = atomic_output(self.target, self.exclusive)
        temp_path = self._output.__enter__()
        self._temp_path = temp_path
        try:
            self._h5 = h5py.File(temp_path, "w")
            options = _compression_options(self.settings, self.layout)
            for path, dtype in HDF5_COLUMNS[self.layout]:
                self._h5.create_dataset(path, shape=(0,), maxshape=(None,), dtype=dtype, **options)
        except BaseException:
            self._output.__exit__(*sys.exc_info())
            raise
        return self

    def append(self, events: Events) -> None:
        """Add events (later than those already written)."""
        if events.sensor_size != self.sensor_size:
            raise ValueError(f"sensor size {events.sensor_size} != {self.sensor_size}")
        if not len(events):
            return
        if self._first_t is None:
            self._first_t = int(events.t[0])
            if self.layout == "dsec" and self.t_offset is None:
                self.t_offset = self._first_t - self._first_t % 1000
        self._last_t = int(events.t[-1])
        # the new rows, plus one chunk per column (HDF5 allocates whole chunks) and metadata
        needed = (len(events) + WRITE_CHUNK) * ROW_BYTES[self.layout] + (1 << 20)
        require_space(self._temp_path, needed, self.target)
        new_count = self.count + len(events)
        for (path, _), values in zip(HDF5_COLUMNS[self.layout], self._columns(events), strict=True):
            dataset = self._h5[path]
            dataset.resize((new_count,))
            dataset[self.count : new_count] = values
        self.count = new_count
        self.positive += int((events.p > 0).sum())

    def _columns(self, events: Events) -> tuple[np.ndarray, ...]:
        """t, x, y, p as the layout stores them."""
        if self.layout == "deflare":
            return events.t, events.x, events.y, events.p
        if self.layout == "event_utils":
            return (
                events.t / 1e6,
                events.x.astype(np.int16),
                events.y.astype(np.int16),
                events.p > 0,
            )
        assert self.t_offset is not None
        relative = events.t - self.t_offset
        if relative[0] < 0 or relative[-1] > U32_MAX:
            raise OutputError(
                f"{self.target}: DSEC stores time as 32-bit microseconds after t_offset "
                f"({self.t_offset}); these events span {relative[0]}..{relative[-1]} us"
            )
        return relative.astype(np.uint32), events.x, events.y, (events.p > 0).astype(np.uint8)

    def add_column(self, name: str, values: np.ndarray) -> None:
        """Store a per-event dataset ``/events/NAME`` (after all events are appended)."""
        options = _compression_options(self.settings, self.layout)
        if self.settings.compression == "none" or not len(values):
            options = {}
        else:
            options["chunks"] = (min(WRITE_CHUNK, len(values)),)
        self._h5["events"].create_dataset(name, data=values, **options)

    def finish(
        self, span_us: tuple[int, int] | None = None, attrs: dict[str, Any] | None = None
    ) -> None:
        """Write the attributes (and DSEC's ``ms_to_idx``); call once, after the last
        ``append``."""
        root = self._h5.attrs
        root["num_events"] = self.count
        if self.layout == "deflare":
            root["resolution_height"], root["resolution_width"] = self.sensor_size
            if span_us is not None:
                root["t_start_us"], root["t_end_us"] = span_us
        elif self.layout == "dsec":
            self._finish_dsec()
        else:
            self._finish_event_utils()
        for key, value in (attrs or {}).items():
            root[key] = value
        self._finished = True

    def _finish_dsec(self) -> None:
        """``t_offset`` and ``ms_to_idx[k]`` = first row with t >= k ms, read back in chunks."""
        offset = self.t_offset if self.t_offset is not None else 0
        self._h5.create_dataset("t_offset", data=np.int64(offset))
        last_ms = (self._last_t - offset) // 1000 + 1 if self._last_t is not None else 0
        times = self._h5["events/t"]
        table = np.empty(last_ms + 1, np.uint64)
        boundaries = np.arange(last_ms + 1, dtype=np.int64) * 1000
        done = 0  # boundaries filled so far
        for begin in range(0, self.count, READ_BACK):
            block = times[begin : begin + READ_BACK].astype(np.int64)
            upto = int(np.searchsorted(boundaries, block[-1], side="right"))
            table[done:upto] = begin + np.searchsorted(block, boundaries[done:upto], side="left")
            done = upto
        table[done:] = self.count
        self._h5.create_dataset("ms_to_idx", data=table)

    def _finish_event_utils(self) -> None:
        root = self._h5.attrs
        root["sensor_resolution"] = np.array(self.sensor_size, np.int64)
        root["num_pos"], root["num_neg"] = self.positive, self.count - self.positive
        first, last = (self._first_t or 0) / 1e6, (self._last_t or 0) / 1e6
        root["t0"], root["tk"], root["duration"] = first, last, last - first

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        try:
            self._h5.close()
        except Exception as error:  # a failed flush (full disk): still clean up the temp file
            if exc_type is None:
                exc_type, exc, traceback = type(error), error, error.__traceback__
        if exc_type is None and not self._finished:
            exc_type, exc = RuntimeError, RuntimeError("EventFileWriter closed before finish()")
        if exc_type is None:
            self._output.__exit__(None, None, None)
        else:
            self._output.__exit__(exc_type, exc, traceback)


def _compression_options(settings: WriteSettings, layout: str = "deflare") -> dict[str, Any]:
    """Chunked (needed to grow the datasets), optionally compressed; DSEC as DSEC does."""
    options: dict[str, Any] = {"chunks": (WRITE_CHUNK,)}
    if layout == "dsec":
        options.update(hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
        return options
    if settings.compression == "zstd":
        options.update(hdf5plugin.Zstd(clevel=3))
    elif settings.compression == "gzip":
        options.update(compression="gzip", compression_opts=4, shuffle=True)
    elif settings.compression == "lzf":
        options.update(compression="lzf", shuffle=True)
    return options


FAERY_TYPE = {
    "evt2": "evt",
    "evt3": "evt",
    "dat": "dat",
    "aedat4": "aedat",
    "es": "es",
    "csv": "csv",
}


class CameraFileWriter:
    """Writes a camera format through faery, window by window, atomically.

    faery's encoder pulls arrays from an iterable, so it runs in a thread that this writer feeds
    through a short queue: memory stays at a couple of windows. The formats hold no attributes:
    provenance passed to ``finish`` is dropped. EVT and DAT keep the first timestamp in their
    header; ES files are written with absolute timestamps, so every format reads back exactly.
    """

    def __init__(
        self,
        target: str | Path,
        sensor_size: tuple[int, int],
        format_name: str,
        exclusive: bool = False,
    ) -> None:
        self.target = Path(target)
        self.exclusive = exclusive
        self.sensor_size = sensor_size
        self.format = format_name
        self.count = 0
        self._error: BaseException | None = None
        self._finished = False

    def __enter__(self) -> CameraFileWriter:
        try:
            import faery
        except ImportError:
            raise OutputError(
                f"{self.target}: writing {self.format} files needs the optional 'faery' package: "
                "pip install 'deflare[formats]'"
            ) from None
        self._faery = faery
        self._output = atomic_output(self.target, self.exclusive)
        temp_path = self._output.__enter__()
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._encode, args=(temp_path,), daemon=True)
        self._thread.start()
        return self

    def _encode(self, temp_path: Path) -> None:
        height, width = self.sensor_size
        version = self.format if self.format in ("evt2", "evt3") else None
        try:
            self._faery.file_encoder.events_to_file(
                self._arrays(),
                temp_path,
                dimensions=(width, height),
                version=version,
                zero_t0=self.format != "es",
                file_type=FAERY_TYPE[self.format],
                use_write_suffix=False,
            )
        except BaseException as error:  # reported by the writing thread
            self._error = error

    def _arrays(self) -> Iterator[np.ndarray]:
        while (array := self._queue.get()) is not None:
            yield array

    def _put(self, item: np.ndarray | None) -> None:
        while True:
            if self._error is not None or not self._thread.is_alive():
                return
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def append(self, events: Events) -> None:
        """Add events (later than those already written)."""
        if events.sensor_size != self.sensor_size:
            raise ValueError(f"sensor size {events.sensor_size} != {self.sensor_size}")
        self._raise_error()
        if not len(events):
            return
        array = np.empty(len(events), self._faery.EVENTS_DTYPE)
        array["t"], array["x"], array["y"], array["on"] = events.t, events.x, events.y, events.p > 0
        self._put(array)
        self.count += len(events)

    def finish(
        self, span_us: tuple[int, int] | None = None, attrs: dict[str, Any] | None = None
    ) -> None:
        """Mark the stream complete (the file is closed when the ``with`` block ends)."""
        self._finished = True

    def _raise_error(self) -> None:
        if self._error is not None:
            raise OutputError(f"{self.target}: faery could not write it ({self._error})")

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        self._put(None)
        self._thread.join()
        if exc_type is not None:  # the caller's error propagates; the temp file goes
            self._output.__exit__(exc_type, exc, traceback)
            return
        failure: Exception | None = None
        if self._error is not None:
            failure = OutputError(f"{self.target}: faery could not write it ({self._error})")
        elif not self._finished:
            failure = RuntimeError("CameraFileWriter closed before finish()")
        if failure is None:
            self._output.__exit__(None, None, None)
            return
        self._output.__exit__(type(failure), failure, None)
        raise failure


def open_writer(
    target: str | Path | BinaryIO,
    sensor_size: tuple[int, int],
    settings: WriteSettings,
    format_name: str,
    t_offset: int | None = None,
    exclusive: bool = False,
) -> EventFileWriter | CameraFileWriter:
    """The writer of a format (names of :mod:`.formats`): HDF5 layouts or camera formats.
    ``exclusive``: fail rather than replace a file another run created meanwhile."""
    if format_name in HDF5_COLUMNS:
        return EventFileWriter(target, sensor_size, settings, format_name, t_offset, exclusive)
    if not isinstance(target, str | Path):
        raise OutputError(f"{format_name} files cannot go to a stream; name an output file")
    return CameraFileWriter(target, sensor_size, format_name, exclusive)
