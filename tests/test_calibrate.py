"""The removal margin: rounding with a margin, and its calibration on labelled pairs."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import flare_pair, write_deflare
from test_infer import write_checkpoint
from typer.testing import CliRunner

from deflare_cli.calibrate import (
    MARGINS,
    MarginScore,
    calibrate,
    choose_margin,
    reachable_flare,
)
from deflare_cli.checkpoint import calibrated_margin, export_checkpoint, load_checkpoint
from deflare_cli.cli import app
from deflare_cli.errors import InputError
from deflare_cli.events import make_events
from deflare_cli.infer import deflare, load_deflarer, removal_counts
from deflare_cli.io import read_events
from deflare_cli.metrics import event_scores, kept_mask
from deflare_cli.settings import CalibrateSettings, CodecSettings, InferSettings


def test_removal_counts_round_with_a_margin() -> None:
    net = torch.tensor([1.0, 1.0, 1.0, -1.0, 3.0, 0.0, 2.0])
    predicted = torch.tensor([0.45, 0.25, 0.15, -0.15, 0.9, 0.0, 2.0])
    assert removal_counts(net, predicted, 0.0).tolist() == [1, 1, 1, -1, 2, 0, 0]
    # margin 0.3: remove one event only where the prediction is 0.8 below the input or more
    assert removal_counts(net, predicted, 0.3).tolist() == [0, 0, 1, -1, 2, 0, 0]
    assert removal_counts(net, predicted, 0.9).tolist() == [0, 0, 0, 0, 1, 0, 0]
    # a negative event where the model wants a positive one: remove it, and add one
    assert removal_counts(torch.tensor([-1.0]), torch.tensor([0.9]), 0.3).tolist() == [-2]


def test_removal_threshold_edits_only_cells_the_model_is_sure_of() -> None:
    """Rule threshold: a cell loses its rounded excess only where the share it loses is at least
    0.5 + margin; lone events go at the same shares as with rounding."""
    net = torch.tensor([1.0, 1.0, 3.0, 3.0, 4.0, -2.0, -2.0, 0.0])
    share = torch.tensor([0.9, 0.8, 0.5, 0.9, 0.86, 0.9, 0.6, 0.9])
    predicted = net * (1 - share)  # a mask model's output
    assert removal_counts(net, predicted, 0.35, "threshold").tolist() == [1, 0, 0, 3, 3, -2, 0, 0]
    # rounding takes one of the three events the model scores at 0.5, and one of the two at 0.6
    assert removal_counts(net, predicted, 0.35).tolist() == [1, 0, 1, 2, 3, -1, -1, 0]
    lone = torch.ones(101)
    shares = torch.linspace(0, 1, 101)
    for margin in (0.0, 0.2, 0.35, 0.45):
        assert torch.equal(
            removal_counts(lone, lone * (1 - shares), margin, "threshold"),
            removal_counts(lone, lone * (1 - shares), margin),
        )
    # above 0.5 no cell is edited, however many events it holds
    assert not removal_counts(net, torch.zeros_like(net), 0.55, "threshold").any()


def test_a_perfect_model_reaches_lone_flare_events_up_to_margin_one_half() -> None:
    # bins of 2.5 ms: three lone ON flare events, a cell of three ON ones, a cell of one ON and
    # one OFF (net 0: nothing to remove), and two scene events
    t = np.array([0, 100, 200, 300, 400, 500, 600, 700, 5_000, 6_000])
    x = np.array([1, 2, 3, 5, 5, 5, 7, 7, 9, 9])
    p = np.array([1, 1, 1, 1, 1, 1, 1, -1, 1, -1])
    events = make_events(t, x, np.zeros(10, int), p, (4, 12))
    flare = np.array([True] * 8 + [False] * 2)
    reach = reachable_flare(events, flare, CodecSettings(), [0.0, 0.5, 0.55, 0.9])
    assert reach == [6 / 8, 6 / 8, 2 / 8, 2 / 8]
    assert np.isnan(reachable_flare(events, ~np.ones(10, bool), CodecSettings(), [0.0])).all()
    # rule threshold: the flare-only cells go whole up to 0.5, nothing above
    margins = [0.0, 0.5, 0.55, 0.9]
    assert reachable_flare(events, flare, CodecSettings(), margins, "threshold") == [
        6 / 8,
        6 / 8,
        0,
        0,
    ]


def labelled_pairs(folder: Path, count: int) -> Path:
    """Pairs as `deflare synth` writes them: inputs with a per-event is_flare column."""
    for index in range(count):
        flare, clean = flare_pair(seed=index, duration_us=60_000)
        is_flare = ~kept_mask(flare, clean)  # the input events the target lacks
        flare_path = folder / "background_with_flare_events" / f"composed_{index:05d}_bg_flare.h5"
        clean_path = folder / "background_with_light_events" / f"composed_{index:05d}_bg_light.h5"
        flare_path.parent.mkdir(parents=True, exist_ok=True)
        clean_path.parent.mkdir(parents=True, exist_ok=True)
        write_deflare(flare_path, flare)
        write_deflare(clean_path, clean)
        with h5py.File(flare_path, "a") as h5:
            h5["events/is_flare"] = is_flare.astype(np.int8)
    return folder


@pytest.fixture
def remover(tmp_path: Path) -> Path:
    """A model that removes many events, flare or not, but with little certainty: a margin of
    0.3 keeps 93% of the non-flare events of two `labelled_pairs`."""
    return write_checkpoint(tmp_path / "remover.pt", perturb=0.05, bias=-0.6)


def test_calibration_picks_the_smallest_margin_that_keeps_enough(
    tmp_path: Path, remover: Path
) -> None:
    data = labelled_pairs(tmp_path / "val", 2)
    output = tmp_path / "calibrated.pt"
    report = tmp_path / "pairs.csv"
    settings = CalibrateSettings(
        data_dir=data, min_kept=0.9, output=output, report=report,
        infer=InferSettings(checkpoint=remover),
    )  # fmt: skip
    result = calibrate(settings)
    assert [score.margin for score in result.scores] == list(MARGINS) and result.pairs == 2
    by_margin = {score.margin: score for score in result.scores}
    # the report: one row per pair and margin, the scores the table averages
    with open(report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * len(MARGINS) and len({row["pair"] for row in rows}) == 2
    for margin, score in by_margin.items():
        ours = [row for row in rows if float(row["margin"]) == margin]
        assert [float(row["non_flare_kept"]) for row in ours] == score.others_kept
        assert [float(row["flare_removed"]) for row in ours] == score.flare_removed
        assert all((row["chosen"] == "True") == (margin == result.margin) for row in ours)
    assert by_margin[0.0].non_flare_kept < 0.9  # without a margin the model does harm
    assert result.margin is not None and result.margin > 0
    assert by_margin[result.margin].non_flare_kept >= 0.9
    below = MARGINS[MARGINS.index(result.margin) - 1]
    assert by_margin[below].non_flare_kept < 0.9
    for score in result.scores:  # per pair, beside the mean
        assert score.pairs_below(0.9) == sum(kept < 0.9 for kept in score.others_kept)
    assert by_margin[0.0].pairs_below(0.9) >= 1 and by_margin[0.0].pairs_below(0.0) == 0
    assert calibrated_margin(output) == result.margin
    assert load_checkpoint(output)["notes"]["min_kept"] == 0.9

    # deflare applies the stored margin, and its outputs score as calibration said
    assert load_deflarer(InferSettings(checkpoint=output)).margin == result.margin
    assert load_deflarer(InferSettings(checkpoint=output, margin=0.0)).margin == 0.0
    kept = []
    for index, source in enumerate(sorted((data / "background_with_flare_events").glob("*.h5"))):
        target = tmp_path / f"out{index}.h5"
        deflare(source, target, InferSettings(checkpoint=output))
        with h5py.File(source) as h5:
            labels = h5["events/is_flare"][:]
        scores = event_scores(read_events(source), labels, read_events(target))
        kept.append(scores["non_flare_kept"])
    assert np.mean(kept) == pytest.approx(by_margin[result.margin].non_flare_kept)


def test_a_bound_on_the_pairs_below_the_target_asks_for_a_larger_margin() -> None:
    """The mean of three pairs meets 97% at margin 0.1 while one pair keeps 93%: the mean alone
    takes 0.1; allowing no pair below takes 0.2, where every pair keeps 97%; a third of the
    pairs below is allowed at 0.1 again."""
    scores = [
        MarginScore(0.0, others_kept=[0.95, 0.95, 0.90]),
        MarginScore(0.1, others_kept=[0.99, 0.99, 0.93]),
        MarginScore(0.2, others_kept=[0.99, 0.99, 0.975]),
    ]
    assert choose_margin(scores, 0.97) == 0.1
    assert choose_margin(scores, 0.97, max_share_below=0.0) == 0.2
    assert choose_margin(scores, 0.97, max_share_below=0.34) == 0.1
    assert choose_margin(scores, 0.98, max_share_below=0.0) is None


def test_the_light_and_the_background_can_be_judged_apart() -> None:
    """At margin 0.1 both pairs keep 97% of their non-flare events and 98% of their background,
    but one pair's light keeps 80%: judged as one, 0.1 is enough; with a light target of 90%
    on average, 0.1 fails it (87.5%) and 0.2 is needed; with a light target of 85% the mean is
    enough unless every pair must meet it. Where no pair has light events, only the background
    counts."""
    scores = [
        MarginScore(0.0, others_kept=[0.9, 0.9], background_kept=[0.9, 0.9],
                    light_kept=[0.8, 0.7]),
        MarginScore(0.1, others_kept=[0.975, 0.97], background_kept=[0.98, 0.98],
                    light_kept=[0.95, 0.8]),
        MarginScore(0.2, others_kept=[0.99, 0.99], background_kept=[0.99, 0.99],
                    light_kept=[0.95, 0.95]),
    ]  # fmt: skip
    assert choose_margin(scores, 0.97) == 0.1
    assert choose_margin(scores, 0.97, min_light_kept=0.9) == 0.2
    assert choose_margin(scores, 0.97, min_light_kept=0.85) == 0.1
    assert choose_margin(scores, 0.97, max_share_below=0.0, min_light_kept=0.85) == 0.2
    assert choose_margin(scores, 0.995, min_light_kept=0.5) is None  # the background decides
    unlit = [replace(score, light_kept=[]) for score in scores]
    assert choose_margin(unlit, 0.98, min_light_kept=0.9) == 0.1


def test_calibration_reports_the_light_kept_where_pairs_label_it(
    tmp_path: Path, remover: Path
) -> None:
    data = labelled_pairs(tmp_path / "val", 2)
    inputs = sorted((data / "background_with_flare_events").glob("*.h5"))
    # without is_light labels: the split criterion cannot be judged, and says which file
    result = CliRunner().invoke(
        app, ["calibrate", str(remover), str(data), "--min-light-kept", "0.9"]
    )
    assert result.exit_code == 1 and inputs[0].name in result.output
    assert "is_light" in result.output
    for path in inputs:  # call the first quarter of each pair's non-flare events the light's
        with h5py.File(path, "a") as h5:
            others = np.flatnonzero(h5["events/is_flare"][:] == 0)
            light = np.zeros(len(h5["events/t"]), np.int8)
            light[others[: len(others) // 4]] = 1
            h5["events/is_light"] = light
    report = tmp_path / "pairs.csv"
    settings = CalibrateSettings(
        data_dir=data, min_kept=0.9, min_light_kept=0.9, report=report,
        infer=InferSettings(checkpoint=remover),
    )  # fmt: skip
    result = calibrate(settings)
    assert result.light_labels
    with open(report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for score in result.scores:
        ours = [row for row in rows if float(row["margin"]) == score.margin]
        assert [float(row["light_kept"]) for row in ours] == score.light_kept
        assert [float(row["background_kept"]) for row in ours] == score.background_kept
        # the non-flare share is the two parts weighted by their counts: between them
        for row in ours:
            low, high = sorted((float(row["light_kept"]), float(row["background_kept"])))
            assert low - 1e-12 <= float(row["non_flare_kept"]) <= high + 1e-12
    assert result.margin == choose_margin(result.scores, 0.9, 1.0, 0.9)
    chosen = next(score for score in result.scores if score.margin == result.margin)
    assert chosen.mean("light_kept") >= 0.9 and chosen.mean("background_kept") >= 0.9
    shown = CliRunner().invoke(
        app, ["calibrate", str(remover), str(data), "-o", str(tmp_path / "c.pt"),
              "--min-kept", "0.9", "--min-light-kept", "0.9"],
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "light kept" in shown.output and "of background" in shown.output
    assert load_checkpoint(tmp_path / "c.pt")["notes"]["min_light_kept"] == 0.9


def test_calibrate_command_takes_the_bound_and_stores_it(tmp_path: Path, remover: Path) -> None:
    data = labelled_pairs(tmp_path / "val", 2)
    scores = calibrate(CalibrateSettings(data_dir=data, infer=InferSettings(checkpoint=remover)))
    # a target between the two pairs' shares at the first margin keeping over 90% on average:
    # the mean meets it there, one pair does not
    first = next(score for score in scores.scores if score.non_flare_kept > 0.9)
    assert min(first.others_kept) < first.non_flare_kept
    min_kept = (min(first.others_kept) + first.non_flare_kept) / 2
    outputs = {}
    for bound in ("1", "0"):
        outputs[bound] = tmp_path / f"bound{bound}.pt"
        result = CliRunner().invoke(
            app,
            ["calibrate", str(remover), str(data), "-o", str(outputs[bound]), "--min-kept",
             str(min_kept), "--max-share-below", bound],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert load_checkpoint(outputs[bound])["notes"]["max_share_below"] == float(bound)
    assert calibrated_margin(outputs["1"]) == first.margin
    assert calibrated_margin(outputs["0"]) > first.margin
    # the mean keeps 99.7% first above margin 0.5, where no lone event can go: deflare says so
    for min_kept, note in (("0.997", True), ("0.9", False)):
        result = CliRunner().invoke(
            app, ["calibrate", str(remover), str(data), "-o", str(tmp_path / "m.pt"),
                  "--min-kept", min_kept],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert ("no cell holding a single event" in result.output) == note
        assert "a perfect model's reach" in result.output
    by_margin = {score.margin: score for score in scores.scores}
    assert len(by_margin[0.0].flare_reachable) == 2
    assert by_margin[0.0].reachable > 0.9 > by_margin[0.55].reachable
    result = CliRunner().invoke(
        app, ["calibrate", str(remover), str(data), "--max-share-below", "1.5"]
    )
    assert result.exit_code != 0 and "max_share_below" in result.output


def test_calibration_reports_when_no_margin_is_enough(tmp_path: Path) -> None:
    remover = write_checkpoint(tmp_path / "wrecker.pt", perturb=0.3, bias=-0.4)  # keeps < 90%
    data = labelled_pairs(tmp_path / "val", 1)
    output = tmp_path / "calibrated.pt"
    runner = CliRunner()
    report = tmp_path / "pairs.csv"
    result = runner.invoke(
        app, ["calibrate", str(remover), str(data), "-o", str(output), "--min-kept", "1",
              "--report", str(report)],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "no margin keeps 100.0%" in result.output
    assert not output.exists()
    # the report is written all the same: it shows what kept the margin from being found
    with open(report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(MARGINS) and not any(row["chosen"] == "True" for row in rows)
    assert all(float(row["non_flare_kept"]) < 1 for row in rows[:1])
    result = runner.invoke(app, ["calibrate", str(remover), str(data), "--report", str(remover)])
    assert result.exit_code != 0 and "overwrite the input" in result.output


def test_calibrate_refuses_outputs_it_cannot_write_before_it_runs(
    tmp_path: Path, remover: Path
) -> None:
    """A missing folder or a report named as the model is refused up front, not after the run."""
    data = labelled_pairs(tmp_path / "val", 1)
    model = tmp_path / "m.pt"
    cases = {
        "--report and the model's output name the same file": ["--report", str(model)],
        "does not exist": ["--report", str(tmp_path / "no" / "pairs.csv")],
        "is a folder": ["--report", str(tmp_path)],
    }
    for message, extra in cases.items():
        result = CliRunner().invoke(
            app, ["calibrate", str(remover), str(data), "-o", str(model), *extra]
        )
        assert result.exit_code != 0 and message in result.output, result.output
        assert "calibration on" not in result.output and not model.exists()
    result = CliRunner().invoke(
        app, ["calibrate", str(remover), str(data), "-o", str(tmp_path / "no" / "m.pt")]
    )
    assert result.exit_code != 0 and "does not exist" in result.output
    assert "calibration on" not in result.output


def test_calibration_runs_at_the_precision_asked_for(tmp_path: Path, remover: Path) -> None:
    # deflare runs bf16 where the hardware has it: calibrate can measure the margin there too
    data = labelled_pairs(tmp_path / "val", 1)
    outputs = {}
    for precision in ("fp32", "bf16"):
        outputs[precision] = tmp_path / f"{precision}.pt"
        result = CliRunner().invoke(
            app,
            ["calibrate", str(remover), str(data), "-o", str(outputs[precision]),
             "--min-kept", "0.9", "--engine", "torch", "--precision", precision],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert calibrated_margin(outputs[precision]) > 0
        assert "pairs keeping < 90%" in result.output and " of 1 " in result.output
    result = CliRunner().invoke(app, ["calibrate", str(remover), str(data), "--precision", "fp8"])
    assert result.exit_code != 0 and "fp8" in result.output


def test_calibration_needs_labels(tmp_path: Path, remover: Path) -> None:
    data = labelled_pairs(tmp_path / "val", 1)
    with h5py.File(next((data / "background_with_flare_events").glob("*.h5")), "a") as h5:
        del h5["events/is_flare"]
    result = CliRunner().invoke(app, ["calibrate", str(remover), str(data)])
    assert result.exit_code == 1 and "is_flare" in result.output


def test_margin_bounds(tmp_path: Path, remover: Path) -> None:
    out = tmp_path / "out.h5"
    source = write_deflare(tmp_path / "in.h5", flare_pair()[0])
    result = CliRunner().invoke(
        app, ["deflare", str(source), str(out), "--checkpoint", str(remover), "--margin", "1"]
    )
    assert result.exit_code != 0 and not out.exists()
    bad = tmp_path / "bad.pt"
    export_checkpoint(remover, bad, margin=0.2)
    checkpoint = load_checkpoint(bad)
    checkpoint["settings"]["decode"]["margin"] = 1.5
    torch.save(checkpoint, bad)
    with pytest.raises(InputError, match="margin"):
        calibrated_margin(bad)
