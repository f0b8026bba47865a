"""benchmarks/context_probe.py: box densities around events, and the probe's table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from test_calibrate import labelled_pairs
from test_infer import write_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from context_probe import FEATURE_SETS, box_density, probe  # noqa: E402


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
