"""benchmarks/share_gap.py: real recordings' removal shares against a synthetic threshold."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import flare_pair, write_deflare
from test_calibrate import labelled_pairs
from test_infer import SMALL, write_checkpoint

from deflare_cli.events import make_events

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import share_gap  # noqa: E402


def test_row_counts_the_events_at_or_below_the_threshold() -> None:
    shares = np.array([0.0, 0.1, 0.2, 0.5, 0.9])
    line = share_gap.row("x", shares, threshold=0.2)
    assert line.startswith("| x | 5 | 0.340 |") and line.endswith("| 60.0% |")


def test_a_remover_leaves_a_recording_at_its_threshold_and_the_identity_keeps_it(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    pairs = labelled_pairs(tmp_path / "pairs", 1)
    recording = write_deflare(tmp_path / "scene.h5", flare_pair()[1])
    mask = SMALL.model_copy(update={"output": "mask"})
    remover = write_checkpoint(tmp_path / "remover.pt", bias=20.0, model_settings=mask)
    models = {"identity": write_checkpoint(tmp_path / "identity.pt"), "remover": remover}
    for name, checkpoint in models.items():
        argv = ["share_gap.py", str(checkpoint), str(pairs), str(recording)]
        monkeypatch.setattr(sys, "argv", argv)
        assert share_gap.main() == 0
        table = capsys.readouterr().out
        scene = next(line for line in table.splitlines() if line.startswith("| scene.h5"))
        # identity: every share 0, all at or below a threshold of 0; the remover scores whole
        # events 1 everywhere, so the threshold is 1 and the recording sits at or below it too
        assert scene.endswith("| 100.0% |"), (name, table)
        assert ("| 0.000 |" in scene) == (name == "identity")


def four_events():
    """Shares 1, 0, 0, 0: the first event at (y, x) = (5, 5); the second 3 px to its right in
    the same 10 ms bin; the third at the first's pixel two bins later; the fourth far away."""
    events = make_events(
        t=[1_000, 2_000, 21_000, 3_000], x=[5, 8, 5, 30], y=[5, 5, 5, 20], p=[1, -1, 1, 1],
        sensor_size=(24, 40),
    )  # fmt: skip
    return events, np.array([1.0, 0.0, 0.0, 0.0])


def test_smoothed_shares_average_exactly_the_events_in_the_box() -> None:
    events, shares = four_events()
    before = shares.copy()
    alone = share_gap.smoothed_shares(events, shares, radius_px=0, half_bins=0)
    np.testing.assert_allclose(alone, shares)  # every event alone in its pixel and bin
    beside = share_gap.smoothed_shares(events, shares, radius_px=3, half_bins=0)
    np.testing.assert_allclose(beside, [0.5, 0.5, 0.0, 0.0])  # 3 px apart: shared
    short = share_gap.smoothed_shares(events, shares, radius_px=2, half_bins=1)
    np.testing.assert_allclose(short, shares)  # 3 px and 2 bins apart: out of reach
    around = share_gap.smoothed_shares(events, shares, radius_px=3, half_bins=2)
    np.testing.assert_allclose(around, [1 / 3, 1 / 3, 1 / 3, 0.0])
    np.testing.assert_array_equal(shares, before)


def test_smoothing_reads_r_comma_b_and_refuses_anything_else() -> None:
    assert share_gap.smoothing("8,2") == (8, 2)
    for spec in ("8", "8,x", "-1,2"):
        with pytest.raises(argparse.ArgumentTypeError, match="--smooth"):
            share_gap.smoothing(spec)
