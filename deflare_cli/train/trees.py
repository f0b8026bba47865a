"""``deflare train`` for a DensityNet with trees (``model.density_head: trees``).

No optimiser: the model's own features (``DensityBackbone.features``: the box densities of each
pixel and polarity in its 20 ms segment, scaled by the frame) are computed over the training
pairs' whole frames, and scikit-learn's gradient-boosted classifier is fitted to tell flare
events from the rest, each event weighing the same (a pixel's row weighs its flare events as
flare and its other events as the rest). The fitted trees go into the model's tensors
(``model.TreeEnsemble``), so the checkpoint is an ordinary one that ``calibrate``, ``deflare``
and ``evaluate`` load; torch evaluates it, with or without scikit-learn installed.

With ``model.flicker_head`` a second ensemble is fitted the same way on the flickering pixels
alone (``DensityBackbone.flickering``); ``init_from`` keeps a fitted checkpoint's trees and
fits only that head (configs/flicker_head.yaml; not shipped: docs/experiments.md, 2026-12-08).

Why trees: among every learner fitted on these features, only gradient boosting removed a third
of the night check pairs' flare while keeping real scenes; perceptrons that removed as much took
real scenes for flare (docs/experiments.md, 2026-12-07).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from .. import __version__
from ..checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from ..errors import DeflareError, InputError
from ..model import TrueResidualUNet3D, backbone_input, density_scale
from ..progress import Progress, no_progress
from ..settings import ModelSettings, TrainSettings
from .data import EventVoxelDataset, load_datasets
from .trainer import TrainResult, init_checkpoint

TREE_ITERATIONS = 200  # boosting rounds (scikit-learn's HistGradientBoostingClassifier)
TREE_ROWS = 400_000  # pixel rows the fit samples (weights keep it a per-event fit)


def fit_trees(settings: TrainSettings, progress: Progress = no_progress) -> TrainResult:
    """Fit the trees of ``settings.model`` on every one of the run's training pairs (the
    validation settings play no part); write ``last.pt``. With ``model.flicker_head``, a
    second ensemble is fitted on the flickering pixels alone; with ``init_from`` (a trees
    checkpoint of the same settings without the head), that checkpoint's trees are kept and
    only the flicker head is fitted."""
    try:
        import sklearn.ensemble  # noqa: F401  (fit_classifier's; checked before any work)
    except ImportError:
        raise DeflareError(
            "model.density_head trees is fitted with scikit-learn: pip install 'deflare[trees]'"
        ) from None
    kept = kept_trees(settings)  # checked before minutes of encoding the pairs
    # no validation step: every pair is fitted on, and no validation pair is read or encoded
    every_pair = settings.data.model_copy(update={"val_dir": None, "val_fraction": 0.0})
    datasets = load_datasets(settings.model_copy(update={"data": every_pair}), progress)
    frames = EventVoxelDataset(datasets.train.entries)  # whole frames: no cut boxes
    samples = pixel_rows(frames, settings, progress, fit_main=kept is None)
    classifiers = {name: fit_classifier(name, *sample, settings.seed, progress)
                   for name, sample in samples.items()}  # fmt: skip
    shapes = {name: tree_shape(classifier) for name, classifier in classifiers.items()}
    model = TrueResidualUNet3D(
        settings.model.model_copy(
            update={
                "density_trees": shapes["trees"] if kept is None else kept["shape"],
                "flicker_trees": shapes.get("flicker_trees", (0, 1, 0)),
            }
        )
    )
    if kept is not None:
        model.backbone.trees.load_state_dict(kept["state"])
    for name, classifier in classifiers.items():
        load_trees(getattr(model.backbone, name), classifier)
    run_settings = settings.model_copy(update={"model": model.settings})
    path = settings.run_dir / "last.pt"
    save_checkpoint(path, tree_checkpoint(model, run_settings.model_dump(mode="json")))
    return TrainResult(
        run_dir=settings.run_dir,
        steps=sum(len(classifier._predictors) for classifier in classifiers.values()),
        epochs_completed=1,
        best_metric=math.nan,
        last_checkpoint=path,
        best_checkpoint=None,
        skipped_pairs=datasets.skipped,
    )


def fit_classifier(
    name: str,
    rows: np.ndarray,
    flare: np.ndarray,
    rest: np.ndarray,
    seed: int,
    progress: Progress = no_progress,
) -> Any:
    """scikit-learn's gradient-boosted classifier of flare (weights ``flare``) against the rest
    (``rest``) over ``rows``: each row enters once per class it has events of."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    if not (flare > 0).any() or not (rest > 0).any():
        what = "flickering pixels" if name == "flicker_trees" else "pixels"
        only = "flare" if (flare > 0).any() else "other"
        raise DeflareError(
            f"the training pairs' {what} hold only {only} events: fitting {name} needs both"
        )
    progress(f"fitting {name}", 0, 1)
    labels = np.r_[np.ones(int((flare > 0).sum())), np.zeros(int((rest > 0).sum()))]
    classifier = HistGradientBoostingClassifier(max_iter=TREE_ITERATIONS, random_state=seed).fit(
        np.concatenate([rows[flare > 0], rows[rest > 0]]),
        labels,
        sample_weight=np.r_[flare[flare > 0], rest[rest > 0]],
    )
    progress(f"fitting {name}", 1, 1)
    return classifier


def kept_trees(settings: TrainSettings) -> dict[str, Any] | None:
    """The trees of ``settings.init_from`` that a flicker head's fit keeps (their tensors and
    shape), or None without ``init_from``; the checkpoint must hold trees of this run's model
    settings, without a flicker head."""
    if settings.init_from is None:
        return None
    path = init_checkpoint(settings.init_from)
    if not settings.model.flicker_head:
        raise InputError(
            path,
            "trees are fitted from nothing; --init-from only keeps a checkpoint's trees while "
            "a flicker head (model.flicker_head) is fitted beside them",
        )
    checkpoint = load_checkpoint(path)
    saved = checkpoint["settings"]["model"]
    differing = {"flicker_head", "flicker_radii", "flicker_trees", "density_trees"}
    if saved.get("density_head") != "trees" or saved.get("flicker_head"):
        raise InputError(path, "holds no trees without a flicker head to keep")
    ours = settings.model.model_dump(mode="json")
    try:
        theirs = ModelSettings.model_validate(saved).model_dump(mode="json")
    except ValidationError as error:
        raise InputError(path, f"its model settings do not load: {error}") from None
    mismatched = sorted(key for key in ours.keys() - differing if theirs[key] != ours[key])
    if mismatched:
        raise InputError(path, f"its model settings differ from this run's in {mismatched}")
    prefix = "backbone.trees."
    state = {k[len(prefix) :]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)}
    return {"state": state, "shape": tuple(saved["density_trees"])}


def pixel_rows(
    frames: EventVoxelDataset,
    settings: TrainSettings,
    progress: Progress = no_progress,
    fit_main: bool = True,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per ensemble to fit (``trees``, and ``flicker_trees`` with a flicker head), its rows of
    the scorer's input for the pixels and polarities with events (every one; the flickering
    ones for the head), their flare events and their other events (weights): a sample of at most
    about ``TREE_ROWS`` rows, each weighted up by its segment's sampling share so the sum stays
    every event's. The main ensemble does not see the flicker columns (``shared_columns``)."""
    model = TrueResidualUNet3D(settings.model)
    backbone = model.backbone
    rng = np.random.default_rng(settings.seed)
    per_segment = max(1, math.ceil(TREE_ROWS / max(len(frames), 1)))
    names = (["trees"] if fit_main else []) + (["flicker_trees"] if backbone.flicker_head else [])
    parts: dict[str, list[tuple[np.ndarray, ...]]] = {name: [] for name in names}
    with torch.no_grad():
        for index in range(len(frames)):
            inputs, targets, density = frames[index]
            scaled = backbone_input(inputs[None], settings.model, density[None])
            features, occupied = backbone.event_features(scaled)
            flare, rest = (counts[occupied] for counts in event_counts(inputs, targets))
            # per ensemble: its rows, with their flare and other events
            rows_of = {"trees": (features, flare, rest)}
            if backbone.flicker_head:
                rows_of["flicker_trees"] = tuple(
                    column[backbone.flickering(features)] for column in rows_of["trees"]
                )
            for name in names:
                rows, flare_events, other_events = rows_of[name]
                chosen = rng.permutation(len(rows))[:per_segment]
                scale = len(rows) / max(len(chosen), 1)
                if name == "trees" and backbone.flicker_head:
                    rows = rows[:, backbone.shared_columns]
                parts[name].append((
                    density_scale(rows).numpy()[chosen],
                    flare_events.numpy()[chosen] * scale,
                    other_events.numpy()[chosen] * scale,
                ))  # fmt: skip
            progress("features", index + 1, len(frames))
    samples = {}
    for name, pieces in parts.items():
        if not sum(len(piece[0]) for piece in pieces):
            what = "flickering pixels" if name == "flicker_trees" else "events"
            raise DeflareError(f"no {what} in the training pairs: nothing to fit {name} on")
        samples[name] = tuple(np.concatenate(column) for column in zip(*pieces, strict=True))
    return samples


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
