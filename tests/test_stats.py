"""`deflare info`: recording statistics computed by hand on small known recordings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_deflare, write_dsec
from typer.testing import CliRunner

from deflare_cli.cli import app
from deflare_cli.events import make_events
from deflare_cli.settings import paired_dirs
from deflare_cli.stats import recording_stats

runner = CliRunner()


def known_recording():
    """40 ms on a 10x20 sensor: window 1 has pixel (0,0) firing 3 times and (5,5) once; window 2
    has 4 distinct pixels firing once each. 5 of the 8 events are ON."""
    t = [0, 100, 200, 300, 20_000, 25_000, 30_000, 39_999]
    x = [0, 0, 0, 5, 1, 2, 3, 4]
    y = [0, 0, 0, 5, 9, 9, 9, 9]
    p = [1, 1, 1, 0, 1, 0, 1, 0]
    return make_events(t, x, y, p, (10, 20))


def test_statistics_by_hand() -> None:
    stats = recording_stats(known_recording(), "known")
    assert (stats.height, stats.width, stats.events) == (10, 20, 8)
    assert stats.duration_s == pytest.approx(0.04)
    assert stats.rate_meps == pytest.approx(8 / 0.04 / 1e6)
    # window 1: 2 of 200 pixels active, window 2: 4 of 200 -> mean 1.5%
    assert stats.active_percent == pytest.approx(1.5)
    assert stats.on_percent == pytest.approx(62.5)
    # events per active pixel per window: [3, 1, 1, 1, 1, 1] -> median 1, p90 2
    assert stats.per_active_pixel[0] == 1 and stats.per_active_pixel[1] == pytest.approx(2.0)


def test_flip_share_by_hand() -> None:
    """A flip: the pixel's next event is opposite and less than 20 ms later."""
    t = [0, 5_000, 30_000, 40_000, 59_999, 70_000, 70_500]
    x = [0, 0, 0, 1, 1, 2, 3]  # pixel 0: ON, OFF after 5 ms (flip), ON 25 ms later (too late)
    y = [0, 0, 0, 0, 0, 0, 0]  # pixel 1: OFF, ON 19.999 ms later (flip); 2 and 3: alone
    p = [1, 0, 1, 0, 1, 1, 0]  # pixels 2 and 3 are opposite and 0.5 ms apart, but not one pixel
    stats = recording_stats(make_events(t, x, y, p, (4, 4)))
    assert stats.flip_percent == pytest.approx(100 * 2 / 7)
    assert recording_stats(known_recording()).flip_percent == 0  # repeats, all of one polarity


def test_short_and_empty_recordings() -> None:
    short = recording_stats(make_events([0, 10], [0, 1], [0, 0], [1, 1], (4, 4)))
    assert short.active_percent == pytest.approx(100 * 2 / 16)  # the one partial window
    empty = recording_stats(make_events([], [], [], [], (4, 4)))
    assert empty.events == 0 and empty.rate_meps == 0


def test_info_command_on_files_of_two_layouts(tmp_path: Path) -> None:
    events = known_recording()
    write_deflare(tmp_path / "a.h5", events)
    write_dsec(tmp_path / "b.h5", events, t_offset=0)
    result = runner.invoke(app, ["info", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    assert [row["name"] for row in rows] == ["a.h5", "b.h5"]
    assert rows[0]["active_percent"] == pytest.approx(1.5)
    assert rows[1]["events"] == 8 and rows[1]["flip_percent"] == 0
    assert [row["format"] for row in rows] == ["deflare", "dsec"]
    table = runner.invoke(app, ["info", str(tmp_path)])
    assert table.exit_code == 0 and "a.h5" in table.output and "1.50%" in table.output


def test_info_summarises_a_folder_of_pairs_by_its_inputs_and_names_an_empty_folder(
    tmp_path: Path,
) -> None:
    """deflare synth writes pairs into two subfolders: --summary of the folder summarises the
    inputs (it was a traceback: no files, so no minimum); a folder with no event files at all
    is an error that names it."""
    pairs = tmp_path / "pairs"
    flare_dir, clean_dir = paired_dirs(pairs)
    events = known_recording()
    for folder in (flare_dir, clean_dir):
        folder.mkdir(parents=True)
        write_deflare(folder / "composed_00000_bg_flare.h5", events)
    result = runner.invoke(app, ["info", str(pairs), "--summary"])
    assert result.exit_code == 0, result.output
    assert "pairs" in result.output and "1.5/1.5/1.5" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["info", str(tmp_path / "empty"), "--summary"])
    assert result.exit_code != 0 and "empty" in result.output and "no event files" in result.output
    assert "Traceback" not in result.output


def test_info_names_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not an event file")
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code != 0 and "broken.h5" in result.output
    assert np.array_equal(np.frombuffer(bad.read_bytes(), np.uint8),
                          np.frombuffer(b"not an event file", np.uint8))  # fmt: skip


def test_info_shows_the_provenance_of_a_deflared_file(tmp_path: Path) -> None:
    from test_infer import write_checkpoint

    source = write_deflare(tmp_path / "a.h5", known_recording())
    identity = write_checkpoint(tmp_path / "identity.pt")
    out = tmp_path / "out.h5"
    result = runner.invoke(app, ["deflare", str(source), str(out), "--checkpoint", str(identity)])
    assert result.exit_code == 0, result.output
    row = json.loads(runner.invoke(app, ["info", str(out), "--json"]).output)
    assert row["provenance"]["deflare_checkpoint"] == "identity.pt"
    assert row["provenance"]["deflare_source"] == str(source)
    table = runner.invoke(app, ["info", str(out)])
    assert "written by deflare" in table.output and "identity.pt" in table.output
