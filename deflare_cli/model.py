"""The network: ``output = input + backbone(input)``, a true residual 3D U-Net.

pytorch-3dunet's own ``ResidualUNet3D`` is residual only inside its blocks; its output is not
``input + correction``, so an untrained model destroys the background (the seed measured -46%
energy kept). Here the backbone learns the correction (about ``-flare``) and its final 1x1x1
convolution starts at zero, so the untrained model is exactly the identity.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeflareError, InputError
from .io import atomic_output
from .settings import ModelSettings

CHECKPOINT_FORMAT = "deflare-checkpoint/1"


class TrueResidualUNet3D(nn.Module):
    """Voxels in, voxels out: (N, 1, B, H, W) -> (N, 1, B, H, W).

    Inputs whose bins, height or width do not divide by ``2 ** (depth - 1)`` are zero-padded for
    the backbone and cropped back, so any sensor size works (260x346, 720x1280, ...).
    """

    def __init__(self, settings: ModelSettings = ModelSettings()) -> None:
        super().__init__()
        self.settings = settings
        self.backbone = build_backbone(settings)
        nn.init.zeros_(self.backbone.final_conv.weight)
        nn.init.zeros_(self.backbone.final_conv.bias)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        return voxels + self.residual(voxels)

    def residual(self, voxels: torch.Tensor) -> torch.Tensor:
        """The learned correction alone (about minus the flare), same shape as the input."""
        if voxels.ndim != 5 or voxels.shape[1] != 1:
            raise ValueError(f"expected (N, 1, B, H, W) voxels, got {tuple(voxels.shape)}")
        multiple = self.settings.size_multiple
        sizes = voxels.shape[2:]
        padding = [(-size) % multiple for size in sizes]
        padded = F.pad(voxels, (0, padding[2], 0, padding[1], 0, padding[0]))
        correction = self.backbone(padded).to(voxels.dtype)
        return correction[:, :, : sizes[0], : sizes[1], : sizes[2]]


def build_backbone(settings: ModelSettings) -> nn.Module:
    """pytorch-3dunet's U-Net with a raw real-valued output (``is_segmentation=False``)."""
    try:
        from pytorch3dunet.unet3d.model import ResidualUNet3D, UNet3D
    except ImportError as error:
        raise DeflareError(
            f"the U-Net backbone needs pytorch3dunet ({error}): "
            "pip install --no-deps pytorch3dunet==1.9.6 (see README, Install)"
        ) from None
    backbone_class = ResidualUNet3D if settings.backbone == "ResidualUNet3D" else UNet3D
    return backbone_class(
        in_channels=1,
        out_channels=1,
        final_sigmoid=False,
        f_maps=list(settings.f_maps),
        layer_order=settings.layer_order,
        num_groups=settings.num_groups,
        is_segmentation=False,
        dropout_prob=settings.dropout,
    )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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


def export_checkpoint(source: Path, target: Path, notes: dict[str, Any] | None = None) -> int:
    """Write a training checkpoint's model alone (no optimizer state): what inference needs.

    Returns the size of the written file in bytes.
    """
    checkpoint = load_checkpoint(source)
    slim = {
        "format": CHECKPOINT_FORMAT,
        "model": checkpoint["model"],
        "settings": {
            "model": checkpoint["settings"]["model"],
            "codec": checkpoint["settings"].get("codec", {}),
        },
        "step": checkpoint.get("step", 0),
        "best_metric": checkpoint.get("best_metric", float("nan")),
        "notes": notes or {},
    }
    save_checkpoint(target, slim)
    return Path(target).stat().st_size


def model_from_checkpoint(path: Path) -> tuple[TrueResidualUNet3D, dict[str, Any]]:
    """The trained model of a checkpoint and the checkpoint's settings (a plain dict)."""
    checkpoint = load_checkpoint(path)
    try:
        settings = checkpoint["settings"]
        model = TrueResidualUNet3D(ModelSettings(**settings["model"]))
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(path, f"checkpoint does not match its model settings ({error})") from None
    model.eval()
    return model, settings


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, for provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
