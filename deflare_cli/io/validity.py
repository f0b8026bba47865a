"""Which events can be placed on the sensor and the time axis, and what happens to the others.

By default a file with an event that cannot be placed (a coordinate off the sensor or NaN; a
timestamp NaN, infinite, negative or beyond 2^62 us) is refused, naming the first such event
(issue 15: no silent loss). With ``--drop-invalid`` (``ReadSettings.drop_invalid``) such events
are left out instead, counted, and the count is reported: a repair mode for damaged recordings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .layouts import MAX_TIMESTAMP_US, Layout, valid_times

log = logging.getLogger(__name__)

Block = dict[str, np.ndarray]  # "t"/"x"/"y"/"p" -> one chunk of stored columns


def check_block(block: Block, first_row: int, sensor_size: tuple[int, int], label: str) -> None:
    """Refuse a block whose coordinates fall off the sensor, naming the first such event."""
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
                "sensor (give the right size with --sensor-size HxW, or leave such events out "
                "with --drop-invalid)",
            )


def placeable_rows(
    block: Block, sensor_size: tuple[int, int], layout: Layout | None = None
) -> np.ndarray:
    """(N,) bool: the block's events on the sensor with a usable timestamp. ``layout`` says
    how stored times become microseconds (HDF5); without one they are microseconds already."""
    height, width = sensor_size
    keep = np.ones(len(block["t"]), bool)
    with np.errstate(invalid="ignore"):
        for key, limit in (("x", width), ("y", height)):
            values = block[key]
            keep &= (values >= 0) & (values < limit)  # NaN compares false: dropped too
    if layout is not None:
        return keep & valid_times(layout, block["t"])
    times = np.asarray(block["t"])
    return keep & (times >= 0) & (times < MAX_TIMESTAMP_US)


@dataclass
class DroppedEvents:
    """Events ``--drop-invalid`` left out of one file: how many, and the row of the first."""

    count: int = 0
    first_row: int | None = None

    def add(self, keep: np.ndarray, first_row: int) -> None:
        """Count a block's rows outside ``keep``; ``first_row`` is the block's row in the file."""
        dropped = ~keep
        if dropped.any():
            if self.first_row is None:
                self.first_row = first_row + int(np.argmax(dropped))
            self.count += int(dropped.sum())

    def report(self, label: str) -> None:
        """Log the count (a warning: the user asked for it, but should see it)."""
        if self.count:
            log.warning(
                "%s: left out %d event(s) that cannot be placed (first at event %d; "
                "--drop-invalid)", label, self.count, self.first_row,
            )  # fmt: skip
