"""`make bench` (benchmarks/run.py): one quick benchmark through the command line writes the
table it prints, whole, and nothing beside it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def test_one_benchmark_writes_its_table(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("the table before\n")
    result = subprocess.run(
        [sys.executable, str(RUN), "--only", "decode-1M", "--output", str(output)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    text = output.read_text()
    assert text.startswith("# deflare benchmarks\n") and "the table before" not in text
    row = next(line for line in text.splitlines() if line.startswith("| decode (8, 480, 640)"))
    assert float(row.split("|")[2]) > 0  # seconds
    assert text.strip() == result.stdout.strip()  # what it printed is what it wrote
    assert [path.name for path in tmp_path.iterdir()] == ["BENCHMARKS.md"]  # no temp file left
