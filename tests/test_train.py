"""Training on CPU: learning, checkpoints, exact resumption, Ctrl-C, debug output, DDP."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import same_events, write_pairs
from test_infer import SMALL, write_checkpoint
from test_model import DENSITY_NET
from typer.testing import CliRunner

from deflare_cli.checkpoint import load_checkpoint, load_weights, model_from_checkpoint
from deflare_cli.cli import app
from deflare_cli.devices import start_cluster
from deflare_cli.errors import DeflareError, InputError
from deflare_cli.io import find_pairs, read_events
from deflare_cli.model import TrueResidualUNet3D
from deflare_cli.settings import DataSettings, ModelSettings, TrainSettings, paired_dirs
from deflare_cli.train import Trainer, train
from deflare_cli.train.batchnorm import recompute_batchnorm, statistics_batches
from deflare_cli.train.data import CachedPair, EventVoxelDataset, encode_pair
from deflare_cli.train.trainer import loss_window, mask_loss, training_loss
from deflare_cli.train.validation import same_size_batches

SMALL_MODEL = ModelSettings(f_maps=(8, 16))
BATCHNORM_MODEL = ModelSettings(f_maps=(8, 16), layer_order="bcr", input_norm="frame")


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs"), 3)


def settings_for(run_dir: Path, data_dir: Path, **overrides) -> TrainSettings:
    values = {
        "run_dir": run_dir,
        "data": DataSettings(data_dir=data_dir, crop=(16, 16), val_fraction=0.34),
        "model": SMALL_MODEL,
        "epochs": 3,
        "batch_size": 2,
        "lr": 1e-3,
        "checkpoint_every": 2,
    }
    values.update(overrides)
    return TrainSettings(**values)


def mse_on(model: torch.nn.Module, dataset: EventVoxelDataset) -> float:
    with torch.no_grad():
        errors = [((model(x[None], density=d[None]) - y[None]) ** 2).mean() for x, y, d in dataset]
    return float(torch.stack(errors).mean())


def test_loss_decreases(tmp_path: Path, pairs_dir: Path) -> None:
    settings = settings_for(
        tmp_path, pairs_dir, epochs=12,
        data=DataSettings(data_dir=pairs_dir, crop="full", flips=False, val_fraction=0),
    )  # fmt: skip
    result = train(settings)
    trainer = Trainer(
        settings.model_copy(update={"resume": result.last_checkpoint}), start_cluster("cpu")
    )
    before = mse_on(TrueResidualUNet3D(SMALL_MODEL), trainer.train_set)  # identity: raw input
    after = mse_on(trainer.model, trainer.train_set)
    assert after < 0.8 * before, (before, after)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]


def test_balanced_loss_weighs_each_kind_of_cell_equally() -> None:
    inputs = torch.tensor([0.0, 0.0, 1.0, 9.0, 9.0])
    targets = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])  # two empty, one scene, two flare cells
    delete_all = torch.zeros(5)
    keep_all = inputs.clone()
    # plain MSE prefers deleting the scene event with the flare ...
    assert training_loss("mse", delete_all, inputs, targets) < training_loss(
        "mse", keep_all, inputs, targets
    )
    # ... balanced, losing one scene event costs a third, keeping flare cells a third of 81
    assert training_loss("balanced", delete_all, inputs, targets) == pytest.approx(1 / 3)
    assert training_loss("balanced", keep_all, inputs, targets) == pytest.approx(81 / 3)
    right = targets.clone()
    assert training_loss("balanced", right, inputs, targets) == 0


def test_training_with_the_balanced_loss_keeps_scene_events(
    tmp_path: Path, pairs_dir: Path
) -> None:
    settings = settings_for(
        tmp_path, pairs_dir, epochs=12, loss="balanced",
        data=DataSettings(data_dir=pairs_dir, crop="full", flips=False, val_fraction=0),
    )  # fmt: skip
    result = train(settings)
    trainer = Trainer(
        settings.model_copy(update={"resume": result.last_checkpoint}), start_cluster("cpu")
    )
    before = mse_on(TrueResidualUNet3D(SMALL_MODEL), trainer.train_set)
    assert mse_on(trainer.model, trainer.train_set) < before
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]


def test_mask_loss_by_hand() -> None:
    inputs = torch.tensor([0.0, 1.0, -2.0, 4.0, 1.0])
    targets = torch.tensor([3.0, 1.0, -1.0, 0.0, 0.0])  # empty, scene, half flare, two flare
    logits = torch.tensor([5.0, -1.0, 0.0, 2.0, 1.0])
    p = logits.sigmoid()
    # flare events: 1 of the -2 cell, 4 + 1 of the last cells; scene: 1 + 1 of the -2 cell
    flare = -(1 * p[2].log() + 4 * p[3].log() + 1 * p[4].log()) / 6
    scene = -(1 * (1 - p[1]).log() + 1 * (1 - p[2]).log()) / 2
    assert mask_loss(logits, inputs, targets) == pytest.approx(float(flare + scene) / 2)
    # the empty cell carries no loss, whatever the logit
    other = logits.clone()
    other[0] = -40.0
    assert mask_loss(other, inputs, targets) == mask_loss(logits, inputs, targets)
    # without flare, the scene half alone; sure and right costs next to nothing
    assert mask_loss(torch.full((5,), -20.0), inputs, inputs) < 1e-8
    assert training_loss("mask", logits, inputs, targets) == mask_loss(logits, inputs, targets)


@pytest.mark.parametrize(
    ("model", "lr"), [(ModelSettings(f_maps=(8, 16), output="mask"), 1e-3), (DENSITY_NET, 0.01)]
)
def test_training_a_mask_model_learns_which_events_are_flare(
    tmp_path: Path, pairs_dir: Path, model: ModelSettings, lr: float
) -> None:
    settings = settings_for(
        tmp_path, pairs_dir, epochs=12, loss="mask", lr=lr, model=model,
        data=DataSettings(data_dir=pairs_dir, crop="full", flips=False, val_fraction=0),
    )  # fmt: skip
    result = train(settings)
    trainer = Trainer(
        settings.model_copy(update={"resume": result.last_checkpoint}), start_cluster("cpu")
    )
    untrained = TrueResidualUNet3D(settings.model)
    with torch.no_grad():
        before = [mask_loss(untrained(x[None], raw=True, density=d[None]), x[None], y[None])
                  for x, y, d in trainer.train_set]  # fmt: skip
        after = [mask_loss(trainer.model(x[None], raw=True, density=d[None]), x[None], y[None])
                 for x, y, d in trainer.train_set]  # fmt: skip
    assert float(torch.stack(after).mean()) < 0.5 * float(torch.stack(before).mean())
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]


def test_the_loss_leaves_out_the_context_around_crops(tmp_path: Path, pairs_dir: Path) -> None:
    """With ``data.context`` the model sees the band around each crop, and the loss counts only
    the crop: flare events in the band alone cost nothing and move no weight."""
    band_only = torch.zeros(2, 1, 8, 24, 24)
    band_only[..., 0, :] = 1.0  # events in the first row: inside a 4-px band
    targets = torch.zeros_like(band_only)  # all flare
    density = torch.ones(2)
    losses = {}
    for context in (0, 4):
        data = DataSettings(data_dir=pairs_dir, crop=(16, 16), context=context)
        # no weight decay: it alone moves weights
        settings = settings_for(tmp_path / str(context), pairs_dir, loss="mask", data=data,
                                model=DENSITY_NET, weight_decay=0)  # fmt: skip
        trainer = Trainer(settings, start_cluster("cpu"))
        before = [p.detach().clone() for p in trainer.model.parameters()]
        losses[context] = trainer.train_step(band_only, targets, density)
        after = trainer.model.parameters()
        moved = any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
        assert moved == (context == 0)
    assert losses[0] > 0.1 and losses[4] == 0
    assert loss_window(4) == (..., slice(4, -4), slice(4, -4)) and loss_window(0) == (...,)


def test_checkpoint_reloads_to_identical_outputs(tmp_path: Path, pairs_dir: Path) -> None:
    result = train(settings_for(tmp_path / "run", pairs_dir, epochs=1))
    checkpoint = load_checkpoint(result.last_checkpoint)
    assert checkpoint["step"] == result.steps and checkpoint["epoch"] == 1
    assert set(checkpoint) >= {"model", "optimizer", "scheduler", "settings", "best_metric"}
    first = TrueResidualUNet3D(SMALL_MODEL)
    first.load_state_dict(checkpoint["model"])
    again = TrueResidualUNet3D(ModelSettings(**checkpoint["settings"]["model"]))
    again.load_state_dict(load_checkpoint(result.last_checkpoint)["model"])
    voxels = torch.randn(2, 1, 8, 32, 48)
    with torch.no_grad():
        assert torch.equal(first(voxels), again(voxels))
        assert not torch.equal(first(voxels), voxels)  # it did learn something
    assert (tmp_path / "run" / "best.pt").exists()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("model", [SMALL_MODEL, BATCHNORM_MODEL], ids=["groupnorm", "batchnorm"])
def test_interrupted_and_resumed_equals_uninterrupted(
    tmp_path: Path, pairs_dir: Path, model: ModelSettings
) -> None:
    """Also with BatchNorm, whose statistics are recomputed at validations and at the end but
    not when Ctrl-C saves."""
    straight = train(settings_for(tmp_path / "a", pairs_dir, model=model))
    steps_per_epoch = straight.steps // 3
    assert steps_per_epoch >= 2

    stop_at = steps_per_epoch + 1  # in the middle of epoch 2

    def press_ctrl_c(stage: str, done: int, total: int, detail: str = "") -> None:
        if stage == "training" and done == stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(settings_for(tmp_path / "b", pairs_dir, model=model), press_ctrl_c)
    assert first.interrupted and first.steps == stop_at
    last = tmp_path / "b" / "last.pt"
    saved = load_checkpoint(last)
    assert saved["step"] == stop_at and saved["step_in_epoch"] == 1
    resumed = train(settings_for(tmp_path / "b", pairs_dir, model=model, resume=last))
    assert not resumed.interrupted and resumed.steps == straight.steps
    expected, actual = _weights(straight.last_checkpoint), _weights(resumed.last_checkpoint)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    with open(tmp_path / "b" / "metrics.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == sorted(set(steps))  # no duplicated rows after the resume
    # the resumed run knows the validations before the interruption (progress lines show them)
    assert [row["step"] for row in resumed.history] == steps
    assert resumed.history[0]["val_mse"] == pytest.approx(straight.history[0]["val_mse"])


def test_batchnorm_statistics_recomputed_without_changing_training(
    tmp_path: Path, pairs_dir: Path
) -> None:
    """batchnorm_batches: last.pt holds BatchNorm statistics averaged over that many fixed
    batches of training crops, as recompute_batchnorm gives them by hand; the training itself
    (losses, weights) is the same as without."""
    reported: list[tuple[str, int, int]] = []

    def record(stage: str, done: int, total: int, detail: str = "") -> None:
        reported.append((stage, done, total))

    runs = {
        count: train(
            settings_for(
                tmp_path / str(count), pairs_dir, model=BATCHNORM_MODEL, batchnorm_batches=count
            ),
            record,
        )
        for count in (0, 2)
    }
    validations = len(runs[2].history)
    assert [r for r in reported if r[0] == "BatchNorm statistics"] == [
        ("BatchNorm statistics", 1, 2),
        ("BatchNorm statistics", 2, 2),
    ] * validations  # the run ends validated: the final save needs no second pass
    assert [row["train_loss"] for row in runs[0].history] == [
        row["train_loss"] for row in runs[2].history
    ]
    plain, settled = _weights(runs[0].last_checkpoint), _weights(runs[2].last_checkpoint)
    statistics = [k for k in plain if k.endswith(("running_mean", "running_var"))]
    assert statistics and all(
        torch.equal(plain[k], settled[k]) for k in plain if k not in statistics
        and not k.endswith("num_batches_tracked")
    )  # fmt: skip
    assert not all(torch.equal(plain[k], settled[k]) for k in statistics)
    trainer = Trainer(
        settings_for(tmp_path / "0", pairs_dir, model=BATCHNORM_MODEL, batchnorm_batches=2,
                     resume=runs[0].last_checkpoint),
        start_cluster("cpu"),
    )  # fmt: skip
    batches = statistics_batches(trainer.train_set, 2, 2, seed=0)
    used = recompute_batchnorm(trainer.model, batches, lambda b: trainer.model(b[0], density=b[2]))
    assert used == 2
    by_hand = trainer.model.state_dict()
    assert all(torch.allclose(by_hand[k], settled[k], rtol=1e-5, atol=1e-7) for k in statistics)


def test_recompute_batchnorm_takes_the_plain_mean_of_the_batches() -> None:
    layer = torch.nn.BatchNorm1d(1, momentum=0.3)
    model = torch.nn.Sequential(layer).eval()
    batches = [torch.tensor([[1.0], [3.0]]), torch.tensor([[10.0], [20.0], [30.0]])]
    assert recompute_batchnorm(model, batches, model) == 2
    assert float(layer.running_mean) == pytest.approx((2.0 + 20.0) / 2)
    assert float(layer.running_var) == pytest.approx((2.0 + 100.0) / 2)  # unbiased variances
    assert layer.momentum == 0.3 and not model.training  # both put back
    grouped = torch.nn.Sequential(torch.nn.GroupNorm(1, 1))
    assert recompute_batchnorm(grouped, batches, grouped) == 0  # nothing to recompute


def _logged_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_like_ctrl_c(tmp_path: Path, pairs_dir: Path, signum) -> None:
    def send(stage: str, done: int, total: int, detail: str = "") -> None:
        if stage == "training" and done == 3:
            os.kill(os.getpid(), signum)

    previous = signal.getsignal(signum)
    result = train(settings_for(tmp_path, pairs_dir, checkpoint_every=100), send)
    assert result.interrupted and result.steps == 3
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3
    assert signal.getsignal(signum) == previous  # the handler is put back afterwards


def test_time_budget_stops_validated_and_saved(tmp_path: Path, pairs_dir: Path) -> None:
    result = train(settings_for(tmp_path, pairs_dir, epochs=100_000, max_minutes=0.02))
    # (steps, not epochs: on a loaded machine 1.2 s may end before the first epoch does)
    assert result.steps > 0 and result.epochs_completed < 100_000 and not result.interrupted
    assert load_checkpoint(tmp_path / "last.pt")["step"] == result.steps
    assert _logged_steps(tmp_path)[-1] == result.steps  # the budget's end is validated


def test_val_every_counts_steps_across_epochs(tmp_path: Path, pairs_dir: Path) -> None:
    per_epoch = train(settings_for(tmp_path / "a", pairs_dir, epochs=1)).steps
    every = per_epoch + 1  # longer than an epoch: epoch ends must not validate
    result = train(settings_for(tmp_path / "b", pairs_dir, epochs=4, val_every=every))
    expected = list(range(every, result.steps + 1, every))
    if expected[-1] != result.steps:
        expected.append(result.steps)  # the last epoch's end is validated
    assert _logged_steps(tmp_path / "b") == expected


def test_resume_with_other_model_settings_is_refused(tmp_path: Path, pairs_dir: Path) -> None:
    result = train(settings_for(tmp_path, pairs_dir, epochs=1))
    other = settings_for(tmp_path, pairs_dir, model=ModelSettings(f_maps=(8, 16, 32)),
                         resume=result.last_checkpoint)  # fmt: skip
    with pytest.raises(Exception, match="model settings"):
        train(other)


def test_fine_tuning_starts_from_the_weights_with_a_fresh_optimizer(
    tmp_path: Path, pairs_dir: Path
) -> None:
    first = train(settings_for(tmp_path / "a", pairs_dir, epochs=1))
    source = _weights(first.last_checkpoint)
    tuned = settings_for(tmp_path / "b", pairs_dir, epochs=1, init_from=first.last_checkpoint)
    trainer = Trainer(tuned, start_cluster("cpu"))
    assert trainer.position.step == 0 and not trainer.state.optimizer.state  # fresh
    loaded = trainer.model.state_dict()
    assert all(torch.equal(source[k], loaded[k]) for k in source)
    scratch = Trainer(settings_for(tmp_path / "c", pairs_dir, epochs=1), start_cluster("cpu"))
    assert not all(torch.equal(source[k], v) for k, v in scratch.model.state_dict().items())
    result = train(tuned)
    assert result.steps == first.steps  # counted from 0 again
    changed = _weights(result.last_checkpoint)
    assert not all(torch.equal(source[k], changed[k]) for k in source)  # and it trained on
    other = settings_for(tmp_path / "d", pairs_dir, model=ModelSettings(f_maps=(8, 16, 32)),
                         init_from=first.last_checkpoint)  # fmt: skip
    with pytest.raises(DeflareError, match="last.pt.*model settings"):
        train(other)
    assert not (tmp_path / "d" / "last.pt").exists()


def test_fine_tuning_a_shipped_unet_from_the_command_line(tmp_path: Path, pairs_dir: Path) -> None:
    """The U-Net shipped until 2026-12-07 fine-tunes; the default model, fitted trees, is refused
    with what to do instead."""
    unet = Path(__file__).parents[1] / "candidates" / "unet_mask_2026-11-29.calibrated.pt"
    run_dir = tmp_path / "run"
    args = ["train", "--data-dir", str(pairs_dir), "--run-dir", str(run_dir), "--init-from",
            str(unet), "--loss", "mask", "--f-maps", "16,32,64", "--max-steps", "1",
            "--crop", "32x32", "--batch-size", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run_dir / "last.pt")["step"] == 1
    wrong = [str(tmp_path / "w") if arg == str(run_dir) else arg for arg in args]
    wrong[wrong.index("16,32,64")] = "8,16"
    result = CliRunner().invoke(app, wrong)
    assert result.exit_code == 1 and unet.name in result.output
    assert "model settings" in result.output
    trees = [str(tmp_path / "t") if arg == str(run_dir) else arg for arg in args]
    trees[trees.index(str(unet))] = "default"
    result = CliRunner().invoke(app, trees)
    assert result.exit_code == 1 and "default.pt" in result.output
    assert "fitted trees" in result.output


def test_debug_writes_the_seed_folders(tmp_path: Path, pairs_dir: Path) -> None:
    result = train(settings_for(tmp_path, pairs_dir, debug=True))
    folder = result.debug_dir
    assert folder == tmp_path / "debug_output" / "epoch_000_iter_002"
    for name in ["1_input_events", "3_target_events", "5_output_events", "8_residual_events"]:
        assert any((folder / name).iterdir())
    for name in ["2_input_voxel", "4_target_voxel", "6_output_voxel", "7_residual_voxel"]:
        assert (folder / name / "voxel_bins.png").stat().st_size > 10_000
    summary = (folder / "debug_summary.txt").read_text()
    assert "identity check: output == input + residual: True" in summary
    assert "residual mean" in summary


def test_train_command(tmp_path: Path, pairs_dir: Path) -> None:
    runner = CliRunner()
    run_dir = str(tmp_path / "run")
    args = ["train", "--data-dir", str(pairs_dir), "--run-dir", run_dir, "--epochs", "1",
            "--crop", "16x16", "--f-maps", "8,16", "--batch-size", "2"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "done" in result.output and (tmp_path / "run" / "last.pt").exists()
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_mse", "val_pmse_4", "val_r_f1", "raw_r_f1", "raw_tp_f1", "val_event_auc",
            "val_flare_at_97"} <= set(header)  # fmt: skip
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(0 <= float(row["val_event_auc"]) <= 1 for row in rows)
    never = tmp_path / "never"
    bad = runner.invoke(
        app, ["train", "--data-dir", str(tmp_path / "nope"), "--run-dir", str(never)]
    )
    assert bad.exit_code == 1 and "folder not found" in bad.output
    assert not never.exists()  # a failed start leaves no run-dir behind
    bad = runner.invoke(
        app,
        [
            *args[:-2],
            "--resume",
            str(pairs_dir / "background_with_flare_events" / "composed_00000_bg_flare.h5"),
        ],
    )
    assert bad.exit_code == 1 and "not a readable deflare checkpoint" in bad.output
    bad = runner.invoke(app, ["train", "--data-dir", str(pairs_dir)])
    assert bad.exit_code == 1 and "run_dir" in bad.output


def test_train_command_with_the_mask_loss_makes_a_mask_model(
    tmp_path: Path, pairs_dir: Path
) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "--data-dir", str(pairs_dir), "--run-dir", str(run_dir), "--loss", "mask",
            "--max-steps", "2", "--crop", "16x16", "--f-maps", "8,16",
            "--batch-size", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = load_checkpoint(run_dir / "last.pt")["settings"]
    assert settings["loss"] == "mask" and settings["model"]["output"] == "mask"
    source = pairs_dir / "background_with_flare_events" / "composed_00000_bg_flare.h5"
    out = tmp_path / "out.h5"
    result = CliRunner().invoke(
        app, ["deflare", str(source), str(out), "--checkpoint", str(run_dir / "last.pt")]
    )
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_a_network_pooling_space_alone_trains_and_deflares(tmp_path: Path, pairs_dir: Path) -> None:
    """--pooling xy: five levels on 8 bins train, the checkpoint keeps the pooling, and
    deflare (on this machine's default engine) rebuilds and runs it."""
    run_dir = tmp_path / "run"
    args = ["train", "--data-dir", str(pairs_dir), "--run-dir", str(run_dir), "--loss", "mask",
            "--max-steps", "2", "--crop", "32x32", "--f-maps", "8,8,8,8,8", "--pooling", "xy",
            "--batch-size", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model = load_checkpoint(run_dir / "last.pt")["settings"]["model"]
    assert model["pooling"] == "xy" and len(model["f_maps"]) == 5
    source = pairs_dir / "background_with_flare_events" / "composed_00000_bg_flare.h5"
    result = CliRunner().invoke(app, ["deflare", str(source), str(tmp_path / "out.h5"),
                                      "--checkpoint", str(run_dir / "last.pt")])  # fmt: skip
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(app, [*args[:-4], "--batch-size", "2"])  # 5 levels, time halved
    assert bad.exit_code == 1 and "pooling xy" in bad.output


def test_a_frame_normalised_network_trains_and_deflares(tmp_path: Path, pairs_dir: Path) -> None:
    """configs/frame_norm.yaml: crops are scaled by their whole frame's density in training,
    the checkpoint keeps input_norm, and deflare runs it on tiles and on whole frames."""
    run_dir = tmp_path / "run"
    config = Path(__file__).parents[1] / "configs" / "frame_norm.yaml"
    args = ["train", "--config", str(config), "--data-dir", str(pairs_dir), "--val-dir",
            str(pairs_dir), "--run-dir",
            str(run_dir), "--max-steps", "2", "--crop", "32x32", "--f-maps", "8,16",
            "--batch-size", "2", "--val-every", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model = load_checkpoint(run_dir / "last.pt")["settings"]["model"]
    assert model["input_norm"] == "frame" and model["layer_order"] == "bcr"
    source = pairs_dir / "background_with_flare_events" / "composed_00000_bg_flare.h5"
    for tiling in ("tiles", "frame"):
        result = CliRunner().invoke(app, ["deflare", str(source), str(tmp_path / f"{tiling}.h5"),
                                          "--checkpoint", str(run_dir / "last.pt"),
                                          "--tiling", tiling])  # fmt: skip
        assert result.exit_code == 0, result.output


def test_the_density_net_config_trains_and_deflares(tmp_path: Path, pairs_dir: Path) -> None:
    """configs/density_net.yaml trains from the command line, and deflare runs the checkpoint
    on tiles and whole frames, in torch and OpenVINO (where installed), to the same events."""
    run_dir = tmp_path / "run"
    config = Path(__file__).parents[1] / "configs" / "density_net.yaml"
    args = ["train", "--config", str(config), "--data-dir", str(pairs_dir), "--val-dir",
            str(pairs_dir), "--run-dir", str(run_dir), "--max-steps", "2", "--crop", "32x32",
            "--batch-size", "2", "--val-every", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run_dir / "last.pt")["settings"]["model"]["backbone"] == "DensityNet"
    source = pairs_dir / "background_with_flare_events" / "composed_00000_bg_flare.h5"
    engines = ["torch", "openvino"] if importlib.util.find_spec("openvino") else ["torch"]
    outputs = []
    for engine, tiling in itertools.product(engines, ("tiles", "frame")):
        out = tmp_path / f"{engine}-{tiling}.h5"
        result = CliRunner().invoke(app, ["deflare", str(source), str(out), "--checkpoint",
                                          str(run_dir / "last.pt"), "--tiling", tiling,
                                          "--engine", engine, "--precision", "fp32"])  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs.append(read_events(out))
    assert all(same_events(events, outputs[0]) for events in outputs)


def test_event_counts_split_each_pixel_into_flare_and_the_rest() -> None:
    from deflare_cli.train.trees import event_counts

    inputs = torch.zeros(1, 3, 2, 2)
    targets = torch.zeros(1, 3, 2, 2)
    inputs[0, :, 0, 0] = torch.tensor([3.0, 1.0, -2.0])  # 4 ON events, 2 OFF events
    targets[0, :, 0, 0] = torch.tensor([1.0, 1.0, 0.0])  # the target keeps 2 ON, no OFF
    inputs[0, 0, 1, 1], targets[0, 0, 1, 1] = -1.0, -1.0  # one OFF event, kept
    flare, rest = event_counts(inputs, targets)
    assert flare.shape == rest.shape == (2, 2, 2)  # ON pixels, then OFF pixels
    assert flare[0, 0, 0] == 2 and rest[0, 0, 0] == 2 and flare[1, 0, 0] == 2
    assert rest[1, 0, 0] == 0 and rest[1, 1, 1] == 1 and flare.sum() == 4 and rest.sum() == 3


def test_the_density_trees_config_fits_and_deflares(tmp_path: Path, pairs_dir: Path) -> None:
    """configs/density_trees.yaml fits trees from the command line, without an optimiser;
    the checkpoint ranks the training pairs' flare events above the rest, and deflare runs it
    in torch on tiles and frames to the same events (OpenVINO is refused with the reason). The
    fit reads no validation pairs (its --val-dir does not exist here)."""
    from sklearn.metrics import roc_auc_score  # the dev extra has it

    run_dir = tmp_path / "run"
    config = Path(__file__).parents[1] / "configs" / "density_trees.yaml"
    args = ["train", "--config", str(config), "--data-dir", str(pairs_dir), "--val-dir",
            str(tmp_path / "absent"), "--run-dir", str(run_dir)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(run_dir / "last.pt")
    trees, nodes, depth = checkpoint["settings"]["model"]["density_trees"]
    assert trees > 10 and nodes > 3 and depth >= 2
    assert checkpoint["settings"]["model"]["removal"] == "threshold"
    model, codec = model_from_checkpoint(run_dir / "last.pt")
    scores, labels = [], []
    for pair in find_pairs(*paired_dirs(pairs_dir)):
        inputs, targets = encode_pair(pair, codec)
        with torch.no_grad():
            logits = model(inputs[:, None].float(), raw=True)[:, 0]
        occupied = inputs != 0
        scores.append(logits[occupied])
        labels.append((inputs != targets)[occupied])  # cells flare changed
    auc = roc_auc_score(torch.cat(labels).numpy(), torch.cat(scores).numpy())
    assert auc > 0.8
    source = pairs_dir / "background_with_flare_events" / "composed_00000_bg_flare.h5"
    outputs = []
    for tiling in ("tiles", "frame"):
        out = tmp_path / f"{tiling}.h5"
        checkpoint_args = ["--checkpoint", str(run_dir / "last.pt"), "--tiling", tiling]
        result = CliRunner().invoke(app, ["deflare", str(source), str(out), *checkpoint_args])
        assert result.exit_code == 0, result.output
        outputs.append(read_events(out))
    assert same_events(*outputs)
    refused = CliRunner().invoke(app, ["deflare", str(source), str(tmp_path / "ov.h5"),
                                       "--checkpoint", str(run_dir / "last.pt"), "--engine",
                                       "openvino"])  # fmt: skip
    assert refused.exit_code != 0 and "--engine torch" in refused.output
    again = CliRunner().invoke(app, [*args, "--resume", str(run_dir / "last.pt")])
    assert again.exit_code != 0 and "fitted in one go" in again.output
    other = [str(tmp_path / "other") if arg == str(run_dir) else arg for arg in args]
    tuned = CliRunner().invoke(app, [*other, "--init-from", str(run_dir / "last.pt")])
    assert tuned.exit_code != 0 and "--init-from" in tuned.output


def test_a_flicker_head_is_fitted_beside_the_trees_it_keeps(
    tmp_path: Path, pairs_dir: Path
) -> None:
    """--init-from a trees checkpoint with model.flicker_head fits the head alone on the pairs'
    flickering pixels (their 100 Hz blobs) and keeps the checkpoint's trees tensor for tensor;
    the head scores the blob's pixels, which the trees before scored. A checkpoint of other
    settings, or one with a head already, is refused naming the file."""
    from sklearn.metrics import roc_auc_score  # the dev extra has it

    config = Path(__file__).parents[1] / "configs" / "density_trees.yaml"
    head = tmp_path / "head.yaml"
    head.write_text(f"extends: {config}\nmodel:\n  flicker_radii: [3]\n  flicker_head: 3\n")
    common = ["--data-dir", str(pairs_dir), "--val-dir", str(tmp_path / "absent")]
    base = tmp_path / "base" / "last.pt"
    result = CliRunner().invoke(app, ["train", "--config", str(config), *common, "--run-dir",
                                      str(base.parent)])  # fmt: skip
    assert result.exit_code == 0, result.output
    fit = ["train", "--config", str(head), *common, "--init-from", str(base), "--run-dir"]
    result = CliRunner().invoke(app, [*fit, str(tmp_path / "head")])
    assert result.exit_code == 0, result.output
    fitted = tmp_path / "head" / "last.pt"
    kept, before = load_checkpoint(fitted)["model"], load_checkpoint(base)["model"]
    trees = [key for key in before if key.startswith("backbone.trees.")]
    assert trees and all(torch.equal(kept[key], before[key]) for key in trees)
    assert load_checkpoint(fitted)["settings"]["model"]["flicker_trees"][0] > 0
    (model, codec), (old, _) = model_from_checkpoint(fitted), model_from_checkpoint(base)
    scores, labels, changed = [], [], 0
    for pair in find_pairs(*paired_dirs(pairs_dir)):
        inputs, targets = encode_pair(pair, codec)
        with torch.no_grad():
            logits = model(inputs[:, None].float(), raw=True)[:, 0]
            changed += int((logits != old(inputs[:, None].float(), raw=True)[:, 0]).sum())
        occupied = inputs != 0
        scores.append(logits[occupied])
        labels.append((inputs != targets)[occupied])
    assert changed > 0
    assert roc_auc_score(torch.cat(labels).numpy(), torch.cat(scores).numpy()) > 0.8
    other = tmp_path / "other.yaml"
    other.write_text(f"extends: {head}\nmodel:\n  density_radii: [1, 3]\n")
    for config_path, source, problem in ((other, base, "differ"), (head, fitted, "holds no")):
        fit[2], fit[fit.index("--init-from") + 1] = str(config_path), str(source)
        result = CliRunner().invoke(app, [*fit, str(tmp_path / "refused")])
        assert result.exit_code == 1, result.output
        assert source.parent.name in result.output and problem in result.output
        assert not (tmp_path / "refused" / "last.pt").exists()


def test_ddp_two_processes_on_cpu(tmp_path: Path, pairs_dir: Path) -> None:
    """torchrun with gloo: both ranks hold identical weights; only rank 0 writes checkpoints."""
    worker = Path(__file__).parent / "ddp_worker.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(worker), str(pairs_dir), str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
    rank0 = torch.load(tmp_path / "weights_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "weights_rank1.pt", weights_only=True)
    initial = TrueResidualUNet3D(SMALL_MODEL).state_dict()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert not torch.equal(
        rank0["backbone.final_conv.weight"], initial["backbone.final_conv.weight"]
    )
    assert (tmp_path / "saves_rank0.txt").read_text().count("last.pt") >= 1
    assert (tmp_path / "saves_rank1.txt").read_text() == ""
    assert (tmp_path / "run" / "last.pt").exists()


def pairs_of_two_sizes(tmp_path: Path, count: int) -> Path:
    """A folder of ``count`` 32x48 pairs and ``count`` 48x64 ones."""
    data = tmp_path / "data"
    write_pairs(data, count, size=(32, 48), seed=1)
    other = write_pairs(tmp_path / "other", count, size=(48, 64), seed=2)
    for sub in ("background_with_flare_events", "background_with_light_events"):
        for path in (other / sub).iterdir():
            path.rename(data / sub / path.name.replace("_0000", "_1000"))
    return data


def test_training_and_validation_on_pairs_of_two_sensor_sizes(tmp_path: Path) -> None:
    """Crops stack whatever the sensor; full validation frames of two sizes are batched apart
    (the default recipe mixes 1280x720, 640x480 and 346x260)."""
    data = pairs_of_two_sizes(tmp_path, 2)
    both_sizes = DataSettings(data_dir=data, crop=(16, 16), val_dir=data)
    settings = settings_for(tmp_path / "run", data, epochs=1, batch_size=3, data=both_sizes)
    result = train(settings)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert rows and float(rows[-1]["val_mse"]) >= 0 and result is not None


def test_a_second_training_into_a_busy_run_dir_is_refused(tmp_path: Path, pairs_dir: Path) -> None:
    """The lock is the kernel's: another process holding it (a running training) blocks."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time; h = open(sys.argv[1], 'a'); "
         "fcntl.flock(h, fcntl.LOCK_EX); h.write('pid 4242'); h.flush(); "
         "print('held', flush=True); "
         "time.sleep(60)", str(tmp_path / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DeflareError, match="another training is using this run-dir"):
            train(settings_for(tmp_path, pairs_dir, epochs=1))
        assert not (tmp_path / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    result = train(settings_for(tmp_path, pairs_dir, epochs=1))  # free again once it died
    assert result.last_checkpoint.exists()


def test_fresh_training_into_a_used_run_dir_needs_overwrite(
    tmp_path: Path, pairs_dir: Path
) -> None:
    first = train(settings_for(tmp_path, pairs_dir, epochs=1))
    assert (tmp_path / "best.pt").exists()
    with pytest.raises(DeflareError, match="holds an earlier run .*--resume"):
        train(settings_for(tmp_path, pairs_dir, epochs=1))
    assert _weights(tmp_path / "last.pt").keys() == _weights(first.last_checkpoint).keys()
    (tmp_path / "best.pt").write_bytes(b"stale")  # would otherwise outlive the new run
    again = train(settings_for(tmp_path, pairs_dir, epochs=1, overwrite=True))
    assert load_checkpoint(tmp_path / "best.pt")["step"] == again.steps
    assert _logged_steps(tmp_path) == [again.steps]  # one run's rows only
    resumed = train(settings_for(tmp_path, pairs_dir, epochs=2, resume=tmp_path / "last.pt"))
    assert resumed.steps == 2 * again.steps  # resuming in place needs no --overwrite


def test_checkpoints_written_before_a_model_field_existed_still_match(tmp_path: Path) -> None:
    """A checkpoint's model settings are compared as settings, so a field added later
    (``pooling``) takes its default: the shipped model's checkpoint has none, and fine-tuning
    or resuming it must still work; another pooling is still refused."""
    path = write_checkpoint(tmp_path / "old.pt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["settings"]["model"]["pooling"]
    torch.save(checkpoint, path)
    weights, _ = load_weights(path, SMALL)
    assert set(weights) == set(TrueResidualUNet3D(SMALL).state_dict())
    with pytest.raises(InputError, match="pooling"):
        load_weights(path, SMALL.model_copy(update={"pooling": "xy"}))


# glibc hands out a free chunk inside its heap before it maps anything, so each probe asks for
# more than the whole heap holds: only the settings decide between fresh pages and the heap. A
# fresh interpreter keeps pytest's own heap out of it.
HEAP_PROBE = """
import ctypes, torch
from deflare_cli.devices import freed_memory_kept

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2

def mapped_share_of_a_block():
    # the share of a block larger than the heap that glibc serves with fresh mmap'd pages
    before = mallinfo2()
    size = before.arena + (64 << 20)
    kept = torch.empty(size, dtype=torch.uint8)
    mapped = mallinfo2().hblkhd - before.hblkhd
    del kept
    return mapped / size

baseline = mapped_share_of_a_block()
with freed_memory_kept(torch.device("cpu")) as kept:
    inside = mapped_share_of_a_block()
after = mapped_share_of_a_block()
with freed_memory_kept(torch.device("cuda")) as kept_on_cuda:
    pass
print(baseline, kept, inside, after, kept_on_cuda)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_training_on_a_cpu_keeps_freed_memory_in_the_heap() -> None:
    """Blocks as large as a training step's activations come from the heap, not from fresh
    pages mapped (and zeroed by the kernel) at each step; glibc's defaults come back after;
    on a GPU the device's own allocator is left alone."""
    probe = subprocess.run(
        [sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True, check=True
    )
    baseline, kept, inside, after, kept_on_cuda = probe.stdout.split()
    assert float(baseline) >= 1
    assert kept == "True" and float(inside) == 0
    assert float(after) >= 1
    assert kept_on_cuda == "False"


def test_validation_batches_run_large_frames_alone() -> None:
    entries = [
        CachedPair(None, Path("small"), 3, (32, 48)),
        CachedPair(None, Path("big"), 3, (48, 64)),
    ]
    dataset = EventVoxelDataset(entries)
    assert same_size_batches(dataset, 2) == [[0, 1], [2], [3, 4], [5]]
    assert same_size_batches(dataset, 2, max_batch_pixels=32 * 48) == [[0, 1], [2], [3], [4], [5]]


def test_training_on_a_cpu_validates_large_frames_alone(tmp_path: Path, monkeypatch) -> None:
    """The trainer passes the CPU's limit (here set between the two sizes) to the batching."""
    import deflare_cli.train.trainer as trainer_module
    import deflare_cli.train.validation as validation_module

    data = pairs_of_two_sizes(tmp_path, 1)
    seen: list[list[list[int]]] = []
    original = validation_module.same_size_batches

    def recording(*args):
        seen.append(original(*args))
        return seen[-1]

    monkeypatch.setattr(validation_module, "same_size_batches", recording)
    num_bins = settings_for(tmp_path, data).codec.num_bins
    monkeypatch.setattr(trainer_module, "CPU_VALIDATION_CELLS", 32 * 48 * num_bins)
    both_sizes = DataSettings(data_dir=data, crop=(16, 16), val_dir=data)
    train(settings_for(tmp_path / "run", data, epochs=1, batch_size=3, data=both_sizes))
    assert seen
    sizes = {len(batch) for batch in seen[-1]}
    assert 1 in sizes and 2 in sizes  # the small frames in pairs, the large ones alone
