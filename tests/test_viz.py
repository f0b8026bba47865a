"""Pictures: files, sizes, and colours where the events are."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from conftest import flare_pair, random_events, write_deflare
from typer.testing import CliRunner

from deflare_cli.cli import app
from deflare_cli.codec import Voxels
from deflare_cli.events import make_events
from deflare_cli.io import write_voxels
from deflare_cli.settings import VisualizeSettings
from deflare_cli.viz import NEGATIVE, POSITIVE, compare_files, event_frame, visualize_file


def test_positive_events_are_red_and_negative_blue_where_placed() -> None:
    events = make_events([0, 1, 2, 3], [3, 3, 10, 10], [5, 5, 7, 7], [1, 1, 0, 0], (20, 30))
    image = event_frame(events)
    assert image.shape == (20, 30, 3)
    assert np.allclose(image[5, 3], POSITIVE) and image[5, 3, 0] > image[5, 3, 2]
    assert np.allclose(image[7, 10], NEGATIVE) and image[7, 10, 2] > image[7, 10, 0]
    assert np.allclose(image[0, 0], 1)  # no events: white
    mixed = make_events([0, 1], [4, 4], [4, 4], [1, 0], (20, 30))
    assert np.allclose(event_frame(mixed)[4, 4], 1)  # they cancel


def test_event_file_pictures(tmp_path: Path) -> None:
    path = write_deflare(tmp_path / "rec.h5", random_events(count=5000, size=(60, 80)))
    written = visualize_file(path, tmp_path / "pics", VisualizeSettings(segment=-1))
    names = sorted(p.name for p in written)
    assert names == [
        "rec_events_3d.png",
        "rec_frames.png",
        "rec_rate.png",
        "rec_voxel_segment4.png",
    ]
    for picture in written:
        assert picture.stat().st_size > 20_000
        height, width = matplotlib.image.imread(picture).shape[:2]
        assert height >= 300 and width >= 600


def test_frames_show_colours_at_the_events(tmp_path: Path) -> None:
    # one big positive square on the left, one negative square on the right
    yy, xx = np.mgrid[10:30, 10:30]
    t = np.arange(yy.size)
    x, y = np.r_[xx.ravel(), xx.ravel() + 40], np.r_[yy.ravel(), yy.ravel()]
    events = make_events(np.r_[t, t], x, y, np.r_[np.ones(t.size), np.zeros(t.size)], (40, 80))
    path = write_deflare(tmp_path / "squares.h5", events)
    written = visualize_file(path, tmp_path, VisualizeSettings(num_windows=1))
    image = matplotlib.image.imread(next(p for p in written if p.name.endswith("frames.png")))
    red = (image[..., 0] > 0.7) & (image[..., 2] < 0.3)
    blue = (image[..., 2] > 0.7) & (image[..., 0] < 0.3)
    assert red.sum() > 1000 and blue.sum() > 1000
    red_columns, blue_columns = np.nonzero(red)[1], np.nonzero(blue)[1]
    assert np.median(red_columns) < np.median(blue_columns)  # red left, blue right


def test_voxel_file_pictures(tmp_path: Path) -> None:
    data = torch.zeros(2, 8, 30, 40)
    data[1, 3, 10, 10] = 5
    path = tmp_path / "v.pt"
    write_voxels(path, Voxels(data, 0, 20_000))
    written = visualize_file(path, tmp_path / "out", VisualizeSettings(segment=1))
    assert sorted(p.name for p in written)[-1] == "v_voxel_segment1.png"
    with pytest.raises(Exception, match="--segment 7"):
        visualize_file(path, tmp_path / "out", VisualizeSettings(segment=7))


def test_compare_with_gif(tmp_path: Path) -> None:
    flare, clean = flare_pair()
    paths = [write_deflare(tmp_path / "in.h5", flare), write_deflare(tmp_path / "out.h5", clean),
             write_deflare(tmp_path / "target.h5", clean)]  # fmt: skip
    written = compare_files(paths, tmp_path / "cmp", VisualizeSettings(gif=True, num_windows=2))
    assert [p.name for p in written] == ["compare.png", "compare.gif"]
    assert all(p.stat().st_size > 10_000 for p in written)


def test_visualize_command(tmp_path: Path) -> None:
    path = write_deflare(tmp_path / "rec.h5", random_events(count=2000, size=(60, 80)))
    result = CliRunner().invoke(app, ["visualize", str(path), "-o", str(tmp_path / "pics")])
    assert result.exit_code == 0, result.output
    assert result.output.count("wrote") == 4
    result = CliRunner().invoke(app, ["visualize", "--compare", str(path), "-o", str(tmp_path)])
    assert result.exit_code == 1 and "INPUT OUTPUT" in result.output
    result = CliRunner().invoke(app, ["visualize", str(tmp_path / "missing.h5")])
    assert result.exit_code == 1 and "file not found" in result.output
