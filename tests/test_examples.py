"""The scripts in examples/ run, so that they never rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_example_recording_then_encode_decode(tmp_path: Path) -> None:
    recording = tmp_path / "example.h5"
    assert "230000 events" in run("make_example_events.py", str(recording))
    output = run("encode_decode.py", str(recording), "--window-ms", "0:40")
    assert "-> voxels (2, 8, 480, 640)" in output
    assert "net polarity kept" in output


def test_train_then_deflare_in_segments(tmp_path: Path) -> None:
    from conftest import write_pairs

    data = write_pairs(tmp_path / "data", 2)
    output = run("train_on_pairs.py", str(data), str(tmp_path / "run"), "--steps", "4",
                 "--f-maps", "8,16", "--crop", "16")  # fmt: skip
    assert "trained 4 steps" in output
    recording = next((data / "background_with_flare_events").iterdir())
    output = run("deflare_in_segments.py", str(recording), str(tmp_path / "run" / "last.pt"))
    assert "segment 1:" in output and output.strip().splitlines()[-1].startswith("total:")
