"""Where computation runs: CPU, one GPU, or one of several torchrun processes."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .errors import DeflareError
from .settings import Device, Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes (one, unless under torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(choice: Device, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeflareError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def cluster_from_env(choice: Device) -> Cluster:
    """This process's rank and device as torchrun describes them, without a process group
    (enough for work that is only shared out, like deflaring a folder)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(choice, local_rank)
    return Cluster(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), device)


def start_cluster(choice: Device) -> Cluster:
    """Join the torchrun process group when WORLD_SIZE > 1, else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(choice, local_rank)
    if world_size == 1:
        return Cluster(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Cluster(dist.get_rank(), dist.get_world_size(), device)


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training, or None for plain fp32 (inference chooses its own:
    :func:`deflare_cli.engines.inference_precision`).

    ``auto`` is bf16 (fp16 where bf16 is unsupported) on CUDA and fp32 on CPU: on CPU, bf16
    autocast backward crashed (segfault) with PyTorch 2.13's oneDNN kernels at batch >= 2 on an
    AMX Xeon, and fp32 at batch >= 2 avoids the slow batch-1 Conv3d kernel anyway.
    """
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        if precision == "fp16":
            raise DeflareError("fp16 training needs a CUDA GPU; use --precision fp32 or bf16")
        log.warning("bf16 training on CPU is experimental: PyTorch 2.13 crashed here with it")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Mixed precision for the network's forward pass: autocast to ``dtype`` on ``device``, or
    nothing at all for plain fp32 (``dtype`` None, from :func:`autocast_dtype`)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextmanager
def freed_memory_kept(device: torch.device) -> Iterator[bool]:
    """While training on a CPU, glibc's malloc keeps freed memory for the next step instead of
    handing it back to the kernel; yields whether it could (glibc alone has ``mallopt``).

    A training step frees and allocates activations of up to ~130 MB per layer (batch 16 of
    128x128 crops). glibc serves every block over its mmap threshold (32 MB at most) with fresh
    pages, which the kernel maps and zeroes at each step: 2 M page faults and 7 s of system
    time per step of batch 16 of the default model. Served from a heap that keeps them, a step
    takes 5.9-6.3 s instead of 8.7-9.7 s, for about 0.7 GB more peak memory (``make bench``,
    AMD EPYC with AVX2, 2 cores, 2026-12-05). Flushing denormals changed nothing there.
    Not used for inference: OpenVINO reuses its own buffers. glibc's defaults come back
    afterwards (its mmap threshold stays at 128 kB, no longer adjusted on the fly).
    """
    libc = _glibc() if device.type == "cpu" else None
    if libc is None:
        yield False
        return
    for option, value in _KEEP_FREED.items():
        libc.mallopt(option, value)
    try:
        yield True
    finally:
        for option, value in _GLIBC_DEFAULTS.items():
            libc.mallopt(option, value)


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


# mallopt's options (malloc.h): M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_THRESHOLD -3,
# M_MMAP_MAX -4
_KEEP_FREED = {-4: 0, -1: 1 << 30, -2: 64 << 20}  # no mmap; trim past 1 GB free; grow by 64 MB
_GLIBC_DEFAULTS = {-4: 65536, -1: 128 << 10, -2: 128 << 10, -3: 128 << 10}
