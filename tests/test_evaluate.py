"""Evaluation: metrics by hand, perfect and identity cases, baselines on flicker and edges."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import write_deflare, write_pairs
from test_infer import write_checkpoint
from typer.testing import CliRunner

from deflare_cli import evaluate as evaluate_module
from deflare_cli.cli import app
from deflare_cli.errors import OutputError
from deflare_cli.evaluate import evaluate
from deflare_cli.events import make_events
from deflare_cli.methods import CLASSIC_FILTERS as BASELINES
from deflare_cli.metrics import event_scores, pair_span, point_cloud_metrics, voxel_scores
from deflare_cli.settings import BaselineSettings, CodecSettings, EvaluateSettings

SIZE = (40, 50)


def test_point_cloud_metrics_by_hand() -> None:
    # span 0..1000 us: t scales by 0.1; x by 100/50 = 2; y by 100/40 = 2.5; p -> {0, 100}
    target = make_events([0, 500], [0, 10], [0, 4], [1, 1], SIZE)
    output = make_events([100], [1], [0], [1], SIZE)
    scores = point_cloud_metrics(output, target, (0, 1000))
    nearest = math.hypot(2 * 1, 0, 0, 0.1 * 100)  # to the first target event
    assert scores["chamfer"] == pytest.approx(nearest)
    assert scores["gaussian"] == pytest.approx(1 - math.exp(-(nearest**2) / 0.4))
    opposite = make_events([0], [0], [0], [0], SIZE)  # negative event on a positive one
    assert point_cloud_metrics(opposite, target, (0, 1000))["chamfer"] == pytest.approx(100)


def test_empty_output_has_no_chamfer() -> None:
    target = make_events([0, 5], [0, 1], [0, 1], [1, 1], SIZE)
    empty = make_events(np.zeros(0, np.int64), [], [], [], SIZE)
    assert math.isnan(point_cloud_metrics(empty, target, (0, 100))["chamfer"])


def test_perfect_output_scores_perfectly() -> None:
    rng = np.random.default_rng(0)
    target = make_events(np.sort(rng.integers(0, 60_000, 500)), rng.integers(0, 50, 500),
                         rng.integers(0, 40, 500), rng.integers(0, 2, 500), SIZE)  # fmt: skip
    span = pair_span(target)
    scores = {**point_cloud_metrics(target, target, span),
              **voxel_scores(target, target, span, CodecSettings())}  # fmt: skip
    assert scores["chamfer"] == 0 and scores["gaussian"] == 0
    assert scores["mse"] == scores["pmse_2"] == scores["pmse_4"] == 0
    assert scores["r_f1"] == scores["t_f1"] == scores["tp_f1"] == 1


def test_segments_share_one_grid_and_empty_ones_count() -> None:
    target = make_events([1000], [0], [0], [1], SIZE)  # segment 0 of [0, 60 ms)
    output = make_events([45_000], [0], [0], [1], SIZE)  # segment 2
    scores = voxel_scores(output, target, (0, 60_000), CodecSettings())
    cells = 8 * SIZE[0] * SIZE[1]
    # segments 0 and 2 each hold one wrong cell; segment 1 is empty in both and still counts
    assert scores["mse"] == pytest.approx((1 / cells + 0 + 1 / cells) / 3)
    assert scores["tp_f1"] == 0


def test_event_scores_by_hand() -> None:
    source = make_events([1, 2, 3, 4], [0, 1, 2, 3], [0, 0, 0, 0], [1, 1, 1, 0], SIZE)
    labels = np.array([1, 1, 0, 0])
    output = source.select(np.array([0, 2]))  # removes a flare and a non-flare event
    scores = event_scores(source, labels, output)
    assert scores == {"flare_precision": 0.5, "flare_recall": 0.5, "flare_f1": 0.5,
                      "non_flare_kept": 0.5}  # fmt: skip
    nothing_removed = event_scores(source, labels, source)
    assert math.isnan(nothing_removed["flare_precision"]) and nothing_removed["flare_f1"] == 0
    # with the light's own events labelled: the non-flare events split into background and light
    light = np.array([0, 0, 0, 1])
    split = event_scores(source, labels, output, light)
    assert split["non_flare_kept"] == 0.5
    assert split["background_kept"] == 1.0 and split["light_kept"] == 0.0
    no_light = event_scores(source, labels, output, np.zeros(4, np.int8))
    assert no_light["background_kept"] == 0.5 and math.isnan(no_light["light_kept"])


def flicker_and_edge(duration_us: int = 300_000):
    """A pixel blinking at 100 Hz (4 ON then 4 OFF events per cycle) and a moving edge."""
    rng = np.random.default_rng(0)
    blink_t, blink_p = [], []
    for cycle in range(duration_us // 10_000):
        base = cycle * 10_000
        blink_t += [base + 500 + k * 600 for k in range(4)] + [
            base + 5500 + k * 600 for k in range(4)
        ]
        blink_p += [1] * 4 + [0] * 4
    edge_t, edge_x, edge_y = [], [], []
    for column in range(5, 45):
        for row in range(10, 30):
            edge_t.append((column - 5) * 7000 + int(rng.integers(0, 300)))
            edge_x.append(column)
            edge_y.append(row)
    t = np.r_[blink_t, edge_t]
    x = np.r_[np.full(len(blink_t), 2), edge_x]
    y = np.r_[np.full(len(blink_t), 2), edge_y]
    p = np.r_[blink_p, np.ones(len(edge_t))]
    order = np.argsort(t, kind="stable")
    return make_events(t[order], x[order], y[order], p[order], SIZE), len(blink_t), len(edge_t)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_remove_a_flickering_pixel_and_keep_a_moving_edge(name: str) -> None:
    events, blinks, edges = flicker_and_edge()
    output = BASELINES[name](events, BaselineSettings(efr_f0_hz=100))
    blinking = (output.x == 2) & (output.y == 2)
    assert blinking.sum() <= 0.3 * blinks
    edge = output.select((output.y >= 10) & (output.y < 30) & (output.p > 0))
    # every edge event should still have an ON event at its pixel within 1 ms
    found = 0
    for t, x, y in zip(events.t, events.x, events.y, strict=True):
        if 10 <= y < 30:
            near = (edge.x == x) & (edge.y == y) & (np.abs(edge.t - t) <= 1000)
            found += bool(near.any())
    assert found >= 0.8 * edges


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_emit_nothing_after_the_last_input_event(name: str) -> None:
    """EFR stamped emissions at the middle of their sample, which for the last sample could lie
    past the last input event and outside the evaluation grid (evaluate then failed)."""
    t = np.r_[np.arange(0, 50_000, 125), 50_001]  # a 100 Hz blinker; the last event early in
    p = np.r_[(t[:-1] % 10_000) < 5000, 1]  # its 1 ms sample
    events = make_events(t, np.zeros(len(t)), np.zeros(len(t)), p, SIZE)
    output = BASELINES[name](events, BaselineSettings(efr_f0_hz=100, efr_step_us=1000))
    assert not len(output) or (output.t.min() >= events.t[0] and output.t.max() <= t[-1])


def test_baselines_leave_input_unchanged() -> None:
    events, _, _ = flicker_and_edge(50_000)
    copies = {key: getattr(events, key).copy() for key in "txyp"}
    for baseline in BASELINES.values():
        baseline(events, BaselineSettings())
    assert all(np.array_equal(copies[key], getattr(events, key)) for key in "txyp")


def test_identity_model_scores_exactly_like_raw(tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "data", 2)
    checkpoint = write_checkpoint(tmp_path / "identity.pt")
    settings = EvaluateSettings(data_dir=data, methods=("raw", "model"), checkpoint=checkpoint)
    report = evaluate(settings)
    assert report.methods["raw"] == report.methods["model"]
    assert report.methods["raw"]["chamfer"] > 0  # the inputs do hold flare


def test_evaluate_command_writes_the_report(tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "data", 2)
    report = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", "--data-dir", str(data), "--methods",
                                      "raw,voxel,baf", "--output", str(report)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "E-Deflare metrics, 2 file(s)" in result.output and "*" in result.output
    content = json.loads(report.with_suffix(".json").read_text())
    assert set(content["methods"]) == {"raw", "voxel", "baf"}
    assert set(content["methods"]["raw"]) >= {"chamfer", "gaussian", "mse", "pmse_2", "pmse_4",
                                               "r_f1", "t_f1", "tp_f1"}  # fmt: skip
    assert len(content["files"]) == 6
    assert report.with_suffix(".csv").read_text().startswith("method,chamfer")
    assert (tmp_path / "report_files.csv").exists()


def test_report_folder_is_made_and_a_bad_one_fails_before_scoring(
    tmp_path: Path, monkeypatch
) -> None:
    data = write_pairs(tmp_path / "data", 1)
    report = evaluate(EvaluateSettings(data_dir=data, methods=("raw",),
                                       output=tmp_path / "new" / "deeper" / "report"))  # fmt: skip
    assert report.methods["raw"] and (tmp_path / "new" / "deeper" / "report.json").exists()
    (tmp_path / "a_file").write_text("")

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before the report's folder was checked")

    monkeypatch.setattr(evaluate_module, "evaluate_pair", no_scoring)
    with pytest.raises(OutputError, match="a_file"):
        evaluate(EvaluateSettings(data_dir=data, methods=("raw",),
                                  output=tmp_path / "a_file" / "report"))  # fmt: skip


def test_scoring_outputs_made_elsewhere(tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "data", 2)
    predictions = tmp_path / "pred"
    predictions.mkdir()
    from deflare_cli.io import read_events

    for path in (data / "background_with_light_events").iterdir():  # perfect predictions
        write_deflare(predictions / path.name.replace("light", "flare"), read_events(path))
    settings = EvaluateSettings(
        pred_dir=predictions, clean_dir=data / "background_with_light_events"
    )
    report = evaluate(settings)
    assert report.methods["pred"]["chamfer"] == 0 and report.methods["pred"]["r_f1"] == 1


def test_evaluate_bad_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 1 and "folder not found" in result.output
    result = CliRunner().invoke(
        app, ["evaluate", "--data-dir", str(tmp_path), "--methods", "magic"]
    )
    assert result.exit_code != 0 and "magic" in result.output
