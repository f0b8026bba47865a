"""The one definition of an event stream.

Timestamps ``t`` are microseconds (int64), coordinates ``x``/``y`` are pixels (uint16) and
polarity ``p`` is +1 or -1 (int8). Files in other conventions are converted on reading, see
:func:`polarity_from_raw`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

T_DTYPE = np.dtype(np.int64)
XY_DTYPE = np.dtype(np.uint16)
P_DTYPE = np.dtype(np.int8)

DEFAULT_SENSOR_SIZE = (480, 640)  # (height, width) in pixels, as DSEC's event cameras


@dataclass(frozen=True)
class Events:
    """A time-ordered stream of events from one sensor.

    Attributes:
        t: (N,) int64 timestamps in microseconds, non-decreasing.
        x, y: (N,) uint16 pixel coordinates, ``x < width`` and ``y < height``.
        p: (N,) int8 polarity, +1 or -1.
        height, width: sensor size in pixels.
        span_us: [start, end) in microseconds that the stream covers, when known (a time window,
            or a decoded voxel's segments); ``None`` means first event to last event.
    """

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray
    height: int
    width: int
    span_us: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name, dtype in (("t", T_DTYPE), ("x", XY_DTYPE), ("y", XY_DTYPE), ("p", P_DTYPE)):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype != dtype:
                raise TypeError(f"Events.{name} must be a 1-D {dtype} array")
            if not array.flags.c_contiguous:  # the codec hands the columns to torch
                raise TypeError(f"Events.{name} must be contiguous (use make_events)")
        if not (len(self.t) == len(self.x) == len(self.y) == len(self.p)):
            raise ValueError("Events arrays must have equal lengths")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"sensor size must be positive, got {self.height}x{self.width}")
        if self.span_us is not None and self.span_us[0] >= self.span_us[1]:
            raise ValueError(f"span must satisfy start < end, got {self.span_us}")

    def __len__(self) -> int:
        return len(self.t)

    @property
    def sensor_size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.height, self.width)

    def time_span(self) -> tuple[int, int]:
        """[start, end) in microseconds: ``span_us`` if set, else first event to last event + 1."""
        if self.span_us is not None:
            return self.span_us
        if not len(self):
            raise ValueError("an empty event stream has no time span")
        return int(self.t[0]), int(self.t[-1]) + 1

    def select(self, index: np.ndarray | slice) -> Events:
        """The events picked by a slice, boolean mask or index array; the span is kept."""
        return Events(
            self.t[index],
            self.x[index],
            self.y[index],
            self.p[index],
            self.height,
            self.width,
            self.span_us,
        )

    def time_slice(self, start_us: int, end_us: int) -> Events:
        """The events with ``start_us <= t < end_us`` (binary search on sorted ``t``)."""
        lo, hi = np.searchsorted(self.t, [start_us, end_us], side="left")
        picked = self.select(slice(int(lo), int(hi)))
        return replace(picked, span_us=(int(start_us), int(end_us)))


def make_events(
    t: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    sensor_size: tuple[int, int] = DEFAULT_SENSOR_SIZE,
    span_us: tuple[int, int] | None = None,
) -> Events:
    """Build :class:`Events` from arrays of any numeric dtype and layout (polarity mapped as on
    reading). The columns come out contiguous: camera readers hand over strided views of
    structured arrays, which torch cannot take."""
    return Events(
        np.ascontiguousarray(t, dtype=T_DTYPE),
        np.ascontiguousarray(x, dtype=XY_DTYPE),
        np.ascontiguousarray(y, dtype=XY_DTYPE),
        np.ascontiguousarray(polarity_from_raw(np.asarray(p))),
        int(sensor_size[0]),
        int(sensor_size[1]),
        span_us,
    )


def polarity_from_raw(raw: np.ndarray) -> np.ndarray:
    """Map stored polarity to +1/-1: ``1 -> +1``, anything else ``-> -1``.

    This accepts {0, 1}, {-1, +1} and boolean polarities alike, as the seed's readers did.
    """
    return np.where(raw == 1, np.int8(1), np.int8(-1)).astype(P_DTYPE, copy=False)


def time_order(t: np.ndarray) -> np.ndarray:
    """Indices that sort timestamps, stable: equal timestamps keep their order."""
    return np.argsort(t, kind="stable")


def sort_by_time(events: Events) -> Events:
    """The same events in non-decreasing time order (stable, so equal timestamps keep order)."""
    return events.select(time_order(events.t))


def concat_events(pieces: Sequence[Events], like: Events) -> Events:
    """Pieces of one sensor's stream joined and sorted by time (stable); sensor size and span
    from ``like``. No pieces give ``like``'s empty stream."""
    if not pieces:
        return like.select(slice(0, 0))
    # The pieces are Events already: their columns have the right dtypes, so no conversion pass
    # (this runs per window on deflare's hot path).
    columns = [np.concatenate([getattr(piece, key) for piece in pieces]) for key in "txyp"]
    return sort_by_time(Events(*columns, like.height, like.width, like.span_us))


def pixel_index(events: Events) -> np.ndarray:
    """Flat pixel index ``y * width + x`` of every event, int64."""
    return events.y.astype(np.int64) * events.width + events.x


def window_us(start_us: int, window_ms: tuple[float, float]) -> tuple[int, int]:
    """A ``[start, end)`` window in milliseconds from ``start_us``, in absolute microseconds."""
    return start_us + round(window_ms[0] * 1000), start_us + round(window_ms[1] * 1000)


def is_time_sorted(t: np.ndarray) -> bool:
    """Whether timestamps never decrease."""
    return bool(len(t) < 2 or np.all(t[1:] >= t[:-1]))
