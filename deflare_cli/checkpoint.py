"""Checkpoints: one dict (nanoGPT style), one versioned schema, built, saved, loaded, exported
and restored here and nowhere else.

Schema ``deflare-checkpoint/1``:

- always: ``format``, ``model`` (state dict), ``settings`` (``{"model": ..., "codec": ...}`` at
  least: what inference needs), ``step``, ``best_metric``;
- a training checkpoint adds ``optimizer``, ``scheduler``, ``scaler``, ``epoch``,
  ``step_in_epoch``, ``torch_rng`` and the whole run's settings, so ``--resume`` continues
  exactly;
- an exported model (``deflare export``) adds ``notes`` instead, and may hold the removal margin
  calibrated for it in ``settings["decode"]["margin"]`` (``deflare calibrate``).

Files hold tensors, numbers and strings only and load with ``weights_only=True``: a checkpoint
can never run code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from . import __version__
from .errors import InputError
from .io import atomic_output
from .model import TrueResidualUNet3D
from .settings import CodecSettings, ModelSettings

CHECKPOINT_FORMAT = "deflare-checkpoint/1"
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "epoch", "step_in_epoch", "torch_rng")


@dataclass
class TrainingState:
    """Everything a training run needs to continue exactly where it stopped."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


@dataclass
class Position:
    """Where a run is: epoch (0-based), optimizer steps in total and in the epoch, best metric."""

    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    best_metric: float = float("inf")


def build_checkpoint(
    state: TrainingState, position: Position, settings: dict[str, Any]
) -> dict[str, Any]:
    """A training checkpoint of the run's full state."""
    return {
        "format": CHECKPOINT_FORMAT,
        "deflare_version": __version__,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "epoch": position.epoch,
        "step": position.step,
        "step_in_epoch": position.step_in_epoch,
        "best_metric": position.best_metric,
        "settings": settings,
        "torch_rng": torch.get_rng_state(),
    }


def restore_training(path: Path, state: TrainingState, model_settings: ModelSettings) -> Position:
    """Load a training checkpoint into the run's objects; returns where the run was."""
    checkpoint = load_checkpoint(path)
    missing = [key for key in TRAINING_KEYS if key not in checkpoint]
    if missing:
        raise InputError(
            path,
            "holds a model alone (as `deflare export` writes), not a training run: "
            "it cannot be resumed; start a new run instead",
        )
    _check_model_settings(path, checkpoint, model_settings, "resume")
    state.model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    state.scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["torch_rng"])
    return Position(
        checkpoint["epoch"],
        checkpoint["step"],
        checkpoint["step_in_epoch"],
        checkpoint["best_metric"],
    )


def load_weights(path: Path, model_settings: ModelSettings) -> tuple[dict[str, Any], int]:
    """A checkpoint's weights alone (fine-tuning) and its step: a training checkpoint or an
    exported model, whose model settings must equal ``model_settings``."""
    checkpoint = load_checkpoint(path)
    if checkpoint["settings"]["model"].get("density_head") == "trees":
        raise InputError(
            path,
            "holds fitted trees (model.density_head trees, as the default model since "
            "2026-12-07), which no optimiser moves: fit trees on your pairs instead "
            "(deflare train --config configs/density_trees.yaml), or fine-tune a U-Net such as "
            "candidates/unet_mask_2026-11-29.calibrated.pt in deflare's repository",
        )
    _check_model_settings(path, checkpoint, model_settings, "fine-tune")
    return checkpoint["model"], int(checkpoint.get("step", 0))


def _check_model_settings(
    path: Path, checkpoint: dict[str, Any], model_settings: ModelSettings, verb: str
) -> None:
    saved_model = checkpoint["settings"]["model"]
    # compared as settings, not as stored dicts: a field added since the checkpoint was written
    # (``pooling``) takes its default, which is what the checkpoint's network was built with
    try:
        saved = ModelSettings.model_validate(saved_model)
    except ValidationError:
        saved = None
    if saved != model_settings:
        raise InputError(
            path,
            f"its model settings {saved_model} differ from this run's; {verb} with the same "
            "model settings (f_maps, backbone, output, pooling, ...)",
        )


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write one checkpoint dict atomically: a crash mid-write leaves the old file intact."""
    with atomic_output(path) as temp_path:
        torch.save(checkpoint, temp_path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A deflare checkpoint, loaded without running code (``weights_only=True``)."""
    if not Path(path).is_file():
        raise InputError(path, "checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign or corrupt files
        raise InputError(path, f"not a readable deflare checkpoint ({error})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"not a deflare checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    return checkpoint


def export_checkpoint(
    source: Path,
    target: Path,
    notes: dict[str, Any] | None = None,
    margin: float | None = None,
) -> int:
    """Write a training checkpoint's model alone (no optimizer state): what inference needs.

    ``margin``: the removal margin calibrated for this model (``deflare calibrate``), kept in
    ``settings["decode"]``; None keeps the source's. Returns the size of the written file in bytes.
    """
    checkpoint = load_checkpoint(source)
    decode = dict(checkpoint["settings"].get("decode", {}))
    if margin is not None:
        decode["margin"] = float(margin)
    slim = {
        "format": CHECKPOINT_FORMAT,
        "model": checkpoint["model"],
        "settings": {
            "model": checkpoint["settings"]["model"],
            "codec": checkpoint["settings"].get("codec", {}),
            "decode": decode,
        },
        "step": checkpoint.get("step", 0),
        "best_metric": checkpoint.get("best_metric", float("nan")),
        "notes": notes or {},
    }
    save_checkpoint(target, slim)
    return Path(target).stat().st_size


def model_from_checkpoint(path: Path) -> tuple[TrueResidualUNet3D, CodecSettings]:
    """The trained model of a checkpoint, in eval mode, and the codec it was trained with."""
    checkpoint = load_checkpoint(path)
    try:
        settings = checkpoint["settings"]
        model = TrueResidualUNet3D(ModelSettings(**settings["model"]))
        model.load_state_dict(checkpoint["model"])
        codec = CodecSettings(**settings.get("codec", {}))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(path, f"checkpoint does not match its model settings ({error})") from None
    broken = [name for name, tensor in model.state_dict().items() if not tensor.isfinite().all()]
    if broken:
        raise InputError(path, f"holds non-finite weights (NaN or infinity) in {broken[0]}")
    model.eval()
    return model, codec


def calibrated_margin(path: Path) -> float:
    """The removal margin calibrated into a checkpoint (``settings["decode"]["margin"]``), or 0."""
    margin = load_checkpoint(path)["settings"].get("decode", {}).get("margin", 0.0)
    if not isinstance(margin, int | float) or not 0 <= margin < 1:
        raise InputError(path, f"calibrated margin must be a number in [0, 1), found {margin!r}")
    return float(margin)
