"""Progress in logs: where no bar can be drawn, long stages print a line now and then."""

from __future__ import annotations

from pathlib import Path

from conftest import write_pairs
from typer.testing import CliRunner

from deflare_cli import progress as progress_module
from deflare_cli.cli import app
from deflare_cli.progress import ProgressLines


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reporter(interval_s: float = 60) -> tuple[ProgressLines, list[str], Clock]:
    lines: list[str] = []
    clock = Clock()
    return ProgressLines(lines.append, interval_s, clock), lines, clock


def test_a_stage_that_ends_within_the_interval_prints_nothing() -> None:
    progress, lines, clock = reporter()
    for done in range(1, 11):
        clock.now += 5
        progress("reading", done, 10)
    assert lines == []


def test_a_long_stage_prints_its_count_speed_time_left_and_detail_then_its_end() -> None:
    progress, lines, clock = reporter()
    progress("training", 200, 1600, "loss 0.9")  # resumed at step 200: the speed counts from here
    for step in range(201, 1601):
        clock.now += 10  # 0.1 steps per second
        progress("training", step, 1600, f"loss {1 / step:.3g}")
    assert len(lines) == 14000 // 60 + 1  # one line a minute, and the end
    assert (
        lines[0] == "training: 206/1,600 (13%), 0.1/s, 0:01:00 elapsed, ~3:52:20 left; loss 0.00485"
    )
    assert lines[-1] == "training: 1,600/1,600 done in 3:53:20"


def test_a_stage_whose_count_starts_again_is_timed_afresh() -> None:
    progress, lines, clock = reporter(interval_s=30)
    for _ in range(2):  # the same stage for two files, each timed from its first report
        for done in range(1, 4):
            clock.now += 30
            progress("reading", done, 3)
    assert (
        lines
        == [
            "reading: 2/3 (67%), 0.0333/s, 0:00:30 elapsed, ~0:00:30 left",
            "reading: 3/3 done in 0:01:00",
        ]
        * 2
    )


def test_training_under_nohup_says_how_far_it_is(tmp_path: Path, monkeypatch) -> None:
    """CliRunner's stderr is no terminal, as under nohup: the lines come, with the last
    validation's figures."""
    monkeypatch.setattr(progress_module, "LINE_INTERVAL_S", 0.0)
    pairs = write_pairs(tmp_path / "pairs", 2)
    args = ["train", "--data-dir", str(pairs), "--val-dir", str(pairs), "--run-dir",
            str(tmp_path / "run"), "--max-steps", "4", "--val-every", "2", "--crop", "16x16",
            "--f-maps", "8,16", "--batch-size", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    training = [line for line in result.output.splitlines() if line.startswith("training: ")]
    assert training[0].startswith("training: 1/4 (25%), ")
    assert "; val@2 mse " in training[2]
    assert training[-1].startswith("training: 4/4 done in ")
