"""Training: MSE on voxels, Adam, step decay, checkpoints that resume exactly.

One process trains on CPU or one GPU; ``torchrun --nproc_per_node N -m deflare_cli train ...``
trains with PyTorch DDP (NCCL on GPUs, gloo on CPU). Only rank 0 writes files.

Exact resumption: a checkpoint (:mod:`deflare_cli.checkpoint`) holds the model, optimizer,
scheduler, position, best metric, settings and RNG state. The sample order of an epoch and every
crop and flip are functions of (seed, epoch, index), so a resumed run skips the batches it
already did and continues with exactly the samples, and so the weights, of an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..checkpoint import (
    Position,
    TrainingState,
    build_checkpoint,
    load_weights,
    restore_training,
    save_checkpoint,
)
from ..devices import Cluster, autocast, autocast_dtype
from ..errors import DeflareError
from ..infer import DEFAULT_CHECKPOINT
from ..metrics import VOXEL_METRICS
from ..model import TrueResidualUNet3D, count_parameters
from ..progress import Progress, no_progress
from ..settings import TrainSettings
from .batchnorm import batchnorm_layers, recompute_batchnorm, statistics_batches
from .data import load_datasets
from .runlog import RunLog
from .sampler import EpochSampler
from .stopping import StopRequest, ignore_sigint
from .validation import validate

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run did."""

    run_dir: Path
    steps: int
    epochs_completed: int
    best_metric: float
    last_checkpoint: Path
    best_checkpoint: Path | None
    interrupted: bool = False
    parameters: int = 0
    skipped_pairs: list[str] = field(default_factory=list)
    debug_dir: Path | None = None
    history: list[dict[str, float]] = field(default_factory=list)


VALIDATION_BATCH = 2
# On a CPU a frame of more than 480x640 pixels of 8 bins runs alone: a pair of 720x1280 frames
# took 9.9-10.5 s each and 6.6 GB, one at a time 7.1-7.3 s and 3.4 GB (the default model, 2
# threads, AMD EPYC with AVX512-BF16, 2026-12-06); at 480x640 both ran 2.4-2.6 s a frame, and
# at 260x346 a pair was twice as fast per frame (batch 1 hits a slow Conv3d kernel).
CPU_VALIDATION_CELLS = 480 * 640 * 8


class Trainer:
    """Holds the model, optimizer, data and position of one run.

    ``run()`` trains to the end (validating, logging and checkpointing as it goes);
    ``run_steps(n)`` runs ``n`` bare optimizer steps (what ``--debug`` uses).
    """

    def __init__(
        self, settings: TrainSettings, cluster: Cluster, progress: Progress = no_progress
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.progress = progress if cluster.is_main else no_progress
        self.run_dir = settings.run_dir
        self.position = Position()
        self.stop = StopRequest()
        self.deadline: float | None = None  # perf_counter time at which max_minutes ends
        self.pending_losses: list[float] = []  # training losses since the last validation
        self.log = RunLog(settings.run_dir)
        self.history: list[dict[str, float]] = []
        self.settled_step = -1  # the step whose BatchNorm statistics were last recomputed
        torch.manual_seed(settings.seed)
        initial = None  # fine-tuning's weights, checked before minutes of encoding the pairs
        if settings.init_from is not None and settings.resume is None:
            source = init_checkpoint(settings.init_from)
            initial, step = load_weights(source, settings.model)
            log.info("starting from the weights of %s (its step %d)", source, step)
        with self._main_first():  # rank 0 fills the voxel cache; the others then find it full
            datasets = load_datasets(settings, self.progress)
        self.train_set, self.val_set, self.skipped = datasets.train, datasets.val, datasets.skipped
        self.model, self.network = self._build_model()
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, list(settings.lr_milestones), settings.lr_gamma
        )
        self.dtype = autocast_dtype(settings.runtime.precision, cluster.device)
        scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.state = TrainingState(self.model, optimizer, scheduler, scaler)
        self.sampler = EpochSampler(len(self.train_set), settings.seed, cluster)
        self.loader = DataLoader(
            self.train_set,
            batch_size=settings.batch_size,
            sampler=self.sampler,
            num_workers=settings.data.num_workers,
            worker_init_fn=ignore_sigint,
            pin_memory=cluster.device.type == "cuda",
        )
        if settings.resume is not None:
            self.position = restore_training(settings.resume, self.state, settings.model)
            log.info("resumed at epoch %d, step %d", self.position.epoch, self.position.step)
        elif initial is not None:
            self.model.load_state_dict(initial)
        if cluster.device.type == "cpu" and settings.batch_size == 1:
            log.warning("batch size 1 on CPU hits a ~10x slower Conv3d kernel: use 2 or more")

    def _build_model(self) -> tuple[TrueResidualUNet3D, torch.nn.Module]:
        """The model, and the module that trains it (the model itself, or its DDP wrapper)."""
        # Channels-last 3D: faster on GPUs, and on CPU too (fp32, batch 4 of 8x128x128 crops:
        # 5.0 instead of 3.8 samples/s on 2 cores).
        model = TrueResidualUNet3D(self.settings.model).to(
            self.cluster.device, memory_format=torch.channels_last_3d
        )
        if not self.cluster.distributed:
            return model, model
        device_ids = [self.cluster.device.index] if self.cluster.device.type == "cuda" else None
        return model, DistributedDataParallel(model, device_ids=device_ids)

    @contextmanager
    def _main_first(self) -> Iterator[None]:
        if self.cluster.distributed and not self.cluster.is_main:
            dist.barrier()
        yield
        if self.cluster.distributed and self.cluster.is_main:
            dist.barrier()

    # -- checkpoints

    def checkpoint(self) -> dict[str, Any]:
        """The run's full state as one dict (see :mod:`deflare_cli.checkpoint`)."""
        settings = self.settings.model_dump(mode="json")
        return build_checkpoint(self.state, self.position, settings)

    def _save(self, name: str) -> Path:
        path = self.run_dir / name
        if self.cluster.is_main:
            save_checkpoint(path, self.checkpoint())
        return path

    # -- the loop

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.sampler.per_rank / self.settings.batch_size)

    @property
    def total_steps(self) -> int:
        total = self.settings.epochs * self.steps_per_epoch
        return min(total, self.settings.max_steps or total)

    def run(self) -> TrainResult:
        """Train until the last epoch, ``max_steps``, or Ctrl-C (which saves ``last.pt``)."""
        if self.cluster.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.history = self.log.trim(self.position.step)
        started = time.perf_counter()
        budget = self.settings.max_minutes
        self.deadline = None if budget is None else started + 60 * budget
        with self.stop.handling_signals():
            while self.position.epoch < self.settings.epochs and not self._finished():
                self._train_epoch(started)
        if not self.stop.requested:  # Ctrl-C saves at once, with the running averages
            self._settle_batchnorm()
        last = self._save("last.pt")
        best = self.run_dir / "best.pt"
        return TrainResult(
            run_dir=self.run_dir,
            steps=self.position.step,
            epochs_completed=self.position.epoch,
            best_metric=self.position.best_metric,
            last_checkpoint=last,
            best_checkpoint=best if best.exists() else None,
            interrupted=self.stop.requested,
            parameters=count_parameters(self.model),
            skipped_pairs=self.skipped,
            history=self.history,
        )

    def run_steps(self, count: int) -> list[float]:
        """Run ``count`` optimizer steps from the current position, without validation, logs or
        checkpoints; returns their losses."""
        losses: list[float] = []
        while True:
            for inputs, targets, density in self._epoch_batches():
                losses.append(self._step(inputs, targets, density, losses))
                if len(losses) == count:
                    return losses
            self._next_epoch()

    def _finished(self) -> bool:
        return self.stop.requested or self._limit_reached()

    def _limit_reached(self) -> bool:
        """``max_steps`` or ``max_minutes`` is used up (the time as rank 0 sees it)."""
        limit = self.settings.max_steps
        if limit is not None and self.position.step >= limit:
            return True
        if self.deadline is None:
            return False
        late = torch.tensor([1.0 if time.perf_counter() >= self.deadline else 0.0])
        if self.cluster.distributed:
            dist.broadcast(late, src=0)  # all ranks stop at the same step
        return bool(late.item())

    def _epoch_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The current epoch's batches, from where the position stands in it."""
        position = self.position
        self.train_set.set_epoch(position.epoch)
        self.sampler.set_epoch(position.epoch, position.step_in_epoch * self.settings.batch_size)
        self.network.train()
        return iter(self.loader)

    def _step(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        density: torch.Tensor,
        losses: list[float],
    ) -> float:
        """One optimizer step, counted and reported; returns its loss."""
        loss = self.train_step(inputs, targets, density)
        self.position.step += 1
        self.position.step_in_epoch += 1
        self._report([*losses, loss])
        return loss

    def _next_epoch(self) -> None:
        self.position.epoch += 1
        self.position.step_in_epoch = 0
        self.state.scheduler.step()

    def _train_epoch(self, started: float) -> None:
        """One epoch, or its rest. Validation comes every ``val_every`` steps when that is set
        (across epochs, so short epochs do not validate more often), else at each epoch's end;
        and at the end of a ``max_steps``/``max_minutes`` budget or of the last epoch."""
        losses = self.pending_losses
        for inputs, targets, density in self._epoch_batches():
            losses.append(self._step(inputs, targets, density, losses))
            step = self.position.step
            if self.settings.val_every and step % self.settings.val_every == 0:
                self._validate_and_log(losses, started)
                losses.clear()
            if step % self.settings.checkpoint_every == 0:
                self._save("last.pt")
            if self.stop.agreed(self.cluster):
                return
            if self._limit_reached():
                if losses:  # a budget's end is validated, so best.pt can be the last state
                    self._validate_and_log(losses, started)
                    losses.clear()
                return
        self._next_epoch()
        last_epoch = self.position.epoch >= self.settings.epochs
        if not self.settings.val_every or (losses and last_epoch):
            self._validate_and_log(losses, started)
            losses.clear()
        self._save("last.pt")

    def train_step(
        self, inputs: torch.Tensor, targets: torch.Tensor, density: torch.Tensor | None = None
    ) -> float:
        """One optimizer step on a batch (N, 1, B, h, w); ``density``: (N,) events per pixel of
        each crop's whole frame (default: the crops are whole frames); returns the batch's loss."""
        inputs, targets = self._to_device(inputs), self._to_device(targets)
        raw = self.settings.loss == "mask"  # the loss takes the removal logits
        if density is not None:
            density = density.to(self.cluster.device)
        with autocast(self.cluster.device, self.dtype):
            outputs = self.network(inputs, raw=raw, density=density)
        window = loss_window(self.settings.data.context)
        loss = training_loss(
            self.settings.loss, outputs.float()[window], inputs[window], targets[window]
        )
        if not torch.isfinite(loss):  # before the step: the weights stay the last good ones
            raise DeflareError(
                f"training diverged at step {self.position.step + 1}: the loss is "
                f"{float(loss)}; lower --lr (last.pt holds the last saved good state)"
            )
        optimizer, scaler = self.state.optimizer, self.state.scaler
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.cluster.device, non_blocking=True)
        return tensor.contiguous(memory_format=torch.channels_last_3d)

    @property
    def lr(self) -> float:
        return self.state.optimizer.param_groups[0]["lr"]

    def _report(self, losses: list[float]) -> None:
        detail = f"epoch {self.position.epoch + 1}/{self.settings.epochs} "
        detail += f"loss {losses[-1]:.4g} lr {self.lr:.2g}"
        last = self.history[-1] if self.history else {}
        if not math.isnan(last.get("val_mse", math.nan)):  # e.g. "val@200 mse 0.00514 auc 0.570"
            detail += f"; val@{last['step']:.0f} mse {last['val_mse']:.3g}"
            if not math.isnan(last.get("val_event_auc", math.nan)):
                detail += f" auc {last['val_event_auc']:.3f}"
        self.progress("training", self.position.step, self.total_steps, detail)

    # -- validation and metrics

    def validate(self) -> tuple[dict[str, float], dict[str, float]]:
        """Voxel metrics of the model's output and of the raw input against the targets, as
        means over the validation segments. Empty dicts without validation data."""
        if self.val_set is None:
            return {}, {}
        # Full frames are up to 100x a training crop: a training batch of them (16 frames of
        # 1280x720 on a GPU) would need tens of GB. Two at a time (one hits a slow CPU kernel
        # on small frames), and on a CPU large frames alone (CPU_VALIDATION_CELLS).
        batch_size = min(self.settings.batch_size, VALIDATION_BATCH)
        max_pixels = None
        if self.cluster.device.type == "cpu":
            max_pixels = CPU_VALIDATION_CELLS // self.settings.codec.num_bins
        return validate(self.model, self.val_set, batch_size, self.dtype, self.progress, max_pixels)

    def _settle_batchnorm(self) -> None:
        """Recompute the BatchNorm statistics for validation and saving (see
        :mod:`deflare_cli.train.batchnorm`), once per step reached. Rank 0 alone: DDP hands
        its buffers to the other ranks at their next forward."""
        count = self.settings.batchnorm_batches
        step = self.position.step
        if not count or step == self.settled_step or not batchnorm_layers(self.model):
            return
        if self.cluster.is_main:
            size = self.settings.batch_size
            total = min(count, math.ceil(len(self.train_set) / size))
            batches = statistics_batches(self.train_set, count, size, self.settings.seed)

            def forward(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
                inputs, _targets, density = batch
                with autocast(self.cluster.device, self.dtype):
                    self.model(self._to_device(inputs), density=density.to(self.cluster.device))

            recompute_batchnorm(self.model, batches, forward, self.progress, total)
        self.settled_step = step

    def _validate_and_log(self, losses: list[float], started: float) -> None:
        self._settle_batchnorm()
        if self.cluster.is_main:
            scores, raw_scores = self.validate()
            train_loss = sum(losses) / len(losses) if losses else math.nan
            row = {
                "step": self.position.step,
                "epoch": self.position.epoch,
                "train_loss": train_loss,
                **{f"val_{k}": scores.get(k, math.nan) for k in VOXEL_METRICS},
                **{f"raw_{k}": raw_scores.get(k, math.nan) for k in VOXEL_METRICS},
                "val_event_auc": scores.get("event_auc", math.nan),
                "val_flare_at_97": scores.get("flare_at_97", math.nan),
                "lr": self.lr,
                "seconds": round(time.perf_counter() - started, 2),
            }
            self.history.append(row)
            self.log.append(row)
            metric = scores.get("mse", train_loss)
            if metric < self.position.best_metric:
                self.position.best_metric = metric
                self._save("best.pt")
        if self.cluster.distributed:
            best = torch.tensor([self.position.best_metric], dtype=torch.float64)
            dist.broadcast(best, src=0)
            self.position.best_metric = float(best)


def init_checkpoint(init_from: Path) -> Path:
    """The checkpoint ``--init-from`` names: the shipped default model for ``default``."""
    return DEFAULT_CHECKPOINT if str(init_from) == "default" else init_from


def loss_window(context: int) -> tuple[slice, ...]:
    """The part of a training sample (N, 1, B, h, w) that the loss counts: all of it, or the
    crop inside ``context`` pixels of context (``data.context``)."""
    if not context:
        return (...,)
    inner = slice(context, -context)
    return (..., inner, inner)


def training_loss(
    kind: str, outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``mse``; ``balanced``: the mean of the MSEs over three kinds of cells — those flare
    changed (input != target), those with events that flare left alone, and empty ones;
    ``mask``: :func:`mask_loss` (``outputs`` are then the removal logits).

    With plain MSE, dense flare cores (tens of events per cell, squared) outweigh the sparse
    scene of night recordings so much that deleting every event beats keeping them: trainings
    on the issue-12 recipe fell into that (validation F1 0.05 after 500 steps) and then
    deleted a third of real scenes. Balanced, a lone scene event costs as much to lose as a
    flare cell costs to keep.
    """
    if kind == "mse":
        return torch.nn.functional.mse_loss(outputs, targets)
    if kind == "mask":
        return mask_loss(outputs, inputs, targets)
    squared = (outputs - targets) ** 2
    changed = inputs != targets
    groups = (changed, ~changed & (inputs != 0), ~changed & (inputs == 0))
    means = [squared[group].mean() for group in groups if bool(group.any())]
    return torch.stack(means).mean()


def mask_loss(logits: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy of each event being flare, from the removal logits of
    a mask model (``model.py``).

    A cell with net count ``x != 0`` whose target is ``y`` has the flare share
    ``clip((x - y) / x, 0, 1)`` (the target keeps the scene's events of the input: synth
    draws them once for both). Each cell weighs ``|x|``, its events; the flare events' mean
    loss and the other events' mean loss count half each, so that neither a scene-only crop
    nor a flare core decides alone. Cells without events carry no loss (a mask cannot fill
    them). Flare-free batches give the scene half alone.
    """
    occupied = inputs != 0
    net, logit = inputs[occupied], logits[occupied]
    share = ((net - targets[occupied]) / net).clamp(0, 1)
    weight = net.abs()
    flare_loss = torch.nn.functional.softplus(-logit)  # -log sigmoid(logit)
    scene_loss = torch.nn.functional.softplus(logit)  # -log (1 - sigmoid(logit))
    halves = []
    for part, loss in ((weight * share, flare_loss), (weight * (1 - share), scene_loss)):
        total = part.sum()
        if float(total) > 0:
            halves.append((part * loss).sum() / total)
    return torch.stack(halves).mean() if halves else logits.sum() * 0
