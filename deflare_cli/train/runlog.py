"""A training run's log: ``RUN_DIR/metrics.csv`` (one row per validation) and, when the
``tensorboard`` package is installed, ``RUN_DIR/tensorboard/``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from ..io import atomic_output
from ..metrics import VOXEL_METRICS

METRIC_COLUMNS = [
    "step",
    "epoch",
    "train_loss",
    *(f"val_{name}" for name in VOXEL_METRICS),
    *(f"raw_{name}" for name in VOXEL_METRICS),  # the input itself scored: the bar to beat
    "val_event_auc",  # how well the removal share ranks flare events first (0.5: chance)
    "val_flare_at_97",  # flare removed at 97% of the other events kept, before any margin
    "lr",
    "seconds",
]


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # an empty cell, or a column older runs did not write
        return math.nan


class RunLog:
    """Appends metric rows to the run's CSV file (and TensorBoard)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "metrics.csv"
        self.run_dir = run_dir

    def append(self, row: dict[str, float]) -> None:
        """Add one row (keys: :data:`METRIC_COLUMNS`)."""
        new = not self.path.exists()
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and not math.isnan(value):
                    self.tensorboard.add_scalar(key, value, row["step"])
            self.tensorboard.flush()

    def trim(self, step: int) -> list[dict[str, float]]:
        """On resume, drop the rows written after the checkpoint's step; returns the rows kept,
        so that a resumed run knows its last validation."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= step]
        with atomic_output(self.path) as temp_path, open(temp_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        return [{key: _number(value) for key, value in row.items()} for row in rows]

    @property
    def tensorboard(self) -> Any:
        """A TensorBoard writer into RUN_DIR/tensorboard when the package is installed."""
        if not hasattr(self, "_tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional: metrics.csv has everything
                self._tensorboard = None
            else:
                self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tensorboard
