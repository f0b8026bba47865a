"""benchmarks/context_probe.py: box densities around events, and the probe's table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from test_calibrate import labelled_pairs
from test_infer import write_checkpoint

from deflare_cli.events import make_events
from deflare_cli.io import read_events, read_flare_labels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from context_probe import (  # noqa: E402
    AROUND_SEGMENTS,
    FEATURE_SETS,
    HISTORY_PX,
    HISTORY_SEGMENTS,
    SEGMENT_US,
    TRANSFER_SETS,
    box_density,
    dipole_coherence,
    event_features,
    probe,
    transfer,
)
from event_scores import read_recording  # noqa: E402


def test_box_density_counts_the_box_cut_at_the_edges() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.3, (23, 31)).astype(float)
    y, x = rng.integers(0, 23, 50), rng.integers(0, 31, 50)
    for radius in (0, 1, 4, 40):
        by_hand = [
            counts[max(row - radius, 0) : row + radius + 1, max(col - radius, 0) : col + radius + 1]
            .mean() for row, col in zip(y, x, strict=True)
        ]  # fmt: skip
        assert np.allclose(box_density(counts, y, x, radius), by_hand)


def test_history_and_around_are_mean_densities_of_the_segments_before_and_around() -> None:
    rng = np.random.default_rng(1)
    count, height, width = 900, 40, 50
    t = np.sort(rng.integers(0, 22 * SEGMENT_US, count))
    events = make_events(t, rng.integers(0, width, count), rng.integers(0, height, count),
                         rng.choice([-1, 1], count), (height, width))  # fmt: skip
    columns = event_features(events)
    for radius in (1, 24):  # polarity-blind: the events of both polarities
        assert np.allclose(
            columns[f"all{radius}"], columns[f"same{radius}"] + columns[f"opposite{radius}"]
        )
    segment = (t - t[0]) // SEGMENT_US
    maps = np.zeros((segment.max() + 1, height, width))
    np.add.at(maps, (segment, events.y, events.x), 1)
    last = segment.max() + 1
    for index in rng.choice(count, 40, replace=False):
        here = segment[index]
        spans = [(f"history{n}", max(here - n, 0), here) for n in HISTORY_SEGMENTS]
        spans += [
            (f"around{n}", max(here - n, 0), min(here + n + 1, last)) for n in AROUND_SEGMENTS
        ]
        for name, first, end in spans:
            for radius in HISTORY_PX:
                value = columns[f"{name}_{radius}"][index]
                if first == end:  # the first segment has no past
                    assert np.isnan(value)
                    continue
                row, col = int(events.y[index]), int(events.x[index])
                box = maps[first:end].mean(0)[
                    max(row - radius, 0) : row + radius + 1, max(col - radius, 0) : col + radius + 1
                ]
                assert np.isclose(value, box.mean())


def test_dipole_coherence_scores_polarity_against_the_lights_motion() -> None:
    # a light at (50, 50) moving right: ON events ahead of it (x > 50), OFF ones behind
    rng = np.random.default_rng(2)
    y = np.concatenate([rng.integers(45, 56, 20), rng.integers(45, 56, 20)])
    x = np.concatenate([rng.integers(52, 60, 20), rng.integers(40, 48, 20)])
    polarity = np.repeat([1, -1], 20)
    coherence = dipole_coherence(y, x, polarity, (50, 50), 24)
    assert (coherence > 0).all() and coherence.max() <= 1
    # flare right of the light firing ON scores +1; OFF there, or ON straight above, less
    probe_y, probe_x = np.array([50, 50, 20]), np.array([90, 90, 50])
    scores = dipole_coherence(np.concatenate([y, probe_y]), np.concatenate([x, probe_x]),
                              np.concatenate([polarity, [1, -1, 1]]), (50, 50), 24)  # fmt: skip
    assert scores[-3] > 0.95 and scores[-2] < -0.95 and abs(scores[-1]) < 0.2
    # too few events of one polarity near the light: no motion to score against
    assert not dipole_coherence(y[:22], x[:22], polarity[:22], (50, 50), 24).any()


def test_the_probe_scores_every_feature_set_on_both_halves(tmp_path: Path) -> None:
    pairs = labelled_pairs(tmp_path / "pairs", 4)
    rows = probe(pairs)
    assert [name for name, _, _ in rows] == list(FEATURE_SETS)
    for _, aucs, removed in rows:
        assert len(aucs) == len(removed) == 2
        assert all(0 <= value <= 1 for value in aucs + removed)
    with_model = probe(pairs, write_checkpoint(tmp_path / "identity.pt"))
    assert with_model[0][0] == "network share alone" and len(with_model) == len(FEATURE_SETS) + 1
    assert with_model[0][1] == [0.5, 0.5]  # the identity model removes nothing: no ranking


def test_transfer_checks_a_recording_against_the_check_pairs_threshold(tmp_path: Path) -> None:
    train = labelled_pairs(tmp_path / "train", 3)
    check = labelled_pairs(tmp_path / "check", 1)
    pair = next((check / "background_with_flare_events").iterdir())
    events = read_events(pair)
    flare = read_flare_labels(pair, len(events)).astype(bool)
    rows = transfer([train], check, {"the check pair": events})
    assert [name for name, *_ in rows] == list(TRANSFER_SETS)
    for _, auc, removed, kept in rows:
        assert 0 <= auc <= 1 and 0 <= removed <= 1
        # the check pair's own events: 97% of its non-flare ones and the flare left in lie at
        # or below its threshold, so the recording's share must fall between these bounds
        rest, left = (~flare).sum(), (1 - removed) * flare.sum()
        assert (0.97 * rest + left) / len(events) - 1e-9 <= kept["the check pair"]
        assert kept["the check pair"] <= (rest + left) / len(events) + 1e-9


def test_transfer_runs_only_the_named_feature_sets(tmp_path: Path) -> None:
    train = labelled_pairs(tmp_path / "train", 2)
    check = labelled_pairs(tmp_path / "check", 1)
    events = read_events(next((check / "background_with_flare_events").iterdir()))
    name = "local / frame density (normalised input)"
    every = {row[0]: row for row in transfer([train], check, {"pair": events})}
    assert transfer([train], check, {"pair": events}, [name]) == [every[name]]
    with pytest.raises(SystemExit, match="no feature set"):
        transfer([train], check, {"pair": events}, ["local / nothing"])


def test_a_recording_without_its_sensor_size_is_given_one(tmp_path: Path) -> None:
    pair = next((labelled_pairs(tmp_path, 1) / "background_with_flare_events").iterdir())
    name, events = read_recording(f"{pair}:600x700")
    assert name == pair.name and events.sensor_size == (600, 700)


def test_a_path_with_a_colon_of_its_own_is_read_whole(tmp_path: Path) -> None:
    pairs = labelled_pairs(tmp_path / "night:seed 7", 1)
    pair = next((pairs / "background_with_flare_events").iterdir())
    name, events = read_recording(str(pair))
    assert name == pair.name and len(events) == len(read_events(pair))
