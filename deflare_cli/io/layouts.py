"""The HDF5 event layouts deflare reads, and how each is detected (DESIGN.md "Data").

- deflare / E-Deflare: ``/events/{t,x,y,p}``, t in microseconds, resolution attributes;
- DSEC: ``/events/{t,x,y,p}`` plus ``/ms_to_idx`` and ``/t_offset``, Blosc/zstd compressed;
- event_utils / E2VID: ``/events/{ts,xs,ys,ps}``, ts in seconds, ``sensor_resolution``.

A :class:`Layout` says where a file keeps its columns, how its timestamps become microseconds,
and how to find the rows of a time window without loading the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import h5py
import numpy as np

from ..errors import InputError
from ..events import T_DTYPE, is_time_sorted

READ_CHUNK = 1 << 22  # events per HDF5 read, so progress moves and temporaries stay small
DSEC_SENSOR_SIZE = (480, 640)  # DSEC's Prophesee Gen3.1 cameras; its files hold no size
MAX_SIDE = 1 << 16  # x and y are uint16
# Timestamps beyond this (in microseconds: 146,000 years) cannot be a recording's and would
# overflow int64 arithmetic; offsets likewise.
MAX_TIMESTAMP_US = 1 << 62


DROP_HINT = " (leave such events out with --drop-invalid)"


class TimestampError(InputError):
    """A bad timestamp; ``index`` counts from the start of the block that was converted, so
    readers can name the event's row in the file."""

    def __init__(self, label: str, problem: str, index: int) -> None:
        super().__init__(label, f"{problem} at event {index}{DROP_HINT}")
        self.what, self.index = problem, index

    def at_row(self, first_row: int) -> InputError:
        """The same error, naming the row in the file (``first_row`` + index)."""
        return InputError(self.path, f"{self.what} at event {first_row + self.index}{DROP_HINT}")


@dataclass(frozen=True)
class Layout:
    """Where one HDF5 layout keeps its columns and how its timestamps become microseconds."""

    name: str
    columns: dict[str, str]  # "t"/"x"/"y"/"p" -> dataset path
    to_us: Callable[[np.ndarray], np.ndarray]
    read_sensor_size: Callable[[], tuple[int, int] | None]  # from the file; only when needed
    start_us: int | None  # the recording's start; None: the first event
    ms_to_idx: h5py.Dataset | None = None
    time_unit_us: float = 1.0  # microseconds per stored time unit (event_utils: seconds)


def detect_layout(h5: h5py.File, label: str) -> Layout:
    """The layout of an open file, from the datasets it holds."""
    group = h5.get("events")
    if isinstance(group, h5py.Group) and "ts" in group:
        return _event_utils_layout(h5, label)
    if isinstance(group, h5py.Group) and "ms_to_idx" in h5:
        return _dsec_layout(h5, label)
    if isinstance(group, h5py.Group):
        _require_datasets(h5, label, {k: f"events/{k}" for k in "txyp"})
        return Layout(
            "deflare",
            {k: f"events/{k}" for k in "txyp"},
            lambda t: _integer_microseconds(t, label),
            lambda: _resolution_attrs(h5, label),
            None,
        )
    found = ", ".join(_list_datasets(h5)) or "nothing"
    raise InputError(
        label,
        "unknown event layout: expected /events/{t,x,y,p} (deflare, DSEC) or "
        f"/events/{{ts,xs,ys,ps}} (event_utils); the file holds {found}",
    )


def _dsec_layout(h5: h5py.File, label: str) -> Layout:
    _require_datasets(h5, label, {k: f"events/{k}" for k in "txyp"})
    offset = 0
    if "t_offset" in h5:
        value = np.asarray(h5["t_offset"][()]).reshape(-1)
        if value.size != 1 or value.dtype.kind not in "iuf" or not np.isfinite(value[0]):
            raise InputError(label, f"/t_offset must be one number, found {value[:4]!r}")
        if not 0 <= value[0] < MAX_TIMESTAMP_US:
            raise InputError(label, f"/t_offset {value[0]} is outside 0..2^62 microseconds")
        offset = int(value[0])
    return Layout(
        "dsec",
        {k: f"events/{k}" for k in "txyp"},
        lambda t: _integer_microseconds(t, label) + offset,
        lambda: _resolution_attrs(h5, label) or DSEC_SENSOR_SIZE,
        offset,
        h5["ms_to_idx"],
    )


def _event_utils_layout(h5: h5py.File, label: str) -> Layout:
    columns = {"t": "events/ts", "x": "events/xs", "y": "events/ys", "p": "events/ps"}
    _require_datasets(h5, label, columns)

    def size() -> tuple[int, int] | None:
        if "sensor_resolution" not in h5.attrs:
            return None
        return _sensor_size(h5.attrs["sensor_resolution"], label, "sensor_resolution attribute")

    def to_us(seconds: np.ndarray) -> np.ndarray:
        return _seconds_to_us(seconds, label)

    return Layout("event_utils", columns, to_us, size, None, time_unit_us=1e6)


def _require_datasets(h5: h5py.File, label: str, columns: dict[str, str]) -> None:
    lengths = {}
    for path in columns.values():
        _refuse_outside_links(h5, path, label)
        dataset = h5.get(path)
        if not isinstance(dataset, h5py.Dataset):
            raise InputError(label, f"missing dataset /{path}")
        if dataset.is_virtual or dataset.external:
            kind = "a virtual dataset" if dataset.is_virtual else "stored in external files"
            raise InputError(
                label, f"/{path} is {kind}: deflare reads only data inside the file itself"
            )
        if dataset.ndim != 1 or dataset.dtype.kind not in "iufb":
            raise InputError(label, f"/{path} must be a 1-D numeric array, found {dataset.dtype}")
        _refuse_unwritten(dataset, path, label)
        lengths[path] = dataset.shape[0]
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"/{path}: {n}" for path, n in lengths.items())
        raise InputError(label, f"event datasets have different lengths ({sizes})")


def _refuse_unwritten(dataset: h5py.Dataset, path: str, label: str) -> None:
    """A chunked dataset of a few KB can declare billions of events whose chunks were never
    written (read back as fill values, after allocating gigabytes): refused before anything is
    read. What counts is which chunks exist, not how many bytes they take: written chunks can
    compress a thousandfold and more (sorted timestamps of a dense recording under shuffle and
    zstd, as deflare itself writes them)."""
    if dataset.chunks is not None:
        needed = -(-dataset.shape[0] // dataset.chunks[0])
        written = dataset.id.get_num_chunks()
        missing = written < needed
        stored = f"{written:,} of its {needed:,} chunks"
    else:  # contiguous (or compact): the space is there once anything was written
        written = dataset.id.get_storage_size()
        missing = written < dataset.shape[0] * dataset.dtype.itemsize
        stored = f"{written:,} bytes of them"
    if missing:
        raise InputError(
            label,
            f"/{path} declares {dataset.shape[0]:,} events but stores only {stored}: the rest "
            "were never written (a truncated or crafted file)",
        )


def _refuse_outside_links(h5: h5py.File, path: str, label: str) -> None:
    """External links reach into other files (or /etc/passwd): refused, on every step."""
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        link = h5.get("/".join(parts[:depth]), getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise InputError(
                label,
                f"/{'/'.join(parts[:depth])} is an external link to {link.filename}: deflare "
                "reads only data inside the file itself",
            )


def _resolution_attrs(h5: h5py.File, label: str) -> tuple[int, int] | None:
    for holder in (h5, h5.get("events")):
        attrs = getattr(holder, "attrs", {})
        if "resolution_height" in attrs and "resolution_width" in attrs:
            values = (attrs["resolution_height"], attrs["resolution_width"])
            return _sensor_size(values, label, "resolution_height/width attributes")
    return None


def _sensor_size(values: object, label: str, what: str) -> tuple[int, int]:
    """(height, width) from a file's attributes: two whole numbers in 1..65536 (uint16 x/y)."""
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        array = np.array([])
    if (
        array.size < 2
        or not np.all(np.isfinite(array[:2]))
        or not np.all(array[:2] == np.round(array[:2]))
        or not np.all((array[:2] >= 1) & (array[:2] <= MAX_SIDE))
    ):
        raise InputError(
            label,
            f"the {what} must be two whole numbers (height, width) in 1..{MAX_SIDE}, "
            f"found {values!r}; give the size with --sensor-size HxW",
        )
    return int(array[0]), int(array[1])


def _list_datasets(h5: h5py.File) -> list[str]:
    names: list[str] = []
    h5.visititems(
        lambda name, obj: names.append("/" + name) if isinstance(obj, h5py.Dataset) else None
    )
    return names[:10]


def _integer_microseconds(raw: np.ndarray, label: str) -> np.ndarray:
    if raw.dtype.kind == "f":
        _refuse_bad(raw, label)
        return np.rint(raw).astype(T_DTYPE)
    if raw.dtype == np.uint64 and len(raw) and raw.max() >= MAX_TIMESTAMP_US:  # would wrap
        index = int(np.argmax(raw >= MAX_TIMESTAMP_US))
        raise TimestampError(label, f"timestamp {raw[index]} us is out of range", index)
    return raw.astype(T_DTYPE)


def _seconds_to_us(seconds: np.ndarray, label: str) -> np.ndarray:
    micro = np.asarray(seconds, dtype=np.float64) * 1e6
    _refuse_bad(micro, label)
    return np.rint(micro).astype(T_DTYPE)


def _refuse_bad(values: np.ndarray, label: str) -> None:
    """NaN, infinite or absurdly large timestamps (which would wrap around in int64)."""
    bad = ~np.isfinite(values)
    if bad.any():
        raise TimestampError(label, "timestamp is NaN or infinite", int(np.argmax(bad)))
    huge = np.abs(values) >= MAX_TIMESTAMP_US
    if huge.any():
        index = int(np.argmax(huge))
        raise TimestampError(label, f"timestamp {values[index]:.6g} us is out of range", index)


def valid_times(layout: Layout, raw: np.ndarray) -> np.ndarray:
    """Which stored timestamps become usable microseconds: finite, not negative and below
    ``MAX_TIMESTAMP_US`` once scaled and offset (for ``--drop-invalid``)."""
    with np.errstate(invalid="ignore", over="ignore"):
        micro = np.asarray(raw, dtype=np.float64) * layout.time_unit_us + (layout.start_us or 0)
        return np.isfinite(micro) & (micro > -0.5) & (micro < MAX_TIMESTAMP_US)


def column_sorted(h5: h5py.File, layout: Layout) -> bool:
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


def first_and_last_us(h5: h5py.File, layout: Layout) -> tuple[int, int]:
    """The first and the last stored timestamp in microseconds (of a sorted file)."""
    times = h5[layout.columns["t"]]
    first = int(layout.to_us(np.asarray(times[:1]))[0])
    try:
        last = int(layout.to_us(np.asarray(times[-1:]))[0])
    except TimestampError as error:
        raise error.at_row(len(times) - 1) from None
    return first, last


def window_rows(
    h5: h5py.File, layout: Layout, span: tuple[int, int], label: str
) -> tuple[int, int]:
    """Row range that holds the window, without loading the whole file (for sorted files)."""
    times = h5[layout.columns["t"]]
    if layout.ms_to_idx is not None:  # DSEC: ms_to_idx[k] = first row with t >= k ms
        table = layout.ms_to_idx
        first_ms = math.floor((span[0] - layout.start_us) / 1000)
        last_ms = math.ceil((span[1] - layout.start_us) / 1000)
        lo = int(table[first_ms]) if first_ms < len(table) else len(times)
        hi = int(table[last_ms]) if last_ms < len(table) else len(times)
        if not 0 <= lo <= len(times) or not 0 <= hi <= len(times):
            raise InputError(
                label,
                f"/ms_to_idx points at row {max(lo, hi) if lo >= 0 else lo}, but the file "
                f"holds {len(times):,} events (corrupt index)",
            )
        return lo, max(lo, hi)
    return _bisect(times, layout, span[0]), _bisect(times, layout, span[1])


def _bisect(times: h5py.Dataset, layout: Layout, value_us: int) -> int:
    """First row whose timestamp is >= value_us, reading one element per step."""
    lo, hi = 0, times.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if int(layout.to_us(np.asarray(times[mid : mid + 1]))[0]) < value_us:
            lo = mid + 1
        else:
            hi = mid
    return lo
