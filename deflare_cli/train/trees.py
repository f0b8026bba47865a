"""``deflare train`` for a DensityNet with trees (``model.density_head: trees``).

No optimiser: the model's own features (``DensityBackbone.features``: the box densities of each
pixel and polarity in its 20 ms segment, scaled by the frame) are computed over the training
pairs' whole frames, and scikit-learn's gradient-boosted classifier is fitted to tell flare
events from the rest, each event weighing the same (a pixel's row weighs its flare events as
flare and its other events as the rest). The fitted trees go into the model's tensors
(``model.TreeEnsemble``), so the checkpoint is an ordinary one that ``calibrate``, ``deflare``
and ``evaluate`` load; torch evaluates it, with or without scikit-learn installed.

Why trees: among every learner fitted on these features, only gradient boosting removed a third
of the night check pairs' flare while keeping real scenes; perceptrons that removed as much took
real scenes for flare (docs/experiments.md, 2026-12-07).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from ..errors import DeflareError
from ..model import TrueResidualUNet3D, backbone_input, density_scale
from ..progress import Progress, no_progress
from ..settings import TrainSettings
from .data import EventVoxelDataset, load_datasets
from .trainer import TrainResult

TREE_ITERATIONS = 200  # boosting rounds (scikit-learn's HistGradientBoostingClassifier)
TREE_ROWS = 400_000  # pixel rows the fit samples (weights keep it a per-event fit)


def fit_trees(settings: TrainSettings, progress: Progress = no_progress) -> TrainResult:
    """Fit the trees of ``settings.model`` on every one of the run's training pairs (the
    validation settings play no part); write ``last.pt``."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        raise DeflareError(
            "model.density_head trees is fitted with scikit-learn: pip install 'deflare[trees]'"
        ) from None
    # no validation step: every pair is fitted on, and no validation pair is read or encoded
    every_pair = settings.data.model_copy(update={"val_dir": None, "val_fraction": 0.0})
    datasets = load_datasets(settings.model_copy(update={"data": every_pair}), progress)
    frames = EventVoxelDataset(datasets.train.entries)  # whole frames: no cut boxes
    features, flare, rest = pixel_rows(frames, settings, progress)
    rows = np.concatenate([features[flare > 0], features[rest > 0]])
    labels = np.r_[np.ones(int((flare > 0).sum())), np.zeros(int((rest > 0).sum()))]
    weights = np.r_[flare[flare > 0], rest[rest > 0]]
    progress("fitting trees", 0, 1)
    classifier = HistGradientBoostingClassifier(
        max_iter=TREE_ITERATIONS, random_state=settings.seed
    ).fit(rows, labels, sample_weight=weights)
    progress("fitting trees", 1, 1)
    model = TrueResidualUNet3D(
        settings.model.model_copy(update={"density_trees": tree_shape(classifier)})
    )
    load_trees(model.backbone.trees, classifier)
    run_settings = settings.model_copy(update={"model": model.settings})
    path = settings.run_dir / "last.pt"
    save_checkpoint(path, tree_checkpoint(model, run_settings.model_dump(mode="json")))
    return TrainResult(
        run_dir=settings.run_dir,
        steps=len(classifier._predictors),
        epochs_completed=1,
        best_metric=math.nan,
        last_checkpoint=path,
        best_checkpoint=None,
        skipped_pairs=datasets.skipped,
    )


def pixel_rows(
    frames: EventVoxelDataset, settings: TrainSettings, progress: Progress = no_progress
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, features) of the scorer's input for the pixels and polarities with events, their
    flare events and their other events (weights; a sample of at most about ``TREE_ROWS`` rows,
    each weighted up by its segment's sampling share so the sum stays every event's)."""
    model = TrueResidualUNet3D(settings.model)
    rng = np.random.default_rng(settings.seed)
    per_segment = max(1, math.ceil(TREE_ROWS / max(len(frames), 1)))
    parts: list[tuple[np.ndarray, ...]] = []
    with torch.no_grad():
        for index in range(len(frames)):
            inputs, targets, density = frames[index]
            scaled = backbone_input(inputs[None], settings.model, density[None])
            features, occupied = model.backbone.features(scaled)
            flare, rest = event_counts(inputs, targets)
            chosen = rng.permutation(int(occupied.sum()))[:per_segment]
            scale = occupied.sum().item() / max(len(chosen), 1)
            parts.append((
                density_scale(features[occupied]).numpy()[chosen],
                flare[occupied].numpy()[chosen] * scale,
                rest[occupied].numpy()[chosen] * scale,
            ))  # fmt: skip
            progress("features", index + 1, len(frames))
    if not parts or not sum(len(part[0]) for part in parts):
        raise DeflareError("no events in the training pairs: nothing to fit trees on")
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def event_counts(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, H, W) flare events and other events of each pixel, ON then OFF (the order of
    ``DensityBackbone.features``), from (1, B, H, W) input and target voxels: per cell, the
    events the target lacks are flare (synth draws the scene's events once for both)."""
    counts = []
    for sign in (1, -1):
        events = (sign * inputs).clamp_min(0)
        kept = torch.minimum((sign * targets).clamp_min(0), events)
        counts.append(((events - kept).sum(1), kept.sum(1)))
    flare, rest = (torch.cat(pair) for pair in zip(*counts, strict=True))
    return flare, rest


def tree_shape(classifier: Any) -> tuple[int, int, int]:
    """(trees, most nodes of a tree, deepest leaf) of a fitted binary classifier."""
    nodes = [predictors[0].nodes for predictors in classifier._predictors]
    return len(nodes), max(len(n) for n in nodes), int(max(n["depth"].max() for n in nodes))


def load_trees(ensemble: torch.nn.Module, classifier: Any) -> None:
    """Copy a fitted ``HistGradientBoostingClassifier``'s trees into a ``TreeEnsemble`` of
    :func:`tree_shape`. Padding nodes are leaves of value 0 that no path reaches."""
    state = {name: tensor.clone() for name, tensor in ensemble.state_dict().items()}
    own = torch.arange(state["left"].shape[1])
    for tree, predictors in enumerate(classifier._predictors):
        nodes = predictors[0].nodes
        count, leaf = len(nodes), torch.from_numpy(nodes["is_leaf"].astype(bool))
        column = {name: torch.from_numpy(nodes[name].astype(np.float64)) for name in
                  ("feature_idx", "num_threshold", "left", "right", "value")}  # fmt: skip
        state["left"][tree], state["right"][tree] = own, own
        state["feature"][tree, :count] = column["feature_idx"].long()
        state["threshold"][tree, :count] = column["num_threshold"].float()
        state["left"][tree, :count] = torch.where(leaf, own[:count], column["left"].long())
        state["right"][tree, :count] = torch.where(leaf, own[:count], column["right"].long())
        state["value"][tree, :count] = torch.where(leaf, column["value"].float(), 0.0)
    state["bias"] = torch.tensor([float(np.ravel(classifier._baseline_prediction)[0])])
    ensemble.load_state_dict(state)


def tree_checkpoint(model: TrueResidualUNet3D, settings: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of fitted trees: the schema's common keys (``deflare_cli.checkpoint``)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "deflare_version": __version__,
        "model": model.state_dict(),
        "step": 0,
        "best_metric": math.nan,
        "settings": settings,
    }
