"""benchmarks/gpu_network.py on a CPU: every variant timed for both sizes, the table written."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_network  # noqa: E402


def test_times_every_variant_of_both_sizes_and_writes_the_table(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    output = tmp_path / "network.md"
    argv = ["gpu_network.py", "--device", "cpu", "--height", "16", "--width", "16",
            "--batch", "2", "--repeats", "1", "--output", str(output)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert gpu_network.main() == 0
    rows = [line for line in output.read_text().splitlines() if line.startswith("| default")
            or line.startswith("| E-DeflareNet")]  # fmt: skip
    names = gpu_network.variants(gpu_network.torch.device("cpu"), compile_too=False)
    assert len(rows) == 2 * len(names) and all(float(row.split("|")[3]) > 0 for row in rows)
    assert "bf16 autocast, channels-last:" in output.read_text()


def test_refuses_cuda_without_a_gpu(monkeypatch, capsys) -> None:
    if gpu_network.torch.cuda.is_available():
        return  # nothing to refuse on a GPU machine
    monkeypatch.setattr(sys, "argv", ["gpu_network.py"])
    assert gpu_network.main() == 2
    assert "no CUDA device" in capsys.readouterr().err
