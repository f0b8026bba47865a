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

# (image indices, rows, columns) of K chosen pixels, each a (K,) index tensor
Pixels = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

MASK_START_LOGIT = -6.0  # sigmoid(-6) = 0.0025
# DensityNet's features are log(1 + density / DENSITY_UNIT): about one event in a 49 px box of a
# sparse night frame, after the frame scaling, is one unit
DENSITY_UNIT = 1e-3
# input_norm frame: the input is multiplied by FRAME_REFERENCE / (events per pixel of its frame),
# the density floored at FRAME_FLOOR; a sparse night frame (0.0035 events per pixel per 20 ms
# at 0.16 M events/s and 1280x720) then sees its events at about 3x, a dense 640x480 one
# (1.2) at 0.008x
FRAME_REFERENCE = 0.01
FRAME_FLOOR = 1e-4
# coherence features (0-1) are stored times this, so that density_scale spreads them over 0-4.6
COHERENCE_UNIT = 100 * DENSITY_UNIT
# box_mean pools boxes up to this half-width (as fast as running sums there, and what the
# trees of 2026-12-07 were fitted on bit for bit); wider ones come from running sums
POOLED_RADIUS = 3


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
        if settings.density_head == "trees":
            return  # no last layer: the unfitted trees start at MASK_START_LOGIT themselves
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
    """What the backbone sees, (N, 1, B, H, W) or (N, B, H, W): the voxels, or
    ``sign(v) log(1 + |v|)`` of them (``settings.log_input``), scaled per input by
    ``FRAME_REFERENCE / density`` with ``input_norm: frame`` (``density``: (N,) events per
    pixel of each input's whole frame, default :func:`frame_density` of ``voxels``),
    zero-padded at the end of bins, height and width to a multiple of ``settings.bin_multiple``
    and ``settings.size_multiple``. Every engine feeds its backbone this."""
    if settings.input_norm == "frame" and density is None:
        density = frame_density(voxels)
    if settings.log_input:
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


class DensityBackbone(nn.Module):
    """A classifier of each cell's events by the event densities around it, in one 20 ms
    segment: (N, 1, B, H, W) voxels (scaled by the frame, not log-scaled) in, (N, 1, B, H, W)
    removal logits out.

    Per pixel, the ON and OFF events of all bins are counted; their means over boxes of
    half-width ``settings.density_radii`` (cut at the input's edges) are a cell's features,
    its own polarity's first; ``log(1 + density / DENSITY_UNIT)`` of them goes through a
    perceptron (hidden widths ``settings.f_maps``) to one logit, the same for every bin of a
    pixel and polarity. With ``settings.flicker_radii``, the pixel's polarity alternations
    and busy bins (:func:`flicker_features`) join them; with ``settings.coherence_radii``, how
    line-like the events around the pixel lie (:func:`coherence_features`). It is
    ``benchmarks/context_probe.py``'s "local / frame density" classifier, which carried over to
    real scenes where the U-Nets did not (docs/experiments.md); its reach is its widest box, and
    it has no normalisation layer, so a tile with a halo of that reach gives exactly the whole
    frame's output.

    Features are computed, and the perceptron run, only where a pixel has events of that
    polarity (a few percent of a sparse frame: 30x less work in training;
    :meth:`event_features`); cells without events get logit 0, which no output uses. Traced
    for export (OpenVINO), it runs on every pixel instead (a fixed graph), with the same
    result.

    With ``density_head: trees`` a gradient-boosted ensemble (:class:`TreeEnsemble`, fitted by
    ``deflare train``: ``train/trees.py``) scores the same features instead of the perceptron.
    With ``flicker_head``, pixels whose polarity alternates that often in the segment are
    scored by a second ensemble that also sees the flicker features, and the first one, without
    them, scores the rest: a flickering light's flare is told apart where it flickers, and
    nowhere else does a polarity flip (which real scenes make far more often than synthetic
    ones) count as flare.
    """

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__()
        self.radii = settings.density_radii
        self.flicker_radii = settings.flicker_radii
        self.coherence_radii = settings.coherence_radii
        self.peak_radii = settings.peak_radii
        self.trees = self.flicker_trees = None
        self.flicker_head = settings.flicker_head
        if settings.density_head == "trees":
            self.trees = TreeEnsemble(*settings.density_trees)
            if self.flicker_head:
                self.flicker_trees = TreeEnsemble(*settings.flicker_trees)
                density, flicker = 2 * len(self.radii), 2 + len(self.flicker_radii)
                # every column but the flicker counts, which follow the box densities
                columns = settings.density_columns
                shared = [*range(density), *range(density + flicker, columns)]
                self.register_buffer("shared_columns", torch.tensor(shared), persistent=False)
            return
        widths = [settings.density_columns, *settings.f_maps]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        self.hidden = nn.Sequential(*layers)
        self.final_conv = nn.Linear(widths[-1], 1)  # named as the U-Nets' last layer

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            features, occupied = self.features(voxels)
            logits = self.score(features)[..., 0] * occupied
        else:
            rows, occupied = self.event_features(voxels)
            logits = rows.new_zeros(occupied.shape)
            logits[occupied] = self.score(rows)[:, 0]
        on_logit, off_logit = logits[:, None, None].chunk(2)
        return torch.where(voxels > 0, on_logit, off_logit)

    def event_features(self, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`features` gives at its occupied pixels, ``features[occupied]``, bit for
        bit, and ``occupied``; computed at those pixels alone. A sparse 1280x720 frame has
        events at a few thousand of its 0.9 M pixels: every box wider than ``POOLED_RADIUS``
        is four lookups per event in running sums shared by all radii (:class:`BoxSums`), and
        no table of every pixel's features is built, so a whole frame costs about what its
        events do (the running sums are the one pass over every pixel)."""
        counts = polarity_counts(voxels)
        occupied = torch.cat([counts[:, 0, 0], counts[:, 1, 0]]) > 0
        row, y, x = occupied.nonzero(as_tuple=True)
        at, on = (row % len(voxels), y, x), (row < len(voxels))[:, None]
        sums = BoxSums(counts[:, :, 0])
        boxes = torch.stack([sums.mean(radius, at) for radius in self.radii], dim=1)
        on_box, off_box = boxes.unbind(2)  # (events, radii) each
        columns = [torch.where(on, on_box, off_box), torch.where(on, off_box, on_box)]
        if self.flicker_radii:
            columns.append(flicker_features(voxels, self.flicker_radii)[at])
        both = counts.sum(1)[:, 0]  # (N, H, W) events of either polarity
        if self.coherence_radii:
            columns.append(coherence_features(both, self.coherence_radii, at))
        if self.peak_radii:
            columns.append(peak_features(both, self.peak_radii, at))
        return torch.cat(columns, dim=1), occupied

    def features(self, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(2N, H, W, features) box densities of each pixel, own polarity first (the N inputs'
        ON pixels, then their OFF pixels), and (2N, H, W) whether the pixel has such events.
        Every pixel's: what a traced graph (a fixed shape) and the tests take; the model itself
        runs :meth:`event_features`."""
        counts = polarity_counts(voxels)
        boxes = [box_mean(counts, radius) for radius in self.radii]
        on_first = torch.cat([box[:, :1] for box in boxes] + [box[:, 1:] for box in boxes], 1)
        off_first = torch.cat([box[:, 1:] for box in boxes] + [box[:, :1] for box in boxes], 1)
        features = torch.cat([on_first, off_first])[:, :, 0].permute(0, 2, 3, 1)
        occupied = torch.cat([counts[:, 0, 0], counts[:, 1, 0]]) > 0
        if self.flicker_radii:
            flicker = flicker_features(voxels, self.flicker_radii).repeat(2, 1, 1, 1)
            features = torch.cat([features, flicker], dim=-1)
        if self.coherence_radii:
            coherence = coherence_features(counts.sum(1)[:, 0], self.coherence_radii)
            features = torch.cat([features, coherence.repeat(2, 1, 1, 1)], dim=-1)
        if self.peak_radii:
            peaks = peak_features(counts.sum(1)[:, 0], self.peak_radii)
            features = torch.cat([features, peaks.repeat(2, 1, 1, 1)], dim=-1)
        return features, occupied

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(..., 1) removal logits of (..., features) box densities."""
        scaled = density_scale(features)
        if self.trees is None:
            return self.final_conv(self.hidden(scaled))
        if self.flicker_trees is None:
            return self.trees(scaled)
        logits = self.trees(scaled[..., self.shared_columns])
        flickering = self.flickering(features)
        logits[flickering] = self.flicker_trees(scaled[flickering])
        return logits

    def flickering(self, features: torch.Tensor) -> torch.Tensor:
        """Which (..., features) rows the flicker head scores: those whose polarity alternates
        at least ``flicker_head`` times (:func:`flicker_features`' first column, counts times
        ``DENSITY_UNIT``; half a count below, so float rounding cannot drop a row)."""
        alternations = features[..., 2 * len(self.radii)]
        return alternations >= (self.flicker_head - 0.5) * DENSITY_UNIT


def flicker_features(voxels: torch.Tensor, radii: tuple[int, ...]) -> torch.Tensor:
    """(N, H, W, 2 + len(radii)) of (N, 1, B, H, W) voxels: per pixel, the polarity alternations
    between its consecutive non-empty bins, its non-empty bins, and the alternations' means over
    boxes of half-width ``radii``; times ``DENSITY_UNIT``, so that :func:`density_scale` gives
    ``log(1 + count)``. A light flickering at 100-500 Hz alternates a pixel's polarity every few
    bins, a moving edge once at most; these counts do not depend on the frame's density, so they
    still tell flicker from scene where flare fills the frame (and scales every density to ~1)."""
    signs = torch.sign(voxels[:, 0])  # (N, B, H, W)
    last = torch.zeros_like(signs[:, 0])
    alternations = torch.zeros_like(last)
    for bin_signs in signs.unbind(1):
        alternations += ((bin_signs * last) < 0).to(last.dtype)
        last = torch.where(bin_signs != 0, bin_signs, last)
    busy_bins = (signs != 0).sum(1).to(last.dtype)
    boxes = [box_mean(alternations[:, None, None], radius)[:, 0, 0] for radius in radii]
    return torch.stack([alternations, busy_bins, *boxes], dim=-1) * DENSITY_UNIT


def coherence_features(
    counts: torch.Tensor, radii: tuple[int, ...], at: Pixels | None = None
) -> torch.Tensor:
    """(N, H, W, len(radii)) of (N, H, W) event counts: the orientation coherence of the count
    image around each pixel, ``sqrt((Jxx - Jyy)^2 + 4 Jxy^2) / (Jxx + Jyy)`` of its structure
    tensor ``J`` (the products of the central differences of the counts' 3x3 means, averaged
    over boxes of half-width ``radii``, cut at the edges); 0 where the box holds no gradient.
    Events along a thin moving edge give about 1, a cloud of scattered events (a halo's, noise)
    much less. Times ``COHERENCE_UNIT``, so that :func:`density_scale` gives
    ``log(1 + 100 coherence)``. It is a ratio, so the frame's scaling does not change it.
    ``at``: (K, len(radii)) of those pixels alone, the same values."""
    smooth = box_mean(counts[:, None, None], 1)[:, 0, 0]
    dx = F.pad(smooth[:, :, 2:] - smooth[:, :, :-2], (1, 1)) / 2
    dy = F.pad(smooth[:, 2:] - smooth[:, :-2], (0, 0, 1, 1)) / 2
    products = BoxSums(torch.stack([dx * dx, dy * dy, dx * dy], dim=1))  # (N, 3, H, W)
    coherence = []
    for radius in radii:
        jxx, jyy, jxy = products.mean(radius, at).unbind(1)
        trace = jxx + jyy
        spread = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy**2)
        coherence.append(torch.where(trace > 0, spread / trace.clamp_min(1e-30), 0.0))
    return torch.stack(coherence, dim=-1).clamp(0, 1) * COHERENCE_UNIT


def peak_features(
    counts: torch.Tensor, radii: tuple[int, ...], at: Pixels | None = None
) -> torch.Tensor:
    """(N, H, W, 2 len(radii)) of (N, H, W) event counts: per radius, the largest count within
    a box of that half-width around each pixel (the box cut at the edges), then the pixel's own
    count over it (0 where the box is empty, times ``COHERENCE_UNIT``). A light's core and its
    edges fire many events a pixel, the halo and rays around them one or two: a box mean
    dilutes the core among empty pixels, its maximum does not, so a lone event beside a far
    busier pixel tells itself apart from a lone event in an empty, dim scene. ``at``:
    (K, 2 len(radii)) of those pixels alone."""
    own = counts if at is None else counts[at]
    columns = []
    for radius in radii:
        peak = box_max(counts, radius)
        peak = peak if at is None else peak[at]
        share = torch.where(peak > 0, own / peak.clamp_min(1e-30), 0.0)
        columns += [peak, share * COHERENCE_UNIT]
    return torch.stack(columns, dim=-1)


def box_max(image: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, H, W) maxima of non-negative (N, H, W) values over boxes of half-width ``radius``,
    cut at the edges: per axis, maxima over windows doubling in width (log2 of the box's
    width elementwise steps, where a pooling pass would take the box's width per pixel)."""
    for dim in (2, 1):
        padded = F.pad(image, (radius, radius) if dim == 2 else (0, 0, radius, radius))
        width, step, widest = 2 * radius + 1, 1, padded
        while 2 * step <= width:
            length = widest.shape[dim] - step
            widest = torch.maximum(widest.narrow(dim, 0, length), widest.narrow(dim, step, length))
            step *= 2
        size = image.shape[dim]
        image = torch.maximum(widest.narrow(dim, 0, size), widest.narrow(dim, width - step, size))
    return image


def polarity_counts(voxels: torch.Tensor) -> torch.Tensor:
    """(N, 2, 1, H, W) ON and OFF events per pixel of (N, 1, B, H, W) voxels (the OFF sums
    negated: rounding is symmetric in sign, so they equal sums of the negated cells)."""
    on = voxels.clamp_min(0).sum(dim=2, keepdim=True)
    return torch.cat([on, voxels.clamp_max(0).sum(dim=2, keepdim=True).neg_()], dim=1)


class BoxSums:
    """Box means of (N, C, H, W) images (:func:`box_mean`), over every pixel or at chosen ones.
    At chosen pixels, boxes wider than ``POOLED_RADIUS`` are four lookups each in one table of
    float64 running sums, built once for all radii; the values are bit for bit those of
    :func:`box_mean` (the same sums, differenced in the same order)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self._sums: torch.Tensor | None = None

    def mean(self, radius: int, at: Pixels | None = None) -> torch.Tensor:
        """(N, C, H, W) means over boxes of half-width ``radius``, or (K, C) at the pixels
        ``at`` (K image indices, rows, columns)."""
        images = self.images
        if at is None:
            return box_mean(images[:, :, None], radius)[:, :, 0]
        index, y, x = at
        if radius > POOLED_RADIUS:
            if self._sums is None:
                self._sums = _running_sums(images)
            (high_y, low_y), (high_x, low_x) = (
                _box_ends(y, radius, images.shape[-2]),
                _box_ends(x, radius, images.shape[-1]),
            )
            sums = self._sums
            inside = (sums[index, :, high_y, high_x] - sums[index, :, low_y, high_x]) - (
                sums[index, :, high_y, low_x] - sums[index, :, low_y, low_x]
            )
            area = (high_y - low_y) * (high_x - low_x)
            return (inside / area[:, None]).to(images.dtype)
        if len(index) * (2 * radius + 1) ** 2 > images[:, 0].numel():  # boxes cost more
            return box_mean(images[:, :, None], radius)[index, :, 0, y, x]
        ones = images.new_ones(1, 1, *images.shape[-2:])
        inside = _pooled_at(ones, radius, (torch.zeros_like(index), y, x))
        return _pooled_at(images, radius, at) / inside


def _pooled_at(images: torch.Tensor, radius: int, at: Pixels) -> torch.Tensor:
    """(K, C) of (N, C, H, W) images at the pixels ``at``: what :func:`_box_pass` gives there
    on the zero-padded images, bit for bit (:func:`_box_pass` of each pixel's own box, gathered
    as a (2 radius + 1)-wide window): a sparse frame costs its events' boxes, not every
    pixel."""
    index, y, x = at
    height, width = images.shape[-2:]
    offsets = torch.arange(-radius, radius + 1, device=images.device)
    rows, columns = y[:, None] + offsets, x[:, None] + offsets  # (K, box width) each
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((columns >= 0) & (columns < width))[
        :, None
    ]
    rows, columns = rows.clamp(0, height - 1), columns.clamp(0, width - 1)
    values = images[index[:, None, None], :, rows[:, :, None], columns[:, None]]  # (K, r, c, C)
    values = torch.where(inside[..., None], values, 0.0)
    return _box_pass(values.permute(0, 3, 1, 2)[:, :, None], radius)[:, :, 0, 0, 0]


def density_scale(features: torch.Tensor) -> torch.Tensor:
    """What DensityNet's scorer sees of box densities: ``log(1 + density / DENSITY_UNIT)``."""
    return torch.log1p(features / DENSITY_UNIT)


class TreeEnsemble(nn.Module):
    """A fitted gradient-boosted ensemble of binary trees as tensors: (trees, nodes) of split
    feature, threshold (``x <= threshold`` goes left), children and leaf value; a leaf is its
    own child, so ``depth`` steps from the roots reach every leaf. The logit is ``bias`` plus
    the leaf values. Buffers, not parameters: no optimiser moves them. Evaluated in float32
    (bf16 would move thresholds), in chunks of pixels to bound memory. Unfitted (no trees), the
    logit is the mask models' starting logit, which changes no event."""

    CHUNK = 16_384  # pixels per evaluation: 16k x 200 trees of int32 indices = 13 MB

    def __init__(self, trees: int, nodes: int, depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.register_buffer("feature", torch.zeros(trees, nodes, dtype=torch.long))
        self.register_buffer("threshold", torch.zeros(trees, nodes))
        self.register_buffer("left", torch.zeros(trees, nodes, dtype=torch.long))
        self.register_buffer("right", torch.zeros(trees, nodes, dtype=torch.long))
        self.register_buffer("value", torch.zeros(trees, nodes))
        self.register_buffer("bias", torch.tensor([MASK_START_LOGIT]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 1) logits of (..., features)."""
        flat = x.reshape(-1, x.shape[-1]).float()
        with torch.autocast(flat.device.type, enabled=False):
            pieces = [self._logits(chunk) for chunk in flat.split(self.CHUNK)]
        logits = torch.cat(pieces) if pieces else flat.new_zeros(0)
        return logits.reshape(*x.shape[:-1], 1)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every (row, tree) walks down from its root; those at a leaf (its own child) drop
        out of the walk, so deep trees cost only the rows that reach their depth. A node's two
        children lie side by side in one table, so each step is one lookup: ``2 node`` to go
        left, ``2 node + 1`` to go right (NaN too, as ``x <= threshold`` is false for it).
        Indices are int32 and looked up with ``index_select``: half the memory traffic of
        int64 indexing, and twice as fast on a CPU (``CHUNK`` rows keep them far below 2^31)."""
        trees, nodes = self.feature.shape
        index = torch.int32
        offset = torch.arange(trees, device=x.device, dtype=index)[:, None] * nodes
        children = torch.stack([self.left + offset, self.right + offset], dim=-1)
        children, feature = children.view(-1).to(index), self.feature.view(-1).to(index)
        threshold = self.threshold.view(-1)
        node = offset.view(-1).repeat(len(x))  # (rows x trees,) row-major
        first = torch.arange(len(x), device=x.device, dtype=index) * x.shape[1]
        first = first.repeat_interleave(trees)
        values = x.reshape(-1)
        walking = torch.arange(len(node), device=x.device, dtype=index)
        for _ in range(self.depth):
            here = node.index_select(0, walking)
            looked_at = first.index_select(0, walking) + feature.index_select(0, here)
            goes_right = ~(values.index_select(0, looked_at) <= threshold.index_select(0, here))
            step = children.index_select(0, 2 * here + goes_right)
            node[walking] = step
            walking = walking[step != here]
            if not len(walking):
                break
        leaves = self.value.view(-1).index_select(0, node)
        return leaves.view(len(x), trees).sum(1) + self.bias


def box_mean(counts: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of (N, C, 1, H, W) ``counts`` over the box of half-width ``radius`` pixels around
    each pixel, cut at the edges. Boxes up to ``POOLED_RADIUS`` and traced graphs (exported for
    any frame size): two separable average-pooling passes over the zero-padded counts, divided
    by the share of the box inside (padded explicitly: pooling refuses inputs smaller than its
    kernel). Wider boxes: :func:`_running_box_mean`, whose cost does not grow with the box."""
    if radius > POOLED_RADIUS and not torch.jit.is_tracing():
        return _running_box_mean(counts, radius)
    pad = (radius, radius, radius, radius)
    sums = _box_pass(F.pad(counts, pad), radius)
    inside = _box_pass(F.pad(torch.ones_like(counts[:1, :1]), pad), radius)
    return sums / inside


def _running_box_mean(counts: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`box_mean` from running sums (float64) over rows and columns: four lookups a
    pixel whatever the box (a 24 px box of a 1280x720 frame: 50 ms instead of 190 ms on one
    core). Exact to float64 where pooling adds up in float32: the two differ by about 1e-6 of
    the mean at 24 px, which moves the default model's removals on no real recording here
    (docs/experiments.md, 2026-12-08)."""
    sums, spans = _running_sums(counts), []
    for dim in (-2, -1):
        at = torch.arange(counts.shape[dim], device=counts.device)
        high, low = _box_ends(at, radius, counts.shape[dim])
        sums = sums.index_select(dim, high) - sums.index_select(dim, low)
        spans.append(high - low)
    return (sums / (spans[0][:, None] * spans[1][None, :])).to(counts.dtype)


def _running_sums(images: torch.Tensor) -> torch.Tensor:
    """(..., H + 1, W + 1) float64 sums of (..., H, W) images over the rows and columns above
    and left of each place (a zero row and column first): a box's sum is four of them."""
    return F.pad(images.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))


def _box_ends(at: torch.Tensor, radius: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where boxes of half-width ``radius`` around positions ``at`` end along an axis of
    ``size``, cut at its edges: (one past the last, the first), indices of :func:`_running_sums`."""
    return (at + radius).clamp(max=size - 1) + 1, (at - radius).clamp(min=0)


def _box_pass(padded: torch.Tensor, radius: int) -> torch.Tensor:
    """Means of (N, C, 1, H, W) padded values over windows of ``2 radius + 1`` along the
    width, then along the height: two average-pooling passes, and outside a traced graph the
    very same float32 sums by shifted adds in pooling's order (bit for bit; 6x faster at
    radius 1 on a 1280x720 frame)."""
    size = 2 * radius + 1
    if torch.jit.is_tracing():
        return F.avg_pool3d(F.avg_pool3d(padded, (1, 1, size), 1), (1, size, 1), 1)
    for dim in (-1, -2):
        length = padded.shape[dim] - size + 1
        sums = padded.narrow(dim, 0, length) + padded.narrow(dim, 1, length)
        for shift in range(2, size):
            sums += padded.narrow(dim, shift, length)
        padded = sums / size
    return padded


def build_backbone(settings: ModelSettings) -> nn.Module:
    """pytorch-3dunet's U-Net with a raw real-valued output (``is_segmentation=False``), or
    :class:`DensityBackbone`."""
    if settings.backbone == "DensityNet":
        return DensityBackbone(settings)
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
