"""Training: MSE on voxels, Adam, step decay, checkpoints that resume exactly.

One process trains on CPU or one GPU; ``torchrun --nproc_per_node N -m deflare_cli train ...``
trains with PyTorch DDP (NCCL on GPUs, gloo on CPU). Only rank 0 writes files.

Exact resumption: a checkpoint is one dict (model, optimizer, scheduler, epoch, step, best
metric, settings, RNG state) written atomically. The sample order of an epoch and every crop and
flip are functions of (seed, epoch, index), so a resumed run skips the batches it already did and
continues with exactly the samples, and so the weights, of an uninterrupted run.
"""

from __future__ import annotations

import csv
import logging
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from . import __version__
from .data import EventVoxelDataset, VoxelCache, find_pairs, prepare_pairs, split_pairs
from .devices import Cluster, autocast_dtype, start_cluster
from .errors import DeflareError
from .events import Progress, no_progress
from .io import atomic_output
from .metrics import VOXEL_METRICS, mean_metrics, segment_metrics
from .model import (
    CHECKPOINT_FORMAT,
    TrueResidualUNet3D,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)
from .settings import ReadSettings, TrainSettings

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "step",
    "epoch",
    "train_loss",
    *(f"val_{name}" for name in VOXEL_METRICS),
    *(f"raw_{name}" for name in VOXEL_METRICS),  # the input itself scored: the bar to beat
    "lr",
    "seconds",
]


# ----------------------------------------------------------------------------- sampling


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, sharded over ranks, able to start mid-epoch."""

    def __init__(self, length: int, seed: int, cluster: Cluster, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.cluster = cluster
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0
        # Every rank gets the same count (as DistributedSampler): pad by wrapping around.
        self.per_rank = math.ceil(length / cluster.world_size)

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_samples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        padded = (order * self.cluster.world_size)[: self.per_rank * self.cluster.world_size]
        mine = padded[self.cluster.rank :: self.cluster.world_size]
        return iter(mine[self.skip :])

    def __len__(self) -> int:
        return self.per_rank - self.skip


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C is the main process's to handle (it saves a checkpoint); workers keep loading.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------------------- training


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


@dataclass
class _Position:
    epoch: int = 0  # current epoch (0-based)
    step: int = 0  # optimizer steps done in total
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    best_metric: float = math.inf


class Trainer:
    """Holds the model, optimizer, data and position of one run; ``run()`` trains."""

    def __init__(
        self, settings: TrainSettings, cluster: Cluster, progress: Progress = no_progress
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.progress = progress if cluster.is_main else no_progress
        self.run_dir = settings.run_dir
        self.position = _Position()
        self.stop_requested = False
        self.history: list[dict[str, float]] = []
        torch.manual_seed(settings.seed)
        self.train_set, self.val_set, self.skipped = self._datasets()
        # Channels-last 3D: faster on GPUs, and on CPU too (fp32, batch 4 of 8x128x128 crops:
        # 5.0 instead of 3.8 samples/s on 2 cores).
        self.model = TrueResidualUNet3D(settings.model).to(
            cluster.device, memory_format=torch.channels_last_3d
        )
        self.network = (
            DistributedDataParallel(self.model, device_ids=_device_ids(cluster))
            if cluster.distributed
            else self.model
        )
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, list(settings.lr_milestones), settings.lr_gamma
        )
        self.dtype = autocast_dtype(settings.precision, cluster.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.sampler = EpochSampler(len(self.train_set), settings.seed, cluster)
        self.loader = DataLoader(
            self.train_set,
            batch_size=settings.batch_size,
            sampler=self.sampler,
            num_workers=settings.data.num_workers,
            worker_init_fn=_ignore_sigint,
            pin_memory=cluster.device.type == "cuda",
        )
        if settings.resume is not None:
            self._restore(load_checkpoint(settings.resume))
        if cluster.device.type == "cpu" and settings.batch_size == 1:
            log.warning("batch size 1 on CPU hits a ~10x slower Conv3d kernel: use 2 or more")

    # -- data

    def _datasets(self) -> tuple[EventVoxelDataset, EventVoxelDataset | None, list[str]]:
        data = self.settings.data
        pairs = find_pairs(*data.paired_dirs())
        train_pairs, val_pairs = split_pairs(pairs, data, self.settings.seed)
        cache = VoxelCache(data.cache_dir or self.run_dir / "voxel_cache")
        read = ReadSettings(sensor_size=data.sensor_size)
        codec = self.settings.codec
        # Rank 0 fills the cache first; the others then find every pair cached.
        with self._main_first():
            train, skipped = prepare_pairs(
                train_pairs, cache, codec, read, data.skip_bad, self.progress
            )
            val, val_skipped = (
                prepare_pairs(val_pairs, cache, codec, read, data.skip_bad, self.progress)
                if val_pairs
                else ([], [])
            )
        crop = None if data.crop == "full" else data.crop
        train_set = EventVoxelDataset(train, crop, data.flips, self.settings.seed)
        val_set = EventVoxelDataset(val) if val else None
        return train_set, val_set, skipped + val_skipped

    @contextmanager
    def _main_first(self) -> Iterator[None]:
        if self.cluster.distributed and not self.cluster.is_main:
            dist.barrier()
        yield
        if self.cluster.distributed and self.cluster.is_main:
            dist.barrier()

    # -- checkpoints

    def checkpoint(self) -> dict[str, Any]:
        """The run's full state as one dict (nanoGPT style)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "deflare_version": __version__,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.position.epoch,
            "step": self.position.step,
            "step_in_epoch": self.position.step_in_epoch,
            "best_metric": self.position.best_metric,
            "settings": self.settings.model_dump(mode="json"),
            "torch_rng": torch.get_rng_state(),
        }

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        saved_model = checkpoint["settings"]["model"]
        if saved_model != self.settings.model.model_dump(mode="json"):
            raise DeflareError(
                f"{self.settings.resume}: its model settings {saved_model} differ from this "
                "run's; resume with the same model settings"
            )
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.position = _Position(
            checkpoint["epoch"],
            checkpoint["step"],
            checkpoint["step_in_epoch"],
            checkpoint["best_metric"],
        )
        log.info("resumed at epoch %d, step %d", self.position.epoch, self.position.step)

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
            self._trim_metrics()
        started = time.perf_counter()
        with self._stop_on_sigint():
            while self.position.epoch < self.settings.epochs and not self._finished():
                self._train_epoch(started)
        last = self._save("last.pt")
        best = self.run_dir / "best.pt"
        return TrainResult(
            run_dir=self.run_dir,
            steps=self.position.step,
            epochs_completed=self.position.epoch,
            best_metric=self.position.best_metric,
            last_checkpoint=last,
            best_checkpoint=best if best.exists() else None,
            interrupted=self.stop_requested,
            parameters=count_parameters(self.model),
            skipped_pairs=self.skipped,
            history=self.history,
        )

    def _finished(self) -> bool:
        limit = self.settings.max_steps
        return self.stop_requested or (limit is not None and self.position.step >= limit)

    def _train_epoch(self, started: float) -> None:
        position = self.position
        self.train_set.set_epoch(position.epoch)
        self.sampler.set_epoch(position.epoch, position.step_in_epoch * self.settings.batch_size)
        self.network.train()
        losses: list[float] = []
        for inputs, targets in self.loader:
            losses.append(self.train_step(inputs, targets))
            position.step += 1
            position.step_in_epoch += 1
            self._report(losses)
            if self.settings.val_every and position.step % self.settings.val_every == 0:
                self._validate_and_log(losses, started)
                losses = []
            if position.step % self.settings.checkpoint_every == 0:
                self._save("last.pt")
            if self._stop_agreed() or self._finished():
                return
        position.epoch += 1
        position.step_in_epoch = 0
        self.scheduler.step()
        if not self.settings.val_every or losses:
            self._validate_and_log(losses, started)
        self._save("last.pt")

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        """One optimizer step on a batch (N, 1, B, h, w); returns the batch's MSE."""
        inputs, targets = self._to_device(inputs), self._to_device(targets)
        with self._autocast():
            outputs = self.network(inputs)
        loss = torch.nn.functional.mse_loss(outputs.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.cluster.device, non_blocking=True)
        return tensor.contiguous(memory_format=torch.channels_last_3d)

    def _autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.cluster.device.type, dtype=self.dtype)

    def _report(self, losses: list[float]) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        detail = f"epoch {self.position.epoch + 1}/{self.settings.epochs} "
        detail += f"loss {losses[-1]:.4g} lr {lr:.2g}"
        self.progress("training", self.position.step, self.total_steps, detail)

    # -- validation and metrics

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], dict[str, float]]:
        """Voxel metrics of the model's output and of the raw input against the targets, as
        means over the validation segments (full frames). Empty dicts without validation data.

        The output is rounded first: rounded cells are exactly the voxels of the events that
        decoding would emit, and unrounded near-zero residuals would count as events in the F1s.
        """
        if self.val_set is None:
            return {}, {}
        self.model.eval()
        loader = DataLoader(self.val_set, batch_size=self.settings.batch_size)
        model_rows, raw_rows = [], []
        for done, (inputs, targets) in enumerate(loader, start=1):
            with self._autocast():
                outputs = self.model(self._to_device(inputs)).float().round().cpu()
            for output, source, target in zip(outputs, inputs, targets, strict=True):
                model_rows.append(segment_metrics(output[0], target[0]))
                raw_rows.append(segment_metrics(source[0], target[0]))
            self.progress("validating", done, len(loader))
        self.model.train()
        return mean_metrics(model_rows), mean_metrics(raw_rows)

    def _validate_and_log(self, losses: list[float], started: float) -> None:
        if self.cluster.is_main:
            scores, raw_scores = self.validate()
            train_loss = sum(losses) / len(losses) if losses else math.nan
            row = {
                "step": self.position.step,
                "epoch": self.position.epoch,
                "train_loss": train_loss,
                **{f"val_{k}": scores.get(k, math.nan) for k in VOXEL_METRICS},
                **{f"raw_{k}": raw_scores.get(k, math.nan) for k in VOXEL_METRICS},
                "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - started, 2),
            }
            self.history.append(row)
            self._append_metrics(row)
            metric = scores.get("mse", train_loss)
            if metric < self.position.best_metric:
                self.position.best_metric = metric
                self._save("best.pt")
        if self.cluster.distributed:
            best = torch.tensor([self.position.best_metric], dtype=torch.float64)
            dist.broadcast(best, src=0)
            self.position.best_metric = float(best)

    def _append_metrics(self, row: dict[str, float]) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and not math.isnan(value):
                    self.tensorboard.add_scalar(key, value, self.position.step)
            self.tensorboard.flush()

    @property
    def tensorboard(self) -> Any:
        """A TensorBoard writer into RUN_DIR/tensorboard when the package is installed."""
        if not hasattr(self, "_tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional: metrics.csv has everything
                self._tensorboard = None
            else:
                self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tensorboard

    def _trim_metrics(self) -> None:
        """On resume, drop metric rows written after the checkpoint's step."""
        path = self.run_dir / "metrics.csv"
        if not path.exists():
            return
        with open(path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= self.position.step]
        with atomic_output(path) as temp_path, open(temp_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    # -- Ctrl-C

    @contextmanager
    def _stop_on_sigint(self) -> Iterator[None]:
        """First Ctrl-C: finish the step, save, stop. A second one aborts at once."""

        def request_stop(signum: int, frame: object) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            log.warning("stopping after this step; last.pt will be saved (Ctrl-C again aborts)")

        try:
            previous = signal.signal(signal.SIGINT, request_stop)
        except ValueError:  # not the main thread: no signal handling
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop (all ranks must stop at the same step)."""
        if not self.cluster.distributed:
            return self.stop_requested
        flag = torch.tensor([1.0 if self.stop_requested else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stop_requested = bool(flag.item())
        return self.stop_requested


def _device_ids(cluster: Cluster) -> list[int] | None:
    return [cluster.device.index] if cluster.device.type == "cuda" else None


def train(settings: TrainSettings, progress: Progress = no_progress) -> TrainResult:
    """Train a model as ``settings`` say; see :class:`Trainer`. ``debug`` runs two steps and
    writes the debug pictures instead (see :mod:`deflare_cli.debug`)."""
    cluster = start_cluster(settings.device)
    try:
        trainer = Trainer(settings, cluster, progress)
        if settings.debug:
            from .debug import run_debug

            return run_debug(trainer)
        return trainer.run()
    finally:
        if cluster.distributed and dist.is_initialized():
            dist.destroy_process_group()
