"""The network: a 3D U-Net whose untrained output is (about) its input. Two output forms
(``ModelSettings.output``):

- ``residual``: ``output = input + backbone(input)``, a true residual U-Net. pytorch-3dunet's own
  ``ResidualUNet3D`` is residual only inside its blocks; its output is not ``input +
  correction``, so an untrained model destroys the background (the seed measured -46% energy
  kept). Here the backbone learns the correction (about ``-flare``) and its final 1x1x1
  convolution starts at zero, so the untrained model is exactly the identity.
- ``mask``: ``output = input * (1 - removal)`` with ``removal = sigmoid(backbone(log input))``,
  the share of each cell's events that is flare. It can only take events away, which is what
  flare removal does, and it is trained as a classifier of events (``train --loss mask``): every
  event weighs the same whether it sits in a flare core of tens of events or alone, and the
  network sees ``sign(v) log(1 + |v|)``, so dense cores do not swamp sparse scenes. Its final
  convolution starts at zero weights and a bias of ``MASK_START_LOGIT``: the untrained model
  removes 0.25% of each cell, which rounds to nothing.

With ``input_norm: frame`` the backbone's input is also scaled by ``FRAME_REFERENCE`` over the
events per pixel of the input's whole frame (``frame_density``): a crop or tile gets its whole
segment's density from the caller, so training crops, tiles and whole frames see one scale.
Real scenes denser than any synthetic one (a row of moving objects) are then judged against
their own frame, as flare is: the local density over the frame's density is what carried over
from synthetic to real scenes in ``benchmarks/context_probe.py`` (docs/experiments.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeflareError
from .settings import ModelSettings

MASK_START_LOGIT = -6.0  # sigmoid(-6) = 0.0025
# input_norm frame: the input is multiplied by FRAME_REFERENCE / (events per pixel of its frame),
# the density floored at FRAME_FLOOR; a sparse night frame (0.0035 events per pixel per 20 ms
# at 0.16 M events/s and 1280x720) then sees its events at about 3x, a dense 640x480 one
# (1.2) at 0.008x
FRAME_REFERENCE = 0.01
FRAME_FLOOR = 1e-4


class TrueResidualUNet3D(nn.Module):
    """Voxels in, voxels out: (N, 1, B, H, W) -> (N, 1, B, H, W) (``residual`` or ``mask``
    output: see the module's docstring).

    Inputs whose bins, height or width do not divide by ``2 ** (depth - 1)`` are zero-padded for
    the backbone and cropped back, so any sensor size works (260x346, 720x1280, ...).
    """

    def __init__(self, settings: ModelSettings = ModelSettings()) -> None:
        super().__init__()
        self.settings = settings
        self.backbone = build_backbone(settings)
        nn.init.zeros_(self.backbone.final_conv.weight)
        start = MASK_START_LOGIT if settings.output == "mask" else 0.0
        nn.init.constant_(self.backbone.final_conv.bias, start)

    def forward(
        self, voxels: torch.Tensor, raw: bool = False, density: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The output voxels; ``raw``: the backbone's output alone (the correction, or the
        removal logits of a mask model), which ``train --loss mask`` trains on; ``density``:
        (N,) events per pixel of each input's whole frame (``input_norm: frame``; default:
        the inputs are whole frames)."""
        if voxels.ndim != 5 or voxels.shape[1] != 1:
            raise ValueError(f"expected (N, 1, B, H, W) voxels, got {tuple(voxels.shape)}")
        out = self.backbone(backbone_input(voxels, self.settings, density)).to(voxels.dtype)
        return finish(voxels, out, self.settings, raw)

    def residual(self, voxels: torch.Tensor) -> torch.Tensor:
        """What the model changes (about minus the flare), same shape as the input."""
        return self(voxels) - voxels


def frame_density(voxels: torch.Tensor) -> torch.Tensor:
    """(N,) events per pixel of each (B, H, W) frame of (N, [1,] B, H, W) voxels: the sum of
    |net count| over its cells (opposite events in one cell cancel, as the grid holds them)
    over its pixels (one reduction: no copy of a whole grid)."""
    height, width = voxels.shape[-2:]
    return torch.linalg.vector_norm(voxels.flatten(1), ord=1, dim=1) / (height * width)


def backbone_input(
    voxels: torch.Tensor, settings: ModelSettings, density: torch.Tensor | None = None
) -> torch.Tensor:
    """What the backbone sees, (N, 1, B, H, W) or (N, B, H, W): the voxels (``residual``) or
    ``sign(v) log(1 + |v|)`` (``mask``), scaled per input by ``FRAME_REFERENCE / density``
    with ``input_norm: frame`` (``density``: (N,) events per pixel of each input's whole frame,
    default :func:`frame_density` of ``voxels``), zero-padded at the end of bins, height and
    width to a multiple of ``settings.bin_multiple`` and ``settings.size_multiple``. Every
    engine feeds its backbone this."""
    if settings.input_norm == "frame" and density is None:
        density = frame_density(voxels)
    if settings.output == "mask":
        voxels = torch.sign(voxels) * torch.log1p(voxels.abs())
    if settings.input_norm == "frame":
        density = density.to(device=voxels.device, dtype=voxels.dtype)
        scale = FRAME_REFERENCE / density.clamp_min(FRAME_FLOOR)
        voxels = voxels * scale.view(-1, *[1] * (voxels.ndim - 1))
    multiples = (settings.bin_multiple, settings.size_multiple, settings.size_multiple)
    padding = [(-size) % step for size, step in zip(voxels.shape[-3:], multiples, strict=True)]
    return F.pad(voxels, (0, padding[2], 0, padding[1], 0, padding[0]))


def finish(
    voxels: torch.Tensor, out: torch.Tensor, settings: ModelSettings, raw: bool = False
) -> torch.Tensor:
    """The output voxels from the input and the backbone's (padded) output, cropped to the
    input: ``voxels + out`` (``residual``) or ``voxels * (1 - sigmoid(out))`` (``mask``);
    ``raw``: the cropped backbone output alone."""
    sizes = voxels.shape[-3:]
    out = out[..., : sizes[0], : sizes[1], : sizes[2]]
    if raw:
        return out
    if settings.output == "mask":
        return voxels * torch.sigmoid(-out)
    return voxels + out


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
    backbone = backbone_class(
        in_channels=1,
        out_channels=1,
        final_sigmoid=False,
        f_maps=list(settings.f_maps),
        layer_order=settings.layer_order,
        num_groups=settings.num_groups,
        is_segmentation=False,
        dropout_prob=settings.dropout,
    )
    if settings.pooling == "xy":
        _pool_space_only(backbone)
    return backbone


def _pool_space_only(backbone: nn.Module) -> None:
    """Make every level down halve height and width but keep the time bins: a (1, 2, 2)
    pooling kernel, and transposed convolutions of stride (1, 2, 2) on the way up.
    pytorch-3dunet's UNet3D and ResidualUNet3D take ``pool_kernel_size`` but do not pass it
    on (pytorch-3dunet 1.9.6), so the layers are replaced after construction."""
    for encoder in backbone.encoders:
        if isinstance(encoder.pooling, nn.MaxPool3d | nn.AvgPool3d):
            encoder.pooling = type(encoder.pooling)(kernel_size=(1, 2, 2))
    for decoder in backbone.decoders:
        upsample = decoder.upsampling.upsample
        old = getattr(upsample, "conv_transposed", None)
        if isinstance(old, nn.ConvTranspose3d):
            upsample.conv_transposed = nn.ConvTranspose3d(
                old.in_channels, old.out_channels, old.kernel_size, stride=(1, 2, 2),
                padding=old.padding, bias=old.bias is not None,
            )  # fmt: skip


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
