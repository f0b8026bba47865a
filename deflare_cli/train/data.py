"""Paired training data: flare inputs and clean targets as voxel segments.

Pairs are found by :func:`deflare_cli.io.find_pairs`. Both files of a pair are cut on one
absolute grid from the pair's common start, so a 100 ms pair gives 5 segment pairs.

Encoded pairs are kept in a voxel cache on disk (int16 where the counts fit), keyed by the
source files' path, size and modification time and by the codec settings, so later epochs and
later runs do not decode HDF5 again. Cached tensors are memory-mapped: a crop reads only its pages.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..codec import events_to_voxel, segment_grid
from ..errors import DeflareError
from ..events import Events
from ..io import Pair, atomic_output, find_pairs, read_pair
from ..model import frame_density
from ..progress import Progress, map_jobs, no_progress
from ..settings import CodecSettings, DataSettings, ReadSettings, TrainSettings, paired_dirs

log = logging.getLogger(__name__)

CACHE_VERSION = 2


@dataclass(frozen=True)
class CachedPair:
    """A pair encoded into the voxel cache: ``path`` holds input and target (S, B, H, W)."""

    pair: Pair
    path: Path
    num_segments: int
    sensor_size: tuple[int, int]


def encode_pair(
    pair: Pair, codec: CodecSettings, read: ReadSettings = ReadSettings()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and target voxels (S, B, H, W) of one pair, on the pair's common time grid."""
    flare, clean = read_pair(pair, read)
    spans = [flare.time_span(), clean.time_span()]
    start, end = min(s[0] for s in spans), max(s[1] for s in spans)
    grid = segment_grid((start, end), codec.segment_us)
    inputs = events_to_voxel(_with_span(flare, grid), codec).data
    targets = events_to_voxel(_with_span(clean, grid), codec).data
    return inputs, targets


def _with_span(events: Events, span: tuple[int, int]) -> Events:
    return replace(events, span_us=span)


class VoxelCache:
    """Encoded pairs on disk, one ``.pt`` per pair, invalidated by any change of its sources."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def slot(pair: Pair) -> str:
        """Names the pair's source files: pairs of other folders may share an ID."""
        paths = f"{pair.flare_path.resolve()}\n{pair.clean_path.resolve()}"
        return f"{pair.pair_id}-{hashlib.sha256(paths.encode()).hexdigest()[:8]}"

    @staticmethod
    def key(pair: Pair, codec: CodecSettings, read: ReadSettings) -> str:
        """``ENCODING-SOURCES``: the first part changes with the encoding settings, the second
        whenever a source file changes."""
        encoding = "\n".join([f"v{CACHE_VERSION}", codec.model_dump_json(), read.model_dump_json()])
        sources = []
        for path in (pair.flare_path, pair.clean_path):
            stat = path.stat()
            sources += [str(stat.st_size), str(stat.st_mtime_ns)]
        return f"{_digest(encoding)}-{_digest(' '.join(sources))}"

    def get(self, pair: Pair, codec: CodecSettings, read: ReadSettings) -> CachedPair:
        """The cached entry of a pair, encoding it first when missing or stale.

        Runs with other encoding settings keep their own entries in a shared cache; an entry
        of the same settings but older source files is replaced."""
        slot = self.slot(pair)
        key = self.key(pair, codec, read)
        path = self.folder / f"{slot}-{key}.pt"
        if not path.exists():
            inputs, targets = encode_pair(pair, codec, read)
            self.folder.mkdir(parents=True, exist_ok=True)
            encoding = key.split("-")[0]
            for stale in self.folder.glob(f"{slot}-{encoding}-*.pt"):  # older source files
                if stale != path:
                    stale.unlink(missing_ok=True)
            with atomic_output(path) as temp_path:
                torch.save({"input": _compact(inputs), "target": _compact(targets)}, temp_path)
        shape = tuple(self.load(path)["input"].shape)
        return CachedPair(pair, path, shape[0], (shape[2], shape[3]))

    @staticmethod
    def load(path: Path) -> dict[str, torch.Tensor]:
        """An entry's ``input`` and ``target`` voxels (S, B, H, W), memory-mapped: a crop reads
        only its pages. Integer entries come back as int16."""
        return torch.load(path, mmap=True, weights_only=True)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _compact(voxels: torch.Tensor) -> torch.Tensor:
    """Integer voxels as int16 (half the disk) when they fit, else float32 as they are."""
    fits = voxels.abs().max() <= torch.iinfo(torch.int16).max
    if fits and torch.equal(voxels, voxels.round()):
        return voxels.to(torch.int16)
    return voxels


def prepare_pairs(
    pairs: list[Pair],
    cache: VoxelCache,
    codec: CodecSettings,
    read: ReadSettings,
    skip_bad: bool,
    progress: Progress = no_progress,
    workers: int = 0,
) -> tuple[list[CachedPair], list[str]]:
    """Encode (or find cached) every pair, in ``workers`` processes when more than one. Returns
    the entries, in the pairs' order, and the skipped pairs' reasons.

    A corrupt pair fails with its file's name, or with ``skip_bad`` is left out and reported;
    training never sees zeros in place of a file it could not read.
    """
    job = partial(_cache_entry, cache=cache, codec=codec, read=read)
    outcomes = map_jobs(job, pairs, workers, "encoding pairs", progress)
    entries, skipped = [], []
    for pair, outcome in zip(pairs, outcomes, strict=True):
        if not isinstance(outcome, CachedPair) and not skip_bad:
            outcome = cache.get(pair, codec, read)  # raises the error itself, with its type
        if isinstance(outcome, CachedPair):
            entries.append(outcome)
        else:
            skipped.append(outcome)
            log.warning("skipping pair %s: %s", pair.pair_id, outcome)
    if not entries:
        raise DeflareError("no readable training pairs left (all were skipped)")
    return entries, skipped


def _cache_entry(
    pair: Pair, cache: VoxelCache, codec: CodecSettings, read: ReadSettings
) -> CachedPair | str:
    try:
        return cache.get(pair, codec, read)
    except DeflareError as error:
        return str(error)


def split_pairs(
    pairs: list[Pair], settings: DataSettings, seed: int
) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, validation pairs): ``val_dir`` if given, else a seeded ``val_fraction``."""
    if settings.val_dir is not None:
        return pairs, find_pairs(*paired_dirs(settings.val_dir))
    count = round(len(pairs) * settings.val_fraction)
    if settings.val_fraction > 0 and len(pairs) >= 2:
        count = max(1, min(count, len(pairs) - 1))
    else:
        count = 0
    order = random.Random(seed).sample(range(len(pairs)), len(pairs))
    held_out = set(order[:count])
    train = [p for i, p in enumerate(pairs) if i not in held_out]
    return train, [p for i, p in enumerate(pairs) if i in held_out]


class EventVoxelDataset(Dataset):
    """Segment pairs ``(input, target, density)``: (1, B, h, w) float32 each, and the events
    per pixel of the input's whole frame (``model.frame_density``, before any crop: what a
    model with ``input_norm: frame`` scales a crop by, as deflare does a tile).

    Training samples are random crops with random flips; their randomness is a function of
    (seed, epoch, index) alone, so a resumed run draws exactly the samples the first run would
    have. With ``context``, each sample is its crop with that many pixels of the frame around it
    (the window lies inside the frame), which the trainer's loss leaves out
    (:func:`~.trainer.loss_window`). Validation samples are full frames.
    """

    def __init__(
        self,
        entries: list[CachedPair],
        crop: tuple[int, int] | None = None,
        flips: bool = False,
        seed: int = 0,
        flare_crops: float = 0.0,
        context: int = 0,
    ) -> None:
        self.entries = entries
        self.crop = crop
        if crop is not None and context:
            self.crop = (crop[0] + 2 * context, crop[1] + 2 * context)  # the window drawn
        self.flips = flips
        self.flare_crops = flare_crops
        self.seed = seed
        self.epoch = 0
        self.items = [(e, s) for e, entry in enumerate(entries) for s in range(entry.num_segments)]
        self._open: dict[int, dict[str, torch.Tensor]] = {}
        self._densities: dict[tuple[int, int], torch.Tensor] = {}
        for entry in entries:
            window = self.crop
            if window and (window[0] > entry.sensor_size[0] or window[1] > entry.sensor_size[1]):
                with_context = f" with {context} px of context around it" if context else ""
                raise DeflareError(
                    f"crop {crop}{with_context} is larger than the sensor {entry.sensor_size} "
                    f"of {entry.pair.flare_path}"
                )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose crops and flips are drawn."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        entry_index, segment = self.items[index]
        tensors = self._tensors(entry_index)
        inputs = tensors["input"][segment]
        targets = tensors["target"][segment]
        if (entry_index, segment) not in self._densities:  # once: a whole frame's sum
            self._densities[entry_index, segment] = frame_density(inputs[None].float())[0]
        density = self._densities[entry_index, segment]
        if self.crop is not None or self.flips:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            inputs, targets = self._augment(inputs, targets, rng)
        return inputs.float().unsqueeze(0), targets.float().unsqueeze(0), density

    def _augment(
        self, inputs: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.crop is not None:
            top, left = self._crop_corner(inputs, targets, rng)
            window = (..., slice(top, top + self.crop[0]), slice(left, left + self.crop[1]))
            inputs, targets = inputs[window], targets[window]
        if self.flips:
            dims = [d for d, flip in ((-1, rng.random() < 0.5), (-2, rng.random() < 0.5)) if flip]
            if dims:
                inputs, targets = inputs.flip(dims), targets.flip(dims)
        return inputs, targets

    def _crop_corner(
        self, inputs: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator
    ) -> tuple[int, int]:
        """(top, left) of a training crop: uniform, or (a ``flare_crops`` share of the time)
        centred on a random pixel where input and target differ, when there is one."""
        height, width = inputs.shape[-2:]
        crop_h, crop_w = self.crop
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        if self.flare_crops and rng.random() < self.flare_crops:
            differs = torch.nonzero((inputs != targets).any(0))
            if len(differs):
                y, x = differs[int(rng.integers(len(differs)))].tolist()
                top = min(max(y - crop_h // 2, 0), height - crop_h)
                left = min(max(x - crop_w // 2, 0), width - crop_w)
        return top, left

    def _tensors(self, entry_index: int) -> dict[str, torch.Tensor]:
        if entry_index not in self._open:
            self._open[entry_index] = VoxelCache.load(self.entries[entry_index].path)
        return self._open[entry_index]


@dataclass
class Datasets:
    """A run's training and validation samples, and the pairs left out as unreadable."""

    train: EventVoxelDataset
    val: EventVoxelDataset | None
    skipped: list[str]


def load_datasets(settings: TrainSettings, progress: Progress = no_progress) -> Datasets:
    """Find, split and encode (or find cached) the run's pairs into datasets."""
    data = settings.data
    pairs = find_pairs(*data.paired_dirs())
    train_pairs, val_pairs = split_pairs(pairs, data, settings.seed)
    cache = VoxelCache(data.cache_dir or settings.run_dir / "voxel_cache")
    train, skipped = prepare_pairs(train_pairs, cache, settings.codec, data.read,
                                   data.skip_bad, progress, data.num_workers)  # fmt: skip
    val, val_skipped = [], []
    if val_pairs:
        val, val_skipped = prepare_pairs(val_pairs, cache, settings.codec, data.read,
                                         data.skip_bad, progress, data.num_workers)  # fmt: skip
    crop = None if data.crop == "full" else data.crop
    train_set = EventVoxelDataset(train, crop, data.flips, settings.seed, data.flare_crops,
                                  data.context)  # fmt: skip
    return Datasets(train_set, EventVoxelDataset(val) if val else None, skipped + val_skipped)
