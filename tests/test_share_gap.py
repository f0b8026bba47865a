"""benchmarks/share_gap.py: real recordings' removal shares against a synthetic threshold."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from conftest import flare_pair, write_deflare
from test_calibrate import labelled_pairs
from test_infer import SMALL, write_checkpoint

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
