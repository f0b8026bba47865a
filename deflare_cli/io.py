"""Reading and writing event files.

Readers detect the layout by the datasets a file holds (DESIGN.md "Data"):

- deflare / E-Deflare: ``/events/{t,x,y,p}``, t in microseconds, resolution attributes;
- DSEC: ``/events/{t,x,y,p}`` plus ``/ms_to_idx`` and ``/t_offset``, Blosc/zstd compressed;
- event_utils / E2VID: ``/events/{ts,xs,ys,ps}``, ts in seconds, ``sensor_resolution``;
- camera formats (``.raw``, ``.dat``, ``.aedat4``, ``.es``, ``.csv``) through the optional
  ``faery`` package.

Unsorted timestamps are sorted (stably) with a warning rather than refused: encoding does not
need order, and real recordings merged from several sources are often slightly out of order.
The writer always emits the deflare layout, atomically.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import hdf5plugin
import numpy as np

from .errors import InputError, OutputError
from .events import (
    DEFAULT_SENSOR_SIZE,
    T_DTYPE,
    XY_DTYPE,
    Events,
    Progress,
    is_time_sorted,
    make_events,
    no_progress,
    polarity_from_raw,
    sort_by_time,
)
from .settings import ReadSettings, WriteSettings

log = logging.getLogger(__name__)

FAERY_SUFFIXES = (".raw", ".dat", ".aedat4", ".es", ".csv")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
READ_CHUNK = 1 << 22  # events per HDF5 read, so progress moves and temporaries stay small
WRITE_CHUNK = 1 << 18  # HDF5 chunk length (events): datasets grow by appends
STDIO = "-"

Source = str | Path | BinaryIO


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Layout:
    """Where one HDF5 layout keeps its columns and how its timestamps become microseconds."""

    name: str
    columns: dict[str, str]  # "t"/"x"/"y"/"p" -> dataset path
    to_us: Callable[[np.ndarray], np.ndarray]
    sensor_size: tuple[int, int] | None
    start_us: int | None  # the recording's start; None: the first event
    ms_to_idx: h5py.Dataset | None = None


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
    (DSEC) or binary search on the time column; unsorted files and camera formats are loaded
    whole, sorted, once.

    Attributes:
        label: the file's name for messages.
        sensor_size: (height, width) in pixels.
        span_us: [start, end) of the recording, or of the time window when one is set.
        recorded_span: the span stored in a deflare-written file (``t_start_us``,
            ``t_end_us``), when it holds all the file's events; else None.
    """

    def __init__(
        self, source: Source, settings: ReadSettings = ReadSettings(), name: str | None = None
    ) -> None:
        self.label = source_label(source, name)
        self.settings = settings
        self._h5: h5py.File | None = None
        self._loaded: Events | None = None
        self.recorded_span: tuple[int, int] | None = None
        if isinstance(source, str | Path) and Path(source).suffix.lower() in FAERY_SUFFIXES:
            _check_readable(Path(source))
            self._loaded = _read_with_faery(Path(source), settings)
            self.sensor_size = self._loaded.sensor_size
            start = int(self._loaded.t[0])
        else:
            if isinstance(source, str | Path):
                _check_readable(Path(source))
            self._h5 = _open_hdf5(source, self.label)
            try:
                start = self._open_layout()
            except BaseException:
                self.close()
                raise
        self.span_us = self._span(start)

    def _open_layout(self) -> int:
        """Detect the layout; load unsorted files whole. Returns the recording's start (us)."""
        assert self._h5 is not None
        self._layout = _detect_layout(self._h5, self.label)
        self.sensor_size = (
            self.settings.sensor_size or self._layout.sensor_size or DEFAULT_SENSOR_SIZE
        )
        self._total = self._h5[self._layout.columns["t"]].shape[0]
        if self._total == 0:
            raise InputError(self.label, "contains no events")
        if self._layout.ms_to_idx is None and not _column_sorted(self._h5, self._layout):
            self._loaded = _sorted(self._rows(0, self._total, no_progress), self.label)
        return _recording_start(self._h5, self._layout, self._loaded)

    def _span(self, start: int) -> tuple[int, int]:
        window = self.settings.time_window_ms
        if window is not None:
            return _window_us(start, window)
        if self._loaded is not None:
            first, last = int(self._loaded.t[0]), int(self._loaded.t[-1])
        else:
            times = self._h5[self._layout.columns["t"]]
            first = int(self._layout.to_us(np.asarray(times[:1]))[0])
            last = int(self._layout.to_us(np.asarray(times[-1:]))[0])
        attrs = self._h5.attrs if self._h5 is not None else {}
        if "t_start_us" in attrs and "t_end_us" in attrs:
            recorded = int(attrs["t_start_us"]), int(attrs["t_end_us"])
            if recorded[0] <= first and last < recorded[1]:
                self.recorded_span = recorded
                return recorded
        return first, last + 1

    def read(self, start_us: int, end_us: int, progress: Progress = no_progress) -> Events:
        """The events with ``start_us <= t < end_us``, sorted, with that window as their span."""
        if self._loaded is not None:
            return self._loaded.time_slice(start_us, end_us)
        first, stop = _window_indices(self._h5, self._layout, (start_us, end_us), self.label)
        events = _sorted(self._rows(first, stop, progress), self.label)
        return events.time_slice(start_us, end_us)

    def _rows(self, start: int, stop: int, progress: Progress) -> Events:
        assert self._h5 is not None
        return _read_rows(
            self._h5, self._layout, start, stop, self.sensor_size, progress, self.label
        )

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> EventFileReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def source_label(source: Source, name: str | None = None) -> str:
    """How messages call an input: the given name, else its path, else ``<stream>``."""
    return name or (str(source) if isinstance(source, str | Path) else "<stream>")


def list_event_files(folder: Path) -> list[Path]:
    """Event files in a folder (not recursive, by suffix), sorted by name."""
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    suffixes = HDF5_SUFFIXES + FAERY_SUFFIXES
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not an event file")
    if not os.access(path, os.R_OK):
        raise InputError(path, "permission denied")


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


def _detect_layout(h5: h5py.File, label: str) -> _Layout:
    group = h5.get("events")
    if isinstance(group, h5py.Group) and "ts" in group:
        return _event_utils_layout(h5, label)
    if isinstance(group, h5py.Group) and "ms_to_idx" in h5:
        return _dsec_layout(h5, label)
    if isinstance(group, h5py.Group):
        _require_datasets(h5, label, {k: f"events/{k}" for k in "txyp"})
        return _Layout(
            "deflare",
            {k: f"events/{k}" for k in "txyp"},
            lambda t: _integer_microseconds(t, label),
            _resolution_attrs(h5, label),
            None,
        )
    found = ", ".join(_list_datasets(h5)) or "nothing"
    raise InputError(
        label,
        "unknown event layout: expected /events/{t,x,y,p} (deflare, DSEC) or "
        f"/events/{{ts,xs,ys,ps}} (event_utils); the file holds {found}",
    )


def _dsec_layout(h5: h5py.File, label: str) -> _Layout:
    _require_datasets(h5, label, {k: f"events/{k}" for k in "txyp"})
    offset = 0
    if "t_offset" in h5:
        offset = int(np.asarray(h5["t_offset"][()]).reshape(-1)[0])
    return _Layout(
        "dsec",
        {k: f"events/{k}" for k in "txyp"},
        lambda t: _integer_microseconds(t, label) + offset,
        _resolution_attrs(h5, label),
        offset,
        h5["ms_to_idx"],
    )


def _event_utils_layout(h5: h5py.File, label: str) -> _Layout:
    columns = {"t": "events/ts", "x": "events/xs", "y": "events/ys", "p": "events/ps"}
    _require_datasets(h5, label, columns)
    size = None
    if "sensor_resolution" in h5.attrs:
        resolution = np.asarray(h5.attrs["sensor_resolution"]).reshape(-1)
        size = (int(resolution[0]), int(resolution[1]))
    return _Layout("event_utils", columns, lambda ts: _seconds_to_us(ts, label), size, None)


def _require_datasets(h5: h5py.File, label: str, columns: dict[str, str]) -> None:
    lengths = {}
    for path in columns.values():
        dataset = h5.get(path)
        if not isinstance(dataset, h5py.Dataset):
            raise InputError(label, f"missing dataset /{path}")
        if dataset.ndim != 1 or dataset.dtype.kind not in "iufb":
            raise InputError(label, f"/{path} must be a 1-D numeric array, found {dataset.dtype}")
        lengths[path] = dataset.shape[0]
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"/{path}: {n}" for path, n in lengths.items())
        raise InputError(label, f"event datasets have different lengths ({sizes})")


def _resolution_attrs(h5: h5py.File, label: str) -> tuple[int, int] | None:
    for holder in (h5, h5.get("events")):
        attrs = getattr(holder, "attrs", {})
        if "resolution_height" in attrs and "resolution_width" in attrs:
            return int(attrs["resolution_height"]), int(attrs["resolution_width"])
    return None


def _list_datasets(h5: h5py.File) -> list[str]:
    names: list[str] = []
    h5.visititems(
        lambda name, obj: names.append("/" + name) if isinstance(obj, h5py.Dataset) else None
    )
    return names[:10]


def _integer_microseconds(raw: np.ndarray, label: str) -> np.ndarray:
    if raw.dtype.kind == "f":
        _refuse_nan(raw, label)
        return np.rint(raw).astype(T_DTYPE)
    return raw.astype(T_DTYPE)


def _seconds_to_us(seconds: np.ndarray, label: str) -> np.ndarray:
    _refuse_nan(seconds, label)
    return np.rint(np.asarray(seconds, dtype=np.float64) * 1e6).astype(T_DTYPE)


def _refuse_nan(values: np.ndarray, label: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(label, f"timestamp is NaN or infinite at event {int(np.argmax(bad))}")


def _sorted(events: Events, label: str) -> Events:
    if is_time_sorted(events.t):
        return events
    log.warning("%s: timestamps are not sorted; sorting them (the file is not changed)", label)
    return sort_by_time(events)


def _column_sorted(h5: h5py.File, layout: _Layout) -> bool:
    """Whether the file's timestamps never decrease, reading only the time column."""
    times = h5[layout.columns["t"]]
    previous = None
    for begin in range(0, times.shape[0], READ_CHUNK):
        block = np.asarray(times[begin : begin + READ_CHUNK])
        if previous is not None and block[0] < previous:
            return False
        if not is_time_sorted(block):
            return False
        previous = block[-1]
    return True


def _window_us(start_us: int, window_ms: tuple[float, float]) -> tuple[int, int]:
    """The window in absolute microseconds, counted from the recording's start."""
    return start_us + round(window_ms[0] * 1000), start_us + round(window_ms[1] * 1000)


def _recording_start(h5: h5py.File, layout: _Layout, sorted_events: Events | None = None) -> int:
    """DSEC's t_offset, else the first (or, once sorted, the earliest) timestamp."""
    if layout.start_us is not None:
        return layout.start_us
    if sorted_events is not None:
        return int(sorted_events.t[0])
    return int(layout.to_us(np.asarray(h5[layout.columns["t"]][:1]))[0])


def _window_indices(
    h5: h5py.File, layout: _Layout, span: tuple[int, int], label: str
) -> tuple[int, int]:
    """Row range that holds the window, without loading the whole file (for sorted files)."""
    times = h5[layout.columns["t"]]
    if layout.ms_to_idx is not None:  # DSEC: ms_to_idx[k] = first row with t >= k ms
        table = layout.ms_to_idx
        first_ms = math.floor((span[0] - layout.start_us) / 1000)
        last_ms = math.ceil((span[1] - layout.start_us) / 1000)
        lo = int(table[first_ms]) if first_ms < len(table) else len(times)
        hi = int(table[last_ms]) if last_ms < len(table) else len(times)
        return lo, max(lo, hi)
    return _bisect(times, layout, span[0], label), _bisect(times, layout, span[1], label)


def _bisect(times: h5py.Dataset, layout: _Layout, value_us: int, label: str) -> int:
    """First row whose timestamp is >= value_us, reading one element per step."""
    lo, hi = 0, times.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if int(layout.to_us(np.asarray(times[mid : mid + 1]))[0]) < value_us:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _read_rows(
    h5: h5py.File,
    layout: _Layout,
    start: int,
    stop: int,
    sensor_size: tuple[int, int],
    progress: Progress,
    label: str,
) -> Events:
    count = stop - start
    t = np.empty(count, T_DTYPE)
    x = np.empty(count, XY_DTYPE)
    y = np.empty(count, XY_DTYPE)
    p = np.empty(count, np.int8)
    for begin in range(start, stop, READ_CHUNK):
        end = min(begin + READ_CHUNK, stop)
        block = _read_block(h5, layout, begin, end, label)
        _check_block(block, begin, sensor_size, label)
        rows = slice(begin - start, end - start)
        t[rows] = layout.to_us(block["t"])
        x[rows], y[rows] = block["x"], block["y"]
        p[rows] = polarity_from_raw(block["p"])
        progress("reading", end - start, count)
    if count and t.min() < 0:
        raise InputError(label, f"negative timestamp at event {start + int(np.argmax(t < 0))}")
    return Events(t, x, y, p, sensor_size[0], sensor_size[1])


def _read_block(
    h5: h5py.File, layout: _Layout, begin: int, end: int, label: str
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


def _check_block(
    block: dict[str, np.ndarray], first_row: int, sensor_size: tuple[int, int], label: str
) -> None:
    height, width = sensor_size
    for key, limit in (("x", width), ("y", height)):
        values = block[key]
        if not len(values):
            continue
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise InputError(label, f"{key} coordinate is NaN near event {first_row}")
        low, high = values.min(), values.max()
        if low < 0 or high >= limit:
            bad = int(np.argmax((values < 0) | (values >= limit)))
            raise InputError(
                label,
                f"event {first_row + bad} has {key}={values[bad]}, outside the {height}x{width} "
                "sensor (give the right size with --sensor-size HxW)",
            )


def _read_with_faery(path: Path, settings: ReadSettings) -> Events:
    try:
        import faery
    except ImportError:
        raise InputError(
            path,
            f"reading {path.suffix} files needs the optional 'faery' package: "
            "pip install 'deflare[formats]'",
        ) from None
    height, width = settings.sensor_size or DEFAULT_SENSOR_SIZE
    try:
        stream = faery.events_stream_from_file(path, dimensions_fallback=(width, height))
        array = stream.to_array()
        file_width, file_height = stream.dimensions()
    except Exception as error:  # faery raises plain exceptions from its Rust decoders
        raise InputError(path, f"cannot decode {path.suffix} file ({error})") from None
    sensor_size = settings.sensor_size or (file_height, file_width)
    block = {"t": array["t"], "x": array["x"], "y": array["y"], "p": array["on"]}
    if not len(array):
        raise InputError(path, "contains no events")
    _check_block(block, 0, sensor_size, str(path))
    events = make_events(
        array["t"], array["x"], array["y"], array["on"].astype(np.int8), sensor_size
    )
    return _sorted(events, str(path))


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
            if column.shape != times.shape or not _column_sorted(h5, _detect_layout(h5, str(path))):
                return None
            return np.asarray(column[:])
    except OSError as error:
        raise InputError(path, f"cannot read /events/{name} ({error})") from None


# ----------------------------------------------------------------------------- writing


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


@contextlib.contextmanager
def atomic_output(target: str | Path | BinaryIO) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` in one rename.

    On any error the temporary file is removed and ``target`` is left as it was. A binary stream
    target (stdout) receives the finished file's bytes instead.
    """
    if not isinstance(target, str | Path):
        with tempfile.TemporaryDirectory() as folder:
            temp_path = Path(folder) / "output"
            yield temp_path
            with open(temp_path, "rb") as finished:
                shutil.copyfileobj(finished, target)
            target.flush()
        return
    final = Path(target)
    if final.is_dir():
        raise OutputError(f"{final}: is a folder; give a file name")
    if not final.parent.exists():
        raise OutputError(f"{final}: the folder {final.parent} does not exist")
    # The temporary name keeps the target's suffix, for writers that choose a format by it.
    handle, name = tempfile.mkstemp(
        dir=final.parent, prefix=f".{final.name}.", suffix=f".tmp{final.suffix}"
    )
    os.close(handle)
    temp_path = Path(name)
    os.chmod(temp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield temp_path
        os.replace(temp_path, final)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_distinct(source: Source, target: str | Path | BinaryIO) -> None:
    """Refuse to write an output over its own input."""
    if not isinstance(source, str | Path) or not isinstance(target, str | Path):
        return
    source_path, target_path = Path(source), Path(target)
    same = source_path.resolve() == target_path.resolve()
    if not same and source_path.exists() and target_path.exists():
        same = os.path.samefile(source_path, target_path)
    if same:
        raise OutputError(f"{target}: the output would overwrite the input; choose another name")


def read_stream_bytes(stream: BinaryIO) -> io.BytesIO:
    """Read a whole binary stream (stdin) into memory, so that it can be seeked."""
    return io.BytesIO(stream.read())


def open_source(argument: str) -> tuple[Source, str]:
    """A command-line input and its name for messages: ``-`` is stdin (read whole), else a path."""
    if argument == STDIO:
        return read_stream_bytes(sys.stdin.buffer), "<stdin>"
    return Path(argument), argument


def open_target(argument: str) -> Path | BinaryIO:
    """A command-line output: ``-`` is stdout, anything else a path."""
    if argument == STDIO:
        return sys.stdout.buffer
    return Path(argument)
