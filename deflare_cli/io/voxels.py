"""Voxel files (``.pt``), and the whole-file commands ``deflare encode`` and ``deflare decode``.

A voxel file holds the tensor (S, B, H, W) and its metadata (sensor size, bins, segment length,
t0, source) as tensors, numbers and strings only, so it loads with
``torch.load(weights_only=True)`` and can never run code.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import torch

from ..budget import check_encode
from ..codec import Voxels, events_to_voxel, segment_grid, voxel_to_events
from ..errors import InputError
from ..events import Events
from ..progress import Progress, no_progress
from ..settings import DecodeSettings, EncodeSettings
from .files import atomic_output, check_distinct, source_label
from .reader import read_events
from .writer import write_events

VOXEL_FORMAT = "deflare-voxels/1"


def write_voxels(target: str | Path | BinaryIO, voxels: Voxels) -> None:
    """Save a voxel grid and its metadata as a ``.pt`` file, atomically.

    The file holds only tensors, numbers and strings, so it loads with
    ``torch.load(weights_only=True)`` and can never run code.
    """
    payload = {
        "format": VOXEL_FORMAT,
        "voxels": voxels.data.contiguous(),
        "t0_us": int(voxels.t0_us),
        "segment_us": int(voxels.segment_us),
        "num_bins": voxels.num_bins,
        "sensor_size": list(voxels.sensor_size),
        "source": voxels.source,
    }
    with atomic_output(target) as temp_path:
        torch.save(payload, temp_path)


def read_voxels(source: str | Path | BinaryIO, name: str | None = None) -> Voxels:
    """Load a voxel file written by :func:`write_voxels`, refusing anything else."""
    label = source_label(source, name)
    if isinstance(source, str | Path) and not Path(source).is_file():
        raise InputError(label, "file not found" if not Path(source).exists() else "not a file")
    if not zipfile.is_zipfile(source):  # torch.save writes zip archives since PyTorch 1.6
        raise InputError(label, "not a voxel file (not a PyTorch .pt archive)")
    if not isinstance(source, str | Path):
        source.seek(0)
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            label, "refused: the file holds Python objects that could run code, not voxels"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(label, f"not a voxel file (cannot load it with torch: {error})") from None
    return _voxels_from_payload(payload, label)


def _voxels_from_payload(payload: object, label: str) -> Voxels:
    if not isinstance(payload, dict) or payload.get("format") != VOXEL_FORMAT:
        raise InputError(label, f"not a deflare voxel file (no '{VOXEL_FORMAT}' marker)")
    data = payload.get("voxels")
    expected_bins = payload.get("num_bins")
    expected_size = payload.get("sensor_size")
    if not isinstance(data, torch.Tensor) or data.ndim != 4 or data.dtype != torch.float32:
        raise InputError(label, "voxel file must hold a float32 tensor of shape (S, B, H, W)")
    if [data.shape[1], *data.shape[2:]] != [expected_bins, *(expected_size or [])]:
        raise InputError(
            label,
            f"tensor shape {tuple(data.shape)} does not match its metadata "
            f"(bins {expected_bins}, sensor size {expected_size})",
        )
    try:
        return Voxels(
            data, int(payload["t0_us"]), int(payload["segment_us"]), str(payload["source"])
        )
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(label, f"voxel file metadata is incomplete or invalid ({error})") from None


def encode_file(
    source: str | Path | BinaryIO,
    target: str | Path | BinaryIO,
    settings: EncodeSettings = EncodeSettings(),
    progress: Progress = no_progress,
    name: str | None = None,
) -> Voxels:
    """Read an event file, encode it, and write the voxel file. Returns the voxels."""
    check_distinct(source, target)
    events = read_events(source, settings.read, progress, name)
    label = source_label(source, name)
    codec = settings.codec
    start, end = segment_grid(events.time_span(), codec.segment_us)
    segments = (end - start) // codec.segment_us
    check_encode(label, segments, codec.num_bins, events.sensor_size, settings.memory_gb)
    voxels = events_to_voxel(events, codec, progress)
    voxels = replace(voxels, source=label)
    write_voxels(target, voxels)
    return voxels


def decode_file(
    source: str | Path | BinaryIO,
    target: str | Path | BinaryIO,
    settings: DecodeSettings = DecodeSettings(),
    progress: Progress = no_progress,
    name: str | None = None,
) -> Events:
    """Read a voxel file, decode it, and write the events (deflare layout). Returns the events."""
    check_distinct(source, target)
    voxels = read_voxels(source, name)
    events = voxel_to_events(voxels, settings.seed, progress)
    provenance = {"deflare_decoded_from": voxels.source, "deflare_decode_seed": settings.seed}
    write_events(target, events, settings.write, provenance)
    return events
