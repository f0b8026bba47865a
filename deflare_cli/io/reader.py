"""Reading event files: any HDF5 layout of :mod:`.layouts`, and camera formats (``.raw``,
``.dat``, ``.aedat4``, ``.es``, ``.csv``) through the optional ``faery`` package.

The sensor size comes from the file (attributes, header; DSEC files are 480x640) or from
``--sensor-size``; deflare never guesses it. Unsorted timestamps are sorted (stably) with a
warning rather than refused: encoding does not need order, and real recordings merged from
several sources are often slightly out of order."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers Blosc/zstd, which DSEC files need)
import numpy as np

from ..errors import InputError
from ..events import (
    T_DTYPE,
    XY_DTYPE,
    Events,
    is_time_sorted,
    polarity_from_raw,
    sort_by_time,
    window_us,
)
from ..progress import Progress, no_progress
from ..settings import ReadSettings
from .camera import NO_SIZE, CameraFile
from .files import FAERY_SUFFIXES, Source, check_readable, source_label
from .formats import camera_format
from .layouts import (
    DROP_HINT,
    READ_CHUNK,
    Layout,
    TimestampError,
    column_sorted,
    detect_layout,
    first_and_last_us,
    window_rows,
)
from .validity import DroppedEvents, check_block, placeable_rows

log = logging.getLogger(__name__)

# Bounds checked before anything is allocated (issue 15): no file of a few bytes may make
# deflare allocate gigabytes, or loop over years of empty segments.
MAX_SPAN_US = 24 * 3600 * 1_000_000  # a recording spans at most a day
MAX_WINDOW_EVENTS = 100_000_000  # ~1.3 GB of events in memory at once


def read_events(
    source: Source,
    settings: ReadSettings = ReadSettings(),
    progress: Progress = no_progress,
    name: str | None = None,
) -> Events:
    """Read an event file of any supported layout (detected from its contents).

    Args:
        source: a path, or an open binary stream holding an HDF5 file (e.g. stdin's bytes).
        settings: sensor size override and time window; see :class:`ReadSettings`.
        progress: called as ``progress("reading", events_read, events_total)``.
        name: how to call the source in error messages (default: its path).

    Returns:
        Events sorted by time. With a time window, ``span_us`` is that window in absolute time.

    Raises:
        InputError: missing, unreadable, corrupt or invalid file, or no events.
    """
    with EventFileReader(source, settings, name) as reader:
        events = reader.read(*reader.span_us, progress)
    window = settings.time_window_ms
    if window is None:  # the span a deflare-written file recorded, if any
        return replace(events, span_us=reader.recorded_span)
    if not len(events):
        raise InputError(
            reader.label, f"no events in the time window {window[0]:g}-{window[1]:g} ms"
        )
    return events


class EventFileReader:
    """An event file opened for reading window by window, in time order.

    Streaming code (inference on a 10-minute recording) reads ``[start, end)`` windows one after
    another with bounded memory: sorted HDF5 files by row ranges found through ``ms_to_idx``
    (DSEC) or binary search on the time column, camera formats by decoding chunk by chunk
    (:mod:`.camera`); unsorted files are loaded whole, sorted, once.

    Attributes:
        label: the file's name for messages.
        sensor_size: (height, width) in pixels.
        span_us: [start, end) of the recording, or of the time window when one is set.
        recorded_span: the span stored in a deflare-written file (``t_start_us``,
            ``t_end_us``), when it holds all the file's events; else None.
        format: the HDF5 layout or camera format (names of :mod:`.formats`).
        t_offset: a DSEC file's ``t_offset``, else None.
        provenance: the ``deflare_*`` attributes of a file deflare wrote (HDF5 layouts).
    """

    def __init__(
        self, source: Source, settings: ReadSettings = ReadSettings(), name: str | None = None
    ) -> None:
        self.label = source_label(source, name)
        self.settings = settings
        self._h5: h5py.File | None = None
        self._loaded: Events | None = None
        self.recorded_span: tuple[int, int] | None = None
        self.t_offset: int | None = None  # DSEC's t_offset, kept by a DSEC output
        self.provenance: dict[str, str] = {}
        self._camera: CameraFile | None = None
        self.dropped = DroppedEvents() if settings.drop_invalid else None
        if isinstance(source, str | Path) and Path(source).suffix.lower() in FAERY_SUFFIXES:
            check_readable(Path(source))
            self._camera = CameraFile(Path(source), settings)
            self.dropped = self._camera.dropped
            if not self._camera.is_sorted:
                self._loaded = _sorted(self._camera.read_all(), self.label)
            self.sensor_size = self._camera.sensor_size
            self.format = camera_format(Path(source))
            start = self._camera.first_us
        else:
            if isinstance(source, str | Path):
                check_readable(Path(source))
            self._h5 = _open_hdf5(source, self.label)
            try:
                start = self._open_layout()
            except BaseException:
                self.close()
                raise
        self.span_us = self._span(start)
        if self.dropped is not None:
            self.dropped.report(self.label)

    def _open_layout(self) -> int:
        """Detect the layout; load unsorted files whole. Returns the recording's start (us)."""
        assert self._h5 is not None
        self._layout = detect_layout(self._h5, self.label)
        self.format = self._layout.name
        self.provenance = {
            str(key): str(value) for key, value in self._h5.attrs.items()
            if str(key).startswith("deflare_")
        }  # fmt: skip
        self.t_offset = self._layout.start_us if self._layout.name == "dsec" else None
        self.sensor_size = self.settings.sensor_size or self._layout.read_sensor_size()
        if self.sensor_size is None:
            raise InputError(self.label, NO_SIZE)
        self._total = self._h5[self._layout.columns["t"]].shape[0]
        if self._total == 0:
            raise InputError(self.label, "contains no events")
        if self.dropped is not None or (
            self._layout.ms_to_idx is None and not column_sorted(self._h5, self._layout)
        ):  # dropping events needs the valid ones' span: the whole file is read up front
            self._loaded = _sorted(self._rows(0, self._total, no_progress), self.label)
            if not len(self._loaded):
                raise InputError(
                    self.label, f"contains no event that can be placed ({self._total:,} left out)"
                )
        return _recording_start(self._h5, self._layout, self._loaded)

    def _span(self, start: int) -> tuple[int, int]:
        window = self.settings.time_window_ms
        if window is not None:
            return window_us(start, window)
        if self._loaded is not None:
            first, last = int(self._loaded.t[0]), int(self._loaded.t[-1])
        elif self._camera is not None:
            first, last = self._camera.first_us, self._camera.last_us
        else:
            first, last = first_and_last_us(self._h5, self._layout)
        if last - first > MAX_SPAN_US:
            raise InputError(
                self.label,
                f"its events span {(last - first) / 86_400e6:.3g} days (t = {first} to {last} "
                "us): a timestamp is corrupt, or the recording is longer than a day; read a part "
                "with --time-window START:END (ms)",
            )
        attrs = self._h5.attrs if self._h5 is not None else {}
        if "t_start_us" in attrs and "t_end_us" in attrs:
            recorded = int(attrs["t_start_us"]), int(attrs["t_end_us"])
            if recorded[0] <= first and last < recorded[1]:
                self.recorded_span = recorded
                return recorded
        return first, last + 1

    @property
    def event_count(self) -> int | None:
        """How many events reading every window must give: the file's count, or None where it
        is not known up front (camera formats, a ``time_window_ms``)."""
        if self.settings.time_window_ms is not None or self._camera is not None:
            return None
        return len(self._loaded) if self._loaded is not None else self._total

    def read(self, start_us: int, end_us: int, progress: Progress = no_progress) -> Events:
        """The events with ``start_us <= t < end_us``, sorted, with that window as their span."""
        if self._loaded is not None:
            return self._loaded.time_slice(start_us, end_us)
        if self._camera is not None:
            return self._camera.window(start_us, end_us)
        first, stop = window_rows(self._h5, self._layout, (start_us, end_us), self.label)
        events = _sorted(self._rows(first, stop, progress), self.label)
        return events.time_slice(start_us, end_us)

    def _rows(self, start: int, stop: int, progress: Progress) -> Events:
        assert self._h5 is not None
        return _read_rows(
            self._h5, self._layout, (start, stop), self.sensor_size, progress, self.label,
            self.dropped,
        )  # fmt: skip

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> EventFileReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _open_hdf5(source: Source, label: str) -> h5py.File:
    try:
        return h5py.File(source, "r")
    except OSError as error:
        if _looks_like_hdf5(source):
            raise InputError(label, f"corrupt or truncated HDF5 file ({error})") from None
        raise InputError(label, "not an HDF5 file (and not a known camera format)") from None


def _looks_like_hdf5(source: Source) -> bool:
    """Whether the source starts with the HDF5 signature (at offset 0 or 512)."""
    signature = b"\x89HDF\r\n\x1a\n"
    if isinstance(source, str | Path):
        with open(source, "rb") as handle:
            head = handle.read(520)
    else:
        position = source.tell()
        head = source.read(520)
        source.seek(position)
    return head[:8] == signature or head[512:520] == signature


def _sorted(events: Events, label: str) -> Events:
    if is_time_sorted(events.t):
        return events
    log.warning("%s: timestamps are not sorted; sorting them (the file is not changed)", label)
    return sort_by_time(events)


def _recording_start(h5: h5py.File, layout: Layout, sorted_events: Events | None = None) -> int:
    """DSEC's t_offset, else the first (or, once sorted, the earliest) timestamp."""
    if layout.start_us is not None:
        return layout.start_us
    if sorted_events is not None:
        return int(sorted_events.t[0])
    return int(layout.to_us(np.asarray(h5[layout.columns["t"]][:1]))[0])


def _read_rows(
    h5: h5py.File,
    layout: Layout,
    rows: tuple[int, int],
    sensor_size: tuple[int, int],
    progress: Progress,
    label: str,
    dropped: DroppedEvents | None = None,
) -> Events:
    """Rows ``[start, stop)``, checked; events that cannot be placed are refused, or left out
    and counted in ``dropped`` when it is given."""
    start, stop = rows
    count = stop - start
    if count > MAX_WINDOW_EVENTS:
        raise InputError(
            label,
            f"{count:,} events would be held in memory at once (over {MAX_WINDOW_EVENTS:,}, "
            f"about {count * 13 / 1e9:.1f} GB): unsorted files are loaded whole, sorted ones "
            "window by window; sort the file by time or deflare it in parts (--time-window)",
        )
    t = np.empty(count, T_DTYPE)
    x = np.empty(count, XY_DTYPE)
    y = np.empty(count, XY_DTYPE)
    p = np.empty(count, np.int8)
    filled = 0
    for begin in range(start, stop, READ_CHUNK):
        end = min(begin + READ_CHUNK, stop)
        block = _read_block(h5, layout, begin, end, label)
        if dropped is None:
            check_block(block, begin, sensor_size, label)
        else:
            keep = placeable_rows(block, sensor_size, layout)
            dropped.add(keep, begin)
            block = {key: column[keep] for key, column in block.items()}
        rows = slice(filled, filled + len(block["t"]))
        try:
            t[rows] = layout.to_us(block["t"])
        except TimestampError as error:
            raise error.at_row(begin) from None
        x[rows], y[rows] = block["x"], block["y"]
        p[rows] = polarity_from_raw(block["p"])
        filled = rows.stop
        progress("reading", end - start, count)
    t, x, y, p = t[:filled], x[:filled], y[:filled], p[:filled]
    if filled and t.min() < 0:
        first_bad = start + int(np.argmax(t < 0))
        raise InputError(label, f"negative timestamp at event {first_bad}{DROP_HINT}")
    return Events(t, x, y, p, sensor_size[0], sensor_size[1])


def _read_block(
    h5: h5py.File, layout: Layout, begin: int, end: int, label: str
) -> dict[str, np.ndarray]:
    block = {}
    for key, path in layout.columns.items():
        try:
            block[key] = np.asarray(h5[path][begin:end])
        except (OSError, ValueError, RuntimeError) as error:
            raise InputError(
                label, f"corrupt or truncated HDF5 file: cannot read /{path} ({error})"
            ) from None
    return block


def read_flare_labels(path: Path, count: int) -> np.ndarray:
    """The per-event flare labels of a ``deflare synth`` input (bool), for ``count`` events;
    an :class:`InputError` naming the file where they are missing or do not line up."""
    labels = read_labels(path, "is_flare", count)
    if labels is None:
        raise InputError(path, "has no /events/is_flare labels (made by deflare synth)")
    return labels


def read_light_labels(path: Path, count: int, required: bool) -> np.ndarray | None:
    """The ``is_light`` labels of a ``deflare synth`` input (bool), or None where the file has
    none (pairs made before they existed); an :class:`InputError` then if ``required``."""
    labels = read_labels(path, "is_light", count)
    if labels is None and required:
        raise InputError(
            path,
            "has no /events/is_light labels (pairs from deflare synth before 2026-12-07): "
            "make them again, or calibrate without --min-light-kept",
        )
    return labels


def read_labels(path: Path, name: str, count: int) -> np.ndarray | None:
    """The per-event labels ``/events/NAME`` of a file read as ``count`` events (bool), or None
    where the file has none or they do not line up with those events."""
    labels = read_event_column(path, name)
    return labels.astype(bool) if labels is not None and len(labels) == count else None


def read_event_column(path: Path, name: str) -> np.ndarray | None:
    """A per-event dataset ``/events/NAME`` (e.g. ``is_flare`` from ``deflare synth``), or None.

    It lines up with :func:`read_events`' output only for time-sorted files (which ``synth``
    writes); for others it returns None rather than mislabel events.
    """
    if Path(path).suffix.lower() in FAERY_SUFFIXES:
        return None
    try:
        with h5py.File(path, "r") as h5:
            column, times = h5.get(f"events/{name}"), h5.get("events/t")
            if not isinstance(column, h5py.Dataset) or not isinstance(times, h5py.Dataset):
                return None
            sorted_file = column_sorted(h5, detect_layout(h5, str(path)))
            if column.shape != times.shape or not sorted_file:
                return None
            return np.asarray(column[:])
    except OSError as error:
        raise InputError(path, f"cannot read /events/{name} ({error})") from None
