"""Voxel metrics, checked against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from deflare_cli.metrics import (
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
