"""The model shipped in the package: present, small, loadable, used without --checkpoint."""

from __future__ import annotations

from pathlib import Path

from conftest import flare_pair, write_deflare
from typer.testing import CliRunner

from deflare_cli.checkpoint import calibrated_margin, model_from_checkpoint
from deflare_cli.cli import app
from deflare_cli.infer import DEFAULT_CHECKPOINT, LONE_EVENT_MARGIN
from deflare_cli.io import read_events
from deflare_cli.model import count_parameters


def test_default_model_ships_small_and_loads() -> None:
    """The trees of configs/default_trees.yaml, calibrated below the margin where lone events
    can no longer go (README "The default model")."""
    assert DEFAULT_CHECKPOINT.exists(), "deflare_cli/weights/default.pt must ship"
    assert DEFAULT_CHECKPOINT.stat().st_size < 4 * 2**20
    model, codec = model_from_checkpoint(DEFAULT_CHECKPOINT)
    assert codec.num_bins == 8 and count_parameters(model) == 0  # buffers, no parameters
    assert model.settings.density_head == "trees" and model.settings.removal == "threshold"
    assert model.settings.density_trees[0] == 200
    assert 0 < calibrated_margin(DEFAULT_CHECKPOINT) < LONE_EVENT_MARGIN


def test_deflare_without_checkpoint_uses_it(tmp_path: Path) -> None:
    flare, _ = flare_pair()
    source = write_deflare(tmp_path / "in.h5", flare)
    result = CliRunner().invoke(app, ["deflare", str(source), str(tmp_path / "out.h5")])
    assert result.exit_code == 0, result.output
    output = read_events(tmp_path / "out.h5")
    assert 0 < len(output) <= len(flare) * 1.5
