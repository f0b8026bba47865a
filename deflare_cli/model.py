"""The network: ``output = input + backbone(input)``, a true residual 3D U-Net.

pytorch-3dunet's own ``ResidualUNet3D`` is residual only inside its blocks; its output is not
``input + correction``, so an untrained model destroys the background (the seed measured -46%
energy kept). Here the backbone learns the correction (about ``-flare``) and its final 1x1x1
convolution starts at zero, so the untrained model is exactly the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeflareError
from .settings import ModelSettings


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
