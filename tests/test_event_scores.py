"""benchmarks/event_scores.py: how well a model ranks flare events above the rest."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import flare_pair, write_deflare
from test_calibrate import labelled_pairs
from test_infer import SMALL, write_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from event_scores import event_scores, removed_at_kept, roc_auc  # noqa: E402

from deflare_cli.errors import InputError  # noqa: E402
from deflare_cli.io import read_events  # noqa: E402


def test_roc_auc_and_removal_against_counting_by_hand() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    pos, neg = scores[labels], scores[~labels]
    by_hand = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert abs(roc_auc(scores, labels) - by_hand) < 1e-12
    assert roc_auc(labels.astype(float), labels) == 1.0
    assert roc_auc(-labels.astype(float), labels) == 0.0
    assert np.isnan(roc_auc(scores, np.zeros(300, bool)))
    threshold = np.quantile(neg, 0.97)
    assert removed_at_kept(scores, labels) == (pos > threshold).mean()


def test_an_untrained_model_scores_nothing_and_a_remover_scores_every_event(
    tmp_path: Path,
) -> None:
    """The identity model removes nothing: every event scores 0 (AUC 0.5). A mask model that
    removes every cell's events scores each event by its cell's share taken away: all of it."""
    pairs = labelled_pairs(tmp_path / "pairs", 1)
    path = next((pairs / "background_with_flare_events").glob("*.h5"))
    events = read_events(path)
    scores, labels = event_scores(write_checkpoint(tmp_path / "identity.pt"), path)
    assert len(scores) == len(labels) == len(events) and 0 < labels.mean() < 1
    assert np.all(scores == 0) and roc_auc(scores, labels) == 0.5
    mask = SMALL.model_copy(update={"output": "mask"})
    remover = write_checkpoint(tmp_path / "remover.pt", bias=20.0, model_settings=mask)
    scores, _ = event_scores(remover, path)
    # a cell's count can be fractional (events are split between neighbouring time bins) or
    # cancel to 0 (opposite events); a whole event's cell scores 1
    assert np.all(scores >= 0) and np.mean(np.isclose(scores, 1, atol=1e-6)) > 0.5


def test_a_file_without_labels_is_an_error_naming_it(tmp_path: Path) -> None:
    flare, _ = flare_pair()
    path = write_deflare(tmp_path / "unlabelled.h5", flare)
    with pytest.raises(InputError, match="unlabelled.h5.*is_flare"):
        event_scores(write_checkpoint(tmp_path / "identity.pt"), path)
