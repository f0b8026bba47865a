"""The order in which training samples are drawn: seeded per epoch, sharded over torchrun ranks,
able to start mid-epoch (so a resumed run draws exactly what an uninterrupted one would)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from ..devices import Cluster


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
