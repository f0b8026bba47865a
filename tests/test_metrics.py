"""Voxel metrics, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from deflare_cli.metrics import (
    RemovalRanking,
    binary_f1,
    mean_metrics,
    pooled_mse,
    segment_metrics,
    split_polarity,
    voxel_mse,
)


def voxel(cells: dict[tuple[int, int, int], float], shape=(2, 4, 4)) -> torch.Tensor:
    grid = torch.zeros(shape)
    for index, value in cells.items():
        grid[index] = value
    return grid


def test_split_polarity() -> None:
    split = split_polarity(voxel({(0, 0, 0): 2, (1, 3, 3): -3}))
    assert split.shape == (2, 2, 4, 4)
    assert split[0, 0, 0, 0] == 2 and split[1, 1, 3, 3] == 3 and split.sum() == 5


def test_mse_by_hand() -> None:
    output = voxel({(0, 0, 0): 2, (1, 1, 1): -1})
    target = voxel({(0, 0, 0): 1})
    # differences 1 and -1 over 2*4*4 = 32 cells
    assert voxel_mse(output, target) == pytest.approx(2 / 32)


def test_pooled_mse_forgives_a_one_pixel_shift() -> None:
    output, target = voxel({(0, 0, 0): 4}), voxel({(0, 1, 1): 4})
    assert voxel_mse(output, target) == pytest.approx(32 / 32)
    # 2x2 pooling puts both in the same pooled cell: no error at all
    assert pooled_mse(output, target, 2) == 0
    # a negative event against a positive one: pooled P and N differ by 4/4 = 1 each, in 2 of
    # the (2, 2, 2, 2) = 16 pooled cells
    assert pooled_mse(voxel({(0, 0, 0): -4}), target, 2) == pytest.approx(2 / 16)


def test_f1_by_hand() -> None:
    predicted = torch.tensor([True, True, False, False])
    actual = torch.tensor([True, False, True, False])
    assert binary_f1(predicted, actual) == pytest.approx(2 * 1 / (2 + 2))
    assert binary_f1(torch.zeros(3, dtype=bool), torch.zeros(3, dtype=bool)) == 0.0


def test_f1_levels() -> None:
    # output: +1 at bin 0 (2,2); target: +1 at bin 1 (2,2) and -1 at bin 0 (3,3)
    output = voxel({(0, 2, 2): 1})
    target = voxel({(1, 2, 2): 1, (0, 3, 3): -1})
    scores = segment_metrics(output, target)
    assert scores["r_f1"] == 0  # no (polarity, bin, pixel) cell in common
    assert scores["t_f1"] == pytest.approx(2 * 1 / (1 + 2))  # (P, 2, 2) shared after time sum
    assert scores["tp_f1"] == pytest.approx(2 * 1 / (1 + 2))  # pixel (2, 2) shared


def test_identical_voxels_score_perfectly() -> None:
    target = voxel({(0, 1, 2): 3, (1, 0, 0): -2})
    scores = segment_metrics(target.clone(), target)
    assert scores == {"mse": 0, "pmse_2": 0, "pmse_4": 0, "r_f1": 1, "t_f1": 1, "tp_f1": 1}


def test_mean_metrics() -> None:
    assert mean_metrics([{"a": 1.0}, {"a": 3.0}]) == {"a": 2.0}
    assert mean_metrics([]) == {}


def _ranking_cells(sign: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four cells: 2 flare events at share 0.8, 1 other at 0.8, 3 others at 0.1, 1 flare at
    0.1, as (input, output, target) voxels of shape (1, 1, 4)."""
    source = torch.tensor([[[2.0, 1.0, 3.0, 1.0]]]) * sign
    share = torch.tensor([[[0.8, 0.8, 0.1, 0.1]]])
    target = torch.tensor([[[0.0, 1.0, 3.0, 0.0]]]) * sign
    return source, source * (1 - share), target


@pytest.mark.parametrize("sign", [1, -1])
def test_removal_ranking_by_hand(sign: int) -> None:
    ranking = RemovalRanking()
    ranking.add(*_ranking_cells(sign))
    # flare above other: 2 x (3 below + 1 tied / 2) + 1 x (3 tied / 2), over 3 x 4 pairs
    assert ranking.auc() == pytest.approx((2 * 3.5 + 1.5) / 12)
    assert ranking.flare_removed_at(0.97) == 0  # the top bin holds one of four other events
    assert ranking.flare_removed_at(0.75) == pytest.approx(2 / 3)
    # the same as ranking the seven events one by one (Mann-Whitney with mid-ranks)
    flare_scores = [0.8, 0.8, 0.1]
    other_scores = [0.8, 0.1, 0.1, 0.1]
    wins = sum((f > o) + 0.5 * (f == o) for f in flare_scores for o in other_scores)
    assert ranking.auc() == pytest.approx(wins / 12)


def test_removal_ranking_of_a_perfect_and_of_an_idle_model() -> None:
    source, _, target = _ranking_cells()
    perfect = RemovalRanking()
    perfect.add(source, target, target)  # removes exactly the flare
    assert perfect.auc() == 1 and perfect.flare_removed_at(0.97) == 1
    idle = RemovalRanking()
    idle.add(source, source, target)  # removes nothing: every share 0, all tied
    assert idle.auc() == 0.5 and idle.flare_removed_at(0.97) == 0
    empty = RemovalRanking()
    empty.add(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))
    assert math.isnan(empty.auc()) and math.isnan(empty.flare_removed_at())
    # a residual model's output past the input, or of the other sign, is clamped to [0, 1]
    wild = RemovalRanking()
    wild.add(source, torch.tensor([[[5.0, -2.0, 3.0, 1.0]]]), target)
    diverged = RemovalRanking()
    diverged.add(source, torch.full_like(source, math.nan), target)  # no crash: share 0
    assert diverged.auc() == 0.5
    # shares 0, 1, 0, 0: the three flare events tie with three others and lose to one
    assert wild.auc() == pytest.approx(3 * 1.5 / 12)
